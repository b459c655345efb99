"""Tiny tokenizers, models and settings for tests, examples, benchmarks and the demo (nothing is downloaded).

Everything is built from a vocabulary or a config in a fraction of a second:

* :func:`tiny_tokenizer`: a character-level tokenizer with pad, EOS, mask (and BOS) tokens and a chat template;
* :func:`tiny_qwen3_config` / :func:`tiny_qwen3`: a 2-layer Qwen3 with random weights (the ``sdpa`` kernel, which
  takes the 4D block-causal masks);
* :func:`tiny_t3d_config`: a :class:`~t3d_trl.T3DConfig` for short CPU runs (no saving, no reporting);
* :func:`rollout_rows`: teacher rollouts of a few prompts as trajectory rows;
* :func:`tiny_prompts` / :func:`tiny_teacher`: the demo tasks' prompts and a tiny teacher trained briefly on them,
  for offline runs of the example scripts;
* :func:`free_port`: a free TCP port for multi-process runs.

``datasets`` and the trainer are imported only by the functions that need them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

logger = logging.getLogger(__name__)

__all__ = [
    "synthetic_trajectories",
    "CHARACTERS",
    "CHAT_TEMPLATE",
    "PRINTABLE_ASCII",
    "SPECIAL_TOKENS",
    "TINY_TASKS",
    "free_port",
    "rollout_rows",
    "task_model",
    "task_tokenizer",
    "tiny_prompts",
    "tiny_qwen3",
    "tiny_qwen3_config",
    "tiny_t3d_config",
    "tiny_teacher",
    "tiny_tokenizer",
]

#: the special tokens of :func:`tiny_tokenizer`, first in the vocabulary (ids 0, 1, 2, 3)
SPECIAL_TOKENS = ("<pad>", "<eos>", "<mask>", "<bos>")
#: the default characters of :func:`tiny_tokenizer` (vocabulary of 48 with :data:`SPECIAL_TOKENS`)
CHARACTERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789 +-=?.,:")
#: the 95 printable ASCII characters
PRINTABLE_ASCII = tuple(chr(code) for code in range(32, 127))
#: a minimal chat template: ``role: content`` lines, then ``assistant: `` as the generation prompt
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
#: the demo tasks of :func:`tiny_prompts` and :func:`tiny_teacher`
TINY_TASKS = ("words", "sums", "perm")

_SPECIAL_ROLES = {"<pad>": "pad_token", "<eos>": "eos_token", "<mask>": "mask_token", "<bos>": "bos_token"}


def tiny_tokenizer(
    characters: Sequence[str] = CHARACTERS,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    chat_template: str | None = CHAT_TEMPLATE,
    padding_side: str | None = None,
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: ``special_tokens`` then ``characters``, one id each, in that order.

    Text is split into single characters (unknown ones become ``<pad>``) and decoded without spaces.

    Args:
        characters: the vocabulary after the special tokens.
        special_tokens: some of ``<pad>``, ``<eos>``, ``<mask>``, ``<bos>`` (``<pad>`` is required: it is also the
            unknown token), set as the tokenizer's pad, EOS, mask and BOS tokens.
        chat_template: the chat template (``None``: none).
        padding_side: ``"left"`` or ``"right"`` (``None``: the tokenizer's default, right).

    Returns:
        The tokenizer.
    """
    unknown = [token for token in special_tokens if token not in _SPECIAL_ROLES]
    if unknown or "<pad>" not in special_tokens:
        raise ValueError(
            f"special_tokens must include <pad> and be among {list(_SPECIAL_ROLES)}, got {list(special_tokens)}."
        )
    vocab = {token: index for index, token in enumerate(list(special_tokens) + list(characters))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join without spaces
    roles = {role: token for token, role in _SPECIAL_ROLES.items() if token in special_tokens}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return tokenizer


def tiny_qwen3_config(vocab_size: int = 48, **overrides: Any) -> Qwen3Config:
    """A 2-layer Qwen3 config (hidden size 32, 4 heads of 8, 2 key-value heads, 256 positions, ``sdpa``, untied
    embeddings), with ``overrides``."""
    values: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        attn_implementation="sdpa",
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return Qwen3Config(**values)


def tiny_qwen3(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: Any) -> Qwen3ForCausalLM:
    """A :func:`tiny_qwen3_config` model (``overrides`` go to the config) with weights drawn after
    ``torch.manual_seed(seed)``, in ``dtype`` (float64 by default, for exact comparisons) and in eval mode."""
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(tiny_qwen3_config(**overrides)).to(dtype).eval()


def tiny_t3d_config(output_dir: str, **overrides: Any) -> Any:
    """A :class:`~t3d_trl.T3DConfig` for short CPU runs of a tiny model (6 steps of 4 rows at a constant-after-zero
    warm-up linear schedule, no weight decay, no saving, no reporting, no random tokens), with ``overrides``.

    The paper's optimisation defaults of :class:`~t3d_trl.T3DConfig` (20 warm-up steps, cosine to 0.1×, weight decay
    0.01) are replaced by ``TrainingArguments``' own, so that a few steps move the weights from the first one."""
    from .trainer import T3DConfig

    values: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=6,
        logging_steps=1,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        random_token_ratio=0.0,
    )
    values.update(overrides)
    return T3DConfig(**values)


