"""The block diffusion decoding loop (semantics: ``docs/generation.md``).

Prompts are laid on a *canvas* whose block grid matches every row's own block grid, which the model family decides
(:attr:`~t3d_trl.models.families.ModelFamily.decoding_grid`):

* ``"absolute"`` (block-causal models such as SDAR, whose attention fixes the grid): row ``r`` with ``L_r`` prompt
  tokens gets ``T - B * (L_r // B)`` padding columns in front, ``T = B * max_r (L_r // B)``, so that its whole prompt
  blocks end at column ``T`` and the prompt's tail shares the first decoded block (columns ``[T, T + B)``) with the
  row's first generated tokens;
* ``"response"`` (bidirectional mask predictors such as LLaDA, whose blocks are only a decoding schedule): row ``r``
  gets ``T - L_r`` padding columns, ``T = max_r L_r``, and its first decoded block starts at its first generated
  token.

All rows then decode the same canvas block in lock-step, and each row computes exactly what it would compute alone.
The mask token is never committed (its logit is excluded before sampling), and greedy decoding ignores ``top_k`` /
``top_p`` (they only shape sampling).

Per block and step, masked positions are sampled and committed by a remasking strategy. With a cache
(block-causal family) the finished block is stored in the same forward as the first denoising step of the next
block (``fuse_store=True``), so a block costs exactly ``steps_per_block`` forwards. A row stops at the end of the
block in which it emits EOS or reaches ``max_new_tokens``, and leaves the batch (and the cache).

``cache_implementation="static"`` decodes the same tokens with fixed shapes and a compiled forward
(:mod:`t3d_trl.generation.static`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput, logging

from ..models.families import DenoiseStep, ModelFamily
from ..models.grid import BlockGrid, get_grid
from .configuration import DEFAULT_MAX_NEW_TOKENS, DiffusionGenerationConfig
from .remasking import num_transfer_tokens, remasking_strategy
from .static import SUPPORTED_CACHE_IMPLEMENTATIONS, check_cache_implementation, decode_static, static_fallback_reason
from .step import block_logits, commit_step, finished_rows

logger = logging.get_logger(__name__)


@dataclass
class DiffusionGenerateOutput(ModelOutput):
    """Output of few-step diffusion ``generate(..., return_dict_in_generate=True)``.

    Attributes:
        sequences (`torch.LongTensor` of shape `(batch_size, prompt_length + generated_length)`):
            The prompts as given followed by the generated tokens; positions after EOS are ``pad_token_id``.
        step_map (`torch.LongTensor` of shape `(batch_size, generated_length)`):
            For every generated token, the 0-based denoising step that committed it, counted over the whole
            completion (``-1`` at padding).
        nfe (`torch.LongTensor` of shape `(batch_size,)`):
            Forward passes (number of function evaluations) spent on each sequence.
        trajectory (`torch.LongTensor` of shape `(num_steps, batch_size, generated_length)`, *optional*):
            With ``output_trajectory=True``: the generated part after every step, uncommitted positions holding
            the mask token (``trajectory[s]`` keeps the tokens with ``step_map <= s``).
    """

    sequences: torch.LongTensor | None = None
    step_map: torch.LongTensor | None = None
    nfe: torch.LongTensor | None = None
    trajectory: torch.LongTensor | None = None


def _as_id_list(token_ids) -> list[int]:
    if token_ids is None:
        return []
    if isinstance(token_ids, int):
        return [token_ids]
    return [int(t) for t in token_ids]


def _left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's real tokens to the right end (any padding side in, left padding out)."""
    order = torch.sort(attention_mask.long(), dim=1, stable=True).indices
    return input_ids.gather(1, order), attention_mask.long().gather(1, order)


@dataclass
class Canvas:
    """The decoding canvas of a batch: tokens and per-column layout, shared by every step."""

    tokens: torch.Tensor  # [batch, N] prompt tokens, then mask tokens
    positions: torch.Tensor  # [batch, N] absolute positions (negative on padding)
    valid: torch.Tensor  # [batch, N] False on padding and on columns past a row's last block
    generated: torch.Tensor  # [batch, N] True on columns the row generates
    start: int  # first decoded column T
    num_blocks: int
    gen_start: torch.Tensor  # [batch] column of the first generated token


