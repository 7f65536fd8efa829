"""Classifier-free guidance (CFG) on velocity functions.

:func:`cfg_velocity` turns a *doubled-batch* model function into a guided ``velocity_fn(x, t)`` for the solvers:

* ``model_fn(xx, tt) -> out`` receives ``xx = cat([x, x])`` and ``tt = cat([t, t])`` (2B samples) and returns the
  velocities for the doubled batch, rows ``[:B]`` conditional, rows ``[B:]`` unconditional (the caller's closure
  pairs them with the caption features / the empty caption, as the official ``forward_with_cfg`` does);
* the guided ``velocity_fn(x, t)`` takes the B samples being sampled and returns B guided velocities.
"""
from __future__ import annotations

import math
import operator
from typing import Callable, Optional

import torch

import lumina_kernels

__all__ = ["cfg_velocity", "cfg_combine"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(cfg_scale, channels, renorm, truncation):
    if isinstance(cfg_scale, bool):
        raise ValueError(f"`cfg_scale` must be a real number >= 0, got {cfg_scale!r}")
    try:
        cfg = float(cfg_scale)
    except (TypeError, ValueError):
        raise ValueError(f"`cfg_scale` must be a real number >= 0, got {cfg_scale!r}") from None
    if not math.isfinite(cfg) or cfg < 0:
        raise ValueError(f"`cfg_scale` must be a finite real number >= 0, got {cfg_scale!r}")
    if channels is not None:
        try:
            if isinstance(channels, bool):
                raise TypeError
            channels = operator.index(channels)
        except TypeError:
            raise ValueError(f"`channels` must be None or an integer >= 1, got {channels!r}") from None
        if channels < 1:
            raise ValueError(f"`channels` must be None or an integer >= 1, got {channels}")
    if renorm is not None:
        try:
            renorm = float(renorm)
        except (TypeError, ValueError):
            raise ValueError(f"`renorm` must be None or a real number > 0, got {renorm!r}") from None
        if not math.isfinite(renorm) or renorm <= 0:
            raise ValueError(f"`renorm` must be None (off) or a finite real number > 0, got {renorm!r}")
    if truncation is not None:
        try:
            truncation = float(truncation)
        except (TypeError, ValueError):
            raise ValueError(f"`truncation` must be None or a time in [0, 1], got {truncation!r}") from None
        if not 0.0 <= truncation <= 1.0:
            raise ValueError(f"`truncation` must be None (off) or a time in [0, 1], got {truncation!r}")
    return cfg, channels, renorm, truncation


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float, *, channels: Optional[int] = None,
                renorm: Optional[float] = None) -> torch.Tensor:
    """The guided velocity from the two halves (no truncation; see :func:`cfg_velocity` for the formulas).

    Computed in float32 when the inputs are bfloat16 / float16 (and returned in float32), else in their dtype. One
    fused pass of :func:`lumina_kernels.cfg_combine` (two with ``renorm``; the C++ / CUDA kernel, or its PyTorch
    reference where none applies), which reads ``out[:B]`` / ``out[B:]`` views of a doubled-batch output in place.
    """
    cfg, channels, renorm, _ = _check(cfg_scale, channels, renorm, None)
    if cond.shape != uncond.shape:
        raise ValueError(f"`cond` and `uncond` must have the same shape, got {tuple(cond.shape)} and "
                         f"{tuple(uncond.shape)}")
    if channels is not None and cond.dim() < 2:
        raise ValueError(f"`channels` needs a channel dimension (dim 1), got shape {tuple(cond.shape)}")
    return lumina_kernels.cfg_combine(cond, uncond, cfg, channels=channels, renorm=renorm)


def cfg_velocity(model_fn: VelocityFn, cfg_scale: float, *, channels: Optional[int] = None,
                 renorm: Optional[float] = None, truncation: Optional[float] = None,
                 cond_fn: Optional[VelocityFn] = None) -> VelocityFn:
    """Wrap a doubled-batch ``model_fn`` into a guided ``velocity_fn(x, t)`` (x: B samples, t: shape (B,)).

    With ``cond, uncond = model_fn(cat([x, x]), cat([t, t])).chunk(2)``:

    * default: ``v = uncond + cfg_scale * (cond - uncond)`` on every element. ``cfg_scale`` must be a finite
      number >= 0 (0: unconditional only; 1: conditional only; the demo uses 4.0). Negative scales (guiding
      *away* from the caption) are rejected with a ``ValueError`` as almost certainly a mistake.
    * ``channels=k``: the official Lumina-Next / DiT quirk, for exact reproduction: only channels ``[:k]`` of dim 1
      are guided, the rest keep the *conditional* velocity: ``v[:, :k] = uncond[:, :k] + cfg (cond - uncond)[:, :k]``,
      ``v[:, k:] = cond[:, k:]``. The official text-to-image code uses ``k = 3`` on its 4-channel latents.
      ``k >= C`` is plain CFG.
    * ``renorm=r`` (Lumina-Image-2.0 renormalised CFG): per sample, with norms over all dims except the batch,
      if ``||v|| > r * ||cond||`` then ``v *= r * ||cond|| / ||v||`` (so ``||v|| <= r ||cond||``); applied after
      the channel rule, to the whole velocity. Lumina-Image-2.0 uses ``r = 1``.
    * ``truncation=tau`` (CFG truncation, a time in [0, 1]): guidance is applied only while ``t < tau``; for
      ``t >= tau`` (late, near data) the velocity is the conditional one, ``v = cond``. Then, if ``cond_fn(x, t)``
      is given, only it is called (half the work); otherwise ``model_fn`` is still called on the doubled batch
      and its conditional half is returned. The test reads ``t[0] >= tau`` in t's dtype (as the official code
      does, so ``tau = 0.7`` switches at the float32 grid point 0.7) and syncs with the host on GPU.

    For bfloat16 / float16 model outputs the guidance arithmetic is done in float32, and the velocity is returned
    in float32 (the solvers accumulate in float32 for these dtypes anyway). Raises ``ValueError`` naming the
    argument for a bad ``cfg_scale``, ``channels``, ``renorm`` or ``truncation``.
    """
    if not callable(model_fn):
        raise ValueError(f"`model_fn` must be callable, got {type(model_fn).__name__}")
    if cond_fn is not None and not callable(cond_fn):
        raise ValueError(f"`cond_fn` must be None or callable, got {type(cond_fn).__name__}")
    cfg, channels, renorm, truncation = _check(cfg_scale, channels, renorm, truncation)

    def velocity_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if truncation is not None and bool(t.reshape(-1)[0] >= truncation):  # in t's dtype, like the official code
            if cond_fn is not None:
                return cond_fn(x, t)
            return model_fn(torch.cat([x, x]), torch.cat([t, t]))[:b]
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]))
        if out.shape[0] != 2 * b:
            raise ValueError(f"`model_fn` must return 2 * batch = {2 * b} rows [cond, uncond], got {out.shape[0]}")
        return cfg_combine(out[:b], out[b:], cfg, channels=channels, renorm=renorm)

    velocity_fn.cfg_scale = cfg
    return velocity_fn
