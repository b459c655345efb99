"""Few-step evaluation loop: accuracy and decoding speed of a diffusion LM over decoding settings.

The model must expose the block-diffusion ``generate`` of :mod:`t3d_trl.generation` (patched onto a model by
``t3d_trl.patch_model(model)``)::

    out = model.generate(input_ids=..., attention_mask=..., block_size=..., steps_per_block=...,
                         remasking=..., confidence_threshold=..., max_new_tokens=...,
                         return_dict_in_generate=True)

returning ``out.sequences`` (``[batch, prompt_len + new]``, the left-padded prompt first, then the generated
tokens, padded with ``pad_token_id`` after EOS) and ``out.nfe`` (``[batch]``, forward passes spent on each
sequence).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..devices import model_device
from ..generation.configuration import DEFAULT_MAX_NEW_TOKENS
from ..prompts import render_prompts, tokenizer_of
from .report import EvalResult, write_json, write_markdown, write_plot
from .scorers import _check_code_execution_allowed, available_scorers, get_scorer, scorer_info

__all__ = ["DecodingSetting", "evaluate_few_step"]


@dataclass
class DecodingSetting:
    """One decoding configuration of the few-step evaluation.

    Attributes:
        block_size: Tokens per block.
        steps_per_block: Denoising steps per block (the upper bound for dynamic decoding).
        remasking: Remasking strategy understood by the model's ``generate``.
        confidence_threshold: Confidence threshold of dynamic decoding; None for static decoding (the argument is
            then not passed to ``generate``, which keeps the model's default).
        name: Display name; derived from the other fields when None (e.g. ``"B4-S1-static"``).
    """

    block_size: int
    steps_per_block: int
    remasking: str = "low_confidence_static"
    confidence_threshold: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        for field_name in ("block_size", "steps_per_block"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecodingSetting.{field_name} must be a positive integer, got {value!r}.")
        if self.steps_per_block > self.block_size:
            raise ValueError(
                f"DecodingSetting.steps_per_block ({self.steps_per_block}) cannot exceed block_size "
                f"({self.block_size}): a block is decoded in at most one step per token."
            )
        if not isinstance(self.remasking, str) or not self.remasking:
            raise ValueError(f"DecodingSetting.remasking must be a non-empty string, got {self.remasking!r}.")
        if self.confidence_threshold is not None:
            threshold = float(self.confidence_threshold)
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(
                    "DecodingSetting.confidence_threshold must be in [0, 1] or None, got "
                    f"{self.confidence_threshold!r}."
                )
            self.confidence_threshold = threshold
        if self.name is None:
            if self.confidence_threshold is not None:
                kind = f"dynamic{self.confidence_threshold:g}"
            else:
                kind = "dynamic" if "dynamic" in self.remasking else "static"
            self.name = f"B{self.block_size}-S{self.steps_per_block}-{kind}"

    @classmethod
    def from_any(cls, setting: DecodingSetting | Mapping[str, Any]) -> DecodingSetting:
        """Build a setting from a :class:`DecodingSetting` or a dict of its fields.

        The dict key ``threshold`` is accepted as an alias of ``confidence_threshold``.

        Args:
            setting: Setting or mapping.

        Returns:
            The setting.

        Raises:
            ValueError: For unknown keys, missing required keys or invalid values.
        """
        if isinstance(setting, DecodingSetting):
            return setting
        if not isinstance(setting, Mapping):
            raise ValueError(f"A decoding setting must be a dict or DecodingSetting, got {type(setting).__name__}.")
        data = dict(setting)
        if "threshold" in data:
            if "confidence_threshold" in data:
                raise ValueError("Give either 'threshold' or 'confidence_threshold', not both.")
            data["confidence_threshold"] = data.pop("threshold")
        allowed = {"block_size", "steps_per_block", "remasking", "confidence_threshold", "name"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"Unknown decoding setting key(s) {unknown}; allowed keys: {sorted(allowed)}.")
        missing = sorted({"block_size", "steps_per_block"} - set(data))
        if missing:
            raise ValueError(f"Decoding setting {setting!r} lacks the required key(s) {missing}.")
        return cls(**data)


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    candidates = [getattr(tokenizer, "eos_token_id", None)]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        candidates.append(getattr(generation_config, "eos_token_id", None))
    for candidate in candidates:
        if candidate is None:
            continue
        if isinstance(candidate, int):
            ids.add(candidate)
        else:
            ids.update(int(c) for c in candidate)
    return ids


@contextmanager
def _pad_token_available(tokenizer: Any) -> Iterator[None]:
    if getattr(tokenizer, "pad_token", None) is not None:
        yield
        return
    if getattr(tokenizer, "eos_token", None) is None:
        raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with; set tokenizer.pad_token.")
    warnings.warn("The tokenizer has no pad token; padding prompts with the EOS token.", stacklevel=3)
    tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.pad_token = None


def _generated_lengths(generated: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """Tokens up to and including the first EOS in each row (all tokens when there is none)."""
    batch, width = generated.shape
    if width == 0 or not eos_ids:
        return torch.full((batch,), width, dtype=torch.long)
    is_eos = torch.zeros_like(generated, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= generated == eos
    has_eos = is_eos.any(dim=1)
    first = torch.argmax(is_eos.int(), dim=1)
    return torch.where(has_eos, first + 1, torch.full_like(first, width)).long()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "setting"


def _sync(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _validate_dataset(dataset: Any) -> None:
    columns = getattr(dataset, "column_names", None)
    if columns is None or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"`dataset` must be a datasets.Dataset (see t3d_trl.evaluation.load_eval_dataset), got "
            f"{type(dataset).__name__}; a list of rows converts with datasets.Dataset.from_list(rows)."
        )
    missing = [c for c in ("prompt", "reference") if c not in columns]
    if missing:
        raise ValueError(
            f"The evaluation dataset lacks the column(s) {missing}; it needs 'prompt' (chat messages or text) and "
            f"'reference', optionally 'scorer'. Got columns {list(columns)}."
        )
    if len(dataset) == 0:
        raise ValueError("The evaluation dataset is empty.")


def check_output_dir(output_dir: str | os.PathLike[str] | None, argument: str = "output_dir") -> None:
    """Refuse an output directory that cannot be one (an existing file, or below a file), before any work.

    Args:
        output_dir: The directory results go to (None: nothing is written).
        argument: The name of the argument or flag, for the message.

    Raises:
        ValueError: If ``output_dir`` or one of its parents is an existing file.
    """
    if output_dir is None:
        return
    path = os.path.abspath(os.fspath(output_dir))
    probe = path
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        where = "is a file" if probe == path else f"is below the file {probe}"
        raise ValueError(
            f"{argument} {os.fspath(output_dir)!r} {where}; the results need a directory: give a new or existing "
            "directory."
        )


def check_few_step_model(model: Any) -> None:
    """Refuse a model without the few-step ``generate`` of :mod:`t3d_trl.generation`, saying how to give it one.

    A model whose ``generate`` is transformers' autoregressive one (loaded without t3d-trl, or built from a config)
    would fail at its first call with "model_kwargs are not used" on ``block_size`` and ``steps_per_block``. Models
    with another ``generate`` of their own (remote code, a custom decoder) are left to judge their arguments.

    Raises:
        TypeError: For a model without ``generate``, or with transformers' ``GenerationMixin.generate``.
    """
    generate = getattr(model, "generate", None)
    if not callable(generate):
        raise TypeError(
            f"`model` ({type(model).__name__}) has no generate(); give it t3d-trl's few-step decoding with "
            "t3d_trl.patch_model(model, tokenizer)."
        )
    from transformers import GenerationMixin

    from ..generation import FewStepDiffusionGenerationMixin

    if not isinstance(model, FewStepDiffusionGenerationMixin) and getattr(type(model), "generate", None) is getattr(
        GenerationMixin, "generate", None
    ):
        raise TypeError(
            f"`model` ({type(model).__name__}) has transformers' autoregressive generate(), which does not take "
            "block_size or steps_per_block; give it t3d-trl's few-step decoding first: "
            "model = t3d_trl.patch_model(model, tokenizer) (t3d-trl's load hook does this for checkpoints it saved "
            "when `t3d_trl` is imported before loading)."
        )


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def evaluate_few_step(
    model: Any,
    processing_class: Any,
    dataset: Any,
    settings: Sequence[DecodingSetting | Mapping[str, Any]],
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    output_dir: str | os.PathLike[str] | None = None,
    allow_code_execution: bool = False,
    progress: bool = True,
    *,
    scorer: str | None = None,
    code_timeout: float = 3.0,
    dataset_name: str | None = None,
    warmup: bool = False,
    generate_kwargs: Mapping[str, Any] | None = None,
    paper_scores: bool = True,
) -> list[EvalResult]:
    """Evaluate a diffusion LM under several few-step decoding settings.

    For every setting, the dataset is generated in batches (prompts rendered with the chat template when they
    are message lists, tokenised with left padding), completions are decoded up to the first EOS and scored,
    and the speed of generation is measured with :func:`time.perf_counter` around each ``generate`` call
    (synchronising CUDA). Metrics:

    * accuracy = correct / samples,
    * tokens/s = generated tokens / generation time,
    * latency per sample = generation time / samples (batched: the batch's time is shared by its samples),
    * avg NFE = mean forward passes per sample (``out.nfe``),
    * avg generated length = mean tokens up to and including the first EOS,
    * tokens per forward = generated tokens / forward passes,
    * paper accuracy = the share the scorers' paper twins pass (``paper_math`` for ``math``, ``paper_code`` for
      ``code``: the T3D paper's scoring, see :func:`t3d_trl.evaluation.register_scorer`), and the number of
      problems where the two verdicts differ; both None when a row's scorer has no paper twin.

    Args:
        model: Model with the block-diffusion ``generate`` of :mod:`t3d_trl.generation`.
        processing_class: Tokenizer (or processor) used to template, tokenise and decode.
        dataset: Dataset with ``prompt`` and ``reference`` columns and optionally ``scorer`` (per-row scorer
            name) and ``id``, as built by :func:`t3d_trl.evaluation.load_eval_dataset`.
        settings: Decoding settings, as :class:`DecodingSetting` or dicts of its fields.
        batch_size: Prompts per ``generate`` call.
        max_new_tokens: Generation budget per prompt.
        output_dir: When given, ``results.json``, ``results.md``, ``accuracy_vs_tokens_per_step.png`` and
            per-setting ``samples_<setting>.jsonl`` files are written there.
        allow_code_execution: Allow the ``code`` scorer to run model-written programs (or set
            ``HF_ALLOW_CODE_EVAL=1``). Required when any row uses the ``code`` scorer.
        progress: Show a tqdm progress bar.
        scorer: Scorer name overriding the dataset's ``scorer`` column; defaults to ``exact_match`` for
            datasets without one.
        code_timeout: Per-program timeout of the ``code`` scorer, in seconds.
        dataset_name: Name recorded in the results.
        warmup: Run one untimed ``generate`` on the first batch of each setting before timing (compilation,
            CUDA kernel selection).
        generate_kwargs: Extra keyword arguments passed to every ``generate`` call.
        paper_scores: Also score every completion with its scorer's paper twin (each program of a code set then
            runs twice).

    Returns:
        One :class:`EvalResult` per setting, in order; each holds its per-sample results in
        :attr:`EvalResult.samples` (one dict per problem, as in the ``samples_<setting>.jsonl`` files).

    Raises:
        ValueError: For an empty dataset, missing columns, a missing reference, no or invalid settings, unknown
            scorers, a ``batch_size``/``max_new_tokens`` that is not a positive integer, ``generate_kwargs`` that
            set what a setting sets or that the model's decoding refuses, code scoring without opting in to
            execution, or an ``output_dir`` that is a file. All are raised before anything is generated.
        TypeError: For a model without ``generate``, or with transformers' autoregressive ``generate`` (not patched
            with :func:`t3d_trl.patch_model`), or ``generate_kwargs`` that are not a mapping.
    """
    _validate_dataset(dataset)
    parsed = _parse_settings(settings)
    _check_sizes(batch_size, max_new_tokens)
    check_output_dir(output_dir, "output_dir")
    check_few_step_model(model)
    _check_generate_kwargs(model, parsed, max_new_tokens, generate_kwargs)
    rows = _scored_rows(dataset, scorer, paper_scores)
    scorers = _load_scorers([*rows.scorer_names, *filter(None, rows.paper_names)], allow_code_execution, code_timeout)

    tokenizer = tokenizer_of(processing_class)
    device = model_device(model)
    eos_ids = _eos_token_ids(model, tokenizer)
    texts, chat = render_prompts(processing_class, rows.prompts)
    templated = any(chat)  # then every prompt is tokenised without special tokens (the template wrote them)
    batches = [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)]
    batch_inputs = _BatchInputs(tokenizer, texts, templated, device)

    if hasattr(model, "eval") and callable(model.eval):
        model.eval()

    results: list[EvalResult] = []
    with _pad_token_available(tokenizer):
        for setting in parsed:
            call_kwargs = _generate_call_kwargs(setting, max_new_tokens, generate_kwargs)
            if warmup:
                _warm_up(model, batch_inputs(batches[0]), call_kwargs, device)
            tally, samples = _run_setting(
                model, tokenizer, setting, call_kwargs, batches, batch_inputs, rows, scorers, eos_ids, progress
            )
            result = tally.result(setting, len(texts), dataset_name)
            result.samples = samples
            results.append(result)

    if output_dir is not None:
        _write_outputs(os.fspath(output_dir), results, parsed, dataset_name)
    return results


# --------------------------------------------------------------------------------------------------------------------
# Steps of the evaluation
# --------------------------------------------------------------------------------------------------------------------


def _parse_settings(settings: Any) -> list[DecodingSetting]:
    """The settings as :class:`DecodingSetting` objects (one setting or a sequence of them; never none)."""
    if isinstance(settings, (DecodingSetting, Mapping)):
        settings = [settings]
    parsed = [DecodingSetting.from_any(s) for s in settings]
    if not parsed:
        raise ValueError("`settings` is empty; give at least one decoding setting.")
    return parsed


def _check_sizes(batch_size: Any, max_new_tokens: Any) -> None:
    """Refuse a ``batch_size`` or ``max_new_tokens`` that is not a positive integer (``True``, ``2.0``, NaN...)."""
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


#: ``generate`` arguments every call of a setting sets itself
_SET_PER_CALL = (
    "input_ids", "attention_mask", "block_size", "steps_per_block", "remasking", "confidence_threshold",
    "max_new_tokens", "return_dict_in_generate",
)  # fmt: skip
#: ``generate`` inputs that are not generation-config fields
_GENERATE_INPUTS = ("generator", "use_cache", "family", "generation_config")


def _check_generate_kwargs(
    model: Any, settings: Sequence[DecodingSetting], max_new_tokens: int, generate_kwargs: Mapping[str, Any] | None
) -> None:
    """Refuse ``generate_kwargs`` that would silently override a setting (or ask for several completions per
    problem) and, for a model with t3d-trl's decoding, every setting the decoding would refuse, before generating."""
    generate_kwargs = {} if generate_kwargs is None else generate_kwargs
    if not isinstance(generate_kwargs, Mapping):
        raise TypeError(
            f"generate_kwargs must be a dict of generate() arguments, got {type(generate_kwargs).__name__}."
        )
    overridden = sorted(set(generate_kwargs) & set(_SET_PER_CALL))
    if overridden:
        raise ValueError(
            f"generate_kwargs sets {overridden}, which every call sets from its DecodingSetting (block_size, "
            "steps_per_block, remasking, confidence_threshold) or from the arguments of evaluate_few_step "
            "(max_new_tokens); give them there."
        )
    samples = generate_kwargs.get("num_return_sequences")
    if samples not in (None, 1):
        raise ValueError(
            f"generate_kwargs sets num_return_sequences={samples!r}: evaluate_few_step scores one completion per "
            "problem. Remove it (for several samples per prompt, roll out with generate_trajectories)."
        )
    from ..generation import DiffusionGenerationConfig, FewStepDiffusionGenerationMixin
    from ..generation.decoding import unsupported_generation_settings

    if not isinstance(model, FewStepDiffusionGenerationMixin):
        return  # another decoder: its generate() judges its own arguments
    fields = {key: value for key, value in generate_kwargs.items() if key not in _GENERATE_INPUTS}
    unsupported = unsupported_generation_settings(fields)
    if unsupported:
        raise ValueError(
            f"generate_kwargs has options that few-step diffusion decoding does not implement: {unsupported}."
        )
    for setting in settings:
        overrides = _generate_call_kwargs(setting, max_new_tokens, fields)
        try:
            DiffusionGenerationConfig.from_generation_config(model.generation_config, **overrides)
        except ValueError as error:
            raise ValueError(f"Decoding setting {setting.name} with generate_kwargs {dict(fields)}: {error}") from None


