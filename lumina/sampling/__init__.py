"""Flow-matching ODE sampling shared by every modality.

Convention (Lumina-Next): ``t = 0`` is pure noise, ``t = 1`` is data, ``x_t = t * x1 + (1 - t) * x0`` and the
model predicts the velocity ``v = x1 - x0``. Sampling integrates ``dx/dt = velocity_fn(x, t)`` from noise ``x0``
at ``t = 0`` to ``x1`` at ``t = 1``. ``velocity_fn(x, t)`` gets ``x`` with ``x0``'s shape and dtype (batch first)
and ``t``, a 1-D float tensor of shape ``(batch,)`` holding the same time for every sample (float32 for bf16/fp16
``x0``, else ``x0``'s dtype); it returns a tensor of ``x``'s shape.

* :mod:`.schedules`: ``time_grid(steps, schedule, shift, **params)``, ``SCHEDULES`` (uniform, sigmoid),
  rational time shift.
* :mod:`.solvers`: ``SOLVERS`` (euler, midpoint, rk4, dopri5).
* :mod:`.guidance`: ``Guidance`` and ``cfg_velocity`` (CFG, the 3-channel quirk, renormalised CFG, CFG truncation).
* :mod:`.context_drop`: ``ContextDrop``, the schedule (times, layers) of key/value merging.
* :mod:`.graphs`: ``GraphedVelocity``, CUDA-graph capture and replay of one evaluation.

Layering: imports only torch and tqdm (``lumina_kernels`` would be allowed), never ``lumina.pipelines`` or
``lumina.training``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .context_drop import ContextDrop
from .graphs import GraphedVelocity
from .guidance import Guidance, cfg_combine, cfg_velocity
from .schedules import SCHEDULES, shift_time, time_grid
from .solvers import SOLVERS, SolverError

__all__ = ["sample", "time_grid", "SCHEDULES", "SOLVERS", "Guidance", "cfg_velocity", "cfg_combine", "shift_time",
           "SolverError", "ContextDrop", "GraphedVelocity"]


def sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    steps: int = 30,
    solver: str = "midpoint",
    schedule: str = "uniform",
    shift: float = 1.0,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    progress: bool = True,
    callback: Optional[Callable[[int, float, torch.Tensor], None]] = None,
    stats: Optional[dict] = None,
    **schedule_params,
) -> torch.Tensor:
    """Integrate the flow ODE from noise ``x0`` (t = 0) to data (t = 1) and return ``x1`` in ``x0``'s dtype.

    * ``steps``: number of grid intervals (``steps + 1`` grid points from :func:`time_grid`). Fixed-grid solvers
      take one step per interval (velocity evaluations: euler ``steps``, midpoint ``2 steps``, rk4 ``4 steps``);
      ``dopri5`` adapts its steps to ``rtol`` / ``atol`` and only uses the grid as points to pass through
      (``steps=1`` lets it choose freely). ``rtol`` / ``atol`` are ignored by the fixed-grid solvers.
    * ``solver``: a name in ``SOLVERS``; ``schedule``: a name in ``SCHEDULES`` with its ``**schedule_params``
      (e.g. ``mu``, ``alpha``, ``beta`` for ``"sigmoid"``); ``shift``: rational time shift applied on top
      (``t / (t + s - s t)``; the official demo: midpoint, 30 steps, shift 4).
    * ``progress``: tqdm bar over the grid intervals. ``callback(step, t, x)`` after each interval (0-based step,
      t = the grid time reached, x = the state there; do not modify it). ``stats``: a dict to fill with ``nfe``,
      ``steps`` and ``rejected``.
    * bf16 / fp16 ``x0``: the model is called in that dtype, the state is accumulated in float32.

    Wrap the call in ``torch.inference_mode()`` for inference. Raises ``ValueError`` naming the argument for an
    unknown solver or schedule, ``steps < 1``, ``shift <= 0`` or bad schedule parameters, and
    :class:`SolverError` when ``dopri5`` cannot meet its tolerances.
    """
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {sorted(SOLVERS)}, got {solver!r}")
    grid = time_grid(steps, schedule, shift, **schedule_params)
    fn = SOLVERS[solver]
    kwargs = dict(callback=callback, progress=progress, stats=stats)
    if getattr(fn, "adaptive", False):
        kwargs.update(rtol=rtol, atol=atol)
    return fn(velocity_fn, x0, grid, **kwargs)
