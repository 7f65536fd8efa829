"""lumina_kernels: the compiled op library of lumina.

    import lumina_kernels as lk
    y = lk.rms_norm(x, weight)                               # (..., D)
    y = lk.modulated_rms_norm(x, weight, scale)              # x (B, L, D), scale (B, D)
    x = lk.gated_rms_norm_residual(x, attn, weight, gate)    # residual + tanh(gate) * rms_norm(attn)
    q = lk.apply_rope(q, freqs_cis)                          # q (B, L, H, D), freqs_cis complex64 (L, D/2)
    o = lk.attention(q, k, v, q_freqs=f, k_freqs=f)          # q (B, L, Hq, D), k/v (B, L, Hkv, D): RoPE + GQA fused
    k2, n = lk.merge_tokens(k, (h, w), 2, mask)              # context drop: average 2x2 cells of the token grid
    k2, n = lk.merge_tokens(k, cells=ids, n_cells=c)         # ... or any cells: ids (L,) or (B, L) in [0, c)
    x = lk.solver_update(x, [k1, k2], [0.5, 0.5], h)         # x + h * (k1 + k2) / 2 in x's dtype, one pass
    v = lk.cfg_combine(out[:B], out[B:], 4.0)                # classifier-free guidance of a doubled-batch output
    print(lk.explain("fused_rms_norm", x, weight))           # which backend runs, and why not the others

Every op runs on the compiled CUDA kernel, the compiled C++ CPU kernel or its PyTorch reference
(`lumina_kernels.reference`), whichever is the first to support the inputs.
"""
from . import reference
from ._ext import BUILD_INFO, HAS_CPU_KERNELS, HAS_CUDA_KERNELS, LOAD_ERROR
from .dispatch import explain
from .ops import (apply_rope, attention, cfg_combine, gated_rms_norm_residual, merge_tokens, modulated_rms_norm,
                  rms_norm, solver_update)

__all__ = [
    "rms_norm",
    "modulated_rms_norm",
    "gated_rms_norm_residual",
    "apply_rope",
    "attention",
    "merge_tokens",
    "solver_update",
    "cfg_combine",
    "explain",
    "reference",
    "BUILD_INFO",
    "HAS_CPU_KERNELS",
    "HAS_CUDA_KERNELS",
    "LOAD_ERROR",
]
