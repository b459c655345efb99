"""The reference of a code problem: its tests, and the prefix its prompt ends with.

A code problem's ``reference`` is either a test program (a string of asserts, or a HumanEval ``check(...)`` call), or a
JSON object string ``{"tests": [test, ...], "prefix": "..."}``, the layout of the official T3D MBPP and HumanEval rows:
``tests`` run in order after the program, and ``prefix`` is the start of the answer the prompt already holds (for
HumanEval, an opened ```` ```python ```` fence with the function's signature and docstring), which the model's
completion continues. Both code scorers (``code`` and ``paper_code``) read either form through
:func:`parse_code_reference`; :func:`code_reference` writes the JSON form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CodeReference", "code_reference", "parse_code_reference"]


@dataclass(frozen=True)
class CodeReference:
    """A code problem's tests and prompt prefix.

    Attributes:
        tests: Test snippets, run in order after the program; the problem is solved when every one passes.
        prefix: The start of the answer that the prompt holds and the completion continues ("" when none).
    """

    tests: tuple[str, ...]
    prefix: str = ""

    @property
    def test_program(self) -> str:
        """The tests as one program, each snippet on its own lines."""
        return "\n".join(test.rstrip("\n") for test in self.tests) + "\n"


def code_reference(tests: Sequence[str] | str, prefix: str = "") -> str:
    """The JSON reference of a code problem (the official T3D layout), for a dataset's ``reference`` column.

    Args:
        tests: The test snippets (a single string is one snippet).
        prefix: The start of the answer the prompt holds, which completions continue.

    Returns:
        ``'{"tests": [...], "prefix": "..."}'``.

    Raises:
        TypeError: If a test or the prefix is not a string.
    """
    tests = [tests] if isinstance(tests, str) else list(tests)
    bad = [test for test in tests if not isinstance(test, str)]
    if bad or not isinstance(prefix, str):
        raise TypeError(
            f"code_reference takes test strings and a prefix string, got tests {tests!r} and prefix {prefix!r}."
        )
    return json.dumps({"tests": tests, "prefix": prefix}, ensure_ascii=False)


def parse_code_reference(reference: str) -> CodeReference:
    """Read a code problem's reference: a JSON object with ``tests`` (and optionally ``prefix``), else a test program.

    Args:
        reference: The ``reference`` of a code row.

    Returns:
        The tests and prefix; a plain test program is one test with an empty prefix.

    Raises:
        TypeError: If ``reference`` is not a string.
        ValueError: If it is a JSON object whose ``tests`` is not a list of strings or whose ``prefix`` is not a
            string.
    """
    if not isinstance(reference, str):
        raise TypeError(f"A code reference must be a string, got {type(reference).__name__} ({reference!r}).")
    text = reference.strip()
    if not text.startswith("{"):
        return CodeReference((reference,))
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return CodeReference((reference,))  # a test program that starts with a brace (a dict literal)
    if not isinstance(data, dict) or "tests" not in data:
        return CodeReference((reference,))
    tests, prefix = data["tests"], data.get("prefix", "")
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list) or not all(isinstance(test, str) for test in tests):
        raise ValueError(f"The code reference's `tests` must be a list of strings, got {tests!r}.")
    if prefix is None:
        prefix = ""
    if not isinstance(prefix, str):
        raise ValueError(f"The code reference's `prefix` must be a string, got {prefix!r}.")
    return CodeReference(tuple(tests), prefix)
