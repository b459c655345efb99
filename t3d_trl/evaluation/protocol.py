"""The T3D paper's evaluation protocol: its four sets, prompts, chat template, decoding settings and tables.

The official code (``configs/eval.yaml``, ``sample/sdar_sample.py``) evaluates MATH500, GSM8K, MBPP and HumanEval
from its own JSON files (``Gen-Verse/{MATH500,GSM8K,MBPP,HumanEval}`` on the Hub: ``question`` and
``ground_truth_answer``; code rows with ``test_list`` and ``prefix``), with one sampled response per prompt
(temperature 1.0, top-p 1, top-k 0), up to 2000 new tokens, and SDAR's chat format written out as text. The paper
reports static decoding at block sizes 4 and 8 with 1, 2 and 4 tokens per step, and dynamic decoding at block size 4,
4 steps per block and a confidence threshold of 0.9.

:func:`load_paper_dataset` reads a set in the official layout or in its usual Hub layout and renders the official
prompts; :func:`paper_settings` gives the decoding settings; ``t3d-trl eval --preset paper`` runs all of it and
writes the three tables of :mod:`t3d_trl.evaluation.report`. See ``docs/evaluation.md`` ("The paper's protocol").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..local_datasets import load_local_dataset
from .code_reference import code_reference
from .datasets import _as_list, _first_present, _gsm8k_answer
from .runner import DecodingSetting

if TYPE_CHECKING:
    import datasets

__all__ = [
    "PAPER_CHAT_TEMPLATE",
    "PAPER_CODE_PROMPT",
    "PAPER_DATASETS",
    "PAPER_MATH_PROMPT",
    "PAPER_MAX_NEW_TOKENS",
    "PAPER_TEMPERATURE",
    "PaperDataset",
    "load_paper_dataset",
    "paper_settings",
    "render_paper_prompt",
]

PAPER_CHAT_TEMPLATE = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
"""SDAR's chat format as the official sampler writes it around a prompt (no system turn)."""

PAPER_MATH_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
"""The user turn of a MATH500 or GSM8K problem."""

PAPER_CODE_PROMPT = (
    "This is the problem:\n{question}\nPlace your code within a single Python code block ```python ```. "
    "Do not include more than one code block. "
)
"""The user turn of an MBPP or HumanEval problem (its trailing space is the official prompt's)."""

PAPER_MAX_NEW_TOKENS = 2000
"""Generation length of the official evaluation (``max_token``)."""

PAPER_TEMPERATURE = 1.0
"""Sampling temperature of the official evaluation (with top-p 1 and top-k 0: plain sampling)."""


def render_paper_prompt(content: str, prefix: str = "") -> str:
    """A prompt as the official sampler renders it: the user turn in SDAR's chat format, then ``prefix`` (the start of
    the answer: HumanEval's opened code block), less one final line break.

    The official prompts are Jinja templates, and Jinja drops a template's final newline: a math prompt ends with
    ``<|im_start|>assistant`` and a HumanEval prompt with the docstring's closing quotes, as the paper's model read
    them.

    Args:
        content: The user turn.
        prefix: The start of the answer, written after the assistant's header.

    Returns:
        The prompt text.
    """
    text = PAPER_CHAT_TEMPLATE.replace("{content}", content) + prefix
    return text[:-1] if text.endswith("\n") else text


@dataclass(frozen=True)
class PaperDataset:
    """One of the paper's evaluation sets.

    Attributes:
        name: Canonical name (``"math500"``...).
        official_name: Its name in the official code and on the Hub (``Gen-Verse/<official_name>``,
            ``test/<official_name>.json``).
        kind: ``"math"`` or ``"code"``.
    """

    name: str
    official_name: str
    kind: str

    @property
    def hub_file(self) -> tuple[str, str]:
        """The official JSON on the Hub: ``(dataset repository, file)``."""
        return f"Gen-Verse/{self.official_name}", f"test/{self.official_name}.json"


PAPER_DATASETS: dict[str, PaperDataset] = {
    spec.name: spec
    for spec in (
        PaperDataset("math500", "MATH500", "math"),
        PaperDataset("gsm8k", "GSM8K", "math"),
        PaperDataset("mbpp", "MBPP", "code"),
        PaperDataset("humaneval", "HumanEval", "code"),
    )
}
"""The paper's four evaluation sets, in the order of its tables."""


def _paper_spec(name: str) -> PaperDataset:
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    key = {"math": "math500", "openaihumaneval": "humaneval"}.get(key, key)
    if key not in PAPER_DATASETS:
        raise ValueError(f"Unknown paper evaluation set {name!r}; the paper's sets are {', '.join(PAPER_DATASETS)}.")
    return PAPER_DATASETS[key]


def _math_row(spec: PaperDataset, row: dict[str, Any]) -> tuple[str, str]:
    """``(question, answer)`` of a math row, official (``question``, ``ground_truth_answer``) or Hub layout."""
    if "ground_truth_answer" in row:
        return str(_first_present(row, spec.name, "question", "problem")), str(row["ground_truth_answer"]).strip()
    if spec.name == "gsm8k":
        return str(_first_present(row, spec.name, "question")), _gsm8k_answer(
            str(_first_present(row, "gsm8k", "answer"))
        )
    return str(_first_present(row, spec.name, "problem", "question")), str(_first_present(row, spec.name, "answer"))


