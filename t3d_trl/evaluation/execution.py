"""Running model-written programs against their tests, as a guard against honest mistakes (not a sandbox).

:func:`execute_code` runs a program and its test code in a separate Python process (``python -s``, a temporary
directory, a minimal environment) under resource limits (time, CPU time, memory, file size, processes, open files),
kills the whole process group when it ends and at the timeout, and counts a run as passed only when the tests are seen
to have run to their end (a nonce the launcher writes after them). It is opt-in (``HF_ALLOW_CODE_EVAL=1`` or
``allow_code_execution=True``); the threat model is in ``docs/evaluation.md`` ("Running generated code: what is
limited, and what is not").
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import numbers
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CODE_EXECUTION_ENV_VAR",
    "CodeExecutionResult",
    "check_code_options",
    "code_passes",
    "execute_code",
]

CODE_EXECUTION_ENV_VAR = "HF_ALLOW_CODE_EVAL"

_CODE_EXECUTION_WARNING = (
    "The 'code' scorer executes untrusted, model-generated code. It runs in a separate Python process in a "
    "temporary directory, with a minimal environment, a timeout and resource limits, but this is NOT a security "
    "sandbox: the code can read your files, write wherever your user may, use the network and harm your system. "
    "Only run it in a disposable, isolated environment (a container or VM). To accept this risk, set the environment "
    f"variable {CODE_EXECUTION_ENV_VAR}=1 (for example `os.environ['{CODE_EXECUTION_ENV_VAR}'] = '1'`) or pass "
    "allow_code_execution=True."
)

# Imports made available to every program, as HumanEval/MBPP solutions commonly assume them (e.g. ``List`` in
# HumanEval signatures whose imports a chat model leaves out).
_IMPORT_HEADER = (
    "import math\nimport re\nimport sys\nimport copy\nimport string\nimport heapq\nimport bisect\nimport itertools\n"
    "import functools\nimport collections\nimport random\nimport statistics\nimport hashlib\nimport datetime\n"
    "from typing import *\nfrom collections import *\n"
)

# Runs inside the child: ``python -s -c _CHILD_LAUNCHER program.py RLIMIT_AS=<bytes> ...``. It reads the completion
# nonce from stdin (the parent writes it there and closes the pipe), keeps a private, non-inheritable copy of stdout as
# the report channel and gives the program an empty stdin and a stdout to /dev/null. It sets every limit as both soft
# and hard limit (so that a program not run as root cannot raise it again), drops the working directory from sys.path
# (as ``-I`` would), then runs the program and its tests as a module named ``solution`` (not ``__main__``: a program's
# ``if __name__ == "__main__":`` block, often a demo that reads stdin, does not run, as in HumanEval's harness). Only when they have run to their end does it write
# "<nonce>:<its pid>" to the report channel (a forked copy of the process writes another pid). The nonce lives only in
# this function's locals. A limit that cannot be set is reported as "!<limit> <error>".
_CHILD_LAUNCHER = r"""
import os
import sys


def _launch():
    read, write, getpid = os.read, os.write, os.getpid  # bound before the program could replace them
    nonce = b""
    chunk = read(0, 256)
    while chunk:
        nonce += chunk
        chunk = read(0, 256)
    report = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    path, limits, item = sys.argv[1], sys.argv[2:], "import resource"
    try:
        if limits:
            import resource
        for item in limits:
            name, value = item.split("=")
            kind, value = getattr(resource, name), int(value)
            hard = resource.getrlimit(kind)[1]
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(kind, (value, value))
    except Exception as error:
        write(report, ("!%s %r" % (item, error)).encode())
        os._exit(3)
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    sys.argv = [path]
    with open(path, encoding="utf-8") as f:
        source = f.read()
    module = type(sys)("solution")
    module.__file__ = path
    sys.modules["solution"] = module
    exec(compile(source, path, "exec"), module.__dict__)
    write(report, nonce + b":" + str(getpid()).encode() + b"\n")


