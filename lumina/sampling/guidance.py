"""Classifier-free guidance (CFG) on velocity functions: ONE implementation, :class:`Guidance`, used by
:func:`cfg_velocity` and by the text-to-image pipeline.

* ``model_fn(xx, tt) -> out`` receives ``xx = cat([x, x])`` and ``tt = cat([t, t])`` (2B samples) and returns the
  velocities for the doubled batch, rows ``[:B]`` conditional, rows ``[B:]`` unconditional (the caller's closure
  pairs them with the caption features / the empty caption, as the official ``forward_with_cfg`` does);
* ``cond_fn(x, t)`` (optional): the conditional velocity of the B samples alone (half the work of ``model_fn``);
* the guided velocity takes the B samples being sampled and returns B velocities.

The one rule for ``scale == 1`` and truncation: a step is *guided* iff ``scale != 1`` and (no truncation, or
``t < truncation`` compared in t's dtype). An unguided step returns the conditional velocity exactly as the model
gives it: ``cond_fn(x, t)`` when given, else rows ``[:B]`` of the doubled call; no channel rule, no renorm, no float32
cast. The decision is made on the host from ``t_value`` (t's host value): pass it to stay CUDA-graph safe;
without it t is read back from the device once per step (only when truncation is on).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import lumina_kernels

__all__ = ["Guidance", "cfg_velocity", "cfg_combine"]

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


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance settings (checked on construction; hashable: a CUDA-graph cache key) and the one
    guided velocity :meth:`velocity`. Fields as :func:`cfg_velocity`: ``scale`` (``cfg_scale``), ``channels``,
    ``renorm``, ``truncation``; a bad value raises ``ValueError`` naming the argument."""

    scale: float = 1.0
    channels: Optional[int] = None
    renorm: Optional[float] = None
    truncation: Optional[float] = None

    def __post_init__(self):
        for name, value in zip(("scale", "channels", "renorm", "truncation"),
                               _check(self.scale, self.channels, self.renorm, self.truncation)):
            object.__setattr__(self, name, value)

    @property
    def guided(self) -> bool:
        """Whether any step is guided (then ``model_fn`` needs its unconditional half: the negative prompts)."""
        return self.scale != 1.0

    @property
    def needs_time(self) -> bool:
        """Whether :meth:`applies` depends on the time (guided, with truncation)."""
        return self.guided and self.truncation is not None

    def applies(self, t_value: Optional[float], dtype: torch.dtype = torch.float32) -> bool:
        """Host-side: is the step at time ``t_value`` guided? ``t < truncation`` is compared in ``dtype`` (t's
        dtype: as the official code, ``truncation = 0.7`` switches at the float32 grid point 0.7)."""
        if not self.needs_time:
            return self.guided
        if t_value is None:
            raise ValueError("Guidance.applies: CFG truncation needs the time `t_value`")
        return bool(torch.tensor(t_value, dtype=dtype) < torch.tensor(self.truncation, dtype=dtype))

    def velocity(self, model_fn: VelocityFn, x: torch.Tensor, t: torch.Tensor, t_value: Optional[float] = None,
                 cond_fn: Optional[VelocityFn] = None) -> torch.Tensor:
        """The velocity at (x, t) (see the module doc for ``model_fn`` / ``cond_fn`` and the rule). ``t_value``:
        t's host value; when None and truncation is on, ``t[0]`` is read back (a device sync: not in a CUDA graph).
        Guided steps: one fused :func:`lumina_kernels.cfg_combine` of the doubled call's two halves."""
        b = x.shape[0]
        if t_value is None and self.needs_time:
            t_value = float(t.reshape(-1)[0])
        if not self.applies(t_value, t.dtype):
            if cond_fn is not None:
                return cond_fn(x, t)
            return _rows(model_fn(torch.cat([x, x]), torch.cat([t, t])), b)[:b]
        out = _rows(model_fn(torch.cat([x, x]), torch.cat([t, t])), b)
        return lumina_kernels.cfg_combine(out[:b], out[b:], self.scale, channels=self.channels, renorm=self.renorm)


