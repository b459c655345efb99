"""Tests of the paper's scoring (t3d_trl.evaluation.paper_scoring) beside t3d-trl's own scorers.

Each class of completion where the official T3D reward code and t3d-trl's scorers can disagree (docs/evaluation.md,
"Comparing with the paper") pins both verdicts, with the reason of each.
"""

import threading

import pytest

import t3d_trl.evaluation.paper_scoring as paper_scoring
from t3d_trl.evaluation import CODE_EXECUTION_ENV_VAR, code_reference, get_scorer, math_equal, paper_math, scorer_info
from t3d_trl.evaluation.paper_scoring import (
    extract_last_boxed,
    extract_last_python_block,
    hendrycks_equal,
    hendrycks_normalize,
    is_repetitive,
    latex_equal,
    minerva_normalize,
)

# --------------------------------------------------------------------------------------------------------------------
# Math: one case per class, both verdicts and why
# --------------------------------------------------------------------------------------------------------------------

# (class, completion, reference, t3d-trl `math`, `paper_math`, reason)
MATH_CASES = [
    ("boxed answer", "So the total is $\\boxed{18}$.", "18", True, True, "both read the last box"),
    ("answer-is line, no box", "So 9 * 2 = 18.\nThe answer is 18.", "18", True, False,
     "math reads a stated answer line; the paper scores only boxes"),
    ("#### line, no box", "So 9 * 2 = 18.\n#### 18", "18", True, False,
     "math reads GSM8K's answer line; the paper scores only boxes"),
    ("no box, last number not the answer", "She sells 9 eggs for 18 dollars and keeps 3 for tomorrow.", "18", False,
     False, "no marked answer: math no longer guesses the last number (3 here), the paper needs a box"),
    ("\\boxed without braces", "The answer is $\\boxed 18$.", "18", True, False,
     "math reads `\\boxed 18`; the paper's extraction needs `\\boxed{`"),
    ("\\fbox", "The answer is $\\fbox{18}$.", "18", True, False, "math reads \\fbox; the paper only \\boxed{"),
    ("box cut by the length limit, after a complete one", "So $\\boxed{18}$. Again, the answer is $\\boxed{1", "18",
     True, False, "math takes the last complete box (the answer the model had given); the paper's last box is cut"),
    ("box cut by the length limit, alone", "Adding up, the answer is $\\boxed{1", "18", False, False,
     "no complete box: no answer for either"),
    ("unit glued to the number (Minerva's list)", "The side is $\\boxed{15cm}$.", "15", True, True,
     "math drops unit words; the paper's Minerva normalisation drops `cm`"),
    ("unit glued to the number (not in Minerva's list)", "It weighs $\\boxed{15kg}$.", "15", True, False,
     "math drops the unit word `kg`; the paper's normalisation does not know it and sympy reads 15*k*g"),
    ("Unicode minus", "So $x = \\boxed{\u22125}$.", "-5", True, False,
     "math reads U+2212 as a minus; the paper's parser refuses the character"),
    ("bmatrix for pmatrix", "$\\boxed{\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}}$",
     "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True, False,
     "math compares matrices; the paper compares the strings (sympy's parser has no matrices)"),
    ("solutions in another order", "The roots are $\\boxed{2, 1}$.", "1, 2", True, False,
     "math compares solution sets; the paper compares the strings 21 and 12"),
    ("solutions as equations", "The roots are $\\boxed{x = 1, x = 2}$.", "1, 2", True, False,
     "math reads x = 1, x = 2 as the set {1, 2}; the paper compares strings"),
    ("ordered pair swapped", "The point is $\\boxed{(2, 1)}$.", "(1, 2)", False, False, "a point is ordered: wrong"),
    ("expressions equal after expansion", "$\\boxed{x^2+2x+1}$", "(x+1)^2", True, False,
     "math simplifies; the paper compares sympy's unexpanded forms and their values"),
    ("decimal for a percentage", "$\\boxed{0.25}$", "25\\%", True, False,
     "math reads 25% as 0.25; the paper drops the % sign and compares 0.25 with 25"),
    ("commas deleted (official false positive)", "$\\boxed{(1, 23)}$", "(12, 3)", False, True,
     "the paper's normalisation deletes every comma, so (1, 23) and (12, 3) both read (123)"),
    ("parser stops at the first comma (official false positive)", "$\\boxed{1, 5}$", "1, 2", False, True,
     "sympy's parser reads only the first element of 1, 5 and of 1, 2"),
    ("equal for sympy only", "$\\boxed{2\\sqrt{2}}$", "\\sqrt{8}", True, True,
     "both find the same value (math_verify; sympy's evalf)"),
    ("shorthand fraction", "$\\boxed{\\frac12}$", "0.5", True, True, "both read \\frac12 as one half"),
    ("overflowing numbers", "$\\boxed{1e400}$", "1e401", False, False, "compared exactly, not as floats"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("completion", "reference", "library", "paper", "reason"),
    [case[1:] for case in MATH_CASES],
    ids=[case[0] for case in MATH_CASES],
)
def test_math_classes_pin_both_verdicts(completion, reference, library, paper, reason):
    assert math_equal(completion, reference) is library, f"math: {reason}"
    assert paper_math(completion, reference) is paper, f"paper_math: {reason}"


# --------------------------------------------------------------------------------------------------------------------
# Code: one case per class, both verdicts and why
# --------------------------------------------------------------------------------------------------------------------

ADD = "def add(a, b):\n    return a + b"
ADD_TESTS = code_reference(["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 5) == 5"])
TOTAL_PREFIX = '```python\nfrom typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """The sum."""\n'
TOTAL_TESTS = code_reference(
    ["def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n\ncheck(total)"],
    TOTAL_PREFIX,
)

# (class, completion, reference, t3d-trl `code`, `paper_code`, reason)
CODE_CASES = [
    ("fenced solution", f"Here:\n```python\n{ADD}\n```", ADD_TESTS, True, True, "both run the fenced block"),
    ("code outside a fence", ADD + "\n", ADD_TESTS, True, False,
     "code runs an unfenced completion as the program; the paper extracts only ```python blocks"),
    ("HumanEval body only, after the prompt's prefix", "    return sum(xs)\n```", TOTAL_TESTS, True, True,
     "both continue the prefix's opened block with the body"),
    ("HumanEval body, then an example block", "    return sum(xs)\n```\nUsage:\n```python\nprint(total([1]))\n```",
     TOTAL_TESTS, True, False, "code continues the prefix; the paper takes the last block, the example"),
    ("missing import", "\n```\nSolution:\n```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```",
     TOTAL_TESTS, True, False,
     "code adds common imports (`List`); the paper runs the block as written, where List is undefined"),
    ("__main__ block reading stdin",
     f"```python\n{ADD}\n\n\nif __name__ == '__main__':\n    print(add(*map(int, input().split())))\n```",
     ADD_TESTS, True, True, "both run the program as a module, so its __main__ demo does not run"),
    ("several blocks: solution, then an example", f"```python\n{ADD}\n```\nFor example:\n```python\nprint(add(1, 2))\n```",
     ADD_TESTS, True, False, "code joins the blocks that define something; the paper takes the last block"),
    ("several blocks: helper, then solution",
     "```python\ndef _plus(a, b):\n    return a + b\n```\nThen:\n```python\ndef add(a, b):\n    return _plus(a, b)\n```",
     ADD_TESTS, True, False, "code joins both definitions; the paper's last block lacks the helper"),
    ("several blocks: wrong, then fixed", f"```python\ndef add(a, b):\n    return a * b\n```\nFixed:\n```python\n{ADD}\n```",
     ADD_TESTS, True, True, "the later definition wins in code; the paper takes the last block"),
    ("fence indented in a list item",
     "1. Write it:\n\n   ```python\n   import operator\n\n   def add(a, b):\n       return operator.add(a, b)\n   ```\n",
     ADD_TESTS, True, True, "both dedent the block as a whole"),
    ("sys.exit inside the tested function", "```python\nimport sys\n\ndef add(a, b):\n    sys.exit(0)\n```", ADD_TESTS,
     False, False, "the tests never finish: a fail (the official runner counts the exit as a pass)"),
    ("time-out with at most two tests", "    while True:\n        pass\n```", TOTAL_TESTS, False, False,
     "a time-out fails (the official runner passes it when a problem has at most two tests)"),
    ("```py tag", f"```py\n{ADD}\n```", ADD_TESTS, True, False, "code reads py blocks; the paper only ```python"),
]  # fmt: skip


@pytest.fixture
def code_scorers(monkeypatch):
    monkeypatch.delenv(CODE_EXECUTION_ENV_VAR, raising=False)
    return (
        get_scorer("code", allow_code_execution=True, timeout=5.0),
        get_scorer("paper_code", allow_code_execution=True, timeout=5.0),
    )


@pytest.mark.parametrize(
    ("completion", "reference", "library", "paper", "reason"),
    [case[1:] for case in CODE_CASES],
    ids=[case[0] for case in CODE_CASES],
)
def test_code_classes_pin_both_verdicts(code_scorers, completion, reference, library, paper, reason):
    code, paper_code = code_scorers
    assert code(completion, reference) is library, f"code: {reason}"
    assert paper_code(completion, reference) is paper, f"paper_code: {reason}"


# --------------------------------------------------------------------------------------------------------------------
# The pieces of the paper's scoring
# --------------------------------------------------------------------------------------------------------------------


def test_paper_twins_are_registered():
    assert scorer_info("math").paper == "paper_math" and scorer_info("code").paper == "paper_code"
    assert scorer_info("paper_math").paper == "paper_math" and scorer_info("exact_match").paper is None
    assert scorer_info("code").executes_code and scorer_info("paper_code").executes_code
    assert not scorer_info("math").executes_code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a \\boxed{x^{2}} b \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{3} then \\boxed{4", None),  # the last box is cut: no answer, not the earlier one
        ("\\fbox{3}", None),
        ("\\boxed 3", None),
        ("no box", None),
    ],
)
def test_extract_last_boxed(text, expected):
    assert extract_last_boxed(text) == expected


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("\\left( 3, \\dfrac{\\pi}{2} \\right)", "(3\\frac{\\pi}{2})"),
        ("1,000", "1000"),
        ("x = 5", "5"),
        ("5\\text{ cm}", "5"),
        ("0.5", "\\frac{1}{2}"),
        ("3/4", "\\frac{3}{4}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("\\frac12", "\\frac{1}{2}"),
        (".25", "0.25"),
        ("90^\\circ", "90"),
        ("25\\%", "25"),
    ],
)
def test_hendrycks_normalize(answer, normalised):
    assert hendrycks_normalize(answer) == normalised


