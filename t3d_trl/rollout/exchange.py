"""Trajectories from other producers in, and t3d-trl's out (see ``docs/rollouts.md``, "Bring your own trajectories").

:func:`import_trajectories` reads the records of a producer (a JSON or JSON Lines file, a list of dicts or a
``datasets.Dataset``, e.g. a Hub dataset loaded with ``load_dataset``) and returns a trajectory dataset that
:class:`~t3d_trl.T3DTrainer` accepts; :func:`export_trajectories` writes a trajectory dataset in a producer's format.
Each format is a :class:`TrajectoryFormat` of the registry (:func:`register_trajectory_format` adds one):

==============  ====================================================================================================
``t3d-json``    the official T3D sampler's JSON (``sample/sdar_sample.py``, then ``data/rename_key.py``): one item per
                prompt with its k completion texts (``answer``, or ``full_output`` before the rename) and their step
                maps; every sample becomes a row
``jetengine``   JetEngine's ``generate`` outputs (``token_ids`` = prompt + completion, ``trajectory``)
``sglang``      SGLang's ``Engine.generate(..., return_step_maps=True)`` outputs (``output_ids``,
                ``meta_info["step_maps"]``) with the request's ``input_ids``
``diffusers``   the records of :class:`~t3d_trl.rollout.block_refinement.BlockRefinementRecorder` (read only)
``t3d-trl``     t3d-trl's own rows (``prompt_ids``, ``completion_ids``, ``step_map``, ...)
==============  ====================================================================================================

The producers' conventions (step base, per-block or global steps, steps that commit nothing, prompt tokens, tokens
after EOS) are converted in one place, :func:`t3d_trl.rollout.conventions.convert_trajectory`. A sample that cannot
be converted, or whose result fails the validation every trajectory dataset passes (the steps must be a teacher's
schedule on the model family's block grid), is dropped and counted by reason (``strict=True`` refuses it instead);
nothing is trimmed or padded. The counts are logged and stored with the dataset (:func:`import_summary`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from ..data import _ids_problem, _row_problem
from ..local_datasets import _read_json_rows, _rows_dataset, load_local_dataset
from ..models.families import DEFAULT_FAMILY
from ..prompts import render_prompts, tokenize_prompts, tokenizer_of
from ..registry import Registry
from .conventions import (
    DROP_REASONS,
    LIBRARY_CONVENTION,
    StepConvention,
    convert_trajectory,
    family_grid,
    to_producer_steps,
)
from .loop import ROLLOUT_COLUMNS

logger = logging.getLogger(__name__)

__all__ = [
    "IMPORT_METADATA_KEY",
    "TRAJECTORY_FORMATS",
    "RawTrajectory",
    "TrajectoryFormat",
    "export_trajectories",
    "format_import_summary",
    "import_summary",
    "import_trajectories",
    "register_trajectory_format",
    "trajectory_format",
]

#: key of the import summary in the JSON of ``Dataset.info.description``
IMPORT_METADATA_KEY = "t3d_trl_import"

#: the columns an imported row gets (besides the record's own): a rollout's, but the teacher's forwards
_OUTPUT_COLUMNS = ("prompt", *(name for name in ROLLOUT_COLUMNS if name != "nfe"))
#: columns a trajectory row holds about its own sample (never copied into another format's per-prompt fields)
_LIBRARY_COLUMNS = (*_OUTPUT_COLUMNS, "example_index")


@dataclasses.dataclass
class RawTrajectory:
    """One sample as its producer recorded it, before any convention is converted (what a format's reader returns).

    Attributes:
        record: the index of the record it comes from.
        sample_index: its number among its record's (or prompt's) samples.
        prompt_ids: the prompt's token ids, if the record holds them.
        prompt: the prompt as text or chat messages, tokenised (as :func:`t3d_trl.generate_trajectories` does) when
            ``prompt_ids`` is ``None``; kept as the ``prompt`` column.
        ids: the producer's completion token ids (prompt first if its convention says so).
        text: the completion text, tokenised without special tokens when ``ids`` is ``None``.
        steps: the producer's step of every completion token (``None`` or ``""``: none recorded).
        edited: per completion token, whether the producer replaced it after committing it.
        expected_prompt_length: the producer's own count of the prompt's tokens, if it reports one.
        block_size: the teacher's block size, if the record holds it.
        steps_per_block: the teacher's steps per block, if the record holds it.
        columns: the record's other fields, kept as columns of the row.
    """

    record: int
    sample_index: int = 0
    prompt_ids: list[int] | None = None
    prompt: Any = None
    ids: list[int] | None = None
    text: str | None = None
    steps: Any = None
    edited: list[bool] | None = None
    expected_prompt_length: int | None = None
    block_size: int | None = None
    steps_per_block: int | None = None
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)


#: ``read(record, index)``: the samples of one record
Reader = Callable[[Mapping[str, Any], int], list[RawTrajectory]]
#: ``write(rows, steps, tokenizer)``: the records of one prompt's rows (one row unless the format groups samples),
#: ``steps`` being each row's step map in the format's numbering
Writer = Callable[[list[dict[str, Any]], list[list[int]], Any], list[dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class TrajectoryFormat:
    """A producer's trajectory format: how to read its records, how to write them, and its step convention.

    Attributes:
        name: the registry name (``format=`` of :func:`import_trajectories` / :func:`export_trajectories`).
        description: one line on the producer, for error messages and the command line's help.
        convention: how the producer numbers steps and shapes completions (:class:`StepConvention`).
        read: the samples of one record (:data:`Reader`).
        write: the records of one prompt's rows (:data:`Writer`); ``None`` for a format that is only read.
        groups_samples: one record holds every sample of a prompt (written from a prompt's consecutive rows).
    """

    name: str
    description: str
    convention: StepConvention
    read: Reader
    write: Writer | None = None
    groups_samples: bool = False


#: registered trajectory formats by name
TRAJECTORY_FORMATS: Registry[TrajectoryFormat] = Registry(
    "trajectory format", hint="register one with t3d_trl.rollout.register_trajectory_format"
)


def register_trajectory_format(trajectory_format: TrajectoryFormat, *, overwrite: bool = False) -> TrajectoryFormat:
    """Register a :class:`TrajectoryFormat` under its name.

    Raises:
        ValueError: if the name is empty or taken by another format (see :class:`~t3d_trl.registry.Registry`).
    """
    return TRAJECTORY_FORMATS.register(trajectory_format.name, trajectory_format, overwrite=overwrite)


def trajectory_format(name: str | TrajectoryFormat) -> TrajectoryFormat:
    """The registered format called ``name`` (a :class:`TrajectoryFormat` is returned as it is).

    Raises:
        ValueError: naming the registered formats.
    """
    if isinstance(name, TrajectoryFormat):
        return name
    return TRAJECTORY_FORMATS.get_entry(name)


# --------------------------------------------------------------------------------------------------------------------
# The built-in formats
# --------------------------------------------------------------------------------------------------------------------


def _register_builtin(trajectory_format: TrajectoryFormat) -> TrajectoryFormat:
    return TRAJECTORY_FORMATS.register(trajectory_format.name, trajectory_format, builtin=True)


def _carried(record: Mapping[str, Any], consumed: Iterable[str]) -> dict[str, Any]:
    consumed = set(consumed)
    return {key: value for key, value in record.items() if key not in consumed}


def _require(record: Mapping[str, Any], index: int, fmt: str, *keys: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise ValueError(
            f"Record {index} is not a {fmt} record: it lacks {missing} (its fields: {sorted(record)[:12]})."
        )


#: the official format's fields that hold one value per sample (``nfe``: t3d-trl's, written by the export)
_T3D_JSON_PER_SAMPLE = ("extracted_output", "response_length", "nfe")
_T3D_JSON_CONSUMED = ("answer", "full_output", "step_map", "prompt")


def _read_t3d_json(record: Mapping[str, Any], index: int) -> list[RawTrajectory]:
    """One official item: every one of its k samples (``answer[i]``, ``step_map[i]``), the prompt from ``prompt``
    (the templated text the teacher saw) or else from ``question`` through the chat template."""
    key = "answer" if "answer" in record else "full_output"
    _require(record, index, "t3d-json", key, "step_map")
    answers, step_maps = record[key], record["step_map"]
    if isinstance(answers, str):  # one sample written flat
        answers, step_maps = [answers], [step_maps]
    if not isinstance(answers, list) or not isinstance(step_maps, list) or len(answers) != len(step_maps):
        raise ValueError(
            f"Record {index}: `{key}` and `step_map` must be lists with one entry per sample, got "
            f"{type(answers).__name__} of {_length(answers)} and {type(step_maps).__name__} of {_length(step_maps)}."
        )
    prompt = record.get("prompt")
    if prompt is None:
        if record.get("question") is None:
            raise ValueError(f"Record {index} has neither `prompt` (the templated prompt) nor `question`.")
        prompt = [{"role": "user", "content": record["question"]}]
    per_sample = [
        name
        for name in _T3D_JSON_PER_SAMPLE
        if isinstance(record.get(name), list) and len(record[name]) == len(answers)
    ]
    carried = _carried(record, (*_T3D_JSON_CONSUMED, *per_sample))
    return [
        RawTrajectory(
            record=index,
            sample_index=sample,
            prompt=prompt,
            text=text,
            steps=steps,
            columns={**carried, **{name: record[name][sample] for name in per_sample}},
        )
        for sample, (text, steps) in enumerate(zip(answers, step_maps))
    ]


def _length(value: Any) -> str:
    return str(len(value)) if isinstance(value, (list, str)) else "-"


def _write_t3d_json(rows: list[dict[str, Any]], steps: list[list[int]], tokenizer: Any) -> list[dict[str, Any]]:
    """One official item from a prompt's rows: ``question``, ``prompt`` (the prompt ids as text), ``answer`` (the
    completions as text, special tokens kept, as the official sampler decodes them), ``step_map`` (1-based), the
    per-sample fields the rows have, and every other column (one value per prompt)."""
    first = rows[0]
    per_sample = [name for name in _T3D_JSON_PER_SAMPLE if name in first]
    item: dict[str, Any] = {
        "question": _question(first, tokenizer),
        "prompt": tokenizer.decode(first["prompt_ids"], skip_special_tokens=False),
        "answer": [tokenizer.decode(row["completion_ids"], skip_special_tokens=False) for row in rows],
        "step_map": steps,
    }
    item.update({name: [row.get(name) for row in rows] for name in per_sample})
    for key, value in first.items():
        if key in item or key in _LIBRARY_COLUMNS or key in per_sample:
            continue
        if any(row.get(key) != value for row in rows[1:]):
            raise ValueError(
                f"Column `{key}` differs between the samples of one prompt, and the t3d-json format holds one value "
                f"per prompt for it (per-sample fields: {list(_T3D_JSON_PER_SAMPLE)}). Drop the column "
                "(dataset.remove_columns) or export to another format."
            )
        item[key] = value
    return [item]


def _question(row: Mapping[str, Any], tokenizer: Any) -> str:
    """The official ``question``: the row's ``question``, else the last user message of a chat prompt, else the
    text prompt, else the prompt ids as text."""
    if row.get("question") is not None:
        return row["question"]
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        users = [message.get("content") for message in prompt if message.get("role") == "user"]
        if users:
            return users[-1]
    if isinstance(prompt, str):
        return prompt
    return tokenizer.decode(row["prompt_ids"], skip_special_tokens=True)


_JETENGINE_CONSUMED = ("token_ids", "trajectory", "text", "prompt_ids", "prompt", "sample_index")


def _read_jetengine(record: Mapping[str, Any], index: int) -> list[RawTrajectory]:
    """One JetEngine output: ``token_ids`` (prompt + completion), ``trajectory`` (per completion token); the prompt
    is checked against ``prompt_ids`` or ``prompt`` when the record carries one."""
    if "token_ids" in record and "trajectory" not in record:
        raise ValueError(
            f"Record {index} has `token_ids` but no `trajectory`: JetEngine's `generate` returns the first-commit "
            "step of every completion token as `trajectory` (the T3D fork's `first_unmask_times` end up in its "
            "sampler's JSON: import that with format='t3d-json')."
        )
    _require(record, index, "jetengine", "token_ids", "trajectory")
    return _one_sample(
        record,
        index,
        _JETENGINE_CONSUMED,
        prompt_ids=record.get("prompt_ids"),
        ids=list(record["token_ids"]),
        steps=record["trajectory"],
    )


def _record_per_row(write_row: Callable[[dict[str, Any], list[int], Any], dict[str, Any]]) -> Writer:
    """A :data:`Writer` of one record per row: ``write_row(row, steps, tokenizer)``'s fields, the row's
    ``sample_index``, then the row's columns that are not trajectory columns (its ``prompt`` included)."""

    def write(rows: list[dict[str, Any]], steps: list[list[int]], tokenizer: Any) -> list[dict[str, Any]]:
        skip = set(_LIBRARY_COLUMNS) - {"prompt"}
        records = []
        for row, row_steps in zip(rows, steps):
            record = {**write_row(row, row_steps, tokenizer), "sample_index": row.get("sample_index", 0)}
            records.append({**record, **{k: v for k, v in row.items() if k not in skip and k not in record}})
        return records

    return write


