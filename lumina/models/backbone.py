"""The Next-DiT token backbone: tokens -> tokens through the stack of sandwich blocks. No modality-specific layer.

    out = Backbone(config)(tokens, mask, rope, c, context, context_mask, softmax_scale=None, kv_merge=None)

tokens (B, L, dim); mask (B, L) bool (True = real token); rope: complex64 (B, L, head_dim / 2) or (L, head_dim / 2)
tables, or None (no RoPE: point sets); c: conditioning (B, adaln_dim) per sample or (B, L, adaln_dim) per token;
context (B, Lc, context_dim) + context_mask (B, Lc) for the cross-attention (None: self-attention only);
softmax_scale of the self-attention (None: 1/sqrt(head_dim)); kv_merge: one context-drop layer (or None) per block.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .blocks import TransformerBlock
from .config import NextDiTConfig

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """The stack of blocks (``layers.N``, official names). ``gradient_checkpointing``: recompute each block in the
    backward pass (training)."""

    def __init__(self, config: NextDiTConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.gradient_checkpointing = False

    def forward(self, tokens: Tensor, mask: Tensor, rope: Tensor | None, c: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None, softmax_scale: float | None = None,
                kv_merge: Sequence | None = None) -> Tensor:
        return self.forward_tokens(tokens, mask, rope, c, context, context_mask, softmax_scale, kv_merge)

    def forward_tokens(self, h: Tensor, mask: Tensor, rope: Tensor | None, c: Tensor, context: Tensor | None,
                       context_mask: Tensor | None, softmax_scale: float | None, kv_merge: Sequence | None) -> Tensor:
        """The token map (see the module doc); subclasses with their own forward call this."""
        self._check(h, mask, c, context, context_mask)
        merges = [None] * len(self.layers) if kv_merge is None else list(kv_merge)
        if len(merges) != len(self.layers):
            raise ValueError(f"`kv_merge` needs one entry per layer ({len(self.layers)}), got {len(merges)}")
        for block, merge in zip(self.layers, merges):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, mask, rope, context, context_mask, c, softmax_scale,
                                                      merge, use_reentrant=False)
            else:
                h = block(h, mask, rope, context, context_mask, c, softmax_scale, merge)
        return h

    def _check(self, h: Tensor, mask: Tensor, c: Tensor, context: Tensor | None, context_mask: Tensor | None) -> None:
        cfg = self.config
        if h.dim() != 3 or h.shape[-1] != cfg.dim:
            raise ValueError(f"`tokens` must be (B, L, dim={cfg.dim}), got {tuple(h.shape)}")
        B, L = h.shape[:2]
        if tuple(mask.shape) != (B, L):
            raise ValueError(f"`mask` must have shape ({B}, {L}), got {tuple(mask.shape)}")
        if tuple(c.shape) not in ((B, cfg.adaln_dim), (B, L, cfg.adaln_dim)):
            raise ValueError(f"the conditioning `c` must be (B, adaln_dim) = ({B}, {cfg.adaln_dim}) or per token "
                             f"({B}, {L}, {cfg.adaln_dim}), got {tuple(c.shape)}")
        if context is None:
            return
        if cfg.context_dim is None:
            raise ValueError("`context` given but the model has no cross-attention (config.context_dim is None)")
        if context.dim() != 3 or context.shape[0] != B or context.shape[-1] != cfg.context_dim:
            raise ValueError(f"`context` must be (batch={B}, Lc, context_dim={cfg.context_dim}), "
                             f"got {tuple(context.shape)}")
        if context_mask is None or tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise ValueError(f"`context_mask` must have shape {tuple(context.shape[:2])}, got "
                             f"{None if context_mask is None else tuple(context_mask.shape)}")
