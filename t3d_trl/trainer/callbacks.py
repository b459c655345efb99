"""Reference-model refresh: θ_ref ← α θ + (1 − α) θ_ref every few optimizer steps (T3D's multi-round refinement).

Also the helpers that read and write a (possibly sharded) reference in full: under FSDP2 parameters are ``DTensor``
shards, under FSDP1 ``FlatParameter`` shards (or views of them), under DeepSpeed ZeRO-3 empty placeholders whose
partitions live in the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
from transformers import TrainerCallback

REF_ADAPTER = "ref"
POLICY_ADAPTER = "default"


def _dtensor_class():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _local_pairs(
    targets: list[torch.Tensor], sources: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors each process updates in place: for FSDP2 ``DTensor`` targets, the local shard of the target and the
    matching shard of the source (redistributed, or cut from a full source, when it is laid out differently); for a
    plain target and a ``DTensor`` source, the full source. FSDP1 flat shards are paired as they are: the reference
    and the student are wrapped by the same policy, so their local shards cover the same elements."""
    dtensor = _dtensor_class()
    if dtensor is None:
        return targets, sources
    local_targets, local_sources = [], []
    for target, source in zip(targets, sources):
        if isinstance(target, dtensor):
            if not isinstance(source, dtensor):
                from torch.distributed.tensor import distribute_tensor

                source = distribute_tensor(source.detach().to(target.device), target.device_mesh, target.placements)
            elif source.device_mesh != target.device_mesh or source.placements != target.placements:
                source = source.redistribute(target.device_mesh, target.placements)
            target, source = target.to_local(), source.to_local()
        elif isinstance(source, dtensor):
            source = source.full_tensor()
        local_targets.append(target)
        local_sources.append(source)
    return local_targets, local_sources


def mixup_(targets: Iterable[torch.Tensor], sources: Iterable[torch.Tensor], alpha: float) -> None:
    """In place, for every pair: ``target ← α · source + (1 − α) · target`` (``α = 1`` copies).

    Sharded FSDP2 parameters (``DTensor``) are updated shard by shard, each process its own shard.
    """
    targets, sources = list(targets), list(sources)
    if len(targets) != len(sources):
        raise ValueError(f"Cannot sync {len(sources)} parameters into {len(targets)}.")
    with torch.no_grad():
        targets, sources = _local_pairs(targets, sources)
        for target, source in zip(targets, sources):
            if target.shape != source.shape:
                raise ValueError(
                    f"Cannot sync a parameter of shape {tuple(source.shape)} into one of shape {tuple(target.shape)}: "
                    "the reference and the student must be sharded the same way."
                )
        if alpha == 1.0:
            torch._foreach_copy_(targets, sources)
        else:
            torch._foreach_mul_(targets, 1.0 - alpha)
            torch._foreach_add_(targets, sources, alpha=alpha)


def adapter_parameters(model, adapter_name: str) -> list[torch.nn.Parameter]:
    """The parameters of one PEFT adapter, in a stable order."""
    marker = f".{adapter_name}."
    return [param for name, param in sorted(model.named_parameters()) if marker in name]


def _is_zero3(params: Iterable[torch.Tensor]) -> bool:
    return any(hasattr(param, "ds_id") for param in params)


def _gathered(params: list[torch.nn.Parameter]):
    """Gather ZeRO-3 partitioned parameters for the duration of the block (a no-op otherwise)."""
    if _is_zero3(params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return nullcontext()


def is_fsdp1_wrapper(module) -> bool:
    """Whether ``module`` is an FSDP1 ``FullyShardedDataParallel`` wrapper."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def state_module(module, accelerator=None):
    """The module that holds ``module``'s full state: FSDP1 wrappers are kept (the root wrapper owns the flat parameter
    of the layers it does not wrap separately, and the state-dict hooks), the others (DDP, a DeepSpeed engine) are
    removed; FSDP2 shards modules in place."""
    if accelerator is None or is_fsdp1_wrapper(module):
        return module
    return accelerator.unwrap_model(module)


def is_torch_sharded(module: torch.nn.Module) -> bool:
    """Whether ``module``'s parameters are sharded by PyTorch FSDP (FSDP2 ``DTensor`` or FSDP1 wrappers)."""
    dtensor = _dtensor_class()
    if dtensor is None:
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(param, dtensor) for param in module.parameters()) or any(
        isinstance(sub, FullyShardedDataParallel) for sub in module.modules()
    )


