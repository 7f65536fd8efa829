"""Sequences: (C, T) latents (e.g. a 1-D audio VAE latent: channels x time), patches of p steps, 1-D RoPE over time.

Tokens hold features in (C, p) order; the head emits them in (p, C) order (as the image head's (pH, pW, C)).
RoPE scaling and context drop act on the time axis.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..models.modality import register
from .base import ModalityAdapter


@register("sequence")
class SequenceAdapter(ModalityAdapter):
    n_axes = 1
    sample_rank = 2
    scaled_axes = (True,)
    pool_axes = (True,)
    sample_doc = "(C, T)"

    def token_features(self, channels: int) -> int:
        return channels * self.config.patch_size

    def patchify(self, x: Tensor, i: int) -> tuple[Tensor, tuple[int, ...]]:
        C, T = x.shape
        if C != self.config.in_channels:
            raise ValueError(f"`x[{i}]` must be ({self.config.in_channels}, T), got shape {tuple(x.shape)}")
        self.check_multiple(i, {"length": T})
        p = self.config.patch_size
        n = T // p
        # (C, n, p) -> (n, C, p) -> (n, C*p): features in (C, p) order
        return x.view(C, n, p).permute(1, 0, 2).reshape(n, C * p), (n,)

    def unpatchify(self, tokens: Tensor, size: tuple[int, ...]) -> Tensor:
        _, T = size
        p, C = self.config.patch_size, self.config.out_channels
        n = T // p
        o = tokens[:n].view(n, p, C)  # features in (p, C) order
        return o.permute(2, 0, 1).reshape(C, T)[: self.config.in_channels]  # (C, n, p) -> (C, T); no sigma half

    @classmethod
    def size_of(cls, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(shape[1:])  # (C, T) -> (T,)

    def prefix_index(self, n: int) -> tuple:
        return (slice(None), slice(0, n * self.config.patch_size))  # the first n tokens of p steps

    def latent_shape(self, size: Sequence[int], downscale: int = 1) -> tuple[int, ...]:
        """(C, T / downscale) for size (T,); ValueError unless a multiple of downscale x patch."""
        return (self.config.in_channels, *self.latent_extent(size, {"length": self.config.patch_size}, downscale))
