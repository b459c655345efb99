"""Training sequence layouts: where the prompt, the clean completion ``x0`` and the noisy state ``x_t`` go.

Pure index arithmetic on padded ``[batch, width]`` tensors (no Python loop over rows or tokens), used by
:class:`~t3d_trl.collator.DataCollatorForTrajectory` through the model family (:mod:`t3d_trl.models.families`),
which decides which layout a family trains with. See ``docs/design.md`` ("Training layouts").

Both layouts take the per-completion-token tensors of the collator (``x0``, ``noisy``, ``length``, ``loss``,
``weights`` and ``origin``, the position where block 0 starts: 0 on the absolute grid, the prompt length on the
response grid), aligned at the completion start, and return the model inputs and the per-token targets on the last
``W`` columns (the *window*: ``logits_to_keep = W``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .masks import CLEAN, NOISY, block_ids, layout_attention_mask, to_additive_mask

__all__ = ["ATTENTION_LAYOUTS", "bidirectional_layout", "block_causal_layout", "gather_columns"]

#: how the block-causal layout hands its attention mask to the model
ATTENTION_LAYOUTS = ("dense", "eager", "flex", "deferred")


def gather_columns(values: Tensor, index: Tensor) -> Tensor:
    """``values[r, clamp(index[r, j])]`` (safe for out-of-range indices that the caller masks out)."""
    if values.shape[1] == 0:
        return torch.zeros(index.shape, dtype=values.dtype)
    return values.gather(1, index.clamp(0, values.shape[1] - 1))


def block_causal_layout(
    prompt: Tensor,
    prompt_len: Tensor,
    comp: dict[str, Tensor],
    block_size: int,
    pad_token_id: int,
    attention_layout: str = "dense",
) -> dict[str, Any]:
    """``[pad ; prompt ; x0 ; prompt tail + x_t]`` for block-causal models, one row per example.

    With ``P`` prompt tokens, ``C'`` completion tokens (block fill included), block 0 starting at position ``g``
    (``comp["origin"]``) and ``tail = (P − g) mod B`` (the prompt tokens that share the first completion block), row
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
    full_len, origin = comp["length"], comp["origin"]
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
    x0_tokens = gather_columns(comp["x0"], completion_index)
    pad = torch.full_like(offset, pad_token_id)
    input_ids = torch.where(
        is_prompt | is_tail,
        prompt_tokens,
        torch.where(is_clean, x0_tokens, torch.where(is_noisy, gather_columns(comp["noisy"], completion_index), pad)),
    )
    position_ids = torch.where(
        is_prompt | is_clean, offset, torch.where(noisy_stream, offset - c - t, torch.zeros_like(offset))
    )
    stream_ids = torch.where(noisy_stream, NOISY, CLEAN)
    blocks = block_ids(position_ids - origin[:, None], block_size)
    labels = torch.where(is_noisy, x0_tokens, torch.where(is_tail, prompt_tokens, input_ids))
    loss_mask = is_noisy & gather_columns(comp["loss"], completion_index)
    weights = torch.where(is_noisy, gather_columns(comp["weights"], completion_index), torch.zeros(()))

    batch: dict[str, Any] = {
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
    comp: dict[str, Tensor],
    block_size: int,
    pad_token_id: int,
    attention_layout: str = "dense",
) -> dict[str, Any]:
    """``[pad ; prompt ; x_t]`` for bidirectional mask predictors: one stream, full attention, a 2D padding mask.

    Per-row offset ``o = column − pad_r``; positions ``o``; the window is the last ``W = max C'`` columns.
    ``attention_layout`` is accepted for a uniform signature and ignored (full attention needs no layout mask).
    """
    full_len = comp["length"]
    row_len = prompt_len + full_len
    total, window = int(row_len.max()), int(full_len.max())
    offset = torch.arange(total)[None, :] - (total - row_len)[:, None]
    p = prompt_len[:, None]
    valid = offset >= 0
    is_prompt = valid & (offset < p)
    is_completion = offset >= p
    completion_index = offset - p
    x0_tokens = gather_columns(comp["x0"], completion_index)
    pad = torch.full_like(offset, pad_token_id)
    input_ids = torch.where(
        is_prompt,
        gather_columns(prompt, offset),
        torch.where(is_completion, gather_columns(comp["noisy"], completion_index), pad),
    )
    position_ids = torch.where(valid, offset, torch.zeros_like(offset))
    labels = torch.where(is_completion, x0_tokens, input_ids)
    loss_mask = is_completion & gather_columns(comp["loss"], completion_index)
    weights = torch.where(is_completion, gather_columns(comp["weights"], completion_index), torch.zeros(()))
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": valid.to(torch.int64),
        "block_ids": block_ids(position_ids - comp["origin"][:, None], block_size),
        "stream_ids": torch.where(is_completion, NOISY, CLEAN),
        "valid": valid,
        "labels": labels[:, total - window :],
        "loss_mask": loss_mask[:, total - window :],
        "path_weights": weights[:, total - window :],
        "logits_to_keep": window,
    }
