"""Context drop inside a self-attention layer: attention of full-resolution queries to merged keys and values.

Two merge methods (the schedule that picks layers and times is :class:`lumina.sampling.ContextDrop`):

``pool`` (default): keys and values are average-pooled over cells by ``lumina_kernels.merge_tokens`` (CPU and
CUDA kernels), padding-masked tokens left out of the averages, cells left empty by the mask masked out of the
attention. The modality adapter's merge plan says which cells: ``k`` along each pooled axis of the token grid
(``k x k`` patches of an image, ``k`` steps of a sequence, ``k x k`` patches within each frame of a volume), and
for a batch of samples of different sizes an explicit cell index per token.

``tome``: ToMe-style similarity merging (Bolya et al. 2023) restricted to keys and values: every cell's first token
is a destination, every other token joins the destination whose RoPE'd key is most similar (cosine, all KV heads),
sizes are tracked, and the attention adds ``log(size)`` to each merged key's logit (ToMe's proportional attention,
so a merged key carries the softmax mass of the tokens it stands for). It keeps as many keys as ``pool`` does. No
unmerge step is needed: queries, and hence the token stream, are never merged.

RoPE: it is applied to the keys *before* merging, and the merged keys then get no RoPE. Rotation is linear, so the
logit of a query against a pooled key is exactly the mean of its logits against the cell's rotated keys: the merged
key is the cell's average in the attention's own coordinates. The alternative, pooling unrotated keys and rotating
them by the cell centre's position, would average keys whose high-frequency RoPE pairs point in unrelated
directions before rotation and place them at half-integer positions the model never saw.

Softmax weighting of pooled keys: a full ``k x k`` cell stands for ``k^2`` tokens, so its exact softmax weight would
carry ``+log(k^2)``; that constant is the same for every full cell and cancels in the softmax. Only partial edge
cells (a factor that does not divide the grid) are weighted as one key each; this is left as is (the kernel takes no
per-key bias).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import lumina_kernels as lk

from .modality import MergePlan

__all__ = ["ContextDropLayer", "tome_merge"]


class ContextDropLayer:
    """How one layer merges its keys/values: ``factor`` with ``method`` over a merge plan.

    plan: a :class:`lumina.models.modality.MergePlan` from the modality adapter (a shared token grid and the
    factor per axis, or an explicit cell per token), or a bare grid: (h, w) pools both axes, (frames, h, w) the
    spatial axes only (frames of a video are never averaged together).
    """

    def __init__(self, factor: int, plan, method: str = "pool"):
        if method not in ("pool", "tome"):
            raise ValueError(f"context drop `method` must be 'pool' or 'tome', got {method!r}")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"context drop `factor` must be an int >= 2, got {factor!r}")
        if not isinstance(plan, MergePlan):
            grid = tuple(int(g) for g in plan)
            if len(grid) not in (2, 3):
                raise ValueError(f"context drop needs a (h, w) or (frames, h, w) grid, got {plan!r}")
            plan = MergePlan(grid=grid, factors=(1,) * (len(grid) - 2) + (factor, factor))
        if plan.grid is None and method == "tome":
            raise ValueError("context drop method 'tome' needs samples of one size (a shared token grid)")
        self.plan, self.factor, self.method = plan, factor, method
        self.grid, self.factors = plan.grid, plan.factors

    def __repr__(self) -> str:
        where = f"grid={self.grid}, factors={self.factors}" if self.grid is not None else f"cells={self.plan.n_cells}"
        return f"ContextDropLayer(factor={self.factor}, {where}, method={self.method!r})"

    def merge(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, L, ...) -> (merged (B, cells, ...), count (B, cells) float32) over the plan's cells."""
        if self.grid is None:
            return lk.merge_tokens(x, mask=mask, cells=self.plan.cells, n_cells=self.plan.n_cells)
        return lk.merge_tokens(x, self.grid, self.factors, mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, freqs: Tensor | None, mask: Tensor | None,
               softmax_scale: float | None) -> Tensor:
        """q: (B, L, H, hd); k, v: (B, L, KV, hd) unrotated; freqs: RoPE (L or B x L, hd/2) or None; mask (B, L)."""
        if freqs is not None:
            k = lk.apply_rope(k, freqs)  # RoPE before merging (see the module doc)
        if self.method == "tome":
            return _tome_attend(q, k, v, freqs, mask, softmax_scale, self.grid, self.factors)
        km, count = self.merge(k, mask)  # (B, cells, KV, hd), (B, cells)
        vm, _ = self.merge(v, mask)  # (B, cells, KV, hd)
        return lk.attention(q, km, vm, q_freqs=freqs, key_padding_mask=count > 0,
                            softmax_scale=softmax_scale)  # (B, L, H, hd)


