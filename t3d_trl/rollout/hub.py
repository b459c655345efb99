"""Trajectory datasets on the Hub: the dataset card and the push (see ``docs/rollouts.md``, "Pushing to the Hub")."""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset

from .loop import ROLLOUT_COLUMNS, rollout_config
from .store import CONFIG_FILE

__all__ = ["push_trajectories_to_hub", "trajectory_dataset_card", "trajectory_dataset_card_text"]
_CARD_TAGS = ["t3d-trl", "trajectories", "diffusion-language-model", "distillation"]


def trajectory_dataset_card_text(dataset: Dataset, repo_id: str | None = None) -> str:
    """The markdown body of a trajectory dataset's card: what the rows are, every column, the teacher's settings.

    Args:
        dataset: a dataset returned by :func:`generate_trajectories`.
        repo_id: the Hub repository (used in the loading snippet).

    Returns:
        Markdown text (without the YAML header).
    """
    record = rollout_config(dataset) or {}
    config = record.get("generation_config", {})
    prompt_column = record.get("prompt_column", "prompt")
    teacher = record.get("model_name_or_path") or "an unrecorded model"
    name = repo_id or "path/to/trajectories"
    lines = [f"# Teacher trajectories of {teacher}", ""]
    lines += [
        f"{len(dataset)} teacher rollouts recorded with [t3d-trl](https://github.com/t3d-trl/t3d-trl)'s "
        "`generate_trajectories`, for trajectory self-distillation (T3D, "
        "[arXiv 2602.12262](https://arxiv.org/abs/2602.12262)). Each row holds the teacher's own completion token "
        "ids and, for every completion token, the denoising step at which the teacher committed it.",
        "",
    ]
    if {"completion_ids", "nfe"} <= set(dataset.column_names) and len(dataset):
        lengths = [len(ids) for ids in dataset["completion_ids"]]
        forwards = list(dataset["nfe"])
        tokens, calls = sum(lengths), sum(forwards)
        lines += [
            "## Statistics",
            "",
            f"- rows: {len(dataset)}",
            f"- completion tokens: {tokens} (mean {tokens / len(dataset):.1f} per row)",
            f"- teacher forwards (NFE): {calls} (mean {calls / len(dataset):.1f} per row)",
            f"- tokens per forward: {tokens / calls:.2f}" if calls else "- tokens per forward: n/a",
            "",
        ]
    lines += [
        "## Columns",
        "",
        "| column | content |",
        "|---|---|",
        f"| `{prompt_column}` | the prompt as given (text or chat messages) |",
        "| `completion` | the decoded completion (special tokens skipped) |",
        "| `prompt_ids` | the exact token ids fed to the teacher (chat template applied, no padding) |",
        "| `completion_ids` | the teacher's generated ids up to and including its first EOS (never re-tokenised) |",
        "| `step_map` | per completion token, the 0-based denoising step (counted over the whole completion) that "
        "committed it; same length as `completion_ids` |",
        "| `block_size` | the teacher's block size |",
        "| `steps_per_block` | the teacher's denoising steps per block |",
        "| `nfe` | forward passes the teacher spent on the row |",
        "| `sample_index` | the sample's number among its prompt's samples (0 to `num_generations` - 1; a prompt's "
        "samples are consecutive rows) |",
    ]
    others = [c for c in dataset.column_names if c not in ROLLOUT_COLUMNS and c != prompt_column]
    if others:
        lines.append(f"| {', '.join(f'`{c}`' for c in others)} | columns of the source dataset, kept as they were |")
    lines += ["", "## Teacher settings", ""]
    if config:
        keys = (
            "block_size",
            "steps_per_block",
            "remasking",
            "temperature",
            "top_k",
            "top_p",
            "max_new_tokens",
            "confidence_threshold",
            "entropy_bound",
        )
        lines += [f"- teacher: `{teacher}`"]
        lines += [f"- `{key}`: `{config.get(key)}`" for key in keys if key in config]
        lines += [
            f"- `batch_size`: `{record.get('batch_size')}`, `num_generations`: `{record.get('num_generations', 1)}`, "
            f"`seed`: `{record.get('seed')}`",
            "",
        ]
        lines += ["Full decoding configuration (`DiffusionGenerationConfig.to_dict()`):", "", "```json"]
        lines += [json.dumps(config, indent=2, sort_keys=True), "```", ""]
    else:
        lines += ["Not recorded.", ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "from t3d_trl.data import prepare_trajectory_dataset",
        "",
        f'trajectories = load_dataset("{name}", split="train")',
        "trajectories, stats = prepare_trajectory_dataset(trajectories)",
        "```",
        "",
    ]
    return "\n".join(lines)


def trajectory_dataset_card(dataset: Dataset, repo_id: str | None = None, base_card: Any = None) -> Any:
    """A ``huggingface_hub.DatasetCard`` for a trajectory dataset.

    Args:
        dataset: a dataset returned by :func:`generate_trajectories`.
        repo_id: the Hub repository.
        base_card: an existing card (e.g. the one ``Dataset.push_to_hub`` wrote) whose YAML metadata is kept.

    Returns:
        The card, with the t3d-trl tags added and :func:`trajectory_dataset_card_text` as its body.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    data = base_card.data if base_card is not None else DatasetCardData()
    tags = list(getattr(data, "tags", None) or [])
    data.tags = tags + [tag for tag in _CARD_TAGS if tag not in tags]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{trajectory_dataset_card_text(dataset, repo_id)}")


def push_trajectories_to_hub(dataset: Dataset, repo_id: str, **kwargs: Any) -> Any:
    """Push a trajectory dataset to the Hub with a dataset card describing its columns and the teacher's settings.

    Runs ``dataset.push_to_hub(repo_id, **kwargs)``, uploads the rollout record (:func:`rollout_config`) as
    ``rollout_config.json`` (``datasets`` does not keep ``info.description`` on the Hub), then replaces the body of
    the ``README.md`` ``push_to_hub`` wrote by :func:`trajectory_dataset_card_text` (keeping its YAML metadata, plus
    t3d-trl tags).

    Args:
        dataset: a dataset returned by :func:`generate_trajectories`.
        repo_id: the dataset repository, ``"user/name"``.
        kwargs: arguments of :meth:`datasets.Dataset.push_to_hub` (``private``, ``token``, ``revision``, ``split``...).

    Returns:
        The ``CommitInfo`` of the card's commit.
    """
    from huggingface_hub import DatasetCard, HfApi

    dataset.push_to_hub(repo_id, **kwargs)
    token, revision = kwargs.get("token"), kwargs.get("revision")
    record = rollout_config(dataset)
    if record is not None:
        HfApi(token=token).upload_file(
            path_or_fileobj=(json.dumps(record, indent=2, sort_keys=True) + "\n").encode(),
            path_in_repo=CONFIG_FILE,
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message="Teacher rollout settings",
        )
    try:
        base = DatasetCard.load(repo_id, repo_type="dataset", token=token)
    except Exception:  # no README on the Hub: start from an empty card
        base = None
    card = trajectory_dataset_card(dataset, repo_id, base_card=base)
    return card.push_to_hub(
        repo_id, token=token, repo_type="dataset", revision=revision, commit_message="Trajectory dataset card"
    )
