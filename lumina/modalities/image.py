"""Images: (C, H, W) latents, p x p patches, 2-D RoPE over (row, column) in the official interleaved layout.

The released text-to-image model is this adapter + the backbone: ``x_embedder`` (patch features in (C, pH, pW)
order) and ``final_layer`` (output features in (pH, pW, C) order) keep their official names and layouts.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..models.modality import register
from .base import ModalityAdapter


@register("image")
class ImageAdapter(ModalityAdapter):
    n_axes = 2
    sample_rank = 3
    scaled_axes = (True, True)
    pool_axes = (True, True)
    rope_interleave = True
    sample_doc = "(C, H, W)"

    def token_features(self, channels: int) -> int:
        return channels * self.config.patch_size ** 2

    def patchify(self, x: Tensor, i: int) -> tuple[Tensor, tuple[int, ...]]:
        C, H, W = x.shape
        if C != self.config.in_channels:
            raise ValueError(f"`x[{i}]` must be ({self.config.in_channels}, H, W), got shape {tuple(x.shape)}")
        self.check_multiple(i, {"height": H, "width": W})
        p = self.config.patch_size
        ht, wt = H // p, W // p
        # (C, ht, p, wt, p) -> (ht, wt, C, p, p) -> (ht*wt, C*p*p): features in (C, pH, pW) order
        return x.view(C, ht, p, wt, p).permute(1, 3, 0, 2, 4).reshape(ht * wt, C * p * p), (ht, wt)

    def unpatchify(self, tokens: Tensor, size: tuple[int, ...]) -> Tensor:
        _, H, W = size
        p, C = self.config.patch_size, self.config.out_channels
        ht, wt = H // p, W // p
        o = tokens[: ht * wt].view(ht, wt, p, p, C)  # features in (pH, pW, C) order
        return o.permute(4, 0, 2, 1, 3).reshape(C, H, W)[: self.config.in_channels]  # drop the sigma half

    @classmethod
    def size_of(cls, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(shape[1:])  # (C, H, W) -> (H, W)

    def prefix_index(self, n: int) -> tuple:
        return (slice(None), slice(0, n * self.config.patch_size))  # the first n rows of patches

    def latent_shape(self, size: Sequence[int], downscale: int = 1) -> tuple[int, ...]:
        """(C, H / downscale, W / downscale) for size (H, W); ValueError unless multiples of downscale x patch."""
        p = self.config.patch_size
        return (self.config.in_channels, *self.latent_extent(size, {"height": p, "width": p}, downscale))

