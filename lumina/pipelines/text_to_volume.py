"""Text (or nothing) to volumes: a thin :class:`lumina.pipelines.base.FlowPipeline` for the "volume" modality
(F, C, H, W): video frames or the views of an object. ``pipe(prompt, size=(F, H, W))`` returns a
:class:`VolumeResult` (``.save`` writes GIF, PNG or NPY)."""
from __future__ import annotations

from .base import FlowPipeline, register_pipeline
from .results import VolumeResult

__all__ = ["VolumePipeline"]


@register_pipeline
class VolumePipeline(FlowPipeline):
    modality = "volume"
    result_type = VolumeResult
    channel_axis = 2  # (B, F, C, H, W)
