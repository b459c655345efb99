"""Tests of t3d_trl.evaluation.scorers."""

import os
import re
import signal
import time

import pytest

import t3d_trl.evaluation.execution as execution_module
import t3d_trl.evaluation.scorers as scorers_module
from t3d_trl.evaluation import (
    CODE_EXECUTION_ENV_VAR,
    code_passes,
    code_program,
    exact_match,
    execute_code,
    extract_boxed,
    extract_code,
    extract_math_answer,
    get_scorer,
    math_equal,
    register_scorer,
    scorer_info,
)
from t3d_trl.evaluation.execution import _user_task_count

try:
    import resource
except ImportError:  # Windows
    resource = None


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


@pytest.mark.parametrize("scorer", ["exact_match", "math", "code"])
def test_exact_match_none_names_the_argument(scorer, monkeypatch):
    """A missing completion or reference (None) is refused with the argument's name, not an AttributeError."""
    monkeypatch.setenv(CODE_EXECUTION_ENV_VAR, "1")
    with pytest.raises(TypeError, match=rf"{scorer}: `prediction` must be a string, got NoneType"):
        get_scorer(scorer)(None, "Paris")
    with pytest.raises(TypeError, match=rf"{scorer}: `reference` must be a string, got NoneType"):
        get_scorer(scorer)("Paris", None)


def test_boxed_1e400_does_not_equal_1e401():
    assert not math_equal("\\boxed{1e400}", "1e401")  # floats would both overflow to inf
    assert math_equal("\\boxed{1e400}", "1e400") and math_equal("\\boxed{1.0e400}", "10e399")


def test_inf_equals_inf():
    assert math_equal("inf", "inf") and math_equal("\\boxed{inf}", "inf") and math_equal("\\boxed{\\infty}", "\\infty")
    assert not math_equal("inf", "-inf")


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
    assert extract_math_answer("She pays $1,250.\nThe answer is $1,253$.") == "1,253"
    # The last number of a chain of thought is not taken unless asked for (it is often not the answer).
    text = "She pays $1,250 and then 3 more, 1,253 in total."
    assert extract_math_answer(text) is None
    assert extract_math_answer(text, last_number_fallback=True) == "1253"
    assert extract_math_answer("0.5") == "0.5"  # a bare answer: one short line
    assert extract_math_answer("nothing numeric but a long sentence without any answer") is None


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("The result is \\boxed{0.5}.", "\\frac{1}{2}"),
        ("She makes 9 * 2 = 18 dollars every day.\nThe answer is 18.", "Janet sells 9 eggs.\n#### 18"),
        ("So the answer is \\boxed{18}", "#### 18"),
        ("The profit is $70,000.\n#### 70,000", "#### 70,000"),
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


def test_extract_code_joins_the_blocks_that_define_something():
    helper, solution = "def _sq(x):\n    return x * x", "def f(x):\n    return _sq(x) + 1"
    completion = f"```python\n{helper}\n```\nthen\n```python\n{solution}\n```\nexample:\n```python\nprint(f(2))\n```"
    assert extract_code(completion) == f"{helper}\n\n{solution}"  # the example call is left out
    assert extract_code("```python\nprint(1)\n```\n```python\nprint(2)\n```") == "print(2)"  # none defines: the last
    indented = "1. Code:\n\n   ```python\n   import math\n\n   def f():\n       return math.pi\n   ```"
    assert extract_code(indented) == "import math\n\ndef f():\n    return math.pi"  # dedented as a whole


def test_code_program_continues_a_prefix_that_opens_a_block():
    prefix = '```python\ndef inc(x):\n    """x + 1"""\n'
    assert code_program("    return x + 1\n```\nDone.", prefix) == 'def inc(x):\n    """x + 1"""\n    return x + 1'
    own_block = "\n```\nHere:\n```python\ndef inc(x):\n    return x + 1\n```"
    assert code_program(own_block, prefix) == "def inc(x):\n    return x + 1"  # it closed the block and wrote its own
    assert code_program("Sure! Here it is.", prefix) == "Sure! Here it is."  # prose does not continue the code
    assert code_program("    return x + 1", "") == "    return x + 1"  # no prefix: the completion itself


