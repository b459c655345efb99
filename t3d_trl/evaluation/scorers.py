"""Answer scorers for the few-step evaluation.

Three families of scorers are provided, each a callable ``(prediction, reference) -> bool``:

* ``"exact_match"``: string equality after stripping (optionally normalised),
* ``"math"``: mathematical equivalence through `math_verify <https://github.com/huggingface/Math-Verify>`_,
  with GSM8K ``#### 42`` references and "last number in the text" predictions handled,
* ``"code"``: functional correctness; the program extracted from the completion is executed against the
  reference test code in a separate Python process. Running model-written code is dangerous, so like
  ``evaluate``'s ``code_eval`` it is opt-in (``HF_ALLOW_CODE_EVAL=1`` or ``allow_code_execution=True``).

Use :func:`get_scorer` to look a scorer up by name.
"""

from __future__ import annotations

import inspect
import math
import re
import string
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from .execution import (
    CODE_EXECUTION_ENV_VAR,
    CodeExecutionResult,
    _check_code_execution_allowed,
    _code_options,
    check_code_options,
    code_passes,
    execute_code,
)

__all__ = [
    "CODE_EXECUTION_ENV_VAR",
    "CodeExecutionResult",
    "Scorer",
    "SCORER_NAMES",
    "available_scorers",
    "register_scorer",
    "code_passes",
    "code_scorer",
    "exact_match",
    "execute_code",
    "extract_boxed",
    "extract_code",
    "extract_math_answer",
    "get_scorer",
    "math_equal",
]

Scorer = Callable[[str, str], bool]
"""A scorer maps ``(prediction, reference)`` to whether the prediction is correct."""


# --------------------------------------------------------------------------------------------------------------------
# Exact match
# --------------------------------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def _normalize_text(text: str) -> str:
    text = text.lower().translate(_PUNCT_TABLE)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str, normalize: bool = False) -> bool:
    """Whether a prediction equals the reference.

    Args:
        prediction: The model's answer.
        reference: The gold answer.
        normalize: If True, compare SQuAD-style normalised strings (lower case, punctuation and the articles
            "a", "an", "the" removed, whitespace collapsed) instead of only stripping surrounding whitespace.

    Returns:
        True when both strings match.
    """
    if normalize:
        return _normalize_text(prediction) == _normalize_text(reference)
    return prediction.strip() == reference.strip()


# --------------------------------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------------------------------

_BOXED_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in a text, nested braces included.

    ``\\boxed 5`` (no braces, as sometimes written for single tokens) is also understood.

    Args:
        text: Any text, typically a model completion.

    Returns:
        The content between the braces of the last box, stripped, or None if there is no complete box.
    """
    if not text:
        return None
    start = max(text.rfind(cmd) for cmd in _BOXED_COMMANDS)
    while start >= 0:
        cmd = next(c for c in _BOXED_COMMANDS if text.startswith(c, start))
        after_cmd = start + len(cmd)
        pos = after_cmd
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos > after_cmd and pos < len(text) and text[pos] != "{":  # "\boxed 5"
            match = re.match(r"[^\s$]+", text[pos:])
            if match:
                return match.group(0).strip()
        if pos < len(text) and text[pos] == "{":
            depth = 0
            for i in range(pos, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[pos + 1 : i].strip()
        # Unclosed or malformed box: look for an earlier, complete one.
        start = max(text.rfind(cmd, 0, start) for cmd in _BOXED_COMMANDS)
    return None


def _after_hashes(text: str) -> str:
    answer = text.split("####")[-1].strip()
    answer = answer.splitlines()[0].strip() if answer else answer
    return answer.replace(",", "").rstrip(".").strip()


def extract_math_answer(text: str) -> str | None:
    """Final answer of a math solution.

    In order of preference: the content of the last ``\\boxed{}``; the text after the last ``####`` (GSM8K
    format); the last number in the text (thousands separators removed).

    Args:
        text: A model completion or a reference solution.

    Returns:
        The extracted answer, or None when the text holds none of the above.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        answer = _after_hashes(text)
        if answer:
            return answer
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


_LATEX_NOISE = (
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "\\displaystyle",
    "^{\\circ}",
    "^\\circ",
    "\\%",
    "%",
    "$",
)


def _normalize_math_string(text: str) -> str:
    text = text.strip()
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")):
        text = text.replace(old, new)
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "")
    text = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", text)
    text = re.sub(r"\\mbox\{\s*([^{}]*?)\s*\}", r"\1", text)
    text = "".join(text.split())
    text = text.rstrip(".")
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", text):
        text = text.replace(",", "")
    return text


def _numeric_equal(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def _math_verify_equal(prediction: str, reference: str) -> bool:
    from math_verify import parse, verify

    # math_verify's timeouts rely on SIGALRM, which only works in the main thread.
    timeout: int | None = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=timeout)
    pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def math_equal(prediction: str, reference: str) -> bool:
    """Whether a math completion reaches the reference answer.

    The final answer is taken from both sides with :func:`extract_math_answer` (so a prediction may be a full
    chain of thought ending in ``\\boxed{...}``, or give its final number without a box as on GSM8K, and a
    reference may be a GSM8K solution ending in ``#### 42``). Answers are first compared as normalised strings
    and numbers, then for mathematical equivalence with ``math_verify`` (``\\boxed{\\frac{1}{2}}`` equals
    ``0.5``). Any ``math_verify`` failure counts as "not equal".

    Args:
        prediction: Model completion or bare answer.
        reference: Gold answer (bare, boxed, or GSM8K ``#### answer``).

    Returns:
        True when the answers are equivalent.
    """
    pred = extract_math_answer(prediction)
    if "####" in reference:
        gold: str | None = _after_hashes(reference)
    else:
        gold = extract_boxed(reference)
        if gold is None:
            gold = reference.strip()
    if pred is None or not gold:
        return False
    pred_norm, gold_norm = _normalize_math_string(pred), _normalize_math_string(gold)
    if pred_norm == gold_norm or _numeric_equal(pred_norm, gold_norm):
        return True
    try:
        return _math_verify_equal(pred, gold)
    except Exception:  # noqa: BLE001 - any parser/verifier failure means "not verified"
        return False


