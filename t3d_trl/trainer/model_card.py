"""The model card of a distilled student: how to decode it in few steps, with and without t3d-trl installed.

TRL's card template shows a ``text-generation`` pipeline, which decodes a diffusion LM autoregressively, and calls a
model trained from a local directory "a fine-tuned version of None". This card instead:

* names the base model (the teacher's Hub id, or the directory it was loaded from), the teacher's decoding settings
  and the trajectory dataset, from the rollout record that :func:`t3d_trl.generate_trajectories` stores;
* shows few-step decoding with t3d-trl imported (its ``AutoModel*`` load hook gives the model its few-step
  ``generate``) and without it (``trust_remote_code=True`` runs the checkpoint's ``custom_generate/generate.py``);
* lists the decoding defaults saved in ``generation_config.json`` and the training objective.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelCardInfo", "model_card_text"]

_TEACHER_KEYS = ("block_size", "steps_per_block", "remasking", "temperature", "top_k", "top_p", "max_new_tokens")


@dataclass
class ModelCardInfo:
    """What the card says about a distilled student.

    Attributes:
        model_name: the card's title (the repository or folder name).
        repo_id: the Hub repository the snippets load from (``model_name`` when unknown).
        base_model: the teacher's Hub id or local path (``None`` when unknown).
        auto_class: the ``transformers`` auto class that loads the model (its family's).
        generation_config: the saved decoding defaults (``DiffusionGenerationConfig.to_dict()``).
        dataset_name: the trajectory dataset's Hub id or name.
        rollout: the rollout record of the trajectories (teacher, its decoding settings, rows).
        training: the training settings worth stating (objectives, weights, β, α, refresh interval...).
        tags: the card's tags.
        citation: the BibTeX of the paper.
        custom_generate: whether the checkpoint carries ``custom_generate/generate.py``.
        chat_template: whether the tokenizer has a chat template (the snippets use it; without one they tokenise
            plain text, since ``apply_chat_template`` would fail).
    """

    model_name: str
    repo_id: str | None = None
    base_model: str | None = None
    auto_class: str = "AutoModelForCausalLM"
    generation_config: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None
    rollout: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    citation: str = ""
    custom_generate: bool = True
    chat_template: bool = True


def _yaml_header(info: ModelCardInfo) -> str:
    lines = ["---", "library_name: transformers"]
    if info.base_model and not os.path.isabs(info.base_model) and not info.base_model.startswith("."):
        lines.append(f"base_model: {info.base_model}")
    if info.dataset_name:
        lines += ["datasets:", f"- {info.dataset_name}"]
    if info.tags:
        lines += ["tags:"] + [f"- {tag}" for tag in info.tags]
    lines.append("---")
    return "\n".join(lines)


def _snippets(info: ModelCardInfo) -> list[str]:
    repo = info.repo_id or info.model_name
    block = info.generation_config.get("block_size", "B")
    if info.chat_template:
        prompt = (
            'messages = [{"role": "user", "content": "What is 12 * 7?"}]\n'
            'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
            "return_dict=True)\n"
        )
    else:  # the tokenizer has no chat template: apply_chat_template would raise
        prompt = 'inputs = tokenizer("What is 12 * 7?", return_tensors="pt")\n'
    load = f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n' + prompt
    decode = (
        f"out = model.generate(**inputs, steps_per_block=1, max_new_tokens=256)  # {block} tokens per forward\n"
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))\n'
    )
    lines = [
        "### With t3d-trl",
        "",
        "Importing t3d-trl gives the model its few-step `generate()` when it is loaded through the `AutoModel*` "
        "classes (`pip install t3d-trl`):",
        "",
        "```python",
        "import t3d_trl  # noqa: F401  (the AutoModel* load hook)",
        f"from transformers import {info.auto_class}, AutoTokenizer",
        "",
        load + f'model = {info.auto_class}.from_pretrained("{repo}")\n' + decode + "```",
        "",
        "### Without t3d-trl",
        "",
    ]
    if info.custom_generate and info.auto_class == "AutoModelForCausalLM":
        lines += [
            "The checkpoint carries its decoding code in `custom_generate/generate.py`; `trust_remote_code=True` lets "
            "transformers run it in place of its autoregressive `generate()`:",
            "",
            "```python",
            f"from transformers import {info.auto_class}, AutoTokenizer",
            "",
            load + f'model = {info.auto_class}.from_pretrained("{repo}", trust_remote_code=True)\n' + decode + "```",
            "",
            "Without t3d-trl and without `trust_remote_code=True`, `generate()` is transformers' autoregressive "
            "decoding, which is not how this model decodes. The decoding settings are saved under `block_diffusion` "
            "in `generation_config.json`, with a note on how to decode, so transformers alone does not take "
            "`steps_per_block`: it refuses it (`model_kwargs are not used by the model`) instead of decoding "
            "autoregressively.",
        ]
    else:
        lines += ["transformers cannot run this model's decoding on its own: install t3d-trl."]
    return lines


def model_card_text(info: ModelCardInfo) -> str:
    """The card (YAML metadata and markdown) of a distilled student."""
    config = info.generation_config
    lines = [_yaml_header(info), "", f"# {info.model_name}", ""]
    method = (
        "T3D (trajectory self-distillation with direct discriminative optimization, "
        "[arXiv 2602.12262](https://arxiv.org/abs/2602.12262)) by [t3d-trl](https://github.com/t3d-trl/t3d-trl)"
    )
    if info.base_model:
        intro = f"`{info.model_name}` is `{info.base_model}` distilled into a few-step decoder with {method}."
    else:
        intro = (
            f"`{info.model_name}` was distilled into a few-step decoder with {method}; the name of the model it was "
            "distilled from was not recorded."
        )
    lines += [
        f"{intro} It is a block diffusion language model: it decodes a block of {config.get('block_size', '?')} "
        "tokens in `steps_per_block` denoising steps, committing several tokens per step.",
        "",
        "## Few-step decoding",
        "",
    ]
    lines += _snippets(info)
    lines += ["", "## Decoding defaults (`generation_config.json`)", "", "| setting | value |", "|---|---|"]
    for key in (
        "block_size",
        "steps_per_block",
        "remasking",
        "mask_token_id",
        "eos_token_id",
        "temperature",
        "max_new_tokens",
    ):
        if config.get(key) is not None:
            lines.append(f"| `{key}` | `{config[key]}` |")
    lines += ["", "## Training", ""]
    rollout = info.rollout or {}
    teacher_config = rollout.get("generation_config") or {}
    teacher = rollout.get("model_name_or_path") or info.base_model or "not recorded"
    lines.append(f"- Teacher (initialises the student): `{teacher}`")
    if teacher_config:
        settings = ", ".join(
            f"{key}={teacher_config[key]}" for key in _TEACHER_KEYS if teacher_config.get(key) is not None
        )
        lines.append(f"- Teacher's decoding of the trajectories: {settings}")
    else:
        lines.append("- Teacher's decoding of the trajectories: not recorded with the dataset")
    dataset = info.dataset_name or "a local trajectory dataset"
    rows = rollout.get("num_prompts")
    lines.append(f"- Trajectories: `{dataset}`" + (f" ({rows} prompts)" if rows else ""))
    for key, value in info.training.items():
        lines.append(f"- `{key}`: `{json.dumps(value) if isinstance(value, (list, dict)) else value}`")
    if info.citation:
        lines += ["", "## Citation", "", "```bibtex", info.citation.strip(), "```"]
    return "\n".join(lines) + "\n"
