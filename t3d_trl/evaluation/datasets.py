"""Evaluation sets of the T3D paper, with the prompt formats of the SDAR/T3D evaluation.

:func:`load_eval_dataset` returns a :class:`datasets.Dataset` with the columns the runner expects:

* ``prompt``: a chat message list ``[{"role": "user", "content": ...}]`` (or a plain string with
  ``as_chat=False``),
* ``reference``: the gold answer (math) or the test program (code),
* ``scorer``: the name of the scorer to use (see :func:`t3d_trl.evaluation.get_scorer`),
* ``id``: a stable identifier of the problem.

Rows come from the Hugging Face Hub, or from a local JSON/JSONL file in the same schema as the hub dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..local_datasets import load_local_dataset
from ..registry import Registry, alias_key

if TYPE_CHECKING:
    import datasets


__all__ = [
    "EVAL_DATASETS",
    "EvalDatasetSpec",
    "MATH_PROMPT_TEMPLATE",
    "CODE_INSTRUCTION",
    "HUMANEVAL_PROMPT_TEMPLATE",
    "MBPP_PROMPT_TEMPLATE",
    "list_eval_datasets",
    "register_eval_dataset",
    "load_eval_dataset",
]

MATH_PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
"""Prompt of GSM8K and MATH500; ``{question}`` is replaced by the problem."""

CODE_INSTRUCTION = (
    "Place your code within a single Python code block ```python ```. Do not include more than one code block."
)

MBPP_PROMPT_TEMPLATE = (
    "You are an expert Python programmer, and here is your task: {question} "
    "Your code should pass these tests:\n\n{tests}\n\n" + CODE_INSTRUCTION
)
"""Prompt of MBPP; ``{question}`` is the task description and ``{tests}`` its assert statements."""

HUMANEVAL_PROMPT_TEMPLATE = (
    "Complete the following Python function. Write the complete function, including its signature and the "
    "imports it needs.\n\n```python\n{question}\n```\n\n" + CODE_INSTRUCTION
)
"""Prompt of HumanEval; ``{question}`` is the function signature and docstring."""


@dataclass(frozen=True)
class EvalDatasetSpec:
    """How to load and format one evaluation set.

    Attributes:
        name: Canonical short name (``"gsm8k"``...).
        hub_id: Dataset repository on the Hugging Face Hub.
        config: Hub configuration name, if any.
        split: Default split.
        scorer: Scorer name for every row.
        prompt_template: Default prompt template; placeholders ``{question}`` (and ``{tests}`` for MBPP) are
            substituted literally, so other braces (such as ``\\boxed{}``) need no escaping.
        formatter: Maps a raw row and a template to ``(id, prompt_text, reference)``.
    """

    name: str
    hub_id: str
    config: str | None
    split: str
    scorer: str
    prompt_template: str
    formatter: Callable[[dict[str, Any], str, int], tuple[str, str, str]]


def _fill(template: str, **fields: str) -> str:
    for key, value in fields.items():
        template = template.replace("{" + key + "}", value)
    return template


def _require(row: dict[str, Any], dataset: str, *names: str) -> None:
    missing = [n for n in names if n not in row]
    if missing:
        raise ValueError(
            f"{dataset} rows need the field(s) {missing}; got fields {sorted(row)}. Local files must follow the "
            f"hub dataset's schema."
        )


def _first_present(row: dict[str, Any], dataset: str, *names: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise ValueError(f"{dataset} rows need one of the fields {list(names)}; got fields {sorted(row)}.")


def _gsm8k_answer(solution: str) -> str:
    answer = solution.split("####")[-1].strip() if "####" in solution else solution.strip()
    return answer.replace(",", "").strip()


def _format_gsm8k(row: dict[str, Any], template: str, index: int) -> tuple[str, str, str]:
    _require(row, "gsm8k", "question", "answer")
    return f"gsm8k/{index}", _fill(template, question=row["question"].strip()), _gsm8k_answer(str(row["answer"]))


def _format_math500(row: dict[str, Any], template: str, index: int) -> tuple[str, str, str]:
    _require(row, "math500", "problem", "answer")
    row_id = str(row.get("unique_id") or f"math500/{index}")
    return row_id, _fill(template, question=row["problem"].strip()), str(row["answer"]).strip()


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value if v is not None and str(v).strip()]


def _format_mbpp(row: dict[str, Any], template: str, index: int) -> tuple[str, str, str]:
    # "full" config: text, test_setup_code; "sanitized" config: prompt, test_imports.
    _require(row, "mbpp", "test_list")
    question = str(_first_present(row, "mbpp", "text", "prompt")).strip()
    tests = _as_list(row["test_list"])
    setup = _as_list(row.get("test_imports")) + _as_list(row.get("test_setup_code"))
    reference = "\n".join(setup + tests) + "\n"
    row_id = f"mbpp/{row['task_id']}" if row.get("task_id") is not None else f"mbpp/{index}"
    return row_id, _fill(template, question=question, tests="\n".join(tests)), reference


def _format_humaneval(row: dict[str, Any], template: str, index: int) -> tuple[str, str, str]:
    _require(row, "humaneval", "prompt", "test", "entry_point")
    reference = f"{row['test'].rstrip()}\n\n\ncheck({row['entry_point']})\n"
    row_id = str(row.get("task_id") or f"HumanEval/{index}")
    return row_id, _fill(template, question=row["prompt"].strip("\n")), reference


#: registered evaluation sets by canonical name; names and aliases match ignoring case, ``-``, ``_`` and spaces
EVAL_DATASETS: Registry[EvalDatasetSpec] = Registry(
    "evaluation dataset", hint="register one with t3d_trl.evaluation.register_eval_dataset", key=alias_key
)
for _spec, _aliases in (
    (
        EvalDatasetSpec("gsm8k", "openai/gsm8k", "main", "test", "math", MATH_PROMPT_TEMPLATE, _format_gsm8k),
        ("openai/gsm8k",),
    ),
    (
        EvalDatasetSpec(
            "math500", "HuggingFaceH4/MATH-500", None, "test", "math", MATH_PROMPT_TEMPLATE, _format_math500
        ),
        ("math", "HuggingFaceH4/MATH-500"),
    ),
    (
        EvalDatasetSpec(
            "mbpp", "google-research-datasets/mbpp", "full", "test", "code", MBPP_PROMPT_TEMPLATE, _format_mbpp
        ),
        ("mbpp full", "google-research-datasets/mbpp"),
    ),
    (
        EvalDatasetSpec(
            "mbpp_sanitized",
            "google-research-datasets/mbpp",
            "sanitized",
            "test",
            "code",
            MBPP_PROMPT_TEMPLATE,
            _format_mbpp,
        ),
        (),
    ),
    (
        EvalDatasetSpec(
            "humaneval", "openai/openai_humaneval", None, "test", "code", HUMANEVAL_PROMPT_TEMPLATE, _format_humaneval
        ),
        ("openai_humaneval", "openai/openai_humaneval"),
    ),
):
    EVAL_DATASETS.register(_spec.name, _spec, aliases=_aliases, builtin=True)


def register_eval_dataset(spec: EvalDatasetSpec, aliases: tuple[str, ...] = (), *, overwrite: bool = False) -> None:
    """Register an evaluation set, so that :func:`load_eval_dataset` and ``t3d-trl eval --eval_dataset`` accept its
    name (and ``aliases``; matching ignores case, ``-``, ``_`` and spaces), as :func:`register_scorer` does for scorers.

    Example::

        register_eval_dataset(EvalDatasetSpec(
            "arith", "my-org/arith", None, "test", "math", MATH_PROMPT_TEMPLATE,
            lambda row, template, index: (f"arith/{index}", template.replace("{question}", row["q"]), row["a"]),
        ))

    Raises:
        ValueError: if the name or an alias is taken (unless ``overwrite=True``; built-in sets are never replaced), or
            the scorer is unknown.
    """
    from .scorers import available_scorers

    if not isinstance(spec, EvalDatasetSpec):
        raise TypeError(f"register_eval_dataset takes an EvalDatasetSpec, got {type(spec).__name__}.")
    if spec.scorer not in available_scorers():
        raise ValueError(
            f"Evaluation set {spec.name!r} uses the scorer {spec.scorer!r}, which is not registered; register it with "
            f"register_scorer first (registered: {', '.join(available_scorers())})."
        )
    EVAL_DATASETS.register(spec.name, spec, aliases=aliases, overwrite=overwrite)


def list_eval_datasets() -> list[str]:
    """Canonical names accepted by :func:`load_eval_dataset`."""
    return sorted(EVAL_DATASETS)


def _resolve_name(name: str) -> EvalDatasetSpec:
    return EVAL_DATASETS.get_entry(name)


def load_eval_dataset(
    name: str,
    path: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    *,
    prompt_template: str | None = None,
    as_chat: bool = True,
    config: str | None = None,
) -> datasets.Dataset:
    """Load an evaluation set and format it for :func:`t3d_trl.evaluation.evaluate_few_step`.

    Supported sets (names are case-insensitive, ``-``/``_`` ignored):

    ============== ================================= ========= =====================================
    name           hub dataset                       scorer    reference
    ============== ================================= ========= =====================================
    gsm8k          ``openai/gsm8k`` (main, test)      math      number after ``####``
    math500        ``HuggingFaceH4/MATH-500`` (test)  math      ``answer`` field (LaTeX)
    mbpp           ``google-research-datasets/mbpp``  code      setup/imports + ``test_list`` asserts
                   (full, test)
    mbpp_sanitized same, ``sanitized`` config         code      idem
    humaneval      ``openai/openai_humaneval`` (test) code      ``test`` + ``check(entry_point)``
    ============== ================================= ========= =====================================

    Args:
        name: Dataset name, see above.
        path: Local ``.json``/``.jsonl`` (optionally gzipped), ``.parquet`` or ``.csv`` file (or a dataset
            directory) with rows in the hub dataset's schema, read with
            :func:`t3d_trl.local_datasets.load_local_dataset`. A JSON object ``{split: [rows]}`` is also accepted.
            When None, the dataset is downloaded with :func:`datasets.load_dataset`.
        split: Split to load (default: the set's test split).
        limit: Keep only the first ``limit`` rows.
        prompt_template: Override of the prompt template; ``{question}`` (and ``{tests}`` for MBPP) are
            substituted.
        as_chat: Return prompts as chat message lists (True) or as plain strings (False).
        config: Override of the hub configuration (e.g. ``"sanitized"`` for MBPP).

    Returns:
        A dataset with columns ``id``, ``prompt``, ``reference`` and ``scorer``.

    Raises:
        ValueError: For an unknown name, a non-positive limit, or rows missing required fields.
        FileNotFoundError: If ``path`` does not exist.
    """
    import datasets

    spec = _resolve_name(name)
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be a positive integer or None, got {limit}.")
    template = prompt_template if prompt_template is not None else spec.prompt_template

    if path is not None:
        rows: list[dict[str, Any]] = list(load_local_dataset(path, split))
        if limit is not None:
            rows = rows[:limit]
    else:
        hub_split = split or spec.split
        if limit is not None:
            hub_split = f"{hub_split}[:{limit}]"
        hub_config = config if config is not None else spec.config
        args = (spec.hub_id,) if hub_config is None else (spec.hub_id, hub_config)
        rows = list(datasets.load_dataset(*args, split=hub_split))

    records = []
    for index, row in enumerate(rows):
        row_id, text, reference = spec.formatter(dict(row), template, index)
        prompt: Any = [{"role": "user", "content": text}] if as_chat else text
        records.append({"id": row_id, "prompt": prompt, "reference": reference, "scorer": spec.scorer})
    if not records:
        raise ValueError(f"The {spec.name} evaluation set is empty (path={path!r}, split={split!r}).")
    return datasets.Dataset.from_list(records)
