"""Argument dataclasses of the ``t3d-trl`` command line and the example scripts.

The choices of the flags that name a registered thing (``--model_family``, ``--loss_type``, ``--remasking``) come
from the registries when the parser is built (:func:`t3d_trl.scripts.utils.make_script_parser`), not from lists here.

Every dataclass is parsed with :class:`trl.TrlParser`: each field is a ``--flag`` and a key of the YAML file given
with ``--config``; flags given on the command line override the YAML values. Field names never collide with
:class:`~t3d_trl.T3DConfig`'s, so they can be parsed together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..generation.configuration import DEFAULT_MAX_NEW_TOKENS

__all__ = [
    "DatasetArguments",
    "EvalArguments",
    "GenerationArguments",
    "ImportArguments",
    "LoraArguments",
    "ModelArguments",
    "RolloutArguments",
    "TrainDatasetArguments",
]


@dataclass
class ModelArguments:
    """How to load a model and its tokenizer (``from_pretrained``). As in TRL's ``ModelConfig``, whether remote code
    may run is a setting of the command (``--trust_remote_code`` of rollout and eval, ``T3DConfig.trust_remote_code``
    of train), not of the model."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local directory of the model (e.g. `JetLM/SDAR-1.7B-Chat`)."}
    )
    model_revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of the model."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to load instead of the model's own."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype: `auto` (the checkpoint's), `bfloat16`, `float16` or `float32`.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "Attention kernel: `sdpa` (default; takes the 4D block-causal masks), `eager` or "
            "`flex_attention` (GPU only for training)."
        },
    )
    mask_token: str | None = field(
        default=None,
        metadata={
            "help": "Mask token to set on a tokenizer that does not declare one (e.g. `<|MASK|>`); it must already "
            "be in the vocabulary."
        },
    )


@dataclass
class LoraArguments:
    """Train a LoRA adapter instead of the full model (PEFT)."""

    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of the full model."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules to adapt (e.g. `q_proj k_proj v_proj o_proj`, or `all-linear`); PEFT's default "
            "for the architecture when unset."
        },
    )


