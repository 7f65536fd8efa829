"""The codec protocol (sample <-> latent) and the identity codec.

A codec maps a batch of samples to the latents the model is trained on and back: ``encode(samples) -> latents``,
``decode(latents) -> samples``, ``to(device)``, and ``latent_channels`` / ``downscale`` (the spatial or temporal
reduction of the latent grid; 1 for pixel space).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

__all__ = ["LatentCodec", "IdentityCodec", "PathLike", "DeviceLike"]

PathLike = Union[str, os.PathLike]
DeviceLike = Union[str, torch.device, None]


class LatentCodec:
    """The sample <-> latent mapping of a pipeline.

    ``decode(latents) -> samples`` float32; ``encode(samples) -> latents``; ``to(device)`` moves it and returns
    it; ``latent_channels`` and ``downscale`` describe the latent grid.
    """

    latent_channels: int
    downscale: int

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, h, w) -> images (B, C, h * downscale, w * downscale) in [0, 1]."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = True) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> latents (B, latent_channels, H / downscale, W / downscale)."""
        raise NotImplementedError

    def to(self, device: DeviceLike) -> "LatentCodec":
        """Move to ``device``; returns ``self``."""
        return self

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(latent_channels, height // downscale, width // downscale)``; ``ValueError`` unless both sizes are
        positive multiples of ``downscale``."""
        d = self.downscale
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v < d or v % d:
                raise ValueError(f"`{name}` must be a positive multiple of {d}, got {v!r}")
        return self.latent_channels, height // d, width // d


class IdentityCodec(LatentCodec):
    """Samples are the latents (any modality: precomputed latents, raw sequences): downscale 1, values unchanged;
    ``decode`` / ``encode`` return float32 on the input's device (or the device given to ``to``)."""

    def __init__(self, channels: int):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be an int >= 1, got {channels!r}")
        self.latent_channels = channels
        self.downscale = 1
        self._device: Optional[torch.device] = None

    def to(self, device: DeviceLike) -> "IdentityCodec":
        """Outputs go to ``device`` from now on (``None``: stay where the input is); returns ``self``."""
        self._device = torch.device(device) if device is not None else None
        return self

    def _place(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float32 on the output device."""
        return x.to(device=x.device if self._device is None else self._device, dtype=torch.float32)

    def _prep(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point tensor, got "
                             f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        return self._place(x)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._prep(latents, "latents")

    def encode(self, samples: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = True) -> torch.Tensor:
        return self._prep(samples, "samples")
