"""Plain-PyTorch references of every lumina op: the test oracle and the fallback when no kernel applies.

Each function computes in float32 (float64 stays float64) and rounds once to the input's dtype, which
is the contract the C++ and CUDA kernels are tested against.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fused_rms_norm", "rms_norm", "modulated_rms_norm", "gated_rms_norm_residual", "apply_rope", "attention",
           "merge_tokens", "merge_cells", "solver_update", "cfg_combine"]


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
    x0, x1 = x.to(ct).reshape(*x.shape[:-1], x.shape[-1] // 2, 2).unbind(-1)  # each (B, L, H, D/2)
    f = freqs_cis.unsqueeze(-2)  # (L, 1, D/2) or (B, L, 1, D/2): the same rotation for every head
    cos, sin = f.real.to(ct), f.imag.to(ct)
    if inverse:
        sin = -sin
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).to(x.dtype)  # (B, L, H, D)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_freqs: Tensor | None = None,
    k_freqs: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    softmax_scale: float | None = None,
    upcast: bool = True,
) -> Tensor:
    """Multi-head attention with fused RoPE, GQA and a key padding mask.

    q (B, Lq, Hq, D); k, v (B, Lk, Hkv, D) with Hq a multiple of Hkv (query head h reads KV head
    h // (Hq / Hkv)); q_freqs / k_freqs complex RoPE tables (Lq or Lk, D/2) or (B, L, D/2), applied to q / k;
    key_padding_mask (B, Lk) bool, True = attend; softmax_scale defaults to 1/sqrt(D). Rows whose keys
    are all masked give zeros (and zero gradients). Returns (B, Lq, Hq, D) in q's dtype.

    upcast=True (the contract): everything in fp32 (fp64 for fp64 inputs), one rounding at the end.
    upcast=False: the "low-precision reference" of the tests: RoPE output, scores and P @ V rounded to
    the input dtype as a plain framework implementation would (softmax itself in fp32).
    """
    B, Lq, Hq, D = q.shape
    Hkv = k.shape[2]
    scale = 1.0 / D**0.5 if softmax_scale is None else float(softmax_scale)
    ct = _compute_dtype(q) if upcast else q.dtype
    qc, kc, vc = q.to(ct), k.to(ct), v.to(ct)
    if q_freqs is not None:
        qc = apply_rope(qc, q_freqs)
    if k_freqs is not None:
        kc = apply_rope(kc, k_freqs)
    heads = torch.arange(Hq, device=q.device) // (Hq // Hkv)  # GQA: query head -> its KV head
    kc, vc = kc[:, :, heads], vc[:, :, heads]  # (B, Lk, Hq, D)
    s = torch.einsum("bqhd,bkhd->bhqk", qc, kc) * scale  # (B, Hq, Lq, Lk)
    s = s.to(_compute_dtype(q))  # softmax in fp32 (fp64) either way
    if key_padding_mask is not None:
        keep = key_padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, Lk)
        # a row with every key masked softmaxes over all keys (finite), then its probabilities are zeroed:
        # zeros out, zero gradients, never NaN
        dead = ~keep.any(-1, keepdim=True)
        s = s.masked_fill(~(keep | dead), float("-inf"))
        p = torch.softmax(s, dim=-1).masked_fill(~keep, 0.0)
        # masked keys contribute nothing, whatever they hold (a NaN there stays out of the output)
        vc = vc.masked_fill(~key_padding_mask.to(torch.bool)[:, :, None, None], 0.0)
    else:
        p = torch.softmax(s, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", p.to(ct), vc)
    return out.to(q.dtype)


def merge_cells(grid, factor, device=None) -> tuple[Tensor, tuple[int, ...]]:
    """(cell index of every token (prod(grid),), cells per axis) for a row-major grid tiled by `factor` cells
    (ceil-divided: edge cells are partial). grid / factor: (tokens,), (h, w) or (frames, h, w)."""
    axes = [torch.arange(g, device=device) // k for g, k in zip(grid, factor)]
    cgrid = tuple(-(-g // k) for g, k in zip(grid, factor))
    idx = torch.zeros((), dtype=torch.long, device=device)
    for a, n in zip(axes, cgrid):  # row-major over the cell grid
        idx = idx[..., None] * n + a
    return idx.reshape(-1), cgrid


def merge_tokens(x: Tensor, grid=None, factor=None, mask: Tensor | None = None, *, cells: Tensor | None = None,
                 n_cells: int | None = None) -> tuple[Tensor, Tensor]:
    """Average tokens of x (B, L, ...) over cells: of a row-major `grid`, or given per token by `cells`.

    grid (tokens,), (h, w) or (frames, h, w) with prod(grid) == L; factor the cell size per axis (edge cells hold
    fewer tokens). Or cells: int (L,) (one layout for the batch) or (B, L), the cell id of every token, with n_cells
    cells; a token whose id lies outside [0, n_cells) belongs to no cell (the wrappers reject such ids; this keeps the
    fallback memory-safe where they cannot check). mask (B, L) bool leaves tokens out of the averages. Returns
    (out (B, n_cells, ...) in x's dtype, count (B, n_cells) float32: the tokens averaged, 0 for a cell with none, whose
    output is 0).
    """
    B, L = x.shape[:2]
    ct = _compute_dtype(x)
    w = torch.ones(B, L, dtype=ct, device=x.device) if mask is None else mask.to(ct)
    if cells is None:
        cell, cgrid = merge_cells(grid, factor, x.device)
        n_cells = 1
        for c in cgrid:
            n_cells *= c
    else:
        cell = cells.long()
        inside = (cell >= 0) & (cell < n_cells)
        w = w * inside
        cell = torch.where(inside, cell, 0)
        if n_cells == 0:  # no cell to add to (and every id out of range)
            w, cell = w[:, :0], cell[..., :0]
            x = x[:, :0]
    xs = x.to(ct) * w.reshape(w.shape[0], w.shape[1], *([1] * (x.dim() - 2)))
    if cell.dim() == 1:  # one layout for the whole batch
        total = xs.new_zeros(B, n_cells, *x.shape[2:]).index_add(1, cell, xs)
        count = w.new_zeros(B, n_cells).index_add(1, cell, w)
    else:  # per-sample layouts: cells of row b are b * n_cells + id in the flattened batch
        flat = (cell + n_cells * torch.arange(B, device=x.device)[:, None]).reshape(-1)
        total = xs.new_zeros(B * n_cells, *x.shape[2:]).index_add(0, flat, xs.reshape(-1, *x.shape[2:]))
        total = total.reshape(B, n_cells, *x.shape[2:])
        count = w.new_zeros(B * n_cells).index_add(0, flat, w.reshape(-1)).reshape(B, n_cells)
    out = total / count.clamp(min=1).reshape(B, n_cells, *([1] * (x.dim() - 2)))
    return out.to(x.dtype), count.float()


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def solver_update(x: Tensor, ks, coeffs, h: float) -> Tensor:
    """x + h * sum_i coeffs[i] * ks[i] in x's dtype, exactly as the Python solvers computed it: zero coefficients
    skipped, each k cast to x's dtype, then torch.add(x, k, alpha=h * c) for the first term and out.add_(k,
    alpha=h * c) for the others, in order (h * c in double, cast to x's dtype by torch). No term: a copy of x."""
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0:
            continue
        k = k.to(x.dtype)
        if out is None:
            out = torch.add(x, k, alpha=h * c)
        else:
            out.add_(k, alpha=h * c)
    return x.clone() if out is None else out


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float, channels: int | None = None,
                renorm: float | None = None) -> Tensor:
    """Classifier-free guidance of lumina.sampling.guidance.cfg_combine (arguments already checked).

    bfloat16 / float16 inputs are computed (and returned) in float32. Plain: torch.lerp(uncond, cond, scale) (the
    explicit uncond + scale * (cond - uncond) when the dtypes differ). channels=k: channels [:k] of dim 1 get
    uncond + scale * (cond - uncond), the others keep cond. renorm=r: per sample (norms over all non-batch dims),
    if ||v|| > r * ||cond||, v *= r * ||cond|| / ||v||.
    """
    if cond.dtype in _LOW_PRECISION or uncond.dtype in _LOW_PRECISION:
        cond, uncond = cond.float(), uncond.float()
    if channels is None:
        v = torch.lerp(uncond, cond, scale) if cond.dtype == uncond.dtype else uncond + scale * (cond - uncond)
    else:
        k = min(channels, cond.shape[1])
        guided = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])
        v = torch.cat([guided, cond[:, k:]], dim=1)
    if renorm is not None:
        b = v.shape[0]
        norm_v = torch.linalg.vector_norm(v.reshape(b, -1), dim=1)
        max_norm = renorm * torch.linalg.vector_norm(cond.reshape(b, -1), dim=1)
        ratio = torch.where(norm_v > max_norm, max_norm / norm_v.clamp_min(torch.finfo(v.dtype).tiny),
                            torch.ones_like(norm_v))
        v = v * ratio.reshape((b,) + (1,) * (v.dim() - 1))
    return v
