"""`T3DTrainer`: trajectory self-distillation of a diffusion LM (T3D, arXiv 2602.12262)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import os
import pickle
import shutil
import textwrap
from collections import defaultdict
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedModel, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import is_peft_available

from ..collator import DataCollatorForTrajectory
from ..data import prepare_trajectory_dataset, validate_mask_token
from ..generation import DiffusionGenerationConfig, patch_model
from ..generation.configuration import is_diffusion_generation_config
from ..generation.custom_generate import write_custom_generate
from ..layouts import training_layout
from ..masks import NOISY
from ..models.families import get_family, load_pretrained
from ..models.locations import TOKENIZER_FILES, check_model_location
from ..models.nonfinite import check_finite_loss, check_finite_weights
from ..objectives import (
    ReferenceTerms,
    TeacherTerms,
    compute_objectives,
    reference_request,
    reference_terms,
    student_request,
    teacher_states,
    teacher_terms,
)
from ..states import MAIN_STATE
from ..statistics import StatisticsRequest, TokenStatistics
from .callbacks import (
    POLICY_ADAPTER,
    REF_ADAPTER,
    RefModelSyncCallback,
    adapter_parameters,
    full_state_dict,
    is_torch_sharded,
    load_full_state_dict,
    mixup_,
    state_module,
)
from .config import T3DConfig
from .model_card import ModelCardInfo, model_card_text
from .resume import check_resume_checkpoint

if is_peft_available():
    from peft import PeftConfig, PeftModel, get_peft_model

logger = logging.getLogger(__name__)

#: precomputed reference columns
_REF_COLUMNS = ("ref_real_logps", "ref_fake_logps", "ref_fake_tokens")
_REF_CHECKPOINT = "ref_model.pt"

_CITATION = textwrap.dedent("""\
    @article{zhang2026t3d,
        title   = {{T3D: Few-Step Diffusion Language Models via Trajectory Self-Distillation with Direct Discriminative Optimization}},
        author  = {Tunyu Zhang and others},
        year    = 2026,
        journal = {arXiv preprint arXiv:2602.12262}
    }""")


class PrecomputedReferenceCollator:
    """Wraps a trajectory collator and adds the precomputed reference columns of each row to the batch.

    ``ref_fake_tokens`` of a row covers its own noisy stream (the valid columns of its noisy window); rows are
    left-padded to the window width ``W`` like every other window tensor.
    """

    def __init__(self, collator: DataCollatorForTrajectory) -> None:
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        window = int(batch["logits_to_keep"])
        tokens = [torch.as_tensor(f["ref_fake_tokens"], dtype=torch.long) for f in features]
        lengths = torch.tensor([len(t) for t in tokens])
        fake = torch.full((len(features), window), self.collator.pad_token_id, dtype=torch.long)
        fake[torch.arange(window)[None, :] >= (window - lengths)[:, None]] = torch.cat(tokens)
        batch["ref_fake_tokens"] = fake
        batch["ref_real_logps"] = torch.tensor([float(f["ref_real_logps"]) for f in features])
        batch["ref_fake_logps"] = torch.tensor([float(f["ref_fake_logps"]) for f in features])
        return batch


class T3DTrainer(Trainer):
    """Trainer for T3D: trajectory self-distillation with Direct Discriminative Optimization.

    A student initialised from a diffusion LM learns, on the teacher's own decoding trajectories, to jump from an
    intermediate state ``x_t`` to the teacher's final tokens ``x0``. Per micro-batch it runs exactly one student
    forward with gradients and one reference forward without; every objective of ``args.loss_type`` (DDO's real and
    fake terms, the path loss, the baselines) is computed from those two sets of logits; objectives that read extra
    states (dParallel's complementary state, the anchor's partly filled one) add a student forward on each.

    Objectives that read the frozen teacher (``needs_teacher``, e.g. ``anchor``) get the initial model: the reference
    when it is never refreshed (``sync_ref_model=False``), else a frozen copy of ``model`` made before training (with
    PEFT, the adapter-disabled base), placed like the reference under DeepSpeed and FSDP. It is not training state:
    resuming builds it again from the ``model`` given.

    Args:
        model: the student, a model instance or a hub id / local path (loaded with ``args.model_init_kwargs``; remote
            code only with ``trust_remote_code=True`` there).
        ref_model: the reference θ_ref. Defaults to a frozen copy of ``model`` (with PEFT, a frozen copy of the
            adapter, or the adapter-disabled base when the reference is never refreshed).
        args: a :class:`T3DConfig`.
        data_collator: defaults to :class:`~t3d_trl.collator.DataCollatorForTrajectory` configured from ``args``.
        train_dataset: trajectories (see ``docs/training.md``): ``prompt_ids``, ``completion_ids``, ``step_map`` and the
            teacher's ``block_size`` / ``steps_per_block``, as written by :func:`t3d_trl.generate_trajectories`.
        eval_dataset: trajectories to evaluate the same losses and metrics on.
        processing_class: the tokenizer (must have, or the model config must name, a mask token). When omitted, it is
            loaded from the model's checkpoint; a model built from a config has none, so pass it.
        compute_metrics: passed to :class:`~transformers.Trainer`.
        callbacks: extra callbacks.
        optimizers: ``(optimizer, scheduler)``.
        peft_config: a PEFT config to train a LoRA adapter instead of the full model.
    """

    _tag_names = ["trl", "t3d", "diffusion-lm", "few-step-decoding"]
    _name = "T3D"
    _paper = {
        "title": "T3D: Few-Step Diffusion Language Models via Trajectory Self-Distillation with Direct "
        "Discriminative Optimization",
        "id": "2602.12262",
        "citation": _CITATION,
    }

    def __init__(
        self,
        model: str | PreTrainedModel,
        ref_model: PreTrainedModel | None = None,
        args: T3DConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config: PeftConfig | None = None,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = T3DConfig(f"{str(name).split('/')[-1]}-T3D")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required: a trajectory dataset (see t3d_trl.generate_trajectories).")
        model_id = model if isinstance(model, str) else None
        if isinstance(model, str):
            model = self._load_model(model, args)
        check_finite_weights(model, "The model")
        if ref_model is not None:
            check_finite_weights(ref_model, "`ref_model`")
        if processing_class is None:
            processing_class = _default_processing_class(
                model_id or getattr(model.config, "_name_or_path", ""), args.trust_remote_code
            )
        if ref_model is model:
            raise ValueError("`model` and `ref_model` cannot be the same object; leave ref_model=None for a copy.")

        # PEFT: the reference is a frozen copy of the adapter ("ref"), or the adapter-disabled base
        if peft_config is not None:
            if not is_peft_available():
                raise ImportError("peft_config needs the `peft` package: pip install 't3d-trl[peft]'")
            model = get_peft_model(model, _with_task_type(peft_config, model, args.model_family))
        self.is_peft = is_peft_available() and isinstance(model, PeftModel)
        if self.is_peft and ref_model is not None:
            raise ValueError(
                "With a PEFT model the reference is a frozen copy of the adapter (or the adapter-disabled base when "
                "sync_ref_model=False); a separate `ref_model` is not supported. Leave ref_model=None."
            )
        if self.is_peft and ref_model is None and args.sync_ref_model and REF_ADAPTER not in model.peft_config:
            model.add_adapter(REF_ADAPTER, model.peft_config[POLICY_ADAPTER])
            mixup_(adapter_parameters(model, REF_ADAPTER), adapter_parameters(model, POLICY_ADAPTER), 1.0)
            for param in adapter_parameters(model, REF_ADAPTER):
                param.requires_grad_(False)

        base = model.get_base_model() if self.is_peft else model
        self.family = get_family(base, family=args.model_family)
        self.family.check_model(base)
        self.layout = training_layout(self.family)
        self._forward_parameters = set(inspect.signature(base.forward).parameters)
        self._attention_kernel = getattr(base.config, "_attn_implementation", None) or "eager"
        self.mask_token_id = validate_mask_token(processing_class, base.config)
        if args.disable_dropout:
            _disable_dropout(model)

        # reference model
        self.ref_model = None
        if args.uses_reference and not self.is_peft:
            self.ref_model = ref_model if ref_model is not None else _frozen_copy(model)
            if args.disable_dropout:
                _disable_dropout(self.ref_model)
        # the frozen teacher (the initial model): the fixed reference when there is one, the adapter-disabled base
        # with PEFT, else a copy of its own
        self.teacher_model = None
        self.extra_states, self.teacher_states = args.extra_states, teacher_states(args)
        own_teacher = args.uses_teacher and not self.is_peft and (self.ref_model is None or args.sync_ref_model)
        if own_teacher:
            self.teacher_model = _frozen_copy(model)
            if args.disable_dropout:
                _disable_dropout(self.teacher_model)

        # data
        from ..rollout import rollout_config

        self.rollout_record = rollout_config(train_dataset) if isinstance(train_dataset, Dataset) else None
        train_dataset, self.data_stats = self._prepare_dataset(train_dataset, processing_class, args, "train", base)
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    k: self._prepare_dataset(v, processing_class, args, k, base)[0] for k, v in eval_dataset.items()
                }
            else:
                eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval", base)[0]
        self.block_size = args.block_size or int(train_dataset[0]["block_size"])
        if data_collator is None:
            data_collator = self._default_collator(processing_class, base, args)

        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        # the losses are means over examples: let the Trainer divide by the accumulation steps
        self.model_accepts_loss_kwargs = False
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

        if self.ref_model is not None:
            self.ref_model = self._prepare_reference(self.ref_model)
        if self.teacher_model is not None:
            self.teacher_model = self._prepare_reference(self.teacher_model)
        elif args.uses_teacher and not self.is_peft:
            self.teacher_model = self.ref_model  # fixed: the initial model (kept when the reference is precomputed)
        self.sync_callback = None
        if args.sync_ref_model and args.uses_reference:
            self.sync_callback = RefModelSyncCallback(self.ref_model, self.accelerator)
            self.add_callback(self.sync_callback)
        if args.precompute_ref_log_probs and args.uses_reference:
            # every split the shared collator serves gets the columns: training and evaluation alike
            self.train_dataset = self._precompute_reference(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {k: self._precompute_reference(v, k) for k, v in self.eval_dataset.items()}
            elif self.eval_dataset is not None:
                self.eval_dataset = self._precompute_reference(self.eval_dataset, "eval")
            self.data_collator = PrecomputedReferenceCollator(self.data_collator)
            self.ref_model = None  # the reference forward is gone from the step

    # ------------------------------------------------------------------------------------------------ set-up
    @staticmethod
    def _load_model(name: str, args: T3DConfig) -> PreTrainedModel:
        check_model_location(name, "model")
        kwargs = dict(args.model_init_kwargs or {})
        kwargs.setdefault("attn_implementation", "sdpa")
        if kwargs.setdefault("trust_remote_code", args.trust_remote_code) != args.trust_remote_code:
            raise ValueError(
                f"model_init_kwargs sets trust_remote_code={kwargs['trust_remote_code']!r} but the config's "
                f"trust_remote_code is {args.trust_remote_code!r}; set it once, with `trust_remote_code`."
            )
        return load_pretrained(name, args.model_family, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args: T3DConfig, name: str, base):
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        dataset, stats = prepare_trajectory_dataset(
            dataset,
            processing_class,
            max_prompt_length=args.max_prompt_length,
            max_completion_length=args.max_completion_length,
            block_size=args.block_size,
            truncation=args.completion_truncation,
            num_proc=args.dataset_num_proc,
            grid=self.family.grid,
            vocab_size=base.get_output_embeddings().weight.shape[0],
            eos_token_id=getattr(tokenizer, "eos_token_id", None),
            require_step_map=args.state_sampling != "random",
            training_block_size=args.block_size,
            mask_token_id=self.mask_token_id,
        )
        decisions = ", ".join(f"{k} {v}" for k, v in stats.items() if k not in ("num_rows_in", "num_rows_out") and v)
        logger.info(
            "Prepared %s trajectories: %d rows in, %d out (%s).",
            name,
            stats["num_rows_in"],
            stats["num_rows_out"],
            decisions or "used as they are",
        )
        if len(dataset) == 0:
            raise ValueError(f"The {name} dataset has no usable rows after preparation ({stats}).")
        return dataset, stats

    def _default_collator(self, processing_class, base, args: T3DConfig) -> DataCollatorForTrajectory:
        eos = processing_class.eos_token_id
        pad = processing_class.pad_token_id if processing_class.pad_token_id is not None else eos
        return DataCollatorForTrajectory(
            mask_token_id=self.mask_token_id,
            pad_token_id=pad,
            eos_token_id=eos,
            block_size=self.block_size,
            num_eos_tokens=args.num_eos_tokens,
            state_sampling=args.state_sampling,
            mask_ratios=tuple(args.mask_ratios),
            mask_ratio_power=args.mask_ratio_power,
            state_order=args.state_order,
            random_token_ratio=args.random_token_ratio,
            random_token_ids=_regular_token_ids(processing_class) if args.random_token_ratio > 0 else None,
            seed=args.data_seed if args.data_seed is not None else args.seed,
            family=self.family.name,
            attention_layout=self.layout.attention,
            block_alignment=args.block_alignment,
            extra_states=args.extra_states,
        )

    def _prepare_reference(self, ref_model):
        """Place the reference like the student: sharded under ZeRO-3 / FSDP, a replica on each device otherwise."""
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            _shard_reference_layers(ref_model, self.accelerator)
            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    # ------------------------------------------------------------------------------------------ forwards
    def _window_statistics(self, model, batch: dict, request: StatisticsRequest | None) -> TokenStatistics:
        """The window statistics of ``request`` from one forward of ``model`` (the student, the reference or the
        teacher); without a request, the window's logits."""
        unwrapped = self.accelerator.unwrap_model(model)
        return self.layout.forward(
            model,
            batch,
            self._forward_parameters,
            self._attention_kernel,
            unwrapped.dtype,
            statistics=request,
            chunk_size=self.args.logits_chunk_size or None,
            unwrapped=unwrapped,
        )

    @staticmethod
    def _state_batch(batch: dict, state: str) -> dict:
        """The batch with the inputs of ``state`` (the main one, or an extra state of the collator): only the noisy
        tokens differ, the positions, blocks, labels and attention layout are shared."""
        if state == MAIN_STATE:
            return batch
        key = f"{state}_input_ids"
        if key not in batch:
            raise ValueError(
                f"An objective reads the training state {state!r}, but the batch has no {key!r}: a custom data "
                f"collator must make it (DataCollatorForTrajectory(..., extra_states=args.extra_states))."
            )
        return {**batch, "input_ids": batch[key]}

    @torch.no_grad()
    def _teacher_terms(self, batch: dict) -> TeacherTerms:
        """The frozen teacher's probabilities and entropy on the window of ``batch`` (one forward without gradients)."""
        if self.teacher_model is not None:
            logits = self._window_statistics(self.teacher_model, batch, None)
        else:
            model = self.accelerator.unwrap_model(self.model)
            with model.disable_adapter():  # PEFT: the base without any adapter is the initial model
                logits = self._window_statistics(model, batch, None)
        # the probabilities overwrite the logits chunk by chunk: the teacher's terms cost one [b, W, V] tensor
        return teacher_terms(logits, self.args.logits_chunk_size or None, inplace=True)

    @torch.no_grad()
    def _reference_statistics(self, batch: dict, request: StatisticsRequest) -> TokenStatistics:
        if self.ref_model is not None:
            return self._window_statistics(self.ref_model, batch, request)
        model = self.accelerator.unwrap_model(self.model)
        if REF_ADAPTER in model.peft_config:
            from trl.trainer.utils import use_adapter

            with use_adapter(model, REF_ADAPTER):
                statistics = self._window_statistics(model, batch, request)
            for param in adapter_parameters(model, REF_ADAPTER):
                param.requires_grad_(False)
            return statistics
        with model.disable_adapter():
            return self._window_statistics(model, batch, request)

    def _reference_terms(self, batch: dict) -> ReferenceTerms:
        """Fake tokens x̂ and the reference's sequence log-probs of x0 and x̂ (precomputed or from one forward)."""
        if "ref_fake_tokens" in batch:
            return ReferenceTerms(batch["ref_fake_tokens"], batch["ref_real_logps"], batch["ref_fake_logps"])
        generator = None
        if self.args.reference_temperature > 0:
            generator = torch.Generator(device=batch["input_ids"].device).manual_seed(
                hash((self.args.seed, self.state.global_step, self.accelerator.process_index)) % (2**63)
            )
        statistics = self._reference_statistics(batch, reference_request(batch, self.args, generator))
        return reference_terms(statistics, batch["loss_mask"], self.args.logps_normalization)

    # ------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One reference forward without gradients (its fake tokens x̂ and log-probs), one teacher forward without
        gradients on each state a teacher-reading objective reads, then one student forward with gradients on the main
        state and one on each extra state (dParallel's complementary state, the anchor's partial one) → the weighted
        objectives."""
        args = self.args
        reference = self._reference_terms(inputs) if args.uses_reference else None
        teacher = {state: self._teacher_terms(self._state_batch(inputs, state)) for state in self.teacher_states}
        request = student_request(inputs, args, reference, teacher=teacher.get(MAIN_STATE))
        statistics = self._window_statistics(model, inputs, request)
        states = {
            state: self._window_statistics(
                model,
                self._state_batch(inputs, state),
                student_request(inputs, args, state=state, teacher=teacher.get(state)),
            )
            for state in self.extra_states
        }
        loss, metrics = compute_objectives(statistics, inputs, args, reference, states, teacher)
        # a NaN loss stops the run before the optimizer applies it (see docs/training.md, "Resuming")
        if model.training:
            check_finite_loss(loss, self.state, self.accelerator, self.accelerator.unwrap_model(model))
        self._record_metrics(metrics, "train" if model.training else "eval")
        return (loss, {"statistics": statistics.values}) if return_outputs else loss

    def _record_metrics(self, metrics: dict[str, torch.Tensor], mode: str) -> None:
        """Average the micro-batch's metrics over processes (one gather) and keep them until the next log."""
        values = self.accelerator.gather_for_metrics(torch.stack([v.detach().float() for v in metrics.values()])[None])
        for key, value in zip(metrics, values.mean(0).tolist()):
            self._metrics[mode][key].append(value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _averaged_metrics(self, mode: str) -> dict[str, float]:
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        self._metrics[mode].clear()
        return metrics

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        for key, value in self._averaged_metrics("eval").items():
            output.metrics[f"{metric_key_prefix}_{key}"] = value
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs = {**logs, **self._averaged_metrics("train")}
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------ precomputed reference
    @torch.no_grad()
    def _precompute_reference(self, dataset: Dataset, split: str) -> Dataset:
        """Run the fixed reference once over the dataset of ``split`` (states are per-example deterministic) and store
        x̂ and the reference log-probs as columns, so training and evaluation need no reference forward."""
        from tqdm.auto import tqdm

        loader = self.accelerator.prepare(
            torch.utils.data.DataLoader(
                dataset, batch_size=self.args.per_device_train_batch_size, collate_fn=self.data_collator, shuffle=False
            )
        )
        index, fakes, reals, fake_logps = [], [], [], []
        quiet = not self.is_world_process_zero() or self.args.disable_tqdm
        for batch in tqdm(loader, desc=f"Precomputing reference log-probs ({split})", disable=quiet):
            terms = self._reference_terms(batch)
            fake, ref_real, ref_fake = terms.fake_tokens, terms.real_logps, terms.fake_logps
            window = fake.shape[1]
            # the row's own noisy stream, not the clean columns a short row has in the window
            noisy = batch["valid"][:, -window:] & (batch["stream_ids"][:, -window:] == NOISY)
            gathered = self.accelerator.gather_for_metrics((batch["example_index"], fake, noisy, ref_real, ref_fake))
            ids, fake, noisy, ref_real, ref_fake = gathered
            index += ids.tolist()
            fakes += [row[mask].tolist() for row, mask in zip(fake.cpu(), noisy.cpu())]
            reals += ref_real.tolist()
            fake_logps += ref_fake.tolist()
        order = {example: position for position, example in enumerate(index)}
        rows = [order[int(example)] for example in dataset["example_index"]]
        dataset = dataset.add_column("ref_fake_tokens", [fakes[i] for i in rows])
        dataset = dataset.add_column("ref_real_logps", [reals[i] for i in rows])
        return dataset.add_column("ref_fake_logps", [fake_logps[i] for i in rows])

    # ------------------------------------------------------------------------------ checkpoints and saving
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``, after checking the checkpoint to resume from (:mod:`t3d_trl.trainer.resume`): a missing,
        incomplete or damaged one is refused with one message naming its files, before anything is loaded."""
        reference = _REF_CHECKPOINT if self.sync_callback is not None else None
        check_resume_checkpoint(resume_from_checkpoint, self.args.output_dir, reference)
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def _reference_state(self) -> dict[str, torch.Tensor] | None:
        """The reference's full (gathered) weights, as ``ref_model.pt`` holds them: collective under FSDP / ZeRO-3,
        where rank 0 gets them and the other ranks ``{}``."""
        if self.sync_callback is None:
            return None
        if self.ref_model is not None:
            return full_state_dict(state_module(self.ref_model, self.accelerator))
        return full_state_dict(state_module(self.model, self.accelerator), keep=lambda name: f".{REF_ADAPTER}." in name)

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        # the reference adapter is training state (kept in checkpoints as ref_model.pt), not part of the model
        reference_folder = os.path.join(output_dir or self.args.output_dir, REF_ADAPTER)
        if self.is_peft and os.path.isdir(reference_folder):
            shutil.rmtree(reference_folder)

    def _save_checkpoint(self, model, trial):
        """Write the reference (``ref_model.pt``) into the checkpoint folder first, then the Trainer's files: the
        Trainer's ``trainer_state.json``, written last, marks a complete checkpoint, so a crash in between leaves a
        folder that is refused at resume, never one that resumes with another reference."""
        state = self._reference_state()
        if state and self.args.should_save:  # rank 0's full state (other ranks of a sharded reference get {})
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, _REF_CHECKPOINT)
            torch.save(state, target + ".tmp")
            os.replace(target + ".tmp", target)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # every backend's resume path calls this once the model is prepared (`_load_from_checkpoint` is skipped under
        # DeepSpeed), so the reference is restored here
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_reference(checkpoint)

    def _load_reference(self, checkpoint: str) -> None:
        """Restore θ_ref from the checkpoint's ``ref_model.pt`` (a full state dict; read on rank 0 only when the
        reference is sharded). A checkpoint without it, or with a damaged one, is refused: resuming would train
        against another reference."""
        if self.sync_callback is None:
            return
        path = os.path.join(checkpoint, _REF_CHECKPOINT)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint} has no {_REF_CHECKPOINT}: the reference of this run (refreshed every "
                f"{self.args.ref_model_sync_steps} steps) was not saved with the checkpoint, so resuming would train "
                "against another reference. Resume from an earlier checkpoint that has it, or delete this folder and "
                "resume again (resume_from_checkpoint=True picks the newest remaining one)."
            )
        target = state_module(self.ref_model if self.ref_model is not None else self.model, self.accelerator)
        sharded = is_torch_sharded(target) or self.is_deepspeed_enabled
        read = not sharded or self.accelerator.is_main_process
        try:
            load_full_state_dict(target, torch.load(path, map_location="cpu", weights_only=True) if read else {})
        except (RuntimeError, KeyError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(
                f"{path} cannot be restored: the checkpoint is damaged or comes from another model "
                f"({type(error).__name__}: {reason[:200]}). Resume from an earlier checkpoint, or delete this folder "
                "and resume again."
            ) from error

    def release_wrappers(self) -> None:
        """Drop the distributed wrappers of the trained model (DDP, DeepSpeed engine, FSDP) and the prepared
        optimizer and data loaders, keeping the unwrapped ``trainer.model``.

        A DDP wrapper's reducer holds a reference to the process group. If the wrapper outlives
        ``destroy_process_group()``, freeing it later destroys the gloo group while holding the GIL, and that can
        deadlock against a gloo worker thread that is still releasing its last collective (PyTorch issue 56297):
        the process then never exits. :meth:`end` calls this first; call it yourself when a script trains more
        than one model. Under FSDP2 and ZeRO-3 there is nothing to unwrap: the parameters of ``trainer.model`` stay
        sharded, so gather what you need (``save_model``, ``accelerator.get_state_dict``) before :meth:`end`.
        """
        import gc

        self.accelerator.free_memory()
        self.model_wrapped = self.model
        self.optimizer = self.lr_scheduler = None
        gc.collect()

    def end(self) -> None:
        """Finish the trackers and destroy the distributed process group, after :meth:`release_wrappers`.

        Call it once at the very end of a script, after everything that needs the other processes
        (``train``, ``evaluate``, ``save_model``, ``push_to_hub``).
        """
        self.release_wrappers()
        self.accelerator.end_training()

    def generation_config(self) -> DiffusionGenerationConfig:
        """The decoding defaults saved with the student: the training block size and the tokenizer's special tokens."""
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if self.is_peft else base
        existing = getattr(base, "generation_config", None)
        return DiffusionGenerationConfig.from_generation_config(
            existing if is_diffusion_generation_config(existing) else None,
            block_size=self.block_size,
            mask_token_id=self.mask_token_id,
            eos_token_id=self.processing_class.eos_token_id,
            pad_token_id=self.processing_class.pad_token_id,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the student (LoRA adapter, or merged with ``save_merged_model``), the tokenizer, its
        :class:`DiffusionGenerationConfig` (so it decodes few-step without arguments) and a model card."""
        output_dir = output_dir or self.args.output_dir
        if self.is_peft and self.args.save_merged_model:
            merged = copy.deepcopy(self.accelerator.unwrap_model(self.model)).merge_and_unload()
            if self.args.should_save:
                patch_model(merged, self.processing_class).generation_config = self.generation_config()
                merged.save_pretrained(output_dir)
                self.processing_class.save_pretrained(output_dir)
        else:
            super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.generation_config().save_pretrained(output_dir)
            write_custom_generate(output_dir)
            if not _internal_call:
                self.create_model_card(output_dir=output_dir)

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags=None, output_dir=None, **kwargs
    ):
        """Write ``README.md``: how to decode the student in few steps with and without t3d-trl, its base model, the
        teacher's decoding settings, the trajectory dataset, the objective and the citation
        (:func:`~t3d_trl.trainer.model_card.model_card_text`)."""
        if not self.is_world_process_zero():
            return
        output_dir = output_dir or self.args.output_dir
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if self.is_peft else base
        record = self.rollout_record or {}
        name = model_name or os.path.basename(os.path.normpath(output_dir))
        hub_id = getattr(self, "hub_model_id", None) or getattr(self.args, "hub_model_id", None)
        args = self.args
        training = {
            "loss_type": list(args.loss_type),
            "loss_weights": list(args.loss_weights),
            "training block size": self.block_size,
        }
        if args.uses_reference:
            training.update(beta=args.beta, alpha=args.alpha, ref_model_sync_steps=args.ref_model_sync_steps)
        info = ModelCardInfo(
            model_name=name,
            repo_id=hub_id or name,
            base_model=record.get("model_name_or_path") or getattr(base.config, "_name_or_path", None) or None,
            auto_class=self.family.auto_model_class,
            generation_config=self.generation_config().to_dict(),
            dataset_name=dataset_name or getattr(getattr(self.train_dataset, "info", None), "dataset_name", None),
            rollout=record,
            training=training,
            tags=list(self._tag_names) + list(tags or []),
            citation=self._paper["citation"],
            chat_template=bool(
                getattr(getattr(self.processing_class, "tokenizer", self.processing_class), "chat_template", None)
            ),
        )
        with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(model_card_text(info))


def _with_task_type(peft_config: PeftConfig, model: PreTrainedModel, family: str | None) -> PeftConfig:
    """``peft_config`` with the task type of the model's family (``CAUSAL_LM`` for block-causal decoders, none for
    mask predictors) when it sets none; a task type the user set is kept."""
    if getattr(peft_config, "task_type", None) is not None or isinstance(model, PeftModel):
        return peft_config
    task_type = get_family(model, family=family).peft_task_type
    return peft_config if task_type is None else dataclasses.replace(peft_config, task_type=task_type)


def _default_processing_class(name: str, trust_remote_code: bool = False):
    """The tokenizer saved with the model ``name`` (when ``processing_class`` is not given), or an error saying to pass
    one: a model built from a config has no name to load it from."""
    if not name:
        raise ValueError(
            "`processing_class` is required: `model` was built from a config (its config has no `_name_or_path`), "
            "so there is no checkpoint to load its tokenizer from. Pass the tokenizer: "
            "T3DTrainer(model, processing_class=tokenizer, ...)."
        )
    try:
        check_model_location(name, "the model's checkpoint", required_files=TOKENIZER_FILES)
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"`processing_class` is not given and no tokenizer could be loaded from the model's checkpoint {name!r} "
            f"({type(error).__name__}: {reason}). Pass the tokenizer: T3DTrainer(model, processing_class=tokenizer, "
            "...)."
        ) from error


def _regular_token_ids(processing_class) -> list[int]:
    """The tokenizer's own vocabulary without its special tokens: the ids random tokens are drawn from (the official
    code draws below ``tokenizer.vocab_size``, never the padded embedding rows nor added tokens)."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    special = set(getattr(tokenizer, "all_special_ids", []))
    return [index for index in range(int(tokenizer.vocab_size)) if index not in special]


def _shard_reference_layers(ref_model, accelerator) -> None:
    """FSDP2: shard the reference's transformer layers (the plugin's wrap policy, as accelerate does for the student)
    as units of their own, so that its forward gathers one layer at a time; TRL's ``prepare_fsdp`` then shards the
    rest at the root. Under FSDP1 TRL applies the wrap policy itself."""
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        return
    from accelerate.utils import get_module_children_bottom_up
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = fsdp2_prepare_auto_wrap_policy(plugin, ref_model)
    if policy is None:
        return
    mesh = getattr(accelerator, "torch_device_mesh", None)
    kwargs = {
        "reshard_after_forward": True,  # the reference never runs backward
        "offload_policy": plugin.cpu_offload,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        "mesh": mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
    }
    for module in get_module_children_bottom_up(ref_model)[:-1]:
        if policy(module) and not isinstance(module, FSDPModule):
            fully_shard(module, **kwargs)


def _frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    ref = copy.deepcopy(model)
    ref.eval()
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref


def _disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout: ``nn.Dropout`` modules and the attention dropout attention modules read at forward."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
