"""Flow matching for training (rectified flow, t = 0 noise, t = 1 data): the time sampling, the interpolation, the
velocity target and the masked loss. One place for each; the trainer calls them.

* :func:`sample_t`: ``uniform``, ``lognorm`` (sigmoid of N(0, 1)) or ``shifted`` (uniform through the rational time
  shift of :func:`lumina.sampling.schedules.shift_time`, the sampler's own rule).
* :func:`noisy_batch`: x0 ~ N(0, I) per sample, ``x_t = t x1 + (1 - t) x0``, target ``x1 - x0``; with a clean
  prefix (the adapter's :meth:`prefix_index`: conditioning frames of a volume), those units of ``x_t`` are the data
  itself, the model gives them the t = 1 conditioning (per-token t) and the loss leaves them out.
* :func:`flow_loss`: the mean over samples of each sample's mean squared error (over its weighted elements).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sampling.schedules import shift_time

__all__ = ["T_SAMPLING", "sample_t", "FlowBatch", "noisy_batch", "flow_loss"]

T_SAMPLING = ("uniform", "lognorm", "shifted")


def sample_t(n: int, method: str, shift: float, generator: torch.Generator) -> Tensor:
    """(n,) float32 training times drawn from `generator` (a CPU generator)."""
    if method == "lognorm":
        return torch.sigmoid(torch.randn(n, generator=generator))
    if method not in T_SAMPLING:
        raise ValueError(f"`t_sampling` must be one of {list(T_SAMPLING)}, got {method!r}")
    u = torch.rand(n, generator=generator)
    return shift_time(u, shift) if method == "shifted" else u


@dataclass
class FlowBatch:
    xt: list[Tensor]  # the model's inputs
    target: list[Tensor]  # the velocity x1 - x0 per sample
    weights: list[Tensor | None]  # per sample: 1 where the loss counts, 0 on the clean prefix (None: everywhere)


def noisy_batch(x1: list[Tensor], t: Tensor, generator: torch.Generator, device, prefix=None) -> FlowBatch:
    """Noise per sample (drawn on the CPU from `generator`), the interpolant and the target. ``prefix``: an index
    into one sample (the adapter's clean prefix) kept clean and out of the loss, or None."""
    x0 = [torch.randn(x.shape, generator=generator).to(device) for x in x1]
    xt = [ti * a + (1 - ti) * b for ti, a, b in zip(t.tolist(), x1, x0)]
    target = [a - b for a, b in zip(x1, x0)]
    weights: list[Tensor | None] = [None] * len(x1)
    if prefix is not None:
        for i, (x, a) in enumerate(zip(xt, x1)):
            x[prefix] = a[prefix]
            w = torch.ones_like(a)
            w[prefix] = 0
            weights[i] = w
    return FlowBatch(xt, target, weights)


def flow_loss(v: list[Tensor], batch: FlowBatch) -> Tensor:
    """Mean over samples of the per-sample MSE between the model's velocity and the target (float32), over the
    weighted elements when a sample has weights."""
    losses = []
    for vi, target, w in zip(v, batch.target, batch.weights):
        if w is None:
            losses.append(F.mse_loss(vi.float(), target))
        else:
            losses.append(((vi.float() - target) ** 2 * w).sum() / w.sum().clamp_min(1))
    return torch.stack(losses).mean()
