"""Training layouts: how each model family trains on a trajectory state.

A :class:`TrainingLayout` is the training half of a model family (its decoding half, :mod:`t3d_trl.models.families`,
is what checkpoints ship): where the prompt, the clean completion ``x0`` and the noisy state ``x_t`` go in the training
sequence (:meth:`TrainingLayout.build`), which tokens of a trajectory state are noised and trained
(:meth:`TrainingLayout.trajectory_state`), how the attention mask reaches the model (:attr:`TrainingLayout.attention`,
:meth:`TrainingLayout.mask`) and the training forward that turns a batch into the window's logits or statistics
(:meth:`TrainingLayout.forward`). Layouts are registered per family with :func:`register_training_layout`; a family
without one of its own trains with the layout of the nearest registered family it subclasses
(:func:`training_layout_class`).

The layouts are pure index arithmetic on padded ``[batch, width]`` tensors (no Python loop over rows or tokens). Both
take the per-completion-token tensors of the collator (:class:`CompletionTargets`), aligned at the completion start,
and return the model inputs and the per-token targets on the last ``W`` columns (the *window*:
``logits_to_keep = W``) as a :class:`TrajectoryBatch`. See ``docs/design.md`` ("Training layouts").
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Collection
from typing import Any, ClassVar, TypedDict

import torch
from torch import Tensor

from .masks import CLEAN, NOISY, block_ids, layout_attention_mask, layout_block_mask, to_additive_mask
from .models.families import FAMILIES, ModelFamily, _forward_parameters, attention_kernel
from .registry import Registry
from .statistics import StatisticsRequest, TokenStatistics, head_gives_logits, statistics_head, window_statistics
from .trajectory import sample_current_block

__all__ = [
    "ATTENTION_LAYOUTS",
    "LAYOUTS",
    "BidirectionalLayout",
    "BlockCausalLayout",
    "CompletionTargets",
    "TrainingLayout",
    "TrajectoryBatch",
    "bidirectional_layout",
    "block_causal_layout",
    "gather_columns",
    "register_training_layout",
    "training_layout",
    "training_layout_class",
]

#: how the block-causal layout hands its attention mask to the model
ATTENTION_LAYOUTS = ("dense", "eager", "flex", "deferred")


@dataclasses.dataclass
class CompletionTargets:
    """Per-completion-token tensors ``[b, C']`` aligned at the completion start (column ``j`` = token ``j``), as the
    collator computes them for a layout.

    Attributes:
        x0: the teacher's tokens, completed to a block boundary (EOS after an ended completion, the mask token in the
            open slots after a cut one).
        noisy: the state ``x_t``: ``x0`` with the state's tokens masked (or replaced by random tokens).
        length: ``[b]`` tokens per row, the block fill included (``C'``).
        origin: ``[b]`` the position where block 0 of the training grid starts (0 on the absolute grid, the prompt
            length on the response grid).
        loss: the tokens that carry a loss.
        weights: the path weights ``w_i`` of every token.
    """

    x0: Tensor
    noisy: Tensor
    length: Tensor
    origin: Tensor
    loss: Tensor
    weights: Tensor


class TrajectoryBatch(TypedDict, total=False):
    """A training batch of :class:`~t3d_trl.collator.DataCollatorForTrajectory` (a dict, so that ``Trainer`` moves it
    to the device). Sequence tensors are ``[b, N]``, window tensors ``[b, W]`` (the last ``W`` columns).

    Keys: ``input_ids``, ``position_ids``, ``block_ids``, ``stream_ids`` (``CLEAN``/``NOISY``), ``valid`` (``False`` at
    padding), ``attention_mask`` (absent when the model builds it on its device), ``labels``, ``loss_mask`` and
    ``path_weights`` on the window, ``logits_to_keep`` (``W``), ``example_index`` and ``mask_ratio`` (``[b]``), and,
    for every extra state ``name`` the collator makes (:mod:`t3d_trl.states`), ``{name}_input_ids`` ``[b, N]`` and
    ``{name}_loss_mask`` ``[b, W]``.
    """

    input_ids: Tensor
    position_ids: Tensor
    block_ids: Tensor
    stream_ids: Tensor
    valid: Tensor
    attention_mask: Any
    labels: Tensor
    loss_mask: Tensor
    path_weights: Tensor
    logits_to_keep: int
    example_index: Tensor
    mask_ratio: Tensor


def gather_columns(values: Tensor, index: Tensor) -> Tensor:
    """``values[r, clamp(index[r, j])]`` (safe for out-of-range indices that the caller masks out)."""
    if values.shape[1] == 0:
        return torch.zeros(index.shape, dtype=values.dtype)
    return values.gather(1, index.clamp(0, values.shape[1] - 1))


def block_causal_layout(
    prompt: Tensor,
    prompt_len: Tensor,
    comp: CompletionTargets,
    block_size: int,
    pad_token_id: int,
    attention_layout: str = "dense",
) -> TrajectoryBatch:
    """``[pad ; prompt ; x0 ; prompt tail + x_t]`` for block-causal models, one row per example.

    With ``P`` prompt tokens, ``C'`` completion tokens (block fill included), block 0 starting at position ``g``
    (``comp.origin``) and ``tail = (P − g) mod B`` (the prompt tokens that share the first completion block), row
    ``r`` has ``n = P + 2C' + tail`` real columns, right-aligned, and per-row offset ``o = column − pad_r``. Segments
    in ``o``: prompt ``[0, P)``, clean ``[P, P + C')``, noisy tail ``[P + C', P + C' + tail)``, noisy completion
    ``[P + C' + tail, n)``; positions ``o``, ``o``, ``o − C' − tail``, ``o − C' − tail`` (the noisy copy reuses the
    positions of its clean twin). Blocks are ``⌊(position − g) / B⌋`` (on the response grid the prompt's blocks count
    backwards from its end) and streams CLEAN / NOISY, and the attention mask is the rule of
    :func:`~t3d_trl.masks.layout_attention_mask` on them.

    Args:
        prompt: ``[b, P_max]`` right-padded prompt ids.
        prompt_len: ``[b]`` prompt lengths.
        comp: per-completion-token tensors (see the module docstring).
        block_size: training block size ``B``.
        pad_token_id: id of padding columns.
        attention_layout: ``"dense"`` (boolean ``[b, 1, N, N]`` mask, for sdpa), ``"eager"`` (its additive float32
            form), ``"flex"`` or ``"deferred"`` (no mask: the model family builds it on the accelerator from
            ``block_ids`` / ``stream_ids`` / ``valid``).

    Returns:
        ``input_ids``, ``position_ids``, ``block_ids``, ``stream_ids``, ``valid`` ``[b, N]``, optionally
        ``attention_mask``, and ``labels``, ``loss_mask``, ``path_weights`` ``[b, W]`` with ``logits_to_keep = W``.
    """
    full_len, origin = comp.length, comp.origin
    tail = torch.remainder(prompt_len - origin, block_size)
    noisy_len = tail + full_len
    row_len = prompt_len + full_len + noisy_len
    total, window = int(row_len.max()), int(noisy_len.max())
    offset = torch.arange(total)[None, :] - (total - row_len)[:, None]
    p, c, t = prompt_len[:, None], full_len[:, None], tail[:, None]
    valid = offset >= 0
    is_prompt = valid & (offset < p)
    is_clean = (offset >= p) & (offset < p + c)
    is_tail = (offset >= p + c) & (offset < p + c + t)
    is_noisy = offset >= p + c + t
    noisy_stream = is_tail | is_noisy

    prompt_index = torch.where(is_prompt, offset, offset - c - t)  # tail: P − tail + (o − P − C')
    completion_index = torch.where(is_clean, offset - p, offset - p - c - t)
    prompt_tokens = gather_columns(prompt, prompt_index)
    x0_tokens = gather_columns(comp.x0, completion_index)
    pad = torch.full_like(offset, pad_token_id)
    input_ids = torch.where(
        is_prompt | is_tail,
        prompt_tokens,
        torch.where(is_clean, x0_tokens, torch.where(is_noisy, gather_columns(comp.noisy, completion_index), pad)),
    )
    position_ids = torch.where(
        is_prompt | is_clean, offset, torch.where(noisy_stream, offset - c - t, torch.zeros_like(offset))
    )
    stream_ids = torch.where(noisy_stream, NOISY, CLEAN)
    blocks = block_ids(position_ids - origin[:, None], block_size)
    labels = torch.where(is_noisy, x0_tokens, torch.where(is_tail, prompt_tokens, input_ids))
    loss_mask = is_noisy & gather_columns(comp.loss, completion_index)
    weights = torch.where(is_noisy, gather_columns(comp.weights, completion_index), torch.zeros(()))

    batch: TrajectoryBatch = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "block_ids": blocks,
        "stream_ids": stream_ids,
        "valid": valid,
    }
    if attention_layout in ("dense", "eager"):
        mask = layout_attention_mask(blocks, stream_ids, blocks, stream_ids, valid, query_valid=valid)
        batch["attention_mask"] = to_additive_mask(mask, torch.float32) if attention_layout == "eager" else mask
    batch.update(
        labels=labels[:, total - window :],
        loss_mask=loss_mask[:, total - window :],
        path_weights=weights[:, total - window :],
        logits_to_keep=window,
    )
    return batch


def bidirectional_layout(
    prompt: Tensor,
    prompt_len: Tensor,
    comp: CompletionTargets,
    block_size: int,
    pad_token_id: int,
    attention_layout: str = "dense",
) -> TrajectoryBatch:
    """``[pad ; prompt ; x_t]`` for bidirectional mask predictors: one stream, full attention, a 2D padding mask.

    Per-row offset ``o = column − pad_r``; positions ``o``; the window is the last ``W = max C'`` columns.
    ``attention_layout`` is accepted for a uniform signature and ignored (full attention needs no layout mask).
    """
    full_len = comp.length
    row_len = prompt_len + full_len
    total, window = int(row_len.max()), int(full_len.max())
    offset = torch.arange(total)[None, :] - (total - row_len)[:, None]
    p = prompt_len[:, None]
    valid = offset >= 0
    is_prompt = valid & (offset < p)
    is_completion = offset >= p
    completion_index = offset - p
    x0_tokens = gather_columns(comp.x0, completion_index)
    pad = torch.full_like(offset, pad_token_id)
    input_ids = torch.where(
        is_prompt,
        gather_columns(prompt, offset),
        torch.where(is_completion, gather_columns(comp.noisy, completion_index), pad),
    )
    position_ids = torch.where(valid, offset, torch.zeros_like(offset))
    labels = torch.where(is_completion, x0_tokens, input_ids)
    loss_mask = is_completion & gather_columns(comp.loss, completion_index)
    weights = torch.where(is_completion, gather_columns(comp.weights, completion_index), torch.zeros(()))
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": valid.to(torch.int64),
        "block_ids": block_ids(position_ids - comp.origin[:, None], block_size),
        "stream_ids": torch.where(is_completion, NOISY, CLEAN),
        "valid": valid,
        "labels": labels[:, total - window :],
        "loss_mask": loss_mask[:, total - window :],
        "path_weights": weights[:, total - window :],
        "logits_to_keep": window,
    }


# ------------------------------------------------------------------------------------------------ training layouts
class TrainingLayout(abc.ABC):
    """How the models of one family train (see the module docstring): the training half of a model family.

    Subclasses implement :meth:`build` and may override :meth:`trajectory_state`; register them for a family with
    :func:`register_training_layout`.

    Args:
        family: the family object that drives the model (its ``shift_logits`` aligns the training forward).
    """

    #: how the collator hands over the attention mask (:data:`ATTENTION_LAYOUTS`): ``"dense"`` builds a boolean
    #: ``[b, 1, N, N]`` mask on the host, ``"deferred"`` leaves it to :meth:`mask` on the model's device
    attention: ClassVar[str] = "dense"
    #: whether the training forward always passes ``position_ids`` (they carry the layout's block structure)
    needs_position_ids: ClassVar[bool] = False

    def __init__(self, family: ModelFamily) -> None:
        self.family = family

    @staticmethod
    def trajectory_state(
        state: Tensor, trained: Tensor, block: Tensor, valid: Tensor, example_index: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        """Which completion tokens of a trajectory state are noised and which are trained on.

        Args:
            state: ``[b, C]`` bool, the tokens each block's state masks.
            trained: ``[b, C]`` bool, tokens that may carry a loss.
            block: ``[b, C]`` the training block of every token.
            valid: ``[b, C]`` bool, ``False`` at padding.
            example_index: ``[b]`` the dataset index of every example (a key of the per-example hash).
            seed: the seed of the per-example hash.

        Returns:
            ``(noised, loss_mask)``; by default every block is noised independently and trained.
        """
        return state, state & trained

    @staticmethod
    @abc.abstractmethod
    def build(
        prompt: Tensor,
        prompt_len: Tensor,
        comp: CompletionTargets,
        block_size: int,
        pad_token_id: int,
        attention_layout: str,
    ) -> TrajectoryBatch:
        """The training batch of the layout from left-padded ``prompt`` ``[b, P]`` (``prompt_len`` ``[b]`` tokens
        each) and the completion targets (see :func:`block_causal_layout`)."""

    def mask(self, kernel: str, batch: TrajectoryBatch, dtype: torch.dtype = torch.float32) -> Any:
        """The layout's attention mask built from a batch's ``block_ids``/``stream_ids``/``valid`` on their device: a
        flex ``BlockMask``, the additive mask of eager attention, or the boolean mask of sdpa."""
        block, stream, valid = batch["block_ids"], batch["stream_ids"], batch["valid"]
        if kernel == "flex_attention":
            return layout_block_mask(block, stream, valid)
        mask = layout_attention_mask(block, stream, block, stream, valid, query_valid=valid)
        return to_additive_mask(mask, dtype) if kernel == "eager" else mask

    def forward(
        self,
        model: torch.nn.Module,
        batch: TrajectoryBatch,
        forward_parameters: Collection[str] | None = None,
        kernel: str | None = None,
        dtype: torch.dtype = torch.float32,
        statistics: StatisticsRequest | None = None,
        chunk_size: int | None = None,
        unwrapped: torch.nn.Module | None = None,
    ) -> Tensor | TokenStatistics:
        """The noisy window of a collated batch: its logits ``[b, W, V]``, or with ``statistics`` its
        :class:`~t3d_trl.statistics.TokenStatistics`.

        Builds the layout mask on the batch's device when the collator left it to the model, asks the model for only
        the window's logits (``logits_to_keep``) and aligns shifted heads (the logit of token ``i`` is read at
        position ``i - 1``). With ``statistics`` and a ``chunk_size``, the model's LM head is replaced for the forward
        by a :class:`~t3d_trl.statistics.StatisticsHead` that computes the statistics ``chunk_size`` positions at a
        time from the last hidden states, so no whole window of logits exists; without ``chunk_size`` they are
        computed from the window's logits.

        Args:
            model: the model to run (possibly wrapped for distributed training).
            batch: the collated batch.
            forward_parameters: the arguments the unwrapped model's forward accepts (default: ``model.forward``'s).
            kernel: the attention implementation of the unwrapped model.
            dtype: the parameter dtype of the unwrapped model (for eager attention's additive mask).
            statistics: what to compute per window position, instead of returning logits.
            chunk_size: window tokens (rows × positions) per chunk when computing ``statistics`` inside the forward.
            unwrapped: the model without its distributed wrapper, whose LM head is replaced (default ``model``).
        """
        shift = self.family.shift_logits
        accepted = _forward_parameters(model) if forward_parameters is None else forward_parameters
        window = int(batch["logits_to_keep"])
        keep = window + 1 if shift else window
        mask = batch.get("attention_mask")
        if mask is None:  # the collator left the mask to the device
            mask = self.mask(kernel or attention_kernel(model), batch, dtype)
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if "position_ids" in accepted or self.needs_position_ids:
            kwargs["position_ids"] = batch["position_ids"]
        if "logits_to_keep" in accepted:
            kwargs["logits_to_keep"] = keep
        owner = unwrapped if unwrapped is not None else model
        if statistics is not None and chunk_size and head_gives_logits(owner):
            request = statistics.shifted() if shift else statistics  # one more hidden state, dropped below
            with statistics_head(owner, request, chunk_size) as head:
                output = model(**kwargs).logits[:, -keep:]
            if head.calls:
                return statistics.wrap(output[:, :-1] if shift else output)
            logits = output  # the model computed its logits without calling its head module
        else:
            logits = model(**kwargs).logits[:, -keep:]
        logits = logits[:, :-1] if shift else logits
        if statistics is None:
            return logits
        return window_statistics(logits, statistics, chunk_size)


class BlockCausalLayout(TrainingLayout):
    """``[prompt ; x0 ; x_t]`` with block-causal attention (:func:`block_causal_layout`): the mask is built on the
    model's device from ``block_ids`` / ``stream_ids`` / ``valid``, never as ``N × N`` on the host."""

    attention = "deferred"
    needs_position_ids = True
    build = staticmethod(block_causal_layout)


class BidirectionalLayout(TrainingLayout):
    """``[prompt ; x_t]`` with full attention (:func:`bidirectional_layout`) and a global step cut as the state."""

    attention = "dense"

    @staticmethod
    def trajectory_state(
        state: Tensor, trained: Tensor, block: Tensor, valid: Tensor, example_index: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        """A global step cut: blocks before the current one ``c`` are clean, ``c`` holds the state, later blocks are
        fully masked, and only ``c`` is trained (``c`` drawn per example from its completion's blocks)."""
        big = torch.iinfo(torch.int64).max
        first = torch.where(valid, block, torch.full_like(block, big)).amin(dim=1)
        last = torch.where(valid, block, torch.full_like(block, -1)).amax(dim=1)
        first = torch.where(last >= 0, first, torch.zeros_like(first))
        current = (first + sample_current_block(example_index, seed, (last - first + 1).clamp_min(1)))[:, None]
        loss = state & trained & (block == current)
        return valid & ((block > current) | ((block == current) & state)), loss

    build = staticmethod(bidirectional_layout)


#: training layouts by the name of the family they train
LAYOUTS: Registry[type[TrainingLayout]] = Registry(
    "training layout", hint="register one with t3d_trl.layouts.register_training_layout"
)


def register_training_layout(
    family: type[ModelFamily] | str, layout: type[TrainingLayout], *, overwrite: bool = False
) -> type[TrainingLayout]:
    """Train the models of ``family`` (a registered family or its name) with ``layout``.

    Raises:
        ValueError: for an unregistered family, or one that has a layout already (without ``overwrite``).
    """
    name = family if isinstance(family, str) else family.name
    FAMILIES.resolve(name)
    return LAYOUTS.register(name, layout, overwrite=overwrite)


LAYOUTS.register("block_causal", BlockCausalLayout, builtin=True)
LAYOUTS.register("bidirectional", BidirectionalLayout, builtin=True)


def training_layout_class(family: ModelFamily | type[ModelFamily] | str) -> type[TrainingLayout]:
    """The layout of ``family``: its own, else that of the nearest registered family it subclasses.

    Raises:
        ValueError: when neither ``family`` nor any family it subclasses has a registered layout.
    """
    cls = FAMILIES.get_entry(family) if isinstance(family, str) else family
    cls = cls if isinstance(cls, type) else type(cls)
    for base in cls.__mro__:
        name = getattr(base, "name", "")
        if name and name in LAYOUTS and issubclass(cls, FAMILIES.get(name, object)):
            return LAYOUTS[name]
    raise ValueError(
        f"The model family {cls.name!r} has no training layout; register one with "
        f"t3d_trl.layouts.register_training_layout({cls.__name__}, MyLayout) (registered: {', '.join(LAYOUTS)})."
    )


def training_layout(family: ModelFamily) -> TrainingLayout:
    """The :class:`TrainingLayout` that trains the models ``family`` drives."""
    return training_layout_class(family)(family)
