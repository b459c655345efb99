"""Demo tasks whose answers cross blocks: the paper's regime (long answers over several blocks) in miniature.

The tasks of :mod:`t3d_trl.demo.tasks` have 3-character answers, so answer + EOS fill exactly one block of 4 and a
teacher trajectory never crosses a block. The tasks here keep their prompt format (``"<tag>:<argument>="``, exactly
:data:`PROMPT_LENGTH` = 8 characters, so the answer starts on a block boundary for block sizes 4 and 8) and their
properties (several valid answers per prompt, exact scorers), but their answers span three blocks of 4 and two
blocks of 8 including EOS, and a choice made in the first block constrains the later ones:

* ``wordplay`` (memorisable): a word of a category, then its reverse, then its rotation, ``"cat-tac-atc"``
  (11 characters + EOS = 3 blocks of 4). The word chosen in block 1 (one of 6) fixes blocks 2 and 3.
* ``walk`` (in between): 11 digits from ``s`` to ``e`` where consecutive digits differ by 1 or 2,
  ``"r:3>5..="`` → ``"31356420235"``. Thousands of valid answers per prompt; every digit constrains the next one
  (across the block boundary too) and whether ``e`` can still be reached. (With steps of exactly 1 the digits'
  parity is fixed by the position and independent per-position argmaxes almost always form a valid walk, so
  parallel decoding would not break it; steps of 1 or 2 remove that shortcut.)
* ``perm5`` (generalising): the five letters of a group (out of ``a``-``j``) in any order, separated by ``-``,
  ``"q:bdgij="`` → ``"g-b-j-d-i"`` (9 characters + EOS = 3 blocks of 4, EOS mid-block). 120 answers per group and
  252 groups: the rule (each letter exactly once) must be learnt; a letter used in block 1 may not reappear later.

Each task draws training answers uniformly among the valid ones, has a generator of evaluation prompts and an exact
scorer ``(prediction, reference) -> bool`` registered with :func:`t3d_trl.evaluation.register_scorer`. The
character alphabet grows by ``-``, ``>`` and the new tags; :func:`build_multiblock_tokenizer` is the demo's
character-level tokenizer over it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from functools import cache

from ..evaluation import available_scorers, register_scorer
from .tasks import ARGUMENT_WIDTH, CATEGORIES, PROMPT_LENGTH

__all__ = [
    "MULTIBLOCK_TASKS",
    "PERM5_LETTERS",
    "WALK_LENGTH",
    "MultiBlockTask",
    "build_multiblock_tokenizer",
    "is_sep_permutation",
    "is_walk",
    "is_wordplay",
    "multiblock_alphabet",
    "multiblock_evaluation_prompts",
    "multiblock_training_pairs",
    "wordplay_answer",
]

WALK_LENGTH = 11
WALK_STEPS = (-2, -1, 1, 2)
PERM5_LETTERS = "abcdefghij"
PERM5_SIZE = 5
SEPARATOR = "-"


def _prompt(tag: str, argument: str) -> str:
    return f"{tag}:{argument.ljust(ARGUMENT_WIDTH, '.')}="


# ----------------------------------------------------------------------------------------------------------- wordplay
def wordplay_answer(word: str) -> str:
    """``word``, its reverse and its left rotation by one, joined by ``-``: ``"cat"`` → ``"cat-tac-atc"``."""
    return SEPARATOR.join((word, word[::-1], word[1:] + word[:1]))


def is_wordplay(prediction: str, reference: str) -> bool:
    """``prediction`` (stripped) is :func:`wordplay_answer` of one of the ``|``-separated words of ``reference``."""
    return prediction.strip() in {wordplay_answer(word) for word in reference.split("|")}


# --------------------------------------------------------------------------------------------------------------- walk
def is_walk(prediction: str, reference: str) -> bool:
    """``prediction`` is :data:`WALK_LENGTH` digits from ``s`` to ``e`` (``reference = "s>e"``) whose consecutive
    digits differ by 1 or 2."""
    answer = prediction.strip()
    start, end = reference.split(">")
    return (
        len(answer) == WALK_LENGTH
        and answer.isdigit()
        and answer[0] == start
        and answer[-1] == end
        and all(int(b) - int(a) in WALK_STEPS for a, b in itertools.pairwise(answer))
    )


@cache
def _walks_to(end: int) -> tuple[tuple[int, ...], ...]:
    """``count[j][d]``: walks of digits from ``d`` at index ``j`` to ``end`` at index ``WALK_LENGTH − 1``."""
    count = [[0] * 10 for _ in range(WALK_LENGTH)]
    count[-1][end] = 1
    for j in range(WALK_LENGTH - 2, -1, -1):
        for d in range(10):
            count[j][d] = sum(count[j + 1][d + step] for step in WALK_STEPS if 0 <= d + step <= 9)
    return tuple(tuple(row) for row in count)


def walk_pairs() -> list[tuple[int, int]]:
    """Every ``(start, end)`` joined by at least one walk: all 100 pairs of digits."""
    return [(s, e) for s in range(10) for e in range(10) if _walks_to(e)[0][s] > 0]


def _sample_walk(rng: random.Random, start: int, end: int) -> str:
    """A walk drawn uniformly among all walks from ``start`` to ``end`` (forward sampling on the path counts)."""
    count = _walks_to(end)
    digits = [start]
    for j in range(1, WALK_LENGTH):
        options = [digits[-1] + step for step in WALK_STEPS if 0 <= digits[-1] + step <= 9]
        options = [n for n in options if count[j][n] > 0]
        digits.append(rng.choices(options, weights=[count[j][n] for n in options])[0])
    return "".join(map(str, digits))


# -------------------------------------------------------------------------------------------------------------- perm5
def is_sep_permutation(prediction: str, reference: str) -> bool:
    """``prediction`` is the letters of ``reference`` in any order, each exactly once, separated by ``-``."""
    answer = prediction.strip()
    letters = answer.split(SEPARATOR)
    return all(len(letter) == 1 for letter in letters) and sorted(letters) == sorted(reference)


# -------------------------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class MultiBlockTask:
    """A multi-block demo task: a name, a scorer and how to draw prompts and answers."""

    name: str
    scorer: str
    tag: str

    def sample(self, rng: random.Random) -> tuple[str, str, str]:
        """One ``(prompt, answer, reference)`` with the answer drawn uniformly among the valid ones."""
        if self.name == "wordplay":
            category = rng.choice(sorted(CATEGORIES))
            words = CATEGORIES[category]
            return _prompt(self.tag, category), wordplay_answer(rng.choice(words)), "|".join(words)
        if self.name == "walk":
            start, end = rng.choice(walk_pairs())
            return _prompt(self.tag, f"{start}>{end}"), _sample_walk(rng, start, end), f"{start}>{end}"
        letters = rng.sample(PERM5_LETTERS, PERM5_SIZE)
        group = "".join(sorted(letters))
        return _prompt(self.tag, group), SEPARATOR.join(letters), group

    def num_prompts(self) -> int:
        """How many distinct prompts the task has."""
        if self.name == "wordplay":
            return len(CATEGORIES)
        if self.name == "walk":
            return len(walk_pairs())
        return len(list(itertools.combinations(PERM5_LETTERS, PERM5_SIZE)))


MULTIBLOCK_TASKS: dict[str, MultiBlockTask] = {
    "wordplay": MultiBlockTask("wordplay", "wordplay", "v"),
    "walk": MultiBlockTask("walk", "walk", "r"),
    "perm5": MultiBlockTask("perm5", "sep_permutation", "q"),
}

for _name, _scorer in (("wordplay", is_wordplay), ("walk", is_walk), ("sep_permutation", is_sep_permutation)):
    if _name not in available_scorers():
        register_scorer(_name, _scorer)


def multiblock_alphabet() -> list[str]:
    """Every character the multi-block tasks use (prompts and answers)."""
    characters = set(":.=|>" + SEPARATOR + "0123456789" + PERM5_LETTERS)
    characters |= {task.tag for task in MULTIBLOCK_TASKS.values()}
    for category, words in CATEGORIES.items():
        characters |= set(category) | set("".join(words))
    return sorted(characters)


def build_multiblock_tokenizer():
    """The demo's character-level tokenizer (pad, EOS and mask tokens, left padding) over :func:`multiblock_alphabet`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from .pipeline import SPECIAL_TOKENS

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + multiblock_alphabet())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", mask_token="<mask>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def multiblock_training_pairs(task_names, num_examples: int, seed: int) -> list[dict]:
    """Ground-truth ``{"task", "prompt", "answer", "reference"}`` rows, answers uniform over the valid ones."""
    rng = random.Random(seed)
    names = list(task_names)
    rows = []
    for index in range(num_examples):
        task = MULTIBLOCK_TASKS[names[index % len(names)]]
        prompt, answer, reference = task.sample(rng)
        rows.append({"task": task.name, "prompt": prompt, "answer": answer, "reference": reference})
    return rows


def multiblock_evaluation_prompts(task_name: str, num_prompts: int, seed: int) -> list[dict]:
    """Distinct evaluation prompts of one task (at most its number of prompts) with references and scorer name."""
    rng = random.Random(seed)
    task = MULTIBLOCK_TASKS[task_name]
    seen, rows = set(), []
    for _ in range(50 * num_prompts):
        prompt, _, reference = task.sample(rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"task": task_name, "prompt": prompt, "reference": reference, "scorer": task.scorer})
        if len(rows) == num_prompts:
            break
    return rows


assert all(len(_prompt(task.tag, "x" * ARGUMENT_WIDTH)) == PROMPT_LENGTH for task in MULTIBLOCK_TASKS.values())