def _rank() -> int:
    return (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )


def full_state_dict(module: torch.nn.Module, keep: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The full (gathered) state dict of ``module`` on CPU, entries whose name passes ``keep`` (all by default).

    Collective under FSDP and ZeRO-3: call it on every process. Sharded modules (FSDP1/2, ZeRO-3) give the tensors on
    rank 0 only and ``{}`` on the other ranks, so one full copy exists in host memory; unsharded modules give them on
    every rank. Names are those of the unwrapped model (no FSDP prefixes).
    """
    keep = keep or (lambda name: True)
    params = dict(module.named_parameters())
    if _is_zero3(params.values()):
        import deepspeed

        selected = {name: param for name, param in params.items() if keep(name)}
        with deepspeed.zero.GatheredParameters(list(selected.values())):
            if _rank() != 0:
                return {}
            state = {name: param.detach().cpu().clone() for name, param in selected.items()}
        buffers = {
            name: buf.detach().cpu().clone()
            for name, buf in module.state_dict().items()
            if name not in params and keep(name)
        }
        return {**buffers, **state}
    if is_torch_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name: value for name, value in state.items() if keep(name)} if _rank() == 0 else {}
    return {name: value.detach().cpu() for name, value in module.state_dict().items() if keep(name)}


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (as :func:`full_state_dict` writes it) into ``module``, sharded or not; entries missing
    from ``state`` are left as they are.

    Collective under FSDP and ZeRO-3: call it on every process. Sharded modules read ``state`` on rank 0 only (the
    other ranks may pass ``{}``); unsharded modules need it on every rank.
    """
    params = dict(module.named_parameters())
    if _is_zero3(params.values()):
        import deepspeed

        names = sorted(state) if _rank() == 0 else []
        names = _broadcast_object(names)
        targets = [params[name] for name in names if name in params]
        with deepspeed.zero.GatheredParameters(targets, modifier_rank=0):
            if _rank() == 0:
                mixup_(targets, [state[name].to(params[name].device) for name in names if name in params], 1.0)
        return
    if is_torch_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=True)
        set_model_state_dict(module, state if _rank() == 0 else {}, options=options)
        return
    names = [name for name in state if name in params]
    mixup_([params[name] for name in names], [state[name].to(params[name].device) for name in names], 1.0)
    buffers = dict(module.named_buffers())
    with torch.no_grad():
        for name in state:
            if name in buffers:
                buffers[name].copy_(state[name])


def _broadcast_object(value):
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


class RefModelSyncCallback(TrainerCallback):
    """Refresh the reference from the student every ``args.ref_model_sync_steps`` optimizer steps.

    Works for a separate reference model (hard copy or mixup ``θ_ref ← α θ + (1 − α) θ_ref`` with
    ``α = args.ref_model_mixup_alpha``), under DeepSpeed ZeRO-3 (parameters are gathered, updated on rank 0 and
    re-partitioned), under FSDP (each process updates its own shards of the reference from the same shards of the
    student, which FSDP lays out identically: nothing is gathered) and with PEFT, where the reference is a frozen
    copy of the student's adapter (adapter ``"ref"``) on the shared base model. Unlike TRL's
    ``SyncRefModelCallback``, PEFT models are supported.

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
        model = state_module(model, self.accelerator)
        full = nullcontext()
        if self.ref_model is None and is_fsdp1_wrapper(model):
            # the two adapters share FSDP1 flat parameters, cut into shards at different places: sync them in full
            from torch.distributed.fsdp import FullyShardedDataParallel

            full = FullyShardedDataParallel.summon_full_params(model, writeback=True)
        with full:
            targets, sources = self._pairs(model)
            with _gathered(targets + sources):  # ZeRO-3: gathered, updated on rank 0, re-partitioned on exit
                if _rank() == 0 or not _is_zero3(targets):
                    mixup_(targets, sources, alpha)  # FSDP: each process updates its own shards
        self.num_syncs += 1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % args.ref_model_sync_steps == 0:
            self.sync(model, args.ref_model_mixup_alpha)
