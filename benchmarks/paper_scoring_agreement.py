"""Agreement of t3d-trl's scorers with the official T3D reward code, on generated completions.

The official T3D code (https://github.com/Tyrion58/T3D, MIT) scores math with ``reward/math_utils.py`` (on the answer
``sample/sdar_sample.py`` extracts) and code with ``reward/execute.py`` (on the program ``sample/sdar_sample.py``
extracts). This script builds a corpus of MATH500/GSM8K-style and MBPP/HumanEval-style completions by rule, one group
of completions per class of ``docs/evaluation.md`` ("Comparing with the paper"), every one kept whatever the
scorers say; scores each with the official code (run from your checkout, in its own Python environment) and with
t3d-trl's ``paper_math``/``paper_code`` and ``math``/``code``; and prints, per class, how often each agrees with the
official verdict. Nothing of the official code is part of t3d-trl: get it and an environment for it first::

    git clone https://github.com/Tyrion58/T3D /tmp/T3D
    python -m venv /tmp/venv-t3d
    /tmp/venv-t3d/bin/pip install "sympy==1.13.1" "antlr4-python3-runtime==4.11.*" nest_asyncio numpy omegaconf \\
        termcolor tqdm
    HF_ALLOW_CODE_EVAL=1 python benchmarks/paper_scoring_agreement.py --official-repo /tmp/T3D \\
        --official-python /tmp/venv-t3d/bin/python

(``sympy==1.13.1`` is the version torch 2.6, the official requirement, installs; sympy's LaTeX parser needs the ANTLR
runtime 4.11.) The official math comparison is run one item at a time with its LaTeX parser loaded first (what the
code means); ``--as-run`` adds the official scripts' own schedule, every item at once on its 64-thread pool in a
fresh process, where the 1 s time limit of each comparison starts before the parser is loaded and while the item waits
in the queue. Code items where the official runner's accidents decide (a time-out, a crash or an exit counted as a
pass) are counted apart. The generated programs run on this machine (``HF_ALLOW_CODE_EVAL=1``; they are this
script's own, harmless). ``--show N`` prints N disagreements per scorer; ``--dump FILE`` writes every item and verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from t3d_trl.evaluation import get_scorer  # noqa: E402
from t3d_trl.evaluation.code_reference import code_reference  # noqa: E402

# --------------------------------------------------------------------------------------------------------------------
# The math corpus
# --------------------------------------------------------------------------------------------------------------------

# (reference answer, kind, an equivalent form when the kind has a natural one)
MATH_ANSWERS = [
    ("18", "int", None), ("3", "int", None), ("70000", "int", "70,000"), ("540", "int", None), ("20", "int", None),
    ("64", "int", None), ("260", "int", None), ("1200", "int", "1,200"), ("45", "int", None), ("7", "int", None),
    ("104", "int", None), ("36", "int", None), ("5", "int", None), ("13", "int", None), ("2400", "int", "2,400"),
    ("-2", "neg", None), ("-15", "neg", None), ("-\\frac{1}{3}", "neg", "-\\dfrac{1}{3}"),
    ("1.5", "dec", "\\frac{3}{2}"), ("0.25", "dec", "\\frac{1}{4}"), ("12.5", "dec", "\\frac{25}{2}"),
    ("\\frac{14}{3}", "frac", "\\dfrac{14}{3}"), ("\\frac{1}{2}", "frac", "0.5"), ("\\frac{9}{19}", "frac", "9/19"),
    ("\\frac{3}{4}", "frac", "0.75"), ("\\frac{\\sqrt{3}}{2}", "sqrt", "\\frac{1}{2}\\sqrt{3}"),
    ("2\\sqrt{2}", "sqrt", "\\sqrt{8}"), ("3\\sqrt{13}", "sqrt", "\\sqrt{117}"), ("11\\sqrt2", "sqrt", "11\\sqrt{2}"),
    ("\\pi", "sym", None), ("2\\pi", "sym", "2 \\pi"), ("6 - 5i", "complex", "6-5i"), ("p - q", "sym", "-q + p"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "tuple", "(3,\\frac{\\pi}{2})"), ("(1, 23)", "tuple", "\\left(1,23\\right)"),
    ("(2, -3)", "tuple", "(2,-3)"), ("(12, 3)", "tuple", "(12,3)"),
    ("1, 2", "list", "x = 1, x = 2"), ("-2, 1", "list", "x=-2, x=1"), ("3, 5, 7", "list", "3,5,7"),
    ("[2, 5)", "interval", "[2,5)"), ("(-\\infty, -2) \\cup (2, \\infty)", "interval", "(-\\infty,-2)\\cup(2,\\infty)"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "matrix", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & 3 \\end{pmatrix}", "matrix", None),
    ("\\text{Evelyn}", "text", "Evelyn"), ("\\text{(C)}", "text", "C"), ("\\text{odd}", "text", "odd"),
    ("x^2+7x+10", "poly", "(x+2)(x+5)"), ("(x+1)^2", "poly", "x^2+2x+1"), ("2x^2 - 8", "poly", "2(x-2)(x+2)"),
    ("30^\\circ", "angle", "30"), ("120^\\circ", "angle", "120"), ("25\\%", "percent", "25"), ("40\\%", "percent", "40"),
    ("\\$18.90", "money", "18.90"), ("\\$1,250", "money", "1250"), ("5\\text{ cm}", "unit", "5"),
    ("12\\text{ inches}", "unit", "12"), ("y = 2x + 3", "equation", "2x + 3"), ("10", "int", "10.0"),
    ("\\infty", "sym", None), ("1000000", "int", "1,000,000"), ("0", "int", None), ("2^{10}", "power", "1024"),
    ("(3, 14)", "tuple", "(3,14)"), ("(4, 7)", "tuple", None), ("(10, 25)", "tuple", "\\left(10, 25\\right)"),
    ("(0, 5)", "tuple", None), ("2, 3", "list", "x=2, x=3"), ("0, 4", "list", None), ("-1, 5", "list", "5, -1"),
    ("12, 34", "list", None), ("\\begin{pmatrix} 2 \\\\ -1 \\\\ 0 \\end{pmatrix}", "matrix", None),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "matrix", None), ("x^2 - 1", "poly", "(x-1)(x+1)"),
    ("a^2 + 2ab + b^2", "poly", "(a+b)^2"), ("x^3 - x", "poly", "x(x-1)(x+1)"), ("15\\%", "percent", "15"),
    ("75\\%", "percent", None), ("0.4", "dec", "\\frac{2}{5}"),
]  # fmt: skip

_UNITS_GLUED = ["cm", "dollars", " cm", "\\text{cm}", "\\text{ meters}", " mph", "inches", " students", "^\\circ"]
_NUMERIC_KINDS = {"int", "neg", "dec", "money", "unit", "angle", "percent"}


def _chain_of_thought(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
    sentences = [
        f"First, we compute ${a} + {b} = {a + b}$.",
        f"Then we multiply by {c} to get ${(a + b) * c}$.",
        f"We note that {a} and {b} are the two quantities in the problem.",
        f"Subtracting {c} from {a} leaves {a - c}.",
        "Let's reason step by step about the constraints.",
    ]
    rng.shuffle(sentences)
    return " ".join(sentences[: rng.randint(1, 4)])


def _number_of(answer: str) -> str | None:
    """The plain number of a numeric answer (without ``\\$``, units or percent), else None."""
    import re

    match = re.fullmatch(r"(?:\\\$)?(-?[\d,]*\.?\d+)(?:\\%|\^\\circ|\\text\{ [a-z]+\})?", answer)
    return match.group(1).replace(",", "") if match else None


def _perturbed(answer: str, kind: str, rng: random.Random) -> str:
    """A wrong answer near the right one."""
    import re

    numbers = list(re.finditer(r"\d+", answer))
    if kind == "text":
        return rng.choice(["\\text{Evelyn}", "\\text{Brenda}", "\\text{even}", "\\text{(A)}", "\\text{(B)}"])
    if not numbers:
        return answer + "+1"
    target = rng.choice(numbers)
    value = int(target.group(0))
    replacement = str(rng.choice([value + 1, max(value - 1, 0) if value != 1 else 2, value * 10, value + 3]))
    return answer[: target.start()] + replacement + answer[target.end() :]


def _comma_moved(answer: str, rng: random.Random) -> str | None:
    """The digits of a two-number tuple or list split at another place: ``(1, 23)`` for ``(12, 3)``."""
    import re

    match = re.fullmatch(r"(\\left)?\(\s*(\d+),\s*(\d+)\s*(\\right)?\)|(\d+), (\d+)", answer)
    if not match:
        return None
    first, second = (match.group(2), match.group(3)) if match.group(2) else (match.group(5), match.group(6))
    digits = first + second
    cuts = [cut for cut in range(1, len(digits)) if cut != len(first)]
    if not cuts:
        return None
    cut = rng.choice(cuts)
    moved = f"{digits[:cut]}, {digits[cut:]}"
    return f"({moved})" if match.group(2) else moved


def _math_variants(answer: str, kind: str, alternative: str | None, rng: random.Random) -> list[tuple[str, str]]:
    """(class, completion) pairs for one reference answer, each class where it applies."""
    cot = _chain_of_thought(rng)
    variants = [
        ("boxed_same", f"{cot} Therefore the answer is $\\boxed{{{answer}}}$."),
        ("boxed_wrong", f"{cot} So the answer is $\\boxed{{{_perturbed(answer, kind, rng)}}}$."),
        ("answer_line_no_box", f"{cot}\n" + rng.choice([f"The answer is {answer}.", f"#### {answer}", f"Final Answer: {answer}", f"**Answer:** ${answer}$"])),
        ("no_box_last_number_not_answer", f"{cot} The result is {answer}, as we can check by adding {rng.randint(2, 9)} and {rng.randint(2, 9)}."),
        ("no_box_last_number_is_answer", f"{cot} Altogether the total comes to {answer}"),
        ("cut_box", f"{cot} " + rng.choice(["", f"So $\\boxed{{{answer}}}$. Again, "]) + f"the answer is $\\boxed{{{answer[: max(1, len(answer) // 2)]}"),
        ("fbox", f"{cot} The answer is $\\fbox{{{answer}}}$."),
    ]  # fmt: skip
    if " " not in answer and "{" not in answer:
        variants.append(("boxed_without_braces", f"{cot} The answer is $\\boxed {answer}$."))
    if alternative is not None:
        variants.append(("boxed_equivalent_form", f"{cot} Hence $\\boxed{{{alternative}}}$."))
    respaced = answer.replace("\\frac", "\\dfrac").replace(", ", ",")
    variants.append(("boxed_dfrac_spacing", f"{cot} Hence $\\boxed{{{respaced}}}$."))
    number = _number_of(answer)
    if number is not None:
        unit = rng.choice(_UNITS_GLUED)
        variants.append(("units_glued", f"{cot} The answer is $\\boxed{{{number}{unit}}}$."))
        variants.append(
            (
                "thousands_or_trailing_zero",
                f"{cot} $\\boxed{{{int(float(number)):,}}}$"
                if float(number).is_integer()
                else f"{cot} $\\boxed{{{number}0}}$",
            )
        )
    if "-" in answer:
        unicode_minus = answer.replace("-", "\u2212")
        variants.append(("unicode_minus", f"{cot} The answer is $\\boxed{{{unicode_minus}}}$."))
    elif number is not None:
        variants.append(("unicode_minus_wrong_sign", f"{cot} The answer is $\\boxed{{\u2212{answer}}}$."))
    if kind == "matrix":
        variants.append(("bmatrix", f"{cot} $\\boxed{{{answer.replace('pmatrix', 'bmatrix')}}}$"))
    if kind in {"list", "tuple", "interval"}:
        parts = [part.strip() for part in answer.replace("\\left", "").replace("\\right", "").strip("()[]").split(",")]
        swapped = ", ".join(reversed(parts))
        wrapped = swapped if kind == "list" else f"({swapped})"
        variants.append(("reordered", f"{cot} The solutions are $\\boxed{{{wrapped}}}$."))
        if kind == "list":
            variants.append(
                ("solution_list_as_equations", f"{cot} $\\boxed{{{', '.join('x = ' + p for p in parts)}}}$")
            )
            variants.append(
                ("first_comma_same_rest_wrong", f"{cot} $\\boxed{{{parts[0]}, {int(rng.random() * 90) + 10}}}$")
            )
        moved = _comma_moved(answer, rng)
        if moved is not None:
            variants.append(("comma_moved", f"{cot} $\\boxed{{{moved}}}$"))
    if kind == "poly" and alternative is not None:
        variants.append(("expanded_or_factored", f"{cot} Expanding, $\\boxed{{{alternative.replace(' ', '')}}}$."))
    if kind == "percent":
        variants.append(("decimal_for_percent", f"{cot} $\\boxed{{{float(number) / 100:g}}}$"))
    if kind == "dec":
        variants.append(("percent_for_decimal", f"{cot} $\\boxed{{{float(answer) * 100:g}\\%}}$"))
    return variants


def math_corpus(seed: int) -> list[dict]:
    """Completions of every applicable class for every reference answer."""
    rng = random.Random(seed)
    items = []
    for answer, kind, alternative in MATH_ANSWERS:
        for cls, completion in _math_variants(answer, kind, alternative, rng):
            items.append({"class": cls, "completion": completion, "reference": answer})
    return items


# --------------------------------------------------------------------------------------------------------------------
# The code corpus
# --------------------------------------------------------------------------------------------------------------------

# MBPP style: (function, solution, wrong solution, tests, the module the solution imports or None)
MBPP_PROBLEMS = [
    ("square_sum", "def square_sum(n):\n    return sum(i * i for i in range(1, n + 1))",
     "def square_sum(n):\n    return sum(i * i for i in range(1, n))",
     ["assert square_sum(2) == 5", "assert square_sum(3) == 14", "assert square_sum(4) == 30"], None),
    ("is_palindrome", "def is_palindrome(s):\n    s = s.lower()\n    return s == s[::-1]",
     "def is_palindrome(s):\n    return s == s[::-1]",
     ["assert is_palindrome('Aba')", "assert not is_palindrome('abc')", "assert is_palindrome('')"], None),
    ("hypotenuse", "import math\n\n\ndef hypotenuse(a, b):\n    return math.sqrt(a * a + b * b)",
     "import math\n\n\ndef hypotenuse(a, b):\n    return math.sqrt(a + b)",
     ["assert hypotenuse(3, 4) == 5.0", "assert hypotenuse(6, 8) == 10.0", "assert hypotenuse(5, 12) == 13.0"], "math"),
    ("count_vowels", "def count_vowels(s):\n    return sum(1 for ch in s.lower() if ch in 'aeiou')",
     "def count_vowels(s):\n    return sum(1 for ch in s if ch in 'aeiou')",
     ["assert count_vowels('Apple') == 2", "assert count_vowels('xyz') == 0", "assert count_vowels('AEIOU') == 5"], None),
    ("second_largest", "def second_largest(nums):\n    return sorted(set(nums))[-2]",
     "def second_largest(nums):\n    return sorted(nums)[-2]",
     ["assert second_largest([1, 2, 3]) == 2", "assert second_largest([5, 5, 4]) == 4", "assert second_largest([9, 1]) == 1"], None),
    ("lcm", "import math\n\n\ndef lcm(a, b):\n    return a * b // math.gcd(a, b)",
     "def lcm(a, b):\n    return a * b",
     ["assert lcm(4, 6) == 12", "assert lcm(3, 5) == 15", "assert lcm(7, 7) == 7"], "math"),
    ("word_lengths", "from collections import Counter\n\n\ndef word_lengths(text):\n    return Counter(len(w) for w in text.split())",
     "def word_lengths(text):\n    return {len(w): 1 for w in text.split()}",
     ["assert word_lengths('a bb cc') == {1: 1, 2: 2}", "assert word_lengths('') == {}"], "collections"),
]  # fmt: skip

# HumanEval style: (function, prompt: imports, signature and docstring; body; wrong body; check program)
HUMANEVAL_PROBLEMS = [
    ("below_zero", 'from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n    """Whether the running balance ever drops below zero."""\n',
     "    balance = 0\n    for op in operations:\n        balance += op\n        if balance < 0:\n            return True\n    return False",
     "    return sum(operations) < 0",
     "def check(candidate):\n    assert candidate([1, 2, -4, 5]) is True\n    assert candidate([1, 2, 3]) is False\n    assert candidate([]) is False\n\ncheck(below_zero)"),
    ("truncate_number", 'def truncate_number(number: float) -> float:\n    """The decimal part of a positive number."""\n',
     "    return number % 1.0", "    return number - round(number)",
     "def check(candidate):\n    assert candidate(3.5) == 0.5\n    assert abs(candidate(1.25) - 0.25) < 1e-6\n\ncheck(truncate_number)"),
    ("incr_list", 'def incr_list(l: list):\n    """The list with every element incremented by one."""\n',
     "    return [e + 1 for e in l]", "    return [e + 1 for e in l[1:]]",
     "def check(candidate):\n    assert candidate([]) == []\n    assert candidate([3, 2, 1]) == [4, 3, 2]\n\ncheck(incr_list)"),
    ("has_close_elements", 'from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    """Whether two numbers are closer to each other than the threshold."""\n',
     "    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n            if abs(a - b) < threshold:\n                return True\n    return False",
     "    return len(numbers) != len(set(numbers))",
     "def check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0], 0.3) is True\n    assert candidate([1.0, 2.0, 3.0], 0.5) is False\n\ncheck(has_close_elements)"),
    ("fib", 'def fib(n: int):\n    """The n-th Fibonacci number."""\n',
     "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a", "    return n",
     "def check(candidate):\n    assert candidate(10) == 55\n    assert candidate(1) == 1\n    assert candidate(8) == 21\n\ncheck(fib)"),
]  # fmt: skip


def _indented(code: str, by: str = "    ") -> str:
    return "\n".join(by + line if line.strip() else line for line in code.split("\n"))


def _without_imports(code: str) -> str:
    return "\n".join(line for line in code.split("\n") if not line.startswith(("import ", "from "))).strip("\n")


def _mbpp_variants(name: str, good: str, bad: str, module: str | None, rng: random.Random) -> list[tuple[str, str]]:
    fence = lambda code, tag="python": f"```{tag}\n{code}\n```"  # noqa: E731
    intro = rng.choice(["Here is the function:\n", "Sure.\n\n", "", "The solution:\n\n"])
    first_test_argument = {"square_sum": "2", "is_palindrome": "'Aba'", "hypotenuse": "3, 4", "count_vowels": "'xyz'",
                           "second_largest": "[1, 2, 3]", "lcm": "4, 6", "word_lengths": "''"}[name]  # fmt: skip
    body_start = good.index(":\n", good.index("def ")) + 2
    exits = good[:body_start] + "    import sys\n    sys.exit(0)\n" + good[body_start:]
    loops = good[:body_start] + "    while True:\n        pass\n" + good[body_start:]
    helper = f"def _helper(*args):\n    return {name}_impl(*args)\n"
    variants = [
        ("fenced", intro + fence(good)),
        ("fenced_wrong", intro + fence(bad)),
        ("no_fence", good + "\n"),
        ("no_fence_wrong", bad + "\n"),
        ("main_reads_stdin", intro + fence(good + f"\n\n\nif __name__ == \"__main__\":\n    args = input()\n    print({name}({first_test_argument}))")),
        ("several_blocks_example", intro + fence(good) + f"\n\nFor example:\n\n{fence(f'print({name}({first_test_argument}))')}"),
        ("several_blocks_helper", intro + fence(good.replace(f"def {name}(", f"def {name}_impl(")) + "\n\nand the entry point:\n\n" + fence(helper.replace("_helper", name))),
        ("several_blocks_wrong_then_right", fence(bad) + "\n\nWait, that is wrong. Corrected:\n\n" + fence(good)),
        ("several_blocks_right_then_wrong", fence(good) + "\n\nA shorter version:\n\n" + fence(bad)),
        ("indented_fence_in_list", "1. Define the function:\n\n" + _indented(fence(good), "   ") + "\n\n2. Done."),
        ("sys_exit_in_function", intro + fence(exits)),
        ("infinite_loop", intro + fence(loops)),
        ("crash_at_import", intro + fence("import os\nos._exit(1)\n" + good)),
        ("py_tag", intro + fence(good, "py")),
        ("capital_tag", intro + fence(good, "Python")),
        ("unterminated_fence", intro + f"```python\n{good}\n"),
    ]  # fmt: skip
    if module is not None:
        variants.append(("missing_import", intro + fence(_without_imports(good))))
    return variants


def _humaneval_variants(name: str, prompt: str, body: str, bad: str, rng: random.Random) -> list[tuple[str, str]]:
    full = prompt + body
    variants = [
        ("body_only", body + "\n```"),
        ("body_only_wrong", bad + "\n```"),
        ("body_only_no_closing_fence", body + "\n"),
        ("body_then_explanation", body + "\n```\n\nThis walks the list once."),
        ("body_then_example_block", body + f"\n```\n\nExample:\n```python\nprint({name}.__name__)\n```"),
        ("full_function_restated", full.split("\n\n\n")[-1].split('"""')[0] + "\n" + body + "\n```"),
        ("closed_then_new_block", "\n```\n\nHere is the implementation:\n```python\n" + full + "\n```"),
        ("closed_then_new_block_missing_import", "\n```\n\nHere is the implementation:\n```python\n" + _without_imports(full) + "\n```"),
        ("body_main_reads_stdin", body + "\n\n\nif __name__ == \"__main__\":\n    print(input())\n```"),
        ("body_sys_exit", "    import sys\n    sys.exit(0)\n```"),
        ("body_infinite_loop", "    while True:\n        pass\n```"),
    ]  # fmt: skip
    return variants