def build_canvas(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    block_size: int,
    max_new_tokens: int,
    mask_token_id: int,
    grid: BlockGrid | str = "absolute",
) -> Canvas:
    """Lay the prompts on a canvas whose decoding blocks are aligned to ``grid`` (see the module docstring).

    Row ``r`` with ``L_r`` prompt tokens starts decoding at position ``s_r = B · ⌊L_r / B⌋`` on the ``"absolute"``
    grid (the prompt's tail shares the first decoded block) and at ``s_r = L_r`` on the ``"response"`` grid (blocks
    start at the first generated position, as LLaDA's decoder does): :meth:`~t3d_trl.models.grid.BlockGrid.first_block_start`.
    It gets ``T − s_r`` padding columns in front, ``T = max_r s_r``, so that every row's first decoded block is canvas
    columns ``[T, T + B)``.
    """
    grid = get_grid(grid) if isinstance(grid, str) else grid
    input_ids, attention_mask = _left_align(input_ids, attention_mask)
    batch, width = input_ids.shape
    device = input_ids.device
    lengths = attention_mask.sum(1)
    first = grid.first_block_start(lengths, block_size)
    blocks_to_decode = torch.div(lengths - first + max_new_tokens + block_size - 1, block_size, rounding_mode="floor")
    start = int(first.max())
    num_blocks = int(blocks_to_decode.max())
    columns = torch.arange(start + num_blocks * block_size, device=device)
    offsets = start - first  # padding columns in front of each row
    positions = columns[None, :] - offsets[:, None]
    ends = first + blocks_to_decode * block_size
    valid = (positions >= 0) & (positions < ends[:, None])
    generated = valid & (positions >= lengths[:, None])
    tokens = torch.full((batch, columns.numel()), mask_token_id, dtype=input_ids.dtype, device=device)
    prompt_columns = offsets[:, None] + torch.arange(width, device=device)[None, :] - (width - lengths)[:, None]
    is_prompt = attention_mask.bool()
    tokens[torch.arange(batch, device=device)[:, None].expand(-1, width)[is_prompt], prompt_columns[is_prompt]] = (
        input_ids[is_prompt]
    )
    return Canvas(tokens, positions, valid, generated, start, num_blocks, offsets + lengths)


def _vocabulary_size(model) -> int | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.ndim == 2:
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(config, "vocab_size", None)


def check_inputs(model, input_ids, attention_mask, config: DiffusionGenerationConfig) -> torch.Tensor:
    """Refuse inputs decoding cannot honour, before any forward; return the attention mask to decode with.

    Checks: ``input_ids`` is a non-empty 2D integer tensor whose ids lie in the model's vocabulary; the mask token
    is set and in the vocabulary; ``attention_mask`` (when given) has the shape of ``input_ids``, holds only 0 and 1,
    and every row keeps at least one token. Without an ``attention_mask``, rows padded with ``pad_token_id`` (a run
    of it at the start or the end of a row, when it is not also an EOS id) are read as padding, as transformers does,
    with a warning; every other token counts as prompt.

    Raises:
        ValueError: naming the argument, the value and what is accepted.
    """
    if not torch.is_tensor(input_ids):
        raise ValueError(f"`input_ids` must be a torch.LongTensor [batch, length], got {type(input_ids).__name__}.")
    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"`input_ids` must be a non-empty [batch, length] tensor, got shape {tuple(input_ids.shape)}.")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype}.")
    vocab = _vocabulary_size(model)
    mask_id = config.mask_token_id
    if mask_id is None:
        raise ValueError(
            "No mask token: set `mask_token_id` in the generation config, or give the tokenizer a mask token "
            "(tokenizer.add_special_tokens({'mask_token': '<|MASK|>'})) and pass it to t3d_trl.patch_model."
        )
    if vocab is not None and not 0 <= int(mask_id) < vocab:
        raise ValueError(f"`mask_token_id`={mask_id} is outside the model's vocabulary [0, {vocab}).")
    if attention_mask is not None:
        if not torch.is_tensor(attention_mask) or attention_mask.shape != input_ids.shape:
            shape = tuple(attention_mask.shape) if torch.is_tensor(attention_mask) else type(attention_mask).__name__
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {shape}."
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("`attention_mask` must hold only 0 (padding) and 1 (prompt token).")
        attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    else:
        attention_mask = _inferred_padding(input_ids, config)
    real = attention_mask.bool()
    if vocab is not None:
        bad = real & ((input_ids < 0) | (input_ids >= vocab))
        if bool(bad.any()):
            row, column = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"`input_ids` row {row}, position {column} holds id {int(input_ids[row, column])}, outside the model's "
                f"vocabulary [0, {vocab})."
            )
    empty = (~real).all(1)
    if bool(empty.any()):
        raise ValueError(
            f"Every prompt needs at least one token; row {int(empty.nonzero()[0])} of `attention_mask` is all zeros."
        )
    return attention_mask