@dataclass
class _ScoredRows:
    """The dataset's prompts, with each row's reference, scorer name and identifier."""

    prompts: list[Any]
    references: list[str]
    scorer_names: list[str]
    ids: list[Any]
    paper_names: list[str | None]


def _scored_rows(dataset: Any, scorer: str | None, paper_scores: bool = True) -> _ScoredRows:
    """The rows of ``dataset``; ``scorer`` overrides the ``scorer`` column, ``exact_match`` is the default; each
    row's paper twin comes from the scorer registry (None without one, or with ``paper_scores=False``)."""
    prompts = list(dataset["prompt"])
    raw_references = list(dataset["reference"])
    missing = [row for row, reference in enumerate(raw_references) if reference is None]
    if missing:
        raise ValueError(
            f"Row {missing[0]}: the `reference` is missing (None; {len(missing)} such row(s)); every problem needs a "
            "reference answer to be scored against. Drop those rows or fill in their references."
        )
    references = [str(r) for r in raw_references]  # numbers are compared as their text
    if scorer is not None:
        scorer_names = [scorer] * len(prompts)
    elif "scorer" in dataset.column_names:
        scorer_names = [s or "exact_match" for s in dataset["scorer"]]
    else:
        scorer_names = ["exact_match"] * len(prompts)
    unknown = sorted(set(scorer_names) - set(available_scorers()))
    if unknown:
        raise ValueError(
            f"Unknown scorer(s) {unknown} in the dataset. Valid scorers: {', '.join(available_scorers())}."
        )
    ids = list(dataset["id"]) if "id" in dataset.column_names else list(range(len(prompts)))
    twins = {name: scorer_info(name).paper if paper_scores else None for name in set(scorer_names)}
    return _ScoredRows(prompts, references, scorer_names, ids, [twins[name] for name in scorer_names])


