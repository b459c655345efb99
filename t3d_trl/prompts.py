"""Prompts as a model sees them: text as given, chat messages through the chat template.

One renderer for the teacher rollouts (:mod:`t3d_trl.rollout`), the trajectory datasets (:mod:`t3d_trl.data`) and
the evaluation runner (:mod:`t3d_trl.evaluation.runner`). A prompt is either a string or a non-empty list of chat
messages (``{"role": ..., "content": ...}`` mappings); messages are rendered with
``processing_class.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)``.

Special tokens: the chat template writes its own, so rendered chat prompts are tokenised without adding any; plain
text prompts are tokenised with the tokenizer's usual ones (:func:`tokenize_prompts`). A caller that tokenises the
rendered texts itself (the evaluation runner pads batches) decides from the ``chat`` flags of
:func:`render_prompts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["is_chat", "render_prompts", "tokenize_prompts", "tokenizer_of"]


def tokenizer_of(processing_class: Any) -> Any:
    """The tokenizer of ``processing_class``: its ``tokenizer`` for a processor, itself for a tokenizer."""
    tokenizer = getattr(processing_class, "tokenizer", None)
    return processing_class if tokenizer is None else tokenizer


def is_chat(prompt: Any) -> bool:
    """Whether ``prompt`` is a list of chat messages (a non-empty list or tuple of mappings)."""
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(m, Mapping) for m in prompt)


def _check_chat_template(processing_class: Any) -> None:
    if (
        getattr(processing_class, "chat_template", None) is None
        and getattr(tokenizer_of(processing_class), "chat_template", None) is None
    ):
        raise ValueError(
            "The dataset holds chat-message prompts but the processing class has no chat template. Set "
            "`processing_class.chat_template`, or give the prompts as plain text (for the evaluation sets: "
            "load_eval_dataset(..., as_chat=False))."
        )


def render_prompts(
    processing_class: Any, prompts: Sequence[Any], *, column: str = "prompt", rows: Sequence[int] | None = None
) -> tuple[list[str], list[bool]]:
    """Render prompts to the text the model reads.

    Args:
        processing_class: the tokenizer (or processor) whose chat template renders chat messages.
        prompts: strings and/or lists of chat messages.
        column: the name of the prompts' column, for error messages.
        rows: the dataset row of each prompt, for error messages (default: their positions).

    Returns:
        ``(texts, chat)``: the rendered texts, and for each whether it was rendered with the chat template.

    Raises:
        ValueError: for a prompt that is neither text nor chat messages, or chat messages without a chat template.
    """
    texts: list[str] = []
    chat: list[bool] = []
    template_checked = False
    for position, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            texts.append(prompt)
            chat.append(False)
        elif is_chat(prompt):
            if not template_checked:
                _check_chat_template(processing_class)
                template_checked = True
            texts.append(
                processing_class.apply_chat_template(
                    [dict(message) for message in prompt], add_generation_prompt=True, tokenize=False
                )
            )
            chat.append(True)
        else:
            row = rows[position] if rows is not None else position
            raise ValueError(
                f"Row {row}: `{column}` must be text or a list of chat messages "
                f"({{'role': ..., 'content': ...}}), got {type(prompt).__name__}."
            )
    return texts, chat


def tokenize_prompts(
    processing_class: Any, prompts: Sequence[Any], *, column: str = "prompt", rows: Sequence[int] | None = None
) -> list[list[int]]:
    """Prompt ids as the model sees them (no padding).

    Chat messages are rendered with :func:`render_prompts` and tokenised without special tokens (the template
    already wrote them); text prompts are tokenised with the tokenizer's usual special tokens. Each kind is
    tokenised in one batched call.

    Args:
        processing_class: the tokenizer (or a processor with a ``tokenizer``).
        prompts: strings and/or lists of chat messages.
        column: the name of the prompts' column, for error messages.
        rows: the dataset row of each prompt, for error messages (default: their positions).

    Returns:
        One list of token ids per prompt.
    """
    texts, chat = render_prompts(processing_class, prompts, column=column, rows=rows)
    tokenizer = tokenizer_of(processing_class)
    prompt_ids: list[list[int]] = [[] for _ in texts]
    for templated in (True, False):
        positions = [position for position, flag in enumerate(chat) if flag is templated]
        if positions:
            encoded = tokenizer([texts[p] for p in positions], add_special_tokens=not templated)["input_ids"]
            for position, ids in zip(positions, encoded):
                prompt_ids[position] = [int(i) for i in ids]
    return prompt_ids