def _inferred_padding(input_ids: torch.Tensor, config: DiffusionGenerationConfig) -> torch.Tensor:
    """The attention mask of a batch given without one: leading or trailing runs of ``pad_token_id`` are padding
    when the pad token is not an EOS token (warned once); everything else is prompt."""
    ones = torch.ones_like(input_ids, dtype=torch.long)
    pad = config.pad_token_id
    if pad is None or int(pad) in _as_id_list(config.eos_token_id) or input_ids.shape[0] == 1:
        return ones
    is_pad = (input_ids == int(pad)).long()
    leading = is_pad.cumprod(1).bool()
    trailing = is_pad.flip(1).cumprod(1).flip(1).bool()
    padding = leading | trailing
    if not bool(padding.any()):
        return ones
    logger.warning_once(
        "generate() got a batch without `attention_mask` whose rows start or end with pad_token_id "
        f"({int(pad)}): those runs are read as padding. Pass the tokenizer's attention_mask to make it explicit."
    )
    return (~padding).long()


def resolve_max_new_tokens(config: DiffusionGenerationConfig, prompt_width: int) -> int:
    """New tokens per row, as transformers defines them: ``max_new_tokens`` when set (it takes precedence), else
    ``max_length − prompt_width`` (``max_length`` counts the prompt, padded to the batch's width), else
    :data:`DEFAULT_MAX_NEW_TOKENS`.

    Raises:
        ValueError: when ``max_length`` leaves no room after the prompt.
    """
    if config.max_new_tokens is not None:
        return int(config.max_new_tokens)
    if config.max_length is not None:
        new_tokens = int(config.max_length) - prompt_width
        if new_tokens < 1:
            raise ValueError(
                f"`max_length`={config.max_length} counts the prompt (here {prompt_width} tokens wide) and leaves no "
                "room for new tokens; raise it or set `max_new_tokens` instead."
            )
        return new_tokens
    return DEFAULT_MAX_NEW_TOKENS


def _repeat_for_samples(input_ids, attention_mask, config: DiffusionGenerationConfig):
    """Each prompt ``num_return_sequences`` times in a row (its samples stay together, as in transformers)."""
    samples = config.num_return_sequences or 1
    if samples == 1:
        return input_ids, attention_mask
    return input_ids.repeat_interleave(samples, dim=0), attention_mask.repeat_interleave(samples, dim=0)