def _one_sample(record: Mapping[str, Any], index: int, consumed: Iterable[str], **fields: Any) -> list[RawTrajectory]:
    """The sample of a record that holds one: its ``sample_index`` and ``prompt`` (if any), ``fields``, and the
    record's fields other than ``consumed`` as columns."""
    sample = RawTrajectory(record=index, sample_index=int(record.get("sample_index") or 0), prompt=record.get("prompt"))
    return [dataclasses.replace(sample, columns=_carried(record, consumed), **fields)]


def _completion(record: Mapping[str, Any], ids_key: str, text_key: str) -> dict[str, Any]:
    """The completion of a record as ``ids`` when it holds them, else as ``text`` (to tokenise)."""
    ids = record.get(ids_key)
    return {"ids": list(ids), "text": None} if ids is not None else {"ids": None, "text": record.get(text_key)}


@_record_per_row
def _write_jetengine(row: dict[str, Any], steps: list[int], tokenizer: Any) -> dict[str, Any]:
    ids = list(row["prompt_ids"]) + list(row["completion_ids"])
    return {"text": tokenizer.decode(ids, skip_special_tokens=False), "token_ids": ids, "trajectory": steps}


_SGLANG_CONSUMED = ("output_ids", "text", "meta_info", "input_ids", "prompt_ids", "prompt", "sample_index")


