"""Model layer: Next-DiT, its rotary position tables and checkpoint io."""
from .checkpoints import CheckpointError
from .nextdit import PRESETS, NextDiT, NextDiTConfig, config_from_preset
from .rope import RopeScaling

__all__ = ["NextDiT", "NextDiTConfig", "PRESETS", "config_from_preset", "RopeScaling", "CheckpointError"]
