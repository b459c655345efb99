"""Few-step evaluation of diffusion language models (accuracy and decoding speed, as in the T3D paper).

Example:
    >>> from t3d_trl.evaluation import load_eval_dataset, evaluate_few_step
    >>> ds = load_eval_dataset("gsm8k", limit=100)  # doctest: +SKIP
    >>> results = evaluate_few_step(model, tokenizer, ds, [{"block_size": 4, "steps_per_block": 1}],
    ...                             output_dir="eval_out")  # doctest: +SKIP
"""

from .datasets import (
    EVAL_DATASETS,
    HUMANEVAL_PROMPT_TEMPLATE,
    MATH_PROMPT_TEMPLATE,
    MBPP_PROMPT_TEMPLATE,
    EvalDatasetSpec,
    list_eval_datasets,
    load_eval_dataset,
    register_eval_dataset,
)
from .report import (
    EvalResult,
    plot_accuracy_vs_tokens_per_step,
    read_json,
    to_markdown,
    write_json,
    write_markdown,
)
from .runner import DecodingSetting, evaluate_few_step
from .scorers import (
    CODE_EXECUTION_ENV_VAR,
    SCORER_NAMES,
    CodeExecutionResult,
    Scorer,
    available_scorers,
    code_passes,
    code_scorer,
    exact_match,
    execute_code,
    extract_boxed,
    extract_code,
    extract_math_answer,
    get_scorer,
    math_equal,
    register_scorer,
)

__all__ = [
    "CODE_EXECUTION_ENV_VAR",
    "CodeExecutionResult",
    "DecodingSetting",
    "EVAL_DATASETS",
    "EvalDatasetSpec",
    "EvalResult",
    "HUMANEVAL_PROMPT_TEMPLATE",
    "MATH_PROMPT_TEMPLATE",
    "MBPP_PROMPT_TEMPLATE",
    "SCORER_NAMES",
    "available_scorers",
    "register_scorer",
    "Scorer",
    "code_passes",
    "code_scorer",
    "evaluate_few_step",
    "exact_match",
    "execute_code",
    "extract_boxed",
    "extract_code",
    "extract_math_answer",
    "get_scorer",
    "list_eval_datasets",
    "register_eval_dataset",
    "load_eval_dataset",
    "math_equal",
    "plot_accuracy_vs_tokens_per_step",
    "read_json",
    "to_markdown",
    "write_json",
    "write_markdown",
]
