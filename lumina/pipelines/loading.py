"""``lumina.generate``: one call for every modality. The model directory's transformer names its modality; the
pipeline of that modality (:func:`lumina.pipelines.base.pipeline_class`) loads it (cached) and returns that
modality's result type (with ``.save(path)``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import FlowPipeline

__all__ = ["generate", "load_pipeline", "default_model_path", "DEFAULT_MODEL_ENV"]

_PIPELINES: dict[tuple, FlowPipeline] = {}
DEFAULT_MODEL_ENV = "LUMINA_MODEL"


def default_model_path() -> Path | None:
    """The model `generate` uses without `model=`: $LUMINA_MODEL, else the model bundled with the package."""
    env = os.environ.get(DEFAULT_MODEL_ENV)
    if env:
        return Path(env)
    bundled = Path(__file__).resolve().parent.parent / "assets" / "default_model"
    return bundled if bundled.is_dir() else None


def load_pipeline(model=None, *, text_encoder=None, vae=None, lora=None, lora_scale: float = 1.0, dtype=None,
                  device=None, ema: bool = True, cache: bool = True) -> FlowPipeline:
    """The pipeline of `model` (a directory; default :func:`default_model_path`) for its modality, cached per
    arguments."""
    if model is None:
        model = default_model_path()
        if model is None:
            raise ValueError("no model given and no default model found: pass `model=` (a pipeline directory) "
                             f"or set ${DEFAULT_MODEL_ENV}")
    key = (str(Path(os.fspath(model)).resolve()), str(text_encoder), str(vae), str(lora), lora_scale, str(dtype),
           str(device), ema)
    if cache and key in _PIPELINES:
        return _PIPELINES[key]
    pipe = FlowPipeline.from_pretrained(model, text_encoder=text_encoder, vae=vae, lora=lora, lora_scale=lora_scale,
                                        ema=ema, dtype=dtype, device=device)
    if cache:
        _PIPELINES.clear()  # keep one model in memory
        _PIPELINES[key] = pipe
    return pipe


def generate(prompt=None, negative_prompt: str | list[str] = "", *, model=None, text_encoder=None, vae=None,
             lora=None, lora_scale: float = 1.0, dtype: torch.dtype | None = None, device=None, ema: bool = True,
             **kwargs):
    """Generate in one call: loads (and caches) the pipeline of `model` for its modality, then runs it.

    ``model``: a pipeline directory (default: $LUMINA_MODEL or the bundled text-to-image model); ``text_encoder``,
    ``vae``, ``lora``, ``lora_scale``, ``dtype``, ``device``, ``ema`` as :meth:`FlowPipeline.from_pretrained`; every
    other keyword argument as the pipeline's call (image: height, width, num_images_per_prompt; sequence and volume:
    size, num_samples_per_prompt; all: steps, solver, schedule, shift, cfg, seed, ...). Returns the modality's
    result: an ``ImageResult`` (a list of PIL images), ``SequenceResult`` or ``VolumeResult``, each with
    ``.save(path)``.
    """
    pipe = load_pipeline(model, text_encoder=text_encoder, vae=vae, lora=lora, lora_scale=lora_scale, dtype=dtype,
                         device=device, ema=ema)
    return pipe(prompt, negative_prompt, **kwargs)
