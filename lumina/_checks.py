"""Argument checks shared by the model and sampling layers: ValueErrors that name the argument."""
from __future__ import annotations

import math


def real(value, name: str) -> float:
    """`value` as a finite float; bools, non-numbers, NaN and infinities are refused."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {v}")
    return v
