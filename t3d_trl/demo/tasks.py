"""Small tasks whose valid answers are multimodal and strongly correlated across tokens.

Every prompt is exactly :data:`PROMPT_LENGTH` characters (``"<tag>:<argument>="``, the argument padded with
``.``), so the answer starts on a block boundary for block sizes 4 and 8 and a few-step decoder must commit
correlated tokens of the answer in the same step. Each task has a generator of (prompt, answer) pairs for
training the teacher, a generator of evaluation prompts with references, and an exact scorer registered with
:func:`t3d_trl.evaluation.register_scorer`.

* ``words`` (memorisable): name a word of a category; each category has six 3-letter words.
* ``sums`` (in between): three digits 1-9 that add up to a target.
* ``perm`` (generalising): any permutation of three distinct letters out of eight.

Every answer has three characters, so answer + EOS fill exactly one block of 4.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..evaluation import available_scorers, register_scorer

PROMPT_LENGTH = 8
ARGUMENT_WIDTH = 5

CATEGORIES: dict[str, tuple[str, ...]] = {
    "beast": ("cat", "dog", "cow", "pig", "rat", "bat"),
    "foods": ("egg", "jam", "pie", "bun", "ham", "yam"),
    "tools": ("saw", "axe", "hoe", "awl", "pen", "key"),
    "color": ("red", "tan", "jet", "sky", "ash", "ink"),
    "place": ("inn", "spa", "zoo", "gym", "bar", "den"),
}
PERM_LETTERS = "abcdefgh"


def _prompt(tag: str, argument: str) -> str:
    return f"{tag}:{argument.ljust(ARGUMENT_WIDTH, '.')}="


def is_one_of(prediction: str, reference: str) -> bool:
    """``prediction`` (stripped) is one of the ``|``-separated words of ``reference``."""
    return prediction.strip() in reference.split("|")


def is_digit_sum(prediction: str, reference: str) -> bool:
    """``prediction`` is three digits 1-9 whose sum is ``int(reference)``."""
    answer = prediction.strip()
    return len(answer) == 3 and all(c in "123456789" for c in answer) and sum(map(int, answer)) == int(reference)


def is_permutation(prediction: str, reference: str) -> bool:
    """``prediction`` uses each letter of ``reference`` exactly once."""
    return sorted(prediction.strip()) == sorted(reference)


@dataclass(frozen=True)
class Task:
    """A demo task: a name, a scorer and how to draw prompts and answers."""

    name: str
    scorer: str

    def sample(self, rng: random.Random) -> tuple[str, str, str]:
        """One ``(prompt, answer, reference)`` with the answer drawn uniformly among the valid ones."""
        if self.name == "words":
            category = rng.choice(sorted(CATEGORIES))
            words = CATEGORIES[category]
            return _prompt("w", category), rng.choice(words), "|".join(words)
        if self.name == "sums":
            digits = [rng.randint(1, 9) for _ in range(3)]
            target = str(sum(digits))
            return _prompt("s", target), "".join(map(str, digits)), target
        letters = rng.sample(PERM_LETTERS, 3)
        group = "".join(sorted(letters))
        return _prompt("p", group), "".join(letters), group


TASKS: dict[str, Task] = {
    "words": Task("words", "one_of"),
    "sums": Task("sums", "digit_sum"),
    "perm": Task("perm", "permutation"),
}

for _name, _scorer in (("one_of", is_one_of), ("digit_sum", is_digit_sum), ("permutation", is_permutation)):
    if _name not in available_scorers():
        register_scorer(_name, _scorer)


def task_alphabet() -> list[str]:
    """Every character the tasks use."""
    characters = set("wsp:.=|0123456789") | set(PERM_LETTERS)
    for category, words in CATEGORIES.items():
        characters |= set(category) | set("".join(words))
    return sorted(characters)


def training_pairs(task_names, num_examples: int, seed: int) -> list[dict]:
    """Ground-truth ``{"task", "prompt", "answer", "reference"}`` rows, answers uniform over the valid ones."""
    rng = random.Random(seed)
    names = list(task_names)
    rows = []
    for index in range(num_examples):
        task = TASKS[names[index % len(names)]]
        prompt, answer, reference = task.sample(rng)
        rows.append({"task": task.name, "prompt": prompt, "answer": answer, "reference": reference})
    return rows


def evaluation_prompts(task_name: str, num_prompts: int, seed: int) -> list[dict]:
    """Distinct evaluation prompts of one task with their references and scorer name."""
    rng = random.Random(seed)
    task = TASKS[task_name]
    seen, rows = set(), []
    for _ in range(50 * num_prompts):
        prompt, _, reference = task.sample(rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"task": task_name, "prompt": prompt, "reference": reference, "scorer": task.scorer})
        if len(rows) == num_prompts:
            break
    return rows
