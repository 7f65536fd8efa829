"""The lumina ops in Python: typed wrappers, argument checks, fake (meta) kernels and autograd.

Each public function validates its arguments (ValueError naming the argument), asks the dispatcher
which backend runs them, then calls either the compiled op `torch.ops.lumina.*` (CPU or CUDA
kernel, differentiable through `register_autograd`) or its reference in `reference.py`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _ext, dispatch, reference

__all__ = ["rms_norm", "modulated_rms_norm", "gated_rms_norm_residual", "apply_rope"]


# ----------------------------------------------------------------------------------------------
# argument checks shared by the wrappers
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# fused RMSNorm: rms_norm, modulated_rms_norm, gated_rms_norm_residual
# ----------------------------------------------------------------------------------------------
def _norm_dim_fits_cuda(inputs: dict) -> str | None:
    x = inputs["x"]
    dim = x.shape[-1]
    vec = 16 // x.element_size()
    limit = 4096 * vec if dim % vec == 0 else 4096
    if dim > limit:
        return f"last dimension {dim} is over the CUDA kernel's limit {limit} for {x.dtype}"
    if inputs.get("batch", 1) > 65535:
        return f"batch {inputs['batch']} is over the CUDA backward's limit 65535"
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
# RoPE
# ----------------------------------------------------------------------------------------------
def _rope_inputs(x, freqs_cis, inverse=False):
    return {"x": x, "freqs_cis": freqs_cis}


def _rope_freqs_complex64(inputs: dict) -> str | None:
    if inputs["freqs_cis"].dtype != torch.complex64:
        return f"freqs_cis has dtype {inputs['freqs_cis'].dtype}, the kernels take complex64"
    return None


_rope_dispatch = dispatch.register(
    "apply_rope",
    [
        dispatch.Backend("cuda", dispatch.compiled_backend("cuda", _rope_freqs_complex64), "lumina CUDA kernel"),
        dispatch.Backend("cpu", dispatch.compiled_backend("cpu", _rope_freqs_complex64), "lumina C++ kernel"),
    ],
    _rope_inputs,
)


def apply_rope(x: Tensor, freqs_cis: Tensor, inverse: bool = False) -> Tensor:
    """Rotary position embedding, official Lumina convention.

    x: (B, L, H, D), D even. freqs_cis: complex (L, D/2), or (B, L, D/2) for per-sample positions.
    Pair i of every head, (x[..., 2i], x[..., 2i+1]), is rotated by freqs_cis[..., i] (by its conjugate
    when `inverse`). Math in fp32, output in x's dtype.
    """
    _tensor(x, "x")
    if x.dim() != 4:
        raise ValueError(f"`x` must be (batch, seq, heads, head_dim), got shape {tuple(x.shape)}")
    B, L, _, D = x.shape
    if D % 2:
        raise ValueError(f"the head dim of `x` (last dimension) must be even, got {D}")
    _tensor(freqs_cis, "freqs_cis", floating=False)
    if not freqs_cis.is_complex():
        raise ValueError(f"`freqs_cis` must be a complex tensor (complex64), got dtype {freqs_cis.dtype}")
    _same_device(freqs_cis, "freqs_cis", x, "x")
    if tuple(freqs_cis.shape) not in ((L, D // 2), (B, L, D // 2)):
        raise ValueError(f"`freqs_cis` must have shape (seq, head_dim/2) = ({L}, {D // 2}) or "
                         f"(batch, seq, head_dim/2) = ({B}, {L}, {D // 2}), got {tuple(freqs_cis.shape)}")
    backend = _rope_dispatch.decide(_rope_inputs(x, freqs_cis)).backend
    if backend == "reference":
        return reference.apply_rope(x, freqs_cis, inverse)
    x = x.contiguous() if x.storage_offset() % 2 == 0 else x.clone()
    return torch.ops.lumina.rope(x, freqs_cis.contiguous(), bool(inverse))


# ----------------------------------------------------------------------------------------------
# fake kernels and autograd of the compiled ops
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

    @torch.library.register_fake("lumina::rope")
    def _(x, freqs_cis, inverse=False):
        return torch.empty_like(x)

    def _norm_setup(ctx, inputs, output):
        x, weight, scale, gate, residual, eps = inputs
        ctx.save_for_backward(x, weight, scale, gate, output[1])
        ctx.has_residual = residual is not None

    def _norm_backward(ctx, grad_out, grad_rstd):
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

    def _rope_setup(ctx, inputs, output):
        x, freqs_cis, inverse = inputs
        ctx.inverse = inverse
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, freqs_cis)

    def _rope_backward(ctx, grad):
        x, freqs_cis = ctx.saved_tensors
        grad_x = torch.ops.lumina.rope(grad.contiguous(), freqs_cis, not ctx.inverse)
        grad_f = None
        if ctx.needs_input_grad[1]:  # rare (learned tables): differentiate the reference
            with torch.enable_grad():
                f = freqs_cis.detach().requires_grad_(True)
                (grad_f,) = torch.autograd.grad(reference.apply_rope(x.detach(), f, ctx.inverse), f, grad)
        return grad_x, grad_f, None

    torch.library.register_autograd("lumina::rope", _rope_backward, setup_context=_rope_setup)