def _load_scorers(names: Sequence[str], allow_code_execution: bool, code_timeout: float) -> dict[str, Any]:
    """One scorer per name; those that run code (the registry says which) only when code execution is allowed, with
    ``code_timeout`` for the library's ``code`` scorer (a paper twin keeps the paper's time budget)."""
    scorers: dict[str, Any] = {}
    for name in set(names):
        info = scorer_info(name)
        if info.executes_code:
            _check_code_execution_allowed(allow_code_execution)
            options: dict[str, Any] = {"allow_code_execution": True}
            if info.paper != name:  # the library's scorer; a paper scorer keeps its own limit
                options["timeout"] = code_timeout
            scorers[name] = get_scorer(name, **options)
        else:
            scorers[name] = get_scorer(name)
    return scorers


def _generate_call_kwargs(
    setting: DecodingSetting, max_new_tokens: int, generate_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The keyword arguments of every ``generate`` call of ``setting`` (the threshold only for dynamic decoding)."""
    call_kwargs: dict[str, Any] = dict(generate_kwargs or {})
    call_kwargs.update(
        block_size=setting.block_size,
        steps_per_block=setting.steps_per_block,
        remasking=setting.remasking,
        max_new_tokens=max_new_tokens,
        return_dict_in_generate=True,
    )
    if setting.confidence_threshold is not None:
        call_kwargs["confidence_threshold"] = setting.confidence_threshold
    return call_kwargs


@dataclass
class _BatchInputs:
    """Tokenises a batch of rendered prompts, left padded, on the model's device."""

    tokenizer: Any
    texts: list[str]
    templated: bool
    device: torch.device

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [self.texts[i] for i in indices],
            padding=True,
            padding_side="left",
            add_special_tokens=not self.templated,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}


