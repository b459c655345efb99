"""The T3D paper's scoring: ``paper_math`` and ``paper_code``, what its official reward code means.

The numbers of the T3D paper (arXiv 2602.12262) come from its official evaluation code. These two scorers reproduce
what that code means, so that an accuracy can be set beside the paper's tables, and leave out its accidents (see
``docs/evaluation.md``, "Comparing with the paper"):

* :func:`paper_math`: the answer is only the content of the last ``\\boxed{...}`` (none when that box is not closed);
  it is right when the Hendrycks-style normalised strings match (:func:`hendrycks_equal`: units, spaces,
  ``\\left``/``\\right``, dollar signs and *every comma* dropped, ``a/b`` and ``0.5`` read as fractions...), or when
  sympy's LaTeX parser reads both as the same expression or the same value (:func:`latex_equal`: first as written,
  then after the Minerva answer normalisation; an expression sympy cannot parse compares as its normalised string).
  The parser is loaded before the time limit of a comparison starts, so that a fresh process does not lose its first
  comparisons to the parser's start-up, and a time-out means "not equal".
* :func:`paper_code`: the program is only the last ```` ```python ... ``` ```` block of the prompt prefix followed
  by the completion (for HumanEval the prefix opens the block with the function's signature, and the completion may
  continue it with the body alone), dedented; it passes only if every test passes. A time-out, a crash or an exit
  before the tests end fails (the official runner counts these as passing when a problem has at most two tests).

Both are registered with :func:`t3d_trl.evaluation.register_scorer` as the ``paper`` twins of ``math`` and ``code``,
so the evaluation runner reports each setting's accuracy under both.
"""

from __future__ import annotations

import functools
import math
import re
import textwrap
import threading
from decimal import Decimal, InvalidOperation
from typing import Any

from .code_reference import parse_code_reference
from .execution import _check_code_execution_allowed, _code_options, check_code_options, code_passes

__all__ = [
    "PAPER_CODE_TIMEOUT",
    "PAPER_MATH_TIMEOUT",
    "closing_brace",
    "extract_last_boxed",
    "extract_last_python_block",
    "hendrycks_equal",
    "hendrycks_normalize",
    "is_repetitive",
    "latex_equal",
    "minerva_normalize",
    "paper_code",
    "paper_math",
]

PAPER_MATH_TIMEOUT = 5.0
"""Seconds a sympy comparison of :func:`paper_math` may take (the official code allows 1 s, measured from when the
comparison is queued on a 64-thread pool; a comparison of a parsed answer takes milliseconds)."""

PAPER_CODE_TIMEOUT = 6.0
"""Seconds a program of :func:`paper_code` may run: the official rows' 1 s limit plus the 5 s the official runner
allows for starting its process."""


# --------------------------------------------------------------------------------------------------------------------
# Math: the answer
# --------------------------------------------------------------------------------------------------------------------


