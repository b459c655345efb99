"""Checking a checkpoint before resuming from it: one message naming the missing or damaged file and what to do.

``transformers.Trainer`` reads a checkpoint's files one after the other while resuming, so a checkpoint cut short by
a crash or a full disk fails at whichever file comes first, with that library's words (``SafetensorError``,
``PytorchStreamReader failed``, ``OSError: [Errno 22]``, a missing ``trainer_state.json``), after the model and the
data are already set up. :func:`check_resume_checkpoint` reads the structure of every file first, without loading
any tensor:

* ``trainer_state.json`` must be there: the Trainer writes it last, so without it the run stopped while saving;
* the reference ``ref_model.pt`` must be there when the run refreshes its reference (T3D writes it first);
* some model weights must be there, and every shard a ``*.index.json`` lists;
* ``*.json`` files must parse; ``*.safetensors`` files must be as long as their header says; ``*.pt``, ``*.pth`` and
  ``*.bin`` files (``torch.save``'s zip format) must end with their zip directory.

See ``docs/training.md`` ("Resuming").
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path

__all__ = ["checkpoint_problems", "check_resume_checkpoint"]

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: files (or folders) any of which holds the model's weights in a Trainer checkpoint
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_WEIGHT_FOLDERS = re.compile(r"^(pytorch_model_fsdp_\d+|global_step\d+)$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def _safetensors_problem(path: Path) -> str:
    """Empty when ``path`` is a whole safetensors file (its header parses and the data is as long as it says)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"it holds {size} bytes, fewer than a safetensors header"
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > size - 8:
            return f"its header announces {header_size:,} bytes but the file holds {size:,}"
        try:
            header = json.loads(handle.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size != expected:
        return f"it holds {size:,} bytes where its header describes {expected:,}"
    return ""


def _torch_file_problem(path: Path) -> str:
    """Empty when ``path`` is a whole ``torch.save`` archive (a zip file whose directory, at its very end, is there)."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"it is not a complete torch.save archive ({error})"
    return ""


def _json_problem(path: Path) -> str:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"it is not valid JSON ({error})"
    return ""


def _file_problem(path: Path) -> str:
    """What is wrong with one file of a checkpoint (empty for files whose format is not checked)."""
    name = path.name
    if name.endswith(".safetensors"):
        return _safetensors_problem(path)
    if name.endswith(_TORCH_SUFFIXES):
        return _torch_file_problem(path)
    if name.endswith(".json"):
        return _json_problem(path)
    return ""


def _missing_shards(folder: Path) -> list[str]:
    """Shards an ``*.index.json`` of ``folder`` lists that are not there."""
    missing = []
    for index in sorted(folder.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue  # reported as a damaged file
        missing += [f"{shard} (listed in {index.name})" for shard in sorted(shards) if not (folder / shard).is_file()]
    return missing


def checkpoint_problems(checkpoint: str | os.PathLike, reference_file: str | None = None) -> list[str]:
    """What keeps ``checkpoint`` from being resumed, one entry per missing or damaged file (empty when none).

    Args:
        checkpoint: a ``checkpoint-N`` folder written by the Trainer.
        reference_file: a file the run needs besides the Trainer's (T3D's ``ref_model.pt``), or ``None``.
    """
    folder = Path(checkpoint)
    problems = []
    if not (folder / TRAINER_STATE).is_file():
        problems.append(
            f"{TRAINER_STATE} is missing: the Trainer writes it last, so the run stopped while saving this checkpoint"
        )
    if reference_file is not None and not (folder / reference_file).is_file():
        problems.append(f"{reference_file} (the reference model of this run) is missing")
    has_weights = any((folder / name).is_file() for name in _WEIGHTS) or any(
        path.is_dir() and _WEIGHT_FOLDERS.match(path.name) for path in folder.iterdir()
    )
    if not has_weights:
        problems.append(f"it holds no model weights (none of {', '.join(_WEIGHTS[:4])}, ...)")
    problems += [f"{shard} is missing" for shard in _missing_shards(folder)]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        problem = _file_problem(path)
        if problem:
            problems.append(f"{path.relative_to(folder)} is damaged: {problem}")
    return problems


def _newest_checkpoint(output_dir: Path, below: int | None = None) -> Path | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the largest ``N`` (below ``below`` when given)."""
    if not output_dir.is_dir():
        return None
    steps = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if path.is_dir() and (match := _CHECKPOINT.match(path.name)) and (below is None or int(match.group(1)) < below)
    ]
    return max(steps)[1] if steps else None


def check_resume_checkpoint(
    resume_from_checkpoint: str | os.PathLike | bool | None, output_dir: str | os.PathLike, reference_file: str | None
) -> None:
    """Refuse to resume from a checkpoint that is missing, incomplete or damaged, before anything is loaded.

    Args:
        resume_from_checkpoint: the argument of ``Trainer.train`` (``True``: the newest ``checkpoint-N`` of
            ``output_dir``, as transformers resolves it; ``None`` / ``False``: nothing to check).
        output_dir: the run's output directory.
        reference_file: a file the run needs besides the Trainer's (T3D's ``ref_model.pt``), or ``None``.

    Raises:
        ValueError: one message naming every missing or damaged file and what to do.
    """
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return
    if resume_from_checkpoint is True:
        folder = _newest_checkpoint(Path(output_dir))
        if folder is None:
            raise ValueError(
                f"resume_from_checkpoint=True found no checkpoint-N folder in output_dir={str(output_dir)!r}: give "
                "the path of a checkpoint, or train from the start (resume_from_checkpoint=None)."
            )
    else:
        folder = Path(resume_from_checkpoint)
        if not folder.is_dir():
            state = "is a file" if folder.exists() else "does not exist"
            raise ValueError(
                f"resume_from_checkpoint={str(resume_from_checkpoint)!r} {state}: give a checkpoint-N folder the "
                "Trainer wrote, or True for the newest one in output_dir."
            )
    problems = checkpoint_problems(folder, reference_file)
    if not problems:
        return
    match = _CHECKPOINT.match(folder.name)
    earlier = _newest_checkpoint(folder.parent, below=int(match.group(1))) if match else None
    instead = (
        f"resume from the previous one with resume_from_checkpoint={str(earlier)!r}, or delete {folder} and resume "
        "with resume_from_checkpoint=True (it picks the newest remaining checkpoint)"
        if earlier is not None
        else f"there is no earlier checkpoint next to it: delete {folder} and train from the start"
    )
    raise ValueError(f"Cannot resume from {folder}: {'; '.join(problems)}. To go on, {instead}.")
