"""Reference-model refresh: θ_ref ← α θ + (1 − α) θ_ref every few optimizer steps (T3D's multi-round refinement)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
from transformers import TrainerCallback

REF_ADAPTER = "ref"
POLICY_ADAPTER = "default"


def mixup_(targets: Iterable[torch.Tensor], sources: Iterable[torch.Tensor], alpha: float) -> None:
    """In place, for every pair: ``target ← α · source + (1 − α) · target`` (``α = 1`` copies)."""
    targets, sources = list(targets), list(sources)
    if len(targets) != len(sources):
        raise ValueError(f"Cannot sync {len(sources)} parameters into {len(targets)}.")
    with torch.no_grad():
        if alpha == 1.0:
            torch._foreach_copy_(targets, sources)
        else:
            torch._foreach_mul_(targets, 1.0 - alpha)
            torch._foreach_add_(targets, sources, alpha=alpha)


def adapter_parameters(model, adapter_name: str) -> list[torch.nn.Parameter]:
    """The parameters of one PEFT adapter, in a stable order."""
    marker = f".{adapter_name}."
    return [param for name, param in sorted(model.named_parameters()) if marker in name]


def _gathered(params: list[torch.nn.Parameter]):
    """Gather ZeRO-3 partitioned parameters for the duration of the block (a no-op otherwise)."""
    if any(hasattr(param, "ds_id") for param in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return nullcontext()


class RefModelSyncCallback(TrainerCallback):
    """Refresh the reference from the student every ``args.ref_model_sync_steps`` optimizer steps.

    Works for a separate reference model (hard copy or mixup ``θ_ref ← α θ + (1 − α) θ_ref`` with
    ``α = args.ref_model_mixup_alpha``), under DeepSpeed ZeRO-3 (parameters are gathered, updated on rank 0 and
    re-partitioned) and with PEFT, where the reference is a frozen copy of the student's adapter (adapter ``"ref"``)
    on the shared base model. Unlike TRL's ``SyncRefModelCallback``, PEFT models are supported.

    Args:
        ref_model: the reference model, or ``None`` with PEFT (the reference is an adapter of the student).
        accelerator: the trainer's accelerator, to unwrap the student.
    """

    def __init__(self, ref_model=None, accelerator=None) -> None:
        self.ref_model = ref_model
        self.accelerator = accelerator
        self.num_syncs = 0

    def _pairs(self, model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self.ref_model is None:  # PEFT: the reference is the "ref" adapter of the student
            return adapter_parameters(model, REF_ADAPTER), adapter_parameters(model, POLICY_ADAPTER)
        return list(self.ref_model.parameters()), list(model.parameters())

    def sync(self, model, alpha: float) -> None:
        """Refresh the reference from ``model`` now."""
        if self.accelerator is not None:
            model = self.accelerator.unwrap_model(model)
        targets, sources = self._pairs(model)
        with _gathered(targets + sources):
            if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0 or not any(
                hasattr(p, "ds_id") for p in targets
            ):
                mixup_(targets, sources, alpha)
        self.num_syncs += 1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % args.ref_model_sync_steps == 0:
            self.sync(model, args.ref_model_mixup_alpha)
