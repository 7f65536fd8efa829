"""Pipelines: latent codecs and (later) one generation pipeline per modality.

* :mod:`.encoders`: :class:`LatentCodec` / :class:`VAECodec` (diffusers ``AutoencoderKL``, fp32) /
  :class:`PixelCodec`, :func:`to_pil`. The text encoders live in :mod:`lumina.conditioning`; :class:`TextEncoder`
  is re-exported here and from :mod:`.encoders` for compatibility.
* :mod:`.text_to_image`: :class:`LuminaPipeline` (text -> images) and :func:`generate` (one call, cached pipeline).
* :mod:`.tiny`: tiny random text encoder and VAE written to a directory, for tests and demos.

Layering: may import ``lumina.models``, ``lumina.sampling``, ``lumina_kernels``, transformers and diffusers;
nothing in ``lumina.models`` imports this package. transformers / diffusers are imported lazily.
"""
from ..conditioning import TextEncoder
from .encoders import LatentCodec, PixelCodec, VAECodec, to_pil
from .text_to_image import GenerationDefaults, LuminaPipeline, PipelineConfig, generate, load_pipeline

__all__ = ["TextEncoder", "LatentCodec", "VAECodec", "PixelCodec", "to_pil", "LuminaPipeline", "PipelineConfig",
           "GenerationDefaults", "generate", "load_pipeline"]
