"""The rollout loop: settings resolution, prompt batching and generation (see ``docs/rollouts.md``).

:func:`generate_trajectories` tokenises the prompts, checks their lengths, cuts them into length-sorted batches,
deals the batches out to the processes, generates each batch with its own seeded generator, and assembles the rows,
in the dataset's order, into the trajectory dataset; with an ``output_dir`` it resumes from and writes to the shard
store of :mod:`t3d_trl.rollout.store`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
from array import array
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, Value, concatenate_datasets

try:  # datasets >= 4
    from datasets import List
except ImportError:  # datasets 3
    from datasets import Sequence as List
from transformers import GenerationConfig

from ..devices import model_device
from ..generation import DiffusionGenerationConfig, FewStepDiffusionGenerationMixin, patch_model
from ..generation.configuration import DEFAULT_MAX_NEW_TOKENS
from ..prompts import tokenize_prompts, tokenizer_of
from .store import close_store, open_store, settings_fingerprint, sha256_of, write_shard

logger = logging.getLogger(__name__)

__all__ = [
    "ROLLOUT_COLUMNS",
    "ROLLOUT_METADATA_KEY",
    "check_rollout_settings",
    "generate_trajectories",
    "resolve_generation_config",
    "rollout_config",
    "weights_sha256",
]

#: columns :func:`generate_trajectories` adds to the dataset (the prompt column is kept as given)
ROLLOUT_COLUMNS = (
    "completion",
    "prompt_ids",
    "completion_ids",
    "step_map",
    "block_size",
    "steps_per_block",
    "nfe",
    "sample_index",
)
#: key of the rollout record in the JSON of ``Dataset.info.description``
ROLLOUT_METADATA_KEY = "t3d_trl_rollout"

_CONFIG_META_FIELDS = ("transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash")

_ROLLOUT_FEATURES = {
    "completion": Value("string"),
    "prompt_ids": List(Value("int64")),
    "completion_ids": List(Value("int64")),
    "step_map": List(Value("int64")),
    "block_size": Value("int64"),
    "steps_per_block": Value("int64"),
    "nfe": Value("int64"),
    "sample_index": Value("int64"),
}


# --------------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------------


def resolve_generation_config(
    model: Any, generation_config: GenerationConfig | Mapping[str, Any] | None = None
) -> DiffusionGenerationConfig:
    """The decoding settings a rollout uses: the model's defaults overridden by ``generation_config``.

    Args:
        model: a model patched with :func:`t3d_trl.patch_model` (its ``generation_config`` holds the defaults).
        generation_config: ``None`` (the model's defaults), a ``dict`` of :class:`DiffusionGenerationConfig` fields
            (each one overrides the default), or a :class:`~transformers.GenerationConfig` /
            :class:`DiffusionGenerationConfig` whose fields that differ from a fresh ``DiffusionGenerationConfig()``
            override the defaults (so a config built as ``DiffusionGenerationConfig(steps_per_block=2)`` keeps the
            model's mask, EOS and pad tokens). To force greedy decoding on a model that samples by default, pass
            ``{"temperature": 0}``.

    Returns:
        A new :class:`DiffusionGenerationConfig` with ``max_new_tokens`` made explicit (the engine's default,
        :data:`~t3d_trl.generation.configuration.DEFAULT_MAX_NEW_TOKENS`, when unset).

    Raises:
        ValueError: for fields that are not generation settings, invalid values, or no mask token.
        TypeError: for a ``generation_config`` of another type.
    """
    config = DiffusionGenerationConfig.from_generation_config(getattr(model, "generation_config", None))
    if generation_config is None:
        overrides: dict[str, Any] = {}
    elif isinstance(generation_config, Mapping):
        overrides = dict(generation_config)
    elif isinstance(generation_config, GenerationConfig):
        defaults = DiffusionGenerationConfig().to_dict()
        overrides = {
            key: value
            for key, value in generation_config.to_dict().items()
            if key not in _CONFIG_META_FIELDS and defaults.get(key, _Missing) != value
        }
    else:
        raise TypeError(
            "`generation_config` must be a DiffusionGenerationConfig, a GenerationConfig or a dict of its fields, "
            f"got {type(generation_config).__name__}."
        )
    unused = config.update(**overrides)
    if unused:
        raise ValueError(f"`generation_config` has fields that are not generation settings: {sorted(unused)}.")
    if config.max_new_tokens is None:
        config.update(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
    if config.mask_token_id is None:
        raise ValueError(
            "No mask token: set `mask_token_id` in `generation_config`, or give the tokenizer a mask token "
            "(tokenizer.add_special_tokens({'mask_token': '<|MASK|>'})) before calling generate_trajectories."
        )
    if config.eos_token_id is None:
        logger.warning("No EOS token in the generation config: every completion will run to max_new_tokens.")
    return config


class _Missing:
    """Sentinel for a field absent from the defaults."""


def _config_dict(config: GenerationConfig) -> dict[str, Any]:
    values = config.to_dict()
    for key in _CONFIG_META_FIELDS:
        values.pop(key, None)
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def _model_name(model: Any) -> str | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def rollout_config(dataset: Dataset) -> dict[str, Any] | None:
    """The rollout record stored by :func:`generate_trajectories` in ``dataset.info.description``.

    Args:
        dataset: a dataset returned by :func:`generate_trajectories` (or loaded with ``load_from_disk`` /
            ``load_dataset``).

    Returns:
        The record (``model_name_or_path``, ``generation_config`` — the teacher's full
        ``DiffusionGenerationConfig.to_dict()`` —, ``batch_size``, ``seed``, ``fingerprint``...), or ``None`` when
        the dataset carries none.
    """
    description = getattr(dataset.info, "description", None)
    if not description:
        return None
    try:
        payload = json.loads(description)
    except (TypeError, ValueError):
        return None
    return payload.get(ROLLOUT_METADATA_KEY) if isinstance(payload, dict) else None


# --------------------------------------------------------------------------------------------------------------------
# Input checks (before anything runs)
# --------------------------------------------------------------------------------------------------------------------


def _as_dataset(dataset: Any) -> Dataset:
    """``dataset`` as a ``datasets.Dataset``: a list of dicts is converted; other types are refused."""
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, (IterableDataset, IterableDatasetDict)):
        raise TypeError(
            "`dataset` is an IterableDataset (streamed), which generate_trajectories does not take: the batches are "
            "planned over all the prompts (sorted by length) and a resumed run checks a hash of every prompt. "
            "Materialise it first, e.g. Dataset.from_list(list(dataset.take(n))), or load it without streaming=True."
        )
    if isinstance(dataset, DatasetDict):
        raise TypeError(
            f"`dataset` is a DatasetDict with the splits {list(dataset)}; pass one split, e.g. dataset['train']."
        )
    if isinstance(dataset, (list, tuple)):
        if not dataset:
            raise ValueError("The dataset is empty (an empty list): there are no prompts to roll out.")
        for row, item in enumerate(dataset):
            if not isinstance(item, Mapping):
                raise TypeError(
                    f"Row {row} of `dataset` is a {type(item).__name__}, not a dict: a list dataset holds one dict "
                    "per prompt, e.g. [{'prompt': 'What is 2+2?'}, ...]."
                )
        try:
            return Dataset.from_list([dict(item) for item in dataset])
        except (pa.ArrowException, TypeError, ValueError) as error:
            raise ValueError(
                f"The list of rows cannot be made into a datasets.Dataset ({error}): every column must hold values "
                "of one type (e.g. all prompts text, or all chat messages)."
            ) from None
    raise TypeError(
        f"`dataset` must be a datasets.Dataset or a list of dicts (one per prompt), got {type(dataset).__name__}."
    )


def _check_integer(name: str, value: Any, minimum: int, optional: bool = False) -> int | None:
    """``value`` as an ``int`` when it is an integer ``>= minimum`` (``None`` too when ``optional``); else an error
    naming the argument, the value and what is accepted."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        accepted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {accepted}{' or None' if optional else ''}, got {value!r}.")
    return int(value)


def _check_output_dir(output_dir: Any) -> Path | None:
    """``output_dir`` as a path; refused when it, or the first part of it that exists, is not a directory."""
    if output_dir is None:
        return None
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"`output_dir` must be a path (str or os.PathLike) or None, got {type(output_dir).__name__}.")
    directory = Path(output_dir)
    existing = next((path for path in (directory, *directory.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == directory else f"is inside {existing}, which is a file"
        raise ValueError(
            f"`output_dir` {str(directory)!r} {where}, not a directory. Give a directory (it is created if missing)."
        )
    return directory


def check_rollout_settings(
    *,
    batch_size: Any = 16,
    num_generations: Any = None,
    seed: Any = 0,
    max_prompt_length: Any = None,
    output_dir: Any = None,
) -> dict[str, Any]:
    """Check the numbers and the directory of a rollout, as :func:`generate_trajectories` does before anything runs
    (the command line calls it before loading the model).

    Returns:
        The settings, the numbers as ``int`` and ``output_dir`` as a ``Path`` (or ``None``).

    Raises:
        ValueError: a ``batch_size`` or ``num_generations`` that is not a positive integer (``None`` allowed for
            ``num_generations``), a ``seed`` that is not an integer ``>= 0``, a ``max_prompt_length`` that is not a
            positive integer or ``None``, an ``output_dir`` that is a file or inside one.
        TypeError: an ``output_dir`` that is not a path.
    """
    return {
        "batch_size": _check_integer("batch_size", batch_size, 1),
        "num_generations": _check_integer("num_generations", num_generations, 1, optional=True),
        "seed": _check_integer("seed", seed, 0),
        "max_prompt_length": _check_integer("max_prompt_length", max_prompt_length, 1, optional=True),
        "output_dir": _check_output_dir(output_dir),
    }


def _check_dataset(dataset: Any, prompt_column: Any) -> Dataset:
    """The dataset (converted from a list of dicts) when it has prompts in ``prompt_column``; refused otherwise."""
    dataset = _as_dataset(dataset)
    if not isinstance(prompt_column, str):
        raise TypeError(f"`prompt_column` must be a column name (str), got {prompt_column!r}.")
    if prompt_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no `{prompt_column}` column (columns: {dataset.column_names}). Pass the prompt column "
            "with `prompt_column=`."
        )
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there are no prompts to roll out.")
    return dataset


def _resolve_num_generations(config: DiffusionGenerationConfig, num_generations: int | None) -> int:
    """The samples per prompt: ``num_generations``, else the config's ``num_return_sequences``, else 1. Sets the
    config's ``num_return_sequences`` to it; refuses several samples of greedy decoding (they would be identical)."""
    configured = config.num_return_sequences
    if num_generations is None:
        num_generations = int(configured or 1)
    elif configured not in (None, 1, num_generations):
        raise ValueError(
            f"`num_generations`={num_generations} and the generation config's `num_return_sequences`={configured} "
            "disagree; give the samples per prompt once, as `num_generations`."
        )
    if num_generations > 1 and config.effective_temperature == 0:
        raise ValueError(
            f"`num_generations`={num_generations} needs sampling, but the teacher decodes greedily (temperature 0): "
            f"the {num_generations} samples of a prompt would be identical. Set a temperature > 0 in "
            "`generation_config` (the official T3D rollout uses 0.1), or num_generations=1."
        )
    config.update(num_return_sequences=num_generations)
    return num_generations


def _check_vocabulary(
    prompt_ids: Sequence[Sequence[int]], config: DiffusionGenerationConfig, model: Any, pad_token_id: int
) -> None:
    """Refuse token ids the teacher has no embedding for: in the prompts (naming the row and the id), or the mask
    and pad tokens."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if size is None:
        return
    for name, token_id in (("mask_token_id", config.mask_token_id), ("pad token id", pad_token_id)):
        if not 0 <= int(token_id) < size:
            raise ValueError(
                f"The {name} {token_id} is outside the teacher's vocabulary of {size} embeddings. Resize the "
                "embeddings (model.resize_token_embeddings(len(tokenizer))) or fix the generation config."
            )
    for row, ids in enumerate(prompt_ids):
        low, high = min(ids), max(ids)
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise ValueError(
                f"Row {row}: the prompt has the token id {bad}, outside the teacher's vocabulary of {size} embeddings "
                f"(ids 0 to {size - 1}). The tokenizer does not match the teacher: use the teacher's own tokenizer, "
                "or resize the embeddings (model.resize_token_embeddings(len(tokenizer)))."
            )


# --------------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------------


def _check_not_empty(prompt_ids: Sequence[Sequence[int]]) -> None:
    """Refuse prompts with no token (there is nothing to continue)."""
    empty = [row for row, ids in enumerate(prompt_ids) if not ids]
    if empty:
        raise ValueError(
            f"Row {empty[0]}: the prompt is empty after tokenisation ({len(empty)} such row(s)); every prompt needs "
            "at least one token."
        )


def _hash_prompt_ids(prompt_ids: Sequence[Sequence[int]]) -> str:
    """SHA-256 of the tokenised prompts (lengths and ids, in dataset order)."""
    digest = hashlib.sha256()
    for ids in prompt_ids:
        digest.update(len(ids).to_bytes(8, "little"))
        digest.update(array("q", ids).tobytes())
    return digest.hexdigest()


def _check_lengths(
    prompt_ids: Sequence[Sequence[int]], config: DiffusionGenerationConfig, model: Any, max_prompt_length: int | None
) -> None:
    """Refuse prompts over ``max_prompt_length`` or whose rollout would run past the model's position limit."""
    lengths = [len(ids) for ids in prompt_ids]
    if max_prompt_length is not None:
        over = [row for row, length in enumerate(lengths) if length > max_prompt_length]
        if over:
            row = over[0]
            raise ValueError(
                f"Row {row}: the prompt has {lengths[row]} tokens, over max_prompt_length={max_prompt_length} "
                f"({len(over)} prompt(s) are over the limit). Raise max_prompt_length or filter the long prompts "
                "out of the dataset first."
            )
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is None:
        return
    block, new = config.block_size, config.max_new_tokens
    needed = [block * math.ceil((length + new) / block) for length in lengths]
    over = [row for row, need in enumerate(needed) if need > limit]
    if over:
        row = over[0]
        raise ValueError(
            f"Row {row}: the prompt ({lengths[row]} tokens) plus max_new_tokens={new}, rounded up to whole blocks of "
            f"{block}, needs {needed[row]} positions, but the model supports {limit} "
            f"(config.max_position_embeddings); {len(over)} prompt(s) are over the limit. Lower max_new_tokens or "
            "shorten/filter the prompts."
        )


def _plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices sorted by prompt length, longest first (ties in dataset order), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda row: (-lengths[row], row))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------------


def _batch_seed(seed: int, batch_index: int) -> int:
    digest = hashlib.sha256(f"t3d_trl.rollout:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generate_batch(
    model: Any,
    config: DiffusionGenerationConfig,
    prompt_ids: Sequence[list[int]],
    rows: Sequence[int],
    pad_token_id: int,
    seed: int,
    batch_index: int,
) -> list[dict[str, Any]]:
    """Roll out one batch (left padded; ``config.num_return_sequences`` samples of each prompt, consecutive) and
    cut each sample's completion at its first EOS."""
    device = model_device(model)
    samples = int(config.num_return_sequences or 1)
    width = max(len(prompt_ids[row]) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids = prompt_ids[row]
        input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, width - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # always seeded: sampling and the "random" remasking strategy draw from it
    generator = torch.Generator(device=device).manual_seed(_batch_seed(seed, batch_index))
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        return_dict_in_generate=True,
        generator=generator,
    )
    step_map = getattr(output, "step_map", None)
    if step_map is None:
        raise TypeError(
            "model.generate(..., return_dict_in_generate=True) returned no `step_map`: the model does not decode with "
            "t3d-trl's few-step diffusion generate(). Patch it with t3d_trl.patch_model(model, tokenizer)."
        )
    if output.sequences.shape[0] != len(rows) * samples:
        raise RuntimeError(
            f"model.generate returned {output.sequences.shape[0]} sequences for {len(rows)} prompts x "
            f"{samples} samples; it does not honour num_return_sequences. Patch it with t3d_trl.patch_model."
        )
    generated = output.sequences[:, width:].cpu()
    step_map = step_map.cpu()
    nfe = output.nfe.cpu()
    results = []
    for i in range(len(rows) * samples):
        row = rows[i // samples]
        kept = step_map[i] >= 0
        length = int(kept.sum())
        if not bool(kept[:length].all()):
            raise RuntimeError(
                f"Row {row}: the engine's step_map has committed tokens after padding ({step_map[i].tolist()}); "
                "this is a bug in the decoding engine."
            )
        results.append(
            {
                "index": int(row),
                "sample_index": i % samples,
                "prompt_ids": list(prompt_ids[row]),
                "completion_ids": generated[i, :length].tolist(),
                "step_map": step_map[i, :length].tolist(),
                "nfe": int(nfe[i]),
            }
        )
    return results


def weights_sha256(model: Any) -> str:
    """SHA-256 over every parameter of ``model``: its name, dtype, shape and bytes, in name order.

    Exact (any change of any weight changes it) and not sampled, so it reads every byte: about a second per GB of
    weights on a CPU (a few seconds for a 4B model in bfloat16), plus the copy to the CPU of weights on an
    accelerator.
    """
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = parameter.detach()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
    return digest.hexdigest()


def _default_state() -> Any:
    """``accelerate.PartialState()``, on CPU processes when launched without an accelerator.

    ``PartialState()`` alone does not see a multi-process CPU launch (``torchrun`` / ``accelerate launch
    --multi_gpu`` on a machine without GPUs, or ``ACCELERATE_USE_CPU`` set): every process would then believe it is
    alone and roll out every prompt. ``Accelerator`` reads ``ACCELERATE_USE_CPU``; this does the same, and also
    selects CPU processes when several processes are launched and no accelerator is available. An already
    initialised state (e.g. of an ``Accelerator`` made earlier) is returned as it is.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not has_accelerator))


def _settings_record(
    model: Any,
    config: DiffusionGenerationConfig,
    dataset: Dataset,
    prompt_ids: Sequence[Sequence[int]],
    prompt_column: str,
    batch_size: int,
    num_generations: int,
    seed: int,
    max_prompt_length: int | None,
) -> dict[str, Any]:
    """Everything the rows depend on (the teacher's weights included), its fingerprint and the t3d-trl version: the
    rollout record."""
    settings = {
        "model_name_or_path": _model_name(model),
        "model_class": type(model).__name__,
        "model_dtype": str(getattr(model, "dtype", None)),
        "model_config_sha256": sha256_of(model.config.to_dict()) if hasattr(model, "config") else None,
        "model_weights_sha256": weights_sha256(model),
        "generation_config": _config_dict(config),
        "prompt_column": prompt_column,
        "batch_size": batch_size,
        "num_generations": num_generations,
        "seed": seed,
        "max_prompt_length": max_prompt_length,
        "num_prompts": len(prompt_ids),
        "prompts_sha256": _hash_prompt_ids(prompt_ids),
        "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
    }
    from .. import __version__

    return {**settings, "fingerprint": settings_fingerprint(settings), "t3d_trl_version": __version__}


def _pad_token_id(config: DiffusionGenerationConfig, processing_class: Any) -> int:
    """The config's pad token, else the tokenizer's, else the mask token."""
    pad_token_id = config.pad_token_id
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer_of(processing_class), "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = config.mask_token_id
    return pad_token_id


def _generate_batches(
    model: Any,
    config: DiffusionGenerationConfig,
    prompt_ids: Sequence[list[int]],
    batches: Sequence[Sequence[int]],
    mine: Sequence[int],
    pad_token_id: int,
    seed: int,
    directory: Path | None,
    description: str,
    show_progress: bool,
) -> list[dict[str, Any]]:
    """Roll out the batches ``mine`` of this process, writing each one to the store as it finishes."""
    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(len(batches[index]) for index in mine), desc=description, unit="prompt", disable=not show_progress
    )
    new_rows: list[dict[str, Any]] = []
    try:
        for batch_index in mine:
            rows = _generate_batch(model, config, prompt_ids, batches[batch_index], pad_token_id, seed, batch_index)
            if directory is not None:
                write_shard(directory, batch_index, rows)
            new_rows.extend(rows)
            bar.update(len(rows))
    finally:
        bar.close()
    return new_rows


def _rows_in_order(
    finished: Mapping[int, list[dict[str, Any]]],
    new_rows: Sequence[dict[str, Any]],
    num_prompts: int,
    num_generations: int,
) -> list[dict[str, Any]]:
    """The rows read back from the store and the new ones, in the dataset's order, each prompt's samples together
    (every sample of every prompt exactly once)."""
    by_key = {(row["index"], row["sample_index"]): row for rows in finished.values() for row in rows}
    for row in new_rows:
        key = (row["index"], row["sample_index"])
        if key in by_key:
            raise RuntimeError(f"Row {key} was generated twice; this is a bug in generate_trajectories.")
        by_key[key] = row
    keys = [(index, sample) for index in range(num_prompts) for sample in range(num_generations)]
    missing = [key for key in keys if key not in by_key]
    if missing or len(by_key) != len(keys):
        raise RuntimeError(f"Rows {missing[:10]} have no rollout; this is a bug in generate_trajectories.")
    return [by_key[key] for key in keys]


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------


def generate_trajectories(
    model: Any,
    processing_class: Any,
    dataset: Dataset | Sequence[Mapping[str, Any]],
    generation_config: DiffusionGenerationConfig | Mapping[str, Any] | None = None,
    *,
    prompt_column: str = "prompt",
    batch_size: int = 16,
    num_generations: int | None = None,
    max_prompt_length: int | None = None,
    output_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    accelerator: Any = None,
) -> Dataset:
    """Roll out a block diffusion teacher over the prompts of ``dataset`` and record its trajectories.

    Each prompt (text, or chat messages put through ``processing_class.apply_chat_template(...,
    add_generation_prompt=True)``) is decoded by ``model.generate`` with the teacher's settings, ``num_generations``
    times. The result has one row per sample: a prompt's ``num_generations`` rows are consecutive, and the prompts
    are in the dataset's order. Every input column is kept (a prompt's rows repeat its values, e.g. a ``reference``
    answer) and these columns are added:

    ===================  ==========================================================================================
    ``completion``       the decoded completion (special tokens skipped)
    ``prompt_ids``       ``list[int]``, the exact ids fed to the model (no padding)
    ``completion_ids``   ``list[int]``, the teacher's ids up to and including its first EOS (never re-tokenised)
    ``step_map``         ``list[int]``, per completion token the 0-based denoising step, counted over the whole
                         completion, that committed it (same length as ``completion_ids``)
    ``block_size``       the teacher's block size
    ``steps_per_block``  the teacher's denoising steps per block
    ``nfe``              forward passes the teacher spent on the row
    ``sample_index``     the sample's number among its prompt's samples, ``0 .. num_generations - 1``
    ===================  ==========================================================================================

    Input columns with these names are replaced (with a warning). The teacher's settings (``model_name_or_path``,
    the full ``DiffusionGenerationConfig.to_dict()``, ``batch_size``, ``num_generations``, ``seed``, a hash of the
    weights...) are stored as JSON in ``dataset.info.description`` (read them with :func:`rollout_config`) and in
    ``output_dir/rollout_config.json``.

    Under ``accelerate launch`` the batches are dealt out to the processes and the rows gathered: every process
    returns the same dataset, identical to a one-process run (put the model on ``PartialState().device`` first).

    With ``output_dir``, each finished batch is written to ``output_dir/shards/batchNNNNNN.jsonl`` as it finishes
    (atomically; ``output_dir`` must be shared by the processes). Rerunning with the same ``output_dir`` and settings
    reads the finished rows back and only generates the missing ones; other settings are refused, naming what
    differs. The full dataset is saved with ``save_to_disk(output_dir/"dataset")`` and a ``done`` marker written once
    every prompt has its rows. The resume check covers the decoding settings, ``num_generations``, the tokenised
    prompts, ``batch_size``, ``seed`` and the model's name, config, dtype and weights (a SHA-256 of every parameter,
    :func:`weights_sha256`: about a second per GB of weights). A damaged shard is named, with how to recover (delete
    it and rerun).

    Every argument is checked before anything is generated or written; a mistake raises an error naming the
    argument or the row, the value and what is accepted.

    Args:
        model: the teacher, a block diffusion model; patched with :func:`t3d_trl.patch_model` if it is not yet.
        processing_class: its tokenizer (or a processor with a ``tokenizer``), with a mask token.
        dataset: a ``datasets.Dataset`` with a prompt column, or a list of dicts (converted with
            ``Dataset.from_list``). A streamed ``IterableDataset`` is refused: the batches are planned over all the
            prompts, and resuming hashes every prompt.
        generation_config: decoding settings overriding the model's defaults (see :func:`resolve_generation_config`):
            a :class:`DiffusionGenerationConfig` or a ``dict`` of its fields (``block_size``, ``steps_per_block``,
            ``remasking``, ``temperature``, ``max_new_tokens``...).
        prompt_column: the column holding the prompts.
        batch_size: prompts per ``generate`` call (each call decodes ``batch_size * num_generations`` sequences).
        num_generations: samples per prompt (``None``: the generation config's ``num_return_sequences``, else 1).
            More than one needs sampling (``temperature > 0``); with greedy decoding it is refused, the samples would
            be identical.
        max_prompt_length: refuse prompts with more tokens than this (``None``: only the model's position limit).
        output_dir: directory for resumable shards, ``rollout_config.json``, the final ``dataset`` and ``done``.
        seed: seed of the random generators, a non-negative integer: one generator per batch, seeded from ``(seed,
            batch index)``, given to every ``generate`` call (sampling and the ``"random"`` remasking draw from it).
        progress: show a tqdm progress bar (main process only).
        accelerator: an ``accelerate.Accelerator`` or ``PartialState`` (default: ``PartialState()``).

    Returns:
        The trajectory dataset.

    Raises:
        TypeError: a ``dataset`` that is neither a ``Dataset`` nor a list of dicts, or an ``output_dir`` that is not
            a path.
        ValueError: no prompt column, an empty dataset, a prompt that is empty, over ``max_prompt_length``, over the
            model's position limit or with token ids outside the model's vocabulary (naming the row), invalid
            ``batch_size``/``num_generations``/``seed``/``max_prompt_length``, several samples of greedy decoding, an
            ``output_dir`` that is a file, made with other settings or with a damaged shard.
    """
    from accelerate.utils import gather_object

    dataset = _check_dataset(dataset, prompt_column)
    checked = check_rollout_settings(
        batch_size=batch_size,
        num_generations=num_generations,
        seed=seed,
        max_prompt_length=max_prompt_length,
        output_dir=output_dir,
    )
    batch_size, seed, max_prompt_length, directory = (
        checked["batch_size"],
        checked["seed"],
        checked["max_prompt_length"],
        checked["output_dir"],
    )
    state = accelerator if accelerator is not None else _default_state()
    num_processes, process_index = int(state.num_processes), int(state.process_index)
    distributed = num_processes > 1

    if not isinstance(model, FewStepDiffusionGenerationMixin):
        model = patch_model(model, processing_class)
    if getattr(model, "training", False):
        logger.warning("The teacher is in training mode (dropout is active); call model.eval() before rolling out.")
    config = resolve_generation_config(model, generation_config)
    num_generations = _resolve_num_generations(config, checked["num_generations"])
    pad_token_id = _pad_token_id(config, processing_class)

    prompt_ids = tokenize_prompts(processing_class, list(dataset[prompt_column]), column=prompt_column)
    _check_not_empty(prompt_ids)
    _check_vocabulary(prompt_ids, config, model, pad_token_id)
    _check_lengths(prompt_ids, config, model, max_prompt_length)
    batches = _plan_batches([len(ids) for ids in prompt_ids], batch_size)
    record = _settings_record(
        model, config, dataset, prompt_ids, prompt_column, batch_size, num_generations, seed, max_prompt_length
    )

    finished: dict[int, list[dict[str, Any]]] = {}
    already_done = False
    if directory is not None:
        finished, already_done = open_store(directory, record, batches, prompt_ids, state, num_generations)

    pending = [index for index in range(len(batches)) if index not in finished]
    mine = pending[process_index::num_processes]
    description = "Teacher rollouts" if not distributed else f"Teacher rollouts (process {process_index})"
    new_rows = _generate_batches(
        model,
        config,
        prompt_ids,
        batches,
        mine,
        pad_token_id,
        seed,
        directory,
        description,
        show_progress=progress and state.is_main_process,
    )
    if distributed:
        new_rows = gather_object(new_rows)
    rows = _rows_in_order(finished, new_rows, len(prompt_ids), num_generations)

    result = _assemble(dataset, processing_class, rows, config, record, num_generations)
    if directory is not None:
        close_store(directory, result, record["fingerprint"], already_done, state)
    return result


def _assemble(
    dataset: Dataset,
    processing_class: Any,
    rows: Sequence[dict[str, Any]],
    config: DiffusionGenerationConfig,
    record: dict[str, Any],
    num_generations: int = 1,
) -> Dataset:
    """The input dataset (each row repeated ``num_generations`` times) with the rollout columns added and the
    rollout record in ``info.description``."""
    tokenizer = tokenizer_of(processing_class)
    completion_ids = [row["completion_ids"] for row in rows]
    columns: dict[str, list[Any]] = {
        "completion": tokenizer.batch_decode(completion_ids, skip_special_tokens=True),
        "prompt_ids": [row["prompt_ids"] for row in rows],
        "completion_ids": completion_ids,
        "step_map": [row["step_map"] for row in rows],
        "block_size": [int(config.block_size)] * len(rows),
        "steps_per_block": [int(config.steps_per_block)] * len(rows),
        "nfe": [row["nfe"] for row in rows],
        "sample_index": [row["sample_index"] for row in rows],
    }
    replaced = [name for name in ROLLOUT_COLUMNS if name in dataset.column_names]
    if replaced:
        logger.warning("generate_trajectories replaces the input column(s) %s with the rollout's.", replaced)
        dataset = dataset.remove_columns(replaced)
    if num_generations > 1:  # each prompt's row once per sample, consecutively
        dataset = dataset.select(np.repeat(np.arange(len(dataset)), num_generations))
    # one concatenation instead of a fingerprinted copy of the table per added column
    features = Features({name: _ROLLOUT_FEATURES[name] for name in ROLLOUT_COLUMNS})
    added = Dataset.from_dict({name: columns[name] for name in ROLLOUT_COLUMNS}, features=features)
    dataset = concatenate_datasets(
        [dataset.flatten_indices() if dataset._indices is not None else dataset, added], axis=1
    )
    dataset.info.description = json.dumps({ROLLOUT_METADATA_KEY: record}, sort_keys=True)
    return dataset