def _read_sglang(record: Mapping[str, Any], index: int) -> list[RawTrajectory]:
    """One SGLang output with ``meta_info["step_maps"]`` and the request's ``input_ids`` (or ``prompt``)."""
    meta = record.get("meta_info")
    if not isinstance(meta, Mapping) or meta.get("step_maps") is None:
        raise ValueError(
            f"Record {index} has no `meta_info['step_maps']`: SGLang reports the step that committed each token only "
            "when asked, with Engine.generate(..., return_step_maps=True) (sgl-project/sglang pull request 27943) "
            "and the LowConfidence dLLM algorithm; without it there is no trajectory to train on (and without that "
            "change its dLLM sampling is greedy)."
        )
    if "output_ids" not in record and "text" not in record:
        raise ValueError(f"Record {index} has neither `output_ids` nor `text`: it holds no completion.")
    prompt_ids = record.get("input_ids", record.get("prompt_ids"))
    if prompt_ids is None and record.get("prompt") is None:
        raise ValueError(
            f"Record {index} has no prompt: SGLang's outputs do not repeat it, so add the request's `input_ids` (or "
            "its `prompt`) to every record."
        )
    return _one_sample(
        record,
        index,
        _SGLANG_CONSUMED,
        prompt_ids=prompt_ids,
        **_completion(record, "output_ids", "text"),
        steps=meta["step_maps"],
        expected_prompt_length=meta.get("prompt_tokens"),
    )