_launch()
"""

# Set in the child's environment (so inherited by everything it starts): finds descendants that left the group.
_RUN_MARKER_VAR = "T3D_CODE_EVAL_RUN"
_PROCESS_GROUPS = hasattr(os, "killpg")
_HAS_RESOURCE = importlib.util.find_spec("resource") is not None  # the child sets the limits with it

# Resource limits: the argument of execute_code, the rlimit it sets and the unit of the argument.
_RLIMITS = {
    "memory_limit_mb": ("RLIMIT_AS", 1 << 20),
    "file_size_limit_mb": ("RLIMIT_FSIZE", 1 << 20),
    "max_processes": ("RLIMIT_NPROC", 1),
    "max_open_files": ("RLIMIT_NOFILE", 1),
}
_LIMIT_ARGUMENTS = ("timeout", "cpu_time_limit", *_RLIMITS)


@dataclass
class CodeExecutionResult:
    """Outcome of :func:`execute_code`.

    Attributes:
        passed: Whether the program and its tests ran to their end, with exit status 0, within the limits.
        status: One of ``"passed"``; ``"failed"`` (non-zero exit status: failed assert, exception, syntax error,
            killed by a signal or a CPU-time limit); ``"timeout"``; or ``"exited_early"`` (exit status 0, but the
            process ended before the tests were seen to finish: ``sys.exit()``, ``os._exit(0)``, ``quit()``,
            ``raise SystemExit`` in the program or in the tests).
        returncode: Exit status of the child process (negative: killed by that signal; None on timeout).
        stderr: The last few KiB of the child's standard error, for diagnostics.
    """

    passed: bool
    status: str
    returncode: int | None
    stderr: str = ""


def _code_execution_allowed(allow_code_execution: bool) -> bool:
    return allow_code_execution or os.environ.get(CODE_EXECUTION_ENV_VAR, "") == "1"


def _check_code_execution_allowed(allow_code_execution: bool) -> None:
    if not _code_execution_allowed(allow_code_execution):
        raise ValueError(_CODE_EXECUTION_WARNING)


def _check_limit(name: str, value: Any, *, integer: bool, optional: bool = True) -> None:
    """Raise a ValueError naming the argument unless ``value`` is positive and finite (or None where optional)."""
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    valid = not isinstance(value, bool) and isinstance(value, kind)
    valid = valid and (isinstance(value, numbers.Integral) or math.isfinite(value)) and value > 0
    if not valid:
        accepted = "a positive integer" if integer else "a positive, finite number of seconds"
        raise ValueError(f"{name} must be {accepted}{' or None (no limit)' if optional else ''}, got {value!r}.")


def _resource_limits(
    *,
    timeout: float,
    cpu_time_limit: float | None,
    memory_limit_mb: int | None,
    file_size_limit_mb: int | None,
    max_processes: int | None,
    max_open_files: int | None,
) -> dict[str, int]:
    """Validate the limits of :func:`execute_code`.

    Returns:
        ``{rlimit name: value}``; ``RLIMIT_NPROC`` holds only the processes the program may add.

    Raises:
        ValueError: Naming the first invalid argument, its value and what is accepted.
    """
    if memory_limit_mb == 0 and not isinstance(memory_limit_mb, bool):
        memory_limit_mb = None  # the former spelling of "no memory limit"
    _check_limit("timeout", timeout, integer=False, optional=False)
    _check_limit("cpu_time_limit", cpu_time_limit, integer=False)
    values = {
        "memory_limit_mb": memory_limit_mb,
        "file_size_limit_mb": file_size_limit_mb,
        "max_processes": max_processes,
        "max_open_files": max_open_files,
    }
    for name, value in values.items():
        _check_limit(name, value, integer=True)
    cpu_seconds = math.ceil(cpu_time_limit) if cpu_time_limit is not None else math.ceil(timeout) + 1
    limits = {"RLIMIT_CORE": 0, "RLIMIT_CPU": cpu_seconds}
    limits.update({_RLIMITS[name][0]: int(value) * _RLIMITS[name][1] for name, value in values.items() if value})
    return limits


def _user_task_count() -> int | None:
    """Processes and threads of this user, as Linux's RLIMIT_NPROC counts them (approximately: by effective uid,
    in this PID namespace), from ``/proc``; None where there is no ``/proc``."""
    uid = os.getuid()
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    count = 0
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += os.stat(f"/proc/{pid}/task").st_nlink - 2  # one subdirectory per thread
        except OSError:
            continue  # ended meanwhile
    return count


def _applicable_limits(limits: dict[str, int]) -> dict[str, int]:
    """The limits this platform can apply, ``RLIMIT_NPROC`` raised by the processes the user runs already."""
    if not _HAS_RESOURCE:  # pragma: no cover - Windows
        warnings.warn(
            "No `resource` module: the code scorer runs programs without resource limits.", RuntimeWarning, stacklevel=3
        )
        return {}
    if "RLIMIT_NPROC" not in limits:
        return limits
    running = _user_task_count()
    if running is None:  # pragma: no cover - no /proc (macOS, BSD)
        warnings.warn(
            "max_processes is not applied: this system has no /proc to count the user's processes.",
            RuntimeWarning,
            stacklevel=3,
        )
        return {name: value for name, value in limits.items() if name != "RLIMIT_NPROC"}
    return {**limits, "RLIMIT_NPROC": running + limits["RLIMIT_NPROC"]}


def _child_environment(directory: str, marker: str) -> dict[str, str]:
    """The child's whole environment: of the parent's, only ``PATH`` (no tokens, keys or ``PYTHON*`` variables)."""
    home, temp = os.path.join(directory, "home"), os.path.join(directory, "tmp")
    os.mkdir(home)
    os.mkdir(temp)
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": home,
        "TMPDIR": temp,
        "TEMP": temp,
        "TMP": temp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        _RUN_MARKER_VAR: marker,
    }
    if os.name == "nt" and "SYSTEMROOT" in os.environ:  # pragma: no cover - Python cannot start without it there
        env["SYSTEMROOT"] = os.environ["SYSTEMROOT"]
    return env


def _wait_for_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the child to end, without reaping it where the platform allows.

    An unreaped child keeps its pid, and so its process group id, reserved: the group can then be killed without the
    risk of hitting an unrelated group that reused the number. Uses a pidfd (Linux 5.3+), else polls
    ``waitid(WNOWAIT)``, else ``Popen.wait`` (which reaps).

    Returns:
        Whether the child ended in time.
    """
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(proc.pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            while not poller.poll(1000 * min(max(deadline - time.monotonic(), 0.0), 3600.0)):
                if time.monotonic() >= deadline:
                    return False
            return True
        finally:
            os.close(pidfd)
    if hasattr(os, "waitid"):
        delay = 0.0005
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
            delay = min(2 * delay, 0.02)
        return True
    try:  # pragma: no cover - macOS before Python 3.13, Windows
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:  # pragma: no cover
        return False


def _initial_environment(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _kill_if_marked(pid: int, entry: bytes) -> bool:
    """SIGKILL the process if its environment holds ``entry``; through a pidfd where possible, so that a pid reused
    between the check and the signal is never hit."""
    try:
        pidfd = os.pidfd_open(pid)  # type: ignore[attr-defined]
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):
        pidfd = None
    try:
        if entry not in _initial_environment(pid):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # type: ignore[attr-defined]
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_marked_processes(entry: bytes) -> None:
    """SIGKILL every process whose initial environment holds ``entry`` (Linux ``/proc``), until none is left.

    This finds what left the process group (``setsid``, a double fork), as long as it kept the environment it was
    started with: a process started with another environment (``execve`` with a new ``env``) is not found.
    """
    own = os.getpid()
    for _ in range(100):
        try:
            pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        except OSError:  # pragma: no cover - no /proc
            return
        marked = [pid for pid in pids if pid != own and entry in _initial_environment(pid)]
        if not [pid for pid in marked if _kill_if_marked(pid, entry)]:
            return
        time.sleep(0.001)  # let the killed ones die before looking again


def _kill_process_tree(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL the child's process group, then its descendants that left the group (see above)."""
    if not _PROCESS_GROUPS:  # pragma: no cover - Windows
        proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group
    _kill_marked_processes(f"{_RUN_MARKER_VAR}={marker}".encode())


def _read_available(pipe: Any, limit: int = 1 << 16) -> bytes:
    """What is in a pipe now, without waiting for a writer that escaped the kill to close it."""
    fd = pipe.fileno()
    if os.name == "posix":
        os.set_blocking(fd, False)
    data = b""
    while len(data) < limit:
        try:
            chunk = os.read(fd, limit)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _tail(path: str, size: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - size))
        return f.read().decode("utf-8", errors="replace")


def execute_code(
    program: str,
    test_code: str = "",
    timeout: float = 3.0,
    *,
    allow_code_execution: bool = False,
    memory_limit_mb: int | None = 4096,
    add_imports: bool = True,
    cpu_time_limit: float | None = None,
    file_size_limit_mb: int | None = 64,
    max_processes: int | None = 64,
    max_open_files: int | None = 256,
) -> CodeExecutionResult:
    """Run a program followed by its tests in a separate Python process.

    The source (a header of common standard-library imports, ``program``, then ``test_code``) is written to a
    fresh temporary directory, the working directory of the child: ``sys.executable -s`` (no user site-packages),
    with a minimal environment (``PATH``, ``HOME`` and ``TMPDIR`` inside the temporary directory, a UTF-8 locale,
    ``PYTHONHASHSEED=0``; none of the parent's tokens, keys or ``PYTHON*`` variables), an empty stdin and stdout to
    ``/dev/null``, in a new session; it runs as a module named ``solution`` (its ``if __name__ == "__main__":`` block
    does not run). The program passes only if its tests are seen to run to their end: the parent
    hands the child a fresh random nonce through a pipe that the launcher empties before the program starts, and the
    launcher writes it back, on a private channel, only once the program and its tests have run without raising
    (``SystemExit`` included); the parent then requires exit status 0 and the nonce. When the child ends or at the
    timeout, its whole process group is killed, and on Linux also every process that left the group but still
    carries the run's marker in its environment. This guards against mistakes of generated code, it is not a
    security sandbox (see ``docs/evaluation.md``).

    Args:
        program: Code under test.
        test_code: Test code (asserts, or a ``check(...)`` call) run after the program.
        timeout: Wall-clock limit in seconds.
        allow_code_execution: Accept the risk of running untrusted code; alternatively set
            ``HF_ALLOW_CODE_EVAL=1``.
        memory_limit_mb: Address-space limit of the child in MiB (``RLIMIT_AS``); None (or 0) for none.
        add_imports: Prepend imports of common standard-library modules and ``from typing import *``.
        cpu_time_limit: CPU seconds of the child (``RLIMIT_CPU``, rounded up); None for the timeout plus one second.
        file_size_limit_mb: Largest file the child may write, in MiB (``RLIMIT_FSIZE``); None for none.
        max_processes: Processes and threads the child may add to those its user runs already (``RLIMIT_NPROC``,
            which counts all processes of the user; it does not apply to root). None for none.
        max_open_files: Open file descriptors of each process (``RLIMIT_NOFILE``); None for none.

    Returns:
        A :class:`CodeExecutionResult`.

    Raises:
        ValueError: If code execution was not explicitly allowed, or a limit is not a positive number (the message
            names the argument).
        RuntimeError: If the child could not apply a limit (pass None for that limit to run without it).
    """
    _check_code_execution_allowed(allow_code_execution)
    limits = _applicable_limits(
        _resource_limits(
            timeout=timeout,
            cpu_time_limit=cpu_time_limit,
            memory_limit_mb=memory_limit_mb,
            file_size_limit_mb=file_size_limit_mb,
            max_processes=max_processes,
            max_open_files=max_open_files,
        )
    )
    source = (_IMPORT_HEADER if add_imports else "") + program + "\n\n" + test_code + "\n"
    nonce, marker = secrets.token_hex(16).encode(), secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="t3d_code_eval_") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:  # undecodable: the child fails on it
            f.write(source)
        env = _child_environment(tmp, marker)
        stderr_path = os.path.join(tmp, "stderr.txt")
        with open(stderr_path, "wb") as stderr_file:
            proc = subprocess.Popen(
                [sys.executable, "-s", "-c", _CHILD_LAUNCHER, path, *(f"{k}={v}" for k, v in limits.items())],
                cwd=tmp,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                start_new_session=_PROCESS_GROUPS,
            )
        try:
            try:
                os.write(proc.stdin.fileno(), nonce)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the child ended already
            exited = _wait_for_exit(proc, timeout)
        finally:
            _kill_process_tree(proc, marker)
            returncode = proc.wait()
            report = _read_available(proc.stdout)
            proc.stdout.close()
        stderr = _tail(stderr_path)
    if report.startswith(b"!"):
        item, _, error = report[1:].decode(errors="replace").partition(" ")
        argument = next((a for a, (name, _) in _RLIMITS.items() if item.startswith(name + "=")), "cpu_time_limit")
        raise RuntimeError(
            f"The code-execution child could not apply the limit {item} ({error}); pass {argument}=None to run "
            "without it."
        )
    if not exited:
        return CodeExecutionResult(passed=False, status="timeout", returncode=None, stderr=stderr)
    if returncode != 0:
        return CodeExecutionResult(passed=False, status="failed", returncode=returncode, stderr=stderr)
    if nonce + b":" + str(proc.pid).encode() not in report.splitlines():
        return CodeExecutionResult(passed=False, status="exited_early", returncode=0, stderr=stderr)
    return CodeExecutionResult(passed=True, status="passed", returncode=0, stderr=stderr)