def extract_last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{`` of a text, up to its matching brace.

    Only ``\\boxed{`` counts: not ``\\fbox``, nor ``\\boxed 5`` without braces. A last box that is not closed (a
    completion cut by its length limit) gives no answer, even when an earlier box is complete.

    Args:
        text: A completion.

    Returns:
        The box's content (not stripped), or None.
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    begin = start + len("\\boxed")
    end = closing_brace(text, begin)
    return None if end is None else text[begin + 1 : end]


def closing_brace(text: str, opening: int) -> int | None:
    """The position of the brace that closes the one at ``text[opening]`` (nested braces counted), or None."""
    depth = 0
    for position in range(opening, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return position
    return None


# --------------------------------------------------------------------------------------------------------------------
# Math: Hendrycks-style string normalisation
# --------------------------------------------------------------------------------------------------------------------


class _NotNormalisable(ValueError):
    """An answer the Hendrycks normalisation cannot handle; the raw strings are then compared."""


def _braced_fractions(text: str) -> str:
    """``\\frac12`` and ``\\frac1{b}`` as ``\\frac{1}{2}`` and ``\\frac{1}{b}``: each ``\\frac`` not followed by a
    brace takes the next one or two characters as its arguments. An unbraced ``\\frac`` with fewer than two characters
    after it leaves the whole text as it was."""
    head, *tails = text.split("\\frac")
    pieces = [head]
    for tail in tails:
        if tail.startswith("{"):
            pieces.append("\\frac" + tail)
            continue
        if len(tail) < 2:
            return text
        numerator, second, rest = tail[0], tail[1], tail[2:]
        if second == "{":
            pieces.append("\\frac{" + numerator + "}" + second + rest)
        else:
            pieces.append("\\frac{" + numerator + "}{" + second + "}" + rest)
    return "".join(pieces)


def _braced_roots(text: str) -> str:
    """``\\sqrt3`` as ``\\sqrt{3}`` (the one character after an unbraced ``\\sqrt``)."""
    head, *tails = text.split("\\sqrt")
    pieces = [head]
    for tail in tails:
        if not tail:
            raise _NotNormalisable("\\sqrt at the end")
        pieces.append("\\sqrt" + (tail if tail.startswith("{") else "{" + tail[0] + "}" + tail[1:]))
    return "".join(pieces)


def _slash_fraction(text: str) -> str:
    """``a/b`` of two plain integers as ``\\frac{a}{b}``."""
    parts = text.split("/")
    if len(parts) == 2 and all(re.fullmatch(r"-?\d+", part) for part in parts):
        if all(str(int(part)) == part for part in parts):
            return "\\frac{" + parts[0] + "}{" + parts[1] + "}"
    return text


def hendrycks_normalize(answer: str) -> str:
    """The Hendrycks MATH normalisation of an answer, as the official T3D code applies it (which also drops every
    comma, so that ``1,000`` reads ``1000`` and ``(1, 23)`` reads like ``(12, 3)``).

    In order: line breaks, ``\\!``, doubled backslashes, ``tfrac``/``dfrac``, ``\\left``/``\\right``, degree signs,
    dollar signs and commas are dropped; the units after a ``\\text{ `` are cut; ``\\%`` is dropped; a leading ``.``
    gets a zero; ``k = 5`` (a left side of at most two characters) becomes ``5``; ``\\sqrt3`` and ``\\frac12`` get
    braces; spaces are dropped; ``0.5`` and ``a/b`` become fractions.

    Args:
        answer: An answer string.

    Returns:
        The normalised string.

    Raises:
        ValueError: Where the official normalisation fails (two ``\\text{ `` units, a ``\\sqrt`` at the end); its
            comparison then falls back to the raw strings.
    """
    text = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    for noise in ("^{\\circ}", "^\\circ", "\\$", "$", ","):
        text = text.replace(noise, "")
    if "\\text{ " in text:
        value, *units = text.split("\\text{ ")
        if len(units) != 1:
            raise _NotNormalisable("several \\text{ units")
        text = value
    text = text.replace("\\%", "").replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text.startswith("."):
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _braced_fractions(_braced_roots(text).replace(" ", ""))
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_fraction(text)


def _as_number(text: str) -> Decimal | None:
    """The number a normalised answer spells as Python's ``float`` reads it (``1e3``, ``inf``, ``1_000``), exactly."""
    try:
        float(text)
        return Decimal(text.strip().replace("_", ""))
    except (ValueError, InvalidOperation):
        return None


def hendrycks_equal(first: str, second: str) -> bool:
    """Whether two answers are equal after :func:`hendrycks_normalize`: as numbers when both read as numbers, else as
    strings; the raw strings when either cannot be normalised.

    Numbers are compared exactly (``1e400`` is not ``1e401``, ``inf`` is ``inf``), where the official code compares
    Python floats (on which both overflow to infinity).

    Args:
        first: An answer.
        second: Another answer.

    Returns:
        True when they match.
    """
    try:
        normal_first, normal_second = hendrycks_normalize(first), hendrycks_normalize(second)
    except _NotNormalisable:
        return first == second
    number_first, number_second = _as_number(normal_first), _as_number(normal_second)
    if number_first is not None and number_second is not None:
        return not number_first.is_nan() and number_first == number_second
    return normal_first == normal_second


# --------------------------------------------------------------------------------------------------------------------
# Math: the Minerva answer normalisation and the sympy comparison
# --------------------------------------------------------------------------------------------------------------------

# The Minerva answer normalisation (Lewkowycz et al. 2022, arXiv 2206.14858, appendix D.1): replacements, then words,
# units and LaTeX left out. The order matters ("ft" goes before "feet" is seen, "\text{}" after "\text{}^2").
_MINERVA_REPLACEMENTS = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
)  # fmt: skip
_MINERVA_DROPPED = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue", "points",
    "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges", "students",
    "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
    "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots",
)  # fmt: skip


def minerva_normalize(answer: str) -> str:
    """The Minerva normalisation of a final answer, the second try of the official sympy comparison.

    Replacements (articles, spaces, ``mbox``, ``\\text{and}``...) and a list of unit words and LaTeX fragments are
    dropped; only the first ``$...$`` is kept; ``\\text{}``, ``\\textbf{}``, ``\\overline{}`` and ``\\boxed{}`` are
    unwrapped; ``\\fracab`` and ``\\sqrta`` get braces; dollar signs go; thousands separators of a plain number go.

    Args:
        answer: An answer string.

    Returns:
        The normalised string.
    """
    text = answer
    for old, new in _MINERVA_REPLACEMENTS:
        text = text.replace(old, new)
    for dropped in _MINERVA_DROPPED:
        text = text.replace(dropped, "")
    text = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", text)
    for command in ("text", "textbf", "overline"):
        text = re.sub(r"(\\" + command + r"\{)(.*?)(\})", r"\2", text)
    text = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", text)
    text = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", text)
    text = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", text)
    text = text.replace("$", "")
    if text.replace(",", "").isdigit():
        text = text.replace(",", "")
    return text


def is_repetitive(text: str) -> bool:
    """Whether a text repeats itself, the official guard that skips the sympy comparison of a long degenerate answer.

    With ``n`` characters and ``D`` distinct substrings, the share of repeated substrings is
    ``r = 1 - D / (n (n + 1) / 2)``; the text is repetitive when ``r > 0.2``. ``D`` is counted with a suffix automaton
    in ``O(n)``.

    Args:
        text: Any text.

    Returns:
        True when more than a fifth of its substrings are repeats.
    """
    n = len(text)
    if n <= 1:
        return False
    lengths, links, transitions, last = [0], [-1], [{}], 0
    for character in text:
        current = len(lengths)
        lengths.append(lengths[last] + 1)
        links.append(0)
        transitions.append({})
        state = last
        while state != -1 and character not in transitions[state]:
            transitions[state][character] = current
            state = links[state]
        if state != -1:
            target = transitions[state][character]
            if lengths[state] + 1 == lengths[target]:
                links[current] = target
            else:
                clone = len(lengths)
                lengths.append(lengths[state] + 1)
                links.append(links[target])
                transitions.append(dict(transitions[target]))
                while state != -1 and transitions[state].get(character) == target:
                    transitions[state][character] = clone
                    state = links[state]
                links[target] = links[current] = clone
        last = current
    distinct = sum(lengths[state] - lengths[links[state]] for state in range(1, len(lengths)))
    return 1.0 - distinct / (n * (n + 1) / 2) > 0.2


@functools.cache
def _latex_parser() -> Any:
    """sympy's LaTeX parser (the ANTLR grammar the official code uses), loaded and warmed up once.

    sympy's ``parse_latex`` refuses every ANTLR runtime but 4.11, while math-verify (a dependency of t3d-trl) installs
    4.13; the parser sympy generated with ANTLR 4.11 reads the same with the 4.13 runtime, so it is driven directly
    when the public function refuses (without the runtime's note on the version difference).
    """
    from sympy.parsing.latex import parse_latex

    try:
        parse_latex("1")
        return parse_latex
    except ImportError:
        pass
    try:
        import antlr4
        from sympy.parsing.latex import _parse_latex_antlr as grammar
    except ImportError as error:  # pragma: no cover - the runtime comes with math-verify
        raise ImportError(
            "paper_math needs sympy's LaTeX parser, which needs the ANTLR runtime: pip install "
            "antlr4-python3-runtime (it comes with math-verify)."
        ) from error

    class Lexer(grammar.LaTeXLexer):
        def checkVersion(self, toolVersion: str) -> None:  # noqa: N802, N803 - ANTLR's names
            """The generated code's version differs from the runtime's; it reads the same (see above)."""

    class Parser(grammar.LaTeXParser):
        def checkVersion(self, toolVersion: str) -> None:  # noqa: N802, N803 - ANTLR's names
            """As the lexer's."""

    def parse(text: str) -> Any:
        text = text.strip()
        listener = grammar.MathErrorListener(text)
        lexer = Lexer(antlr4.InputStream(text))
        lexer.removeErrorListeners()
        lexer.addErrorListener(listener)
        parser = Parser(antlr4.CommonTokenStream(lexer))
        parser.removeErrorListeners()
        parser.addErrorListener(listener)
        return grammar.convert_relation(parser.math().relation())

    parse("1")
    return parse


def _same_expression(first: str, second: str) -> bool:
    """Whether sympy reads both answers as the same expression or the same value (``evalf``); raises when either
    cannot be parsed or evaluated."""
    parse = _latex_parser()
    expression_first, expression_second = parse(first), parse(second)
    if expression_first == expression_second:
        return True
    return bool(expression_first.evalf() == expression_second.evalf())


def _sympy_equal(first: str, second: str) -> bool:
    """The official two tries: the answers as written, then after :func:`minerva_normalize` (compared as strings
    when sympy cannot read them)."""
    try:
        if _same_expression(first, second):
            return True
    except Exception:  # noqa: BLE001 - a parse or evaluation error of either answer: try the normalised forms
        pass
    normal_first, normal_second = minerva_normalize(first), minerva_normalize(second)
    try:
        return _same_expression(normal_first, normal_second)
    except Exception:  # noqa: BLE001 - not parseable: the normalised strings decide
        return normal_first == normal_second


def latex_equal(first: str, second: str, timeout: float = PAPER_MATH_TIMEOUT) -> bool:
    """Whether two answers are the same for sympy's LaTeX parser, as the official comparison decides it.

    An answer longer than 128 characters that :func:`is_repetitive` is never equal. The comparison runs in a thread
    for at most ``timeout`` seconds (the parser is loaded before the clock starts); running out means "not equal".

    Args:
        first: An answer.
        second: Another answer.
        timeout: Seconds the comparison may take.

    Returns:
        True when sympy reads them as equal.
    """
    if any(len(text) > 128 and is_repetitive(text) for text in (first, second)):
        return False
    _latex_parser()
    verdict: list[bool] = []
    worker = threading.Thread(target=lambda: verdict.append(_sympy_equal(first, second)), daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(verdict and verdict[0])


def _check_text(scorer: str, argument: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{scorer}: `{argument}` must be a string, got {type(value).__name__} ({value!r}).")


def _check_timeout(scorer: str, timeout: Any) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{scorer}: timeout must be a positive, finite number of seconds, got {timeout!r}.")


def paper_math(prediction: str, reference: str, *, timeout: float = PAPER_MATH_TIMEOUT) -> bool:
    """Score a math completion as the T3D paper does: the last ``\\boxed{}`` against the bare reference answer.

    Equal when :func:`hendrycks_equal` or :func:`latex_equal` says so. The reference is used as it is (the official
    rows' ``ground_truth_answer``: ``"18"``, ``"\\frac{14}{3}"``).

    Args:
        prediction: The model's completion.
        reference: The gold answer.
        timeout: Seconds the sympy comparison may take.

    Returns:
        True when the completion's last box holds the reference answer.

    Raises:
        TypeError: If ``prediction`` or ``reference`` is not a string.
        ValueError: If ``timeout`` is not a positive number.
    """
    _check_text("paper_math", "prediction", prediction)
    _check_text("paper_math", "reference", reference)
    _check_timeout("paper_math", timeout)
    answer = extract_last_boxed(prediction)
    if answer is None:
        return False
    return hendrycks_equal(answer, reference) or latex_equal(answer, reference, timeout)


# --------------------------------------------------------------------------------------------------------------------
# Code
# --------------------------------------------------------------------------------------------------------------------

_PYTHON_BLOCK = re.compile(r"```python(.*?)```", re.DOTALL)


def extract_last_python_block(text: str) -> str | None:
    """The last closed ```` ```python ... ``` ```` block of a text, dedented.

    The tag must read ``python`` (an untagged, ``py`` or unterminated block does not count); the rest of the opening
    line (``python3``) and blank lines around the code are dropped, and the code is dedented as a whole (a fence
    indented in a list item).

    Args:
        text: The prompt prefix followed by the completion.

    Returns:
        The code, or None when there is no such block.
    """
    blocks = _PYTHON_BLOCK.findall(text)
    if not blocks:
        return None
    body = blocks[-1]
    first_line, newline, rest = body.partition("\n")
    if newline and (not first_line.strip() or re.fullmatch(r"[A-Za-z0-9_.+-]*\s*", first_line)):
        body = rest
    return textwrap.dedent(body).strip("\n")


def paper_code(
    prediction: str,
    reference: str,
    *,
    timeout: float = PAPER_CODE_TIMEOUT,
    allow_code_execution: bool = False,
    **limits: Any,
) -> bool:
    """Score a code completion as the T3D paper does, without its runner's accidents.

    The program is :func:`extract_last_python_block` of the reference's prefix followed by the completion, run without
    any import added, then every test in order (:func:`~t3d_trl.evaluation.execute_code`, as a module, not as
    ``__main__``). It passes only if every test passes: an exception, a time-out, a crash or an exit (``sys.exit``)
    before the tests end fails.

    Args:
        prediction: The model's completion (what follows the prompt, prefix included).
        reference: The JSON object ``{"tests": [...], "prefix": "..."}`` of an official row (see
            :mod:`t3d_trl.evaluation.code_reference`), or a test program.
        timeout: Wall-clock seconds of the program and its tests.
        allow_code_execution: Accept the risk of running untrusted code; alternatively set ``HF_ALLOW_CODE_EVAL=1``.
        **limits: Resource limits of :func:`~t3d_trl.evaluation.execute_code` (``memory_limit_mb``...).

    Returns:
        True when the program passes every test.

    Raises:
        TypeError: If ``prediction`` or ``reference`` is not a string, or a keyword is not a limit.
        ValueError: If code execution was not allowed, the reference is malformed or a limit is invalid.
    """
    _check_text("paper_code", "prediction", prediction)
    _check_text("paper_code", "reference", reference)
    if "add_imports" in limits:
        raise TypeError(
            "paper_code runs the program as the official code does, without added imports: drop add_imports."
        )
    options = _code_options(timeout, allow_code_execution, {**limits, "add_imports": False})
    _check_code_execution_allowed(allow_code_execution)
    check_code_options(options)
    parsed = parse_code_reference(reference)
    program = extract_last_python_block(parsed.prefix + prediction)
    if program is None:
        return False
    return code_passes(program, parsed.test_program, **options)
