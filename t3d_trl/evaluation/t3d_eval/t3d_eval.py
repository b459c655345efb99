"""t3d-trl's evaluation as a Hugging Face ``evaluate`` metric module (loaded with ``evaluate.load`` on this folder).

Its configuration names the scorer of every row (``math``, ``code``, ``paper_math``, ``paper_code``, ``exact_match``);
``compute`` returns :func:`t3d_trl.evaluation.metrics.score_predictions`' dictionary: the accuracy under that scorer
and under its paper twin (the T3D paper's scoring), their disagreements, and the decoding cost when ``forwards`` and
``generated_tokens`` are given. Load it offline with ``t3d_trl.evaluation.metrics.load_metric(name)``.
"""

import datasets
import evaluate

from t3d_trl.evaluation.metrics import METRIC_CONFIGS, score_predictions

_CITATION = """\
@article{t3d2026,
  title   = {T3D: Few-Step Diffusion Language Models via Trajectory Self-Distillation},
  journal = {arXiv preprint arXiv:2602.12262},
  year    = {2026}
}
"""

_DESCRIPTION = """\
Accuracy of completions of a diffusion language model under t3d-trl's scorers (math: mathematical equivalence of the
final answer; code: the program passes its tests) and under the T3D paper's scoring (paper_math, paper_code), the
number of problems where the two disagree, and the decoding cost: forward passes per completion and tokens per
forward. See docs/evaluation.md of t3d-trl ("Comparing with the paper").
"""

_INPUTS = """\
Args:
    predictions (list of str): the completions.
    references (list of str): bare answers, GSM8K solutions, test programs or {"tests": [...], "prefix": "..."}.
    forwards (list of numbers, optional): forward passes spent on each completion.
    generated_tokens (list of numbers, optional): tokens generated for each completion, up to its first EOS.
    paper_scores (bool, optional): also score with the paper twin (default True).
    allow_code_execution (bool, optional): allow the code scorers to run the programs (or HF_ALLOW_CODE_EVAL=1).
    code_timeout (float, optional): seconds per program of the `code` scorer (default 3).
Returns:
    accuracy, num_correct, num_samples; paper_accuracy, paper_num_correct, num_disagreements with a paper twin;
    avg_forwards, avg_generated_tokens and tokens_per_forward with the cost columns.
Example:
    >>> metric = evaluate.load("t3d_trl/evaluation/t3d_eval", "math")
    >>> metric.compute(predictions=["so \\\\boxed{4}"], references=["4"], forwards=[8], generated_tokens=[16])
    {'accuracy': 1.0, 'num_correct': 1, 'num_samples': 1, 'paper_accuracy': 1.0, 'paper_num_correct': 1, \
'num_disagreements': 0, 'avg_forwards': 8.0, 'avg_generated_tokens': 16.0, 'tokens_per_forward': 2.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class T3dEval(evaluate.Metric):
    """Accuracy under a t3d-trl scorer and its paper twin, with the decoding cost."""

    def _info(self):
        if self.config_name not in METRIC_CONFIGS:
            raise ValueError(
                f"Unknown configuration {self.config_name!r} of the t3d-trl metric; choose one of {METRIC_CONFIGS}."
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            homepage="https://github.com/t3d-trl/t3d-trl",
        )

    def _compute(self, predictions, references, **options):
        return score_predictions(predictions, references, self.config_name, **options)