def test_hendrycks_equal_numbers_exactly_and_raw_strings_when_it_cannot_normalise():
    assert hendrycks_equal("18.0", "18") and hendrycks_equal("1,000", "1000")
    assert not hendrycks_equal("1e400", "1e401") and hendrycks_equal("inf", "inf")
    # two "\text{ " units: the official normalisation fails, the raw strings decide
    assert not hendrycks_equal("1\\text{ a}\\text{ b}", "1")
    assert hendrycks_equal("1\\text{ a}\\text{ b}", "1\\text{ a}\\text{ b}")


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("15 dollars", "15"),
        ("\\text{Evelyn}", "Evelyn"),
        ("$x$ is 5", "x"),
        ("1,234", "1234"),
        ("\\fracab", "\\frac{a}{b}"),
    ],
)
def test_minerva_normalize(answer, normalised):
    assert minerva_normalize(answer) == normalised


@pytest.mark.parametrize("text", ["", "a", "abab", "aaaaaaaa", "abcdefg", "mississippi", "121212121233", "xyzxyzxyzq"])
def test_is_repetitive_counts_distinct_substrings(text):
    n = len(text)
    distinct = len({text[i:j] for i in range(n) for j in range(i + 1, n + 1)})
    expected = n > 1 and 1 - distinct / (n * (n + 1) / 2) > 0.2
    assert is_repetitive(text) is expected


