"""Where a model lives: the device its inputs go to."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["model_device"]


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
