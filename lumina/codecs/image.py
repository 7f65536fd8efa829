"""Image codecs: :class:`VAECodec` (a ``diffusers.AutoencoderKL``, always run in float32: SDXL VAE, scaling
0.13025, shift 0 for Lumina-Next) and :class:`PixelCodec` (pixel-space models: images and frame stacks), and
:func:`to_pil` (float images in [0, 1] to 8-bit RGB PIL images).

Everything loads from LOCAL directories only (``local_files_only=True``): nothing here downloads. diffusers is
imported lazily, so ``import lumina.pipelines`` stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from .._paths import check_model_dir
from .base import DeviceLike, IdentityCodec, LatentCodec, PathLike

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image
    from diffusers import AutoencoderKL

__all__ = ["VAECodec", "PixelCodec", "to_pil"]


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"`{name}` must be a 4-D tensor (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


class VAECodec(LatentCodec):
    """A ``diffusers.AutoencoderKL`` as a codec, kept and run in float32 (whatever the dtype of the latents).

    ``decode``: ``images = vae.decode(latents / scaling_factor + shift_factor).sample`` mapped from [-1, 1] to
    [0, 1] and clamped. ``encode``: ``(z - shift_factor) * scaling_factor`` with ``z`` sampled from (or the mode
    of) the latent distribution of ``2 * images - 1``. Both run under ``torch.no_grad()`` and return float32.
    """

    def __init__(self, vae: "AutoencoderKL"):
        """Wrap ``vae`` (converted in place to float32 and eval mode, gradients off)."""
        if any(p.dtype != torch.float32 for p in vae.parameters()):
            vae = vae.float()  # (diffusers' to(dtype) logs a warning even when casting to float32)
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor if getattr(cfg, "scaling_factor", None) is not None else 1.0)
        shift = getattr(cfg, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0
        self.latent_channels = int(cfg.latent_channels)
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)

    @classmethod
    def from_pretrained(cls, path: PathLike, device: DeviceLike = None) -> "VAECodec":
        """Load ``AutoencoderKL`` from the local directory ``path`` (``local_files_only=True``) in float32, on
        ``device`` (``None``: CPU). ``FileNotFoundError`` naming ``path`` when it is missing or has no
        config.json."""
        p = check_model_dir(path, "VAE")
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(p, local_files_only=True, torch_dtype=torch.float32,
                                            low_cpu_mem_usage=False)  # True needs accelerate
        codec = cls(vae)
        return codec.to(device) if device is not None else codec

    @property
    def device(self) -> torch.device:
        """Device of the VAE's parameters."""
        return next(self.vae.parameters()).device

    def to(self, device: DeviceLike) -> "VAECodec":
        """Move the VAE to ``device`` (staying float32); returns ``self``."""
        self.vae.to(device)  # parameters are float32 already (see __init__)
        return self

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_channels, h, w), any float dtype -> float32 images (B, 3, h * downscale,
        w * downscale) in [0, 1], on the VAE's device."""
        _check_images(latents, "latents")
        if latents.shape[1] != self.latent_channels:
            raise ValueError(f"`latents` must have {self.latent_channels} channels, got shape {tuple(latents.shape)}")
        z = latents.to(device=self.device, dtype=torch.float32)
        with torch.no_grad():
            x = self.vae.decode(z / self.scaling_factor + self.shift_factor).sample
        return (x / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = True) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> float32 latents (B, latent_channels, H / downscale, W / downscale):
        ``(z - shift_factor) * scaling_factor``, ``z`` drawn with ``generator`` (``sample=True``) or the mode of
        the latent distribution (``sample=False``)."""
        _check_images(images, "images")
        x = images.to(device=self.device, dtype=torch.float32) * 2 - 1
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            z = dist.sample(generator=generator) if sample else dist.mode()
        return (z - self.shift_factor) * self.scaling_factor


class PixelCodec(IdentityCodec):
    """Identity codec for pixel-space models: downscale 1, ``latent_channels = channels``; the model's space is
    [-1, 1]. ``decode`` maps [-1, 1] -> [0, 1] (clamped), ``encode`` maps [0, 1] -> [-1, 1]; both return float32 on
    the input's device (or the device given to ``to``). Images (B, C, H, W) or stacks of frames (B, F, C, H, W)."""

    def __init__(self, channels: int = 3):
        """``channels``: image (and latent) channels, >= 1."""
        super().__init__(channels)

    def _prep(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            raise ValueError(f"`{name}` must be a 4-D (B, C, H, W) or 5-D (B, F, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[-3] != self.latent_channels:
            raise ValueError(f"`{name}` must have {self.latent_channels} channels, got shape {tuple(x.shape)}")
        return self._place(x)  # any dtype (uint8 images too), unlike the identity codec

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1]: ``(x / 2 + 0.5).clamp(0, 1)`` in float32."""
        return (self._prep(latents, "latents") / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None,
               sample: bool = True) -> torch.Tensor:
        """[0, 1] -> [-1, 1]: ``2 * x - 1`` in float32 (``generator`` and ``sample`` are ignored)."""
        return self._prep(images, "images") * 2 - 1


def to_pil(images: torch.Tensor) -> list["PIL.Image.Image"]:
    """Float images (B, 3 or 1, H, W) in [0, 1] -> a list of B 8-bit RGB PIL images (W x H).

    Values are clamped to [0, 1], scaled by 255 and rounded to nearest (ties to even: 0.5 -> 128); NaN -> 0;
    one channel is repeated to grey RGB.
    """
    import numpy as np
    from PIL import Image

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"`images` must be a (B, 3 or 1, H, W) tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"`images` must be floating point in [0, 1], got {images.dtype}")
    x = images.detach().to("cpu", torch.float32).nan_to_num(0.0).clamp(0, 1)
    x = (x * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    arr = x.permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]  # uint8 (H, W, 3) -> mode "RGB"
