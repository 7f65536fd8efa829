"""Text (or nothing) to sequences: a thin :class:`lumina.pipelines.base.FlowPipeline` for the "sequence" modality
(C, T): audio latents or waveforms. ``pipe(prompt, size=T)`` returns a :class:`SequenceResult` (``.save`` writes
WAV or NPY)."""
from __future__ import annotations

from .base import FlowPipeline, register_pipeline
from .results import SequenceResult

__all__ = ["SequencePipeline"]


@register_pipeline
class SequencePipeline(FlowPipeline):
    modality = "sequence"
    result_type = SequenceResult