# ------------------------------------------------------------------------------------------------
# ToMe-style similarity merging of keys and values
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _cell_split(grid: tuple, factors: tuple, device: torch.device) -> tuple[Tensor, Tensor]:
    """(dst, src) token indices: the first token of every merge cell, and the others. Cached per grid and device
    (so a CUDA-graph replay or a compiled graph never builds them)."""
    axes = [torch.arange(g) % f == 0 for g, f in zip(grid, factors)]
    head = axes[0]
    for a in axes[1:]:
        head = (head[:, None] & a[None, :]).reshape(-1)
    idx = torch.arange(head.numel())
    return idx[head].to(device), idx[~head].to(device)


def tome_merge(k: Tensor, v: Tensor, grid: Sequence[int], factors: Sequence[int], mask: Tensor | None = None):
    """Merge keys/values by similarity: returns (k_m, v_m, size), (B, N, KV, hd) x 2 and (B, N) float32 sizes.

    k must already carry RoPE. Destinations: the first token of every cell (N = number of cells, as pooling);
    sources: the rest, each added to its most cosine-similar destination (over all KV heads); results are size-
    weighted means. Masked tokens are ignored (a masked destination with no sources gets size 0).
    """
    B, L, KV, hd = k.shape
    dst_idx, src_idx = _cell_split(tuple(grid), tuple(factors), k.device)  # (Nd,), (Ns,)
    w = torch.ones(B, L, device=k.device, dtype=torch.float32) if mask is None else mask.to(torch.float32)
    kf, vf = k.float(), v.float()
    a = F.normalize(kf[:, src_idx].reshape(B, len(src_idx), KV * hd), dim=-1)  # (B, Ns, KV*hd)
    b = F.normalize(kf[:, dst_idx].reshape(B, len(dst_idx), KV * hd), dim=-1)  # (B, Nd, KV*hd)
    target = (a @ b.transpose(1, 2)).argmax(dim=-1)  # (B, Ns): the destination each source joins
    ws, wd = w[:, src_idx], w[:, dst_idx]  # (B, Ns), (B, Nd)
    size = wd.scatter_add(1, target, ws)  # (B, Nd)
    idx = target[:, :, None, None].expand(B, len(src_idx), KV, hd)
    merged = []
    for t in (kf, vf):
        acc = t[:, dst_idx] * wd[:, :, None, None]  # (B, Nd, KV, hd)
        acc = acc.scatter_add(1, idx, t[:, src_idx] * ws[:, :, None, None])
        merged.append((acc / size.clamp_min(1.0)[:, :, None, None]).to(k.dtype))
    return merged[0], merged[1], size


def _tome_attend(q, k_rot, v, freqs, mask, softmax_scale, grid, factors):
    km, vm, size = tome_merge(k_rot, v, grid, factors, mask)  # (B, N, KV, hd) x 2, (B, N)
    B, L, H, hd = q.shape
    KV = km.shape[2]
    qr = lk.apply_rope(q, freqs) if freqs is not None else q
    # proportional attention: + log(size) per key, -inf for empty keys; (B, 1, 1, N) broadcast over heads, queries
    bias = torch.where(size > 0, size.clamp_min(1e-30).log(), torch.full_like(size, -math.inf))[:, None, None, :]
    rep = H // KV
    out = F.scaled_dot_product_attention(
        qr.transpose(1, 2),  # (B, H, L, hd)
        km.repeat_interleave(rep, dim=2).transpose(1, 2),  # (B, H, N, hd)
        vm.repeat_interleave(rep, dim=2).transpose(1, 2),
        attn_mask=bias.to(q.dtype), scale=softmax_scale)  # (B, H, L, hd)
    empty = ~(size > 0).any(dim=1)  # samples with no key at all give zeros, as lk.attention does
    out = out.transpose(1, 2)  # (B, L, H, hd)
    return torch.where(empty[:, None, None, None], torch.zeros_like(out), out)