def _rows(out: torch.Tensor, b: int) -> torch.Tensor:
    if out.shape[0] != 2 * b:
        raise ValueError(f"`model_fn` must return 2 * batch = {2 * b} rows [cond, uncond], got {out.shape[0]}")
    return out


def cfg_velocity(model_fn: VelocityFn, cfg_scale: float, *, channels: Optional[int] = None,
                 renorm: Optional[float] = None, truncation: Optional[float] = None,
                 cond_fn: Optional[VelocityFn] = None) -> VelocityFn:
    """Wrap a doubled-batch ``model_fn`` into a guided ``velocity_fn(x, t, t_value=None)`` (x: B samples, t: shape
    (B,); ``t_value``: optional host value of t, see below). A thin wrapper of :meth:`Guidance.velocity`.

    With ``cond, uncond = model_fn(cat([x, x]), cat([t, t])).chunk(2)``:

    * default: ``v = uncond + cfg_scale * (cond - uncond)`` on every element. ``cfg_scale`` must be a finite
      number >= 0 (0: unconditional only; 1: conditional only, ``v = cond`` exactly (an unguided step, see below);
      the demo uses 4.0). Negative scales (guiding *away* from the caption) are rejected with a ``ValueError`` as
      almost certainly a mistake.
    * ``channels=k``: the official Lumina-Next / DiT quirk, for exact reproduction: only channels ``[:k]`` of dim 1
      are guided, the rest keep the *conditional* velocity: ``v[:, :k] = uncond[:, :k] + cfg (cond - uncond)[:, :k]``,
      ``v[:, k:] = cond[:, k:]``. The official text-to-image code uses ``k = 3`` on its 4-channel latents.
      ``k >= C`` is plain CFG.
    * ``renorm=r`` (Lumina-Image-2.0 renormalised CFG): per sample, with norms over all dims except the batch,
      if ``||v|| > r * ||cond||`` then ``v *= r * ||cond|| / ||v||`` (so ``||v|| <= r ||cond||``); applied after
      the channel rule, to the whole velocity of a guided step.
    * ``truncation=tau`` (CFG truncation, a time in [0, 1]): guidance is applied only while ``t < tau``; for
      ``t >= tau`` (late, near data) the velocity is the conditional one, ``v = cond``. The test reads ``t[0] >= tau``
      in t's dtype (as the official code does, so ``tau = 0.7`` switches at the float32 grid point 0.7): from
      ``t_value`` when the caller passes it (CUDA-graph safe: nothing is read back from the device), else from
      ``t`` (a host sync on GPU).
    * unguided steps (``cfg_scale == 1``, or ``t >= tau``): the conditional velocity as the model gives it: only
      ``cond_fn(x, t)`` is called when given (half the work), else ``model_fn`` on the doubled batch and its
      conditional half is returned; neither the channel rule nor renorm applies.

    For bfloat16 / float16 model outputs the guidance arithmetic of a guided step is done in float32, and the
    velocity is returned in float32 (the solvers accumulate in float32 for these dtypes anyway). Raises
    ``ValueError`` naming the argument for a bad ``cfg_scale``, ``channels``, ``renorm`` or ``truncation``.
    The returned function carries ``.cfg_scale`` and ``.guidance`` (the :class:`Guidance`).
    """
    if not callable(model_fn):
        raise ValueError(f"`model_fn` must be callable, got {type(model_fn).__name__}")
    if cond_fn is not None and not callable(cond_fn):
        raise ValueError(f"`cond_fn` must be None or callable, got {type(cond_fn).__name__}")
    guidance = Guidance(cfg_scale, channels, renorm, truncation)

    def velocity_fn(x: torch.Tensor, t: torch.Tensor, t_value: Optional[float] = None) -> torch.Tensor:
        return guidance.velocity(model_fn, x, t, t_value, cond_fn)

    velocity_fn.cfg_scale = guidance.scale
    velocity_fn.guidance = guidance
    return velocity_fn