def test_the_last_number_fallback_is_an_option_off_by_default():
    completion = "She sells 9 eggs at $2 each, so she makes 18 dollars a day"
    assert not get_scorer("math")(completion, "18")
    assert get_scorer("math", last_number_fallback=True)(completion, "18")


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
    assert not code_passes(program, tests, timeout=1, allow_code_execution=True)
    # stopped by the timeout, not failed otherwise (a status, so that a loaded machine cannot change the verdict)
    result = execute_code(program, tests, timeout=1, allow_code_execution=True)
    assert result.status == "timeout" and result.returncode is None


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


# Programs that end their own process before the tests run: each is followed by tests that fail if they run.
EARLY_EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "sys.exit()": "import sys\nsys.exit()\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "raise SystemExit": "raise SystemExit\n",
    "raise SystemExit(0)": "raise SystemExit(0)\n",
    "quit()": "quit()\n",
    "exit()": "exit()\n",
    "caught and re-raised": "import sys\ntry:\n    sys.exit(0)\nexcept SystemExit:\n    raise\n",
    "caught and re-raised as e": "try:\n    raise SystemExit(0)\nexcept SystemExit as e:\n    raise e\n",
    "exit in finally": "import sys\ntry:\n    x = 1\nfinally:\n    sys.exit(0)\n",
    "SIGTERM handler exits 0": (
        "import os, signal\nsignal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
    ),
    "thread calls os._exit(0)": (
        "import os, threading, time\nthreading.Thread(target=os._exit, args=(0,)).start()\ntime.sleep(30)\n"
    ),
    "atexit hides the failure": "import atexit, os\natexit.register(os._exit, 0)\n",
    "forked copy runs on": "import os\nif os.fork():\n    os._exit(0)\n",
    "writes to every fd, then exits 0": (
        "import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'passed 0123456789abcdef\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\n"
    ),
}


@pytest.mark.parametrize("program", list(EARLY_EXITS.values()), ids=list(EARLY_EXITS))
def test_code_exiting_before_the_tests_end_fails(no_code_eval_env, program):
    result = execute_code(program, "assert False, 'the tests ran'", timeout=30, allow_code_execution=True)
    assert not result.passed
    assert result.status == "exited_early", result


@pytest.mark.parametrize(
    "program",
    [f"import os, signal\nos.kill(os.getpid(), signal.{name})\n" for name in ("SIGKILL", "SIGTERM")],
    ids=["SIGKILL", "SIGTERM"],
)
def test_code_killing_itself_fails(no_code_eval_env, program):
    result = execute_code(program, "", timeout=30, allow_code_execution=True)
    assert not result.passed and result.status == "failed" and result.returncode < 0


def test_code_a_forked_copy_finishing_the_tests_does_not_count(no_code_eval_env):
    # The copy runs the (passing) tests to their end while the original process exits 0 without running them: only
    # the original process's completion counts.
    program = "import os, time\nif os.fork():\n    time.sleep(2)\n    os._exit(0)\n"
    result = execute_code(program, "assert True", timeout=30, allow_code_execution=True)
    assert not result.passed and result.status == "exited_early", result


def test_code_tests_may_catch_system_exit(no_code_eval_env):
    program = "import sys\ndef stop():\n    sys.exit(0)\n"
    tests = "try:\n    stop()\nexcept SystemExit as e:\n    assert e.code == 0\nelse:\n    assert False\n"
    result = execute_code(program, tests, timeout=30, allow_code_execution=True)
    assert result.passed and result.status == "passed", result


def test_code_exit_inside_the_tests_fails(no_code_eval_env):
    # The tests themselves stop before their end: not seen to finish, so not passed (use unittest.main(exit=False)).
    result = execute_code("x = 1", "import sys\nsys.exit(0)\nassert x == 2", timeout=30, allow_code_execution=True)
    assert not result.passed and result.status == "exited_early"


