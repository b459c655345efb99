"""One denoising step of a block, shared by both decoders: the block's logits, sample, select, commit; and when a row
is finished.

The dynamic decoder (:mod:`t3d_trl.generation.decoding`) and the static-shape one (:mod:`t3d_trl.generation.static`)
differ in how they run forwards (shapes, cache, finished rows); what a step does with the logits is the same, and
lives here once (``docs/design.md``, "Decoding semantics").
"""

from __future__ import annotations

import torch

from .remasking import RemaskingStrategy
from .sampling import sample_tokens

__all__ = ["block_logits", "commit_step", "finished_rows"]


def block_logits(
    logits: torch.Tensor,
    block_size: int,
    shift_logits: bool,
    carry: torch.Tensor | None,
    covers_previous: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits that predict the block's ``B`` tokens, and the carry of shifted heads.

    A head whose logit at position ``i`` predicts token ``i + 1`` needs the logit of the column before the block: a
    forward that computed it for real (``covers_previous``: the block's first) updates the carry; the later steps
    reuse it.

    Args:
        logits: ``[r, Q, V]`` logits of a forward whose last ``B`` columns are the block.
        block_size: ``B``.
        shift_logits: whether the head is shifted.
        carry: ``[r, V]`` the logits of the column before the block, from an earlier step (shifted heads).
        covers_previous: whether ``logits`` hold a real logit for the column before the block.

    Returns:
        ``(logits [r, B, V], carry)``.
    """
    if not shift_logits:
        return logits[:, -block_size:], carry
    if covers_previous:
        carry = logits[:, -block_size - 1].clone()  # a CUDA graph overwrites its outputs at the next replay
    return torch.cat([carry[:, None], logits[:, -block_size:-1]], dim=1), carry


def commit_step(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    step_map: torch.Tensor,
    masked: torch.Tensor,
    steps_done: torch.Tensor,
    num_to_commit: int,
    strategy: RemaskingStrategy,
    config,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample every masked position of a block, select the ones to commit and commit them.

    The token and its confidence come from :func:`~t3d_trl.generation.sampling.sample_tokens` (the mask token never
    sampled; greedy at temperature 0 with the unfiltered softmax), the positions from the remasking ``strategy`` with
    ``num_to_commit`` the schedule's ``k_j``. Committed positions get the sampled token and the row's step number.

    Args:
        logits: ``[r, B, V]`` the block's logits (:func:`block_logits`).
        tokens: ``[r, B]`` the block's tokens.
        step_map: ``[r, B]`` the step that committed each token (``-1``: not yet).
        masked: ``[r, B]`` the positions still masked.
        steps_done: ``[r]`` steps each row has taken so far (the step number of this step's commits).
        num_to_commit: ``k_j``.
        strategy: the remasking strategy.
        config: the decoding settings (``effective_temperature``, ``top_k``, ``top_p``, ``mask_token_id``).
        generator: random generator for sampling.

    Returns:
        ``(tokens, step_map, masked, worked)``: the block after the step, and ``[r]`` whether each row had masked
        positions (its step counts: its ``steps_done`` and ``nfe`` grow by it).
    """
    sampled, confidence, entropy = sample_tokens(
        logits,
        config.effective_temperature,
        config.top_k,
        config.top_p,
        generator,
        suppress_token_id=config.mask_token_id,
    )
    worked = masked.any(-1)
    commit = strategy.select(confidence, entropy, masked, num_to_commit, generator)
    tokens = torch.where(commit, sampled.to(tokens.dtype), tokens)
    step_map = torch.where(commit, steps_done[:, None], step_map)
    return tokens, step_map, masked & ~commit, worked


def finished_rows(
    tokens: torch.Tensor,
    generated: torch.Tensor,
    eos_ids: torch.Tensor,
    block_end: int,
    gen_start: torch.Tensor,
    max_new_tokens: int,
) -> torch.Tensor:
    """``[r]`` whether each row stops after this block: it emitted an EOS id in its generated part of the block, or
    its generated tokens reach ``max_new_tokens``.

    Args:
        tokens: ``[r, B]`` the block's tokens.
        generated: ``[r, B]`` the block's generated positions (not prompt, not padding).
        eos_ids: ``[n]`` EOS ids.
        block_end: the canvas column after the block.
        gen_start: ``[r]`` the canvas column of each row's first generated token.
        max_new_tokens: new tokens per row.
    """
    hit_eos = (torch.isin(tokens, eos_ids) & generated).any(-1)
    return hit_eos | ((block_end - gen_start) >= max_new_tokens)