def rollout_rows(
    model: Any, tokenizer: Any, prompts: Sequence[str], block_size: int = 4, max_new_tokens: int = 12
) -> list[dict[str, Any]]:
    """Teacher rollouts of ``prompts`` at one token per step, one at a time, as trajectory rows (``prompt``,
    ``completion``, ``prompt_ids``, ``completion_ids``, ``step_map``, ``block_size``, ``steps_per_block``).

    ``model`` is patched with :func:`t3d_trl.patch_model` (``block_size``)."""
    from .generation import patch_model

    patch_model(model, tokenizer, block_size=block_size)
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        out = model.generate(
            torch.tensor([ids]), steps_per_block=block_size, max_new_tokens=max_new_tokens, return_dict_in_generate=True
        )
        keep = out.step_map[0] >= 0
        completion = out.sequences[0, len(ids) :][keep].tolist()
        rows.append(
            {
                "prompt": prompt,
                "completion": tokenizer.decode(completion, skip_special_tokens=True),
                "prompt_ids": ids,
                "completion_ids": completion,
                "step_map": out.step_map[0][keep].tolist(),
                "block_size": block_size,
                "steps_per_block": block_size,
            }
        )
    return rows


def synthetic_trajectories(
    count: int,
    prompt_lengths: tuple[int, int],
    completion_lengths: tuple[int, int],
    vocab_size: int,
    block_size: int = 4,
    first_id: int = len(SPECIAL_TOKENS),
    seed: int = 0,
) -> list[dict]:
    """Trajectory rows of random tokens with a valid teacher schedule, for layouts and benchmarks.

    Prompt and completion lengths are drawn uniformly from the inclusive ranges; token ids from ``[first_id,
    vocab_size)``. The teacher decodes one token per step on the absolute grid, in a random order inside each block,
    block after block (a block of ``n`` tokens takes the next ``n`` steps).
    """
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = [rng.randrange(first_id, vocab_size) for _ in range(rng.randint(*prompt_lengths))]
        completion = [rng.randrange(first_id, vocab_size) for _ in range(rng.randint(*completion_lengths))]
        step_map, position = [], len(prompt)
        while len(step_map) < len(completion):
            size = min(block_size - position % block_size, len(completion) - len(step_map))
            order = list(range(size))
            rng.shuffle(order)
            first = len(step_map)  # one token per step: the steps so far
            step_map += [first + step for step in order]
            position += size
        rows.append(
            {
                "prompt_ids": prompt,
                "completion_ids": completion,
                "step_map": step_map,
                "block_size": block_size,
                "steps_per_block": block_size,
            }
        )
    return rows


