"""How trajectory producers number their steps and shape their completions, converted to t3d-trl's convention in
one place (see ``docs/rollouts.md``, "Bring your own trajectories").

t3d-trl's own convention (``docs/training.md``, "The trajectory dataset"): ``completion_ids`` are the teacher's token
ids up to and including its first EOS, without the prompt; ``step_map[i]`` is the 0-based denoising step, counted
over the whole completion, at which token ``i`` was committed; a completion without EOS was cut at the teacher's
length limit. Engines differ from it in five ways, each a field of :class:`StepConvention`:

* the number of the first step (``first_step``: 0 or 1);
* steps counted over the whole completion or restarted in every block (``per_block``, on the producer's block
  ``grid``);
* steps counted even when they commit nothing in the sequence (``counts_idle_steps``: a diffusers pipeline counts
  every refinement iteration of its batch);
* token ids that start with the prompt (``ids_include_prompt``) and tokens never committed (``uncommitted``, the
  value that marks them);
* tokens after the first EOS (the rest of the last block, or of the whole generation), which are dropped with their
  steps: t3d-trl's rollouts drop them too, so its last blocks may have gaps.

:func:`convert_trajectory` applies a convention to one sample and says why a sample cannot be converted (one of
:data:`DROP_REASONS`); :func:`to_library_steps` and :func:`to_producer_steps` are the two directions of the step
numbering, exact inverses of each other. Nothing is trimmed or padded: a step map whose length differs from the
completion's is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..models.grid import GRIDS, get_grid

__all__ = [
    "DROP_REASONS",
    "LIBRARY_CONVENTION",
    "Conversion",
    "StepConvention",
    "block_ids",
    "convert_trajectory",
    "family_grid",
    "to_library_steps",
    "to_producer_steps",
]

#: why a sample is not imported: reason -> what it means (the keys of an import summary's ``dropped``)
DROP_REASONS: dict[str, str] = {
    "no_step_map": "the sample has no step map (the official sampler writes an empty one when its worker returned "
    "none)",
    "malformed_step_map": "the step map is not a list of integers",
    "prompt_mismatch": "the producer's prompt tokens differ from the prompt given with the record",
    "length_mismatch": "the completion (as ids, or re-tokenised from its text) and the step map differ in length; "
    "nothing is trimmed or padded",
    "uncommitted_token": "a completion token before the EOS was never committed (it is still the mask)",
    "edited_after_commit": "a committed token was replaced later (diffusers' editing), so the steps are no trajectory",
    "empty_completion": "the completion has no token",
    "mask_token_in_completion": "the mask token is one of the completion's tokens",
    "token_id_outside_vocabulary": "a token id is outside the tokenizer's vocabulary",
    "not_a_schedule": "the steps are not a teacher's schedule on the model family's block grid (the validation every "
    "trajectory dataset passes)",
}


@dataclasses.dataclass(frozen=True)
class StepConvention:
    """How one producer numbers the steps of a trajectory and what its token ids hold.

    Attributes:
        first_step: the number of the first step (0 or 1).
        per_block: steps restart at ``first_step`` in every block of ``grid``.
        counts_idle_steps: the counter also advances on steps that commit no token of the sequence.
        ids_include_prompt: the producer's token ids start with the prompt's.
        uncommitted: the step value of tokens that were never committed (``None``: the producer has none).
        grid: the producer's block grid, ``"absolute"`` (block id = position // B) or ``"response"`` (blocks start
            at the first generated token); ``None``: the model family's.
    """

    first_step: int = 0
    per_block: bool = False
    counts_idle_steps: bool = False
    ids_include_prompt: bool = False
    uncommitted: int | None = None
    grid: str | None = None

    def __post_init__(self) -> None:
        if self.first_step not in (0, 1):
            raise ValueError(f"StepConvention.first_step must be 0 or 1, got {self.first_step!r}.")
        if self.grid is not None and self.grid not in GRIDS:
            raise ValueError(f"StepConvention.grid must be one of {GRIDS.names()} or None, got {self.grid!r}.")


#: t3d-trl's own convention: 0-based steps over the whole completion, prompt excluded, nothing after the first EOS
LIBRARY_CONVENTION = StepConvention()


def family_grid(model_family: str) -> str:
    """The name of the block grid the model family ``model_family`` decodes on (``"absolute"`` or ``"response"``).

    The one place the exchange of trajectories asks for it (see ``docs/design.md``, "The block grid is one object").

    Raises:
        ValueError: for an unknown family, naming the registered ones.
    """
    from ..models.families import family_class

    return family_class(model_family).decoding_grid


def block_ids(prompt_length: int, length: int, block_size: int, grid: str) -> np.ndarray:
    """The block of every completion token: ``k_i = ⌊(o + i) / B⌋``, ``o`` the grid's completion offset (``P`` on the
    absolute grid, ``0`` on the response grid; ``P`` the prompt length, ``B`` the block size)."""
    origin = get_grid(grid).completion_offset(prompt_length)
    return (origin + np.arange(length, dtype=np.int64)) // block_size


def _block_starts(blocks: np.ndarray) -> np.ndarray:
    """The index of the first token of every run of equal block ids."""
    return np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])


def to_library_steps(
    steps: Sequence[int], convention: StepConvention, prompt_length: int, block_size: int, grid: str
) -> np.ndarray:
    """A producer's steps in t3d-trl's numbering: 0-based, counted over the whole completion.

    With ``b`` = ``first_step`` and ``r_i = s_i − b``:

    * per block: ``g_i = r_i + Σ_{k < k_i} n_k`` with ``n_k = max_{j ∈ k} r_j + 1`` the steps block ``k`` took;
    * idle steps counted: ``g_i`` = the rank of ``g_i`` among the distinct steps of the row (steps that committed
      nothing are not steps of this trajectory);
    * uncommitted tokens (``s_i`` = ``uncommitted``) get ``−1`` and take no part in either.

    Args:
        steps: the producer's step of every completion token.
        convention: the producer's :class:`StepConvention`.
        prompt_length: the number of prompt tokens (places the absolute grid).
        block_size: the teacher's block size.
        grid: the block grid of the per-block numbering (the convention's own, else the model family's).

    Returns:
        ``int64`` steps, ``−1`` at uncommitted tokens.
    """
    raw = np.asarray(steps, dtype=np.int64)
    known = raw != convention.uncommitted if convention.uncommitted is not None else np.ones(raw.shape, dtype=bool)
    relative = raw - convention.first_step
    if convention.per_block and raw.size:
        starts = _block_starts(block_ids(prompt_length, raw.size, block_size, grid))
        used = np.maximum.reduceat(np.where(known, relative, -1), starts) + 1
        offsets = np.r_[0, np.cumsum(used)[:-1]]
        relative = relative + np.repeat(offsets, np.diff(np.r_[starts, raw.size]))
    if convention.counts_idle_steps and known.any():
        relative[known] = np.unique(relative[known], return_inverse=True)[1]
    return np.where(known, relative, -1)


def to_producer_steps(
    steps: Sequence[int], convention: StepConvention, prompt_length: int, block_size: int, grid: str
) -> np.ndarray:
    """t3d-trl's steps in a producer's numbering, the inverse of :func:`to_library_steps`.

    Per block: ``s_i = g_i − o_{k_i} + b`` with ``o_0 = 0`` and ``o_k = max_{j ∈ k−1} g_j + 1`` (a block starts right
    after the previous one); then ``s_i = g_i + b`` over the whole completion. Since ``Σ_{k'<k} n_{k'} = o_k``,
    converting back gives ``g`` exactly.

    Raises:
        ValueError: for a convention that counts idle steps (which steps were idle is not recorded).
    """
    if convention.counts_idle_steps:
        raise ValueError(
            "Steps cannot be written in a numbering that counts idle steps: which steps were idle is lost."
        )
    global_steps = np.asarray(steps, dtype=np.int64)
    if convention.per_block and global_steps.size:
        starts = _block_starts(block_ids(prompt_length, global_steps.size, block_size, grid))
        highs = np.maximum.reduceat(global_steps, starts)
        offsets = np.r_[0, highs[:-1] + 1]
        global_steps = global_steps - np.repeat(offsets, np.diff(np.r_[starts, global_steps.size]))
    return global_steps + convention.first_step


@dataclasses.dataclass
class Conversion:
    """One sample in t3d-trl's convention, or why it could not be converted.

    Attributes:
        prompt_ids: the prompt's token ids.
        completion_ids: the completion's ids, up to and including the first EOS.
        step_map: the 0-based step of every completion token, over the whole completion.
        reason: ``""`` when converted, else a key of :data:`DROP_REASONS`.
        detail: what exactly was wrong (for the summary and ``strict=True`` errors).
        cut_after_eos: whether tokens after the first EOS were dropped.
    """

    prompt_ids: list[int]
    completion_ids: list[int]
    step_map: list[int]
    reason: str = ""
    detail: str = ""
    cut_after_eos: bool = False


def _is_int_list(value: Any) -> bool:
    if not isinstance(value, (list, tuple, np.ndarray)):
        return False
    array = np.asarray(value)
    return array.ndim == 1 and (array.size == 0 or array.dtype.kind in "iu")


def _dropped(prompt_ids: Sequence[int], reason: str, detail: str) -> Conversion:
    return Conversion(list(prompt_ids), [], [], reason=reason, detail=detail)


def convert_trajectory(
    prompt_ids: Sequence[int] | None,
    ids: Sequence[int],
    steps: Sequence[int] | None,
    convention: StepConvention,
    *,
    block_size: int,
    grid: str,
    eos_token_ids: Sequence[int] = (),
    edited: Sequence[bool] | None = None,
    expected_prompt_length: int | None = None,
) -> Conversion:
    """Bring one sample to t3d-trl's convention: the only place where producers' conventions are converted.

    In order: the prompt is split off the ids when they include it (and checked against ``prompt_ids`` when given;
    without them the prompt is the ids' first ``len(ids) − len(steps)``), the prompt length is checked against the
    producer's count (``expected_prompt_length``), the step map must be a list of integers as long as the completion,
    the steps are renumbered (:func:`to_library_steps`), the completion and its steps are cut after the first token in
    ``eos_token_ids``, and the kept tokens must all be committed, none edited after its commit, and at least one.

    Args:
        prompt_ids: the prompt's ids (``None`` when they are to be read from ``ids``).
        ids: the producer's completion ids (prompt first when the convention says so).
        steps: the producer's step of every completion token (``None``: it recorded none).
        convention: the producer's :class:`StepConvention`.
        block_size: the teacher's block size.
        grid: the model family's block grid (used when the convention names none).
        eos_token_ids: the token(s) after which a completion ends.
        edited: per completion token, whether the producer replaced it after committing it.
        expected_prompt_length: the producer's own count of prompt tokens, if it reports one.

    Returns:
        The :class:`Conversion` (its ``reason`` says why the sample is dropped, if it is).
    """
    ids = list(ids)
    if steps is None or (isinstance(steps, str) and not steps):
        return _dropped(prompt_ids or [], "no_step_map", "the sample has no step map")
    if not _is_int_list(steps):
        return _dropped(prompt_ids or [], "malformed_step_map", f"step map of type {type(steps).__name__}")
    steps = [int(step) for step in steps]
    if convention.ids_include_prompt:
        length = len(ids) - len(steps) if prompt_ids is None else len(prompt_ids)
        if length < 0:
            return _dropped([], "length_mismatch", f"{len(ids)} ids cannot hold a step map of {len(steps)}")
        if prompt_ids is not None and ids[:length] != list(prompt_ids):
            return _dropped(prompt_ids, "prompt_mismatch", "the ids do not start with the prompt given")
        prompt_ids, ids = ids[:length], ids[length:]
    prompt_ids = list(prompt_ids or [])
    if expected_prompt_length is not None and expected_prompt_length != len(prompt_ids):
        detail = f"the producer counted {expected_prompt_length} prompt tokens, the prompt given has {len(prompt_ids)}"
        return _dropped(prompt_ids, "prompt_mismatch", detail)
    if len(steps) != len(ids):
        return _dropped(prompt_ids, "length_mismatch", f"len(step_map)={len(steps)} != {len(ids)} completion tokens")
    library = to_library_steps(steps, convention, len(prompt_ids), block_size, convention.grid or grid)
    end = len(ids)
    if eos_token_ids:
        hits = np.flatnonzero(np.isin(np.asarray(ids, dtype=np.int64), np.asarray(eos_token_ids, dtype=np.int64)))
        end = int(hits[0]) + 1 if hits.size else end
    kept, kept_steps = ids[:end], library[:end]
    if edited is not None and any(edited[:end]):
        first = next(i for i, flag in enumerate(edited[:end]) if flag)
        return _dropped(prompt_ids, "edited_after_commit", f"completion token {first} was replaced after its commit")
    if (kept_steps < 0).any():
        first = int(np.flatnonzero(kept_steps < 0)[0])
        if convention.uncommitted is not None and steps[first] == convention.uncommitted:
            return _dropped(prompt_ids, "uncommitted_token", f"completion token {first} was never committed")
    if not kept:
        return _dropped(prompt_ids, "empty_completion", "the completion has no token")
    return Conversion(prompt_ids, kept, kept_steps.tolist(), cut_after_eos=end < len(ids))