@dataclass
class DatasetArguments:
    """Where a dataset comes from: a local directory or file, or a Hub dataset."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id (`load_dataset(dataset_name, dataset_config, split=dataset_split)`), or a "
            "local path (then read like `dataset_path`)."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Local dataset: a `save_to_disk` directory, a `t3d-trl rollout` output directory (its "
            "`dataset/` is read), or a `.json`/`.jsonl`/`.parquet`/`.csv`/`.arrow` file."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first `max_samples` rows (quick runs)."}
    )


@dataclass
class RolloutArguments(DatasetArguments):
    """Settings of `t3d-trl rollout` (besides the model and decoding settings)."""

    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the checkpoint's own modelling code. Off by default: SDAR loads natively as Qwen3 with "
            "t3d-trl; LLaDA-style checkpoints need it."
        },
    )

    output_dir: str = field(
        default="rollouts",
        metadata={
            "help": "Resumable rollout directory: shards as batches finish, then the final dataset in "
            "`<output_dir>/dataset` (read it with `load_from_disk`, or give the directory to `t3d-trl train "
            "--dataset_path`)."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts (text or messages)."})
    prompt_template: str | None = field(
        default=None,
        metadata={
            "help": "Template applied to text prompts: `{prompt}` is replaced by the prompt; `math` is the "
            "GSM8K/MATH500 evaluation prompt (`{prompt}` + 'Please reason step by step, and put your final "
            "answer within \\boxed{}.')."
        },
    )
    as_chat: bool = field(
        default=False,
        metadata={"help": "Wrap text prompts as a user message, so the tokenizer's chat template is applied."},
    )
    model_family: str | None = field(
        default=None,
        metadata={
            "help": "`block_causal` (SDAR, decoder LMs; loaded with AutoModelForCausalLM) or `bidirectional` "
            "(LLaDA-style; AutoModelForMaskedLM). Detected from the model when unset.",
        },
    )
    batch_size: int = field(
        default=16,
        metadata={
            "help": "Prompts per `generate` call (per process); a call decodes batch_size x num_generations sequences."
        },
    )
    num_generations: int = field(
        default=1,
        metadata={
            "help": "Samples per prompt: one row each, with a `sample_index` column; a prompt's rows are "
            "consecutive. More than 1 needs sampling (`--temperature` > 0)."
        },
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Refuse prompts longer than this many tokens (checked before generating)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling generators (one per batch)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the trajectories to the Hub with a card."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repository (`user/name`)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})


@dataclass
class ImportArguments(DatasetArguments):
    """Settings of `t3d-trl import`: the producer's records, its format and the teacher's block settings."""

    format: str = field(
        default="t3d-json",
        metadata={
            "help": "Format of the records: `t3d-json` (the official T3D sampler's JSON), `jetengine`, `sglang`, "
            "`diffusers` (BlockRefinementRecorder records), `t3d-trl`, or a format registered with "
            "`t3d_trl.rollout.register_trajectory_format`."
        },
    )
    block_size: int | None = field(
        default=None,
        metadata={
            "help": "The teacher's block size (official SDAR rollouts: 4); required unless the records state it."
        },
    )
    steps_per_block: int | None = field(
        default=None,
        metadata={"help": "The teacher's denoising steps per block (official: 4); unset: at most `block_size`."},
    )
    model_family: str = field(
        default="block_causal",
        metadata={
            "help": "The student's model family, whose block grid the steps are checked on: `block_causal` (SDAR) "
            "or `bidirectional` (LLaDA-style).",
        },
    )
    eos_token_id: list[int] | None = field(
        default=None,
        metadata={
            "help": "Token id(s) ending a completion (tokens after the first are dropped); default: the "
            "tokenizer's EOS."
        },
    )
    strict: bool = field(
        default=False, metadata={"help": "Stop at the first sample that would be dropped instead of counting it."}
    )
    output_dir: str = field(
        default="trajectories",
        metadata={
            "help": "Where the trajectory dataset is saved (`save_to_disk`; give it to `t3d-trl train --dataset_path`)."
        },
    )


@dataclass
class GenerationArguments:
    """Teacher decoding settings (fields of `DiffusionGenerationConfig`); unset ones keep the model's defaults."""

    block_size: int | None = field(default=None, metadata={"help": "Tokens per block B (official rollout: 4)."})
    steps_per_block: int | None = field(
        default=None, metadata={"help": "Denoising steps per block S, 1 <= S <= B (official rollout: 4)."}
    )
    remasking: str | None = field(
        default=None,
        metadata={
            "help": "`low_confidence_static` (official), `low_confidence_dynamic`, `sequential` or `entropy_bounded`."
        },
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature; 0 decodes greedily (official rollout: 0.1)."}
    )
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling."})
    top_p: float | None = field(default=None, metadata={"help": "Top-p (nucleus) sampling."})
    confidence_threshold: float | None = field(
        default=None, metadata={"help": "Threshold of `low_confidence_dynamic`."}
    )
    entropy_bound: float | None = field(default=None, metadata={"help": "Entropy budget of `entropy_bounded`."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": f"Generated tokens per prompt (default {DEFAULT_MAX_NEW_TOKENS}; official rollout: 2000)."},
    )

    def to_dict(self) -> dict:
        """The settings that were given (unset ones are left to the model's defaults)."""
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class TrainDatasetArguments(DatasetArguments):
    """The trajectory dataset of `t3d-trl train`."""

    eval_split: str | None = field(
        default=None,
        metadata={"help": "Split of the same dataset to evaluate the training losses on (with `--eval_strategy`)."},
    )


@dataclass
class EvalArguments:
    """Settings of `t3d-trl eval`: the evaluation sets, the decoding settings and the outputs."""

    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the checkpoint's own modelling code. Off by default: SDAR loads natively as Qwen3 with "
            "t3d-trl; LLaDA-style checkpoints need it."
        },
    )

    eval_dataset: list[str] = field(
        default_factory=lambda: ["gsm8k"],
        metadata={
            "help": "Evaluation sets: registered names (`gsm8k`, `math500`, `mbpp`, `mbpp_sanitized`, "
            "`humaneval`), or local datasets with `prompt` and `reference` columns (a `save_to_disk` "
            "directory or a `.json`/`.jsonl`/`.parquet` file)."
        },
    )
    eval_data_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local files in the Hub schema for the registered sets, instead of downloading them: one "
            "per registered name of `eval_dataset`, in order (local datasets need none)."
        },
    )
    eval_split: str | None = field(default=None, metadata={"help": "Split of the registered sets (default: test)."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N problems of each set."})
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Prompt template of the registered sets (`{question}`, and `{tests}` for MBPP)."},
    )
    as_chat: bool = field(
        default=True,
        metadata={"help": "Send prompts of the registered sets as chat messages (`--no_as_chat` for plain text)."},
    )
    model_family: str | None = field(
        default=None,
        metadata={
            "help": "`block_causal` or `bidirectional`; detected from the model when unset.",
        },
    )
    block_sizes: list[int] = field(default_factory=lambda: [4, 8], metadata={"help": "Block sizes B to evaluate."})
    tokens_per_step: list[int] = field(
        default_factory=lambda: [2, 4],
        metadata={
            "help": "Tokens per step B/S to evaluate for each block size (the paper's few-step settings are "
            "2 and 4; 1 is full-step decoding). Pairs where B is not a multiple are skipped."
        },
    )
    remasking: str = field(
        default="low_confidence_static",
        metadata={
            "help": "Remasking strategy (`low_confidence_dynamic` with `--confidence_threshold` for dynamic decoding)."
        },
    )
    confidence_threshold: float | None = field(
        default=None, metadata={"help": "Confidence threshold of dynamic decoding (the paper's: 0.9)."}
    )
    temperature: float = field(default=0.0, metadata={"help": "Decoding temperature (0: greedy, reproducible)."})
    scorer: str | None = field(
        default=None,
        metadata={
            "help": "Scorer for every row instead of each set's own: `exact_match`, `math`, `code`, `paper_math`, "
            "`paper_code`, or a name registered with `register_scorer` by a module of `--scorer_modules` (an import "
            "path such as `module:function` is refused)."
        },
    )
    scorer_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules imported before scoring, which register scorers with `register_scorer` (e.g. "
            "`t3d_trl.demo.tasks` for the demo tasks' `one_of`, `digit_sum`, `permutation`)."
        },
    )
    allow_code_execution: bool = field(
        default=False,
        metadata={
            "help": "Allow the `code` scorer to run model-written programs (MBPP, HumanEval). NOT a sandbox: "
            "use a disposable container. `HF_ALLOW_CODE_EVAL=1` does the same."
        },
    )
    code_timeout: float = field(default=3.0, metadata={"help": "Seconds per program of the `code` scorer."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per `generate` call."})
    max_new_tokens: int = field(default=DEFAULT_MAX_NEW_TOKENS, metadata={"help": "Generation budget per prompt."})
    warmup: bool = field(default=False, metadata={"help": "One untimed `generate` per setting before timing."})
    device: str | None = field(default=None, metadata={"help": "Device (default: `cuda` when available, else CPU)."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    output_dir: str = field(
        default="eval_results",
        metadata={"help": "Where `results.json`, `results.md`, `accuracy_vs_tokens_per_step.png` and the samples go."},
    )
