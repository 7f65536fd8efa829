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

__all__ = ["rms_norm", "modulated_rms_norm", "gated_rms_norm_residual", "apply_rope", "attention", "merge_tokens"]


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
    if torch.compiler.is_compiling():  # traced: no storage offsets to read; a fresh buffer is aligned
        x = x.clone(memory_format=torch.contiguous_format)
    else:
        x = x.contiguous() if x.storage_offset() % 2 == 0 else x.clone()
    return torch.ops.lumina.rope(x, freqs_cis.contiguous(), bool(inverse))


# ----------------------------------------------------------------------------------------------
# attention with fused RoPE, GQA and a key padding mask
# ----------------------------------------------------------------------------------------------
def _attn_inputs(q, k, v, *, q_freqs=None, k_freqs=None, key_padding_mask=None, softmax_scale=None):
    grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in (q, k, v))
    return {"x": q, "k": k, "q_freqs": q_freqs, "k_freqs": k_freqs, "key_padding_mask": key_padding_mask, "grad": grad}


def _attn_tables_fit_kernel(inputs: dict) -> str | None:
    for name in ("q_freqs", "k_freqs"):
        f = inputs[name]
        if f is None:
            continue
        if f.dtype != torch.complex64:
            return f"{name} has dtype {f.dtype}, the kernel takes complex64"
        if f.requires_grad and torch.is_grad_enabled():
            return f"{name} requires grad (a learned table): the kernel gives no gradient for it"
    return None


# Head dims with a compiled CUDA kernel (csrc/gen_instances.py HEAD_DIMS); others run on torch SDPA.
CUDA_HEAD_DIMS = (64, 72, 96, 128)
# gridDim.y / gridDim.z limit: the flash kernels put heads on y and the batch on z (attention_cuda.cpp checks it too).
CUDA_MAX_GRID_YZ = 65535


def _attn_fits_cuda_kernel(inputs: dict) -> str | None:
    q = inputs["x"]
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"q has dtype {q.dtype}: the CUDA kernel is bf16/fp16 on tensor cores (torch SDPA takes float32)"
    if q.shape[3] not in CUDA_HEAD_DIMS:
        return f"head dim {q.shape[3]} has no compiled CUDA kernel (compiled: {', '.join(map(str, CUDA_HEAD_DIMS))})"
    major, minor = torch.cuda.get_device_capability(q.device)
    if major < 8:
        return f"compute capability {major}.{minor} < 8.0: the kernel uses bf16 mma.sync (Ampere or newer)"
    if q.shape[0] > CUDA_MAX_GRID_YZ or q.shape[2] > CUDA_MAX_GRID_YZ:
        return (f"batch {q.shape[0]} or query heads {q.shape[2]} above {CUDA_MAX_GRID_YZ}, the CUDA grid's y/z limit "
                "(torch SDPA takes it)")
    return _attn_tables_fit_kernel(inputs)


# CPU choice between the C++ kernel and torch SDPA (its CPU flash kernel) after lumina's RoPE op, measured
# with lumina's wrappers on a 2-core Xeon (Sapphire Rapids: AVX-512, AMX) shared with another job, torch 2.14,
# RoPE on q and k, no mask; milliseconds, C++ / SDPA-after-RoPE:
#                                    fwd fp32    fwd bf16    fwd fp16  | fwd+bwd fp32  fwd+bwd bf16  fwd+bwd fp16
#   B=2 Hq=32 Hkv=8 D=72 L=256       24 / 24     20 / 24     25 / 30   |   69 / 88       59 / 96       72 / 140
#   B=2 Hq=32 Hkv=8 D=72 L=1024     301 / 254   283 / 97    385 / 294  |  866 / 964     837 / 656     958 / 1141
#   B=64 Hq=4 Hkv=2 D=64 L=64 (tiny)  6.8 / 10.9  6.0 / 16.0 11.0 / 19.3 | 19 / 49        19 / 94       32 / 110
#   B=2 Hq=32 Hkv=8 D=72 Lq=512 Lk=128 (the 2B model's cross-attention, inside NextDiT)  fwd fp32 34.5 / 19.3
# The C++ kernel wins small forward calls and whenever a backward follows, except bf16 on a CPU with AMX
# tiles (oneDNN's AMX GEMMs in SDPA); SDPA wins large forward-only calls (inference). Forward only, the
# crossover is put at B*Hq*Lq*Lk*D = 2^27 (between the tiny model's 6.7e7, C++ faster, and 3.0e8, SDPA faster);
# with a backward at Lq * Lk = 512^2, between the measured 256^2 and 1024^2.
SDPA_MIN_SCORES = 512 * 512
SDPA_MIN_FORWARD_WORK = 2 ** 27


