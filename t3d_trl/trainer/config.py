"""`T3DConfig`: the training arguments of trajectory self-distillation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..checks import check_number
from ..models.families import FAMILIES
from ..objectives import OBJECTIVES, extra_states, objective_params
from ..registry import Registry


def _resolved(field_name: str, registry: Registry, value: str) -> str:
    """The canonical name of ``value`` in ``registry``; an unknown one is refused naming the field."""
    try:
        return registry.resolve(value)
    except ValueError as error:
        raise ValueError(f"`{field_name}`: {error}") from None


@dataclass
class T3DConfig(TrainingArguments):
    r"""Configuration of [`T3DTrainer`]: trajectory self-distillation for few-step diffusion decoding.

    T3D (arXiv 2602.12262) trains a student, initialised from a diffusion LM, to jump from intermediate states of the
    teacher's own decoding trajectories to the teacher's final tokens with trajectory Direct Discriminative
    Optimization (DDO) against a stop-gradient reference, plus a path-consistency term. The baselines of the paper's
    table (Naive TD, SFT, dParallel) are other `loss_type`s over the same data.

    Only the parameters specific to T3D are listed here; see [`~transformers.TrainingArguments`] for the rest. The
    paper's whole recipe (its state sampling, batch size and precision as well) is in `docs/training.md` and
    `t3d_trl/configs/sdar_t3d_paper.yaml` (`t3d-trl train --config paper`).

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`], the official T3D
    > recipe's:
    > - `learning_rate`: Defaults to `1e-5` instead of `5e-5`.
    > - `weight_decay`: Defaults to `0.01` instead of `0.0`.
    > - `lr_scheduler_type`: Defaults to `"cosine_with_min_lr"` instead of `"linear"`; without `lr_scheduler_kwargs`
    >   it decays to `0.1` × the learning rate (`{"min_lr_rate": 0.1}`).
    > - `warmup_steps`: Defaults to `20` instead of `0`.
    > - `logging_steps`: Defaults to `10` instead of `500`, as in TRL.
    > The paper also trains in bf16 with gradient checkpointing; they keep `TrainingArguments`' defaults here (they
    > depend on the hardware), so set `bf16=True, gradient_checkpointing=True` on a GPU.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs", "objective_kwargs"]

    # Parameters whose default values are overridden from TrainingArguments (the official recipe's)
    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW (paper: 1e-5)."})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay of AdamW (paper: 0.01)."})
    lr_scheduler_type: str = field(
        default="cosine_with_min_lr",
        metadata={
            "help": "The learning-rate schedule (paper: cosine down to 0.1 x the learning rate, which "
            "`cosine_with_min_lr` does with `lr_scheduler_kwargs={'min_lr_rate': 0.1}`, filled in when unset)."
        },
    )
    warmup_steps: float = field(
        default=20,
        metadata={"help": "Linear warm-up steps (paper: 20); a value in (0, 1) is a fraction of the training steps."},
    )
    logging_steps: float = field(
        default=10,
        metadata={"help": "Log every X update steps; a value in (0, 1) is a fraction of the training steps."},
    )

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `from_pretrained` when `model` is a string (e.g. `dtype`, "
            "`attn_implementation`, which defaults to `sdpa`); whether remote code runs is `trust_remote_code`."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Allow the model and the tokenizer (when `processing_class` is not given) to run Python code that "
            "ships with the checkpoint. Forwarded to `from_pretrained` of both; SDAR checkpoints load natively "
            "without it."
        },
    )
    model_family: str | None = field(
        default=None,
        metadata={
            "help": "A registered model family: `block_causal` (SDAR, decoder LMs run with block-causal masks) or "
            "`bidirectional` (LLaDA-style mask predictors). Detected from the model when unset."
        },
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Disable dropout in the student and reference."})

    # Objective
    loss_type: list[str] = field(
        default_factory=lambda: ["ddo", "path"],
        metadata={
            "help": "Objectives to combine, each at most once: `ddo` (trajectory DDO, mode-seeking), `path` (path "
            "consistency), `td` (Naive trajectory distillation, forward KL), `sft` (random masks of reference "
            "answers), `dparallel` (certainty-forcing distillation), `anchor` (KL from the frozen teacher at partly "
            "filled trajectory states, against forgetting full-step decoding), or one registered with "
            "`t3d_trl.register_objective`. T3D is `['ddo', 'path']`."
        },
    )
    loss_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "Weight of each entry of `loss_type`. Defaults to 1 for every objective except `path`, which "
            "gets `lambda_path`."
        },
    )
    beta: float = field(
        default=0.1,
        metadata={"help": "β of DDO: scale of the log-ratio log p_θ − log p_ref inside the sigmoid (official 0.1)."},
    )
    alpha: float = field(default=0.5, metadata={"help": "α of DDO: weight of the fake (reference-sample) term."})
    lambda_path: float = field(
        default=0.2, metadata={"help": "λ: weight of the path-consistency loss when `loss_weights` is unset."}
    )
    logps_normalization: str = field(
        default="mean",
        metadata={"help": "How token log-probs make log p(x0|x_t): `mean` over masked tokens (official) or `sum`."},
    )
    reference_temperature: float = field(
        default=0.0,
        metadata={
            "help": "Temperature at which fake tokens x̂ are drawn from the reference; 0 takes its argmax (official)."
        },
    )
    objective_kwargs: dict[str, dict[str, Any]] | str | None = field(
        default=None,
        metadata={
            "help": "Hyperparameters of objectives that declare their own, by objective name, e.g. "
            "`{'dparallel': {'entropy_weight': 2.0, 'entropy_temperature': 0.5, 'complementary_masks': True}}` (the "
            "published values are the defaults) or `{'anchor': {'mask_ratios': [0.75, 0.5, 0.25]}}`. Only objectives "
            "of `loss_type`."
        },
    )

    logits_chunk_size: int = field(
        default=256,
        metadata={
            "help": "Window tokens (batch rows × positions) per chunk when the objectives' log-probabilities, "
            "entropies and argmaxes are computed from the last hidden states inside the forward: no whole float32 "
            "window of logits is built and the backward recomputes each chunk's logits (one more LM-head matmul). 0 "
            "computes them from the whole window of logits (faster where the LM head dominates, more memory)."
        },
    )

    # Reference model
    sync_ref_model: bool = field(
        default=True,
        metadata={
            "help": "Refresh θ_ref from θ every `ref_model_sync_steps` optimizer steps (official multi-round "
            "refinement). Incompatible with `precompute_ref_log_probs`."
        },
    )
    ref_model_sync_steps: int = field(default=10, metadata={"help": "Optimizer steps between reference refreshes."})
    ref_model_mixup_alpha: float = field(
        default=1.0,
        metadata={"help": "Refresh θ_ref ← α θ + (1 − α) θ_ref; 1.0 is a hard copy (official)."},
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "Compute the fake tokens and every reference log-prob once before training (needs a fixed "
            "reference: `sync_ref_model=False` and `reference_temperature=0`), removing the reference forward from "
            "the training step."
        },
    )

    # Data
    block_size: int | None = field(
        default=None,
        metadata={"help": "Training block size B; defaults to the teacher's block size recorded in the dataset."},
    )
    max_prompt_length: int | None = field(
        default=512, metadata={"help": "Prompts longer than this keep their last tokens (counted and logged)."}
    )
    max_completion_length: int | None = field(
        default=1024,
        metadata={"help": "Completions longer than this are cut (counted and logged); see `completion_truncation`."},
    )
    completion_truncation: str = field(
        default="keep_start",
        metadata={"help": "`keep_start` cuts over-long completions to `max_completion_length`; `error` refuses them."},
    )
    num_eos_tokens: int = field(
        default=2,
        metadata={"help": "EOS tokens completing the last block that are trained on (official `post_num: 2`)."},
    )
    state_sampling: str | None = field(
        default=None,
        metadata={
            "help": "`trajectory` (states of the teacher's trajectory) or `random` (random masks of its output). "
            "Defaults to `random` when every objective trains on random masks (`loss_type == ['sft']`), else "
            "`trajectory`."
        },
    )
    mask_ratios: list[float] = field(
        default_factory=lambda: [1.0, 0.75, 0.5, 0.25],
        metadata={"help": "Candidate fractions r of each block's tokens that are masked in a trajectory state."},
    )
    mask_ratio_power: float = field(
        default=8.0,
        metadata={"help": "Draw r with probability ∝ r^power (official 8: r = 1 in about 0.91 of the draws)."},
    )
    block_alignment: str | None = field(
        default=None,
        metadata={
            "help": "Training block grid: `absolute` (block id = position // B, the grid of block-causal inference), "
            "`response` (blocks start at the response, the official T3D trainer's choice, to reproduce its released "
            "checkpoint) or unset (the model family's decoding grid: absolute for block-causal models, response for "
            "bidirectional ones)."
        },
    )
    state_order: str = field(
        default="latest",
        metadata={
            "help": "Mask the `latest`-decoded tokens of each block (a real trajectory state) or the `earliest` "
            "(the official code)."
        },
    )
    random_token_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of an example's masked inputs replaced by random tokens of the tokenizer's vocabulary "
            "(at least one per example when positive), as the official code's `random_ratio: 0.1`. The default 0 "
            "follows docs/results.md, where 0.1 cost full-step accuracy and gained nothing in few-step decoding."
        },
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset preparation."})

    # Saving
    save_merged_model: bool = field(
        default=False,
        metadata={"help": "With LoRA, `save_model` writes the merged model instead of the adapter."},
    )

    def __post_init__(self) -> None:
        self.remove_unused_columns = False  # the collator needs the trajectory columns
        if self.lr_scheduler_type == "cosine_with_min_lr" and not self.lr_scheduler_kwargs:
            self.lr_scheduler_kwargs = {"min_lr_rate": 0.1}  # the paper's floor (see the NOTE above)
        super().__post_init__()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        if not self.loss_type:
            raise ValueError("`loss_type` is empty; give at least one objective, e.g. ['ddo', 'path'] (T3D).")
        self.loss_type = [_resolved("loss_type", OBJECTIVES, name) for name in self.loss_type]
        if self.model_family is not None:
            self.model_family = _resolved("model_family", FAMILIES, self.model_family)
        repeated = sorted({name for name in self.loss_type if self.loss_type.count(name) > 1})
        if repeated:
            raise ValueError(
                f"`loss_type` {self.loss_type} names {repeated} more than once; give each objective once and set its "
                "weight with `loss_weights`."
            )
        self._check_objective_kwargs()
        if self.loss_weights is None:
            self.loss_weights = [self._default_weight(name) for name in self.loss_type]
        if len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} entries but loss_type has {len(self.loss_type)}; give "
                "one weight per objective."
            )
        if self.state_sampling is None:
            random_only = all(OBJECTIVES[name].state_sampling == "random" for name in self.loss_type)
            self.state_sampling = "random" if random_only else "trajectory"
        if self.logps_normalization not in ("mean", "sum"):
            raise ValueError(f"logps_normalization must be 'mean' or 'sum', got {self.logps_normalization!r}.")
        if self.precompute_ref_log_probs and self.sync_ref_model:
            raise ValueError(
                "precompute_ref_log_probs=True needs a reference that never changes, but sync_ref_model=True "
                "refreshes it during training. Set sync_ref_model=False to precompute, or keep the sync and "
                "precompute_ref_log_probs=False."
            )
        if self.precompute_ref_log_probs and self.reference_temperature > 0:
            raise ValueError(
                "precompute_ref_log_probs=True needs deterministic fake tokens (reference_temperature=0); with "
                f"reference_temperature={self.reference_temperature} they are resampled at every step."
            )
        self._check_settings()

    def _check_settings(self) -> None:
        """Every T3D setting's type and range (NaN included), with a message naming the field, the value and what
        is accepted."""
        choices = {
            "block_alignment": (None, "absolute", "response"),
            "state_sampling": ("trajectory", "random"),
            "state_order": ("latest", "earliest"),
            "completion_truncation": ("keep_start", "error"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        # name -> (lowest, lowest excluded, highest, integer, None allowed)
        ranges = {
            "beta": (0.0, True, None, False, False),
            "alpha": (0.0, False, None, False, False),
            "lambda_path": (0.0, False, None, False, False),
            "reference_temperature": (0.0, False, None, False, False),
            "ref_model_sync_steps": (1, False, None, True, False),
            "ref_model_mixup_alpha": (0.0, True, 1.0, False, False),
            "block_size": (1, False, None, True, True),
            "max_prompt_length": (1, False, None, True, True),
            "max_completion_length": (1, False, None, True, True),
            "num_eos_tokens": (0, False, None, True, False),
            "mask_ratio_power": (None, False, None, False, False),
            "random_token_ratio": (0.0, False, 1.0, False, False),
            "logits_chunk_size": (0, False, None, True, False),
        }
        for name, (low, low_open, high, integer, optional) in ranges.items():
            check_number(name, getattr(self, name), low, low_open, high, integer, optional)
        for index, weight in enumerate(self.loss_weights):
            check_number(f"loss_weights[{index}]", weight, 0.0, False, None, False, False)
        if not self.mask_ratios:
            raise ValueError("`mask_ratios` must hold at least one ratio in (0, 1].")
        for index, ratio in enumerate(self.mask_ratios):
            check_number(f"mask_ratios[{index}]", ratio, 0.0, False, 1.0, False, False)
        if max(self.mask_ratios) <= 0:
            raise ValueError(f"`mask_ratios` {list(self.mask_ratios)} mask nothing; give at least one ratio in (0, 1].")

    def _default_weight(self, name: str) -> float:
        field_name = OBJECTIVES[name].weight_field
        return float(getattr(self, field_name)) if field_name else 1.0

    def _check_objective_kwargs(self) -> None:
        """``objective_kwargs`` sets only objectives of ``loss_type`` that take hyperparameters, with accepted keys."""
        kwargs = self.objective_kwargs or {}
        if not isinstance(kwargs, dict) or not all(isinstance(value, dict) for value in kwargs.values()):
            raise ValueError(
                "`objective_kwargs` must map objective names to dicts of their hyperparameters, e.g. "
                f"{{'dparallel': {{'entropy_weight': 2.0}}}}; got {kwargs!r}."
            )
        stray = sorted(set(kwargs) - set(self.loss_type))
        if stray:
            raise ValueError(
                f"`objective_kwargs` sets {stray}, which are not in loss_type {self.loss_type}: add them to loss_type "
                "or remove their entries."
            )
        for name in self.loss_type:
            objective_params(self, name)  # unknown keys and bad values are refused here, naming the objective
        extra_states(self)  # unknown states, bad state parameters and conflicting declarations are refused here

    @property
    def extra_states(self) -> dict[str, dict[str, Any]]:
        """The extra states the objectives of ``loss_type`` read (:mod:`t3d_trl.states`), ``{name: parameters}``: the
        collator builds them besides the main state and the student runs one more forward on each."""
        return extra_states(self)

    @property
    def uses_teacher(self) -> bool:
        """Whether an objective reads the frozen teacher (the anchor does): the trainer then keeps the initial model."""
        return any(OBJECTIVES[name].needs_teacher for name in self.loss_type)

    @property
    def uses_reference(self) -> bool:
        """Whether an objective needs the reference model (DDO does; the others do not)."""
        return any(OBJECTIVES[name].needs_reference for name in self.loss_type)
