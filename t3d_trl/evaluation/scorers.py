"""Answer scorers for the few-step evaluation, and their registry.

Every scorer is a callable ``(prediction, reference) -> bool``. Built in:

* ``"exact_match"``: string equality after stripping (optionally normalised),
* ``"math"``: mathematical equivalence through `math_verify <https://github.com/huggingface/Math-Verify>`_ of the
  completion's final answer (its last box, else its ``####`` or "the answer is" line, else the completion itself when
  it is one short line) with the reference (GSM8K ``#### 42`` solutions understood),
* ``"code"``: functional correctness; the program taken from the completion is executed against the reference tests
  in a separate Python process. Running model-written code is dangerous, so like ``evaluate``'s ``code_eval`` it is
  opt-in (``HF_ALLOW_CODE_EVAL=1`` or ``allow_code_execution=True``),
* ``"paper_math"`` and ``"paper_code"``: the T3D paper's scoring (:mod:`t3d_trl.evaluation.paper_scoring`),
  registered as the paper twins of ``math`` and ``code``.

Use :func:`get_scorer` to look a scorer up by name, :func:`register_scorer` to add one (with its paper twin, if any),
and :func:`scorer_info` to read what the registry knows of a scorer. ``docs/evaluation.md`` ("Comparing with the
paper") says where ``math``/``code`` and their paper twins disagree, and why.
"""

from __future__ import annotations

import inspect
import re
import string
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from ..registry import Registry
from .code_reference import parse_code_reference
from .execution import (
    CODE_EXECUTION_ENV_VAR,
    CodeExecutionResult,
    _check_code_execution_allowed,
    _code_options,
    check_code_options,
    code_passes,
    execute_code,
)
from .paper_scoring import closing_brace, paper_code, paper_math

__all__ = [
    "CODE_EXECUTION_ENV_VAR",
    "CodeExecutionResult",
    "Scorer",
    "ScorerInfo",
    "SCORERS",
    "SCORER_NAMES",
    "available_scorers",
    "register_scorer",
    "code_passes",
    "code_program",
    "code_scorer",
    "exact_match",
    "execute_code",
    "extract_boxed",
    "extract_code",
    "extract_math_answer",
    "get_scorer",
    "math_equal",
    "scorer_info",
]

Scorer = Callable[[str, str], bool]
"""A scorer maps ``(prediction, reference)`` to whether the prediction is correct."""


