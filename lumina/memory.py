"""Memory checked before allocating: rough upper estimates of what a generation or a training step needs, compared
with what the device has free, so a request far beyond it is refused by name instead of being killed (CPU) or failing
at one refused allocation deep inside (GPU).

The estimates count the large buffers (weights, latents and solver states, the widest activations of a block, what
autograd keeps, optimizer and EMA state, decoded images) with margins, not every byte; a request is refused when its
estimate exceeds 90% of the free memory: RAM (``MemAvailable``) on the CPU, ``torch.cuda.mem_get_info`` on a GPU.
"""
from __future__ import annotations

import math
import os

import torch

from .models.config import NextDiTConfig

__all__ = ["MemoryEstimateError", "free_bytes", "check_fits", "generation_bytes", "training_bytes", "render_bytes",
           "fmt_bytes"]

FRACTION = 0.9


class MemoryEstimateError(ValueError):
    """The request's memory estimate exceeds what the device has free; the message names the size and both
    figures."""


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free bytes, else the RAM the kernel reports as available."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 1 << 62


def check_fits(need: int, device, what: str) -> None:
    """MemoryEstimateError when ``need`` bytes exceed 90% of ``device``'s free memory."""
    free = free_bytes(device)
    if need > FRACTION * free:
        raise MemoryEstimateError(f"{what} needs about {fmt_bytes(need)} (estimated) but {torch.device(device)} has "
                                  f"{fmt_bytes(free)} free; refused above {int(FRACTION * 100)}% of it")


def _block_activations(cfg: NextDiTConfig, batch: int, tokens: int, ctx: int, elt: int) -> int:
    """The widest moment of one block: the residual stream, q/k/v/out, the SwiGLU hidden pair, the context's k/v."""
    kv = cfg.kv_heads * cfg.head_dim
    per_token = 4 * cfg.dim + 2 * kv + 3 * cfg.ffn_hidden
    return batch * (tokens * per_token + ctx * 2 * kv) * elt


def generation_bytes(cfg: NextDiTConfig, batch: int, latent_numel: int, tokens: int, ctx_tokens: int,
                     dtype: torch.dtype, sample_numel: int) -> int:
    """One sampling call: weights are loaded already; the doubled CFG batch's block activations, the latents and
    solver states (fp32, up to 7 for dopri5), the decoded samples and a codec's full-resolution activations."""
    elt = torch.empty((), dtype=dtype).element_size()
    act = _block_activations(cfg, 2 * batch, tokens, ctx_tokens, elt) * 2  # input and output of the block in flight
    states = 8 * batch * latent_numel * 4
    decode = batch * sample_numel * 4 * 48  # a VAE decoder's widest full-resolution activation (128 ch x 3 / 8)
    return act + states + decode


def training_bytes(cfg: NextDiTConfig, batch: int, tokens: int, ctx_tokens: int, sample_numel: int,
                   precision: str, gradient_checkpointing: bool, trainable: int | None = None) -> int:
    """One training step: fp32 weights, gradients, AdamW's two moments and the EMA (5 copies of what trains), the
    activations autograd keeps (every block's, or one block plus each block's input under checkpointing), and the
    batch's samples."""
    n_params = trainable if trainable is not None else _param_count(cfg)
    elt = 2 if precision == "bf16" else 4
    block = _block_activations(cfg, batch, tokens, ctx_tokens, elt) * 3  # saved for backward, with margins
    keep = cfg.n_layers * batch * tokens * cfg.dim * elt + block if gradient_checkpointing else cfg.n_layers * block
    return 5 * n_params * 4 + keep + 4 * batch * sample_numel * 4


def _param_count(cfg: NextDiTConfig) -> int:
    kv = cfg.kv_heads * cfg.head_dim
    per_layer = cfg.dim * (2 * cfg.dim + 2 * kv) + 3 * cfg.dim * cfg.ffn_hidden + 4 * cfg.dim * cfg.adaln_dim
    return cfg.n_layers * per_layer


def render_bytes(size: int, supersample: int = 4) -> int:
    """A synthetic shape image drawn at ``supersample`` x ``size`` (RGB) and its float copy."""
    return int(math.prod((size * supersample, size * supersample, 3))) * 5