def _warm_up(model: Any, inputs: dict[str, torch.Tensor], call_kwargs: dict[str, Any], device: torch.device) -> None:
    """One untimed ``generate`` (compilation, kernel selection)."""
    with torch.no_grad():
        model.generate(**inputs, **call_kwargs)
    _sync(device)


def _timed_generate(
    model: Any, inputs: dict[str, torch.Tensor], call_kwargs: dict[str, Any], device: torch.device
) -> tuple[Any, float]:
    """``model.generate`` and its wall-clock seconds (CUDA synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, **call_kwargs)
    _sync(device)
    return out, time.perf_counter() - start


def _output_sequences(out: Any, batch: int) -> torch.Tensor:
    """The ``[batch, prompt_len + new_tokens]`` sequences of a ``generate`` output (a tensor or a dict output)."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    if sequences.dim() != 2 or sequences.shape[0] != batch:
        raise ValueError(
            f"model.generate returned sequences of shape {tuple(sequences.shape)} for a batch of "
            f"{batch} prompts; expected [batch, prompt_len + new_tokens]."
        )
    return sequences


def _output_nfe(out: Any, batch: int) -> list[int] | None:
    """Forward passes per row of a ``generate`` output, or ``None`` when it does not report them."""
    nfe = None if isinstance(out, torch.Tensor) else getattr(out, "nfe", None)
    if nfe is None:
        return None
    nfe_tensor = torch.as_tensor(nfe).detach().cpu().reshape(-1)
    if nfe_tensor.numel() == 1 and batch > 1:
        nfe_tensor = nfe_tensor.expand(batch)
    return [int(v) for v in nfe_tensor.tolist()]


