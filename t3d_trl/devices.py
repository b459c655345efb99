"""Where a model lives: the device its inputs go to, and whether a requested device exists on this machine."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_device", "model_device"]


def model_device(model: Any) -> torch.device:
    """The device of ``model``: its ``device`` attribute, else that of its first parameter, else the CPU."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        return torch.device(device)
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for param in parameters():
            return param.device
    return torch.device("cpu")


def check_device(device: str | torch.device, argument: str = "device") -> torch.device:
    """``device`` as a ``torch.device``, refused unless this machine has it.

    ``model.to("cuda")`` without a GPU fails deep inside torch (``AssertionError: Torch not compiled with CUDA
    enabled``, or a CUDA driver error), after the model was loaded; this says so first.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"xpu"``... or a ``torch.device``.
        argument: how the message names the setting (``"--device"``...).

    Raises:
        ValueError: for a string that is no device, an accelerator this machine does not have, or an index past
            the devices it has.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{argument}={device!r} is not a device ({error}); use e.g. cpu, cuda or cuda:1.") from None
    if parsed.type == "cpu" or parsed.type == "meta":
        return parsed
    backend = getattr(torch, parsed.type, None)
    available = bool(backend is not None and hasattr(backend, "is_available") and backend.is_available())
    if not available:
        raise ValueError(
            f"{argument}={device!r}: this machine has no {parsed.type} device (torch.{parsed.type}.is_available() is "
            f"False; torch {torch.__version__}). Use cpu, or leave the setting unset to use a GPU when there is one."
        )
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(
            f"{argument}={device!r}: this machine has {count} {parsed.type} device(s), numbered from 0 to {count - 1}."
        )
    return parsed
