"""Next-DiT (Lumina-Next): config presets, blocks and the model.

Module and parameter names follow the official Alpha-VLLM checkpoints (see checkpoints.py for the
diffusers names), so an official state dict loads as is. The norms and RoPE run on lumina_kernels ops.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

import lumina_kernels as lk

from .context_drop import ContextDropLayer
from .rope import RopeScaling, rope_2d


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NextDiTConfig:
    patch_size: int = 2
    in_channels: int = 4
    dim: int = 2304
    n_layers: int = 24
    n_heads: int = 32
    n_kv_heads: int | None = 8
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    learn_sigma: bool = True
    qk_norm: bool = True
    cap_feat_dim: int = 2048
    rope_theta: float = 10000.0
    sample_size: int = 128  # training latent size (1024 px / 8); sets the RoPE scaling train size
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        kv = self.kv_heads
        if self.dim % self.n_heads:
            raise ValueError(f"`dim` ({self.dim}) must be divisible by `n_heads` ({self.n_heads})")
        if self.n_heads % kv:
            raise ValueError(f"`n_heads` ({self.n_heads}) must be divisible by `n_kv_heads` ({kv})")
        if self.head_dim % 4:
            raise ValueError(f"the head dim dim/n_heads = {self.head_dim} must be divisible by 4 for 2D RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, 1024)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, NextDiTConfig] = {
    # the released text-to-image model (Lumina-Next-T2I / -SFT)
    "NextDiT_2B_GQA_patch2": NextDiTConfig(dim=2304, n_layers=24, n_heads=32, n_kv_heads=8, name="NextDiT_2B_GQA_patch2"),
    "NextDiT_2B_patch2": NextDiTConfig(dim=2304, n_layers=24, n_heads=32, n_kv_heads=None, name="NextDiT_2B_patch2"),
    # small configs for tests, demos and the bundled model
    "NextDiT_small": NextDiTConfig(dim=512, n_layers=6, n_heads=8, n_kv_heads=4, cap_feat_dim=384, multiple_of=64,
                                   sample_size=32, name="NextDiT_small"),
    "NextDiT_tiny": NextDiTConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, cap_feat_dim=32, multiple_of=16,
                                  sample_size=16, name="NextDiT_tiny"),
}


def config_from_preset(name: str, **overrides) -> NextDiTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown NextDiT preset {name!r}; known presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return lk.rms_norm(x, self.weight, self.eps)


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
    """Self-attention over image tokens plus a per-head tanh-gated cross-attention to the caption.

    Both share the RoPE'd queries; the caption keys get no RoPE. GQA: query head i uses KV head i // (H / KV).
    """

    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        d, kvd = cfg.dim, cfg.kv_heads * cfg.head_dim
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, kvd, bias=False)
        self.wv = nn.Linear(d, kvd, bias=False)
        self.wk_y = nn.Linear(cfg.cap_feat_dim, kvd, bias=False)
        self.wv_y = nn.Linear(cfg.cap_feat_dim, kvd, bias=False)
        self.gate = nn.Parameter(torch.zeros(cfg.n_heads))
        self.wo = nn.Linear(d, d, bias=False)
        norm = (lambda n: nn.LayerNorm(n, eps=1e-5)) if cfg.qk_norm else (lambda n: nn.Identity())
        self.q_norm, self.k_norm, self.ky_norm = norm(d), norm(kvd), norm(kvd)

    def forward(self, x: Tensor, x_mask: Tensor, freqs_cis: Tensor, y: Tensor, y_mask: Tensor,
                softmax_scale: float | None, merge: ContextDropLayer | None = None) -> Tensor:
        B, L, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv, self.head_dim
        q = self.q_norm(self.wq(x)).view(B, L, H, hd)
        k = self.k_norm(self.wk(x)).view(B, L, KV, hd)
        v = self.wv(x).view(B, L, KV, hd)
        if merge is None:
            # self-attention: RoPE on q and k inside the op, GQA without K/V copies, padded image tokens masked
            out = lk.attention(q, k, v, q_freqs=freqs_cis, k_freqs=freqs_cis, key_padding_mask=x_mask,
                               softmax_scale=softmax_scale)  # (B, L, H, hd)
        else:
            out = merge.attend(q, k, v, freqs_cis, x_mask, softmax_scale)  # context drop: merged keys/values
        Ly = y.shape[1]
        yk = self.ky_norm(self.wk_y(y)).view(B, Ly, KV, hd)
        yv = self.wv_y(y).view(B, Ly, KV, hd)
        # cross-attention to the caption: the same RoPE'd queries, no RoPE on the text keys, default scale
        out_y = lk.attention(q, yk, yv, q_freqs=freqs_cis, key_padding_mask=y_mask)  # (B, L, H, hd)
        out = out + out_y * self.gate.tanh().view(1, 1, H, 1).to(out_y.dtype)
        return self.wo(out.reshape(B, L, H * hd))  # (B, L, dim)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Sandwich-norm block: RMSNorm before and after attention and FFN, adaLN scale, tanh gates."""

    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        eps = cfg.norm_eps
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden)
        self.attention_norm1, self.attention_norm2 = RMSNorm(cfg.dim, eps), RMSNorm(cfg.dim, eps)
        self.ffn_norm1, self.ffn_norm2 = RMSNorm(cfg.dim, eps), RMSNorm(cfg.dim, eps)
        self.attention_y_norm = RMSNorm(cfg.cap_feat_dim, eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, 4 * cfg.dim))
        self.eps = eps

    def forward(self, x: Tensor, x_mask: Tensor, freqs_cis: Tensor, y: Tensor, y_mask: Tensor, c: Tensor,
                softmax_scale: float | None, merge: ContextDropLayer | None = None) -> Tensor:
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)  # each (B, dim)
        h = lk.modulated_rms_norm(x, self.attention_norm1.weight, scale_msa, self.eps)
        attn = self.attention(h, x_mask, freqs_cis, self.attention_y_norm(y), y_mask, softmax_scale, merge)
        x = lk.gated_rms_norm_residual(x, attn, self.attention_norm2.weight, gate_msa, self.eps)
        h = self.feed_forward(lk.modulated_rms_norm(x, self.ffn_norm1.weight, scale_mlp, self.eps))
        return lk.gated_rms_norm_residual(x, h, self.ffn_norm2.weight, gate_mlp, self.eps)