@dataclass
class _Tally:
    """Running totals of one setting: generation time, tokens, forwards and correct answers."""

    time: float = 0.0
    tokens: int = 0
    nfe: int = 0
    nfe_known: bool = True
    correct: int = 0
    paper_correct: int = 0
    paper_scored: int = 0
    disagreements: int = 0

    def result(self, setting: DecodingSetting, num_samples: int, dataset_name: str | None) -> EvalResult:
        assert setting.name is not None
        paper = self.paper_scored == num_samples  # every row has a paper verdict
        return EvalResult(
            setting=setting.name,
            block_size=setting.block_size,
            steps_per_block=setting.steps_per_block,
            remasking=setting.remasking,
            threshold=setting.confidence_threshold,
            accuracy=self.correct / num_samples,
            num_samples=num_samples,
            num_correct=self.correct,
            tokens_per_second=self.tokens / self.time if self.time > 0 else math.nan,
            latency_per_sample=self.time / num_samples,
            avg_nfe=self.nfe / num_samples if self.nfe_known else math.nan,
            avg_gen_length=self.tokens / num_samples,
            tokens_per_forward=self.tokens / self.nfe if self.nfe_known and self.nfe > 0 else math.nan,
            dataset=dataset_name,
            total_time_s=self.time,
            total_generated_tokens=self.tokens,
            total_nfe=self.nfe if self.nfe_known else 0,
            paper_accuracy=self.paper_correct / num_samples if paper else None,
            paper_num_correct=self.paper_correct if paper else None,
            num_disagreements=self.disagreements if paper else None,
        )


