"""LoRA for training through peft: inject adapters, save them alone, read them back for resume.

The saved adapter (``adapter_config.json`` + ``adapter_model.safetensors``, peft's key names) is merged at load
time by :func:`lumina.models.lora.merge_lora` (``lumina.generate(..., lora=path)``), which needs no peft.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..models.checkpoints import read_safetensors
from ..models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

ADAPTER_RAW_WEIGHTS = "adapter_model_raw.safetensors"  # the non-EMA adapter, for resume
_ADAPTER = "default"  # peft's adapter name inside the model


def add_lora(model: torch.nn.Module, cfg) -> None:
    """Inject LoRA layers (peft) into `model` on `cfg.target_modules`; only the adapters stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        from .config import ConfigError

        raise ConfigError(f"`lora.target_modules`: {missing} match no module of the model")
    inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                       target_modules=list(cfg.target_modules)), model, adapter_name=_ADAPTER)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)


def _external(state: dict) -> dict:
    """Adapter tensors only, peft's saved names (`.lora_A.default.weight` -> `.lora_A.weight`)."""
    return {k.replace(f".{_ADAPTER}.", "."): v.contiguous() for k, v in state.items() if "lora_" in k}


def _internal(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        for part in ("lora_A", "lora_B"):
            k = k.replace(f".{part}.weight", f".{part}.{_ADAPTER}.weight")
        out[k] = v
    return out


def save_adapter(model_state: dict, ema_state: dict, cfg, path: Path) -> None:
    """Write the adapter (the EMA weights as adapter_model.safetensors, what generation uses; the raw ones beside
    them for resume) and its config into `path`."""
    save_file(_external(ema_state), str(path / ADAPTER_WEIGHTS))
    save_file(_external(model_state), str(path / ADAPTER_RAW_WEIGHTS))
    with open(path / ADAPTER_CONFIG, "w") as f:
        json.dump({"r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
                   "target_modules": list(cfg.target_modules), "peft_type": "LORA"}, f, indent=2)


def load_adapter_states(path: Path) -> tuple[dict, dict]:
    """(raw, ema) adapter states in the model's internal names, from a checkpoint written by save_adapter."""
    raw = read_safetensors(path / ADAPTER_RAW_WEIGHTS)
    ema = read_safetensors(path / ADAPTER_WEIGHTS)
    return _internal(raw), _internal(ema)


def copy_adapter(ckpt: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        shutil.copy2(ckpt / name, dst / name)