# --------------------------------------------------------------------------------------------------------------------
# Code
# --------------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-.]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}


def extract_code(completion: str) -> str:
    """Python program in a completion.

    Takes the fenced code blocks (```` ```python ... ``` ````, also an unterminated final block, as left by a
    generation cut at its length limit). Python-tagged (or untagged) blocks are preferred over blocks in other
    languages; among them the first that defines a function or class is returned, else the first. Without
    fences, the whole completion is returned.

    Args:
        completion: Model completion.

    Returns:
        The code, with surrounding blank lines removed.
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(completion)]
    if not blocks:
        return completion.strip("\n")
    python_blocks = [body for tag, body in blocks if tag in _PYTHON_TAGS or tag == ""]
    candidates = python_blocks or [body for _, body in blocks]
    for body in candidates:
        if re.search(r"^\s*(def|class|async\s+def)\s", body, re.MULTILINE):
            return body.strip("\n")
    return candidates[0].strip("\n")


def code_scorer(
    prediction: str,
    reference: str,
    *,
    timeout: float = 3.0,
    allow_code_execution: bool = False,
    **limits: Any,
) -> bool:
    """Score a code completion: extract its program (:func:`extract_code`) and run the reference tests on it.

    Args:
        prediction: Model completion (fenced code block or raw code).
        reference: Test program (HumanEval ``test`` + ``check(entry_point)``, or MBPP asserts).
        timeout: Wall-clock limit in seconds.
        allow_code_execution: Accept the risk of running untrusted code; alternatively set
            ``HF_ALLOW_CODE_EVAL=1``.
        **limits: Other keyword arguments of :func:`execute_code` (resource limits, ``add_imports``).

    Returns:
        True when the tests pass (see :func:`code_passes`).

    Raises:
        ValueError: If code execution was not explicitly allowed, or a limit is invalid.
        TypeError: If a keyword argument is not one of :func:`execute_code`'s.
        RuntimeError: If the child could not apply a limit.
    """
    return code_passes(extract_code(prediction), reference, **_code_options(timeout, allow_code_execution, limits))


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------

_SCORERS: dict[str, Callable[..., bool]] = {
    "exact_match": exact_match,
    "math": math_equal,
    "code": code_scorer,
}
SCORER_NAMES: tuple[str, ...] = tuple(_SCORERS)


def register_scorer(name: str, scorer: Callable[[str, str], bool], *, overwrite: bool = False) -> None:
    """Make ``scorer(prediction, reference) -> bool`` available to :func:`get_scorer` and the evaluation runner.

    Args:
        name: The name that datasets' ``scorer`` column and ``scorer=`` refer to.
        scorer: The scoring function.
        overwrite: Replace a scorer registered earlier under ``name``. Registering the same function again is
            always accepted; built-in scorers are never replaced.

    Raises:
        ValueError: If ``name`` is empty, a built-in scorer, or already registered to another function while
            ``overwrite`` is False.
        TypeError: If ``scorer`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A scorer name must be a non-empty string, got {name!r}.")
    if not callable(scorer):
        raise TypeError(f"The scorer registered as {name!r} must be callable, got {scorer!r}.")
    if name in SCORER_NAMES:
        raise ValueError(f"{name!r} is a built-in scorer; register yours under another name.")
    current = _SCORERS.get(name)
    if current is not None and current is not scorer and not overwrite:
        raise ValueError(
            f"A scorer named {name!r} is already registered ({current!r}); pass overwrite=True to register_scorer "
            "to replace it, or register yours under another name."
        )
    _SCORERS[name] = scorer


def available_scorers() -> tuple[str, ...]:
    """Names of the built-in and registered scorers."""
    return tuple(_SCORERS)


def _check_scorer_keywords(name: str, fn: Callable[..., bool], kwargs: dict[str, Any]) -> None:
    """Fail now, not at the first scored sample, when a scorer does not take the keyword arguments bound to it."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    try:
        signature.bind_partial("", "", **kwargs)
    except TypeError as error:
        raise TypeError(f"Scorer {name!r}: {error}.") from None


def get_scorer(name: str, **kwargs: Any) -> Scorer:
    """Look a scorer up by name.

    Args:
        name: One of ``"exact_match"``, ``"math"``, ``"code"``.
        **kwargs: Keyword arguments bound to the scorer, e.g. ``normalize=True`` for ``exact_match`` or
            ``allow_code_execution=True, timeout=5.0`` for ``code``.

    Returns:
        A callable ``(prediction, reference) -> bool``.

    Raises:
        ValueError: If the name is unknown, if the ``code`` scorer is requested without opting in to code
            execution, or with an invalid limit (e.g. a non-positive ``timeout``).
        TypeError: If the scorer does not take one of the keyword arguments.
    """
    if name not in _SCORERS:
        raise ValueError(f"Unknown scorer {name!r}. Valid scorers: {', '.join(sorted(_SCORERS))}.")
    fn = _SCORERS[name]
    if name == "code":
        _check_code_execution_allowed(bool(kwargs.get("allow_code_execution", False)))
        check_code_options(kwargs)
    elif kwargs:
        _check_scorer_keywords(name, fn, kwargs)
    return partial(fn, **kwargs) if kwargs else fn
