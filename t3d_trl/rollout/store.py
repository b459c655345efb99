"""The resumable shard store of a rollout: ``output_dir`` with its settings record, shards and final dataset.

Layout of ``output_dir`` (see ``docs/rollouts.md``, "Resuming"):

* ``rollout_config.json``: the settings record, whose ``fingerprint`` a rerun must match to resume;
* ``shards/batchNNNNNN.jsonl``: the rows of every finished batch, written atomically as soon as it finishes;
* ``dataset/``: the final dataset (``save_to_disk``) and ``done``, written once every prompt has its row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CONFIG_FILE = "rollout_config.json"
_DONE_FILE = "done"
_SHARD_DIR = "shards"
_DATASET_DIR = "dataset"
_SHARD_PATTERN = re.compile(r"^batch(\d{6,})\.jsonl$")

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


def write_shard(output_dir: Path, batch_index: int, rows: Sequence[dict[str, Any]]) -> None:
    _atomic_write(_shard_path(output_dir, batch_index), "".join(json.dumps(row) + "\n" for row in rows))


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


def _prepare_output_dir(
    output_dir: Path, record: dict[str, Any], batches: Sequence[Sequence[int]], prompt_ids: Sequence[list[int]]
) -> tuple[dict[int, list[dict[str, Any]]], bool]:
    """Check (or write) the settings record of ``output_dir`` and read back the finished batches.

    Returns:
        ``(finished, done)``: the rows of every finished batch by batch index, and whether the ``done`` marker is
        there.
    """
    config_path = output_dir / CONFIG_FILE
    if config_path.is_file():
        stored = json.loads(config_path.read_text(encoding="utf-8"))
        if stored.get("fingerprint") != record["fingerprint"]:
            differences = _describe_difference(stored, record) or ["(settings fingerprint)"]
            raise ValueError(
                f"{output_dir} holds a rollout made with other settings, so it cannot be resumed: "
                + "; ".join(differences)
                + ". Use a new output_dir, or delete this one to start over."
            )
    else:
        leftovers = [name for name in (_SHARD_DIR, _DATASET_DIR, _DONE_FILE) if (output_dir / name).exists()]
        if leftovers:
            raise ValueError(
                f"{output_dir} has {', '.join(leftovers)} but no {CONFIG_FILE}: it is not a t3d-trl rollout "
                "directory (or a damaged one). Use a new output_dir."
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
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        expected = list(batches[batch_index]) if batch_index < len(batches) else None
        if expected is None or [row["index"] for row in rows] != expected:
            raise ValueError(
                f"Shard {path} does not match this rollout's batches (rows {[r.get('index') for r in rows]}, "
                f"expected {expected}). The output_dir is damaged; use a new one."
            )
        for row in rows:
            if row["prompt_ids"] != prompt_ids[row["index"]]:
                raise ValueError(
                    f"Shard {path}: row {row['index']} was made from other prompt ids; use a new output_dir."
                )
        finished[batch_index] = rows
    return finished, (output_dir / _DONE_FILE).is_file()


def open_store(
    output_dir: Path,
    record: dict[str, Any],
    batches: Sequence[Sequence[int]],
    prompt_ids: Sequence[list[int]],
    state: Any,
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
            outcome = [("ok", *_prepare_output_dir(output_dir, record, batches, prompt_ids))]
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