def test_long_repetitive_answers_are_not_compared_by_sympy():
    loop = "1+" * 100 + "1"
    assert is_repetitive(loop) and len(loop) > 128
    assert not latex_equal(loop, loop)  # the official guard, even against itself
    assert paper_math(f"\\boxed{{{loop}}}", loop)  # ... while the string comparison still sees them equal


def test_the_parser_is_loaded_before_the_time_limit_starts(monkeypatch):
    """A fresh process's first comparison must not spend its time limit loading sympy's parser."""
    paper_scoring._latex_parser.cache_clear()
    loaded_at_start = []

    class Watched(threading.Thread):
        def start(self):
            loaded_at_start.append(paper_scoring._latex_parser.cache_info().currsize == 1)
            super().start()

    monkeypatch.setattr(paper_scoring.threading, "Thread", Watched)
    assert latex_equal("2\\sqrt{2}", "\\sqrt{8}", timeout=60)
    assert loaded_at_start == [True]


def test_a_comparison_that_runs_out_of_time_is_not_equal(monkeypatch):
    never = threading.Event()
    monkeypatch.setattr(paper_scoring, "_sympy_equal", lambda first, second: never.wait() or True)
    assert not latex_equal("2\\sqrt{2}", "\\sqrt{8}", timeout=0.05)


def test_extract_last_python_block():
    text = "```python\nx = 1\n```\n```python3\n    def f():\n        return 2\n```\n```python\ncut"
    assert extract_last_python_block(text) == "def f():\n    return 2"
    assert extract_last_python_block("```py\nx = 1\n```") is None
    assert extract_last_python_block("no code") is None


def test_paper_code_needs_the_opt_in_and_takes_no_import_header(monkeypatch):
    monkeypatch.delenv(CODE_EXECUTION_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=CODE_EXECUTION_ENV_VAR):
        paper_scoring.paper_code("```python\nx = 1\n```", "assert x == 1")
    with pytest.raises(TypeError, match="add_imports"):
        get_scorer("paper_code", allow_code_execution=True, add_imports=True)
    scorer = get_scorer("paper_code", allow_code_execution=True, timeout=10.0)
    assert scorer("```python\nx = 1\n```", "assert x == 1")  # a plain test program is one test
    assert not scorer("```python\nx = math.pi\n```", "assert x > 3")  # no `import math` added


@pytest.mark.parametrize("scorer", ["paper_math", "paper_code"])
def test_paper_scorers_refuse_a_missing_prediction(scorer, monkeypatch):
    monkeypatch.setenv(CODE_EXECUTION_ENV_VAR, "1")
    with pytest.raises(TypeError, match="`prediction` must be a string, got NoneType"):
        get_scorer(scorer)(None, "1")