def _has_amx() -> bool:
    f = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(f()) if f is not None else False
    except Exception:  # pragma: no cover - older torch or exotic CPUs
        return False


def _attn_cpu_slower(inputs: dict) -> str | None:
    """None when the C++ kernel is the faster CPU path for these inputs (measurements above), else why not."""
    q, k = inputs["x"], inputs["k"]
    n = q.shape[1] * k.shape[1]
    if not inputs["grad"]:
        work = q.shape[0] * q.shape[2] * n * q.shape[3]
        if work < SDPA_MIN_FORWARD_WORK:
            return None
        return (f"forward only with B*Hq*Lq*Lk*D = {work} >= 2^27: torch SDPA after RoPE measured faster "
                "(L=1024 fp32 254 vs 301 ms, bf16 97 vs 283 ms; Lq=512 Lk=128 fp32 19 vs 35 ms)")
    if n < SDPA_MIN_SCORES:
        return None
    if q.dtype == torch.bfloat16 and _has_amx():
        return (f"bf16 on a CPU with AMX, Lq*Lk = {n} >= 512^2: torch SDPA after RoPE measured faster "
                "forward+backward (L=1024: 656 vs 837 ms)")
    return None


def _attn_sdpa_check(inputs: dict) -> str | None:
    return dispatch.kernel_dtype(inputs["x"], "q")


_attn_dispatch = dispatch.register(
    "attention",
    [
        dispatch.Backend("cuda", dispatch.compiled_backend("cuda", _attn_fits_cuda_kernel),
                         "lumina CUDA flash kernel (RoPE fused, GQA in place, exact head dim)"),
        dispatch.Backend("cpu", dispatch.compiled_backend("cpu", _attn_tables_fit_kernel, _attn_cpu_slower),
                         "lumina C++ kernel (tiled, online softmax, RoPE fused)"),
        dispatch.Backend("sdpa", _attn_sdpa_check, "torch scaled_dot_product_attention after lumina apply_rope"),
    ],
    _attn_inputs,
)


