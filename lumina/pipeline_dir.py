"""The pipeline directory format: ``lumina_pipeline.json`` (:class:`PipelineConfig`), read by the pipelines and
written by the trainer's export. Neither floor imports the other; both import this.

A pipeline directory holds ``transformer/`` (a NextDiT checkpoint of any modality), ``text_encoder/`` (when the model
cross-attends to text), ``vae/`` (for a VAE codec) and optionally ``lumina_pipeline.json``: the text layer and
length, the codec, where the parts are, and the generation defaults.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .codecs import CODEC_KINDS

__all__ = ["PIPELINE_CONFIG", "GenerationDefaults", "PipelineConfig"]

PIPELINE_CONFIG = "lumina_pipeline.json"


@dataclass
class GenerationDefaults:
    """Defaults of a pipeline call (the official Lumina-Next demo settings)."""

    steps: int = 30
    solver: str = "midpoint"
    schedule: str = "uniform"
    shift: float = 4.0
    cfg: float = 4.0
    rope_scaling: str = "time_aware"
    scale_watershed: float = 0.3
    proportional_attn: bool = True
    context_drop: str | None = None  # a lumina.sampling.ContextDrop spec, e.g. "factor=2,until=0.6"; None = off
    size: list[int] | None = None  # sample size (image: [H, W] px; sequence: [T]; volume: [F, H, W]); None: training


@dataclass
class PipelineConfig:
    """What `lumina_pipeline.json` may hold; every field optional."""

    text_layer: int = -2  # hidden_states index of the caption features (Gemma: the second to last)
    max_length: int = 256  # caption tokens
    codec: str = "vae"  # "vae" (latent space), "pixel" ([0, 1] <-> [-1, 1]) or "identity" (samples are latents)
    pixel_channels: int = 3  # channels of a pixel or identity codec
    # where the parts are, when not in the default subfolders: a path relative to the pipeline directory, an
    # absolute path, or pkg:PACKAGE/SUBDIR (a folder inside an installed Python package)
    transformer: str | None = None
    text_encoder: str | None = None
    vae: str | None = None
    lora: str | None = None  # a LoRA adapter directory merged into the transformer on load
    fps: float = 8.0  # frames per second of a saved volume (GIF)
    sample_rate: int = 16000  # samples per second of a saved sequence (WAV)
    # the words of the training captions when they were few (lumina.conditioning.vocabulary): prompt words outside
    # it are named in a warning; None: an open vocabulary, no check
    vocabulary: list[str] | None = None
    defaults: GenerationDefaults = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.defaults is None:
            self.defaults = GenerationDefaults()
        elif isinstance(self.defaults, dict):
            self.defaults = _from_dict(GenerationDefaults, self.defaults, "defaults")
        if self.codec not in CODEC_KINDS:
            raise ValueError(f"`codec` must be one of {list(CODEC_KINDS)}, got {self.codec!r}")

    @classmethod
    def load(cls, path: Path) -> "PipelineConfig":
        """The directory's config (defaults when it has none); ValueError naming the file and the key for invalid
        JSON, a value of the wrong type or an unknown key."""
        file = path / PIPELINE_CONFIG
        if not file.is_file():
            return cls()
        try:
            with open(file) as f:
                d = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{file}: must be a JSON object of settings, got {type(d).__name__}")
        return _validated(cls, d, str(file))

    def save(self, path: Path) -> None:
        with open(path / PIPELINE_CONFIG, "w") as f:
            json.dump(asdict(self), f, indent=2)


def _validated(cls, d: dict, where: str):
    """``cls`` from ``d``: unknown keys refused, every value checked against its annotation (pydantic)."""
    from pydantic import TypeAdapter, ValidationError

    _check_keys(cls, d, where)  # unknown keys, with the known ones listed
    if isinstance(d.get("defaults"), dict):
        _check_keys(GenerationDefaults, d["defaults"], f"{where}: defaults")
    try:
        return TypeAdapter(cls).validate_python(d)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if not key:  # a check of __post_init__: its message names the key
            raise ValueError(f"{where}: {str(err.get('ctx', {}).get('error', err['msg']))}") from None
        raise ValueError(f"{where}: `{key}`: {err['msg']}, got {err.get('input')!r}") from None
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _check_keys(cls, d: dict, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")


def _from_dict(cls, d: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**d)
