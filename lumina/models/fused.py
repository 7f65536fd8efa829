"""Several bias-free Linear layers that read the same input, computed as ONE GEMM (q/k/v; SwiGLU's w1/w3).

The official layers (``attention.wq``, ``wk``, ``wv``; ``feed_forward.w1``, ``w3``) stay the modules and their
Parameters stay the only copy of the weights that anything else sees: ``state_dict`` / ``load_state_dict``,
checkpoints, LoRA merging, the optimizer, EMA, DDP/FSDP, ``named_parameters``. The concatenated weight is derived:

* training (grad enabled and a weight requires grad): ``torch.cat`` of the weights, built per call, so autograd
  hands each official Parameter its own slice of the fused weight's gradient;
* otherwise (inference): built once and cached on the module, keyed on each weight's storage (``data_ptr``) and
  version counter (``_version``, bumped by every in-place write: ``load_state_dict``, ``copy_``, LoRA's ``add_``,
  optimizer steps). The cache holds a detached alias of each weight, so a freed weight's address cannot be reused
  by a new one while the key still names it; ``.to()`` / ``load_state_dict(assign=True)`` / ``p.data = ...``
  give new storage and rebuild the cache at the next call. Not seen: writes through ``p.data`` (``.data`` has its
  own version counter) -- call :func:`clear_fused_cache` after those.

CPU only: on a GPU the separate GEMMs are already large and the cache would cost memory (about 2.3 GB for the 2B
model in bf16), so CUDA tensors take the separate layers. Falls back to the separate layers (the unfused path,
bitwise today's) when the layers are not plain ``nn.Linear`` without bias (peft's LoRA layers), under
``torch.compile`` tracing, for inference tensors, or when off (the default, see ``FUSED_GEMM``):
``LUMINA_FUSED_GEMM=1`` in the environment, or ``lumina.models.fused.FUSED_GEMM = True`` at run time, turns it on. Under
torch.distributed (FSDP reshards and refills weights in place) the inference path concatenates per call instead of
caching. Cost: the cache is one extra copy of the fused weights (about 2/3 of a Next-DiT's parameters).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FUSED_GEMM", "fused_linear", "clear_fused_cache"]

# Off by default: on a quiet 2-core CPU machine (benchmarks/step_ab.py, interleaved rounds) the fused step was slower
# than the unfused one (per-round unfused / fused: median 0.92 at NextDiT_small, 0.98 at the 2B width with 2 layers):
# the split outputs' copies cost what the larger GEMM saves. ``LUMINA_FUSED_GEMM=1`` turns it on.
FUSED_GEMM = os.environ.get("LUMINA_FUSED_GEMM", "0").strip().lower() in ("1", "true", "on", "yes")
_CACHE_ATTR = "_lumina_fused_cache"


class _Cache:
    """One cached fused weight: the weights' aliases (keep their storage alive), versions, and the result."""

    __slots__ = ("aliases", "versions", "weight")

    def __init__(self, aliases, versions, weight):
        self.aliases, self.versions, self.weight = aliases, versions, weight

    def fresh(self, weights) -> bool:
        return all(a.data_ptr() == w.data_ptr() and a.dtype == w.dtype and a.shape == w.shape and v == w._version
                   for a, v, w in zip(self.aliases, self.versions, weights))

    def __deepcopy__(self, memo):  # a deep-copied module rebuilds its own
        return None

    def __reduce__(self):
        return (type(None), ())


def _fusable(layers) -> bool:
    return FUSED_GEMM and all(type(m) is nn.Linear and m.bias is None for m in layers)


def _weight(owner: nn.Module, key: str, weights: list[Tensor]) -> Tensor:
    """The row-concatenated weight, cached on `owner` under `key` (inference) or built per call."""
    if (torch.is_grad_enabled() and any(w.requires_grad for w in weights)) or (
            torch.distributed.is_available() and torch.distributed.is_initialized()):
        return torch.cat(weights)  # autograd splits the gradient back onto each official Parameter
    caches = owner.__dict__.get(_CACHE_ATTR)
    if caches is None:
        caches = owner.__dict__[_CACHE_ATTR] = {}
    c = caches.get(key)
    if c is None or not c.fresh(weights):
        caches[key] = None  # drop the old fused copy before building the new one
        with torch.no_grad():
            c = _Cache([w.detach() for w in weights], [w._version for w in weights], torch.cat(weights))
        caches[key] = c
    return c.weight


def fused_linear(owner: nn.Module, key: str, x: Tensor, layers) -> list[Tensor]:
    """[layer(x) for layer in layers], as one GEMM against their concatenated weight when possible.

    The outputs are views (slices of the last dim) of one (..., sum of out_features) tensor."""
    if (not _fusable(layers) or x.device.type != "cpu" or torch.compiler.is_compiling()
            or any(m.weight.is_inference() for m in layers)):
        return [m(x) for m in layers]
    weights = [m.weight for m in layers]
    return list(F.linear(x, _weight(owner, key, weights)).split([w.shape[0] for w in weights], dim=-1))


def clear_fused_cache(model: nn.Module) -> None:
    """Drop every cached fused weight under `model` (needed only after writes through ``param.data``)."""
    for m in model.modules():
        m.__dict__.pop(_CACHE_ATTR, None)