def check_position_limit(model, canvas: Canvas) -> None:
    """Raise before any compute when a row would run past the model's position limit."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return
    last = int(canvas.positions.masked_fill(~canvas.valid, -1).max()) + 1
    if last > limit:
        raise ValueError(
            f"The prompt plus max_new_tokens (rounded up to whole blocks) needs {last} positions, but the model "
            f"supports {limit} (config.max_position_embeddings). Lower max_new_tokens or shorten the prompt."
        )


@torch.no_grad()
def diffusion_generate(
    model,
    family: ModelFamily,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: DiffusionGenerationConfig,
    *,
    use_cache: bool = True,
    fuse_store: bool = True,
    generator: torch.Generator | None = None,
) -> DiffusionGenerateOutput:
    """Decode ``input_ids`` block by block with ``config`` (see the module docstring for the semantics).

    Args:
        model: a model of ``family``.
        family: the model's family (:func:`t3d_trl.models.families.get_family`).
        input_ids: ``[batch, L]`` prompts, padded on either side.
        attention_mask: ``[batch, L]`` 1 on prompt tokens, 0 on padding (``None``: no padding).
        config: the decoding settings; ``mask_token_id`` must be set.
        use_cache: decode with a prefix KV cache (block-causal family). ``False`` recomputes the whole sequence
            at every step (the reference semantics; slower).
        fuse_store: store a finished block in the first denoising forward of the next block instead of in a
            separate forward.
        generator: random generator for sampling at ``temperature > 0``.

    Returns:
        A :class:`DiffusionGenerateOutput`.
    """
    attention_mask = check_inputs(model, input_ids, attention_mask, config)
    input_ids, attention_mask = _repeat_for_samples(input_ids, attention_mask, config)
    block_size, steps = config.block_size, config.steps_per_block
    max_new_tokens = resolve_max_new_tokens(config, input_ids.shape[1])
    mask_id = config.mask_token_id
    eos_ids = torch.tensor(_as_id_list(config.eos_token_id), dtype=torch.long, device=input_ids.device)
    pad_id = (
        config.pad_token_id if config.pad_token_id is not None else (int(eos_ids[0]) if eos_ids.numel() else mask_id)
    )
    strategy = remasking_strategy(config)
    schedule = num_transfer_tokens(block_size, steps)
    max_steps = steps if strategy.follows_schedule else block_size
    if config.effective_temperature == 0 and (
        (config.top_k or 0) > 0 or (config.top_p is not None and config.top_p < 1.0)
    ):
        logger.warning_once(
            f"Greedy decoding (temperature 0 / do_sample=False) ignores the sampling settings top_k={config.top_k}, "
            f"top_p={config.top_p} of the generation config: confidences are the softmax of the unfiltered logits. "
            "Pass temperature > 0 to sample with them."
        )
    use_cache = use_cache and family.supports_cache

    canvas = build_canvas(input_ids, attention_mask, block_size, max_new_tokens, mask_id, family.grid)
    check_position_limit(model, canvas)
    if config.cache_implementation == "static":
        reason = static_fallback_reason(model, family, strategy, use_cache, fuse_store)
        if reason is None:
            tokens, step_map, nfe = decode_static(
                model, family, canvas, config, strategy, max_new_tokens, eos_ids, generator
            )
            return _outputs(input_ids, tokens, step_map, nfe, canvas, max_new_tokens, eos_ids, pad_id, config)
        logger.warning_once(f"cache_implementation='static' falls back to the dynamic decoding path: {reason}.")
    batch, width = canvas.tokens.shape
    device = canvas.tokens.device
    tokens = canvas.tokens
    # canvas blocks (only compared with each other, so counting from the first decoded block is the same rule)
    columns = torch.arange(width, device=device) - canvas.start
    block = torch.div(columns, block_size, rounding_mode="floor").expand(batch, -1)
    positions = canvas.positions.clamp(min=0)
    step_map = torch.full_like(tokens, -1)
    steps_done = torch.zeros(batch, dtype=torch.long, device=device)
    nfe = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)
    cache = family.new_cache(model, capacity=width) if use_cache else None
    stored = 0  # canvas columns already in the cache
    carry = None  # shifted heads: the logits of the column before the block

    for block_index in range(canvas.num_blocks):
        start = canvas.start + block_index * block_size
        end = start + block_size
        if use_cache and not fuse_store and stored < start:  # separate store pass (the reference scheme)
            store = DenoiseStep(tokens, positions, canvas.valid, block, active, stored, start, 0, cache)
            store.mask = family.decode_mask(store)
            family.denoise_forward(model, store)
            nfe[active] += 1
            stored = start
        masked = canvas.generated[active, start:end]
        step_inputs = None
        for step in range(max_steps):
            worked = masked.any(-1)
            if not bool(worked.any()):
                break
            context_start = stored if use_cache else 0
            if step_inputs is None or step_inputs.context_start != context_start:  # reused by the later steps
                step_inputs = DenoiseStep(
                    tokens, positions, canvas.valid, block, active, context_start, start, block_size, cache
                )
                step_inputs.mask = family.decode_mask(step_inputs)
            logits = family.denoise_forward(model, step_inputs)
            if use_cache:
                stored = start
            logits, carry = block_logits(logits, block_size, family.shift_logits, carry, logits.shape[1] > block_size)
            num_to_commit = schedule[step] if step < steps else 1
            window, window_steps, masked, worked = commit_step(
                logits,
                tokens[active, start:end],
                step_map[active, start:end],
                masked,
                steps_done[active],
                num_to_commit,
                strategy,
                config,
                generator,
            )
            tokens[active, start:end] = window
            step_map[active, start:end] = window_steps
            steps_done[active] += worked.long()
            nfe[active] += worked.long()
        done = finished_rows(
            tokens[active, start:end],
            canvas.generated[active, start:end],
            eos_ids,
            end,
            canvas.gen_start[active],
            max_new_tokens,
        )
        if bool(done.any()):
            keep = ~done
            active = active[keep]
            if carry is not None:
                carry = carry[keep]
            if active.numel() == 0:
                break
            if cache is not None:
                family.select_rows(cache, keep.nonzero().squeeze(-1))

    return _outputs(input_ids, tokens, step_map, nfe, canvas, max_new_tokens, eos_ids, pad_id, config)


def _outputs(input_ids, tokens, step_map, nfe, canvas, max_new_tokens, eos_ids, pad_id, config):
    """The prompts followed by the generated tokens, or a :class:`DiffusionGenerateOutput` with ``step_map``, ``nfe``
    (and the trajectory)."""
    generated, step_map = _generated_part(tokens, step_map, canvas.gen_start, max_new_tokens, eos_ids, pad_id)
    sequences = torch.cat([input_ids, generated.to(input_ids.dtype)], dim=1)
    if not config.return_dict_in_generate:
        return sequences
    trajectory = _trajectory(generated, step_map, config.mask_token_id) if config.output_trajectory else None
    return DiffusionGenerateOutput(sequences=sequences, step_map=step_map, nfe=nfe, trajectory=trajectory)


def _generated_part(tokens, step_map, gen_start, max_new_tokens, eos_ids, pad_id):
    """Each row's generated tokens and steps, ``pad_id`` / ``-1`` after the first EOS, trimmed to the longest row."""
    columns = gen_start[:, None] + torch.arange(max_new_tokens, device=tokens.device)[None, :]
    generated, steps = tokens.gather(1, columns), step_map.gather(1, columns)
    is_eos = torch.isin(generated, eos_ids).long()
    dropped = ((is_eos.cumsum(1) - is_eos) > 0) | (steps < 0)
    generated, steps = generated.masked_fill(dropped, pad_id), steps.masked_fill(dropped, -1)
    longest = int((~dropped).sum(1).max())
    return generated[:, :longest], steps[:, :longest]


