"""Few-step evaluation of diffusion language models (accuracy and decoding speed, as in the T3D paper).

Example:
    >>> from t3d_trl.evaluation import load_eval_dataset, evaluate_few_step
    >>> ds = load_eval_dataset("gsm8k", limit=100)  # doctest: +SKIP
    >>> results = evaluate_few_step(model, tokenizer, ds, [{"block_size": 4, "steps_per_block": 1}],
    ...                             output_dir="eval_out")  # doctest: +SKIP
"""

from .code_reference import CodeReference, code_reference, parse_code_reference
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
from .paper_scoring import paper_code, paper_math
from .protocol import PAPER_DATASETS, load_paper_dataset, paper_settings, render_paper_prompt
from .report import (
    EvalResult,
    dynamic_table,
    few_step_table,
    plot_accuracy_vs_tokens_per_step,
    preservation_table,
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
    ScorerInfo,
    available_scorers,
    code_passes,
    code_program,
    code_scorer,
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

__all__ = [
    "CODE_EXECUTION_ENV_VAR",
    "CodeExecutionResult",
    "CodeReference",
    "ScorerInfo",
    "DecodingSetting",
    "EVAL_DATASETS",
    "EvalDatasetSpec",
    "EvalResult",
    "PAPER_DATASETS",
    "HUMANEVAL_PROMPT_TEMPLATE",
    "MATH_PROMPT_TEMPLATE",
    "MBPP_PROMPT_TEMPLATE",
    "SCORER_NAMES",
    "available_scorers",
    "register_scorer",
    "Scorer",
    "code_passes",
    "code_program",
    "code_reference",
    "code_scorer",
    "dynamic_table",
    "evaluate_few_step",
    "exact_match",
    "execute_code",
    "extract_boxed",
    "extract_code",
    "extract_math_answer",
    "few_step_table",
    "get_scorer",
    "list_eval_datasets",
    "register_eval_dataset",
    "load_eval_dataset",
    "load_paper_dataset",
    "math_equal",
    "paper_code",
    "paper_math",
    "paper_settings",
    "parse_code_reference",
    "plot_accuracy_vs_tokens_per_step",
    "preservation_table",
    "read_json",
    "render_paper_prompt",
    "scorer_info",
    "to_markdown",
    "write_json",
    "write_markdown",
]
