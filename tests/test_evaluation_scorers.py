"""Tests of t3d_trl.evaluation.scorers."""

import time

import pytest

import t3d_trl.evaluation.scorers as scorers_module
from t3d_trl.evaluation import (
    CODE_EXECUTION_ENV_VAR,
    code_passes,
    exact_match,
    execute_code,
    extract_boxed,
    extract_code,
    extract_math_answer,
    get_scorer,
    math_equal,
    register_scorer,
)


@pytest.fixture
def no_code_eval_env(monkeypatch):
    monkeypatch.delenv(CODE_EXECUTION_ENV_VAR, raising=False)


# ---------------------------------------------------------------------------------------------------------------------
# exact match
# ---------------------------------------------------------------------------------------------------------------------


def test_exact_match_strips_whitespace():
    assert exact_match("  Paris\n", "Paris")
    assert not exact_match("paris", "Paris")
    assert not exact_match("Paris.", "Paris")


def test_exact_match_normalized():
    assert exact_match("The  Paris.", "paris", normalize=True)
    assert not exact_match("London", "Paris", normalize=True)


# ---------------------------------------------------------------------------------------------------------------------
# math
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1}, finally \\boxed{x^{2} + \\sqrt{\\frac{a}{b}}}", "x^{2} + \\sqrt{\\frac{a}{b}}"),
        ("\\boxed{3} then an unclosed \\boxed{4", "3"),
        ("\\fbox{7}", "7"),
        ("no box here", None),
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_math_answer_preferences():
    assert extract_math_answer("We get 3 + 4 = 7. \\boxed{7}") == "7"
    assert extract_math_answer("work\n#### 1,200") == "1200"
    assert extract_math_answer("She pays $1,250 and then 3 more, 1,253 in total.") == "1253"
    assert extract_math_answer("nothing numeric") is None


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("The result is \\boxed{0.5}.", "\\frac{1}{2}"),
        ("She makes 9 * 2 = 18 dollars every day.", "Janet sells 9 eggs.\n#### 18"),
        ("So the answer is \\boxed{18}", "#### 18"),
        ("The profit is $70,000.", "#### 70,000"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{(3,\\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
    ],
)
def test_math_equal_right(prediction, reference):
    assert math_equal(prediction, reference)


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("So the answer is \\boxed{17}", "#### 18"),
        ("She makes 9 * 2 = 19 dollars.", "#### 18"),
        ("I do not know.", "#### 18"),
        ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("", "9"),
    ],
)
def test_math_equal_wrong(prediction, reference):
    assert not math_equal(prediction, reference)


# ---------------------------------------------------------------------------------------------------------------------
# code
# ---------------------------------------------------------------------------------------------------------------------


def test_extract_code_from_fences_and_raw():
    completion = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nExample:\n```python\nprint(f(1))\n```"
    assert extract_code(completion) == "def f(x):\n    return x + 1"
    assert extract_code("def g():\n    return 2\n") == "def g():\n    return 2"
    # A generation cut at its budget leaves the final fence open.
    assert extract_code("```py\ndef h():\n    return 3\n") == "def h():\n    return 3"
    # Python blocks are preferred over blocks in other languages.
    assert extract_code("```bash\npip install x\n```\n```python\nx = 1\n```") == "x = 1"


def test_code_refuses_without_opt_in(no_code_eval_env):
    with pytest.raises(ValueError, match=CODE_EXECUTION_ENV_VAR):
        code_passes("x = 1", "assert x == 1")
    with pytest.raises(ValueError, match="allow_code_execution=True"):
        get_scorer("code")


def test_code_env_var_opt_in(monkeypatch):
    monkeypatch.setenv(CODE_EXECUTION_ENV_VAR, "1")
    assert code_passes("x = 1", "assert x == 1")


def test_code_passes_right_and_wrong(no_code_eval_env):
    program = "def add(a, b):\n    return a + b\n"
    assert code_passes(program, "assert add(2, 3) == 5", allow_code_execution=True)
    assert not code_passes(program, "assert add(2, 3) == 6", allow_code_execution=True)
    assert not code_passes("def add(a, b)\n    return a + b\n", "assert add(2, 3) == 5", allow_code_execution=True)
    assert not code_passes("raise RuntimeError('boom')", "", allow_code_execution=True)


def test_code_infinite_loop_times_out(no_code_eval_env):
    # The program passes its asserts, then hangs: stopped at the timeout and reported wrong.
    program = "def f():\n    return 1\n"
    tests = "assert f() == 1\nwhile True:\n    pass\n"
    start = time.perf_counter()
    assert not code_passes(program, tests, timeout=1, allow_code_execution=True)
    assert 0.9 < time.perf_counter() - start < 10


def test_execute_code_timeout_status(no_code_eval_env):
    result = execute_code("while True:\n    pass\n", "", timeout=0.3, allow_code_execution=True)
    assert not result.passed
    assert result.status == "timeout" and result.returncode is None


def test_execute_code_reports_failure_details(no_code_eval_env):
    result = execute_code("x = 1", "assert x == 2, 'x is not two'", allow_code_execution=True)
    assert result.status == "failed" and result.returncode != 0
    assert "x is not two" in result.stderr


def test_code_runs_in_temporary_directory(no_code_eval_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert code_passes("import os\nopen('out.txt', 'w').write('x')", "", allow_code_execution=True)
    assert not (tmp_path / "out.txt").exists()


def test_code_scorer_extracts_and_runs(no_code_eval_env):
    scorer = get_scorer("code", allow_code_execution=True, timeout=5.0)
    good = "Sure.\n```python\ndef square(x: int) -> List[int]:\n    return x * x\n```"  # List needs the header
    bad = "```python\ndef square(x):\n    return x + x\n```"
    tests = "assert square(3) == 9\nassert square(0) == 0"
    assert scorer(good, tests)
    assert not scorer(bad, tests)


# ---------------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------------


def test_get_scorer_registry():
    assert get_scorer("exact_match")("a", " a ")
    assert get_scorer("exact_match", normalize=True)("The A.", "a")
    assert get_scorer("math")("\\boxed{\\frac{1}{2}}", "0.5")
    with pytest.raises(ValueError, match="Valid scorers: .*code.*exact_match.*math"):
        get_scorer("bleu")


@pytest.fixture
def scorer_name():
    name = "test_registry_scorer"
    yield name
    scorers_module._SCORERS.pop(name, None)


def test_register_scorer_refuses_to_replace_unless_told(scorer_name):
    def first(prediction, reference):
        return prediction == reference

    def second(prediction, reference):
        return prediction != reference

    register_scorer(scorer_name, first)
    register_scorer(scorer_name, first)  # the same function again is no replacement
    with pytest.raises(ValueError, match=rf"'{scorer_name}' is already registered.*overwrite=True"):
        register_scorer(scorer_name, second)
    assert get_scorer(scorer_name) is first
    register_scorer(scorer_name, second, overwrite=True)
    assert get_scorer(scorer_name) is second
    with pytest.raises(ValueError, match="built-in"):
        register_scorer("code", second, overwrite=True)
    with pytest.raises(TypeError, match="callable"):
        register_scorer(scorer_name, "not a function", overwrite=True)
