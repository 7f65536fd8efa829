"""Argument checks shared by the op wrappers: each raises a ValueError naming the argument."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def _tensor(t: object, name: str, *, floating: bool = True) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _same_device(t: Tensor, name: str, x: Tensor, x_name: str) -> None:
    if t.device != x.device:
        raise ValueError(f"`{name}` is on {t.device} but `{x_name}` is on {x.device}; they must be on one device")


def _eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"`eps` must be a finite number >= 0, got {eps!r}")
    return float(eps)


def _real(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"`{name}` must be a finite real number, got {v!r}")
    return float(v)


def _inference_only(*ts: Tensor) -> str | None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return "an input requires grad: the fused op is inference-only, the reference is differentiable"
    return None


def _no_host_sync() -> bool:
    """True while a CUDA graph is captured or torch.compile traces: no reading device values on the host."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _no_double_backward(op: str) -> None:
    """Called first in a backward whose kernel is not differentiable: under ``create_graph=True`` (grad mode on
    inside the backward) a second derivative would silently be zero, so refuse it by name."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"lumina_kernels.{op}: double backward (create_graph=True) is not supported by its kernel, "
                           "whose backward is not differentiable; use float64 inputs (the differentiable PyTorch "
                           "reference) for higher derivatives")
