"""A toy objective that needs a statistic t3d-trl does not compute: Naive TD plus a penalty on how far the teacher's
token lies below the student's best guess. One module: the statistic, the objective's hyperparameters, the objective
and one registration of each (the example of docs/design.md, "Adding an objective")."""

from dataclasses import dataclass, field

import torch

from t3d_trl import register_objective
from t3d_trl.losses import masked_mean, td_loss
from t3d_trl.statistics import register_statistic


def max_log_prob(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log max_v softmax(ℓ / T)_v``: the log-probability of the student's best guess at every position."""
    return torch.log_softmax(logits / temperature, dim=-1).amax(-1)


@dataclass
class GapConfig:
    weight: float = field(default=0.1, metadata={"help": "Weight of the gap to the best guess."})
    temperature: float = field(default=1.0, metadata={"help": "Temperature of the best guess."})


def td_with_gap(inputs):
    scores, mask = inputs.scores, inputs.batch["loss_mask"]
    gap = masked_mean(scores["max_log_prob"] - scores.label_log_probs, mask)
    loss = td_loss(scores.label_log_probs, mask) + inputs.params.weight * gap
    return loss, {"loss/td_with_gap": loss, "gap": gap}


register_statistic("max_log_prob", max_log_prob, parameters={"temperature": 1.0})
register_objective(
    "td_with_gap",
    td_with_gap,
    fields=GapConfig,
    statistics=lambda params: {"max_log_prob": {"temperature": params.temperature}},
)
