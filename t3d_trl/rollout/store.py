"""The resumable shard store of a rollout: ``output_dir`` with its settings record, shards and final dataset.

Layout of ``output_dir`` (see ``docs/rollouts.md``, "Resuming"):

* ``rollout_config.json``: the settings record, whose ``fingerprint`` a rerun must match to resume;
* ``shards/batchNNNNNN.jsonl``: the rows of every finished batch, written atomically as soon as it finishes, one JSON
  object a line with the fields of :data:`SHARD_KEYS` and the SHA-256 of those fields (:data:`ROW_CHECKSUM_KEY`);
* ``dataset/``: the final dataset (``save_to_disk``) and ``done``, written once every prompt has its rows.

Shards are checked when read back (:func:`read_shard`): a damaged one (a row whose content no longer matches its
checksum included: edited tokens or steps) is refused with its path and how to recover (delete it and rerun: its
batch is generated again). A directory is a finished rollout only with its ``done`` marker
(:func:`finished_dataset_dir`): without it the final dataset may be half written and is not read as data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CONFIG_FILE = "rollout_config.json"
_DONE_FILE = "done"
_SHARD_DIR = "shards"
_DATASET_DIR = "dataset"
_SHARD_PATTERN = re.compile(r"^batch(\d{6,})\.jsonl$")
#: the fields of every row of a shard
SHARD_KEYS = ("index", "sample_index", "prompt_ids", "completion_ids", "step_map", "nfe")
#: the field of a shard row holding the SHA-256 of its :data:`SHARD_KEYS` fields
ROW_CHECKSUM_KEY = "sha256"

#: entries of the settings record that are informational (not part of the fingerprint)
_INFORMATIONAL = ("fingerprint", "dataset_fingerprint", "t3d_trl_version")


def sha256_of(value: Any) -> str:
    """SHA-256 of ``value``'s JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """The fingerprint a rerun must match to resume: the settings without the informational entries.

    The dataset's own fingerprint is informational (it is random for some in-memory datasets); the prompts' ids are
    what the rollout depends on.
    """
    return sha256_of({key: value for key, value in settings.items() if key not in _INFORMATIONAL})


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never a half-written file)."""
    temporary = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _shard_path(output_dir: Path, batch_index: int) -> Path:
    return output_dir / _SHARD_DIR / f"batch{batch_index:06d}.jsonl"


def _row_checksum(row: Mapping[str, Any]) -> str:
    """SHA-256 of a shard row's :data:`SHARD_KEYS` fields."""
    return sha256_of({key: row[key] for key in SHARD_KEYS})


def write_shard(output_dir: Path, batch_index: int, rows: Sequence[dict[str, Any]]) -> None:
    """Write the rows of a finished batch to ``shards/batchNNNNNN.jsonl`` (atomically), one JSON row a line, each
    with the checksum of its fields (:data:`ROW_CHECKSUM_KEY`)."""
    lines = "".join(json.dumps({**row, ROW_CHECKSUM_KEY: _row_checksum(row)}) + "\n" for row in rows)
    _atomic_write(_shard_path(output_dir, batch_index), lines)