def _check_text(scorer: str, argument: str, value: Any) -> None:
    """Refuse a prediction or reference that is not text (``None`` from a missing column...), naming it."""
    if not isinstance(value, str):
        raise TypeError(
            f"{scorer}: `{argument}` must be a string, got {type(value).__name__} ({value!r}); a missing completion "
            'or reference is a bug of the caller (score an empty string "" for an empty completion).'
        )


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

    Raises:
        TypeError: If ``prediction`` or ``reference`` is not a string (``None`` included).
    """
    _check_text("exact_match", "prediction", prediction)
    _check_text("exact_match", "reference", reference)
    if normalize:
        return _normalize_text(prediction) == _normalize_text(reference)
    return prediction.strip() == reference.strip()


# --------------------------------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------------------------------

_BOXED_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
# "The answer is 42", "Final answer: 42", "**Answer:** $42$" (markdown emphasis is dropped before matching)
_ANSWER_LINE = re.compile(r"\banswer\s*(?:is|:|=)\s*:?\s*(\S[^\n]*)", re.IGNORECASE)
#: The longest completion (one line) read as a bare answer when it has no box or answer line.
BARE_ANSWER_MAX_CHARS = 32
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-", "\ufe63": "-", "\uff0d": "-"})


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in a text, nested braces included.

    ``\\boxed 5`` (no braces, as sometimes written for single tokens) is also understood. A last box that is not
    closed (a generation cut at its length limit, often while repeating an answer it boxed before) is skipped for the
    last complete one.

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
        end = closing_brace(text, pos) if pos < len(text) and text[pos] == "{" else None
        if end is not None:
            return text[pos + 1 : end].strip()
        # Unclosed or malformed box: look for an earlier, complete one.
        start = max(text.rfind(cmd, 0, start) for cmd in _BOXED_COMMANDS)
    return None


def _after_hashes(text: str) -> str:
    answer = text.split("####")[-1].strip()
    answer = answer.splitlines()[0].strip() if answer else answer
    return answer.replace(",", "").rstrip(".").strip()


def _answer_line(text: str) -> str | None:
    """What follows the last "answer is" / "answer:" of a text, up to the end of its line."""
    matches = _ANSWER_LINE.findall(text.replace("*", ""))
    if not matches or any(command in matches[-1] for command in _BOXED_COMMANDS):
        return None  # a box on the answer line that extract_boxed did not read was cut
    answer = matches[-1].strip().rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer or None


def extract_math_answer(text: str, *, last_number_fallback: bool = False) -> str | None:
    """Final answer of a math solution.

    In order of preference: the content of the last ``\\boxed{}`` (:func:`extract_boxed`); the text after the last
    ``####`` (GSM8K format); what follows the last "answer is" or "answer:" on its line; the text itself when it is a
    single line of at most :data:`BARE_ANSWER_MAX_CHARS` characters (a bare answer such as ``0.5`` or ``x = 3``).
    Any other text has no answer: the last number of a chain of thought is often not its answer, so it is taken only
    with ``last_number_fallback=True``.

    Args:
        text: A model completion or a reference solution.
        last_number_fallback: Take the last number of a text that has no marked answer (thousands separators
            removed).

    Returns:
        The extracted answer, or None.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        answer = _after_hashes(text)
        if answer:
            return answer
    answer = _answer_line(text)
    if answer is not None:
        return answer
    bare = text.strip()
    if bare and "\n" not in bare and len(bare) <= BARE_ANSWER_MAX_CHARS:
        return bare.rstrip(".").strip()
    if last_number_fallback:
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
    "\\$",
    "$",
)
# Unit words after a number ("42 dollars", "15cm", "3\text{ km}"), dropped when what is left is a number.
_UNIT_WORDS = (
    "dollars", "dollar", "cents", "cent", "percent", "degrees", "degree", "units", "unit", "square units", "sq units",
    "cm", "mm", "km", "meters", "meter", "inches", "inch", "feet", "foot", "ft", "yards", "yd", "miles", "mile", "mph",
    "kg", "grams", "gram", "pounds", "pound", "lbs", "lb", "ounces", "oz", "liters", "liter", "hours", "hour",
    "minutes", "minute", "seconds", "second", "days", "weeks", "years", "people", "students", "points", "ways",
)  # fmt: skip
# A number followed by one of them (and a power: "cm^2"); single letters (m, g) are left alone, they may be variables.
_NUMBER_WITH_UNIT = re.compile(
    r"(-?(?:\d[\d,]*)?\.?\d+)\s*(?:" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True)) + r")(?:\^\{?[23]\}?)?"
)


def _normalize_math_string(text: str) -> str:
    text = text.strip().translate(_MINUS_SIGNS)
    for old, new in (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")):
        text = text.replace(old, new)
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "")
    text = re.sub(r"\\(?:text|mbox|mathrm)\{\s*([^{}]*?)\s*\}", r"\1", text)
    text = text.rstrip(".").strip()
    unit = _NUMBER_WITH_UNIT.fullmatch(text)
    if unit:
        text = unit.group(1)
    text = "".join(text.split())
    if re.fullmatch(r"-?[\d,]+(\.\d+)?", text):
        text = text.replace(",", "")
    return text


def _as_decimal(text: str) -> Decimal | None:
    try:
        float(text)  # the spellings Python reads as a number ("1e5", "inf", "-.5")
        return Decimal(text.replace("_", ""))
    except (ValueError, InvalidOperation):
        return None