def _score_pair(
    scorers: Mapping[str, Any], name: str, paper_name: str | None, completion: str, reference: str
) -> tuple[bool, bool | None]:
    """The verdicts of a row's scorer and of its paper twin (None without one; the same verdict when the scorer is
    its own twin)."""
    correct = bool(scorers[name](completion, reference))
    if paper_name is None:
        return correct, None
    return correct, correct if paper_name == name else bool(scorers[paper_name](completion, reference))


def _score_batch(
    tokenizer: Any,
    generated: torch.Tensor,
    lengths: torch.Tensor,
    nfe_list: Sequence[int | None],
    indices: Sequence[int],
    texts: Sequence[str],
    rows: _ScoredRows,
    scorers: Mapping[str, Any],
    tally: _Tally,
) -> list[dict[str, Any]]:
    """Decode each completion up to its first EOS, score it and count it in ``tally``; returns the samples."""
    samples = []
    for row, index in enumerate(indices):
        length = int(lengths[row])
        tally.tokens += length
        completion = tokenizer.decode(generated[row, :length].tolist(), skip_special_tokens=True)
        name, paper_name = rows.scorer_names[index], rows.paper_names[index]
        correct, paper_correct = _score_pair(scorers, name, paper_name, completion, rows.references[index])
        tally.correct += correct
        if paper_correct is not None:
            tally.paper_scored += 1
            tally.paper_correct += paper_correct
            tally.disagreements += paper_correct != correct
        samples.append(
            {
                "id": rows.ids[index],
                "prompt": texts[index],
                "completion": completion,
                "reference": rows.references[index],
                "scorer": name,
                "correct": correct,
                "paper_scorer": paper_name,
                "paper_correct": paper_correct,
                "gen_length": length,
                "nfe": nfe_list[row],
            }
        )
    return samples