@_record_per_row
def _write_sglang(row: dict[str, Any], steps: list[int], tokenizer: Any) -> dict[str, Any]:
    return {
        "input_ids": list(row["prompt_ids"]),
        "output_ids": list(row["completion_ids"]),
        "text": tokenizer.decode(row["completion_ids"], skip_special_tokens=True),
        "meta_info": {
            "step_maps": steps,
            "prompt_tokens": len(row["prompt_ids"]),
            "completion_tokens": len(row["completion_ids"]),
        },
    }


_DIFFUSERS_CONSUMED = ("prompt_ids", "completion_ids", "step_map", "edited", "sample_index")


def _read_diffusers(record: Mapping[str, Any], index: int) -> list[RawTrajectory]:
    """One record of :meth:`BlockRefinementRecorder.records`."""
    _require(record, index, "diffusers", "prompt_ids", "completion_ids", "step_map")
    return _one_sample(
        record,
        index,
        _DIFFUSERS_CONSUMED,
        prompt_ids=list(record["prompt_ids"]),
        ids=list(record["completion_ids"]),
        steps=record["step_map"],
        edited=record.get("edited"),
    )


_T3D_TRL_CONSUMED = _OUTPUT_COLUMNS


def _read_t3d_trl(record: Mapping[str, Any], index: int) -> list[RawTrajectory]:
    """One row of a t3d-trl trajectory dataset (ids, or text to tokenise; the step map is required)."""
    if record.get("prompt_ids") is None and record.get("prompt") is None:
        raise ValueError(f"Record {index} has neither `prompt_ids` nor `prompt`.")
    if record.get("completion_ids") is None and record.get("completion") is None:
        raise ValueError(f"Record {index} has neither `completion_ids` nor `completion`.")
    return _one_sample(
        record,
        index,
        _T3D_TRL_CONSUMED,
        prompt_ids=record.get("prompt_ids"),
        **_completion(record, "completion_ids", "completion"),
        steps=record.get("step_map"),
        block_size=record.get("block_size"),
        steps_per_block=record.get("steps_per_block"),
    )


@_record_per_row
def _write_t3d_trl(row: dict[str, Any], steps: list[int], tokenizer: Any) -> dict[str, Any]:
    return {
        "prompt_ids": list(row["prompt_ids"]),
        "completion_ids": list(row["completion_ids"]),
        "step_map": steps,
        "block_size": row["block_size"],
        "steps_per_block": row.get("steps_per_block"),
        "completion": tokenizer.decode(row["completion_ids"], skip_special_tokens=True),
    }


_register_builtin(
    TrajectoryFormat(
        name="t3d-json",
        description="the official T3D sampler's JSON (one item per prompt: `answer`/`full_output` texts, 1-based "
        "global `step_map`)",
        convention=StepConvention(first_step=1, grid="absolute"),
        read=_read_t3d_json,
        write=_write_t3d_json,
        groups_samples=True,
    )
)
_register_builtin(
    TrajectoryFormat(
        name="jetengine",
        description="JetEngine's generate outputs (`token_ids` = prompt + completion, 1-based global `trajectory`)",
        convention=StepConvention(first_step=1, ids_include_prompt=True, grid="absolute"),
        read=_read_jetengine,
        write=_write_jetengine,
    )
)
_register_builtin(
    TrajectoryFormat(
        name="sglang",
        description="SGLang's Engine.generate(..., return_step_maps=True) outputs (`output_ids`, 1-based "
        "per-block `meta_info['step_maps']`) with the request's `input_ids`",
        convention=StepConvention(first_step=1, per_block=True, grid="absolute"),
        read=_read_sglang,
        write=_write_sglang,
    )
)
_register_builtin(
    TrajectoryFormat(
        name="diffusers",
        description="BlockRefinementRecorder records of a diffusers LLaDA2Pipeline run (read only)",
        convention=StepConvention(first_step=0, counts_idle_steps=True, uncommitted=-1, grid="absolute"),
        read=_read_diffusers,
    )
)
_register_builtin(
    TrajectoryFormat(
        name="t3d-trl",
        description="t3d-trl's own trajectory rows (`prompt_ids`, `completion_ids`, 0-based global `step_map`)",
        convention=LIBRARY_CONVENTION,
        read=_read_t3d_trl,
        write=_write_t3d_trl,
    )
)


