"""Next-DiT (Lumina-Next): a modality adapter + the token backbone, under the official parameter names.

``NextDiT(config)`` is the one model class of every modality: ``config.modality`` names the adapter (registered by
:mod:`lumina.modalities`) that turns samples into tokens and back and owns the input embedder (``x_embedder``) and
output head (``final_layer``). With the default config (modality "image", a caption context) it is the released
text-to-image model, and an official or diffusers state dict loads as is (see checkpoints.py).

Conditioning: c = t_embedder(t) + cap_embedder(mean of the valid context features) (no context term without
cross-attention); tokens declared clean (``clean_prefix``) get the t = 1 conditioning instead.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from . import checkpoints, modality
from .backbone import Backbone
from .blocks import RMSNorm, TimestepEmbedder
from .config import PRESETS, NextDiTConfig, config_from_preset
from .context_drop import ContextDropLayer
from .rope import RopeScaling, rope_grid, rope_nd

__all__ = ["NextDiT", "NextDiTConfig", "PRESETS", "config_from_preset"]


@torch.compiler.assume_constant_result
def _rope_table(grid: tuple[int, ...], axis_dims: tuple[int, ...], theta: float, scaling: tuple | None,
                t: float | None, scaled_axes: tuple[bool, ...], interleave: bool, device: torch.device) -> Tensor:
    """The (cached) RoPE table of a token grid, a constant for torch.compile (its arguments are host values).
    `scaling` is RopeScaling's fields as a tuple: torch 2.11's dynamo cannot pass a frozen dataclass to a constant."""
    return rope_grid(grid, axis_dims, theta, None if scaling is None else RopeScaling(*scaling), t, scaled_axes,
                     interleave, device=device)


class NextDiT(Backbone):
    """Next-DiT. ``model(x, t, cap_feats, cap_mask)`` returns the velocity with x's layout.

    x: a batched tensor of samples (image: (B, C, H, W)) or a list of samples of different sizes (padded with
    `pad_token` and masked); t: (B,) flow time in [0, 1] (0 = noise, 1 = data); cap_feats: (B, L_cap,
    context_dim) context features, cap_mask: (B, L_cap), 1 for valid tokens (both None when config.context_dim is
    None).
    """

    def __init__(self, config: NextDiTConfig):
        adapter = modality.get(config.modality)(config)  # ValueError for an unknown modality or bad RoPE split
        super().__init__(config)  # the blocks: layers.N
        # the adapter's learnable parts become the model's, under their official names (x_embedder, final_layer);
        # the adapter object itself is kept unregistered, for its tensor bookkeeping only
        self.__dict__["adapter"] = adapter
        for name, child in adapter.named_children():
            self.add_module(name, child)
        cfg = config
        self.t_embedder = TimestepEmbedder(cfg.adaln_dim)
        if cfg.context_dim is not None:
            self.cap_embedder = nn.Sequential(nn.LayerNorm(cfg.context_dim), nn.Linear(cfg.context_dim, cfg.adaln_dim))
        self.pad_token = nn.Parameter(torch.empty(cfg.dim))
        # the official module order, so that a seeded initialisation draws the same weights as the released code
        first = [n for n in ("x_embedder", "t_embedder", "cap_embedder") if n in self._modules]
        self._modules = {n: self._modules[n] for n in first + [n for n in self._modules if n not in first]}
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
        if self.config.context_dim is not None:
            nn.init.zeros_(self.cap_embedder[1].weight)  # zero-init: captions start as no-ops
        for block in self.layers:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
            if block.attention.cross:
                nn.init.zeros_(block.attention.gate)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        nn.init.normal_(self.pad_token, std=0.02)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x, t: Tensor, cap_feats: Tensor | None = None, cap_mask: Tensor | None = None, *,
                base_seq_len: int | None = None, rope_scaling: RopeScaling | None = None,
                context_drop: Sequence[int] | None = None, context_drop_method: str = "pool",
                t_value: float | None = None, clean_prefix=None):
        """Velocity at (x, t). base_seq_len turns on proportional attention (scale sqrt(log_base(N) / head_dim),
        N the number of tokens); rope_scaling picks the RoPE extrapolation (see models/rope.py), applied to the
        adapter's scaled axes.

        context_drop: one merge factor per layer (1 = full attention; k >= 2 = the self-attention of that layer
        attends to keys/values merged over cells of k along the adapter's pooled axes, see models/context_drop.py);
        None (default) is the plain model. context_drop_method: "pool" or "tome".
        t_value: the host value of t (all samples share it) for the time-aware RoPE scaling; given, the forward
        never reads t back from the device (CUDA-graph capture), otherwise it reads t[0].
        clean_prefix: per sample, how many leading units along position axis 0 (frames of a volume, steps of a
        sequence) are clean conditioning: their tokens get the t = 1 conditioning (per-token adaLN)."""
        cfg, adapter = self.config, self.adapter
        samples, batched = adapter.split(x)
        B = len(samples)
        t = torch.as_tensor(t, device=samples[0].device)
        t = t.expand(B) if t.dim() == 0 else t
        if t.shape != (B,):
            raise ValueError(f"`t` must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        cap_feats, cap_mask = self._check_context(cap_feats, cap_mask, B)
        t_rope = None
        if rope_scaling is not None and rope_scaling.method != "none":
            t_rope = float(t[0]) if t_value is None else float(t_value)
        batch = adapter.tokenize(samples)
        h = self.x_embedder(batch.features)  # (B, L, dim)
        h = torch.where(batch.mask[..., None], h, self.pad_token.to(h.dtype))
        freqs = self._rope(batch, rope_scaling, t_rope)
        merges = self._context_drop_layers(context_drop, context_drop_method, batch)
        c = self._conditioning(t, cap_feats, cap_mask)  # (B, adaln_dim)
        if clean_prefix is not None:
            c = self._per_token_conditioning(c, batch, clean_prefix, cap_feats, cap_mask)  # (B, L, adaln_dim)
        scale = None
        if base_seq_len is not None:
            if base_seq_len < 2:
                raise ValueError(f"`base_seq_len` must be >= 2, got {base_seq_len}")
            scale = math.sqrt(math.log(h.shape[1], base_seq_len) / cfg.head_dim)
        h = self.forward_tokens(h, batch.mask, freqs, c, cap_feats, cap_mask, scale, merges)
        out = adapter.detokenize(self.final_layer(h, c), batch.layout)
        return torch.stack(out) if batched else out

    def _check_context(self, cap_feats, cap_mask, B: int):
        cfg = self.config
        if cfg.context_dim is None:
            if cap_feats is not None or cap_mask is not None:
                raise ValueError("`cap_feats` given but the model has no cross-attention (config.context_dim is None)")
            return None, None
        if cap_feats is None or cap_mask is None:
            raise ValueError(f"`cap_feats` and `cap_mask` are required: the model cross-attends to "
                             f"{cfg.context_dim}-d context features")
        if cap_feats.dim() != 3 or cap_feats.shape[0] != B or cap_feats.shape[-1] != cfg.context_dim:
            raise ValueError(f"`cap_feats` must be (batch={B}, L, context_dim={cfg.context_dim}), "
                             f"got {tuple(cap_feats.shape)}")
        if cap_mask.shape != cap_feats.shape[:2]:
            raise ValueError(f"`cap_mask` must have shape {tuple(cap_feats.shape[:2])}, got {tuple(cap_mask.shape)}")
        return cap_feats.to(self.x_embedder.weight.dtype), cap_mask.bool()

    def _conditioning(self, t: Tensor, cap_feats: Tensor | None, cap_mask: Tensor | None) -> Tensor:
        """c = t embedding (+ embedding of the mean valid context feature): (B, adaln_dim)."""
        c = self.t_embedder(t)
        if cap_feats is None:
            return c
        m = cap_mask.to(torch.float32)[..., None]  # (B, Lc, 1)
        pooled = ((cap_feats.float() * m).sum(1) / m.sum(1)).to(cap_feats.dtype)  # (B, context_dim)
        return c + self.cap_embedder(pooled)

    def _per_token_conditioning(self, c: Tensor, batch, clean_prefix, cap_feats, cap_mask) -> Tensor:
        """(B, adaln) -> (B, L, adaln): tokens at axis-0 positions below clean_prefix[b] get the t = 1 vector."""
        B, L = batch.mask.shape
        if batch.positions is None:
            raise ValueError("`clean_prefix` needs token positions; this modality gives none")
        n = torch.as_tensor(clean_prefix, device=c.device)
        n = n.expand(B) if n.dim() == 0 else n
        if n.shape != (B,):
            raise ValueError(f"`clean_prefix` must be an int or one per sample ({B}), got shape {tuple(n.shape)}")
        c_clean = self._conditioning(torch.ones(B, device=c.device), cap_feats, cap_mask)  # (B, adaln)
        clean = batch.positions[..., 0] < n[:, None]  # (B, L)
        return torch.where(clean[..., None], c_clean[:, None, :], c[:, None, :])  # (B, L, adaln)

    def _rope(self, batch, scaling: RopeScaling | None, t: float | None) -> Tensor | None:
        """RoPE tables (B, L, head_dim / 2) from the batch's positions (cached per grid), or None (no positions)."""
        if batch.positions is None:
            return None
        a, cfg = self.adapter, self.config
        if batch.grids is None:
            return rope_nd(batch.positions, a.rope_axis_dims, cfg.rope_theta, scaling, t, a.scaled_axes,
                           a.rope_interleave)
        L = batch.mask.shape[1]
        key = None if scaling is None else dataclasses.astuple(scaling)
        tables = [_rope_table(g, a.rope_axis_dims, cfg.rope_theta, key, t, a.scaled_axes, a.rope_interleave,
                              batch.features.device) for g in batch.grids]
        # padded tokens take the RoPE of the sample's last position
        return torch.stack([torch.cat([f, f[-1:].expand(L - f.shape[0], -1)]) for f in tables])

    def _context_drop_layers(self, factors, method: str, batch) -> list[ContextDropLayer | None]:
        """One ContextDropLayer (or None: full attention) per block from the per-layer factors."""
        n = len(self.layers)
        if factors is None:
            return [None] * n
        factors = list(factors)
        if len(factors) != n or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in factors):
            raise ValueError(f"`context_drop` must hold one int factor >= 1 per layer ({n}), got {factors!r}")
        plans = {f: self.adapter.merge_plan(batch, f) for f in set(factors) if f > 1}
        if method == "tome" and any(p.cells is not None for p in plans.values()):
            raise ValueError(f"`context_drop` with method 'tome' needs {self.adapter.name}s of one size in the batch "
                             f"(a shared token grid); got token grids {sorted(set(batch.grids))}; 'pool' merges any")
        return [ContextDropLayer(f, plans[f], method) if f > 1 else None for f in factors]

    # -- checkpoints -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, ema: bool = True, dtype: torch.dtype | None = None, device=None) -> "NextDiT":
        """Load a native, official or diffusers checkpoint directory (EMA weights by default)."""
        return checkpoints.load_pretrained(cls, path, ema=ema, dtype=dtype, device=device)

    def save_pretrained(self, path, format: str = "native", ema_state: dict | None = None) -> None:
        """Write a checkpoint directory: "native" (every modality; the default), "official" or "diffusers"
        (text-to-image import/export formats)."""
        checkpoints.save_pretrained(self, path, format=format, ema_state=ema_state)