def test_code_output_and_stdin(no_code_eval_env):
    # Lots of output does not block the child; its stdin is empty (the completion nonce is not readable there).
    program = "import sys\nfor _ in range(50):\n    print('x' * 100_000)\nassert sys.stdin.read() == ''\n"
    result = execute_code(program, "", timeout=30, allow_code_execution=True)
    assert result.passed, result


def test_code_child_gets_a_minimal_environment(no_code_eval_env, monkeypatch):
    secrets = {
        "HF_TOKEN": "hf_s3cr3t",
        "AWS_SECRET_ACCESS_KEY": "aws_s3cr3t",
        "OPENAI_API_KEY": "sk_s3cr3t",
        "PYTHONPATH": "/s3cr3t/path",
        "PYTHONSTARTUP": "/s3cr3t/startup.py",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    program = (
        "import os, sys\n"
        "leaked = sorted(k for k, v in os.environ.items() if 's3cr3t' in v)\n"
        "assert not leaked, leaked\n"
        "assert b's3cr3t' not in open('/proc/self/environ', 'rb').read()\n"
        "assert not [p for p in sys.path if 's3cr3t' in p], sys.path\n"
        "assert sys.flags.no_user_site == 1 and sys.flags.hash_randomization == 0\n"
        "assert '' not in sys.path and os.getcwd() not in sys.path, sys.path\n"
        "assert os.environ['HOME'].startswith(os.getcwd()) and os.environ['TMPDIR'].startswith(os.getcwd())\n"
    )
    result = execute_code(program, "", timeout=30, allow_code_execution=True)
    assert result.passed, result.stderr


def _pid_in(stderr: str) -> int:
    match = re.search(r"grandchild (\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def _gone(pid: int, seconds: float = 60.0) -> bool:
    """Whether the process ends (or is a zombie) within ``seconds`` (a wait, generous for a loaded machine: it returns
    as soon as the process is gone)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X") or time.monotonic() > deadline:
            return state in ("Z", "X")
        time.sleep(0.05)


_SPAWN_SLEEPER = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print('grandchild', child.pid, file=sys.stderr, flush=True)\n"
)

_ESCAPE_GROUP = (  # double fork, the middle process in a new session: the grandchild leaves the process group
    "import os, sys, time\n"
    "r, w = os.pipe()\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        os.write(w, str(os.getpid()).encode())\n"
    "        time.sleep(120)\n"
    "    os._exit(0)\n"
    "os.close(w)\n"
    "os.wait()\n"
    "pid = int(os.read(r, 32))\n"
    "assert os.getpgid(pid) != os.getpgid(0)\n"
    "print('grandchild', pid, file=sys.stderr, flush=True)\n"
)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("program", [_SPAWN_SLEEPER, _ESCAPE_GROUP], ids=["in the group", "left the group"])
def test_code_grandchildren_are_killed_at_the_end(no_code_eval_env, program):
    result = execute_code(program, "", timeout=30, allow_code_execution=True)
    assert result.passed, result.stderr
    assert _gone(_pid_in(result.stderr))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_code_timeout_kills_the_whole_group(no_code_eval_env):
    result = execute_code(_SPAWN_SLEEPER + "while True:\n    pass\n", "", timeout=2, allow_code_execution=True)
    assert result.status == "timeout"
    assert _gone(_pid_in(result.stderr))


_LIMITS_REPORT = (
    "import resource, sys\n"
    "for name in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_NPROC', 'RLIMIT_CORE'):\n"
    "    print('limit', name, *resource.getrlimit(getattr(resource, name)), file=sys.stderr)\n"
)


def _child_limits(**limits) -> dict[str, tuple[int, int]]:
    result = execute_code(_LIMITS_REPORT, "", timeout=30, allow_code_execution=True, **limits)
    assert result.passed, result.stderr
    found = re.findall(r"limit (\w+) (-?\d+) (-?\d+)", result.stderr)
    return {name: (int(soft), int(hard)) for name, soft, hard in found}


@pytest.mark.skipif(resource is None, reason="needs the resource module")
def test_code_limits_are_applied_as_soft_and_hard_limits(no_code_eval_env):
    limits = _child_limits(
        memory_limit_mb=512, cpu_time_limit=7.5, file_size_limit_mb=2, max_processes=5, max_open_files=64
    )
    assert limits["RLIMIT_AS"] == (512 << 20, 512 << 20)
    assert limits["RLIMIT_CPU"] == (8, 8)
    assert limits["RLIMIT_FSIZE"] == (2 << 20, 2 << 20)
    assert limits["RLIMIT_NOFILE"] == (64, 64)
    assert limits["RLIMIT_CORE"] == (0, 0)
    # RLIMIT_NPROC counts every process and thread of the user: the child may add 5 to those running now.
    nproc, _ = limits["RLIMIT_NPROC"]
    assert 5 < nproc <= 5 + 2 * _user_task_count() + 100 and limits["RLIMIT_NPROC"] == (nproc, nproc)


@pytest.mark.skipif(resource is None, reason="needs the resource module")
def test_code_limits_none_leaves_them_as_they_are(no_code_eval_env):
    limits = _child_limits(memory_limit_mb=0, file_size_limit_mb=None, max_processes=None, max_open_files=None)
    for name in ("RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC"):
        assert limits[name] == resource.getrlimit(getattr(resource, name)), name
    assert limits["RLIMIT_CPU"][0] == 31  # the default: the timeout (30 s) plus one second


_WRITE_4_MIB = "with open('big.bin', 'wb') as f:\n    f.write(b'0' * (4 << 20))\n"
_ALLOCATE_256_MIB = "block = bytearray(256 << 20)\n"
_OPEN_100_FILES = "files = [open(f'f{i}.txt', 'w') for i in range(100)]\n"


@pytest.mark.skipif(resource is None, reason="needs the resource module")
@pytest.mark.parametrize(
    ("program", "tight", "loose", "message"),
    [
        (_WRITE_4_MIB, {"file_size_limit_mb": 1}, {"file_size_limit_mb": 8}, "File too large"),
        (_ALLOCATE_256_MIB, {"memory_limit_mb": 128}, {"memory_limit_mb": 1024}, "MemoryError"),
        (_OPEN_100_FILES, {"max_open_files": 32}, {}, "Too many open files"),
    ],
    ids=["file size", "memory", "open files"],
)
def test_code_stopped_by_a_limit(no_code_eval_env, program, tight, loose, message):
    stopped = execute_code(program, "", timeout=30, allow_code_execution=True, **tight)
    assert stopped.status == "failed" and message in stopped.stderr, stopped
    assert execute_code(program, "", timeout=30, allow_code_execution=True, **loose).passed


@pytest.mark.skipif(resource is None, reason="needs the resource module")
def test_code_cpu_time_limit(no_code_eval_env):
    # stopped by the CPU-time limit: the 60 s wall timeout would give the status "timeout"
    result = execute_code("while True:\n    pass\n", "", timeout=60, cpu_time_limit=1, allow_code_execution=True)
    assert result.status == "failed" and result.returncode in (-signal.SIGXCPU, -signal.SIGKILL), result


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("timeout", 0),
        ("timeout", -1.0),
        ("timeout", float("nan")),
        ("timeout", float("inf")),
        ("timeout", "3"),
        ("timeout", None),
        ("cpu_time_limit", 0),
        ("cpu_time_limit", float("nan")),
        ("memory_limit_mb", -1),
        ("memory_limit_mb", 1.5),
        ("memory_limit_mb", True),
        ("file_size_limit_mb", 0),
        ("max_processes", -3),
        ("max_open_files", 2.0),
    ],
)
def test_code_invalid_limits_are_refused(no_code_eval_env, argument, value):
    options = {"allow_code_execution": True, argument: value}
    expected = rf"^{argument} must be .*, got {re.escape(repr(value))}\.$"
    for call in (
        lambda: execute_code("x = 1", "", **options),
        lambda: code_passes("x = 1", "", **options),
        lambda: get_scorer("code", **options),
    ):
        with pytest.raises(ValueError, match=expected):
            call()


@pytest.mark.skipif(
    resource is None or resource.getrlimit(resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY,
    reason="needs the resource module and no hard address-space limit",
)
def test_code_limit_the_child_cannot_apply_is_an_error(no_code_eval_env):
    # 2**45 MiB does not fit in an rlimit: refused loudly instead of running without the limit or failing the program.
    with pytest.raises(RuntimeError, match=r"RLIMIT_AS=.*pass memory_limit_mb=None"):
        code_passes("x = 1", "assert x == 1", allow_code_execution=True, memory_limit_mb=2**45)


def test_code_that_cannot_start_fails_with_a_warning(no_code_eval_env, monkeypatch):
    def no_more_processes(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(execution_module.subprocess, "Popen", no_more_processes)
    with pytest.warns(RuntimeWarning, match="could not start a program"):
        assert not code_passes("x = 1", "assert x == 1", allow_code_execution=True)


def test_scorer_keywords_are_checked_when_bound(no_code_eval_env):
    with pytest.raises(TypeError, match="memory_mb"):
        get_scorer("code", allow_code_execution=True, memory_mb=512)
    with pytest.raises(TypeError, match="memory_mb"):
        code_passes("x = 1", "", allow_code_execution=True, memory_mb=512)  # not silently "failed"
    with pytest.raises(TypeError, match="normalise"):
        get_scorer("exact_match", normalise=True)


# ---------------------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------------------


def test_get_scorer_registry():
    assert get_scorer("exact_match")("a", " a ")
    assert get_scorer("exact_match", normalize=True)("The A.", "a")
    assert get_scorer("math")("\\boxed{\\frac{1}{2}}", "0.5")
    with pytest.raises(ValueError, match="Unknown scorer 'bleu'; choose from exact_match, math, code"):
        get_scorer("bleu")


@pytest.fixture
def scorer_name():
    name = "test_registry_scorer"
    yield name
    if name in scorers_module.SCORERS:
        scorers_module.SCORERS.unregister(name)


def test_register_scorer_refuses_to_replace_unless_told(scorer_name):
    def first(prediction, reference):
        return prediction == reference

    def second(prediction, reference):
        return prediction != reference

    register_scorer(scorer_name, first)
    register_scorer(scorer_name, first)  # the same function again is no replacement
    with pytest.raises(ValueError, match=rf"A scorer is already registered as '{scorer_name}'.*overwrite=True"):
        register_scorer(scorer_name, second)
    assert get_scorer(scorer_name) is first
    register_scorer(scorer_name, second, overwrite=True)
    assert get_scorer(scorer_name) is second
    with pytest.raises(ValueError, match="built-in"):
        register_scorer("code", second, overwrite=True)
    with pytest.raises(TypeError, match="callable"):
        register_scorer(scorer_name, "not a function", overwrite=True)


def test_register_scorer_with_a_paper_twin(scorer_name):
    def lenient(prediction, reference):
        return reference in prediction

    register_scorer(scorer_name, lenient, paper="paper_math")
    info = scorer_info(scorer_name)
    assert info.function is lenient and info.paper == "paper_math" and not info.executes_code
    with pytest.raises(ValueError, match="paper twin must be a registered scorer"):
        register_scorer(scorer_name, lenient, paper="no_such_scorer", overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_scorer(scorer_name, lenient, paper=scorer_name)  # other options: a replacement
    register_scorer(scorer_name, lenient, paper=scorer_name, overwrite=True)  # its own twin
    assert scorer_info(scorer_name).paper == scorer_name
    with pytest.raises(ValueError, match="Unknown scorer 'bleu'"):
        scorer_info("bleu")
