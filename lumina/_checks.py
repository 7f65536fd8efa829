"""Argument checks shared by the model and sampling layers: ValueErrors that name the argument."""
from __future__ import annotations

import math
import operator


def real(value, name: str) -> float:
    """`value` as a finite float; bools, strings, non-numbers, NaN and infinities are refused."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"`{name}` must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {v}")
    return v


def integer(value, name: str, minimum: int | None = None) -> int:
    """`value` as an int (anything with __index__; bools and floats are refused), at least `minimum` if given."""
    want = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be {want}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"`{name}` must be {want}, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"`{name}` must be {want}, got {v}")
    return v


def device(value):
    """The device to run on (default: cuda when available); ValueError naming `device` when it is not usable."""
    import torch

    device = value
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"`device` must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device` is {device!r} but no CUDA GPU is available to torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"`device` is {device!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"`device` must be cpu, cuda or cuda:N, got {device!r}")
    return dev