def code_corpus(seed: int) -> list[dict]:
    """Completions of every applicable class for every code problem, with the official JSON reference."""
    rng = random.Random(seed)
    items = []
    for name, good, bad, tests, module in MBPP_PROBLEMS:
        for cls, completion in _mbpp_variants(name, good, bad, module, rng):
            items.append({"class": cls, "completion": completion, "reference": code_reference(tests, "")})
    for name, prompt, body, bad, check in HUMANEVAL_PROBLEMS:
        for cls, completion in _humaneval_variants(name, prompt, body, bad, rng):
            items.append(
                {
                    "class": "he_" + cls,
                    "completion": completion,
                    "reference": code_reference([check], "```python\n" + prompt),
                }
            )
    return items


# --------------------------------------------------------------------------------------------------------------------
# The official side: run in the official environment
# --------------------------------------------------------------------------------------------------------------------

OFFICIAL_DRIVER = r'''
import ast, asyncio, json, os, re, sys
from concurrent.futures import ThreadPoolExecutor

repo, corpus_path, out_path, mode = sys.argv[1:5]
sys.path.insert(0, os.path.join(repo, "reward"))


def sampler_functions():
    """extract_final_boxed_answer and extract_code of sample/sdar_sample.py (the rest of that file needs a GPU)."""
    source = open(os.path.join(repo, "sample", "sdar_sample.py"), encoding="utf-8").read()
    wanted = [node for node in ast.parse(source).body
              if isinstance(node, ast.FunctionDef) and node.name in ("extract_final_boxed_answer", "extract_code")]
    namespace = {"re": re}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "sdar_sample.py", "exec"), namespace)
    return namespace["extract_final_boxed_answer"], namespace["extract_code"]


def main():
    extract_answer, extract_program = sampler_functions()
    corpus = json.load(open(corpus_path, encoding="utf-8"))
    verdicts = {}
    if mode in ("math", "math_as_run"):
        import math_utils
        items = corpus["math"]
        answers = [extract_answer(item["completion"]) for item in items]
        executor = ThreadPoolExecutor(max_workers=64)
        if mode == "math":
            from sympy.parsing.latex import parse_latex
            parse_latex("1")  # the parser loaded before any time limit starts
            results = [asyncio.run(math_utils.is_equal(a, item["reference"], executor)) for a, item in zip(answers, items)]
        else:  # reward.py's schedule: every item at once on the 64-thread pool, in this fresh process
            import nest_asyncio
            nest_asyncio.apply()
            async def every():
                return await asyncio.gather(*[math_utils.is_equal(a, item["reference"], executor) for a, item in zip(answers, items)])
            results = asyncio.run(every())
        verdicts = {"verdicts": [bool(r) for r in results], "extracted": answers}
    else:
        import execute
        items = corpus["code"]
        data = []
        for item in items:
            reference = json.loads(item["reference"])
            data.append({"extracted_output": [extract_program(reference["prefix"] + item["completion"])],
                         "test_list": reference["tests"], "test_time_limit": 1})
        os.makedirs("tmp", exist_ok=True)
        accidents = set()
        check = execute._check_snippet_many

        def observed(snippet, tests, *args, **kwargs):  # notes the runs its accidents decide
            ok, debug = check(snippet, tests, *args, **kwargs)
            markers = ("SystemExit", "Connection error", "Timeout or no response")  # an exit, a crash, a time-out
            if not debug or any(marker in line for line in debug for marker in markers):
                accidents.add((snippet, tuple(tests)))
            return ok, debug

        execute._check_snippet_many = observed
        execute.evaluate_function_dataset(data, n_workers=int(os.environ.get("OFFICIAL_WORKERS", "4")),
                                          debug_file=os.path.join("tmp", "debug.log"))
        verdicts = {"verdicts": [bool(all(row["correctness"][0])) for row in data],
                    "extracted": [row["extracted_output"][0] for row in data],
                    "accident": [(row["extracted_output"][0], tuple(row["test_list"])) in accidents for row in data]}
    json.dump(verdicts, open(out_path, "w", encoding="utf-8"))


if __name__ == "__main__":
    main()
'''


