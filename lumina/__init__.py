"""lumina: Lumina-Next (Next-DiT) with hand-written kernels.

``lumina.NextDiT`` / ``lumina.NextDiTConfig`` (the model, one class for every modality of ``lumina.modalities``), ``lumina.sample`` (flow ODE solvers),
``lumina.generate`` / ``lumina.load_pipeline`` (every modality: the pipeline of the model's modality),
``lumina.FlowPipeline`` and ``lumina.LuminaPipeline`` (imported on first use, as they pull in transformers and
diffusers).
"""
from . import modalities  # registers the modality adapters (image, sequence, volume)
from .models.nextdit import PRESETS, NextDiT, NextDiTConfig, config_from_preset
from .sampling import sample

__all__ = ["NextDiT", "NextDiTConfig", "PRESETS", "config_from_preset", "sample", "FlowPipeline", "LuminaPipeline",
           "generate", "load_pipeline"]

_LAZY = {"LuminaPipeline", "FlowPipeline", "generate", "load_pipeline"}


def __getattr__(name):
    if name in _LAZY:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'lumina' has no attribute {name!r}")
