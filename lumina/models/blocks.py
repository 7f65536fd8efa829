"""Next-DiT building blocks: RMSNorm, the time embedder, attention (self + optional cross), SwiGLU, the sandwich
block and the final layer.

Module and parameter names follow the official Alpha-VLLM checkpoints (``attention.wq``, ``adaLN_modulation.1``,
...), so an official state dict loads as is. The norms and RoPE run on lumina_kernels ops.

Conditioning ``c`` is ``(B, adaln_dim)`` (one vector per sample: the fused norm kernels) or ``(B, L, adaln_dim)``
(one per token, e.g. clean conditioning frames at t = 1 beside noisy ones).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lumina_kernels as lk

from .config import NextDiTConfig
from .fused import fused_linear

__all__ = ["RMSNorm", "TimestepEmbedder", "Attention", "FeedForward", "TransformerBlock", "FinalLayer",
           "modulated_norm", "gated_norm_residual"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return lk.rms_norm(x, self.weight, self.eps)


def modulated_norm(x: Tensor, weight: Tensor, scale: Tensor, eps: float) -> Tensor:
    """rms_norm(x) * (1 + scale); scale (B, D) per sample (one fused kernel) or (B, L, D) per token."""
    if scale.dim() == 2:
        return lk.modulated_rms_norm(x, weight, scale, eps)
    return lk.rms_norm(x, weight, eps) * (1 + scale.to(x.dtype))


def gated_norm_residual(x: Tensor, y: Tensor, weight: Tensor, gate: Tensor, eps: float) -> Tensor:
    """x + tanh(gate) * rms_norm(y); gate (B, D) per sample (one fused kernel) or (B, L, D) per token."""
    if gate.dim() == 2:
        return lk.gated_rms_norm_residual(x, y, weight, gate, eps)
    return x + gate.to(x.dtype).tanh() * lk.rms_norm(y, weight, eps)


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the flow time t in [0, 1] ([cos, sin], max period 10000), then an MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Self-attention over the tokens plus (with a context) a per-head tanh-gated cross-attention to it.

    Both share the RoPE'd queries; the context keys get no RoPE. GQA: query head i uses KV head i // (H / KV).
    """

    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        d, kvd = cfg.dim, cfg.kv_heads * cfg.head_dim
        norm = (lambda n: nn.LayerNorm(n, eps=1e-5)) if cfg.qk_norm else (lambda n: nn.Identity())
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, kvd, bias=False)
        self.wv = nn.Linear(d, kvd, bias=False)
        self.cross = cfg.context_dim is not None
        if self.cross:
            self.wk_y = nn.Linear(cfg.context_dim, kvd, bias=False)
            self.wv_y = nn.Linear(cfg.context_dim, kvd, bias=False)
            self.gate = nn.Parameter(torch.zeros(cfg.n_heads))
        self.wo = nn.Linear(d, d, bias=False)
        self.q_norm, self.k_norm = norm(d), norm(kvd)
        if self.cross:  # registered in the official order: seeded initialisations draw the released code's weights
            self.ky_norm = norm(kvd)

    def forward(self, x: Tensor, x_mask: Tensor, freqs_cis: Tensor | None, y: Tensor | None, y_mask: Tensor | None,
                softmax_scale: float | None, merge=None) -> Tensor:
        B, L, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv, self.head_dim
        q, k, v = fused_linear(self, "qkv", x, (self.wq, self.wk, self.wv))  # one GEMM (see fused.py)
        q = self.q_norm(q).view(B, L, H, hd)  # (B, L, dim) -> (B, L, H, hd)
        k = self.k_norm(k).view(B, L, KV, hd)  # (B, L, KV * hd) -> (B, L, KV, hd)
        v = v.view(B, L, KV, hd)
        if merge is None:
            # self-attention: RoPE on q and k inside the op, GQA without K/V copies, padded tokens masked
            out = lk.attention(q, k, v, q_freqs=freqs_cis, k_freqs=freqs_cis, key_padding_mask=x_mask,
                               softmax_scale=softmax_scale)  # (B, L, H, hd)
        else:
            out = merge.attend(q, k, v, freqs_cis, x_mask, softmax_scale)  # context drop: merged keys/values
        if self.cross and y is not None:
            Ly = y.shape[1]
            yk, yv = fused_linear(self, "kv_y", y, (self.wk_y, self.wv_y))  # one GEMM
            yk = self.ky_norm(yk).view(B, Ly, KV, hd)  # (B, Ly, KV * hd) -> (B, Ly, KV, hd)
            yv = yv.view(B, Ly, KV, hd)
            # cross-attention to the context: the same RoPE'd queries, no RoPE on its keys, default scale
            out_y = lk.attention(q, yk, yv, q_freqs=freqs_cis, key_padding_mask=y_mask)  # (B, L, H, hd)
            out = out + out_y * self.gate.tanh().view(1, 1, H, 1).to(out_y.dtype)
        return self.wo(out.reshape(B, L, H * hd))  # (B, L, H, hd) -> (B, L, dim)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 and w3 as one GEMM (see fused.py)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h1, h3 = fused_linear(self, "w13", x, (self.w1, self.w3))
        if not torch.is_grad_enabled() and h1._base is not None and h1._base is h3._base:
            # inference, halves of one fresh GEMM output: silu and the product in place (no new (B, L, hidden)
            # buffers; w2 reads the strided half as it is)
            return self.w2(F.silu(h1, inplace=True).mul_(h3))
        return self.w2(F.silu(h1) * h3)


class TransformerBlock(nn.Module):
    """Sandwich-norm block: RMSNorm before and after attention and FFN, adaLN scale, tanh gates."""

    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        eps = cfg.norm_eps
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden)
        self.attention_norm1, self.attention_norm2 = RMSNorm(cfg.dim, eps), RMSNorm(cfg.dim, eps)
        self.ffn_norm1, self.ffn_norm2 = RMSNorm(cfg.dim, eps), RMSNorm(cfg.dim, eps)
        if cfg.context_dim is not None:
            self.attention_y_norm = RMSNorm(cfg.context_dim, eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, 4 * cfg.dim))
        self.eps = eps

    def forward(self, x: Tensor, x_mask: Tensor, freqs_cis: Tensor | None, y: Tensor | None, y_mask: Tensor | None,
                c: Tensor, softmax_scale: float | None, merge=None) -> Tensor:
        # c (B, adaln) -> four (B, dim) modulations; c (B, L, adaln) -> four (B, L, dim)
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=-1)
        h = modulated_norm(x, self.attention_norm1.weight, scale_msa, self.eps)
        y = self.attention_y_norm(y) if y is not None and self.attention.cross else None
        attn = self.attention(h, x_mask, freqs_cis, y, y_mask, softmax_scale, merge)
        x = gated_norm_residual(x, attn, self.attention_norm2.weight, gate_msa, self.eps)
        h = self.feed_forward(modulated_norm(x, self.ffn_norm1.weight, scale_mlp, self.eps))
        return gated_norm_residual(x, h, self.ffn_norm2.weight, gate_mlp, self.eps)


class FinalLayer(nn.Module):
    """LayerNorm (no affine) * (1 + adaLN scale), then a linear map to `out_features` per token."""

    def __init__(self, cfg: NextDiTConfig, out_features: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(cfg.dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, cfg.dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        scale = self.adaLN_modulation(c)  # (B, dim) or per token (B, L, dim)
        scale = scale[:, None, :] if scale.dim() == 2 else scale
        return self.linear(self.norm_final(x) * (1 + scale))  # (B, L, out_features)
