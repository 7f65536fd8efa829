"""Model layer: the Next-DiT config, blocks, token backbone, the model, its rotary position tables and checkpoint io.

``lumina.models`` never imports ``lumina.modalities``: adapters register into :mod:`.modality` (imported by
``import lumina``).
"""
from .backbone import Backbone
from .checkpoints import CheckpointError
from .config import PRESETS, NextDiTConfig, config_from_preset
from .nextdit import NextDiT
from .rope import RopeScaling

__all__ = ["NextDiT", "NextDiTConfig", "PRESETS", "config_from_preset", "Backbone", "RopeScaling", "CheckpointError"]
