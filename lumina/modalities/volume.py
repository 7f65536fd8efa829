"""Volumes: (F, C, H, W) latents (frames of a video, views of an object), p x p patches per frame, 3-D RoPE over
(frame, row, column) with the axes' pairs concatenated (the paper's 3-D RoPE; Lumina-Image-2.0's layout).

Frames are not patched; RoPE resolution scaling and context drop act on the spatial axes only (frames are never
averaged together). Conditioning frames: ``model(..., clean_prefix=n)`` gives the first n frames the t = 1
conditioning.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..models.modality import register
from .base import ModalityAdapter


@register("volume")
class VolumeAdapter(ModalityAdapter):
    n_axes = 3
    sample_rank = 4
    scaled_axes = (False, True, True)
    pool_axes = (False, True, True)
    sample_doc = "(F, C, H, W)"
    channel_dim = 1

    def token_features(self, channels: int) -> int:
        return channels * self.config.patch_size ** 2

    def patchify(self, x: Tensor, i: int) -> tuple[Tensor, tuple[int, ...]]:
        Fr, C, H, W = x.shape
        if C != self.config.in_channels:
            raise ValueError(f"`x[{i}]` must be (F, {self.config.in_channels}, H, W), got shape {tuple(x.shape)}")
        self.check_multiple(i, {"height": H, "width": W})
        p = self.config.patch_size
        ht, wt = H // p, W // p
        # (F, C, ht, p, wt, p) -> (F, ht, wt, C, p, p) -> (F*ht*wt, C*p*p): features in (C, pH, pW) order
        tokens = x.reshape(Fr, C, ht, p, wt, p).permute(0, 2, 4, 1, 3, 5).reshape(Fr * ht * wt, C * p * p)
        return tokens, (Fr, ht, wt)

    def unpatchify(self, tokens: Tensor, size: tuple[int, ...]) -> Tensor:
        Fr, _, H, W = size
        p, C = self.config.patch_size, self.config.out_channels
        ht, wt = H // p, W // p
        o = tokens[: Fr * ht * wt].view(Fr, ht, wt, p, p, C)  # features in (pH, pW, C) order
        # (F, ht, wt, pH, pW, C) -> (F, C, ht, pH, wt, pW) -> (F, C, H, W); drop the sigma half
        return o.permute(0, 5, 1, 3, 2, 4).reshape(Fr, C, H, W)[:, : self.config.in_channels]

    @classmethod
    def size_of(cls, shape: Sequence[int]) -> tuple[int, ...]:
        return (shape[0], shape[2], shape[3])  # (F, C, H, W) -> (F, H, W)

    def prefix_index(self, n: int) -> tuple:
        return (slice(0, n),)  # the first n frames

    def latent_shape(self, size: Sequence[int], downscale: int = 1) -> tuple[int, ...]:
        """(F, C, H / downscale, W / downscale) for size (frames, height, width) (frames are latent frames)."""
        if isinstance(size, int) or len(size) != 3:
            raise ValueError(f"`size` must be (frames, height, width), got {size!r}")
        frames = self.latent_extent(size[:1], {"frames": 1}, 1)[0]
        p = self.config.patch_size
        h, w = self.latent_extent(size[1:], {"height": p, "width": p}, downscale)
        return (frames, self.config.in_channels, h, w)
