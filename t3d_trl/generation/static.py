"""Static-shape block diffusion decoding (``cache_implementation="static"``): one compiled graph for the whole decode.

The dynamic path (:func:`t3d_trl.generation.decoding.diffusion_generate`) changes shapes as it goes: the first forward
runs the prompt, a block's first forward runs ``2B`` queries and the later ones ``B``, the cache grows, finished rows
leave the batch. Here every forward after the first has the same shapes, so ``torch.compile`` traces one graph and, on
CUDA with ``mode="reduce-overhead"``, captures it once as a CUDA graph:

* the cache (:class:`~t3d_trl.models.cache.IndexedStaticCache`) has a fixed capacity ``C``: ``max_cache_len`` when
  it is set and large enough, else the canvas width plus ``B`` scratch slots rounded up to :data:`CAPACITY_MULTIPLE`;
  slot ``c`` holds canvas column ``c``, the last ``B`` slots are scratch, and each forward writes at slots given as a
  tensor;
* every forward's queries are the canvas columns ``[s − B, s + B)`` of block ``[s, s + B)``: a *store slot* (the
  previous block, stored for good in the first step of the block, as in the fused dynamic path) followed by the block
  being denoised. In the other steps the store slot is unused: its keys go to the scratch slots and its results are
  discarded;
* the attention mask spans the whole capacity (``[batch, 1, 2B, C]``), built from block ids and the block's position
  with tensor operations, so nothing is sliced by a Python int;
* the batch stays whole: finished rows keep running and their results are discarded;
* a block takes exactly ``steps_per_block`` forwards (a step in which no row has masked positions left commits
  nothing).

The first forward (the prompt's whole blocks stored with the first step of the first block) has its own shape; it runs
uncompiled, as transformers runs the prefill. Tokens, ``step_map`` and ``nfe`` are those of the dynamic path (``nfe``
counts the forwards in which a row still had masked positions, as there); with sampling, the random draws differ once
a row finishes or a block ends early, since every row draws at every step here.

Compilation follows transformers: the forward is compiled (``model.get_compiled_call(compile_config)``, kept on the
model between calls) unless ``disable_compile=True``; ``compile_config`` (a :class:`transformers.CompileConfig`) sets
``mode``, ``fullgraph``, ``dynamic``, ``backend``. The cache is kept on the model and reused by the next decode with the
same batch size and at most its capacity, as transformers' diffusion decoders do, so that the graph and its CUDA graph
are reused too.
"""

from __future__ import annotations

import contextlib

import torch
from transformers.utils import logging

from ..models.families import ModelFamily
from .remasking import RemaskingStrategy, num_transfer_tokens
from .step import block_logits, commit_step, finished_rows

logger = logging.get_logger(__name__)

#: values of ``cache_implementation`` that few-step decoding honours (``None`` and ``"dynamic"``: the dynamic path)
SUPPORTED_CACHE_IMPLEMENTATIONS = ("dynamic", "static")
#: static capacities are rounded up to a multiple of this many slots, so that nearby lengths share a compiled graph
CAPACITY_MULTIPLE = 64
#: the model attribute that keeps the static cache between calls
STATIC_CACHE_ATTRIBUTE = "_diffusion_static_cache"


def check_cache_implementation(value) -> None:
    """Refuse a ``cache_implementation`` that few-step decoding cannot honour.

    Args:
        value: the ``cache_implementation`` of a generation config.

    Raises:
        ValueError: naming the value and the accepted ones.
    """
    if value is not None and value not in SUPPORTED_CACHE_IMPLEMENTATIONS:
        raise ValueError(
            f"`cache_implementation`={value!r} is not supported by few-step diffusion decoding; use None or 'dynamic' "
            "(a cache that grows with the decode) or 'static' (fixed shapes, compiled with torch.compile)."
        )


def static_fallback_reason(
    model, family: ModelFamily, strategy: RemaskingStrategy, use_cache: bool, fuse_store: bool
) -> str | None:
    """Why a decode that asks for ``cache_implementation="static"`` runs the dynamic path instead.

    Args:
        model: the model.
        family: its family.
        strategy: the remasking strategy of the decode.
        use_cache: whether the decode keeps a prefix cache.
        fuse_store: whether a finished block is stored in the next block's first forward.

    Returns:
        ``None`` when the static path applies, else the reason (logged by the caller).
    """
    reason = family.static_decoding_unsupported(model)
    if reason is not None:
        return reason
    if not use_cache:
        return "use_cache=False (static decoding is the cached decoding with fixed shapes)"
    if not fuse_store:
        return "fuse_store=False (static decoding always stores a block in the next block's first forward)"
    if not strategy.follows_schedule:
        return (
            f"remasking={strategy.name!r} takes an adaptive number of steps per block (static decoding runs "
            "exactly steps_per_block forwards per block)"
        )
    return None


def _skipped_guards(skip: bool):
    """Skip the compiler's guard evaluation (``skip``: a compiled call that follows another compiled call of the same
    decode, so its inputs match up to their values), else a no-op context."""
    if skip:
        return torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)
    return contextlib.nullcontext()


def compiled_forward(model, config):
    """The forward of the fixed-shape steps: ``model.__call__`` compiled as transformers compiles it, or as it is.

    Args:
        model: the model.
        config: the generation config (``disable_compile``, ``compile_config``).

    Returns:
        ``(call, compiled)``.
    """
    if config.disable_compile or not hasattr(model, "get_compiled_call"):
        return model.__call__, False
    return model.get_compiled_call(config.compile_config), True