def _describe_difference(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    differences = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in _INFORMATIONAL:
            continue
        before, after = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            differences += _describe_difference(before, after, f"{prefix}{key}.")
        elif before != after:
            differences.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return differences


def _stored_record(config_path: Path) -> dict[str, Any]:
    """The settings record of an earlier run, or a ``ValueError`` saying how to recover when it is damaged."""
    try:
        stored = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        stored, problem = None, f"it is not valid JSON ({error})"
    else:
        problem = "it is not a JSON object with a `fingerprint`"
    if not isinstance(stored, dict) or "fingerprint" not in stored:
        raise ValueError(
            f"{config_path} is damaged: {problem}. The finished shards next to it cannot be checked without it: "
            f"delete the directory {config_path.parent} and rerun to start over."
        )
    return stored


def _check_same_settings(output_dir: Path, stored: Mapping[str, Any], record: Mapping[str, Any]) -> None:
    """Refuse to resume a rollout made with other settings, naming what differs and how to start over."""
    if stored.get("fingerprint") == record["fingerprint"]:
        return
    differences = _describe_difference(stored, record) or ["(settings fingerprint)"]
    weights = any(line.startswith("model_weights_sha256:") for line in differences)
    reason = (
        "the teacher's weights are not those of the interrupted run; other settings" if weights else "other settings"
    )
    raise ValueError(
        f"{output_dir} holds a rollout made with {reason}, so it cannot be resumed: "
        + "; ".join(differences)
        + f". Rerun with the settings and teacher of that run to resume it, use a new output_dir, or delete "
        f"{output_dir} to start over."
    )


def _prepare_output_dir(
    output_dir: Path,
    record: dict[str, Any],
    batches: Sequence[Sequence[int]],
    prompt_ids: Sequence[list[int]],
    num_generations: int = 1,
) -> tuple[dict[int, list[dict[str, Any]]], bool]:
    """Check (or write) the settings record of ``output_dir`` and read back the finished batches.

    Returns:
        ``(finished, done)``: the rows of every finished batch by batch index, and whether the ``done`` marker is
        there.

    Raises:
        ValueError: for a directory made with other settings, a damaged record or shard (naming the file and how to
            recover), or a directory that is not a rollout's.
    """
    config_path = output_dir / CONFIG_FILE
    if config_path.is_file():
        _check_same_settings(output_dir, _stored_record(config_path), record)
    else:
        leftovers = [name for name in (_SHARD_DIR, _DATASET_DIR, _DONE_FILE) if (output_dir / name).exists()]
        if leftovers:
            raise ValueError(
                f"{output_dir} has {', '.join(leftovers)} but no {CONFIG_FILE}: it is not a t3d-trl rollout "
                "directory (or a damaged one). Use a new output_dir, or delete this one to start over."
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(config_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    (output_dir / _SHARD_DIR).mkdir(parents=True, exist_ok=True)

    finished: dict[int, list[dict[str, Any]]] = {}
    for path in sorted((output_dir / _SHARD_DIR).iterdir()):
        match = _SHARD_PATTERN.match(path.name)
        if match is None:
            continue  # temporary files of an interrupted write, or foreign files
        batch_index = int(match.group(1))
        if batch_index >= len(batches):
            raise _damaged(path, f"this rollout has {len(batches)} batches, so there is no batch {batch_index}")
        expected = [(row, sample) for row in batches[batch_index] for sample in range(num_generations)]
        finished[batch_index] = read_shard(path, expected, prompt_ids)
    return finished, (output_dir / _DONE_FILE).is_file()


def _damaged(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"Shard {path} is damaged: {problem}. Delete it ({path}) and rerun the same command: its batch is generated "
        "again and the other finished batches are kept."
    )


def _int_list(value: Any) -> bool:
    """Whether ``value`` is a list of integers (checked by ``array``, in C, not by a Python loop over tokens)."""
    if not isinstance(value, list):
        return False
    try:
        array("q", value)
    except (TypeError, OverflowError):
        return False
    return True


def _row_problem(row: Any) -> str:
    """What is wrong with one parsed shard line (empty when it is a valid row)."""
    if not isinstance(row, dict):
        return f"it holds a JSON {type(row).__name__}, not an object"
    missing = [key for key in SHARD_KEYS if key not in row]
    if missing:
        return f"it lacks {missing}"
    for key in ("index", "sample_index", "nfe"):
        if not isinstance(row[key], int) or isinstance(row[key], bool) or row[key] < 0:
            return f"`{key}` must be a non-negative integer, got {row[key]!r}"
    for key in ("prompt_ids", "completion_ids", "step_map"):
        if not _int_list(row[key]):
            return f"`{key}` must be a list of integers"
    if len(row["step_map"]) != len(row["completion_ids"]):
        return f"`step_map` has {len(row['step_map'])} entries for {len(row['completion_ids'])} completion tokens"
    if ROW_CHECKSUM_KEY not in row:
        return f"it has no `{ROW_CHECKSUM_KEY}` checksum (written by another version of t3d-trl, or by hand)"
    if row[ROW_CHECKSUM_KEY] != _row_checksum(row):
        return (
            f"its fields no longer match their `{ROW_CHECKSUM_KEY}` checksum (the tokens, steps or indices were "
            "edited after the batch was written)"
        )
    return ""


def read_shard(
    path: Path, expected: Sequence[tuple[int, int]], prompt_ids: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """The rows of one finished batch, checked against the rows the batch must hold.

    Args:
        path: the shard, ``shards/batchNNNNNN.jsonl``.
        expected: the ``(row index, sample index)`` of every row the batch holds, in order.
        prompt_ids: the tokenised prompts of the rollout (each row's ``prompt_ids`` must be its prompt's).

    Returns:
        The rows, as written by :func:`write_shard`.

    Raises:
        ValueError: for a damaged shard (not UTF-8, a line that is not a JSON row, missing or ill-typed fields, fields
            that do not match their checksum, other rows than the batch's, other prompt ids), naming the file and
            saying how to recover.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise _damaged(path, f"it is not UTF-8 text ({error})") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise _damaged(path, f"line {number} is not valid JSON ({error})") from None
        problem = _row_problem(row)
        if problem:
            raise _damaged(path, f"line {number}: {problem}")
        rows.append({key: row[key] for key in SHARD_KEYS})
    found = [(row["index"], row["sample_index"]) for row in rows]
    if found != list(expected):
        raise _damaged(
            path,
            f"it holds the rows (index, sample_index) {found[:8]}{'...' if len(found) > 8 else ''} but its batch is "
            f"{list(expected)[:8]}{'...' if len(expected) > 8 else ''}",
        )
    for row in rows:
        if row["prompt_ids"] != list(prompt_ids[row["index"]]):
            raise _damaged(path, f"row {row['index']} was made from other prompt ids than this rollout's")
    return rows


def open_store(
    output_dir: Path,
    record: dict[str, Any],
    batches: Sequence[Sequence[int]],
    prompt_ids: Sequence[list[int]],
    state: Any,
    num_generations: int = 1,
) -> tuple[dict[int, list[dict[str, Any]]], bool]:
    """:func:`_prepare_output_dir` on the main process, its outcome (or its error) sent to every process.

    Returns:
        ``(finished, done)``, the same on every process.

    Raises:
        ValueError: on every process, when the main process found ``output_dir`` made with other settings or damaged.
    """
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None]
    if state.is_main_process:
        try:
            outcome = [("ok", *_prepare_output_dir(output_dir, record, batches, prompt_ids, num_generations))]
        except Exception as error:  # sent to every process so that all of them raise
            outcome = [("error", error)]
    if int(state.num_processes) > 1:
        outcome = broadcast_object_list(outcome, from_process=0)
    if outcome[0][0] == "error":
        raise outcome[0][1]
    _, finished, done = outcome[0]
    return finished, done


def close_store(output_dir: Path, dataset: Any, fingerprint: str, already_done: bool, state: Any) -> None:
    """Save the final dataset and the ``done`` marker (main process, unless already there); every process waits."""
    if state.is_main_process and not already_done:
        dataset.save_to_disk(str(output_dir / _DATASET_DIR))
        marker = {"num_rows": len(dataset), "fingerprint": fingerprint}
        _atomic_write(output_dir / _DONE_FILE, json.dumps(marker) + "\n")
    if int(state.num_processes) > 1:
        state.wait_for_everyone()


def finished_dataset_dir(output_dir: str | os.PathLike) -> Path:
    """The final dataset of the rollout directory ``output_dir``, checked to be finished.

    Returns:
        ``output_dir/dataset``.

    Raises:
        ValueError: when the ``done`` marker (written after the dataset) is missing or damaged: the rollout did not
            finish, and its dataset may be missing or half written.
    """
    output_dir = Path(output_dir)
    marker = output_dir / _DONE_FILE
    finish = (
        f"rerun the same `t3d-trl rollout` command (or `generate_trajectories` call, output_dir={str(output_dir)!r}) "
        "to finish it: the finished batches are read back, not generated again"
    )
    if not marker.is_file():
        state = "no `dataset/` yet" if not (output_dir / _DATASET_DIR).exists() else "its `dataset/` may be partial"
        raise ValueError(
            f"{output_dir} is an unfinished rollout directory (no `{_DONE_FILE}` marker; {state}), so it is not read "
            f"as training data: {finish}."
        )
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("num_rows"), int):
        raise ValueError(f"{marker} is damaged (not the JSON record t3d-trl writes): delete it and {finish}.")
    return output_dir / _DATASET_DIR


def check_finished_rows(output_dir: str | os.PathLike, num_rows: int) -> None:
    """Refuse the final dataset of ``output_dir`` when it holds another number of rows than its ``done`` marker
    records (a dataset replaced or cut after the rollout finished)."""
    marker = Path(output_dir) / _DONE_FILE
    expected = json.loads(marker.read_text(encoding="utf-8"))["num_rows"]
    if num_rows != expected:
        raise ValueError(
            f"{Path(output_dir) / _DATASET_DIR} holds {num_rows} rows but its rollout finished with {expected} "
            f"({marker}): it was changed afterwards. Delete {Path(output_dir) / _DATASET_DIR} and {marker} and rerun "
            "the rollout to write it again from its shards."
        )
