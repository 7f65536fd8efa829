"""Pipelines: one flow pipeline for every modality, and :func:`generate`.

* :mod:`.base`: :class:`FlowPipeline` (encode the condition -> noise from the seed -> sample with guidance ->
  decode), :func:`pipeline_class` (the pipeline of a modality).
* :mod:`.text_to_image` (:class:`LuminaPipeline`), :mod:`.text_to_sequence` (:class:`SequencePipeline`),
  :mod:`.text_to_volume` (:class:`VolumePipeline`): thin subclasses.
* :mod:`.results`: :class:`ImageResult`, :class:`SequenceResult`, :class:`VolumeResult` (each with ``.save``).
* :mod:`.loading`: :func:`generate` / :func:`load_pipeline` (one call, cached pipeline, modality from the model).
* :mod:`.tiny`: tiny random text encoder and VAE written to a directory, for tests and demos.

Codecs live in :mod:`lumina.codecs`, text encoders in :mod:`lumina.conditioning` (re-exported here), the pipeline
directory format in :mod:`lumina.pipeline_dir`. transformers / diffusers are imported lazily.
"""
from ..codecs import IdentityCodec, LatentCodec, PixelCodec, VAECodec, to_pil
from ..conditioning import TextEncoder
from ..pipeline_dir import GenerationDefaults, PipelineConfig
from .base import FlowPipeline, NonFiniteError, pipeline_class
from .loading import default_model_path, generate, load_pipeline
from .results import ImageResult, SequenceResult, VolumeResult
from .text_to_image import LuminaPipeline
from .text_to_sequence import SequencePipeline
from .text_to_volume import VolumePipeline

__all__ = ["TextEncoder", "LatentCodec", "VAECodec", "PixelCodec", "IdentityCodec", "to_pil", "FlowPipeline", "NonFiniteError",
           "pipeline_class", "LuminaPipeline", "SequencePipeline", "VolumePipeline", "PipelineConfig",
           "GenerationDefaults", "ImageResult", "SequenceResult", "VolumeResult", "generate", "load_pipeline",
           "default_model_path"]