def static_cache(model, family: ModelFamily, batch_size: int, needed: int, max_cache_len: int | None = None):
    """The model's static cache when it can serve this decode, else a new one (kept on the model for the next call).

    Args:
        model: the model.
        family: its family.
        batch_size: rows of the decode.
        needed: slots the decode writes (canvas width plus the scratch slots).
        max_cache_len: the generation config's ``max_cache_len``: the capacity when it is at least ``needed``.

    Returns:
        An :class:`~t3d_trl.models.cache.IndexedStaticCache` with zeroed buffers.
    """
    if max_cache_len is not None and max_cache_len >= needed:
        capacity = int(max_cache_len)  # as transformers sizes a static cache: the same shapes for every call below it
    else:
        capacity = -(-needed // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE
    cache = getattr(model, STATIC_CACHE_ATTRIBUTE, None)
    if cache is not None and cache.matches(batch_size, capacity, model.dtype, model.device):
        cache.reset()
        return cache
    cache = family.new_static_cache(model, capacity)
    setattr(model, STATIC_CACHE_ATTRIBUTE, cache)
    return cache


def decode_static(
    model,
    family: ModelFamily,
    canvas,
    config,
    strategy: RemaskingStrategy,
    max_new_tokens: int,
    eos_ids: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode every block of ``canvas`` with fixed-shape forwards (see the module docstring).

    Args:
        model: a model of ``family``.
        family: a family whose :meth:`~t3d_trl.models.families.ModelFamily.static_decoding_unsupported` is ``None``.
        canvas: the :class:`~t3d_trl.generation.decoding.Canvas` of the batch; its tokens are committed in place.
        config: the decoding settings.
        strategy: a remasking strategy that follows the schedule.
        max_new_tokens: new tokens per row.
        eos_ids: ``[n]`` EOS ids (a row stops at the end of the block in which it emits one).
        generator: random generator for sampling.

    Returns:
        ``(tokens, step_map, nfe)``: the canvas ``[batch, N]``, the step that committed each column (``-1`` if none)
        and the forwards spent on each row.
    """
    tokens = canvas.tokens
    batch, width = tokens.shape
    device = tokens.device
    block_size, steps = config.block_size, config.steps_per_block
    schedule = num_transfer_tokens(block_size, steps)
    positions = canvas.positions.clamp(min=0)
    cache = static_cache(model, family, batch, width + block_size, getattr(config, "max_cache_len", None))
    capacity = cache.max_cache_len
    slots = torch.arange(capacity, device=device)
    key_block = torch.zeros(batch, capacity, dtype=torch.long, device=device)
    key_block[:, :width] = torch.div(slots[:width] - canvas.start, block_size, rounding_mode="floor")
    key_valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
    key_valid[:, :width] = canvas.valid
    scratch = slots[capacity - block_size :]
    window = torch.arange(-block_size, block_size, device=device)  # query columns relative to the block's start
    in_store_slot = window < 0
    write_index = cache.index_buffer(2 * block_size, device)  # one address for every step and every decode
    call, compiled = compiled_forward(model, config)
    num_logits = block_size + (1 if family.shift_logits else 0)

    step_map = torch.full_like(tokens, -1)
    steps_done = torch.zeros(batch, dtype=torch.long, device=device)
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    carry = None  # shifted heads: the logits of the column before the block
    guarded = False  # whether a compiled call of this decode already ran with its guards checked
    for block_index in range(canvas.num_blocks):
        start = canvas.start + block_index * block_size
        end = start + block_size
        masked = canvas.generated[:, start:end] & active[:, None]
        for step in range(steps):
            stores = step == 0  # a block's first forward stores the block before it
            if step <= 1:  # the later steps of a block repeat the layout of its second step
                first_forward = block_index == 0 and step == 0  # the prefill: the prompt's blocks and the first step
                query_columns = slots[:end] if first_forward else window + start
                if first_forward:
                    write, forward = query_columns, model.__call__
                else:
                    write_index.copy_(query_columns if stores else torch.cat([scratch, query_columns[block_size:]]))
                    write, forward = write_index, call
                gathered = query_columns.clamp(min=0)
                window_positions = positions.index_select(1, gathered)
                query_valid = canvas.valid.index_select(1, gathered)
                if not stores:
                    query_valid = query_valid & ~in_store_slot
                mask = family.static_decode_mask(
                    key_block, key_valid, query_columns, query_valid, write, start, block_size
                )
            if forward is call and compiled:
                torch.compiler.cudagraph_mark_step_begin()
            # After this decode's first compiled call every call has the same shapes, dtypes and devices: the
            # compiler's guards cannot change their verdict, so their evaluation is skipped (a per-call cost of the
            # order of the forward itself for small models).
            compiled_call = forward is call and compiled
            with _skipped_guards(guarded and compiled_call):
                logits = family.static_forward(
                    forward,
                    model,
                    tokens.index_select(1, gathered),
                    window_positions,
                    mask,
                    cache,
                    write,
                    num_logits,
                )
            guarded = guarded or compiled_call
            logits, carry = block_logits(logits, block_size, family.shift_logits, carry, stores)
            tokens[:, start:end], step_map[:, start:end], masked, worked = commit_step(
                logits,
                tokens[:, start:end],
                step_map[:, start:end],
                masked,
                steps_done,
                schedule[step],
                strategy,
                config,
                generator,
            )
            steps_done += worked.long()
            nfe += worked.long()
        active &= ~finished_rows(
            tokens[:, start:end], canvas.generated[:, start:end], eos_ids, end, canvas.gen_start, max_new_tokens
        )
        if not bool(active.any()):  # one host synchronisation per block
            break
    return tokens, step_map, nfe