# --------------------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------------------

_JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")


def _read_records(source: Any) -> list[dict[str, Any]]:
    """The records of ``source``: a path (a JSON / JSON Lines file, optionally gzipped, or any dataset
    :func:`~t3d_trl.local_datasets.load_local_dataset` reads), a list of dicts, or a ``datasets.Dataset``."""
    if isinstance(source, Dataset):
        return list(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"No trajectories at {str(path)!r}.")
        suffixes = [suffix.lower() for suffix in path.suffixes[-2:]]
        compressed = bool(suffixes) and suffixes[-1] == ".gz"
        suffix = suffixes[-2] if compressed and len(suffixes) > 1 else suffixes[-1] if suffixes else ""
        if path.is_file() and suffix in _JSON_SUFFIXES:
            return _read_json_rows(path, None, lines=suffix != ".json", compressed=compressed)
        return list(load_local_dataset(path, split=None))
    if isinstance(source, (list, tuple)):
        bad = next((i for i, record in enumerate(source) if not isinstance(record, Mapping)), None)
        if bad is not None:
            raise TypeError(f"Record {bad} of `source` is a {type(source[bad]).__name__}, not a dict.")
        return [dict(record) for record in source]
    raise TypeError(
        "`source` must be a path (JSON or JSON Lines file, or a saved dataset), a list of dicts or a datasets.Dataset, "
        f"got {type(source).__name__}."
    )


def _positive(name: str, value: Any, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if optional else ''}, got {value!r}.")
    return value


def _eos_ids(eos_token_id: int | Sequence[int] | None, tokenizer: Any) -> tuple[int, ...]:
    """The token(s) after which a completion ends: ``eos_token_id``, else the tokenizer's EOS."""
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
        if eos_token_id is None:
            logger.warning("The tokenizer has no EOS token and no `eos_token_id` was given: no completion is cut.")
            return ()
    values = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not values or any(isinstance(value, bool) or not isinstance(value, int) for value in values):
        raise ValueError(f"`eos_token_id` must be a token id or a list of token ids, got {eos_token_id!r}.")
    return tuple(values)


def _teacher_setting(name: str, argument: int | None, samples: Sequence[RawTrajectory]) -> list[int | None]:
    """Every sample's block size (or steps per block): its record's, which must agree with ``argument`` when both
    are given, else ``argument``."""
    values = []
    for sample in samples:
        value = getattr(sample, name)
        if value is not None and argument is not None and value != argument:
            raise ValueError(
                f"Record {sample.record} says {name}={value} but `{name}={argument}` was given; drop the argument to "
                "use the records' own, or fix the records."
            )
        values.append(value if value is not None else argument)
    if name == "block_size" and any(value is None for value in values):
        first = next(sample.record for sample, value in zip(samples, values) if value is None)
        raise ValueError(
            f"The teacher's block size is unknown (record {first} has none): pass `block_size=` (e.g. 4 for the "
            "official SDAR rollouts). It places the blocks whose steps are checked and converted."
        )
    return values


def _tokenize(samples: Sequence[RawTrajectory], tokenizer: Any) -> None:
    """Fill in the prompt ids and completion ids that arrive as text, in one batched call each."""
    needs_prompt = [sample for sample in samples if sample.prompt_ids is None and sample.prompt is not None]
    if needs_prompt:
        ids = tokenize_prompts(
            tokenizer,
            [sample.prompt for sample in needs_prompt],
            rows=[sample.record for sample in needs_prompt],
        )
        for sample, prompt_ids in zip(needs_prompt, ids):
            sample.prompt_ids = prompt_ids
    needs_completion = [sample for sample in samples if sample.ids is None]
    bad = next((sample for sample in needs_completion if not isinstance(sample.text, str)), None)
    if bad is not None:
        raise ValueError(
            f"Record {bad.record} (sample {bad.sample_index}): the completion must be token ids or text, got "
            f"{type(bad.text).__name__}."
        )
    if needs_completion:
        encoded = tokenizer_of(tokenizer)([sample.text for sample in needs_completion], add_special_tokens=False)
        for sample, ids in zip(needs_completion, encoded["input_ids"]):
            sample.ids = list(ids)


@dataclasses.dataclass
class _Outcome:
    """What became of one sample: its row, or the reason it was dropped."""

    sample: RawTrajectory
    row: dict[str, Any] | None
    reason: str = ""
    detail: str = ""
    cut_after_eos: bool = False