def _code_row(spec: PaperDataset, row: dict[str, Any]) -> tuple[str, list[str], str]:
    """``(question, tests, prefix)`` of a code row, official (``question``, ``test_list``, ``prefix``) or Hub
    layout (MBPP: ``text``/``prompt``, ``test_list``, setup code; HumanEval: ``prompt``, ``test``, ``entry_point``)."""
    if "question" in row and "test_list" in row:
        method = row.get("test_method", "function")
        if method != "function":
            raise ValueError(
                f"{spec.name} row {row.get('question', '')[:60]!r} has test_method={method!r}; the paper's code sets "
                "are tested by function calls (`function`), stdin/stdout tests are not supported."
            )
        return str(row["question"]), _as_list(row["test_list"]), str(row.get("prefix") or "")
    if spec.name == "humaneval":
        for field in ("prompt", "test", "entry_point"):
            _first_present(row, spec.name, field)
        prompt = str(row["prompt"])
        return prompt.strip("\n"), [f"{row['test'].rstrip()}\n\n\ncheck({row['entry_point']})"], "```python\n" + prompt
    text = str(_first_present(row, spec.name, "text", "prompt")).strip()
    tests = _as_list(_first_present(row, spec.name, "test_list"))
    setup = _as_list(row.get("test_imports")) + _as_list(row.get("test_setup_code"))
    question = f"{text}\nYour code should pass the test:\n{tests[0] if tests else ''}\n"
    return question, setup + tests, ""


def _download_official(spec: PaperDataset) -> list[dict[str, Any]]:
    from huggingface_hub import hf_hub_download

    repository, filename = spec.hub_file
    path = hf_hub_download(repo_id=repository, filename=filename, repo_type="dataset")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_paper_dataset(
    name: str,
    path: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> datasets.Dataset:
    """Load one of the paper's sets with the official prompts, for :func:`~t3d_trl.evaluation.evaluate_few_step`.

    Rows may be in the official layout (``question`` and ``ground_truth_answer``; code rows with ``test_list`` and
    ``prefix``) or in the set's usual Hub layout (``HuggingFaceH4/MATH-500``, ``openai/gsm8k``,
    ``google-research-datasets/mbpp``, ``openai/openai_humaneval``; an MBPP question is then its text followed by its
    first test, and a HumanEval prefix opens a ```` ```python ```` block with the function's prompt). Each prompt is
    rendered as the official sampler renders it (:func:`render_paper_prompt`): plain text in SDAR's chat format, a
    code prompt followed by the row's prefix.

    Args:
        name: ``math500``, ``gsm8k``, ``mbpp`` or ``humaneval`` (case, ``-`` and ``_`` ignored).
        path: A local file in either layout (``.json``, ``.jsonl``, ``.parquet``...); None downloads the official
            JSON from the Hub (``Gen-Verse/<set>``, ``test/<set>.json``).
        split: Split of a local file holding several.
        limit: Keep the first ``limit`` rows.

    Returns:
        A dataset with ``id``, ``prompt`` (text), ``reference`` and ``scorer`` columns: math rows are scored by
        ``math`` against the bare answer, code rows by ``code`` against ``{"tests": [...], "prefix": "..."}``; the
        runner adds the paper's verdicts (``paper_math``, ``paper_code``).

    Raises:
        ValueError: For an unknown set, a non-positive ``limit``, rows of neither layout, or stdin/stdout code rows.
        FileNotFoundError: If ``path`` does not exist.
    """
    import datasets

    spec = _paper_spec(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")
    rows = list(load_local_dataset(path, split)) if path is not None else _download_official(spec)
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise ValueError(f"The paper's {spec.name} set is empty (path={path!r}).")
    records = []
    for index, row in enumerate(dict(r) for r in rows):
        row_id = f"{spec.name}/{row.get('task_id', row.get('unique_id', index))}"
        if spec.kind == "math":
            question, answer = _math_row(spec, row)
            prompt = render_paper_prompt(PAPER_MATH_PROMPT.replace("{question}", question))
            records.append({"id": row_id, "prompt": prompt, "reference": answer, "scorer": "math"})
        else:
            question, tests, prefix = _code_row(spec, row)
            prompt = render_paper_prompt(PAPER_CODE_PROMPT.replace("{question}", question), prefix)
            records.append(
                {"id": row_id, "prompt": prompt, "reference": code_reference(tests, prefix), "scorer": "code"}
            )
    return datasets.Dataset.from_list(records)


def paper_settings(*, dynamic: bool = True) -> list[DecodingSetting]:
    """The decoding settings of the paper's tables.

    Static decoding (``low_confidence_static``) at block sizes 4 and 8 with 1, 2 and 4 tokens per step (steps per
    block 4, 2, 1 and 8, 4, 2), then, with ``dynamic``, the efficiency table's dynamic decoding: block size 4, at most
    4 steps per block, confidence threshold 0.9 (``low_confidence_dynamic``).

    Args:
        dynamic: Include the dynamic setting.

    Returns:
        The settings, static ones first.
    """
    settings = [
        DecodingSetting(block_size=block, steps_per_block=block // tokens) for block in (4, 8) for tokens in (1, 2, 4)
    ]
    if dynamic:
        settings.append(
            DecodingSetting(
                block_size=4, steps_per_block=4, remasking="low_confidence_dynamic", confidence_threshold=0.9
            )
        )
    return settings