def _rope_table_arg(f: object, name: str, B: int, L: int, D: int, ref: Tensor) -> Tensor | None:
    if f is None:
        return None
    _tensor(f, name, floating=False)
    if not f.is_complex():
        raise ValueError(f"`{name}` must be a complex tensor (complex64), got dtype {f.dtype}")
    _same_device(f, name, ref, "q")
    if D % 2:
        raise ValueError(f"the head dim of `q` must be even when `{name}` is given, got {D}")
    if tuple(f.shape) not in ((L, D // 2), (B, L, D // 2)):
        raise ValueError(f"`{name}` must have shape (seq, head_dim/2) = ({L}, {D // 2}) or "
                         f"(batch, seq, head_dim/2) = ({B}, {L}, {D // 2}), got {tuple(f.shape)}")
    return f


def _no_host_sync() -> bool:
    """True while a CUDA graph is captured or torch.compile traces: no reading device values on the host."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _sdpa_after_rope(q, k, v, q_freqs, k_freqs, mask, scale):
    """torch SDPA (its CPU flash kernel, or the CUDA ones) on tensors rotated by lumina's RoPE op."""
    if q_freqs is not None:
        q = apply_rope(q, q_freqs)
    if k_freqs is not None:
        k = apply_rope(k, k_freqs)
    attn_mask, alive = None, None
    if mask is not None:
        alive = mask.any(-1)  # (B,): a batch element with no key left gives zeros, not NaN
        attn_mask = (mask | ~alive[:, None])[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask, scale=scale,
        enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)  # (B, Lq, Hq, D), a transposed view
    if alive is not None and (_no_host_sync() or not bool(alive.all())):
        out = out * alive[:, None, None, None].to(out.dtype)
    return out


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    q_freqs: Tensor | None = None,
    k_freqs: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    softmax_scale: float | None = None,
) -> Tensor:
    """softmax(scale * rope(q) rope(k)^T, keys masked) @ v, per head, with GQA.

    q: (B, Lq, Hq, D); k, v: (B, Lk, Hkv, D) of q's dtype, Hq a multiple of Hkv (MHA, GQA, MQA: query head
    h reads KV head h // (Hq / Hkv)). q_freqs / k_freqs: complex64 RoPE tables as in `apply_rope`, (L, D/2)
    or (B, L, D/2), applied to q / k inside the op (self-attention passes both, cross-attention to text only
    q_freqs). key_padding_mask: (B, Lk) bool, True = attend; a row whose keys are all masked gives zeros.
    softmax_scale: default 1/sqrt(D) (pass sqrt(log_base(N) / D) for proportional attention).
    Returns (B, Lq, Hq, D) in q's dtype; differentiable with respect to q, k and v (and learned tables).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _tensor(t, name)
        if t.dim() != 4:
            raise ValueError(f"`{name}` must be (batch, seq, heads, head_dim), got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        _same_device(t, name, q, "q")
        if t.dtype != q.dtype:
            raise ValueError(f"`{name}` has dtype {t.dtype} but `q` has {q.dtype}; q, k and v must share one dtype")
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"`k` must be (batch, k_len, kv_heads, head_dim) with the batch {B} and head dim {D} of `q`, "
                         f"got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"`v` must have the shape of `k` {tuple(k.shape)}, got {tuple(v.shape)}")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"the query heads of `q` ({Hq}) must be a multiple of the KV heads of `k` ({Hkv})")
    q_freqs = _rope_table_arg(q_freqs, "q_freqs", B, Lq, D, q)
    k_freqs = _rope_table_arg(k_freqs, "k_freqs", B, Lk, D, q)
    mask = key_padding_mask
    if mask is not None:
        _tensor(mask, "key_padding_mask", floating=False)
        if mask.dtype != torch.bool:
            raise ValueError(f"`key_padding_mask` must be a bool tensor (True = attend), got dtype {mask.dtype}")
        _same_device(mask, "key_padding_mask", q, "q")
        if tuple(mask.shape) != (B, Lk):
            raise ValueError(f"`key_padding_mask` must have shape (batch, k_len) = ({B}, {Lk}), got {tuple(mask.shape)}")
    if softmax_scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    elif isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)) or not math.isfinite(softmax_scale):
        raise ValueError(f"`softmax_scale` must be a finite number or None, got {softmax_scale!r}")
    else:
        scale = float(softmax_scale)
    inputs = _attn_inputs(q, k, v, q_freqs=q_freqs, k_freqs=k_freqs, key_padding_mask=mask)
    backend = _attn_dispatch.decide(inputs).backend
    if backend == "reference":
        return reference.attention(q, k, v, q_freqs, k_freqs, mask, scale)
    if backend == "sdpa":
        return _sdpa_after_rope(q, k, v, q_freqs, k_freqs, mask, scale)
    return torch.ops.lumina.attention_fwd(
        q.contiguous(), k.contiguous(), v.contiguous(),
        None if q_freqs is None else q_freqs.contiguous(), None if k_freqs is None else k_freqs.contiguous(),
        None if mask is None else mask.contiguous(), scale)[0]


# ----------------------------------------------------------------------------------------------
# fake kernels and autograd of the compiled ops
# ----------------------------------------------------------------------------------------------
# token merging (context drop)
# ----------------------------------------------------------------------------------------------
def _merge_inputs(x, grid=None, factor=None, mask=None, *, cells=None, n_cells=None):
    return {"x": x}


_merge_dispatch = dispatch.register(
    "merge_tokens",
    [
        dispatch.Backend("cuda", dispatch.compiled_backend("cuda"), "lumina CUDA kernel"),
        dispatch.Backend("cpu", dispatch.compiled_backend("cpu"), "lumina C++ kernel"),
    ],
    _merge_inputs,
)


def _axes(v: object, name: str, n: int | None = None) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,) * (n or 1)
    try:
        t = tuple(v)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"`{name}` must be a tuple of ints, got {v!r}") from None
    if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in t):
        raise ValueError(f"`{name}` entries must be ints >= 1, got {v!r}")
    return t


def _merge_grid(x: Tensor, grid, factor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    for name, v in (("grid", grid), ("factor", factor)):
        if v is None:
            raise ValueError(f"`{name}` must be given: pass (grid, factor), or cells= and n_cells= instead")
    g = _axes(grid, "grid")
    if len(g) not in (1, 2, 3):
        raise ValueError(f"`grid` must be (tokens,), (h, w) or (frames, h, w), got {grid!r}")
    f = _axes(factor, "factor", len(g))
    if len(f) != len(g):
        raise ValueError(f"`factor` must have one entry per axis of `grid` {g}, got {factor!r}")
    if math.prod(g) != x.shape[1]:
        raise ValueError(f"`grid` {g} holds {math.prod(g)} tokens but `x` has {x.shape[1]}")
    return g, f


def _merge_cells(x: Tensor, grid, factor, cells, n_cells) -> tuple[Tensor, int]:
    for name, v in (("grid", grid), ("factor", factor)):
        if v is not None:
            raise ValueError(f"`{name}` must be None when `cells` / `n_cells` give the layout, got {v!r}")
    if cells is None:
        raise ValueError("`cells` must be given with `n_cells`: the cell id of every token, (tokens,) or (batch, tokens)")
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 0:
        raise ValueError(f"`n_cells` must be an int >= 0 given with `cells`, got {n_cells!r}")
    _tensor(cells, "cells", floating=False)
    if cells.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"`cells` must be an int32 or int64 tensor, got dtype {cells.dtype}")
    _same_device(cells, "cells", x, "x")
    B, L = x.shape[:2]
    if tuple(cells.shape) not in ((L,), (B, L)):
        raise ValueError(f"`cells` must have shape (tokens,) = ({L},) or (batch, tokens) = ({B}, {L}), "
                         f"got {tuple(cells.shape)}")
    return cells, n_cells


def _check_cell_range(cells: Tensor, n_cells: int) -> None:
    """One min / max reduction (a host sync on CUDA); a ValueError naming `cells` for an id outside [0, n_cells)."""
    if cells.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(cells))
    if lo < 0 or hi >= n_cells:
        raise ValueError(f"`cells` ids must lie in [0, n_cells) = [0, {n_cells}), got ids from {lo} to {hi}")


def merge_tokens(x: Tensor, grid=None, factor=None, mask: Tensor | None = None, *, cells: Tensor | None = None,
                 n_cells: int | None = None) -> tuple[Tensor, Tensor]:
    """Average-pool tokens over cells (context drop): cells of a 1-, 2- or 3-axis grid, or any cells given per token.

    x: (B, L, ...) e.g. (B, L, H, D). Give the layout one of two ways (anything else is a ValueError naming the
    argument):

    * ``grid, factor``: tokens row-major on ``grid`` = (L,) (a sequence: time runs), (h, w) or (frames, h, w),
      prod(grid) == L; ``factor`` the cell size, an int for every axis or one per axis (>= 1). A factor that does not
      divide its axis leaves a partial last cell, which averages the tokens it holds (grid (10,), factor 4: cells
      [0..3], [4..7], [8, 9]). prod(ceil(grid / factor)) cells, numbered row-major.
    * ``cells=, n_cells=``: ``cells`` an int32 / int64 tensor of the cell id of every token, in [0, n_cells): (L,)
      (one layout for the whole batch) or (B, L) (one per sample), on x's device. Any grouping: time runs, space
      cells, point clusters; cells that no token names are empty. An id out of range is a ValueError naming `cells`
      (checked with one min / max reduction: a host sync on CUDA, where the op's own check raises a RuntimeError
      naming `cells`); while a CUDA graph is captured or torch.compile traces nothing is synced, and a token with an
      id out of range is then left out (the kernels never read or write out of bounds for it).

    mask: (B, L) bool, False tokens are left out of the averages. Returns (out (B, n_cells, ...) in x's dtype, the
    mean of each cell's unmasked tokens summed in fp32 in token order; count (B, n_cells) float32, the number of
    tokens averaged: 0 marks an empty cell, whose output is 0). Differentiable in x: a token's gradient is its cell's
    gradient / count (0 when masked). A ``cells`` tensor equal to ``reference.merge_cells(grid, factor)[0]`` gives the
    grid's results bit for bit.
    """
    _tensor(x, "x")
    if x.dim() < 3:
        raise ValueError(f"`x` must be (batch, tokens, ...) e.g. (batch, tokens, heads, head_dim), got shape {tuple(x.shape)}")
    if mask is not None:
        _tensor(mask, "mask", floating=False)
        if mask.dtype != torch.bool:
            raise ValueError(f"`mask` must be a bool tensor (True = keep), got dtype {mask.dtype}")
        _same_device(mask, "mask", x, "x")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"`mask` must have shape (batch, tokens) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    m = None if mask is None else mask.contiguous()
    if cells is None and n_cells is None:
        g, f = _merge_grid(x, grid, factor)
        if _merge_dispatch.decide(_merge_inputs(x)).backend == "reference":
            return reference.merge_tokens(x, g, f, mask)
        return torch.ops.lumina.merge_tokens(x.contiguous(), m, list(g), list(f))
    cells, n_cells = _merge_cells(x, grid, factor, cells, n_cells)
    backend = _merge_dispatch.decide(_merge_inputs(x)).backend
    if (x.device.type == "cpu" or backend == "reference") and not _no_host_sync():
        _check_cell_range(cells, n_cells)  # the CUDA op checks its own (RuntimeError), once
    if backend == "reference":
        return reference.merge_tokens(x, mask=mask, cells=cells, n_cells=n_cells)
    return torch.ops.lumina.merge_tokens_cells(x.contiguous(), m, cells.contiguous(), n_cells)


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

    @torch.library.register_fake("lumina::attention_fwd")
    def _(q, k, v, q_freqs, k_freqs, key_padding_mask, softmax_scale):
        return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    @torch.library.register_fake("lumina::attention_bwd")
    def _(grad_out, q, k, v, out, lse, q_freqs, k_freqs, key_padding_mask, softmax_scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def _attn_setup(ctx, inputs, output):
        q, k, v, q_freqs, k_freqs, mask, scale = inputs
        out, lse = output
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, out, lse, q_freqs, k_freqs, mask)

    def _attn_backward(ctx, grad_out, grad_lse):
        # lse is an auxiliary output for the backward pass: its gradient is not propagated.
        q, k, v, out, lse, q_freqs, k_freqs, mask = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = torch.ops.lumina.attention_bwd(grad_out.contiguous(), q, k, v, out, lse, q_freqs, k_freqs, mask,
                                                    ctx.scale)
        return dq, dk, dv, None, None, None, None

    torch.library.register_autograd("lumina::attention_fwd", _attn_backward, setup_context=_attn_setup)

    @torch.library.register_fake("lumina::merge_tokens")
    def _(x, mask, grid, factor):
        cells = math.prod(-(-g // k) for g, k in zip(grid, factor))
        return x.new_empty((x.shape[0], cells, *x.shape[2:])), x.new_empty((x.shape[0], cells), dtype=torch.float32)

    @torch.library.register_fake("lumina::merge_tokens_backward")
    def _(grad_out, mask, count, grid, factor):
        return grad_out.new_empty((grad_out.shape[0], math.prod(grid), *grad_out.shape[2:]))

    def _merge_setup(ctx, inputs, output):
        x, mask, grid, factor = inputs
        ctx.grid, ctx.factor = list(grid), list(factor)
        ctx.save_for_backward(mask, output[1])

    def _merge_backward(ctx, grad_out, grad_count):
        mask, count = ctx.saved_tensors
        gx = torch.ops.lumina.merge_tokens_backward(grad_out.contiguous(), mask, count, ctx.grid, ctx.factor)
        return gx, None, None, None

    torch.library.register_autograd("lumina::merge_tokens", _merge_backward, setup_context=_merge_setup)

    @torch.library.register_fake("lumina::merge_tokens_cells")
    def _(x, mask, cells, n_cells):
        return x.new_empty((x.shape[0], n_cells, *x.shape[2:])), x.new_empty((x.shape[0], n_cells), dtype=torch.float32)

    @torch.library.register_fake("lumina::merge_tokens_cells_backward")
    def _(grad_out, mask, count, cells):
        return grad_out.new_empty((grad_out.shape[0], cells.shape[-1], *grad_out.shape[2:]))

    def _merge_cells_setup(ctx, inputs, output):
        x, mask, cells, n_cells = inputs
        ctx.save_for_backward(mask, cells, output[1])

    def _merge_cells_backward(ctx, grad_out, grad_count):
        mask, cells, count = ctx.saved_tensors
        gx = torch.ops.lumina.merge_tokens_cells_backward(grad_out.contiguous(), mask, count, cells)
        return gx, None, None, None

    torch.library.register_autograd("lumina::merge_tokens_cells", _merge_cells_backward,
                                    setup_context=_merge_cells_setup)


# ----------------------------------------------------------------------------------------------
# fused solver steps (inference only): solver_update, cfg_combine
# ----------------------------------------------------------------------------------------------
import numbers  # noqa: E402

__all__ += ["solver_update", "cfg_combine"]

SOLVER_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # what the kernels read
STATE_DTYPES = (torch.float32, torch.float64)  # the solver state
MAX_SOLVER_TERMS = 7


def _real(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"`{name}` must be a finite real number, got {v!r}")
    return float(v)


def _inference_only(*ts: Tensor) -> str | None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in ts):
        return "an input requires grad: the fused op is inference-only, the reference is differentiable"
    return None


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


if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("lumina::solver_update")
    def _(x, ks, coeffs, h):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("lumina::cfg_combine")
    def _(cond, uncond, scale, channels=None, renorm=None):
        low = cond.dtype in (torch.bfloat16, torch.float16)
        return cond.new_empty(cond.shape, dtype=torch.float32 if low else cond.dtype)