def _import_sample(
    sample: RawTrajectory,
    convention: StepConvention,
    block_size: int,
    steps_per_block: int | None,
    grid: str,
    eos_token_ids: tuple[int, ...],
    vocab_size: int | None,
    mask_token_id: int | None,
) -> _Outcome:
    """Convert one sample (:func:`convert_trajectory`) and check it as every trajectory is checked."""
    converted = convert_trajectory(
        sample.prompt_ids,
        sample.ids,
        sample.steps,
        convention,
        block_size=block_size,
        grid=grid,
        eos_token_ids=eos_token_ids,
        edited=sample.edited,
        expected_prompt_length=sample.expected_prompt_length,
    )
    if converted.reason:
        return _Outcome(sample, None, converted.reason, converted.detail)
    prompt_ids, completion_ids, step_map = converted.prompt_ids, converted.completion_ids, converted.step_map
    if mask_token_id is not None and mask_token_id in completion_ids:
        position = completion_ids.index(mask_token_id)
        return _Outcome(sample, None, "mask_token_in_completion", f"completion token {position} is the mask")
    for name, ids in (("prompt_ids", prompt_ids), ("completion_ids", completion_ids)):
        problem = _ids_problem(name, ids, vocab_size)
        if problem:
            return _Outcome(sample, None, "token_id_outside_vocabulary", problem)
    problem = _row_problem(prompt_ids, completion_ids, step_map, block_size, steps_per_block, grid, vocab_size)
    if problem:
        return _Outcome(sample, None, "not_a_schedule", problem)
    row = {
        "prompt": sample.prompt,
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "step_map": step_map,
        "block_size": block_size,
        "steps_per_block": steps_per_block,
        "sample_index": sample.sample_index,
    }
    return _Outcome(sample, row, cut_after_eos=converted.cut_after_eos)


def _summary(
    fmt: TrajectoryFormat,
    records: int,
    outcomes: Sequence[_Outcome],
    eos_token_ids: tuple[int, ...],
    settings: dict[str, Any],
) -> dict[str, Any]:
    kept = [outcome for outcome in outcomes if outcome.row is not None]
    dropped = Counter(outcome.reason for outcome in outcomes if outcome.row is None)
    first_problem = {}
    for outcome in outcomes:
        if outcome.row is None and outcome.reason not in first_problem:
            where = f"record {outcome.sample.record}, sample {outcome.sample.sample_index}"
            first_problem[outcome.reason] = f"{where}: {outcome.detail}"
    eos = set(eos_token_ids)
    return {
        "format": fmt.name,
        "records": records,
        "rows_in": len(outcomes),
        "rows_out": len(kept),
        "dropped": dict(sorted(dropped.items())),
        "first_problem": first_problem,
        "cut_after_eos": sum(outcome.cut_after_eos for outcome in kept),
        "without_eos": sum(1 for outcome in kept if outcome.row["completion_ids"][-1] not in eos) if eos else None,
        **settings,
    }


def format_import_summary(summary: Mapping[str, Any]) -> str:
    """The one-line account of an import: rows in, rows out, dropped by reason."""
    dropped = summary["dropped"]
    reasons = ", ".join(f"{reason}: {count}" for reason, count in dropped.items())
    return (
        f"{summary['rows_in']} rows in ({summary['records']} {summary['format']} records), {summary['rows_out']} rows "
        f"out, {sum(dropped.values())} dropped" + (f" ({reasons})" if reasons else "")
    )


def _prompt_column(outcomes: Sequence[_Outcome], tokenizer: Any) -> None:
    """Prompts of one kind in the ``prompt`` column: when some rows hold text and others chat messages (a column
    holds one type), the messages are rendered to the text the teacher read."""
    rows = [outcome.row for outcome in outcomes if outcome.row is not None and outcome.row["prompt"] is not None]
    kinds = {isinstance(row["prompt"], str) for row in rows}
    if len(kinds) > 1:
        texts, _ = render_prompts(tokenizer, [row["prompt"] for row in rows])
        for row, text in zip(rows, texts):
            row["prompt"] = text