def run_official(python: str, repo: str, corpus_path: str, mode: str, workdir: str) -> dict:
    out = os.path.join(workdir, f"official_{mode}.json")
    driver = os.path.join(workdir, "official_driver.py")
    Path(driver).write_text(OFFICIAL_DRIVER, encoding="utf-8")
    start = time.perf_counter()
    subprocess.run([python, driver, repo, corpus_path, out, mode], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    print(f"  official {mode}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return json.loads(Path(out).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------------------


def table(items: list[dict], scorer_keys: list[str]) -> str:
    classes: dict[str, list[dict]] = defaultdict(list)
    for item in items:
        classes[item["class"]].append(item)
    header = "| class | n | official pass | " + " | ".join(f"{key} agrees" for key in scorer_keys) + " |"
    lines = [header, "|---|---:|---:|" + "---:|" * len(scorer_keys)]
    for cls in sorted(classes):
        group = classes[cls]
        passed = sum(item["official"] for item in group)
        agree = [sum(item[key] == item["official"] for item in group) for key in scorer_keys]
        lines.append(f"| {cls} | {len(group)} | {passed} | " + " | ".join(f"{a}/{len(group)}" for a in agree) + " |")
    totals = [sum(item[key] == item["official"] for item in items) for key in scorer_keys]
    lines.append(
        f"| **all** | {len(items)} | {sum(item['official'] for item in items)} | "
        + " | ".join(f"{t}/{len(items)} = {100 * t / len(items):.1f} %" for t in totals)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", required=True, help="a checkout of https://github.com/Tyrion58/T3D")
    parser.add_argument("--official-python", required=True, help="the Python of an environment for its reward code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["math", "code"], default=None)
    parser.add_argument("--as-run", action="store_true", help="also the official math schedule as its scripts run it")
    parser.add_argument("--show", type=int, default=0, help="print N disagreements per scorer")
    parser.add_argument("--dump", default=None, help="write every item with its verdicts to this JSON file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    corpus = {"math": math_corpus(args.seed), "code": code_corpus(args.seed)}
    report = {}
    with tempfile.TemporaryDirectory(prefix="t3d_agreement_") as workdir:
        corpus_path = os.path.join(workdir, "corpus.json")
        Path(corpus_path).write_text(json.dumps(corpus), encoding="utf-8")
        kinds = [args.only] if args.only else ["math", "code"]
        if "math" in kinds:
            official = run_official(args.official_python, args.official_repo, corpus_path, "math", workdir)
            as_run = None
            if args.as_run:
                as_run = run_official(args.official_python, args.official_repo, corpus_path, "math_as_run", workdir)
            paper, library = get_scorer("paper_math"), get_scorer("math")
            start = time.perf_counter()
            for index, item in enumerate(corpus["math"]):
                item["official"] = official["verdicts"][index]
                item["official_answer"] = official["extracted"][index]
                item["paper_math"] = paper(item["completion"], item["reference"])
                item["math"] = library(item["completion"], item["reference"])
                if as_run is not None:
                    item["official_as_run"] = as_run["verdicts"][index]
            print(f"  t3d-trl math scorers: {time.perf_counter() - start:.0f} s", file=sys.stderr)
            report["math"] = corpus["math"]
            print("## Math\n")
            keys = ["paper_math", "math"] + (["official_as_run"] if as_run is not None else [])
            print(table(corpus["math"], keys) + "\n")
        if "code" in kinds:
            official = run_official(args.official_python, args.official_repo, corpus_path, "code", workdir)
            paper = get_scorer("paper_code", allow_code_execution=True)
            library = get_scorer("code", allow_code_execution=True)
            start = time.perf_counter()
            for index, item in enumerate(corpus["code"]):
                item["official"] = official["verdicts"][index]
                item["official_program"] = official["extracted"][index]
                item["paper_code"] = paper(item["completion"], item["reference"])
                item["code"] = library(item["completion"], item["reference"])
                item["official_accident"] = official["accident"][index]
            print(f"  t3d-trl code scorers: {time.perf_counter() - start:.0f} s", file=sys.stderr)
            report["code"] = corpus["code"]
            print("## Code\n")
            print(table(corpus["code"], ["paper_code", "code"]) + "\n")
            clean = [item for item in corpus["code"] if not (item["official_accident"] and item["official"])]
            print(
                f"Without the {len(corpus['code']) - len(clean)} items the official runner passes through a time-out, "
                "crash or exit:\n"
            )
            print(table(clean, ["paper_code", "code"]) + "\n")
    if args.show:
        for kind, keys in (("math", ["paper_math", "math"]), ("code", ["paper_code", "code"])):
            for key in keys:
                wrong = [item for item in report.get(kind, []) if item[key] != item["official"]]
                for item in wrong[: args.show]:
                    print(f"--- {key} {item[key]} vs official {item['official']} [{item['class']}]")
                    print(f"completion: {item['completion']!r}\nreference: {item['reference']!r}")
    if args.dump:
        Path(args.dump).write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