def free_port() -> int:
    """A free TCP port on localhost, so concurrent multi-process runs do not share accelerate's default port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: the special tokens of :func:`task_tokenizer` (the demo tasks need no BOS)
TASK_SPECIAL_TOKENS = ("<pad>", "<eos>", "<mask>")


def task_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer over the demo tasks' alphabet, with pad, EOS and mask tokens, padding on the left
    (the demo's and :func:`tiny_teacher`'s)."""
    from .demo.tasks import task_alphabet

    return tiny_tokenizer(
        characters=task_alphabet(), special_tokens=TASK_SPECIAL_TOKENS, chat_template=None, padding_side="left"
    )


def task_model(tokenizer: Any, hidden_size: int = 96, num_layers: int = 3, seed: int = 0) -> Qwen3ForCausalLM:
    """A float32 Qwen3-architecture model from a config, sized for the demo tasks (4 heads, 64 positions, tied
    embeddings), in training mode: the demo's teacher before it learns the tasks."""
    return tiny_qwen3(
        seed,
        dtype=torch.float32,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=hidden_size // 4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).train()


def tiny_prompts(num_prompts: int = 96, seed: int = 0, tasks: tuple[str, ...] = TINY_TASKS) -> Any:
    """``num_prompts`` demo prompts (tasks in turn; the small tasks' few distinct prompts are repeated), with their
    ``reference`` and ``scorer`` (registered by importing :mod:`t3d_trl.demo.tasks`), so they also serve as an
    evaluation set.

    Returns:
        A ``datasets.Dataset`` with ``prompt``, ``task``, ``reference`` and ``scorer`` columns.
    """
    from datasets import Dataset

    from .demo.tasks import evaluation_prompts

    per_task = {name: evaluation_prompts(name, num_prompts, seed + 1000) for name in tasks}
    rows = []
    for index in range(num_prompts):
        name = tasks[index % len(tasks)]
        distinct = per_task[name]
        row = distinct[(index // len(tasks)) % len(distinct)]
        rows.append({"prompt": row["prompt"], "task": name, "reference": row["reference"], "scorer": row["scorer"]})
    return Dataset.from_list(rows)


def tiny_teacher(
    output_dir: str,
    steps: int = 150,
    seed: int = 0,
    use_cpu: bool = False,
    hidden_size: int = 64,
    num_layers: int = 2,
    batch_size: int = 32,
    tasks: tuple[str, ...] = TINY_TASKS,
) -> tuple[Any, Any]:
    """The demo's tokenizer and a tiny Qwen3 teacher trained for ``steps`` optimizer steps with the ``sft``
    objective on the demo tasks' ground-truth answers.

    Works under ``accelerate launch`` (the steps are data parallel). ``steps=0`` returns the untrained model.

    Returns:
        ``(teacher, tokenizer)``; the teacher is in eval mode on the training device.
    """
    from .demo.tasks import answer_rows
    from .trainer import T3DTrainer

    tokenizer = task_tokenizer()
    teacher = task_model(tokenizer, hidden_size, num_layers, seed)
    if steps > 0:
        args = tiny_t3d_config(
            output_dir,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=2e-3,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 20),
            weight_decay=0.01,
            loss_type=["sft"],
            sync_ref_model=False,
            num_eos_tokens=1,
            max_prompt_length=None,
            max_completion_length=None,
            logging_steps=max(1, steps // 5),
            use_cpu=use_cpu,
            seed=seed,
        )
        dataset = answer_rows(tasks, steps * batch_size, seed)
        trainer = T3DTrainer(teacher, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        trainer.release_wrappers()  # the DDP wrapper must not outlive the process group (see its docstring)
        logger.info(
            "Tiny teacher trained for %d steps (last loss %s)",
            steps,
            next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
        )
    teacher.eval()
    return teacher, tokenizer