def import_trajectories(
    source: Any,
    tokenizer: Any,
    format: str | TrajectoryFormat = "t3d-json",
    *,
    block_size: int | None = None,
    steps_per_block: int | None = None,
    model_family: str = DEFAULT_FAMILY,
    eos_token_id: int | Sequence[int] | None = None,
    strict: bool = False,
) -> Dataset:
    """Read the trajectories of another producer into a trajectory dataset that :class:`~t3d_trl.T3DTrainer` takes.

    Every sample becomes one row (the k samples of an official item included, numbered by ``sample_index``) with the
    columns of :func:`t3d_trl.generate_trajectories`' rows: ``prompt`` (as the record gives it), ``completion``
    (decoded, special tokens skipped), ``prompt_ids``, ``completion_ids`` (up to and including the first EOS),
    ``step_map`` (0-based, over the whole completion), ``block_size``, ``steps_per_block`` and ``sample_index``;
    the record's other fields are kept as columns. Texts are tokenised as the producers do: a text prompt with the
    tokenizer's usual special tokens, chat messages through the chat template, a completion without special tokens.

    A sample is dropped and counted by reason (see :data:`~t3d_trl.rollout.conventions.DROP_REASONS`) when its step
    map is missing, is not as long as its (re-tokenised) completion, or the result is not a teacher's schedule on the
    model family's block grid; nothing is trimmed or padded. The summary (rows in, rows out, dropped by reason, the
    first problem of each reason) is logged and stored in ``dataset.info.description`` (:func:`import_summary`).

    Args:
        source: the records: a path (a ``.json`` list or ``.jsonl`` file, optionally gzipped, or a saved dataset), a
            list of dicts or a ``datasets.Dataset`` (e.g. ``load_dataset(..., split="train")``).
        tokenizer: the teacher's tokenizer (or a processor with one).
        format: a registered format name (``"t3d-json"``, ``"jetengine"``, ``"sglang"``, ``"diffusers"``,
            ``"t3d-trl"``) or a :class:`TrajectoryFormat`.
        block_size: the teacher's block size (required unless every record states it).
        steps_per_block: the teacher's denoising steps per block (``None``: at most ``block_size``).
        model_family: the model family of the student (``"block_causal"`` for SDAR): its block grid is the one the
            steps are checked on.
        eos_token_id: the token(s) ending a completion, after which tokens are dropped with their steps (default:
            the tokenizer's EOS).
        strict: refuse the first sample that would be dropped (``ValueError``) instead of dropping it.

    Returns:
        The trajectory dataset.

    Raises:
        ValueError: an unknown format, a record without the format's fields, invalid settings, a sample that cannot
            be imported under ``strict=True``, or no sample that can.
        TypeError: a ``source`` of another type.
        FileNotFoundError: a path where nothing is.
    """
    fmt = trajectory_format(format)
    block_size = _positive("block_size", block_size)
    steps_per_block = _positive("steps_per_block", steps_per_block)
    if block_size is not None and steps_per_block is not None and steps_per_block > block_size:
        raise ValueError(f"`steps_per_block` ({steps_per_block}) cannot exceed `block_size` ({block_size}).")
    grid = family_grid(model_family)
    eos_token_ids = _eos_ids(eos_token_id, tokenizer_of(tokenizer))
    records = _read_records(source)
    if not records:
        raise ValueError("`source` holds no record.")
    samples = [sample for index, record in enumerate(records) for sample in fmt.read(record, index)]
    block_sizes = _teacher_setting("block_size", block_size, samples)
    steps_per_blocks = _teacher_setting("steps_per_block", steps_per_block, samples)
    _tokenize(samples, tokenizer)
    text_tokenizer = tokenizer_of(tokenizer)
    vocab_size, mask_token_id = len(text_tokenizer), getattr(text_tokenizer, "mask_token_id", None)
    outcomes = []
    for sample, size, steps in zip(samples, block_sizes, steps_per_blocks):
        outcome = _import_sample(sample, fmt.convention, size, steps, grid, eos_token_ids, vocab_size, mask_token_id)
        if strict and outcome.row is None:
            raise ValueError(
                f"Record {sample.record} (sample {sample.sample_index}) cannot be imported: {outcome.reason} "
                f"({outcome.detail}): {DROP_REASONS[outcome.reason]}. Without strict=True it is dropped and counted."
            )
        outcomes.append(outcome)
    settings = {
        "block_size": block_size,
        "steps_per_block": steps_per_block,
        "model_family": model_family,
        "grid": grid,
    }
    summary = _summary(fmt, len(records), outcomes, eos_token_ids, settings)
    if summary["rows_out"] == 0:
        raise ValueError(
            f"No sample could be imported: {format_import_summary(summary)}. First problems: {summary['first_problem']}."
        )
    _log(summary)
    return _assemble(outcomes, text_tokenizer, summary)


def _log(summary: Mapping[str, Any]) -> None:
    logger.info("Imported trajectories: %s", format_import_summary(summary))
    for reason, count in summary["dropped"].items():
        logger.warning(
            "Dropped %d sample(s): %s (%s; first: %s).",
            count,
            reason,
            DROP_REASONS[reason],
            summary["first_problem"][reason],
        )


def _assemble(outcomes: Sequence[_Outcome], tokenizer: Any, summary: dict[str, Any]) -> Dataset:
    """The kept rows as a ``Dataset``: the library's columns, then the records' own, and the summary in
    ``info.description``."""
    _prompt_column(outcomes, tokenizer)
    kept = [outcome for outcome in outcomes if outcome.row is not None]
    completions = tokenizer.batch_decode([outcome.row["completion_ids"] for outcome in kept], skip_special_tokens=True)
    clashes = sorted({key for outcome in kept for key in outcome.sample.columns if key in _OUTPUT_COLUMNS})
    if clashes:
        logger.warning("The records' fields %s are replaced by the imported trajectory's columns.", clashes)
    rows = []
    for outcome, completion in zip(kept, completions):
        row = {**outcome.row, "completion": completion}
        if row["steps_per_block"] is None:
            del row["steps_per_block"]
        if row["prompt"] is None:
            del row["prompt"]
        ordered = {name: row[name] for name in _OUTPUT_COLUMNS if name in row}
        rows.append({**ordered, **{k: v for k, v in outcome.sample.columns.items() if k not in ordered}})
    dataset = _rows_dataset(rows)
    dataset.info.description = json.dumps({IMPORT_METADATA_KEY: summary}, sort_keys=True)
    return dataset


