"""Plain-PyTorch references of every lumina op: the test oracle and the fallback when no kernel applies.

Each function computes in float32 (float64 stays float64) and rounds once to the input's dtype, which
is the contract the C++ and CUDA kernels are tested against.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fused_rms_norm", "rms_norm", "modulated_rms_norm", "gated_rms_norm_residual", "apply_rope"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _per_batch(v: Tensor, x: Tensor) -> Tensor:
    """(B, D) -> (B, 1, ..., 1, D), broadcasting over every dimension of x between batch and features."""
    return v.reshape(v.shape[0], *([1] * (x.dim() - 2)), v.shape[-1])


def fused_rms_norm(
    x: Tensor,
    weight: Tensor,
    scale: Tensor | None = None,
    gate: Tensor | None = None,
    residual: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """out = [residual +] [tanh(gate) *] rms_norm(x) * weight [* (1 + scale)], scale and gate (B, D)."""
    ct = _compute_dtype(x)
    xf = x.to(ct)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.to(ct)
    if scale is not None:
        y = y * (1 + _per_batch(scale.to(ct), x))
    if gate is not None:
        y = y * torch.tanh(_per_batch(gate.to(ct), x))
    if residual is not None:
        y = y + residual.to(ct)
    return y.to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    return fused_rms_norm(x, weight, eps=eps)


def modulated_rms_norm(x: Tensor, weight: Tensor, scale: Tensor, eps: float = 1e-5) -> Tensor:
    return fused_rms_norm(x, weight, scale=scale, eps=eps)


def gated_rms_norm_residual(residual: Tensor, y: Tensor, weight: Tensor, gate: Tensor, eps: float = 1e-5) -> Tensor:
    return fused_rms_norm(y, weight, gate=gate, residual=residual, eps=eps)


def apply_rope(x: Tensor, freqs_cis: Tensor, inverse: bool = False) -> Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]) of x (B, L, H, D) by freqs_cis (L, D/2) or (B, L, D/2)."""
    ct = _compute_dtype(x)
    x0, x1 = x.to(ct).reshape(*x.shape[:-1], -1, 2).unbind(-1)  # each (B, L, H, D/2)
    f = freqs_cis.unsqueeze(-2)  # (L, 1, D/2) or (B, L, 1, D/2): the same rotation for every head
    cos, sin = f.real.to(ct), f.imag.to(ct)
    if inverse:
        sin = -sin
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).to(x.dtype)  # (B, L, H, D)
