"""Argument checks shared by the configuration objects: one message format for every refused number."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_number"]


def check_number(
    name: str, value: Any, low: float | None, low_open: bool, high: float | None, integer: bool, optional: bool
) -> None:
    """Raise a `ValueError` naming ``name`` unless ``value`` is a number (an integer when ``integer``) in the range
    ``low < value`` (``low_open``) or ``low <= value``, ``value <= high``; ``None`` only when ``optional``."""
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    accepted = f"{kind}{' ' + ' and '.join(bounds) if bounds else ''}{' or None' if optional else ''}"
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        numeric = numeric and float(value).is_integer()
    if not numeric or math.isnan(value) or math.isinf(value):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        raise ValueError(f"`{name}` must be {accepted}, got {value!r}.")
