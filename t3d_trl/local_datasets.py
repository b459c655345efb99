"""Datasets stored on this machine: one reader for directories and data files.

:func:`load_local_dataset` reads what the command line (``--dataset_path``, local ``--eval_dataset`` entries), the
example scripts and :func:`t3d_trl.evaluation.load_eval_dataset` (``path=``) are given: ``save_to_disk``
directories, ``t3d-trl rollout`` output directories, directories of data files, and ``.json`` / ``.jsonl`` /
``.ndjson`` (each optionally ``.gz``), ``.parquet``, ``.csv`` and ``.arrow`` files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["load_local_dataset"]

#: the settings record `generate_trajectories(output_dir=...)` writes first (see t3d_trl.rollout.store)
_ROLLOUT_RECORD = "rollout_config.json"
_JSON_LINES = (".jsonl", ".ndjson")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet", ".csv": "csv"}


def load_local_dataset(path: str | os.PathLike, split: str | None = "train") -> Any:
    """A dataset stored on this machine.

    Args:
        path: a ``save_to_disk`` directory (a ``Dataset``, or a ``DatasetDict`` of which ``split`` is taken), a
            finished ``t3d-trl rollout`` / ``generate_trajectories(output_dir=...)`` directory or its ``dataset/``
            (read only with the rollout's ``done`` marker, and with the number of rows the marker records), a
            directory of data files, a ``.json`` file (a list of rows, ``{split: [rows]}``, ``{"data": [rows]}``, a
            single ``{name: [rows]}`` or columns ``{"field": [values]}``), a ``.jsonl`` / ``.ndjson`` file (each
            optionally gzipped), or a ``.parquet`` / ``.csv`` / ``.arrow`` file.
        split: the split of a ``DatasetDict``, of a directory of data files, or of a JSON object of splits
            (``None``: the only split of a ``DatasetDict``; no split of a JSON object).

    Returns:
        A ``datasets.Dataset``.

    Raises:
        FileNotFoundError: when nothing is at ``path``.
        ValueError: for an unfinished rollout directory (no ``done`` marker) or a finished one whose dataset was
            changed, a missing split, an unsupported file or a JSON file that does not hold rows.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No dataset at {str(path)!r}.")
    if path.is_dir():
        return _load_directory(path, split)
    suffix = path.suffix.lower()
    if suffix == ".arrow":
        from datasets import Dataset

        return Dataset.from_file(str(path))
    compressed = suffix == ".gz"
    if compressed:
        suffix = Path(path.stem).suffix.lower()
    if suffix not in _FILE_BUILDERS:
        raise ValueError(
            f"Unsupported dataset file {str(path)!r}: use .json, .jsonl, .parquet, .csv or .arrow, or a save_to_disk "
            "directory."
        )
    if _FILE_BUILDERS[suffix] == "json":
        return _rows_dataset(_read_json_rows(path, split, lines=suffix in _JSON_LINES, compressed=compressed))
    from datasets import load_dataset

    return load_dataset(_FILE_BUILDERS[suffix], data_files=str(path), split="train")


def _load_directory(path: Path, split: str | None) -> Any:
    from datasets import DatasetDict, load_dataset, load_from_disk

    if (path / _ROLLOUT_RECORD).exists():
        return _load_rollout(path, split)
    if path.name == "dataset" and (path.parent / _ROLLOUT_RECORD).exists():
        return _load_rollout(path.parent, split)
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        data = load_from_disk(str(path))
    else:
        data = load_dataset(str(path), split=split)
    return _pick_split(data, split, path) if isinstance(data, DatasetDict) else data


def _load_rollout(output_dir: Path, split: str | None) -> Any:
    """The final dataset of a rollout directory, only once the rollout finished (its ``done`` marker)."""
    from datasets import DatasetDict, load_from_disk

    from .rollout.store import check_finished_rows, finished_dataset_dir

    data = load_from_disk(str(finished_dataset_dir(output_dir)))
    data = _pick_split(data, split, output_dir) if isinstance(data, DatasetDict) else data
    check_finished_rows(output_dir, len(data))
    return data


def _pick_split(data: Any, split: str | None, path: Path) -> Any:
    """``split`` of a ``DatasetDict`` (``None``: its only split)."""
    if split is None and len(data) == 1:
        return next(iter(data.values()))
    if split not in data:
        wanted = f", not {split!r}" if split is not None else ""
        raise ValueError(f"{path} has splits {list(data)}{wanted}; pick one with the split flag.")
    return data[split]


def _open_text(path: Path, compressed: bool):
    if compressed:
        import gzip

        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_json_rows(path: Path, split: str | None, lines: bool, compressed: bool) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file, or of a JSON file holding rows in one of the shapes of
    :func:`load_local_dataset`."""
    with _open_text(path, compressed) as handle:
        if lines:
            rows = [json.loads(line) for line in handle if line.strip()]
        else:
            rows = _json_rows(json.load(handle), path, split)
    bad = [i for i, row in enumerate(rows) if not isinstance(row, dict)]
    if bad:
        raise ValueError(f"{str(path)!r}: row {bad[0]} is not a JSON object.")
    return rows


def _json_rows(data: Any, path: Path, split: str | None) -> list[Any]:
    if isinstance(data, dict):
        if split is not None and isinstance(data.get(split), list):
            data = data[split]
        elif isinstance(data.get("data"), list):
            data = data["data"]
        elif len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        elif data and all(isinstance(v, list) for v in data.values()):  # columnar {"field": [values]}
            keys = list(data)
            data = [dict(zip(keys, values)) for values in zip(*(data[k] for k in keys))]
        else:
            raise ValueError(
                f"{str(path)!r} holds a JSON object; expected a list of rows, {{split: [rows]}} or {{'data': [rows]}}."
            )
    if not isinstance(data, list):
        raise ValueError(f"{str(path)!r} must hold a JSON list of rows.")
    return data


def _rows_dataset(rows: list[dict[str, Any]]) -> Any:
    """A ``Dataset`` of ``rows`` whose columns are every field of any row (``None`` where a row lacks one)."""
    from datasets import Dataset

    columns = list(dict.fromkeys(key for row in rows for key in row))
    return Dataset.from_dict({column: [row.get(column) for row in rows] for column in columns})
