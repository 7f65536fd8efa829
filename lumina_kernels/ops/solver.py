"""Fused solver steps (inference only): solver_update and cfg_combine, their dispatchers and fake kernels."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .. import _ext, dispatch, reference
from ._common import _inference_only, _real, _same_device, _tensor

__all__ = ["solver_update", "cfg_combine"]

SOLVER_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # what the kernels read
STATE_DTYPES = (torch.float32, torch.float64)  # the solver state
MAX_SOLVER_TERMS: int = _ext.LIMITS["solver_max_terms"]  # kMaxSolverTerms (csrc/limits.h), read from build_info


def _solver_update_inputs(x, ks, coeffs=(), h=1.0):
    return {"x": x, "ks": list(ks)}


def _solver_update_check(device_type: str) -> dispatch.Check:
    def check(inputs: dict) -> str | None:
        x, ks = inputs["x"], inputs["ks"]
        for reason in (dispatch.needs_extension(device_type), dispatch.on_device(x, device_type),
                       dispatch.compiled_for(x)):
            if reason is not None:
                return reason
        if x.dtype not in STATE_DTYPES:
            return f"x has dtype {x.dtype}, not float32 or float64"
        dtypes = sorted({str(k.dtype) for k in ks})
        if len(dtypes) > 1:
            return f"ks mix dtypes {', '.join(dtypes)}; the kernels read one"
        if ks and ks[0].dtype not in SOLVER_DTYPES:
            return f"ks have dtype {ks[0].dtype}, not one of float32, float64, bfloat16, float16"
        return _inference_only(x, *ks)

    return check


_solver_update_dispatch = dispatch.register(
    "solver_update",
    [
        dispatch.Backend("cuda", _solver_update_check("cuda"), "lumina CUDA kernel"),
        dispatch.Backend("cpu", _solver_update_check("cpu"), "lumina C++ kernel"),
    ],
    _solver_update_inputs,
)


def solver_update(x: Tensor, ks, coeffs, h: float) -> Tensor:
    """One fused ODE-solver combination: ``x + h * sum_i coeffs[i] * ks[i]``, a new tensor in x's dtype.

    x: the solver's accumulation state, float32 or float64. ks: 1 to 7 tensors of x's shape (any floating dtype,
    e.g. bfloat16 model outputs: read and converted in the kernel, no separate ``.to(float32)`` copy). coeffs: one
    finite real number per k; h: a finite real number. One pass: x and each k read once, the output written once.

    Rounding (the contract, identical to the Python solvers' ``torch.add(x, k, alpha=h * c)`` followed by
    ``out.add_(k, alpha=h * c)``): zero coefficients are skipped; ``a_i = h * c_i`` is computed in double and cast
    to x's dtype; each k is converted to x's dtype (exact for bfloat16 / float16 and into float64); then
    ``out = x``, and for each remaining term in order ``out = fma(a_i, k_i, out)``, one rounding per term. torch's
    add does the same on CUDA and on CPUs with FMA (AVX2 / AVX-512 / aarch64); torch on a CPU without FMA rounds
    the product too, which is within 1 ulp of the largest term per term. All coefficients zero: a copy of x.

    Inference only: not differentiable. When an input requires grad (and grad mode is on), when the ks mix dtypes
    or when no compiled kernel applies, the reference (``lumina_kernels.reference.solver_update``) runs instead;
    ``lumina_kernels.explain("solver_update", x, ks)`` says which and why.
    """
    _tensor(x, "x")
    if x.dtype not in STATE_DTYPES:
        raise ValueError(f"`x` (the solver state) must be float32 or float64, got {x.dtype}")
    if isinstance(ks, Tensor) or not isinstance(ks, (list, tuple)):
        raise ValueError(f"`ks` must be a list or tuple of 1 to {MAX_SOLVER_TERMS} tensors, got {type(ks).__name__}")
    if not 1 <= len(ks) <= MAX_SOLVER_TERMS:
        raise ValueError(f"`ks` must hold 1 to {MAX_SOLVER_TERMS} tensors, got {len(ks)}")
    for i, k in enumerate(ks):
        _tensor(k, f"ks[{i}]")
        _same_device(k, f"ks[{i}]", x, "x")
        if k.shape != x.shape:
            raise ValueError(f"`ks[{i}]` must have the shape of `x` {tuple(x.shape)}, got {tuple(k.shape)}")
    if isinstance(coeffs, (str, bytes, Tensor)) or not hasattr(coeffs, "__len__"):
        raise ValueError(f"`coeffs` must be a sequence of real numbers, got {type(coeffs).__name__}")
    if len(coeffs) != len(ks):
        raise ValueError(f"`coeffs` must have one entry per tensor of `ks` ({len(ks)}), got {len(coeffs)}")
    cs = [_real(c, "coeffs") for c in coeffs]
    h = _real(h, "h")
    backend = _solver_update_dispatch.decide(_solver_update_inputs(x, ks)).backend
    if backend == "reference":
        return reference.solver_update(x, ks, cs, h)
    return torch.ops.lumina.solver_update(x.contiguous(), [k.contiguous() for k in ks], cs, h)


def _cfg_inputs(cond, uncond, scale=1.0, channels=None, renorm=None):
    return {"x": cond, "uncond": uncond}


def _cfg_check(device_type: str) -> dispatch.Check:
    def check(inputs: dict) -> str | None:
        cond, uncond = inputs["x"], inputs["uncond"]
        for reason in (dispatch.needs_extension(device_type), dispatch.on_device(cond, device_type, "cond"),
                       dispatch.compiled_for(cond)):
            if reason is not None:
                return reason
        if cond.dtype != uncond.dtype:
            return f"cond ({cond.dtype}) and uncond ({uncond.dtype}) differ in dtype; the reference promotes them"
        if cond.dtype not in SOLVER_DTYPES:
            return f"cond has dtype {cond.dtype}, not one of float32, float64, bfloat16, float16"
        return _inference_only(cond, uncond)

    return check


_cfg_dispatch = dispatch.register(
    "cfg_combine",
    [
        dispatch.Backend("cuda", _cfg_check("cuda"), "lumina CUDA kernel"),
        dispatch.Backend("cpu", _cfg_check("cpu"), "lumina C++ kernel"),
    ],
    _cfg_inputs,
)


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float, channels: int | None = None,
                renorm: float | None = None) -> Tensor:
    """Fused classifier-free guidance of the two halves of a doubled-batch model output (a new tensor).

    cond, uncond: tensors of one shape (batch first), e.g. ``out[:B]`` and ``out[B:]`` (contiguous views are read
    in place, never copied). Computed, and returned, in float32 for bfloat16 / float16 inputs, else in their dtype.

    * plain: ``v = torch.lerp(uncond, cond, scale)`` = ``uncond + scale * (cond - uncond)``, rounded as torch.lerp
      rounds: with ``d = cond - uncond``, ``fma(scale, d, uncond)`` for ``|scale| < 0.5``, else
      ``fma(scale - 1, d, cond)``.
    * ``channels=k`` (the official Lumina-Next quirk): channels ``[:k]`` of dim 1 get ``uncond + scale * d``
      (product and sum each rounded), the others keep ``cond`` exactly.
    * ``renorm=r`` (> 0): per sample, norms over all non-batch dims summed in double in a fixed order (run-to-run
      deterministic): if ``||v|| > r * ||cond||`` then ``v *= r * ||cond|| / ||v||``.

    Matches ``lumina.sampling.guidance.cfg_combine`` (its reference: ``lumina_kernels.reference.cfg_combine``) to
    float32 rounding: bitwise for plain CFG on CUDA and FMA CPUs, within a few ulps with renorm (the norms are summed
    more accurately than torch's). Inference only: not differentiable. Inputs of two dtypes, inputs that require
    grad, or devices without a kernel run the reference; ``lumina_kernels.explain("cfg_combine", cond, uncond)``
    says which and why.
    """
    _tensor(cond, "cond")
    _tensor(uncond, "uncond")
    _same_device(uncond, "uncond", cond, "cond")
    if uncond.shape != cond.shape:
        raise ValueError(f"`uncond` must have the shape of `cond` {tuple(cond.shape)}, got {tuple(uncond.shape)}")
    scale = _real(scale, "scale")
    if channels is not None:
        if isinstance(channels, bool) or not isinstance(channels, numbers.Integral) or channels < 1:
            raise ValueError(f"`channels` must be None or an integer >= 1, got {channels!r}")
        if cond.dim() < 2:
            raise ValueError(f"`channels` needs a channel dimension (dim 1), got shape {tuple(cond.shape)}")
        channels = int(channels)
    if renorm is not None:
        renorm = _real(renorm, "renorm")
        if renorm <= 0:
            raise ValueError(f"`renorm` must be None (off) or a finite real number > 0, got {renorm!r}")
        if cond.dim() < 1:
            raise ValueError("`renorm` needs a batch dimension (dim 0), got a scalar")
    backend = _cfg_dispatch.decide(_cfg_inputs(cond, uncond)).backend
    if backend == "reference":
        return reference.cfg_combine(cond, uncond, scale, channels, renorm)
    return torch.ops.lumina.cfg_combine(cond.contiguous(), uncond.contiguous(), scale, channels, renorm)


# ----------------------------------------------------------------------------------------------
# fake kernels of the compiled ops (not differentiable: no autograd)
# ----------------------------------------------------------------------------------------------
if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("lumina::solver_update")
    def _(x, ks, coeffs, h):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("lumina::cfg_combine")
    def _(cond, uncond, scale, channels=None, renorm=None):
        low = cond.dtype in (torch.bfloat16, torch.float16)
        return cond.new_empty(cond.shape, dtype=torch.float32 if low else cond.dtype)