def _code_options(timeout: float, allow_code_execution: bool, limits: dict[str, Any]) -> dict[str, Any]:
    return {"timeout": timeout, "allow_code_execution": allow_code_execution, **limits}


def code_passes(
    program: str,
    test_code: str,
    timeout: float = 3.0,
    *,
    allow_code_execution: bool = False,
    **limits: Any,
) -> bool:
    """Whether a program passes its tests; see :func:`execute_code`.

    Args:
        program: Code under test.
        test_code: Test code run after the program (asserts or a ``check(entry_point)`` call).
        timeout: Wall-clock limit in seconds; running longer counts as failing.
        allow_code_execution: Accept the risk of running untrusted code; alternatively set
            ``HF_ALLOW_CODE_EVAL=1``.
        **limits: Other keyword arguments of :func:`execute_code`: ``memory_limit_mb``, ``cpu_time_limit``,
            ``file_size_limit_mb``, ``max_processes``, ``max_open_files``, ``add_imports``.

    Returns:
        True only if the program and its tests ran to their end without error, with exit status 0, within the
        timeout and limits. A child that cannot even be started (an ``OSError``, such as no process or file left
        to this user) counts as failing, with a ``RuntimeWarning``.

    Raises:
        ValueError: If code execution was not explicitly allowed, or a limit is invalid.
        TypeError: If a keyword argument is not one of :func:`execute_code`'s.
        RuntimeError: If the child could not apply a limit.
    """
    try:
        result = execute_code(program, test_code, **_code_options(timeout, allow_code_execution, limits))
    except OSError as error:
        warnings.warn(
            f"The code scorer could not start a program ({error!r}); it counts as failing.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return result.passed


def check_code_options(options: dict[str, Any]) -> None:
    """Check the keyword arguments of the code scorer (names and limit values) before anything is generated."""
    signature = inspect.signature(execute_code)
    try:
        bound = signature.bind("", "", **options)
    except TypeError as error:
        accepted = ", ".join(list(signature.parameters)[2:])
        raise TypeError(f"The 'code' scorer: {error}. It accepts: {accepted}.") from None
    bound.apply_defaults()
    _resource_limits(**{name: bound.arguments[name] for name in _LIMIT_ARGUMENTS})