def _trajectory(generated, step_map, mask_id):
    """States after every step: ``state_s = x where step_map <= s, mask elsewhere`` (padding kept)."""
    num_steps = int(step_map.max()) + 1
    step_index = torch.arange(num_steps, device=generated.device)[:, None, None]
    committed = (step_map[None] <= step_index) | (step_map[None] < 0)
    return torch.where(committed, generated[None], torch.full_like(generated[None], mask_id))


#: arguments of `GenerationMixin.generate` that few-step diffusion decoding does not support
_UNSUPPORTED_ARGUMENTS = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "assistant_model",
    "streamer",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
)
#: fields of `GenerationConfig` that few-step diffusion decoding honours (besides its own diffusion fields)
SUPPORTED_GENERATION_FIELDS = frozenset(
    {
        "max_new_tokens",
        "max_length",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "num_return_sequences",
        "return_dict_in_generate",
        "pad_token_id",
        "eos_token_id",
        "bos_token_id",
        "use_cache",
        "transformers_version",
        "_from_model_config",
        "cache_implementation",
        "max_cache_len",
        "compile_config",
        "disable_compile",
    }
)
#: values of unsupported fields that change nothing (transformers' neutral settings)
_NEUTRAL_VALUES = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "diversity_penalty": 0.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_length": 0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "output_logits": False,
    "early_stopping": False,
    "low_memory": False,
    "token_healing": False,
    "is_assistant": False,
    "disable_compile": False,
    "guidance_scale": 1.0,
    "min_p": 0.0,
}


