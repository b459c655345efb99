"""Trajectory datasets: the format, its validation, and the mask-token check.

One row per teacher rollout (``docs/training.md``, "The trajectory dataset"):

==================  ==========================================================================================
column              content
==================  ==========================================================================================
``prompt``          the prompt, as text or as chat messages (optional when ``prompt_ids`` is given)
``completion``      the completion text (optional when ``completion_ids`` is given)
``prompt_ids``      ``list[int]``, the prompt's token ids (chat template applied)
``completion_ids``  ``list[int]``, the teacher's own token ids, ending with EOS if the teacher emitted it
``step_map``        ``list[int]``, per completion token the 0-based denoising step, counted over the whole
                    completion, that committed it
``block_size``      the teacher's block size (column, or the ``block_size`` argument)
``steps_per_block`` the teacher's denoising steps per block (informational)
==================  ==========================================================================================

Store token ids, not only text: re-tokenising a completion can change its token boundaries and break the alignment
with ``step_map``. :func:`t3d_trl.generate_trajectories` writes rows in this format.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
from datasets import Dataset

from .models.grid import BlockGrid, get_grid
from .prompts import tokenize_prompts, tokenizer_of

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCK_SIZE",
    "COMPLETION",
    "COMPLETION_IDS",
    "EXAMPLE_INDEX",
    "PROMPT",
    "PROMPT_IDS",
    "STEPS_PER_BLOCK",
    "STEP_MAP",
    "TRAJECTORY_COLUMNS",
    "prepare_trajectory_dataset",
    "validate_mask_token",
]

PROMPT = "prompt"
COMPLETION = "completion"
PROMPT_IDS = "prompt_ids"
COMPLETION_IDS = "completion_ids"
STEP_MAP = "step_map"
BLOCK_SIZE = "block_size"
STEPS_PER_BLOCK = "steps_per_block"
EXAMPLE_INDEX = "example_index"

#: The columns of a trajectory dataset, in their conventional order.
TRAJECTORY_COLUMNS = (PROMPT, COMPLETION, PROMPT_IDS, COMPLETION_IDS, STEP_MAP, BLOCK_SIZE, STEPS_PER_BLOCK)

_TRUNCATIONS = ("keep_start", "error")
_PROBLEM = "_t3d_problem"
_PROMPT_LEN = "_t3d_prompt_len"
_COMPLETION_LEN = "_t3d_completion_len"
_PROMPT_CUT = "_t3d_prompt_cut"
_HELPER_COLUMNS = (_PROBLEM, _PROMPT_LEN, _COMPLETION_LEN, _PROMPT_CUT)

_FORMAT_HELP = (
    "A trajectory dataset has one row per teacher rollout with `prompt_ids` (or a text/chat `prompt`), "
    "`completion_ids` (or a text `completion`), `step_map` (per completion token, the 0-based denoising step "
    "that committed it) and the teacher's `block_size` (column or argument)."
)
_STEP_MAP_HELP = (
    "`step_map` records, for every completion token, the teacher's denoising step that committed it; it cannot "
    "be recovered from text. Record rollouts with `t3d_trl.generate_trajectories`, which writes `prompt_ids`, "
    "`completion_ids` and `step_map`."
)


def _ids_problem(name: str, ids: Any, vocab_size: int | None) -> str:
    """Empty string if ``ids`` is a list of integer token ids within ``[0, vocab_size)``, else what is wrong."""
    if ids is None:
        return f"{name} is None"
    if not isinstance(ids, (list, tuple)):
        return f"{name} must be a list of token ids, got {type(ids).__name__}"
    bad = next((value for value in ids if isinstance(value, bool) or not isinstance(value, (int, np.integer))), None)
    if bad is not None:
        return f"{name} holds {bad!r} ({type(bad).__name__}); token ids must be integers"
    if vocab_size is not None and ids:
        low, high = min(ids), max(ids)
        if low < 0 or high >= vocab_size:
            return f"{name} holds id {low if low < 0 else high}, outside the vocabulary [0, {vocab_size})"
    return ""


def _row_problem(
    prompt_ids: list[int],
    completion_ids: list[int],
    step_map: list[int] | None,
    block_size: int,
    steps_per_block: int | None = None,
    grid: str = "absolute",
    vocab_size: int | None = None,
    mask_token_id: int | None = None,
) -> str:
    """Empty string if the row is consistent, else a description of its first problem.

    Checks that the ids are integers in the vocabulary, that the completion does not hold the mask token (decoding
    never commits it, and a student trained on it learns to output it), ``len(step_map) = len(completion_ids)``, and
    that the steps are a teacher's schedule: with teacher blocks ``k_i = ⌊(o + i) / block_size⌋`` (``o`` the grid's
    :meth:`~t3d_trl.models.grid.BlockGrid.completion_offset`: ``P`` on the absolute grid, ``0`` on the response grid),
    the first block starts at step 0, every block after a complete one starts right
    after it (``min_k = max_{k−1} + 1``), and no block spans more than ``steps_per_block`` steps (``block_size``
    when unknown). The last block may have gaps: tokens after an EOS were dropped with their steps.
    """
    for name, ids in (("prompt_ids", prompt_ids), ("completion_ids", completion_ids)):
        problem = _ids_problem(name, ids, vocab_size)
        if problem:
            return problem
    if mask_token_id is not None and completion_ids:
        masked = np.flatnonzero(np.asarray(completion_ids, dtype=np.int64) == mask_token_id)
        if masked.size:
            return (
                f"completion_ids holds the mask token (id {mask_token_id}) at completion token {int(masked[0])} "
                f"({masked.size} time(s)); a teacher never commits it, so the row is not a rollout (a text completion "
                "that contains the mask token's string tokenises to it): drop or fix the row"
            )
    if step_map is None:
        return "step_map is None"
    if len(step_map) != len(completion_ids):
        return f"len(step_map)={len(step_map)} != len(completion_ids)={len(completion_ids)}"
    if len(step_map) == 0:
        return ""
    if any(isinstance(value, bool) or not isinstance(value, (int, np.integer)) for value in step_map):
        return "step_map must hold integer steps"
    steps = np.asarray(step_map, dtype=np.int64)
    if (steps < 0).any():
        first = int(np.flatnonzero(steps < 0)[0])
        return f"negative step {int(steps[first])} at completion token {first}"
    if block_size is None or block_size < 1:
        return f"invalid teacher block_size {block_size!r}"
    limit = steps_per_block or block_size
    origin = get_grid(grid).completion_offset(len(prompt_ids))
    blocks = (origin + np.arange(steps.size)) // block_size
    starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
    lows = np.minimum.reduceat(steps, starts)
    highs = np.maximum.reduceat(steps, starts)
    where = f"(block_size={block_size}, steps_per_block={limit}, {grid} grid)"
    expected = np.r_[0, highs[:-1] + 1]  # where each block's steps must start
    last = lows.size - 1
    early = np.flatnonzero(lows < expected)
    if early.size:
        k = int(early[0])
        return (
            f"steps out of order: teacher block {int(blocks[starts[k]])} {where} has a token committed at step "
            f"{int(lows[k])}, before step {int(expected[k]) - 1} of the previous block"
        )
    gaps = np.flatnonzero(lows[:last] > expected[:last])
    if gaps.size:
        k = int(gaps[0])
        return f"teacher block {int(blocks[starts[k]])} {where} starts at step {int(lows[k])}, not {int(expected[k])}"
    long = np.flatnonzero(highs - expected + 1 > limit)
    if long.size:
        k = int(long[0])
        return (
            f"teacher block {int(blocks[starts[k]])} {where} spans steps {int(expected[k])}..{int(highs[k])}, more "
            f"than the {limit} steps a block takes"
        )
    return ""


def prepare_trajectory_dataset(
    dataset: Dataset,
    processing_class: Any = None,
    *,
    max_prompt_length: int | None = None,
    max_completion_length: int | None = None,
    block_size: int | None = None,
    truncation: str = "keep_start",
    num_proc: int | None = None,
    grid: BlockGrid | str = "absolute",
    vocab_size: int | None = None,
    eos_token_id: int | None = None,
    require_step_map: bool = True,
    training_block_size: int | None = None,
    mask_token_id: int | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """Validate a trajectory dataset and bring it to the collator's format.

    Decisions, in order:

    1. Missing columns → ``ValueError`` naming them. ``prompt_ids``/``completion_ids`` absent but ``prompt``/
       ``completion`` present → tokenised with ``processing_class`` (message prompts through the chat template with
       ``add_generation_prompt=True``; completions without special tokens); ``step_map`` is required in all cases.
       Columns that arrive as ids are never re-tokenised.
    2. An ``example_index`` column (the original row index, the key of the per-example state hash) is added unless
       already present; a given one must hold distinct integers (``ValueError`` naming a repeated value otherwise).
    3. Per row: ids are integers in ``[0, vocab_size)``, the completion does not hold ``mask_token_id``,
       ``len(step_map) = len(completion_ids)``, and the steps are a
       teacher's schedule on ``grid`` (see :func:`_row_problem`: blocks start where the previous one ended, none
       spans more than ``steps_per_block`` steps); the first bad row raises ``ValueError`` with its index. Without a
       ``step_map`` column and with ``require_step_map=False`` (plain prompt/completion rows for the ``sft``
       objective, whose states ignore steps), a left-to-right step map is added.
    4. Empty completions are dropped (``stats['dropped_empty']``, logged).
    5. Prompts longer than ``max_prompt_length`` keep their last tokens, cut so that the completion's blocks stay
       where they were (:meth:`~t3d_trl.models.grid.BlockGrid.prompt_cut`: by whole blocks of the lcm of the teacher's
       and the training block size on the absolute grid, where cutting any other number of tokens would move the
       block grid under the step map; ``stats['truncated_prompts']``). A row whose prompt cannot be cut that way
       within the limit is dropped (``stats['dropped_long_prompts']``, logged).
    6. Completions longer than ``max_completion_length``: ``truncation="keep_start"`` keeps the first tokens and
       their steps (``stats['truncated_completions']``, logged); ``"error"`` raises. The text ``completion`` column,
       if any, is left as is.

    Args:
        dataset: a ``datasets.Dataset`` of teacher rollouts.
        processing_class: tokenizer used only for columns that arrive as text.
        max_prompt_length: keep at most this many (last) prompt tokens.
        max_completion_length: limit on completion tokens.
        block_size: the teacher's block size, used when the dataset has no ``block_size`` column.
        truncation: ``"keep_start"`` or ``"error"`` for completions over the limit.
        num_proc: processes for ``Dataset.map``/``filter``.
        grid: the teacher's decoding grid, a :class:`~t3d_trl.models.grid.BlockGrid` or its name (its model
            family's).
        vocab_size: the model's vocabulary size, to refuse ids outside it.
        eos_token_id: the EOS id, to count the completions that end without it (cut at the rollout's limit).
        require_step_map: refuse rows without ``step_map`` (trajectory objectives need the teacher's steps).
        training_block_size: the block size the rows are trained with (``None``: the teacher's), whose grid
            left-truncation keeps too.
        mask_token_id: the model's mask token, refused in completions.

    Returns:
        ``(dataset, stats)``; ``stats`` counts ``num_rows_in``, ``num_rows_out``, ``tokenized_prompts``,
        ``tokenized_completions``, ``dropped_empty``, ``truncated_prompts``, ``dropped_long_prompts``,
        ``truncated_completions`` and ``completions_without_eos``.
    """
    with _hidden_datasets_progress():
        return _prepare(
            _as_dataset(dataset),
            processing_class,
            max_prompt_length,
            max_completion_length,
            block_size,
            truncation,
            num_proc,
            grid if isinstance(grid, str) else grid.name,
            vocab_size,
            eos_token_id,
            require_step_map,
            training_block_size,
            mask_token_id,
        )


@contextlib.contextmanager
def _hidden_datasets_progress():
    """Hide the progress bars of ``datasets`` (Map, Indexing, Validating...) during the preparation, unless its
    logging verbosity asks for INFO or more (``t3d-trl ... --verbose``, or ``datasets.logging.set_verbosity_info()``)."""
    import datasets

    hide = datasets.logging.get_verbosity() > datasets.logging.INFO and datasets.is_progress_bar_enabled()
    if hide:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            datasets.enable_progress_bars()


def _prepare(
    dataset: Dataset,
    processing_class: Any,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    block_size: int | None,
    truncation: str,
    num_proc: int | None,
    grid: str,
    vocab_size: int | None,
    eos_token_id: int | None,
    require_step_map: bool,
    training_block_size: int | None,
    mask_token_id: int | None = None,
) -> tuple[Dataset, dict[str, int]]:
    """The steps of :func:`prepare_trajectory_dataset`, in the order of its docstring."""
    get_grid(grid)  # an unknown grid is refused before any work
    plain = not require_step_map and STEP_MAP not in dataset.column_names
    if plain:  # prompt/completion rows (e.g. a dataset's reference answers) for random-mask objectives
        dataset = _tokenize_text_columns(dataset, processing_class, num_proc, {}, append_eos=eos_token_id)
        dataset = _add_left_to_right_steps(dataset, block_size)
        block_size = block_size or int(dataset[0][BLOCK_SIZE])
    _check_arguments(dataset, block_size, truncation, max_prompt_length, max_completion_length)
    stats = {
        "num_rows_in": len(dataset),
        "num_rows_out": 0,
        "tokenized_prompts": 0,
        "tokenized_completions": 0,
        "dropped_empty": 0,
        "truncated_prompts": 0,
        "dropped_long_prompts": 0,
        "truncated_completions": 0,
        "completions_without_eos": 0,
    }
    if EXAMPLE_INDEX not in dataset.column_names:
        dataset = dataset.map(
            _index_batch, with_indices=True, batched=True, num_proc=num_proc, desc="Indexing trajectories"
        )
    else:
        _check_example_indices(dataset[EXAMPLE_INDEX])
    dataset = _tokenize_text_columns(dataset, processing_class, num_proc, stats)
    dataset = _validate_rows(dataset, block_size, num_proc, grid, vocab_size, mask_token_id)
    dataset, completion_lengths = _drop_empty_completions(dataset, stats)
    _count_without_eos(dataset, eos_token_id, stats)
    dataset = _truncate(
        dataset,
        completion_lengths,
        max_prompt_length,
        max_completion_length,
        truncation,
        num_proc,
        stats,
        get_grid(grid),
        block_size,
        training_block_size,
    )
    dataset = dataset.remove_columns([c for c in _HELPER_COLUMNS if c in dataset.column_names])
    stats["num_rows_out"] = len(dataset)
    return dataset, stats


def _as_dataset(dataset: Any) -> Dataset:
    """A ``datasets.Dataset`` from one, or from a list of dicts; anything else (an ``IterableDataset`` included) is
    refused with a message: validation reads every row and the trainer needs the dataset's length."""
    if isinstance(dataset, Dataset):
        if len(dataset) == 0:
            raise ValueError("The trajectory dataset is empty: it has no rows to train on.")
        return dataset
    if isinstance(dataset, list) and all(isinstance(row, dict) for row in dataset):
        if not dataset:
            raise ValueError("The trajectory dataset is empty: it has no rows to train on.")
        return Dataset.from_list(dataset)
    raise TypeError(
        f"The trajectory dataset must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}. "
        "A streaming IterableDataset is not supported (every row is validated first and the trainer needs the "
        "length): load it without streaming, or materialise it with Dataset.from_list(list(iterable))."
    )


def _add_left_to_right_steps(dataset: Dataset, block_size: int | None) -> Dataset:
    """A ``step_map`` of ``0, 1, 2, ...`` (one token per step, left to right) for rows without one, and the block
    size column when missing, so plain prompt/completion rows pass validation (random states ignore the steps)."""
    ids = COMPLETION_IDS
    if ids not in dataset.column_names:
        raise ValueError(f"Rows without `step_map` need `{COMPLETION_IDS}` or a text `{COMPLETION}` column.")
    lengths = [len(row) if row is not None else 0 for row in dataset[ids]]
    dataset = dataset.add_column(STEP_MAP, [list(range(length)) for length in lengths])
    if BLOCK_SIZE not in dataset.column_names:  # one token per step: any block size is a valid schedule
        dataset = dataset.add_column(BLOCK_SIZE, [block_size or 1] * len(dataset))
    return dataset


def _count_without_eos(dataset: Dataset, eos_token_id: int | None, stats: dict[str, int]) -> None:
    """Count (and report) the completions that do not end with EOS: the teacher was cut at its length limit, so no
    EOS is trained after them."""
    if eos_token_id is None:
        return
    cut = sum(1 for ids in dataset[COMPLETION_IDS] if ids and ids[-1] != eos_token_id)
    stats["completions_without_eos"] = cut
    if cut:
        logger.warning(
            "%d of %d completions end without EOS (the teacher was cut at its length limit): no EOS is trained after "
            "them, and their last block's open slots stay masked.",
            cut,
            len(dataset),
        )


def _check_arguments(
    dataset: Dataset,
    block_size: int | None,
    truncation: str,
    max_prompt_length: int | None,
    max_completion_length: int | None,
) -> None:
    """Refuse invalid limits and a dataset without the trajectory columns (decision 1)."""
    if truncation not in _TRUNCATIONS:
        raise ValueError(f"truncation must be one of {_TRUNCATIONS}, got {truncation!r}.")
    for name, value in (("max_prompt_length", max_prompt_length), ("max_completion_length", max_completion_length)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer or None, got {value}.")
    columns = set(dataset.column_names)
    missing = []
    if PROMPT_IDS not in columns and PROMPT not in columns:
        missing.append(f"`{PROMPT_IDS}` (or text `{PROMPT}`)")
    if COMPLETION_IDS not in columns and COMPLETION not in columns:
        missing.append(f"`{COMPLETION_IDS}` (or text `{COMPLETION}`)")
    if missing:
        raise ValueError(f"The trajectory dataset is missing {', '.join(missing)}. {_FORMAT_HELP}")
    if STEP_MAP not in columns:
        raise ValueError(f"The trajectory dataset is missing the `{STEP_MAP}` column. {_STEP_MAP_HELP}")
    if BLOCK_SIZE not in columns and block_size is None:
        raise ValueError(
            f"The teacher's block size is unknown: add a `{BLOCK_SIZE}` column or pass `block_size=` "
            "(it is needed to check that steps are ordered block by block)."
        )
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")


def _check_example_indices(values: list[Any]) -> None:
    """A given ``example_index`` column must hold distinct integers: it keys each example's masks, random tokens and
    precomputed reference, so a repeated value gives two rows one state and swaps their reference terms."""
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(
                f"The `{EXAMPLE_INDEX}` column must hold integers, got {value!r} ({type(value).__name__}). Drop the "
                f"column (`dataset.remove_columns('{EXAMPLE_INDEX}')`) to number the rows afresh."
            )
    indices = np.asarray(values, dtype=np.int64)
    unique, counts = np.unique(indices, return_counts=True)
    if unique.size == indices.size:
        return
    value = int(unique[np.argmax(counts > 1)])
    rows = np.flatnonzero(indices == value)[:2].tolist()
    raise ValueError(
        f"The `{EXAMPLE_INDEX}` column repeats values ({indices.size - unique.size} repeated; e.g. {value} at rows "
        f"{rows[0]} and {rows[1]}): it keys each example's masks, random tokens and precomputed reference, so rows "
        f"sharing one would share a state and swap reference terms. Drop the column "
        f"(`dataset.remove_columns('{EXAMPLE_INDEX}')`) to number the rows afresh, or make the values unique (e.g. "
        "after concatenating prepared datasets)."
    )


def _index_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
    """The ``example_index`` column: each row's index in the input dataset (decision 2)."""
    return {EXAMPLE_INDEX: list(indices)}


def _tokenize_text_columns(
    dataset: Dataset, processing_class: Any, num_proc: int | None, stats: dict[str, int], append_eos: int | None = None
) -> Dataset:
    """Tokenise the ``prompt`` / ``completion`` columns that arrive without ids (decision 1), counted in ``stats``;
    ``append_eos`` ends every tokenised completion with that id (a reference answer is a finished answer)."""
    tokenize_prompt = PROMPT_IDS not in dataset.column_names
    tokenize_completion = COMPLETION_IDS not in dataset.column_names
    if not (tokenize_prompt or tokenize_completion):
        return dataset
    if processing_class is None:
        raise ValueError(
            "The trajectory dataset has text columns to tokenise "
            f"({'`prompt`' if tokenize_prompt else ''}{' and ' if tokenize_prompt and tokenize_completion else ''}"
            f"{'`completion`' if tokenize_completion else ''}) but no `processing_class` was given."
        )
    dataset = dataset.map(
        _tokenize_batch,
        with_indices=True,
        batched=True,
        num_proc=num_proc,
        fn_kwargs={
            "processing_class": processing_class,
            "tokenize_prompt": tokenize_prompt,
            "tokenize_completion": tokenize_completion,
            "append_eos": append_eos,
        },
        desc="Tokenising trajectories",
    )
    stats["tokenized_prompts"] = len(dataset) if tokenize_prompt else 0
    stats["tokenized_completions"] = len(dataset) if tokenize_completion else 0
    if STEP_MAP not in dataset.column_names:  # plain rows: their steps are assigned after tokenisation
        return dataset
    logger.warning(
        "Tokenised %s of %d trajectory rows; `step_map` must match the new completion tokens "
        "(store the teacher's own `completion_ids` to avoid re-tokenisation).",
        " and ".join(n for n, f in (("prompts", tokenize_prompt), ("completions", tokenize_completion)) if f),
        len(dataset),
    )
    return dataset


def _validate_rows(
    dataset: Dataset,
    block_size: int | None,
    num_proc: int | None,
    grid: str,
    vocab_size: int | None,
    mask_token_id: int | None = None,
) -> Dataset:
    """Check every row (decision 3): the first bad row raises; the helper length columns are added."""
    dataset = dataset.map(
        _check_batch,
        batched=True,
        num_proc=num_proc,
        fn_kwargs={
            "default_block_size": block_size,
            "grid": grid,
            "vocab_size": vocab_size,
            "mask_token_id": mask_token_id,
        },
        desc="Validating trajectories",
    )
    problems = dataset[_PROBLEM]
    bad_rows = [i for i, problem in enumerate(problems) if problem]
    if bad_rows:
        first = bad_rows[0]
        raise ValueError(
            f"Invalid trajectory at row {first} (example_index {dataset[first][EXAMPLE_INDEX]}): "
            f"{problems[first]}. {len(bad_rows)} row(s) have problems. {_FORMAT_HELP}"
        )
    return dataset


def _drop_empty_completions(dataset: Dataset, stats: dict[str, int]) -> tuple[Dataset, np.ndarray]:
    """Drop the rows with an empty completion (decision 4); returns the kept rows and their completion lengths."""
    completion_lengths = np.asarray(dataset[_COMPLETION_LEN], dtype=np.int64)
    empty = completion_lengths == 0
    stats["dropped_empty"] = int(empty.sum())
    if empty.any():
        logger.warning("Dropping %d trajectory row(s) with an empty completion.", stats["dropped_empty"])
        keep = np.flatnonzero(~empty)
        dataset = dataset.select(keep)
        completion_lengths = completion_lengths[keep]
    return dataset, completion_lengths


def _truncate(
    dataset: Dataset,
    completion_lengths: np.ndarray,
    max_prompt_length: int | None,
    max_completion_length: int | None,
    truncation: str,
    num_proc: int | None,
    stats: dict[str, int],
    grid: BlockGrid,
    default_block_size: int | None,
    training_block_size: int | None,
) -> Dataset:
    """Keep the last prompt tokens on the grid (decision 5) and the first completion tokens, or refuse long
    completions (decision 6)."""
    prompt_lengths = np.asarray(dataset[_PROMPT_LEN], dtype=np.int64)
    long_completions = (
        completion_lengths > max_completion_length
        if max_completion_length is not None
        else np.zeros(len(dataset), dtype=bool)
    )
    if long_completions.any() and truncation == "error":
        first = int(np.flatnonzero(long_completions)[0])
        raise ValueError(
            f"Completion of row {first} (example_index {dataset[first][EXAMPLE_INDEX]}) has "
            f"{int(completion_lengths[first])} tokens > max_completion_length={max_completion_length} "
            f"({int(long_completions.sum())} row(s) over the limit). Raise the limit or use truncation='keep_start'."
        )
    cuts = np.zeros(len(dataset), dtype=np.int64)
    if max_prompt_length is not None:
        column = dataset[BLOCK_SIZE] if BLOCK_SIZE in dataset.column_names else [None] * len(dataset)
        teacher = np.asarray([default_block_size if b is None else b for b in column], dtype=np.int64)
        unit = teacher if training_block_size is None else np.lcm(teacher, int(training_block_size))
        cuts = grid.prompt_cut(prompt_lengths, max_prompt_length, unit)
        off_grid = cuts >= prompt_lengths
        if off_grid.any():
            stats["dropped_long_prompts"] = int(off_grid.sum())
            logger.warning(
                "Dropping %d trajectory row(s) whose prompt cannot be cut to max_prompt_length=%d without moving the "
                "%s block grid under the step map (the limit is below the prompt's share of its first block, e.g. "
                "row %d); raise max_prompt_length.",
                stats["dropped_long_prompts"],
                max_prompt_length,
                grid.name,
                int(np.flatnonzero(off_grid)[0]),
            )
            keep = np.flatnonzero(~off_grid)
            dataset, cuts, long_completions = dataset.select(keep), cuts[keep], long_completions[keep]
    stats["truncated_prompts"] = int((cuts > 0).sum())
    stats["truncated_completions"] = int(long_completions.sum())
    if stats["truncated_prompts"]:
        logger.warning(
            "Left-truncating %d prompt(s) to at most %d tokens, by whole blocks of the %s grid so that the step map's "
            "blocks stay where they were.",
            stats["truncated_prompts"],
            max_prompt_length,
            grid.name,
        )
    if stats["truncated_completions"]:
        logger.warning(
            "Truncating %d completion(s) (and their step_map) to their first %d tokens.",
            stats["truncated_completions"],
            max_completion_length,
        )
    if stats["truncated_prompts"] or stats["truncated_completions"]:
        dataset = dataset.add_column(_PROMPT_CUT, cuts.tolist())
        dataset = dataset.map(
            _truncate_batch,
            batched=True,
            num_proc=num_proc,
            fn_kwargs={"max_completion_length": max_completion_length},
            desc="Truncating trajectories",
        )
    return dataset


def _tokenize_batch(
    batch: dict[str, list],
    indices: list[int],
    processing_class: Any,
    tokenize_prompt: bool,
    tokenize_completion: bool,
    append_eos: int | None = None,
) -> dict[str, list]:
    """Tokenise the text columns of a batch (only those without ids)."""
    out: dict[str, list] = {}
    if tokenize_prompt:
        out[PROMPT_IDS] = tokenize_prompts(processing_class, batch[PROMPT], column=PROMPT, rows=indices)
    if tokenize_completion:
        completions = batch[COMPLETION]
        if not all(isinstance(c, str) for c in completions):
            raise ValueError("`completion` must be text when `completion_ids` is absent.")
        ids = tokenizer_of(processing_class)(list(completions), add_special_tokens=False)["input_ids"]
        out[COMPLETION_IDS] = [row + [append_eos] for row in ids] if append_eos is not None else ids
    return out


def _check_batch(
    batch: dict[str, list],
    default_block_size: int | None,
    grid: str = "absolute",
    vocab_size: int | None = None,
    mask_token_id: int | None = None,
) -> dict[str, list]:
    """Per-row problem description (empty if consistent) and lengths."""
    size = len(batch[COMPLETION_IDS])
    block_sizes = batch[BLOCK_SIZE] if BLOCK_SIZE in batch else [default_block_size] * size
    block_sizes = [default_block_size if b is None else b for b in block_sizes]
    steps_per_block = batch[STEPS_PER_BLOCK] if STEPS_PER_BLOCK in batch else [None] * size
    prompts = batch[PROMPT_IDS]
    problems = [
        _row_problem(prompt, completion, steps, block, per_block, grid, vocab_size, mask_token_id)
        for prompt, completion, steps, block, per_block in zip(
            prompts, batch[COMPLETION_IDS], batch[STEP_MAP], block_sizes, steps_per_block
        )
    ]
    return {
        _PROBLEM: problems,
        _PROMPT_LEN: [len(p) if isinstance(p, (list, tuple)) else 0 for p in prompts],
        _COMPLETION_LEN: [len(c) if isinstance(c, (list, tuple)) else 0 for c in batch[COMPLETION_IDS]],
    }


def _truncate_batch(batch: dict[str, list], max_completion_length: int | None) -> dict[str, list]:
    """Drop each prompt's first ``_PROMPT_CUT`` tokens and keep the first ``max_completion_length`` completion
    tokens."""
    out: dict[str, list] = {PROMPT_IDS: [p[cut:] for p, cut in zip(batch[PROMPT_IDS], batch[_PROMPT_CUT])]}
    if max_completion_length is not None:
        out[COMPLETION_IDS] = [c[:max_completion_length] for c in batch[COMPLETION_IDS]]
        out[STEP_MAP] = [s[:max_completion_length] for s in batch[STEP_MAP]]
    return out


def validate_mask_token(processing_class: Any, model_config: Any = None) -> int:
    """Return the mask token id of a diffusion LM, from the tokenizer or else the model config.

    The id is ``processing_class.mask_token_id`` if set, else ``model_config.mask_token_id``. It must lie in
    ``[0, vocab_size)`` when the config states a ``vocab_size``.

    Args:
        processing_class: the tokenizer (may be ``None``).
        model_config: the model's ``PretrainedConfig`` (may be ``None``).

    Returns:
        The mask token id.

    Raises:
        ValueError: if neither defines a mask token, or the id is outside the embedding matrix.
    """
    tokenizer_id = getattr(processing_class, "mask_token_id", None) if processing_class is not None else None
    config_id = getattr(model_config, "mask_token_id", None) if model_config is not None else None
    mask_token_id = tokenizer_id if tokenizer_id is not None else config_id
    if mask_token_id is None:
        raise ValueError(
            "No mask token: diffusion training needs one. Add it to the tokenizer with "
            "`tokenizer.add_special_tokens({'mask_token': '<|MASK|>'})` and resize the embeddings "
            "(`model.resize_token_embeddings(len(tokenizer))`), or set `mask_token_id` on the model config."
        )
    if tokenizer_id is not None and config_id is not None and tokenizer_id != config_id:
        logger.warning(
            "The tokenizer's mask_token_id (%d) differs from the config's (%d); using the tokenizer's.",
            tokenizer_id,
            config_id,
        )
    vocab_size = getattr(model_config, "vocab_size", None) if model_config is not None else None
    if vocab_size is not None and not 0 <= int(mask_token_id) < int(vocab_size):
        raise ValueError(
            f"mask_token_id {mask_token_id} is outside the model's vocabulary (vocab_size={vocab_size}); "
            "resize the embeddings with `model.resize_token_embeddings(len(tokenizer))`."
        )
    return int(mask_token_id)
