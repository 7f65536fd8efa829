"""Modality adapters: samples of one modality <-> tokens of the shared Next-DiT backbone.

    adapter_cls = lumina.modalities.get("image")      # or "sequence", "volume"
    model = lumina.NextDiT(NextDiTConfig(modality="volume", ...))

Importing this package registers every adapter below (``import lumina`` does it). See :mod:`.base` for the
protocol and how to add a modality.
"""
from ..models.modality import TokenBatch, MergePlan, get, names, register
from .base import ModalityAdapter
from .image import ImageAdapter
from .sequence import SequenceAdapter
from .volume import VolumeAdapter

__all__ = ["get", "names", "register", "ModalityAdapter", "TokenBatch", "MergePlan", "ImageAdapter",
           "SequenceAdapter", "VolumeAdapter"]