def unsupported_generation_settings(values: dict) -> dict:
    """The entries of ``values`` (generation-config fields) set to something few-step diffusion decoding cannot
    honour: a transformers generation field not in :data:`SUPPORTED_GENERATION_FIELDS`, neither ``None`` nor a
    neutral value, or a ``cache_implementation`` other than ``"dynamic"`` and ``"static"``. Diffusion fields and names
    that are not transformers fields are left to the config's own checks."""
    from transformers import GenerationConfig

    known = GenerationConfig().to_dict()
    return {
        name: value
        for name, value in values.items()
        if name in known
        and value is not None
        and _NEUTRAL_VALUES.get(name, object()) != value
        and (
            name not in SUPPORTED_GENERATION_FIELDS
            or (name == "cache_implementation" and value not in SUPPORTED_CACHE_IMPLEMENTATIONS)
        )
    }


def generate_with_model(
    model,
    inputs: torch.Tensor | None = None,
    generation_config=None,
    attention_mask: torch.Tensor | None = None,
    *,
    family: ModelFamily | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    **kwargs,
):
    """Resolve the decoding settings of ``model`` and decode (the body of ``generate()``).

    Settings come from ``generation_config`` (or the model's own ``generation_config``), updated by the
    ``kwargs`` that are generation-config fields (``steps_per_block=1``, ``max_new_tokens=...``). Options that
    few-step diffusion decoding does not implement (beam search, repetition penalties, logits processors...) are
    refused when passed here and reported once when they come from the checkpoint's generation config.
    ``trust_remote_code`` and ``custom_generate`` (which transformers passes to a checkpoint's custom generation
    code) are accepted: this function is that code.
    """
    from ..models.families import get_family

    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    if input_ids is None:
        raise ValueError("Pass the prompts as `input_ids` (a [batch, length] LongTensor).")
    for name in _UNSUPPORTED_ARGUMENTS:
        if kwargs.pop(name, None) is not None:
            raise ValueError(f"`{name}` is not supported by few-step diffusion decoding.")
    if kwargs.pop("synced_gpus", None):
        raise ValueError(
            "`synced_gpus=True` is not supported: few-step diffusion decoding runs a data-dependent number of forwards "
            "per process. Generate on unsharded models (e.g. roll out with DDP before ZeRO-3 training)."
        )
    if kwargs.pop("use_model_defaults", None) is False:
        raise ValueError("`use_model_defaults=False` is not supported: decoding starts from the model's settings.")
    kwargs.pop("trust_remote_code", None)  # a permission flag for transformers, not a decoding setting
    kwargs.pop("custom_generate", None)  # already running the checkpoint's decoding
    base = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    config = DiffusionGenerationConfig.from_generation_config(base)
    ignored = unsupported_generation_settings(config.to_dict())
    check_cache_implementation(kwargs.get("cache_implementation"))
    requested = unsupported_generation_settings(kwargs)
    if requested:
        raise ValueError(
            f"generate() got options that few-step diffusion decoding does not implement: {requested}. It supports "
            f"{sorted(SUPPORTED_GENERATION_FIELDS - {'transformers_version', '_from_model_config'})} and the "
            "diffusion settings of DiffusionGenerationConfig (block_size, steps_per_block, remasking...)."
        )
    if ignored:
        logger.warning_once(
            f"The generation config sets options that few-step diffusion decoding does not implement, which are "
            f"ignored: {ignored}."
        )
    unused = config.update(**kwargs)
    if unused:
        raise ValueError(
            f"generate() got arguments that are neither generation settings nor supported inputs: {sorted(unused)}."
        )
    family = family if family is not None else get_family(model)
    family.check_model(model)
    return diffusion_generate(
        model, family, input_ids, attention_mask, config, use_cache=use_cache, generator=generator
    )
