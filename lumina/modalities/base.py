"""The modality adapter protocol: samples of any size <-> a padded batch of tokens for the Next-DiT backbone.

An adapter is an ``nn.Module`` registered by name (``@register("image")``) that owns its learnable input embedder
(``x_embedder``: token features -> dim) and output head (``final_layer``: dim -> token features); the model
(:class:`lumina.models.NextDiT`) takes them over under these official names and calls them itself. Everything
else an adapter does is plain tensor bookkeeping:

* :meth:`split`: a batched tensor or a list of samples -> a list of samples (ValueError naming ``x``);
* :meth:`patchify` / :meth:`unpatchify` one sample <-> (tokens, token grid) (the subclass's part);
* :meth:`tokenize`: samples -> :class:`TokenBatch` (features, mask, positions (B, L, axes), grids, layout);
* :meth:`detokenize`: head output (B, L, F) -> samples;
* :meth:`latent_shape`: the latent of a requested size; :attr:`scaled_axes`: the axes RoPE scaling touches;
* :meth:`merge_plan`: the cells context drop merges keys/values over (:attr:`pool_axes`).

Adding a modality: subclass, set ``n_axes``, ``sample_rank``, ``scaled_axes``, ``pool_axes`` and implement
``token_features``, ``patchify``, ``unpatchify``, ``latent_shape``; nothing in ``lumina.models`` changes.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..models.blocks import FinalLayer
from ..models.config import NextDiTConfig
from ..models.modality import MergePlan, TokenBatch
from ..models.rope import grid_positions

__all__ = ["ModalityAdapter", "TokenBatch", "MergePlan"]


@torch.compiler.assume_constant_result
def _grid_positions(grid: tuple[int, ...], device: torch.device) -> Tensor:
    return _cached_grid_positions(grid, device)


@functools.lru_cache(maxsize=64)
def _cached_grid_positions(grid: tuple[int, ...], device: torch.device) -> Tensor:
    return grid_positions(grid).to(device)  # (prod(grid), n_axes) int64


class ModalityAdapter(nn.Module):
    """Base class of the adapters (see the module doc). Subclasses set the class attributes below."""

    name: str = "?"  # set by register()
    n_axes: int = 0  # position axes of a token (RoPE axes)
    sample_rank: int = 0  # dims of one sample tensor, e.g. 3 for an image (C, H, W)
    scaled_axes: tuple[bool, ...] = ()  # the axes RoPE resolution scaling applies to
    pool_axes: tuple[bool, ...] = ()  # the axes context drop merges over
    rope_interleave: bool = False  # the official Lumina-Next layout (equal shares, pairs interleaved)
    sample_doc: str = "?"  # the shape of one sample, for error messages
    channel_dim: int = 0  # the channel dim of one sample

    def __init__(self, config: NextDiTConfig):
        super().__init__()
        self.config = config
        self.rope_axis_dims = config.axis_dims(self.n_axes)  # ValueError unless they fit the axes
        self.x_embedder = nn.Linear(self.token_features(config.in_channels), config.dim)
        self.final_layer = FinalLayer(config, self.token_features(config.out_channels))

    # -- the subclass's part -----------------------------------------------------------------------
    def token_features(self, channels: int) -> int:
        """Features of one token holding `channels` channels (the patch volume times channels)."""
        raise NotImplementedError

    def patchify(self, x: Tensor, i: int) -> tuple[Tensor, tuple[int, ...]]:
        """One sample -> (tokens (n, token_features(in_channels)), token grid with prod(grid) == n)."""
        raise NotImplementedError

    def unpatchify(self, tokens: Tensor, size: tuple[int, ...]) -> Tensor:
        """(n, token_features(out_channels)) -> one sample of `size` (in_channels only: no sigma half)."""
        raise NotImplementedError

    def latent_shape(self, size: Sequence[int], downscale: int = 1) -> tuple[int, ...]:
        """The latent of a sample of `size` (sample units, e.g. pixels) under a codec of `downscale`."""
        raise NotImplementedError

    @classmethod
    def size_of(cls, shape: Sequence[int]) -> tuple[int, ...]:
        """A sample's size along its position axes (the inverse of :meth:`latent_shape` at downscale 1)."""
        raise NotImplementedError

    def prefix_index(self, n: int) -> tuple:
        """The index into one sample of its first ``n`` units along position axis 0: what ``model(...,
        clean_prefix=n)`` conditions as clean (rows of patches, steps of patches, frames)."""
        raise NotImplementedError

    # -- shared bookkeeping ------------------------------------------------------------------------
    def token_grid(self, latent_shape: Sequence[int]) -> tuple[int, ...]:
        """The token grid of one sample of this latent shape (patchified on a meta tensor: no data, no copy)."""
        return self.patchify(torch.empty(tuple(latent_shape), device="meta"), 0)[1]

    def split(self, x) -> tuple[list[Tensor], bool]:
        """(list of samples, whether x was one batched tensor)."""
        if isinstance(x, (list, tuple)) and x and all(isinstance(s, Tensor) for s in x):
            return list(x), False
        if isinstance(x, Tensor) and x.dim() == self.sample_rank + 1:
            return list(x.unbind(0)), True
        got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`x` must be a batched tensor (B, {self.sample_doc[1:-1]}) or a non-empty list of "
                         f"{self.sample_doc} tensors for the {self.name!r} modality, got {got}")

    def check_sample(self, x: Tensor, i: int) -> None:
        if x.dim() != self.sample_rank:
            raise ValueError(f"`x[{i}]` must be {self.sample_doc} for the {self.name!r} modality (rank "
                             f"{self.sample_rank}), got rank {x.dim()}, shape {tuple(x.shape)}")

    def check_multiple(self, i: int, sizes: dict[str, int]) -> None:
        p = self.config.patch_size
        bad = {k: v for k, v in sizes.items() if v % p}
        if bad:
            raise ValueError(f"`x[{i}]`: {', '.join(bad)} must be multiples of the patch size {p}, got {bad}")

    @staticmethod
    def latent_extent(size, axes: dict[str, int], downscale: int) -> tuple[int, ...]:
        """size / downscale per axis; ValueError naming the axis unless each entry of `size` is a positive multiple
        of downscale * axes[name] (axes: name -> the latent multiple it needs, the patch size or 1)."""
        if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
            raise ValueError(f"`downscale` must be an int >= 1, got {downscale!r}")
        if isinstance(size, int) or len(size) != len(axes):
            raise ValueError(f"`size` must be ({', '.join(axes)}), got {size!r}")
        out = []
        for (name, multiple), v in zip(axes.items(), size):
            m = downscale * multiple
            if isinstance(v, bool) or not isinstance(v, int) or v < m or v % m:
                raise ValueError(f"`{name}` must be a positive multiple of {m} (codec downscale {downscale} x "
                                 f"{multiple}), got {v!r}")
            out.append(v // downscale)
        return tuple(out)

    def tokenize(self, samples: list[Tensor]) -> TokenBatch:
        """Patchify every sample, pad to the longest (zeros, masked); padded tokens repeat the last position."""
        tokens, grids, sizes = [], [], []
        for i, x in enumerate(samples):
            self.check_sample(x, i)
            tk, grid = self.patchify(x, i)
            tokens.append(tk)
            grids.append(grid)
            sizes.append(tuple(x.shape))
        lens = [tk.shape[0] for tk in tokens]
        L = max(lens)
        features = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)  # (B, L, F)
        pos = torch.arange(L, device=features.device)
        mask = torch.stack([pos < n for n in lens])  # (B, L); no host-to-device copy (CUDA-graph capture)
        positions = torch.stack([_pad_last(_grid_positions(g, features.device), L) for g in grids])  # (B, L, A)
        return TokenBatch(features, mask, positions, grids, sizes)

    def detokenize(self, out: Tensor, layout: list[tuple[int, ...]]) -> list[Tensor]:
        """Head output (B, L, token_features(out_channels)) -> one sample per entry of layout (sample sizes)."""
        return [self.unpatchify(out[i], size) for i, size in enumerate(layout)]

    def merge_plan(self, batch: TokenBatch, factor: int) -> MergePlan:
        """Context drop cells: `factor` along every pooled axis. Samples sharing one grid merge on it (the grid
        kernels); samples of different sizes get an explicit cell index per token."""
        if batch.grids is None:
            raise ValueError(f"`context_drop` needs tokens on a grid; the {self.name!r} batch has free positions")
        grids = set(batch.grids)
        factors = tuple(factor if pooled else 1 for pooled in self.pool_axes)
        if len(grids) == 1:
            return MergePlan(grid=grids.pop(), factors=factors)
        n_cells = [max(math.ceil(g[a] / f) for g in grids) for a, f in enumerate(factors)]  # cells per axis
        strides = [math.prod(n_cells[a + 1:]) for a in range(len(n_cells))]
        cells = sum((batch.positions[..., a] // f) * s for a, (f, s) in enumerate(zip(factors, strides)))
        return MergePlan(cells=cells, n_cells=math.prod(n_cells))  # cells (B, L) int64


def _pad_last(x: Tensor, L: int) -> Tensor:
    """(n, ...) -> (L, ...) repeating the last row."""
    return torch.cat([x, x[-1:].expand(L - x.shape[0], *x.shape[1:])]) if x.shape[0] < L else x
