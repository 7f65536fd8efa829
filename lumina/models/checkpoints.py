"""Checkpoint io for NextDiT: the native format (every modality) and, for the text-to-image family, official
Alpha-VLLM directories and diffusers transformer directories (import and export).

Native directory (the default of ``save_pretrained``)::

    config.json                  {"family": "lumina-next-dit", "format_version": 1, "modality": ..., "config": {...}}
    model.safetensors            weights (the model's own parameter names)
    model_ema.safetensors        EMA weights (optional; loaded by default when present)

    A pipeline export that deliberately ships the last (non-EMA) weights records ``"weights": "last"`` in
    config.json: its model.safetensors then loads without the "no EMA weights" warning.

Official directory (Lumina-Next-T2I / -SFT)::

    model_args.pth                          argparse.Namespace (model preset name, qk_norm, image_size, ...)
    consolidated.00-of-01.safetensors       weights (training writes .pth)
    consolidated_ema.00-of-01.safetensors   EMA weights (what the samplers use by default)

diffusers directory (a ``LuminaNextDiT2DModel``; a pipeline root with a ``transformer/`` folder works too)::

    config.json
    diffusion_pytorch_model.safetensors     or sharded: ...-0000N-of-0000M.safetensors + .safetensors.index.json

Nothing here executes pickled code: weights are read with safetensors, ``.pth`` files with
``torch.load(weights_only=True)`` and an explicit allow-list (``argparse.Namespace`` only).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import warnings
from dataclasses import fields, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import LEGACY_FIELDS, PRESETS, NextDiTConfig

FAMILY = "lumina-next-dit"
NATIVE_VERSION = 1
NATIVE_CONFIG = "config.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_EMA_WEIGHTS = "model_ema.safetensors"
FORMATS = ("native", "official", "diffusers")
OFFICIAL_ARGS = "model_args.pth"
OFFICIAL_WEIGHTS = ("consolidated.00-of-01.safetensors", "consolidated.00-of-01.pth")
OFFICIAL_EMA_WEIGHTS = ("consolidated_ema.00-of-01.safetensors", "consolidated_ema.00-of-01.pth")
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIFFUSERS_CLASS = "LuminaNextDiT2DModel"


class CheckpointError(ValueError):
    """A checkpoint directory or state dict that does not fit the model (names what is wrong)."""


# ------------------------------------------------------------------------------------------------
# key mapping: official <-> diffusers (lumina-next-facts §2)
# ------------------------------------------------------------------------------------------------
# (official suffix, diffusers suffix) for keys inside `layers.N.`
_LAYER_KEYS = [
    ("attention.gate", "gate"),
    ("attention.wq.weight", "attn1.to_q.weight"),
    ("attention.wk.weight", "attn1.to_k.weight"),
    ("attention.wv.weight", "attn1.to_v.weight"),
    ("attention.q_norm.weight", "attn1.norm_q.weight"),
    ("attention.q_norm.bias", "attn1.norm_q.bias"),
    ("attention.k_norm.weight", "attn1.norm_k.weight"),
    ("attention.k_norm.bias", "attn1.norm_k.bias"),
    ("attention.wk_y.weight", "attn2.to_k.weight"),
    ("attention.wv_y.weight", "attn2.to_v.weight"),
    ("attention.ky_norm.weight", "attn2.norm_k.weight"),
    ("attention.ky_norm.bias", "attn2.norm_k.bias"),
    ("attention.wo.weight", "attn2.to_out.0.weight"),
    ("feed_forward.w1.weight", "feed_forward.linear_1.weight"),
    ("feed_forward.w2.weight", "feed_forward.linear_2.weight"),
    ("feed_forward.w3.weight", "feed_forward.linear_3.weight"),
    ("adaLN_modulation.1.weight", "norm1.linear.weight"),
    ("adaLN_modulation.1.bias", "norm1.linear.bias"),
    ("attention_norm1.weight", "norm1.norm.weight"),
    ("attention_norm2.weight", "norm2.weight"),
    ("ffn_norm1.weight", "ffn_norm1.weight"),
    ("ffn_norm2.weight", "ffn_norm2.weight"),
    ("attention_y_norm.weight", "norm1_context.weight"),
]
# diffusers stores the shared query projection and its norm a second time for the cross-attention
_LAYER_DUPLICATES = [
    ("attention.wq.weight", "attn2.to_q.weight"),
    ("attention.q_norm.weight", "attn2.norm_q.weight"),
    ("attention.q_norm.bias", "attn2.norm_q.bias"),
]
_TOP_KEYS = [
    ("x_embedder.weight", "patch_embedder.proj.weight"),
    ("x_embedder.bias", "patch_embedder.proj.bias"),
    ("t_embedder.mlp.0.weight", "time_caption_embed.timestep_embedder.linear_1.weight"),
    ("t_embedder.mlp.0.bias", "time_caption_embed.timestep_embedder.linear_1.bias"),
    ("t_embedder.mlp.2.weight", "time_caption_embed.timestep_embedder.linear_2.weight"),
    ("t_embedder.mlp.2.bias", "time_caption_embed.timestep_embedder.linear_2.bias"),
    ("cap_embedder.0.weight", "time_caption_embed.caption_embedder.0.weight"),
    ("cap_embedder.0.bias", "time_caption_embed.caption_embedder.0.bias"),
    ("cap_embedder.1.weight", "time_caption_embed.caption_embedder.1.weight"),
    ("cap_embedder.1.bias", "time_caption_embed.caption_embedder.1.bias"),
    ("final_layer.adaLN_modulation.1.weight", "norm_out.linear_1.weight"),
    ("final_layer.adaLN_modulation.1.bias", "norm_out.linear_1.bias"),
    ("final_layer.linear.weight", "norm_out.linear_2.weight"),
    ("final_layer.linear.bias", "norm_out.linear_2.bias"),
    ("pad_token", "pad_token"),
]
_TO_DIFFUSERS = {**dict(_TOP_KEYS)}
_FROM_DIFFUSERS = {d: o for o, d in _TOP_KEYS}
_LAYER_TO_DIFFUSERS = dict(_LAYER_KEYS)
_LAYER_FROM_DIFFUSERS = {d: o for o, d in _LAYER_KEYS}
_LAYER_DUP_FROM_DIFFUSERS = {d: o for o, d in _LAYER_DUPLICATES}
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")


def official_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official (lumina) state dict to diffusers' LuminaNextDiT2DModel names (query stored twice)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _LAYER_RE.match(key)
        if m:
            n, rest = m.groups()
            if rest not in _LAYER_TO_DIFFUSERS:
                raise CheckpointError(f"no diffusers name for state-dict key {key!r}")
            out[f"layers.{n}.{_LAYER_TO_DIFFUSERS[rest]}"] = value
            for off, dif in _LAYER_DUPLICATES:
                if rest == off:
                    out[f"layers.{n}.{dif}"] = value
        elif key in _TO_DIFFUSERS:
            out[_TO_DIFFUSERS[key]] = value
        else:
            raise CheckpointError(f"no diffusers name for state-dict key {key!r}")
    return out


def diffusers_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers LuminaNextDiT2DModel state dict to official names.

    diffusers keeps the cross-attention query (``attn2.to_q``, ``attn2.norm_q``) as a copy of the self-attention
    one; the official model has one shared projection, so a copy that differs is refused rather than dropped.
    Keys with no official name are kept unchanged, so that the strict load reports them as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    duplicates: list[tuple[str, str, torch.Tensor]] = []
    for key, value in state.items():
        m = _LAYER_RE.match(key)
        if m:
            n, rest = m.groups()
            if rest in _LAYER_DUP_FROM_DIFFUSERS:
                duplicates.append((key, f"layers.{n}.{_LAYER_DUP_FROM_DIFFUSERS[rest]}", value))
                continue
            out[f"layers.{n}.{_LAYER_FROM_DIFFUSERS[rest]}" if rest in _LAYER_FROM_DIFFUSERS else key] = value
        else:
            out[_FROM_DIFFUSERS.get(key, key)] = value
    for dkey, okey, value in duplicates:
        if okey in out and (out[okey].shape != value.shape or not torch.equal(out[okey], value)):
            raise CheckpointError(
                f"diffusers key {dkey!r} differs from the self-attention copy it should equal ({okey!r} in official "
                "names): Next-DiT shares one query projection and query norm between self- and cross-attention"
            )
        out.setdefault(okey, value)
    return out


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------
def _check_t2i(cfg: NextDiTConfig, fmt: str) -> None:
    """The official and diffusers formats hold the text-to-image family only."""
    two_equal = cfg.rope_axis_dims is None or (len(cfg.rope_axis_dims) == 2 and len(set(cfg.rope_axis_dims)) == 1)
    if cfg.modality != "image" or cfg.context_dim is None or not two_equal:
        raise CheckpointError(f"the {fmt!r} format holds text-to-image models (modality 'image', a context, 2 equal "
                              f"RoPE axes); this model has modality={cfg.modality!r}, context_dim={cfg.context_dim}, "
                              f"rope_axis_dims={cfg.rope_axis_dims}: save it with format='native'")


def config_to_diffusers(cfg: NextDiTConfig) -> dict:
    _check_t2i(cfg, "diffusers")
    return {
        "_class_name": DIFFUSERS_CLASS,
        "_diffusers_version": "0.42.1",
        "sample_size": cfg.sample_size,
        "patch_size": cfg.patch_size,
        "in_channels": cfg.in_channels,
        "hidden_size": cfg.dim,
        "num_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_kv_heads": cfg.kv_heads,
        "multiple_of": cfg.multiple_of,
        "ffn_dim_multiplier": cfg.ffn_dim_multiplier,
        "norm_eps": cfg.norm_eps,
        "learn_sigma": cfg.learn_sigma,
        "qk_norm": cfg.qk_norm,
        "cross_attention_dim": cfg.context_dim,
        "scaling_factor": 1.0,
    }


def config_from_diffusers(d: dict, path: Path) -> NextDiTConfig:
    cls = d.get("_class_name", DIFFUSERS_CLASS)
    if cls != DIFFUSERS_CLASS:
        raise CheckpointError(f"{path}: config.json describes a {cls!r}, expected a {DIFFUSERS_CLASS!r}")
    try:
        return NextDiTConfig(
            sample_size=d.get("sample_size", 128), patch_size=d.get("patch_size", 2),
            in_channels=d.get("in_channels", 4), dim=d.get("hidden_size", 2304), n_layers=d.get("num_layers", 32),
            n_heads=d.get("num_attention_heads", 32), n_kv_heads=d.get("num_kv_heads"),
            multiple_of=d.get("multiple_of", 256), ffn_dim_multiplier=d.get("ffn_dim_multiplier"),
            norm_eps=d.get("norm_eps", 1e-5), learn_sigma=d.get("learn_sigma", True),
            qk_norm=d.get("qk_norm", True), context_dim=d.get("cross_attention_dim", 2048),
            name=d.get("_name_or_path", "diffusers"),
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: config.json does not describe a valid Next-DiT: {e}") from None


def config_to_official_args(cfg: NextDiTConfig) -> argparse.Namespace:
    """The official model_args Namespace, plus `lumina_config` (plain dict) so custom configs round-trip."""
    _check_t2i(cfg, "official")
    model = cfg.name if cfg.name in PRESETS else "custom"
    return argparse.Namespace(model=model, qk_norm=cfg.qk_norm, image_size=cfg.sample_size * 8, vae="sdxl",
                              lumina_config=cfg.to_dict())


def config_from_official_args(args, path: Path) -> NextDiTConfig:
    if not isinstance(args, (argparse.Namespace, dict)):
        raise CheckpointError(f"{path}: expected an argparse.Namespace or dict, got {type(args).__name__}")
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    if isinstance(a.get("lumina_config"), dict):
        known = {f.name for f in fields(NextDiTConfig)} | set(LEGACY_FIELDS)
        try:
            return NextDiTConfig.from_dict({k: v for k, v in a["lumina_config"].items() if k in known})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: invalid lumina_config: {e}") from None
    model = a.get("model")
    if model not in PRESETS:
        raise CheckpointError(f"{path}: model {model!r} is not a known NextDiT preset; known: {sorted(PRESETS)}")
    overrides = {}
    if "qk_norm" in a:
        overrides["qk_norm"] = bool(a["qk_norm"])
    if isinstance(a.get("image_size"), int):
        overrides["sample_size"] = a["image_size"] // 8
    return replace(PRESETS[model], **overrides)


# ------------------------------------------------------------------------------------------------
# file reading
# ------------------------------------------------------------------------------------------------
def read_safetensors(file) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; CheckpointError naming the file when it is truncated or not safetensors."""
    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise
    except Exception as e:  # SafetensorError (a bad header, a cut file), OSError
        raise CheckpointError(f"{file}: not a readable safetensors file ({' '.join(str(e).split())})") from None


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return read_safetensors(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal or a corrupt file
        raise CheckpointError(f"{file}: cannot be read as a weights-only torch checkpoint: {e}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a dict of tensors")
    return state


def _read_official_args(path: Path):
    file = path / OFFICIAL_ARGS
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{file}: cannot be read with weights_only=True (only argparse.Namespace and plain "
                                  f"values are allowed): {e}") from None


def _read_json(file: Path) -> dict:
    try:
        with open(file) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable JSON file: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


def _is_native(file: Path) -> bool:
    return _read_json(file).get("family") == FAMILY


def _resolve_dir(path) -> tuple[Path, str]:
    """Find the checkpoint layout under `path`: (directory, 'native' | 'official' | 'diffusers')."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint directory {str(p)!r} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint path {str(p)!r} must be a directory")
    for d in (p, p / "transformer"):  # a checkpoint, or a pipeline root holding one in transformer/
        if (d / OFFICIAL_ARGS).is_file():
            return d, "official"
        if (d / NATIVE_CONFIG).is_file():
            return d, "native" if _is_native(d / NATIVE_CONFIG) else "diffusers"
    found = sorted(x.name for x in p.iterdir())[:20]
    raise FileNotFoundError(
        f"{str(p)!r} is not a NextDiT checkpoint: expected a native directory ({NATIVE_CONFIG} with family "
        f"{FAMILY!r} + {NATIVE_WEIGHTS}), an official one ({OFFICIAL_ARGS} + "
        f"{OFFICIAL_EMA_WEIGHTS[0]} or {OFFICIAL_WEIGHTS[0]}) or a diffusers one ({DIFFUSERS_CONFIG} + "
        f"{DIFFUSERS_WEIGHTS}, or transformer/{DIFFUSERS_CONFIG}); found {found}"
    )


def native_config(d: dict, file: Path) -> NextDiTConfig:
    """The config of a native config.json (validated; CheckpointError naming the file)."""
    version = d.get("format_version")
    if version != NATIVE_VERSION:
        raise CheckpointError(f"{file}: native format_version {version!r} is not supported (expected {NATIVE_VERSION})")
    if not isinstance(d.get("config"), dict):
        raise CheckpointError(f"{file}: no `config` object")
    try:
        cfg = NextDiTConfig.from_dict(d["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{file}: invalid config: {e}") from None
    if d.get("modality", cfg.modality) != cfg.modality:
        raise CheckpointError(f"{file}: `modality` {d['modality']!r} disagrees with the config's {cfg.modality!r}")
    return cfg


def _read_native(p: Path, ema: bool) -> tuple[NextDiTConfig, dict[str, torch.Tensor]]:
    meta = _read_json(p / NATIVE_CONFIG)
    cfg = native_config(meta, p / NATIVE_CONFIG)
    order = (NATIVE_EMA_WEIGHTS, NATIVE_WEIGHTS) if ema else (NATIVE_WEIGHTS,)
    file = next((p / n for n in order if (p / n).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"{str(p)!r}: no weights file; expected one of {list(order)}")
    if ema and file.name == NATIVE_WEIGHTS and meta.get("weights") != "last":  # "last": chosen at export
        warnings.warn(f"{p}: no EMA weights ({NATIVE_EMA_WEIGHTS}); loading {file.name}", stacklevel=4)
    return cfg, read_safetensors(file)


def read_checkpoint(path, ema: bool = True) -> tuple[NextDiTConfig, dict[str, torch.Tensor], str]:
    """Read (config, state dict in the model's names, format) from a native, official or diffusers directory."""
    p, fmt = _resolve_dir(path)
    if fmt == "native":
        cfg, state = _read_native(p, ema)
        return cfg, state, fmt
    if fmt == "official":
        cfg = config_from_official_args(_read_official_args(p), p / OFFICIAL_ARGS)
        order = (OFFICIAL_EMA_WEIGHTS + OFFICIAL_WEIGHTS) if ema else OFFICIAL_WEIGHTS
        file = next((p / n for n in order if (p / n).is_file()), None)
        if file is None:
            raise FileNotFoundError(f"{str(p)!r}: no weights file; expected one of {list(order)}")
        if ema and file.name in OFFICIAL_WEIGHTS:
            warnings.warn(f"{p}: no EMA weights ({OFFICIAL_EMA_WEIGHTS[0]}); loading {file.name}", stacklevel=4)
        return cfg, _read_weights(file), fmt
    cfg = config_from_diffusers(_read_json(p / DIFFUSERS_CONFIG), p / DIFFUSERS_CONFIG)
    if (p / DIFFUSERS_INDEX).is_file():
        index = _read_json(p / DIFFUSERS_INDEX)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{p / DIFFUSERS_INDEX}: `weight_map` must map parameter names to shard files")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(p)!r}: shards listed in {DIFFUSERS_INDEX} are missing: {missing}")
        state = {}
        for s in shards:
            state.update(read_safetensors(p / s))
    elif (p / DIFFUSERS_WEIGHTS).is_file():
        state = read_safetensors(p / DIFFUSERS_WEIGHTS)
    else:
        raise FileNotFoundError(f"{str(p)!r}: no weights; expected {DIFFUSERS_WEIGHTS} or {DIFFUSERS_INDEX}")
    return cfg, diffusers_to_official(state), fmt


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in own if k in state and state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def fmt(name, items):
            if not items:
                return ""
            more = f" ... and {len(items) - 12} more" if len(items) > 12 else ""
            return f"\n  {name} ({len(items)}): " + ", ".join(items[:12]) + more
        raise CheckpointError(f"{source} does not fit the model:" + fmt("missing keys", missing)
                              + fmt("unexpected keys", unexpected) + fmt("mis-shaped keys", shapes))


def load_pretrained(cls, path, ema: bool = True, dtype: torch.dtype | None = None, device=None):
    """Build `cls(config)` from a native, official or diffusers directory and load its weights (EMA by default)."""
    cfg, state, fmt = read_checkpoint(path, ema=ema)
    with torch.device("meta"):
        model = cls(cfg)
    check_state_dict(model, state, f"{fmt} checkpoint {os.fspath(path)!r}")
    model.load_state_dict(state, strict=True, assign=True)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_pretrained(model, path, format: str = "native", ema_state: dict | None = None,
                    max_shard_size: int | None = None) -> None:
    """Write `model` as a native directory (every modality; with EMA weights if given), an official directory
    (with EMA weights if given) or a diffusers transformer directory (text-to-image only).

    diffusers: `max_shard_size` (bytes) splits the weights into shards with an index, as diffusers does.
    """
    if ema_state is not None:
        check_state_dict(model, ema_state, "`ema_state`")
    save_state(model.config, model.state_dict(), path, format=format, ema_state=ema_state,
               max_shard_size=max_shard_size)


def save_state(config: NextDiTConfig, state: dict | None, path, format: str = "native", ema_state: dict | None = None,
               max_shard_size: int | None = None, last_only: bool = False) -> None:
    """:func:`save_pretrained` from a config and state dicts (the model's names), without a model instance.
    ``state`` None (native format, with ``ema_state``): the EMA weights alone, what a pipeline samples with.
    ``last_only`` (native, ``state`` without ``ema_state``): the export chose the last weights over the EMA, recorded
    as ``"weights": "last"`` so that loading them does not warn about missing EMA weights."""
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}")
    if last_only and (format != "native" or state is None or ema_state is not None):
        raise ValueError("`last_only` needs format='native', `state` and no `ema_state`")
    if state is None and (format != "native" or ema_state is None):
        raise ValueError("`state` None (the EMA weights alone) needs format='native' and `ema_state`")
    if format != "native":
        _check_t2i(config, format)
    p = Path(os.fspath(path)).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    state = None if state is None else _contiguous(state)
    if format == "native":
        meta = {"family": FAMILY, "format_version": NATIVE_VERSION, "modality": config.modality,
                "config": config.to_dict()}
        if last_only:
            meta["weights"] = "last"
        with open(p / NATIVE_CONFIG, "w") as f:
            json.dump(meta, f, indent=2)
        if state is not None:
            save_file(state, str(p / NATIVE_WEIGHTS), metadata={"format": "pt"})
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(p / NATIVE_EMA_WEIGHTS), metadata={"format": "pt"})
        return
    if format == "official":
        torch.save(config_to_official_args(config), p / OFFICIAL_ARGS)
        save_file(state, str(p / OFFICIAL_WEIGHTS[0]))
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(p / OFFICIAL_EMA_WEIGHTS[0]))
        return
    if ema_state is not None:
        state = _contiguous(ema_state)  # diffusers directories hold the weights to sample with
    dstate = official_to_diffusers(state)
    dstate = {k: v.clone() if k.endswith(("attn2.to_q.weight", "attn2.norm_q.weight", "attn2.norm_q.bias")) else v
              for k, v in dstate.items()}  # safetensors refuses shared storage
    with open(p / DIFFUSERS_CONFIG, "w") as f:
        json.dump(config_to_diffusers(config), f, indent=2)
    if max_shard_size is None:
        save_file(dstate, str(p / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in dstate.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(p / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in dstate.values())
    with open(p / DIFFUSERS_INDEX, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
