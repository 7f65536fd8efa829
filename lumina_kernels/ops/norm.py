"""Fused RMSNorm: rms_norm, modulated_rms_norm, gated_rms_norm_residual (one op, lumina::fused_rms_norm).

The typed wrappers, their dispatcher, and the fake kernel and autograd of the compiled op.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext, dispatch, reference
from ._common import _eps, _no_double_backward, _same_device, _tensor

__all__ = ["rms_norm", "modulated_rms_norm", "gated_rms_norm_residual"]


# The CUDA kernels' limits (csrc/limits.h, read from build_info): a row of at most this many vectors (16 bytes
# each when the last dimension allows, else single elements), and the backward puts the batch on gridDim.y.
NORM_CUDA_MAX_VECTORS_PER_ROW: int = _ext.LIMITS["norm_cuda_max_vectors_per_row"]
CUDA_MAX_GRID_YZ: int = _ext.LIMITS["cuda_max_grid_yz"]


def _norm_dim_fits_cuda(inputs: dict) -> str | None:
    x = inputs["x"]
    dim = x.shape[-1]
    vec = 16 // x.element_size()
    max_vecs = NORM_CUDA_MAX_VECTORS_PER_ROW
    limit = max_vecs * vec if dim % vec == 0 else max_vecs
    if dim > limit:
        return f"last dimension {dim} is over the CUDA kernel's limit {limit} for {x.dtype}"
    if inputs.get("batch", 1) > CUDA_MAX_GRID_YZ:
        return f"batch {inputs['batch']} is over the CUDA backward's limit {CUDA_MAX_GRID_YZ}"
    return None


def _norm_inputs(x, weight, scale=None, gate=None, residual=None, eps=1e-5):
    return {"x": x, "batch": x.shape[0] if (scale is not None or gate is not None) and x.dim() > 0 else 1}


_norm_dispatch = dispatch.register(
    "fused_rms_norm",
    [
        dispatch.Backend("cuda", dispatch.compiled_backend("cuda", _norm_dim_fits_cuda), "lumina CUDA kernel"),
        dispatch.Backend("cpu", dispatch.compiled_backend("cpu"), "lumina C++ kernel"),
    ],
    _norm_inputs,
)
dispatch.alias("rms_norm", "fused_rms_norm", lambda x, weight, eps=1e-5: _norm_inputs(x, weight))
dispatch.alias("modulated_rms_norm", "fused_rms_norm", lambda x, weight, scale, eps=1e-5: _norm_inputs(x, weight, scale))
dispatch.alias("gated_rms_norm_residual", "fused_rms_norm",
               lambda residual, y, weight, gate, eps=1e-5: _norm_inputs(y, weight, None, gate, residual))


def _modulation(v: Tensor | None, name: str, x: Tensor, x_name: str) -> Tensor | None:
    """A (B, D) or (B, 1, D) scale/gate for x (B, ..., D), returned as (B, D)."""
    if v is None:
        return None
    _tensor(v, name)
    _same_device(v, name, x, x_name)
    if x.dim() < 2:
        raise ValueError(f"`{x_name}` must be (batch, ..., dim) when `{name}` is given, got shape {tuple(x.shape)}")
    b, d = x.shape[0], x.shape[-1]
    if v.dim() == 3 and v.shape[1] == 1:
        v = v[:, 0]
    if tuple(v.shape) != (b, d):
        raise ValueError(f"`{name}` must have shape (batch, dim) = ({b}, {d}) for `{x_name}` of shape "
                         f"{tuple(x.shape)}, got {tuple(v.shape)}")
    return v.to(x.dtype).contiguous()


def _fused_rms_norm(x, weight, scale, gate, residual, eps, x_name="x"):
    """Validated entry shared by the three public norms."""
    _tensor(x, x_name)
    if x.dim() < 1:
        raise ValueError(f"`{x_name}` must have at least one dimension, got a scalar")
    _tensor(weight, "weight")
    _same_device(weight, "weight", x, x_name)
    if tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"`weight` must have shape ({x.shape[-1]},) = the last dimension of `{x_name}`, "
                         f"got {tuple(weight.shape)}")
    eps = _eps(eps)
    scale = _modulation(scale, "scale", x, x_name)
    gate = _modulation(gate, "gate", x, x_name)
    if residual is not None:
        _tensor(residual, "residual")
        _same_device(residual, "residual", x, x_name)
        if residual.shape != x.shape:
            raise ValueError(f"`residual` must have the shape of `{x_name}` {tuple(x.shape)}, got {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise ValueError(f"`residual` has dtype {residual.dtype} but `{x_name}` has {x.dtype}; they must match")
        residual = residual.contiguous()
    weight = weight.to(x.dtype).contiguous()
    x = x.contiguous()
    backend = _norm_dispatch.decide(_norm_inputs(x, weight, scale, gate, residual)).backend
    if backend == "reference":
        return reference.fused_rms_norm(x, weight, scale, gate, residual, eps)
    return torch.ops.lumina.fused_rms_norm(x, weight, scale, gate, residual, eps)[0]


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight, in fp32, output in x's dtype.

    x: (..., D); weight: (D,), cast to x's dtype.
    """
    return _fused_rms_norm(x, weight, None, None, None, eps)


