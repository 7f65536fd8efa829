"""Attention with fused RoPE, GQA and a key padding mask (lumina::attention_fwd / attention_bwd).

The typed wrapper, its dispatcher (CUDA flash kernel, C++ kernel or torch SDPA after lumina's RoPE), and the
fake kernels and autograd of the compiled op.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _ext, dispatch, reference
from ._common import _no_double_backward, _no_host_sync, _same_device, _tensor
from .rope import apply_rope

__all__ = ["attention"]


def _attn_inputs(q, k, v, *, q_freqs=None, k_freqs=None, key_padding_mask=None, softmax_scale=None):
    grad = torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in (q, k, v))
    return {"x": q, "k": k, "v": v, "q_freqs": q_freqs, "k_freqs": k_freqs, "key_padding_mask": key_padding_mask, "grad": grad}


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


# Head dims with a compiled CUDA kernel (kFlashHeadDims, csrc/limits.h, read from build_info); others run on
# torch SDPA.
CUDA_HEAD_DIMS: tuple[int, ...] = _ext.LIMITS["attention_cuda_head_dims"]
# gridDim.y / gridDim.z limit: the flash kernels put heads on y and the batch on z (kMaxGridYZ, csrc/limits.h;
# attention_cuda.cpp checks it too).
CUDA_MAX_GRID_YZ: int = _ext.LIMITS["cuda_max_grid_yz"]


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
# tiles (oneDNN's AMX GEMMs in SDPA); SDPA wins large forward-only calls (inference).
# Forward only, re-measured on the same kind of machine when quiet (one process, medians of 15; ms, C++ / SDPA):
#                                              fp32            bf16
#   B=64 Hq=4 Hkv=2 D=64 L=64 (tiny)        8.3 / 11.4       7.8 / 5.8
#   B=2 Hq=8 D=64 L=256 (small, self)       4.6 / 2.4        5.7 / 3.0
#   B=2 Hq=8 D=64 Lq=256 Lk=32 (cross)      0.9 / 0.6        1.4 / 0.8
#   B=2 Hq=8 D=64 L=1024                   68.9 / 36.7      70.8 / 39.2
#   B=2 Hq=32 Hkv=8 D=72 L=256 (2B, self)  19.7 / 12.4      20.8 / 11.2
#   B=2 Hq=32 Hkv=8 D=72 Lq=256 Lk=128     10.4 / 12.9      11.5 / 7.1   (2B cross-attention, GQA 4:1)
# so forward only: SDPA for bf16, and for fp32 unless the scores are tiny (Lq*Lk <= 64^2); cross-attention to
# unrotated keys (no k table: a caption, padded to length buckets under CUDA graphs) stays on the C++ kernel, whose
# masked keys add exact zeros, so padding changes no bit of the result (and it measured faster for the 2B model's
# GQA 4:1 cross-attention in fp32); fp16 (not re-measured) keeps the earlier crossover
# B*Hq*Lq*Lk*D = 2^27. With a backward: Lq * Lk = 512^2, between the measured 256^2 and 1024^2.
SDPA_MIN_SCORES = 512 * 512
SDPA_MIN_FORWARD_WORK = 2 ** 27
CPP_MAX_FORWARD_SCORES = 64 * 64


def _has_amx() -> bool:
    f = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(f()) if f is not None else False
    except Exception:  # pragma: no cover - older torch or exotic CPUs
        return False


def _attn_cpu_slower(inputs: dict) -> str | None:
    """None when the C++ kernel is the faster CPU path for these inputs (measurements above) or must run (torch's
    CPU SDPA can hide a NaN, see `_sdpa_may_hide_nan`), else why not."""
    reason = _attn_cpu_speed(inputs)
    if reason is None or _sdpa_may_hide_nan(inputs):
        return None
    return reason


def _sdpa_may_hide_nan(inputs: dict) -> bool:
    """torch's CPU SDPA in bf16 turns a NaN query/key/value into finite outputs where the reference (and the C++
    kernel) give NaN (torch 2.14, tests/test_fuzz.py). So SDPA runs only on finite inputs: one read of q, k and v,
    small beside the O(Lq*Lk) attention; where the host must not read values (torch.compile) the C++ kernel runs."""
    if _no_host_sync():
        return True
    return not all(bool(torch.isfinite(inputs[n]).all()) for n in ("x", "k", "v"))


def _attn_cpu_speed(inputs: dict) -> str | None:
    q, k = inputs["x"], inputs["k"]
    n = q.shape[1] * k.shape[1]
    if not inputs["grad"]:
        return _forward_cpu_slower(q, k, n, inputs["k_freqs"] is not None)
    if n < SDPA_MIN_SCORES:
        return None
    if q.dtype == torch.bfloat16 and _has_amx():
        return (f"bf16 on a CPU with AMX, Lq*Lk = {n} >= 512^2: torch SDPA after RoPE measured faster "
                "forward+backward (L=1024: 656 vs 837 ms)")
    return None


def _forward_cpu_slower(q: Tensor, k: Tensor, n: int, rotated_keys: bool) -> str | None:
    """Forward only: None when the C++ kernel measured faster or must run (see the table above), else why SDPA
    runs."""
    if not rotated_keys:
        return None
    if q.dtype == torch.float16:
        work = q.shape[0] * q.shape[2] * n * q.shape[3]
        if work < SDPA_MIN_FORWARD_WORK:
            return None
        return f"fp16 forward only with B*Hq*Lq*Lk*D = {work} >= 2^27: torch SDPA after RoPE measured faster"
    if q.dtype == torch.float32 and n <= CPP_MAX_FORWARD_SCORES:
        return None
    return (f"{str(q.dtype)[6:]} forward only, Lq*Lk = {n}, {q.shape[2]} query / {k.shape[2]} KV heads: torch SDPA "
            "after RoPE measured faster (small model self-attention fp32 2.4 vs 4.6 ms, bf16 3.0 vs 5.7 ms)")


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
# fake kernels and autograd of the compiled op
# ----------------------------------------------------------------------------------------------
if _ext.LOAD_ERROR is None:

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
        _no_double_backward("attention")
        # lse is an auxiliary output for the backward pass: its gradient is not propagated.
        q, k, v, out, lse, q_freqs, k_freqs, mask = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = torch.ops.lumina.attention_bwd(grad_out.contiguous(), q, k, v, out, lse, q_freqs, k_freqs, mask,
                                                    ctx.scale)
        return dq, dk, dv, None, None, None, None

    torch.library.register_autograd("lumina::attention_fwd", _attn_backward, setup_context=_attn_setup)
