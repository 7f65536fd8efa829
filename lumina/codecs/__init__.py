"""Codecs: samples <-> the latents a Next-DiT is trained on.

* :class:`LatentCodec`: the protocol; :class:`IdentityCodec` (latents are the samples, any modality).
* :class:`VAECodec` (a diffusers ``AutoencoderKL``, fp32) and :class:`PixelCodec` (pixel space, [0, 1] <-> [-1, 1])
  for images and stacks of frames; :func:`to_pil`.
* :func:`load_codec`: a codec from its spec string, as pipeline and training configs name it.

Everything loads from local directories only; diffusers is imported lazily.
"""
from __future__ import annotations

from .base import DeviceLike, IdentityCodec, LatentCodec
from .image import PixelCodec, VAECodec, to_pil

__all__ = ["LatentCodec", "IdentityCodec", "PixelCodec", "VAECodec", "to_pil", "load_codec", "CODEC_KINDS"]

CODEC_KINDS = ("vae", "pixel", "identity")


def load_codec(kind: str, channels: int = 3, vae_dir=None, device: DeviceLike = None) -> LatentCodec:
    """``kind``: "pixel" (``channels``), "identity" (``channels``) or "vae" (the AutoencoderKL at ``vae_dir``)."""
    if kind == "pixel":
        return PixelCodec(channels).to(device)
    if kind == "identity":
        return IdentityCodec(channels).to(device)
    if kind == "vae":
        if vae_dir is None:
            raise ValueError("a 'vae' codec needs a VAE directory")
        return VAECodec.from_pretrained(vae_dir, device=device)
    raise ValueError(f"unknown codec {kind!r}; expected one of {list(CODEC_KINDS)}")