def modulated_rms_norm(x: Tensor, weight: Tensor, scale: Tensor, eps: float = 1e-5) -> Tensor:
    """Next-DiT's pre-norm with adaLN scale: rms_norm(x, weight) * (1 + scale).

    x: (B, ..., D); scale: (B, D) (or (B, 1, D)), broadcast over the middle dimensions.
    """
    if scale is None:
        raise ValueError("`scale` must be a (batch, dim) tensor, got None; use rms_norm for no modulation")
    return _fused_rms_norm(x, weight, scale, None, None, eps)


def gated_rms_norm_residual(residual: Tensor, y: Tensor, weight: Tensor, gate: Tensor, eps: float = 1e-5) -> Tensor:
    """Next-DiT's post-norm, gate and residual in one pass: residual + tanh(gate) * rms_norm(y, weight).

    residual, y: (B, ..., D) of one dtype; gate: (B, D) (or (B, 1, D)).
    """
    if gate is None:
        raise ValueError("`gate` must be a (batch, dim) tensor, got None")
    if residual is None:
        raise ValueError("`residual` must be a tensor shaped like `y`, got None")
    return _fused_rms_norm(y, weight, None, gate, residual, eps, x_name="y")


# ----------------------------------------------------------------------------------------------
# fake kernels and autograd of the compiled op
# ----------------------------------------------------------------------------------------------
if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("lumina::fused_rms_norm")
    def _(x, weight, scale, gate, residual, eps):
        return torch.empty_like(x), x.new_empty(x.shape[:-1], dtype=torch.float32)

    @torch.library.register_fake("lumina::fused_rms_norm_backward")
    def _(grad_out, x, weight, scale, gate, rstd):
        return (
            torch.empty_like(x),
            torch.empty_like(weight),
            torch.empty_like(scale) if scale is not None else x.new_empty(0),
            torch.empty_like(gate) if gate is not None else x.new_empty(0),
        )

    def _norm_setup(ctx, inputs, output):
        x, weight, scale, gate, residual, eps = inputs
        ctx.save_for_backward(x, weight, scale, gate, output[1])
        ctx.has_residual = residual is not None

    def _norm_backward(ctx, grad_out, grad_rstd):
        _no_double_backward("rms_norm")
        x, weight, scale, gate, rstd = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        gx, gw, gs, gg = torch.ops.lumina.fused_rms_norm_backward(grad_out.contiguous(), x, weight, scale, gate, rstd)
        return (
            gx,
            gw,
            gs if scale is not None else None,
            gg if gate is not None else None,
            grad_out if ctx.has_residual else None,
            None,
        )

    torch.library.register_autograd("lumina::fused_rms_norm", _norm_backward, setup_context=_norm_setup)