def import_summary(dataset: Dataset) -> dict[str, Any] | None:
    """The summary :func:`import_trajectories` stored with ``dataset`` (``None`` when it holds none): ``format``,
    ``records``, ``rows_in``, ``rows_out``, ``dropped`` (count by reason), ``first_problem`` (by reason),
    ``cut_after_eos`` (rows whose tokens after the first EOS were dropped), ``without_eos`` (rows that end without
    EOS: cut at the producer's length limit), and the settings (``block_size``, ``steps_per_block``,
    ``model_family``, ``grid``)."""
    try:
        payload = json.loads(dataset.info.description or "")
    except (TypeError, ValueError):
        return None
    return payload.get(IMPORT_METADATA_KEY) if isinstance(payload, dict) else None


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


def _prompt_groups(items: Sequence[tuple[dict[str, Any], Any]], groups_samples: bool) -> list[list[tuple[dict, Any]]]:
    """The ``(row, steps)`` one record holds: a prompt's consecutive samples (``sample_index`` 0, 1, ...) when the
    format groups them, else each row alone."""
    if not groups_samples or "sample_index" not in items[0][0]:
        return [[item] for item in items]
    groups: list[list[tuple[dict, Any]]] = []
    for position, item in enumerate(items):
        row = item[0]
        if row["sample_index"] == 0:
            groups.append([item])
            continue
        if not groups or row["sample_index"] != len(groups[-1]) or row["prompt_ids"] != groups[-1][0][0]["prompt_ids"]:
            raise ValueError(
                f"Row {position} (sample_index {row['sample_index']}) does not continue the samples of the prompt "
                "before it: a prompt's rows must be consecutive, numbered 0, 1, ... (as generate_trajectories writes "
                "them)."
            )
        groups[-1].append(item)
    return groups


def export_trajectories(
    dataset: Dataset | Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    tokenizer: Any,
    format: str | TrajectoryFormat = "t3d-json",
    *,
    block_size: int | None = None,
    model_family: str = DEFAULT_FAMILY,
) -> Path:
    """Write a trajectory dataset in another producer's format, so that its tools read it.

    ``path`` ending in ``.jsonl`` gets one record a line, any other a JSON list. The steps are written in the
    format's numbering (:func:`~t3d_trl.rollout.conventions.to_producer_steps`); ``t3d-json`` groups a prompt's
    consecutive samples into one item (``question``, ``prompt`` and ``answer`` as text, special tokens kept, 1-based
    ``step_map``), which the official trainer reads. Reading the file back with :func:`import_trajectories` gives the
    same rows (for ``t3d-json``, whose prompt is text, ``prompt`` comes back as the templated text and ``question``
    is added when the rows had none).

    Args:
        dataset: trajectory rows (``prompt_ids``, ``completion_ids``, ``step_map``; ``block_size`` as a column or
            argument).
        path: the file to write.
        tokenizer: the teacher's tokenizer (decodes the texts a format holds).
        format: a registered format that can be written (``"t3d-json"``, ``"jetengine"``, ``"sglang"``,
            ``"t3d-trl"``).
        block_size: the teacher's block size, for rows without a ``block_size`` column.
        model_family: the model family whose block grid the rows are checked on when the format has no grid of its
            own.

    Returns:
        The path written.

    Raises:
        ValueError: an unknown or read-only format, rows without the trajectory columns, a row that is not a
            teacher's schedule (naming it), or a column the format cannot hold.
    """
    fmt = trajectory_format(format)
    if fmt.write is None:
        writable = [name for name, value in TRAJECTORY_FORMATS.items() if value.write is not None]
        raise ValueError(f"The {fmt.name!r} format is read only; formats that can be written: {writable}.")
    block_size = _positive("block_size", block_size)
    rows = [dict(row) for row in dataset]
    if not rows:
        raise ValueError("The dataset has no row to export.")
    missing = [name for name in ("prompt_ids", "completion_ids", "step_map") if name not in rows[0]]
    if missing:
        raise ValueError(f"The rows lack the trajectory columns {missing}; export a trajectory dataset.")
    grid = fmt.convention.grid or family_grid(model_family)
    text_tokenizer = tokenizer_of(tokenizer)
    records: list[dict[str, Any]] = []
    steps = []
    for position, row in enumerate(rows):
        row["block_size"] = _row_block_size(row, block_size)
        prompt_ids, completion_ids = row["prompt_ids"], row["completion_ids"]
        problem = _row_problem(prompt_ids, completion_ids, row["step_map"], row["block_size"], None, grid)
        if problem:
            raise ValueError(f"Row {position} is not a trajectory the {fmt.name!r} format can hold: {problem}.")
        steps.append(to_producer_steps(row["step_map"], fmt.convention, len(prompt_ids), row["block_size"], grid))
    for group in _prompt_groups(list(zip(rows, steps)), fmt.groups_samples):
        records += fmt.write([row for row, _ in group], [step.tolist() for _, step in group], text_tokenizer)
    return _write_records(Path(path), records)


def _row_block_size(row: Mapping[str, Any], block_size: int | None) -> int:
    value = row.get("block_size")
    if value is not None and block_size is not None and value != block_size:
        raise ValueError(f"A row says block_size={value} but `block_size={block_size}` was given.")
    value = value if value is not None else block_size
    if value is None:
        raise ValueError("The rows have no `block_size` column: pass the teacher's `block_size=`.")
    return int(value)


def _write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        else:
            json.dump(list(records), handle, ensure_ascii=False)
    return path
