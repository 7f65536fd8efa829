"""Merging a LoRA adapter into a NextDiT (plain tensor math; peft is only needed to train one).

An adapter directory (written by ``lumina train`` with a ``lora:`` section) holds::

    adapter_config.json          {"r": 8, "lora_alpha": 8.0, "target_modules": [...], "lora_dropout": 0.0}
    adapter_model.safetensors    MODULE.lora_A.weight (r, in), MODULE.lora_B.weight (out, r), peft's key names

Merging adds ``(lora_alpha / r) * B @ A`` to each target ``MODULE.weight`` (peft's default scaling).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from .checkpoints import read_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, weights) of an adapter directory; FileNotFoundError naming what is missing."""
    p = Path(os.fspath(path)).expanduser()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (p / name).is_file():
            raise FileNotFoundError(f"LoRA adapter {str(p)!r}: missing {name}")
    try:
        with open(p / ADAPTER_CONFIG) as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p / ADAPTER_CONFIG}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p / ADAPTER_CONFIG}: must be a JSON object, got {type(cfg).__name__}")
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise ValueError(f"LoRA adapter {str(p)!r}: {ADAPTER_CONFIG} has no {key!r}")
    return cfg, read_safetensors(p / ADAPTER_WEIGHTS)


@torch.no_grad()
def merge_lora(model: torch.nn.Module, path, scale: float = 1.0) -> list[str]:
    """Add the adapter at `path` into `model`'s weights in place (times `scale`); returns the merged modules.

    Every adapter module must exist in the model with a matching shape, else ValueError naming it.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"`lora_scale` must be a finite number, got {scale!r}")
    cfg, weights = read_adapter(path)
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA adapter {os.fspath(path)!r}: `r` (the rank) must be an integer >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"LoRA adapter {os.fspath(path)!r}: `lora_alpha` must be a finite number, got {alpha!r}")
    factor = scale * float(alpha) / float(r)
    modules = dict(model.named_modules())
    names = sorted({k[: -len(".lora_A.weight")] for k in weights if k.endswith(".lora_A.weight")})
    if not names:
        raise ValueError(f"LoRA adapter {os.fspath(path)!r} has no `*.lora_A.weight` tensors")
    for name in names:
        a, b = weights.get(f"{name}.lora_A.weight"), weights.get(f"{name}.lora_B.weight")
        if b is None:
            raise ValueError(f"LoRA adapter: {name}.lora_B.weight is missing")
        target = modules.get(name)
        if target is None or not isinstance(getattr(target, "weight", None), torch.Tensor):
            raise ValueError(f"LoRA adapter module {name!r} is not a layer of the model")
        w = target.weight
        if (b.shape[0], a.shape[1]) != tuple(w.shape) or a.shape[0] != b.shape[1]:
            raise ValueError(f"LoRA adapter {name!r}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit the "
                             f"weight {tuple(w.shape)}")
        w.add_((b.float() @ a.float() * factor).to(w.dtype, copy=False).to(w.device))
    return names
