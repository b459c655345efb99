"""The demo's tasks: small problems whose valid answers are multimodal and correlated across tokens.

Every prompt is exactly :data:`PROMPT_LENGTH` characters (``"<tag>:<argument>="``, the argument padded with ``.``),
so the answer starts on a block boundary for block sizes 4 and 8 and a few-step decoder must commit correlated tokens
of the answer in the same step. Each task has a sampler of (prompt, answer, reference) triples, with answers drawn
uniformly among the valid ones (to train the teacher), and an exact scorer registered with
:func:`t3d_trl.evaluation.register_scorer`. Tasks are a registry (:data:`TASKS`, :func:`register_task`).

One-block tasks (a 3-character answer and its EOS fill exactly one block of 4: the trajectory never crosses a block):

* ``words`` (memorisable): a word of a category; each category has six 3-letter words.
* ``sums`` (in between): three digits 1-9 that add up to a target.
* ``perm`` (generalising): a permutation of three distinct letters out of eight.

Multi-block tasks (the paper's regime in miniature: the answer and its EOS span three blocks of 4 and two of 8, and a
choice made in the first block constrains the later ones):

* ``wordplay`` (memorisable): a word of a category, then its reverse, then its rotation: ``"v:beast="`` →
  ``"cat-tac-atc"``. The word chosen in block 1 (one of 6) fixes blocks 2 and 3.
* ``walk`` (in between): 11 digits from ``s`` to ``e`` whose consecutive digits differ by 1 or 2: ``"r:3>5..="`` →
  ``"31356420235"``. Thousands of valid answers per prompt; every digit constrains the next one (across block
  boundaries too) and whether ``e`` can still be reached. (With steps of exactly 1 a digit's parity is fixed by its
  position, so independent per-position argmaxes would almost always form a valid walk.)
* ``perm5`` (generalising): the five letters of a group (out of ``a``-``j``) in any order, separated by ``-``:
  ``"q:bdgij="`` → ``"g-b-j-d-i"`` (9 characters + EOS, which falls mid-block). 120 answers per group, 252 groups: the
  rule (each letter once) must be learnt; a letter used in block 1 may not reappear.

Two-block tasks (the answer and its EOS fill two blocks of 4, one of 8; a constraint binds the second block to the
first). Trained on them with the demo's quick teacher (1,500 steps), the students lose accuracy at one token per step
against the teacher, mostly at block size 8, which the tasks above do not show:

* ``echo`` (generalising): a permutation of the three letters of a group (out of ``a``-``h``), then the same
  permutation again: ``"e:bdg..="`` → ``"gbd-gbd"``. 6 answers per group, 56 groups; block 2 copies block 1.
* ``pairs`` (generalising): the four letters of a group (out of ``a``-``h``) as two pairs, in any order:
  ``"h:bdeg.="`` → ``"gb-de"``. 24 answers per group, 70 groups; the block boundary falls inside the second pair, and
  no letter of block 1 may reappear in block 2.
* ``walk7`` (in between): ``walk`` with 7 digits: ``"k:3>5..="`` → ``"3135645"``. A digit in block 2 must continue
  block 1's last digit and still reach ``e``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from ..evaluation import available_scorers, register_scorer
from ..registry import Registry

__all__ = [
    "CATEGORIES",
    "PROMPT_LENGTH",
    "TASKS",
    "Task",
    "answer_rows",
    "evaluation_prompts",
    "register_task",
    "task_alphabet",
    "training_pairs",
]

PROMPT_LENGTH = 8
ARGUMENT_WIDTH = 5
SEPARATOR = "-"

CATEGORIES: dict[str, tuple[str, ...]] = {
    "beast": ("cat", "dog", "cow", "pig", "rat", "bat"),
    "foods": ("egg", "jam", "pie", "bun", "ham", "yam"),
    "tools": ("saw", "axe", "hoe", "awl", "pen", "key"),
    "color": ("red", "tan", "jet", "sky", "ash", "ink"),
    "place": ("inn", "spa", "zoo", "gym", "bar", "den"),
}
PERM_LETTERS = "abcdefgh"
PERM5_LETTERS = "abcdefghij"
PERM5_SIZE = 5
WALK_LENGTH = 11
SHORT_WALK_LENGTH = 7
WALK_STEPS = (-2, -1, 1, 2)

Sample = tuple[str, str, str]


def _prompt(tag: str, argument: str) -> str:
    return f"{tag}:{argument.ljust(ARGUMENT_WIDTH, '.')}="


# ------------------------------------------------------------------------------------------------------- scorers
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


def wordplay_answer(word: str) -> str:
    """``word``, its reverse and its left rotation by one, joined by ``-``: ``"cat"`` → ``"cat-tac-atc"``."""
    return SEPARATOR.join((word, word[::-1], word[1:] + word[:1]))


def is_wordplay(prediction: str, reference: str) -> bool:
    """``prediction`` (stripped) is :func:`wordplay_answer` of one of the ``|``-separated words of ``reference``."""
    return prediction.strip() in {wordplay_answer(word) for word in reference.split("|")}


def _is_walk_of(prediction: str, reference: str, length: int) -> bool:
    """``prediction`` is ``length`` digits from ``s`` to ``e`` (``reference = "s>e"``) whose consecutive digits differ
    by 1 or 2."""
    answer = prediction.strip()
    start, end = reference.split(">")
    return (
        len(answer) == length
        and answer.isdigit()
        and answer[0] == start
        and answer[-1] == end
        and all(int(b) - int(a) in WALK_STEPS for a, b in itertools.pairwise(answer))
    )


def is_walk(prediction: str, reference: str) -> bool:
    """``prediction`` is :data:`WALK_LENGTH` digits from ``s`` to ``e`` (``reference = "s>e"``) whose consecutive
    digits differ by 1 or 2."""
    return _is_walk_of(prediction, reference, WALK_LENGTH)


def is_short_walk(prediction: str, reference: str) -> bool:
    """As :func:`is_walk`, with :data:`SHORT_WALK_LENGTH` digits."""
    return _is_walk_of(prediction, reference, SHORT_WALK_LENGTH)


def echo_answer(letters: str) -> str:
    """``letters``, then ``letters`` again, joined by ``-``: ``"gbd"`` → ``"gbd-gbd"``."""
    return f"{letters}{SEPARATOR}{letters}"


def pairs_answer(letters: str) -> str:
    """Four letters as two pairs joined by ``-``: ``"gbde"`` → ``"gb-de"``."""
    return f"{letters[:2]}{SEPARATOR}{letters[2:]}"


def _halves(prediction: str) -> list[str]:
    return prediction.strip().split(SEPARATOR)


def is_echo(prediction: str, reference: str) -> bool:
    """``prediction`` is ``x-x`` with ``x`` a permutation of the letters of ``reference`` (each exactly once)."""
    halves = _halves(prediction)
    return len(halves) == 2 and sorted(halves[0]) == sorted(reference) and halves[1] == halves[0]


def is_pairs(prediction: str, reference: str) -> bool:
    """``prediction`` is two pairs ``xy-zw`` that together use each letter of ``reference`` exactly once."""
    halves = _halves(prediction)
    return len(halves) == 2 and all(len(half) == 2 for half in halves) and sorted("".join(halves)) == sorted(reference)


def is_sep_permutation(prediction: str, reference: str) -> bool:
    """``prediction`` is the letters of ``reference`` in any order, each exactly once, separated by ``-``."""
    letters = prediction.strip().split(SEPARATOR)
    return all(len(letter) == 1 for letter in letters) and sorted(letters) == sorted(reference)


# ------------------------------------------------------------------------------------------------------- samplers
def _sample_words(rng: random.Random) -> Sample:
    category = rng.choice(sorted(CATEGORIES))
    words = CATEGORIES[category]
    return _prompt("w", category), rng.choice(words), "|".join(words)


def _sample_sums(rng: random.Random) -> Sample:
    digits = [rng.randint(1, 9) for _ in range(3)]
    target = str(sum(digits))
    return _prompt("s", target), "".join(map(str, digits)), target


def _group_sampler(tag: str, pool: str, size: int, answer: Callable[[str], str]) -> Callable[[random.Random], Sample]:
    """Draws ``size`` distinct letters of ``pool`` in a uniformly random order: the prompt names the group (its
    letters sorted), the answer is ``answer(letters in the drawn order)`` and the reference is the group."""

    def sample(rng: random.Random) -> Sample:
        letters = "".join(rng.sample(pool, size))
        group = "".join(sorted(letters))
        return _prompt(tag, group), answer(letters), group

    return sample


_sample_perm = _group_sampler("p", PERM_LETTERS, 3, str)


def _sample_wordplay(rng: random.Random) -> Sample:
    category = rng.choice(sorted(CATEGORIES))
    words = CATEGORIES[category]
    return _prompt("v", category), wordplay_answer(rng.choice(words)), "|".join(words)


@cache
def _walks_to(end: int, length: int) -> tuple[tuple[int, ...], ...]:
    """``count[j][d]``: walks of digits from ``d`` at index ``j`` to ``end`` at index ``length − 1``."""
    count = [[0] * 10 for _ in range(length)]
    count[-1][end] = 1
    for j in range(length - 2, -1, -1):
        for d in range(10):
            count[j][d] = sum(count[j + 1][d + step] for step in WALK_STEPS if 0 <= d + step <= 9)
    return tuple(tuple(row) for row in count)


def _walk_sampler(tag: str, length: int) -> Callable[[random.Random], Sample]:
    """A walk of ``length`` digits drawn uniformly among all walks from a random start to a random end (forward
    sampling on path counts; with 7 digits or more every end is reachable from every start)."""

    def sample(rng: random.Random) -> Sample:
        start, end = rng.randrange(10), rng.randrange(10)
        count = _walks_to(end, length)
        digits = [start]
        for j in range(1, length):
            options = [
                digits[-1] + step for step in WALK_STEPS if 0 <= digits[-1] + step <= 9 and count[j][digits[-1] + step]
            ]
            digits.append(rng.choices(options, weights=[count[j][n] for n in options])[0])
        reference = f"{start}>{end}"
        return _prompt(tag, reference), "".join(map(str, digits)), reference

    return sample


_sample_walk = _walk_sampler("r", WALK_LENGTH)


_sample_perm5 = _group_sampler("q", PERM5_LETTERS, PERM5_SIZE, SEPARATOR.join)


# ---------------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Task:
    """A demo task.

    Attributes:
        name: the task's name.
        scorer: the name of its registered scorer.
        sampler: draws ``(prompt, answer, reference)`` with the answer uniform among the valid ones.
        alphabet: every character its prompts and answers use.
        blocks: blocks of 4 its answers and their EOS span (1 for the one-block tasks).
    """

    name: str
    scorer: str
    sampler: Callable[[random.Random], Sample]
    alphabet: str
    blocks: int = 1

    def sample(self, rng: random.Random) -> Sample:
        """One ``(prompt, answer, reference)``."""
        return self.sampler(rng)


#: the registered tasks by name
#: registered demo tasks by name
TASKS: Registry[Task] = Registry("demo task", hint="register one with t3d_trl.demo.tasks.register_task")


def register_task(task: Task, scorer: Callable[[str, str], bool], *, overwrite: bool = False) -> Task:
    """Register ``task`` and its scorer (under ``task.scorer``, unless a scorer of that name exists).

    Raises:
        ValueError: if the name is taken (unless ``overwrite=True``; see :class:`~t3d_trl.registry.Registry`).
    """
    TASKS.register(task.name, task, overwrite=overwrite)
    if task.scorer not in available_scorers():
        register_scorer(task.scorer, scorer)
    return task


_WORD_CHARACTERS = "".join(CATEGORIES) + "".join("".join(words) for words in CATEGORIES.values())
register_task(Task("words", "one_of", _sample_words, "w:.=|" + _WORD_CHARACTERS), is_one_of)
register_task(Task("sums", "digit_sum", _sample_sums, "s:.=0123456789"), is_digit_sum)
register_task(Task("perm", "permutation", _sample_perm, "p:.=" + PERM_LETTERS), is_permutation)
register_task(Task("wordplay", "wordplay", _sample_wordplay, "v:.=|-" + _WORD_CHARACTERS, blocks=3), is_wordplay)
register_task(Task("walk", "walk", _sample_walk, "r:.=>0123456789", blocks=3), is_walk)
register_task(Task("perm5", "sep_permutation", _sample_perm5, "q:.=-" + PERM5_LETTERS, blocks=3), is_sep_permutation)
register_task(
    Task("echo", "echo", _group_sampler("e", PERM_LETTERS, 3, echo_answer), "e:.=-" + PERM_LETTERS, 2), is_echo
)
register_task(
    Task("pairs", "pairs", _group_sampler("h", PERM_LETTERS, 4, pairs_answer), "h:.=-" + PERM_LETTERS, 2), is_pairs
)
register_task(Task("walk7", "short_walk", _walk_sampler("k", SHORT_WALK_LENGTH), "k:.=>0123456789", 2), is_short_walk)


def task_alphabet(task_names=None) -> list[str]:
    """Every character the tasks use (all registered tasks by default), sorted."""
    names = TASKS if task_names is None else task_names
    return sorted(set("".join(TASKS[name].alphabet for name in names)))


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
    """Distinct evaluation prompts of one task (at most as many as the task has) with references and scorer name."""
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


def answer_rows(task_names, num_rows: int, seed: int) -> list[dict[str, str]]:
    """Reference answers as plain ``{"prompt", "completion"}`` rows (answers uniform over the valid ones): what the
    demo's teacher learns the tasks from, and the paper's SFT baseline trains on (the trainer appends EOS)."""
    return [{"prompt": r["prompt"], "completion": r["answer"]} for r in training_pairs(task_names, num_rows, seed)]