def _numeric_equal(a: str, b: str) -> bool:
    """Whether two numbers agree to a relative (and absolute) tolerance of 1e-9, computed exactly (no float overflow:
    ``1e400`` is not ``1e401``; ``inf`` equals ``inf``)."""
    x, y = _as_decimal(a), _as_decimal(b)
    if x is None or y is None or x.is_nan() or y.is_nan():
        return False
    if x.is_infinite() or y.is_infinite():
        return x == y
    tolerance = Decimal("1e-9")
    return abs(x - y) <= max(tolerance * max(abs(x), abs(y)), tolerance)


def _math_verify_equal(prediction: str, reference: str) -> bool:
    from math_verify import parse, verify

    # math_verify's timeouts rely on SIGALRM, which only works in the main thread.
    timeout: int | None = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{reference}}}", parsing_timeout=timeout)
    pred = parse(f"\\boxed{{{prediction}}}", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def math_equal(prediction: str, reference: str, *, last_number_fallback: bool = False) -> bool:
    """Whether a math completion reaches the reference answer.

    The final answer is taken from the prediction with :func:`extract_math_answer` (a chain of thought ending in
    ``\\boxed{...}``, an "answer is" or ``####`` line, or a bare answer), and from the reference as its ``####``
    answer, its box, or itself. Answers are first compared as normalised strings (LaTeX spacing, ``\\dfrac``,
    ``\\text{}``, dollar and degree signs, a unit word after a number and Unicode minus signs dropped) and as
    numbers, then for mathematical equivalence with ``math_verify`` (``\\frac{1}{2}`` equals ``0.5``, ``(x+1)^2``
    equals ``x^2+2x+1``, ``\\{2, 1\\}`` equals ``1, 2``, ``25\\%`` equals ``0.25``). Any ``math_verify`` failure
    counts as "not equal".

    Args:
        prediction: Model completion or bare answer.
        reference: Gold answer (bare, boxed, or GSM8K ``#### answer``).
        last_number_fallback: Also take the last number of a completion without a marked answer (off: such a
            completion is not an answer).

    Returns:
        True when the answers are equivalent.

    Raises:
        TypeError: If ``prediction`` or ``reference`` is not a string.
    """
    _check_text("math", "prediction", prediction)
    _check_text("math", "reference", reference)
    pred = extract_math_answer(prediction, last_number_fallback=last_number_fallback)
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
        return _math_verify_equal(pred.translate(_MINUS_SIGNS), gold.translate(_MINUS_SIGNS))
    except Exception:  # noqa: BLE001 - any parser/verifier failure means "not verified"
        return False


# --------------------------------------------------------------------------------------------------------------------
# Code
# --------------------------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-.]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}
# A block that defines something at its top level: a function, a class, an import.
_DEFINES = re.compile(r"^(?:async\s+def|def|class|import|from\s+\S+\s+import)\s", re.MULTILINE)


def _clean_block(body: str) -> str:
    """A fenced block's code: dedented as a whole (a fence indented in a list item), blank lines around removed."""
    return textwrap.dedent(body).strip("\n").rstrip()


def extract_code(completion: str) -> str:
    """Python program in a completion.

    The fenced code blocks (```` ```python ... ``` ````, also an unterminated final block, as left by a generation cut
    at its length limit) are dedented, and Python-tagged (or untagged) blocks are preferred over blocks in other
    languages. When several blocks define something at their top level (a function, a class or an import), they are
    joined in order: a helper and the solution written in separate blocks both count, and a later corrected version
    replaces an earlier one, while blocks of example calls or expected output are left out. When no block defines
    anything, the last block is the program. Without fences, the whole completion is the program.

    Args:
        completion: Model completion.

    Returns:
        The code, with surrounding blank lines removed.
    """
    blocks = [(tag.lower(), _clean_block(body)) for tag, body in _FENCE.findall(completion)]
    if not blocks:
        return completion.strip("\n")
    python_blocks = [body for tag, body in blocks if tag in _PYTHON_TAGS or tag == ""]
    candidates = python_blocks or [body for _, body in blocks]
    defining = [body for body in candidates if _DEFINES.search(body)]
    return "\n\n".join(defining) if defining else candidates[-1]


def _prefix_code(prefix: str) -> str | None:
    """The code a prefix leaves open: what follows its last fence when that fence opens a block, else None."""
    fences = [match.end() for match in re.finditer(r"```[^\n]*\n?", prefix)]
    if len(fences) % 2 == 0:
        return None
    return prefix[fences[-1] :]


def code_program(completion: str, prefix: str = "") -> str:
    """The program a code completion gives, when its prompt ends with ``prefix``.

    A prefix that opens a code block (HumanEval's signature and docstring after ```` ```python ````) is continued
    by the completion: when the completion does not start a block of its own, the program is the prefix's code
    followed by the completion up to its first fence, if that compiles (a completion of only the function's body).
    Otherwise the program is :func:`extract_code` of the completion.

    Args:
        completion: Model completion (what follows the prompt).
        prefix: The end of the prompt that the completion continues (the ``prefix`` of the reference).

    Returns:
        The program.
    """
    opened = _prefix_code(prefix)
    if opened is None:
        return extract_code(completion)
    closing = re.match(r"\s*```[ \t]*(?:\n|$)", completion)
    if closing:  # the completion closes the prefix's block first, then (usually) writes its own
        return extract_code(completion[closing.end() :])
    if not completion.lstrip().startswith("```"):
        continued = opened + completion.split("```", 1)[0]
        try:
            compile(continued, "<completion>", "exec")
        except (SyntaxError, ValueError):
            pass
        else:
            return continued.strip("\n").rstrip()
    return extract_code(completion)


def code_scorer(
    prediction: str,
    reference: str,
    *,
    timeout: float = 3.0,
    allow_code_execution: bool = False,
    **limits: Any,
) -> bool:
    """Score a code completion: take its program (:func:`code_program`) and run the reference tests on it.

    The program runs after a header of common standard-library imports (``add_imports``: chat models leave out
    ``from typing import List`` and the like), as a module (its ``if __name__ == "__main__":`` demo does not run), in
    a separate process (:func:`~t3d_trl.evaluation.execute_code`); it passes when the tests are seen to run to their
    end.

    Args:
        prediction: Model completion (fenced code blocks or raw code).
        reference: Test program (HumanEval ``test`` + ``check(entry_point)``, or MBPP asserts), or the JSON object
            ``{"tests": [...], "prefix": "..."}`` of :mod:`t3d_trl.evaluation.code_reference`.
        timeout: Wall-clock limit in seconds.
        allow_code_execution: Accept the risk of running untrusted code; alternatively set
            ``HF_ALLOW_CODE_EVAL=1``.
        **limits: Other keyword arguments of :func:`execute_code` (resource limits, ``add_imports``).

    Returns:
        True when the tests pass (see :func:`code_passes`).

    Raises:
        ValueError: If code execution was not explicitly allowed, or a limit is invalid.
        TypeError: If ``prediction`` or ``reference`` is not a string, or a keyword argument is not one of
            :func:`execute_code`'s.
        RuntimeError: If the child could not apply a limit.
    """
    _check_text("code", "prediction", prediction)
    _check_text("code", "reference", reference)
    parsed = parse_code_reference(reference)
    options = _code_options(timeout, allow_code_execution, limits)
    return code_passes(code_program(prediction, parsed.prefix), parsed.test_program, **options)


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScorerInfo:
    """What the registry knows of a scorer.

    Attributes:
        name: The registered name.
        function: The scoring function ``(prediction, reference, **options) -> bool``.
        paper: The name of its paper twin, the scorer whose verdict the T3D paper's code would give on the same row
            (None when there is none); the evaluation reports both accuracies.
        executes_code: Whether it runs model-written code (the runner then needs the opt-in and passes it
            ``allow_code_execution`` and ``timeout``).
    """

    name: str
    function: Callable[..., bool]
    paper: str | None = None
    executes_code: bool = False


#: registered scorers by name (built-ins first)
SCORERS: Registry[ScorerInfo] = Registry("scorer", hint="register one with t3d_trl.evaluation.register_scorer")
for _info in (
    ScorerInfo("exact_match", exact_match),
    ScorerInfo("math", math_equal, paper="paper_math"),
    ScorerInfo("code", code_scorer, paper="paper_code", executes_code=True),
    ScorerInfo("paper_math", paper_math, paper="paper_math"),
    ScorerInfo("paper_code", paper_code, paper="paper_code", executes_code=True),
):
    SCORERS.register(_info.name, _info, builtin=True)
SCORER_NAMES: tuple[str, ...] = SCORERS.names()


def register_scorer(
    name: str,
    scorer: Callable[[str, str], bool],
    *,
    overwrite: bool = False,
    paper: str | None = None,
    executes_code: bool = False,
) -> None:
    """Make ``scorer(prediction, reference) -> bool`` available to :func:`get_scorer` and the evaluation runner.

    Args:
        name: The name that datasets' ``scorer`` column and ``scorer=`` refer to.
        scorer: The scoring function.
        overwrite: Replace a scorer registered earlier under ``name``. Registering the same function with the same
            options again is always accepted; built-in scorers are never replaced.
        paper: The name of the scorer that gives the T3D paper's verdict on the rows this one scores (its paper twin,
            already registered, or ``name`` itself); the runner then reports the accuracy under both and the rows
            where they disagree. None: no paper verdict for these rows.
        executes_code: The scorer runs model-written code: it takes ``allow_code_execution`` and ``timeout`` keyword
            arguments, and the runner refuses it without the opt-in.

    Raises:
        ValueError: If ``name`` is empty, a built-in scorer, or already registered to another function while
            ``overwrite`` is False, or ``paper`` names no registered scorer.
        TypeError: If ``scorer`` is not callable.
    """
    if not callable(scorer):
        raise TypeError(f"The scorer registered as {name!r} must be callable, got {scorer!r}.")
    if paper is not None and paper != name and paper not in SCORERS:
        raise ValueError(
            f"register_scorer({name!r}, paper={paper!r}): the paper twin must be a registered scorer or {name!r} "
            f"itself; registered: {', '.join(SCORERS)}."
        )
    info = ScorerInfo(name, scorer, paper=paper, executes_code=bool(executes_code))
    current = SCORERS.get(name) if isinstance(name, str) else None
    SCORERS.register(name, current if current == info else info, overwrite=overwrite)


def available_scorers() -> tuple[str, ...]:
    """Names of the built-in and registered scorers."""
    return SCORERS.names()


def scorer_info(name: str) -> ScorerInfo:
    """What the registry knows of a scorer: its function, its paper twin and whether it runs code.

    Args:
        name: A registered scorer name.

    Returns:
        Its :class:`ScorerInfo`.

    Raises:
        ValueError: If the name is not registered (naming the registered ones).
    """
    return SCORERS.get_entry(name)


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
        name: A registered name: ``"exact_match"``, ``"math"``, ``"code"``, ``"paper_math"``, ``"paper_code"`` or one
            added with :func:`register_scorer`.
        **kwargs: Keyword arguments bound to the scorer, e.g. ``normalize=True`` for ``exact_match``,
            ``last_number_fallback=True`` for ``math``, or ``allow_code_execution=True, timeout=5.0`` for ``code``.

    Returns:
        A callable ``(prediction, reference) -> bool``.

    Raises:
        ValueError: If the name is unknown, if a scorer that runs code is requested without opting in to code
            execution, or with an invalid limit (e.g. a non-positive ``timeout``).
        TypeError: If the scorer does not take one of the keyword arguments.
    """
    info = scorer_info(name)
    fn = info.function
    if kwargs:
        _check_scorer_keywords(name, fn, kwargs)
    if info.executes_code:
        _check_code_execution_allowed(bool(kwargs.get("allow_code_execution", False)))
        if fn is paper_code and "add_imports" in kwargs:
            raise TypeError(
                "Scorer 'paper_code' runs programs without added imports, as the paper's code does: drop add_imports."
            )
        if fn in (code_scorer, paper_code):  # the built-in code scorers take execute_code's limits
            check_code_options(kwargs)
    return partial(fn, **kwargs) if kwargs else fn
