"""Time grids for the flow-matching ODE: ``steps + 1`` float64 points from exactly 0 (noise) to exactly 1 (data).

Convention (facts section 3 and 6): ``t = 0`` is pure noise, ``t = 1`` is data, the flow path is
``x_t = t * x1 + (1 - t) * x0`` and the velocity is ``x1 - x0``. A grid ``t_0 = 0 < t_1 < ... < t_N = 1`` has
``N = steps`` steps.

Schedules (``SCHEDULES``, by name), each ``fn(steps, **params) -> float64 tensor of steps + 1 points``:

* ``uniform``: ``t_i = i / N``.
* ``sigmoid``: larger steps at both ends than in the middle. The paper (arXiv 2406.18583) pairs a "sigmoid"
  schedule (``mu = 0.6, alpha = 6, beta = 20``) with the midpoint solver at 10-20 evaluations, but no formula or
  code was published. This is our definition, see :func:`sigmoid`.

The rational time shift ``t' = t / (t + s - s t) = t / (s - (s - 1) t)`` (the official demo uses ``s = 4``) is
applied by :func:`time_grid` on top of any schedule. ``s = 1`` is the identity; for ``s > 1``, ``t' < t`` inside
(0, 1), so the grid moves towards ``t = 0``: smaller steps near noise, larger ones near data. ``s < 1`` does the
opposite. The shift keeps 0 and 1 exactly and is strictly increasing, so the shifted grid stays a valid grid.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from .._checks import integer
from .._checks import real as _real

__all__ = ["SCHEDULES", "time_grid", "uniform", "sigmoid", "shift_time", "SIGMOID_DEFAULTS"]

SIGMOID_DEFAULTS = {"mu": 0.6, "alpha": 6.0, "beta": 20.0}


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _steps(steps) -> int:
    return integer(steps, "steps", minimum=1)


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------
def uniform(steps: int) -> torch.Tensor:
    """``steps + 1`` equally spaced points, ``t_i = i / steps`` (float64, exact ends)."""
    n = _steps(steps)
    t = torch.arange(n + 1, dtype=torch.float64) / n
    t[0], t[-1] = 0.0, 1.0
    return t


def _sigmoid_warp(t: torch.Tensor, mu: float, alpha: float, beta: float) -> torch.Tensor:
    """``u(t)``: the normalised cumulative step density of the sigmoid schedule (0 -> 0, 1 -> 1, increasing)."""
    k = beta / alpha
    s0 = 1.0 / (1.0 + math.exp(alpha * mu))  # sigma(alpha (0 - mu))
    s1 = 1.0 / (1.0 + math.exp(-alpha * (1.0 - mu)))  # sigma(alpha (1 - mu))
    z = 1.0 + k * (s1 - s0)
    return (t + k * (torch.sigmoid(alpha * (t - mu)) - s0)) / z


def sigmoid(steps: int, mu: float = 0.6, alpha: float = 6.0, beta: float = 20.0) -> torch.Tensor:
    """Sigmoid schedule: small steps around ``t = mu``, larger steps at both ends (our definition).

    The paper names the parameters (``mu = 0.6, alpha = 6, beta = 20``) but publishes no formula. We define the
    schedule by its step *density* (grid points per unit of t)::

        rho(t) = 1 + beta * sigma'(alpha * (t - mu)),     sigma'(z) = sigma(z) * (1 - sigma(z))

    a uniform floor plus a sigmoid-derivative bump centred on ``mu``. Its normalised integral is the warp::

        u(t) = [t + (beta / alpha) * (sigma(alpha (t - mu)) - sigma(-alpha mu))] / Z,
        Z    = 1 + (beta / alpha) * (sigma(alpha (1 - mu)) - sigma(-alpha mu))

    and the grid is ``t_i = u^{-1}(i / steps)`` (bisection in float64 to round-off; ends set to exactly 0 and 1).
    ``u`` is strictly increasing (``rho >= 1``), so the grid is strictly increasing.

    Parameters:

    * ``mu`` in [0, 1]: where the steps are smallest (0.6: the middle, slightly towards data);
    * ``alpha > 0``: sharpness; the dense region has a width of about ``4 / alpha`` in t;
    * ``beta >= 0``: strength; the density peaks at ``1 + beta / 4`` times the uniform floor (``beta = 0`` is
      ``uniform``).

    With the defaults the local step size is proportional to ``1 / rho``: ``rho(0) = 1.52``, ``rho(0.6) = 6``,
    ``rho(1) = 2.53``, i.e. steps at ``t = 0`` are about 3.9x, and at ``t = 1`` about 2.4x, the step at
    ``t = 0.6``. For 10 steps the grid is approximately
    ``[0, 0.203, 0.330, 0.423, 0.499, 0.568, 0.634, 0.702, 0.779, 0.872, 1]`` (steps 0.203 at the
    noise end, 0.066 around t = 0.6, 0.128 at the data end).
    """
    n = _steps(steps)
    mu = _real(mu, "mu")
    alpha = _real(alpha, "alpha")
    beta = _real(beta, "beta")
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"`mu` must be in [0, 1], got {mu}")
    if alpha <= 0.0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}")
    if beta < 0.0:
        raise ValueError(f"`beta` must be >= 0, got {beta}")
    target = uniform(n)
    lo = torch.zeros_like(target)
    hi = torch.ones_like(target)
    for _ in range(60):  # interval halves each time: 2^-60 < float64 spacing near 1
        mid = 0.5 * (lo + hi)
        below = _sigmoid_warp(mid, mu, alpha, beta) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    t = 0.5 * (lo + hi)
    t[0], t[-1] = 0.0, 1.0
    return t


SCHEDULES: Dict[str, Callable[..., torch.Tensor]] = {"uniform": uniform, "sigmoid": sigmoid}

_PARAMS = {"uniform": (), "sigmoid": ("mu", "alpha", "beta")}


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Rational time shift ``t / (t + s - s t)``; keeps 0 and 1 exact; ``s > 1`` moves points towards 0 (noise)."""
    s = _real(shift, "shift")
    if s <= 0.0:
        raise ValueError(f"`shift` must be > 0, got {s}")
    if s == 1.0:
        return t.clone()
    out = t / (t + s - s * t)
    return out


def time_grid(steps: int, schedule: str = "uniform", shift: float = 1.0, **params) -> torch.Tensor:
    """Time grid of ``steps + 1`` float64 points from exactly 0 (noise) to exactly 1 (data), on the CPU.

    ``schedule`` names an entry of ``SCHEDULES`` (``params`` are its parameters, e.g. ``mu``, ``alpha``, ``beta``
    for ``sigmoid``); then the rational ``shift`` (``t / (t + s - s t)``, 1 = none) is applied on top.
    Raises ``ValueError`` naming the argument for an unknown schedule or parameter, ``steps < 1`` or
    ``shift <= 0``.
    """
    n = _steps(steps)
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    s = _real(shift, "shift")
    if s <= 0.0:
        raise ValueError(f"`shift` must be > 0, got {s}")
    allowed = _PARAMS.get(schedule)
    if allowed is not None:
        for key in params:
            if key not in allowed:
                hint = f"; it takes {', '.join(allowed)}" if allowed else "; it takes no parameters"
                raise ValueError(f"unknown parameter `{key}` for schedule {schedule!r}{hint}")
    t = SCHEDULES[schedule](n, **params)
    t = shift_time(t, s)
    return t