class FinalLayer(nn.Module):
    def __init__(self, cfg: NextDiTConfig):
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(cfg.dim, cfg.patch_size ** 2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, cfg.dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        scale = self.adaLN_modulation(c)  # (B, dim)
        return self.linear(self.norm_final(x) * (1 + scale[:, None, :]))


@torch.compiler.assume_constant_result
def _rope_table(ht: int, wt: int, head_dim: int, theta: float, scaling: RopeScaling | None, t: float | None,
                device: torch.device) -> Tensor:
    """The (cached) 2D RoPE table, a constant for torch.compile (its arguments are host values)."""
    return rope_2d(ht, wt, head_dim, theta, scaling, t, device=device)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
class NextDiT(nn.Module):
    """Next-DiT. `model(x, t, cap_feats, cap_mask)` returns the velocity with x's channels.

    x: (B, C, H, W) latents, or a list of (C, H_i, W_i) latents of different sizes (padded with
    `pad_token` and masked); t: (B,) flow time in [0, 1] (0 = noise, 1 = data); cap_feats:
    (B, L_cap, cap_feat_dim); cap_mask: (B, L_cap), 1 for valid caption tokens.
    """

    def __init__(self, config: NextDiTConfig):
        super().__init__()
        self.config = cfg = config
        self.x_embedder = nn.Linear(cfg.patch_size ** 2 * cfg.in_channels, cfg.dim)
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim)
        self.cap_embedder = nn.Sequential(nn.LayerNorm(cfg.cap_feat_dim), nn.Linear(cfg.cap_feat_dim, cfg.adaln_dim))
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.final_layer = FinalLayer(cfg)
        self.pad_token = nn.Parameter(torch.empty(cfg.dim))
        self.gradient_checkpointing = False  # recompute each block in the backward pass (training)
        self.initialize_weights()

    # one initialiser for every weight
    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.cap_embedder[1].weight)  # zero-init: captions start as no-ops
        for block in self.layers:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
            nn.init.zeros_(block.attention.gate)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        nn.init.normal_(self.pad_token, std=0.02)

    # -- patchify / unpatchify -------------------------------------------------------------------
    def patchify(self, xs: list[Tensor], rope_scaling: RopeScaling | None, t: float | None):
        """List of (C, H, W) -> tokens (B, L_max, dim), key mask (B, L_max), RoPE (B, L_max, hd/2), sizes."""
        cfg, p = self.config, self.config.patch_size
        tokens, tables, sizes = [], [], []
        for i, x in enumerate(xs):
            if x.dim() != 3 or x.shape[0] != cfg.in_channels:
                raise ValueError(f"`x[{i}]` must be ({cfg.in_channels}, H, W), got shape {tuple(x.shape)}")
            C, H, W = x.shape
            if H % p or W % p:
                raise ValueError(f"`x[{i}]` height and width must be multiples of the patch size {p}, got {H}x{W}")
            ht, wt = H // p, W // p
            # (C, ht, p, wt, p) -> (ht, wt, C, p, p) -> (ht*wt, C*p*p): features in (C, pH, pW) order
            tokens.append(x.view(C, ht, p, wt, p).permute(1, 3, 0, 2, 4).reshape(ht * wt, C * p * p))
            tables.append(_rope_table(ht, wt, cfg.head_dim, cfg.rope_theta, rope_scaling, t, x.device))
            sizes.append((H, W))
        lens = [tk.shape[0] for tk in tokens]
        L = max(lens)
        emb = self.x_embedder(torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True))  # (B, L, dim)
        pos = torch.arange(L, device=emb.device)
        mask = torch.stack([pos < n for n in lens])  # (B, L); no host-to-device copy (CUDA-graph capture)
        emb = torch.where(mask[..., None], emb, self.pad_token.to(emb.dtype))
        # padded tokens take the RoPE of the sample's last position
        freqs = torch.stack([torch.cat([f, f[-1:].expand(L - f.shape[0], -1)]) for f in tables])
        return emb, mask, freqs, sizes

    def unpatchify(self, out: Tensor, sizes: list[tuple[int, int]]) -> list[Tensor]:
        p, C = self.config.patch_size, self.config.out_channels
        res = []
        for i, (H, W) in enumerate(sizes):
            ht, wt = H // p, W // p
            o = out[i, : ht * wt].view(ht, wt, p, p, C)  # features in (pH, pW, C) order
            res.append(o.permute(4, 0, 2, 1, 3).reshape(C, H, W)[: self.config.in_channels])  # drop the sigma half
        return res

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor | list[Tensor], t: Tensor, cap_feats: Tensor, cap_mask: Tensor, *,
                base_seq_len: int | None = None, rope_scaling: RopeScaling | None = None,
                context_drop: Sequence[int] | None = None, context_drop_method: str = "pool",
                t_value: float | None = None) -> Tensor | list[Tensor]:
        """Velocity at (x, t). base_seq_len turns on proportional attention (scale sqrt(log_base(N) / head_dim),
        N the number of image tokens); rope_scaling picks the RoPE extrapolation (see models/rope.py).

        context_drop: one merge factor per layer (1 = full attention; k >= 2 = the image self-attention of that
        layer attends to keys/values merged over k x k cells, see models/context_drop.py), for a batch whose
        images share one size; None (default) is the plain model. context_drop_method: "pool" or "tome".
        t_value: the host value of t (all samples share it) for the time-aware RoPE scaling; given, the forward
        never reads t back from the device (CUDA-graph capture), otherwise it reads t[0]."""
        cfg = self.config
        is_list = isinstance(x, (list, tuple))
        xs = list(x) if is_list else list(x.unbind(0)) if isinstance(x, Tensor) and x.dim() == 4 else None
        if xs is None:
            raise ValueError(f"`x` must be a (B, C, H, W) tensor or a list of (C, H, W) tensors, got {type(x).__name__}"
                             + (f" of shape {tuple(x.shape)}" if isinstance(x, Tensor) else ""))
        B = len(xs)
        t = torch.as_tensor(t, device=xs[0].device)
        t = t.expand(B) if t.dim() == 0 else t
        if t.shape != (B,):
            raise ValueError(f"`t` must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        if cap_feats.dim() != 3 or cap_feats.shape[0] != B or cap_feats.shape[-1] != cfg.cap_feat_dim:
            raise ValueError(f"`cap_feats` must be (batch={B}, L, cap_feat_dim={cfg.cap_feat_dim}), "
                             f"got {tuple(cap_feats.shape)}")
        if cap_mask.shape != cap_feats.shape[:2]:
            raise ValueError(f"`cap_mask` must have shape {tuple(cap_feats.shape[:2])}, got {tuple(cap_mask.shape)}")
        t_rope = None
        if rope_scaling is not None and rope_scaling.method != "none":
            t_rope = float(t[0]) if t_value is None else float(t_value)
        h, x_mask, freqs, sizes = self.patchify(xs, rope_scaling, t_rope)
        merges = self._context_drop_layers(context_drop, context_drop_method, xs)
        dtype = self.x_embedder.weight.dtype
        cap_feats = cap_feats.to(dtype)
        cap_mask = cap_mask.bool()
        # conditioning: t embedding + embedding of the mean valid caption feature
        m = cap_mask.to(torch.float32)[..., None]
        pooled = ((cap_feats.float() * m).sum(1) / m.sum(1)).to(dtype)  # (B, cap_feat_dim)
        c = self.t_embedder(t) + self.cap_embedder(pooled)  # (B, adaln_dim)
        scale = None
        if base_seq_len is not None:
            if base_seq_len < 2:
                raise ValueError(f"`base_seq_len` must be >= 2, got {base_seq_len}")
            scale = math.sqrt(math.log(h.shape[1], base_seq_len) / cfg.head_dim)
        for block, merge in zip(self.layers, merges):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, x_mask, freqs, cap_feats, cap_mask, c, scale, merge,
                                                      use_reentrant=False)
            else:
                h = block(h, x_mask, freqs, cap_feats, cap_mask, c, scale, merge)
        out = self.unpatchify(self.final_layer(h, c), sizes)
        return out if is_list else torch.stack(out)

    def _context_drop_layers(self, factors, method: str, xs: list[Tensor]) -> list[ContextDropLayer | None]:
        """One ContextDropLayer (or None: full attention) per block from the per-layer factors."""
        n = len(self.layers)
        if factors is None:
            return [None] * n
        factors = list(factors)
        if len(factors) != n or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in factors):
            raise ValueError(f"`context_drop` must hold one int factor >= 1 per layer ({n}), got {factors!r}")
        p = self.config.patch_size
        grids = {(x.shape[-2] // p, x.shape[-1] // p) for x in xs}
        if len(grids) != 1 and any(f > 1 for f in factors):
            raise ValueError(f"`context_drop` needs images of one size in the batch, got patch grids {sorted(grids)}")
        grid = grids.pop()
        return [ContextDropLayer(f, grid, method) if f > 1 else None for f in factors]

    # -- checkpoints -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, ema: bool = True, dtype: torch.dtype | None = None, device=None) -> "NextDiT":
        from .checkpoints import load_pretrained

        return load_pretrained(cls, path, ema=ema, dtype=dtype, device=device)

    def save_pretrained(self, path, format: str = "official", ema_state: dict | None = None) -> None:
        from .checkpoints import save_pretrained

        save_pretrained(self, path, format=format, ema_state=ema_state)