def _run_setting(
    model: Any,
    tokenizer: Any,
    setting: DecodingSetting,
    call_kwargs: dict[str, Any],
    batches: Sequence[list[int]],
    batch_inputs: _BatchInputs,
    rows: _ScoredRows,
    scorers: Mapping[str, Any],
    eos_ids: set[int],
    progress: bool,
) -> tuple[_Tally, list[dict[str, Any]]]:
    """Generate, time and score every batch under one setting."""
    from tqdm.auto import tqdm

    tally = _Tally()
    samples: list[dict[str, Any]] = []
    bar = tqdm(total=len(batch_inputs.texts), desc=f"eval {setting.name}", disable=not progress, leave=False)
    try:
        for indices in batches:
            inputs = batch_inputs(indices)
            prompt_len = inputs["input_ids"].shape[1]
            out, seconds = _timed_generate(model, inputs, call_kwargs, batch_inputs.device)
            tally.time += seconds
            generated = _output_sequences(out, len(indices))[:, prompt_len:].detach().cpu()
            lengths = _generated_lengths(generated, eos_ids)
            nfe_list = _output_nfe(out, len(indices))
            if nfe_list is None:
                tally.nfe_known = False
                nfe_list = [None] * len(indices)
            else:
                tally.nfe += sum(nfe_list)
            samples += _score_batch(
                tokenizer, generated, lengths, nfe_list, indices, batch_inputs.texts, rows, scorers, tally
            )
            bar.update(len(indices))
    finally:
        bar.close()
    if not tally.nfe_known:
        warnings.warn("model.generate did not report `nfe`; avg_nfe and tokens_per_forward are NaN.", stacklevel=3)
    return tally, samples


def _write_outputs(
    output_dir: str, results: list[EvalResult], settings: list[DecodingSetting], dataset_name: str | None
) -> None:
    """``results.json``, ``results.md``, the plot and one ``samples_<setting>.jsonl`` per setting (its results'
    :attr:`~EvalResult.samples`)."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(results, os.path.join(output_dir, "results.json"))
    write_markdown(results, os.path.join(output_dir, "results.md"), title=dataset_name)
    write_plot(results, os.path.join(output_dir, "accuracy_vs_tokens_per_step.png"), dataset_name)
    used: set[str] = set()
    for setting, result in zip(settings, results):
        assert setting.name is not None
        base = _safe_name(setting.name)
        filename, k = base, 1
        while filename in used:
            k += 1
            filename = f"{base}_{k}"
        used.add(filename)
        with open(os.path.join(output_dir, f"samples_{filename}.jsonl"), "w", encoding="utf-8") as f:
            for sample in result.samples:
                f.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")
