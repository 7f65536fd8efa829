"""ODE solvers for the flow-matching sampler: fixed-grid ``euler`` / ``midpoint`` / ``rk4`` and adaptive ``dopri5``.

Every solver has the signature ``solver(velocity_fn, x0, grid, *, callback=None, progress=False, stats=None,
...) -> x`` and integrates ``dx/dt = velocity_fn(x, t)`` from ``grid[0]`` to ``grid[-1]``:

* ``velocity_fn(x, t) -> v``: ``x`` has the shape and dtype of ``x0`` (batch first), ``t`` is a 1-D tensor of
  shape ``(batch,)`` on ``x0``'s device holding the same time for every sample, in the accumulation dtype (see
  below), and ``v`` must have ``x``'s shape (any floating dtype). ``velocity_fn`` must not modify ``x`` in place.
* ``grid``: a strictly monotone 1-D sequence/tensor of times (usually :func:`lumina.sampling.time_grid`, 0 -> 1;
  a decreasing grid integrates backwards, e.g. data -> noise for inversion). Fixed-grid solvers take one step per
  interval; ``dopri5`` takes as many adaptive steps per interval as its tolerances need and lands on every grid
  point exactly.
* Precision: the state is accumulated in float32 when ``x0`` is bfloat16 or float16 (in ``x0``'s dtype otherwise)
  and cast to ``x0``'s dtype before each ``velocity_fn`` call, so the model runs in low precision while the
  small per-step updates are not lost to bf16 rounding. ``t`` is passed in the accumulation dtype (float32 for
  bf16 / fp16: bf16 cannot represent e.g. 0.998). The result is returned in ``x0``'s dtype.
* Updates: every ``x + h * sum_i c_i k_i`` is one fused pass of :func:`lumina_kernels.solver_update` (the C++ /
  CUDA kernel, or its PyTorch reference where none applies), which reads bf16 / fp16 velocities directly: no
  float32 copy of the model output is made. Rounding is that of ``torch.add(x, k, alpha=h * c)`` one term at a time
  (zero coefficients skipped), as the solvers computed it before the fused op.
* ``callback(step, t, x)``: called after grid interval ``step`` (0-based) with ``t = grid[step + 1]`` (a float) and
  the state there (the solver's accumulation tensor: read it, do not modify it).
* ``progress``: a tqdm bar over the grid intervals.
* ``stats``: if a dict is given, it is filled with ``nfe`` (velocity evaluations), ``steps`` (accepted steps) and
  ``rejected`` (rejected steps, 0 for fixed-grid solvers).

Orders (global error ~ h^p): euler 1 (1 evaluation per step), midpoint 2 (2), rk4 4 (4), dopri5 5 with a
4th-order embedded error estimate (6 per attempted step thanks to FSAL, plus 2 to start).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from tqdm import tqdm

import lumina_kernels

__all__ = ["SOLVERS", "SolverError", "euler", "midpoint", "rk4", "dopri5"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grid = Union[torch.Tensor, Sequence[float]]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# velocity dtypes that lumina_kernels.solver_update reads (and converts) itself; others are cast by _Field
_FUSED_READS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class SolverError(RuntimeError):
    """The adaptive solver could not reach the end of the interval (too many steps, or step size underflow)."""


# ----------------------------------------------------------------------------------------------
# shared plumbing
# ----------------------------------------------------------------------------------------------
class _Field:
    """Wraps velocity_fn: dtype casts, the (batch,) time tensor, shape check, evaluation count.

    Returns the model's velocity as it is when lumina_kernels.solver_update can read its dtype (the updates convert
    it to the accumulation dtype on the fly), else cast to the accumulation dtype."""

    def __init__(self, velocity_fn: VelocityFn, x0: torch.Tensor):
        if not callable(velocity_fn):
            raise ValueError(f"`velocity_fn` must be callable, got {type(velocity_fn).__name__}")
        if not isinstance(x0, torch.Tensor):
            raise ValueError(f"`x0` must be a torch.Tensor, got {type(x0).__name__}")
        if not x0.is_floating_point():
            raise ValueError(f"`x0` must be a floating-point tensor, got {x0.dtype}")
        if x0.dim() < 1 or x0.shape[0] < 1:
            raise ValueError(f"`x0` must have a non-empty batch dimension first, got shape {tuple(x0.shape)}")
        self.fn = velocity_fn
        self.eval_dtype = x0.dtype
        self.acc_dtype = torch.float32 if x0.dtype in _LOW_PRECISION else x0.dtype
        self.shape = x0.shape
        self.batch = x0.shape[0]
        self.device = x0.device
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((self.batch,), t, dtype=self.acc_dtype, device=self.device)
        v = self.fn(x.to(self.eval_dtype), tt)
        self.nfe += 1
        if not isinstance(v, torch.Tensor) or v.shape != self.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"`velocity_fn` must return a tensor of x's shape {tuple(self.shape)}, got {got}")
        return v if v.dtype in _FUSED_READS else v.to(self.acc_dtype)


def _grid_list(grid: Grid) -> List[float]:
    g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if g.dim() != 1 or g.numel() < 2:
        raise ValueError(f"`grid` must be 1-D with at least 2 points, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("`grid` must be finite")
    d = g[1:] - g[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError("`grid` must be strictly monotone (increasing, or decreasing to integrate backwards)")
    return g.tolist()


def _comb(x: torch.Tensor, h: float, coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """x + h * sum(c_i k_i) over zip(coeffs, ks), skipping zero coefficients; one new tensor, in one fused pass.

    The rounding of ``torch.add(x, k, alpha=h * c)`` then ``out.add_(k, alpha=h * c)`` per term (see
    :func:`lumina_kernels.solver_update`); each k is converted to x's dtype on the fly."""
    n = min(len(coeffs), len(ks))
    return lumina_kernels.solver_update(x, list(ks[:n]), [float(c) for c in coeffs[:n]], h)


def _fill(stats: Optional[dict], nfe: int, steps: int, rejected: int) -> None:
    if stats is not None:
        stats.update(nfe=nfe, steps=steps, rejected=rejected)


def _register(name: str, order: int, adaptive: bool, evals_per_step: int):
    def deco(fn):
        fn.solver_name = name
        fn.order = order
        fn.adaptive = adaptive
        fn.evals_per_step = evals_per_step
        return fn

    return deco


# ----------------------------------------------------------------------------------------------
# fixed-grid solvers
# ----------------------------------------------------------------------------------------------
def _euler_step(f: _Field, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    return _comb(x, t1 - t0, (1.0,), (f(x, t0),))


def _midpoint_step(f: _Field, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    h = t1 - t0
    k1 = f(x, t0)
    k2 = f(_comb(x, h, (0.5,), (k1,)), t0 + 0.5 * h)
    return _comb(x, h, (1.0,), (k2,))


def _rk4_step(f: _Field, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    h = t1 - t0
    tm = t0 + 0.5 * h
    k1 = f(x, t0)
    k2 = f(_comb(x, h, (0.5,), (k1,)), tm)
    k3 = f(_comb(x, h, (0.5,), (k2,)), tm)
    k4 = f(_comb(x, h, (1.0,), (k3,)), t1)
    return _comb(x, h, (1 / 6, 1 / 3, 1 / 3, 1 / 6), (k1, k2, k3, k4))


def _fixed_grid(step, name: str, velocity_fn, x0, grid, callback, progress, stats):
    f = _Field(velocity_fn, x0)
    ts = _grid_list(grid)
    x = x0.to(f.acc_dtype)
    n = len(ts) - 1
    with tqdm(total=n, desc=name, disable=not progress) as bar:
        for i in range(n):
            x = step(f, x, ts[i], ts[i + 1])
            bar.update(1)
            if callback is not None:
                callback(i, ts[i + 1], x)
    _fill(stats, f.nfe, n, 0)
    return x.to(x0.dtype)


@_register("euler", order=1, adaptive=False, evals_per_step=1)
def euler(velocity_fn: VelocityFn, x0: torch.Tensor, grid: Grid, *, callback=None, progress: bool = False,
          stats: Optional[dict] = None) -> torch.Tensor:
    """Explicit Euler, order 1: ``x_{n+1} = x_n + h v(x_n, t_n)``."""
    return _fixed_grid(_euler_step, "euler", velocity_fn, x0, grid, callback, progress, stats)


@_register("midpoint", order=2, adaptive=False, evals_per_step=2)
def midpoint(velocity_fn: VelocityFn, x0: torch.Tensor, grid: Grid, *, callback=None, progress: bool = False,
             stats: Optional[dict] = None) -> torch.Tensor:
    """Explicit midpoint, order 2: ``x_{n+1} = x_n + h v(x_n + h/2 v(x_n, t_n), t_n + h/2)``."""
    return _fixed_grid(_midpoint_step, "midpoint", velocity_fn, x0, grid, callback, progress, stats)


@_register("rk4", order=4, adaptive=False, evals_per_step=4)
def rk4(velocity_fn: VelocityFn, x0: torch.Tensor, grid: Grid, *, callback=None, progress: bool = False,
        stats: Optional[dict] = None) -> torch.Tensor:
    """Classic fourth-order Runge-Kutta (weights 1/6, 1/3, 1/3, 1/6), order 4."""
    return _fixed_grid(_rk4_step, "rk4", velocity_fn, x0, grid, callback, progress, stats)


# ----------------------------------------------------------------------------------------------
# dopri5
# ----------------------------------------------------------------------------------------------
_F = Fraction
_DP_C = [_F(0), _F(1, 5), _F(3, 10), _F(4, 5), _F(8, 9), _F(1), _F(1)]
_DP_A = [
    [],
    [_F(1, 5)],
    [_F(3, 40), _F(9, 40)],
    [_F(44, 45), _F(-56, 15), _F(32, 9)],
    [_F(19372, 6561), _F(-25360, 2187), _F(64448, 6561), _F(-212, 729)],
    [_F(9017, 3168), _F(-355, 33), _F(46732, 5247), _F(49, 176), _F(-5103, 18656)],
    [_F(35, 384), _F(0), _F(500, 1113), _F(125, 192), _F(-2187, 6784), _F(11, 84)],
]
_DP_B5 = _DP_A[6] + [_F(0)]  # 5th-order weights (= last row: FSAL)
_DP_B4 = [_F(5179, 57600), _F(0), _F(7571, 16695), _F(393, 640), _F(-92097, 339200), _F(187, 2100), _F(1, 40)]
_DP_E = [float(b5 - b4) for b5, b4 in zip(_DP_B5, _DP_B4)]  # error weights: 5th - 4th order solution
_DP_Cf = [float(c) for c in _DP_C]
_DP_Af = [[float(a) for a in row] for row in _DP_A]


def _err_norm(e: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rtol: float, atol: float) -> float:
    """max over the batch of the per-sample RMS of e / (atol + rtol * max(|x|, |y|))."""
    scale = torch.maximum(x.abs(), y.abs()).mul_(rtol).add_(atol)
    r = (e / scale).reshape(e.shape[0], -1)
    return float(r.square().mean(dim=1).sqrt().max())


def _initial_step(f: _Field, x: torch.Tensor, t: float, k1: torch.Tensor, direction: float,
                  rtol: float, atol: float) -> float:
    """Hairer, Norsett & Wanner (Solving ODEs I, II.4) starting step size; one extra evaluation."""
    zero = torch.zeros_like(x)
    k1 = k1.to(x.dtype)  # the velocities may come in the model's dtype; the estimate is in the accumulation dtype
    d0 = _err_norm(x, x, zero, rtol, atol)
    d1 = _err_norm(k1, x, zero, rtol, atol)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    x1 = _comb(x, h0, (direction,), (k1,))
    k2 = f(x1, t + direction * h0).to(x.dtype)
    d2 = _err_norm(k2 - k1, x, zero, rtol, atol) / h0
    dm = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if dm <= 1e-15 else (0.01 / dm) ** (1.0 / 5.0)
    return min(100.0 * h0, h1)


def _positive(value, name: str, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number, got {value!r}") from None
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


@_register("dopri5", order=5, adaptive=True, evals_per_step=6)
def dopri5(velocity_fn: VelocityFn, x0: torch.Tensor, grid: Grid, *, rtol: float = 1e-5, atol: float = 1e-5,
           max_steps: int = 10_000, safety: float = 0.9, min_factor: float = 0.2, max_factor: float = 10.0,
           min_step: float = 0.0, max_step: float = math.inf, first_step: Optional[float] = None,
           callback=None, progress: bool = False, stats: Optional[dict] = None) -> torch.Tensor:
    """Adaptive Dormand-Prince 5(4) with an embedded 4th-order error estimate and FSAL.

    Step control: the error estimate ``e = h * sum_i (b5_i - b4_i) k_i`` is measured as
    ``err = max over samples of RMS(e / (atol + rtol * max(|x_n|, |x_{n+1}|)))`` (one step size for the whole
    batch, since every sample shares t; the worst sample decides). The step is accepted when ``err <= 1`` (the
    5th-order solution is kept: local extrapolation). The next step is
    ``h * clamp(safety * err^(-1/5), min_factor, max_factor)``, with the factor capped at 1 right after a
    rejection. Steps are clipped to ``max_step`` and to the next grid point, so every grid point (and the final
    ``grid[-1]``, exactly) is hit; a step within 1% of the remaining distance is stretched to land on the point.
    The first step comes from Hairer's estimate unless ``first_step`` is given.

    Raises :class:`SolverError` (a ``RuntimeError``) when more than ``max_steps`` steps (accepted + rejected) are
    needed, or when the controller asks for a step below ``min_step`` (default 0: below floating-point
    resolution of t). Evaluations: 1 + 1 (initial step estimate, skipped with ``first_step``) + 6 per attempted
    step (the 7th stage is the next step's first: FSAL).
    """
    rtol = _positive(rtol, "rtol")
    atol = _positive(atol, "atol")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be an integer >= 1, got {max_steps!r}")
    safety = _positive(safety, "safety")
    min_factor = _positive(min_factor, "min_factor")
    max_factor = _positive(max_factor, "max_factor")
    if not min_factor < 1.0 < max_factor:
        raise ValueError(f"need `min_factor` < 1 < `max_factor`, got {min_factor} and {max_factor}")
    min_step = _positive(min_step, "min_step", allow_zero=True)
    max_step = _positive(max_step, "max_step")
    if first_step is not None:
        first_step = _positive(first_step, "first_step")

    f = _Field(velocity_fn, x0)
    ts = _grid_list(grid)
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    span = abs(ts[-1] - ts[0])
    x = x0.to(f.acc_dtype)
    t = ts[0]
    k1 = f(x, t)
    h = first_step if first_step is not None else _initial_step(f, x, t, k1, direction, rtol, atol)
    if not (math.isfinite(h) and h > 0):  # e.g. a non-finite velocity at the start; the controller then decides
        h = 1e-3 * span
    h = min(h, max_step, span)
    accepted = rejected = 0
    A, C, B5, E = _DP_Af, _DP_Cf, _DP_Af[6], _DP_E
    n = len(ts) - 1
    with tqdm(total=n, desc="dopri5", disable=not progress) as bar:
        for seg in range(n):
            t_end = ts[seg + 1]
            last_rejected = False
            while t != t_end:
                if accepted + rejected >= max_steps:
                    raise SolverError(
                        f"dopri5 needed more than `max_steps`={max_steps} steps (stopped at t={t:.6g} of "
                        f"[{ts[0]:.6g}, {ts[-1]:.6g}], rtol={rtol:g}, atol={atol:g}); raise `max_steps` or loosen "
                        f"`rtol`/`atol`"
                    )
                remaining = abs(t_end - t)
                clipped = h >= 0.99 * remaining
                h_try = remaining if clipped else h
                hd = direction * h_try
                t_new = t_end if clipped else t + hd
                ks = [k1]
                for i in range(1, 6):
                    ks.append(f(_comb(x, hd, A[i], ks), t + C[i] * hd))
                x_new = _comb(x, hd, B5, ks)
                k7 = f(x_new, t_new)
                ks.append(k7)
                e = _comb(torch.zeros_like(x), hd, E, ks)
                err = _err_norm(e, x, x_new, rtol, atol)
                if not math.isfinite(err):
                    err = math.inf
                if err <= 1.0:
                    accepted += 1
                    x, t, k1 = x_new, t_new, k7
                    factor = max_factor if err == 0.0 else min(max_factor, max(min_factor, safety * err ** -0.2))
                    if last_rejected:
                        factor = min(factor, 1.0)
                    h_next = h_try * factor
                    h = max(h, h_next) if (clipped and h_try < h) else h_next
                    last_rejected = False
                else:
                    rejected += 1
                    factor = min_factor if err == math.inf else max(min_factor, safety * err ** -0.2)
                    h = h_try * min(factor, 1.0)
                    last_rejected = True
                    if h < min_step or t + direction * h == t:
                        raise SolverError(
                            f"dopri5 step size underflow at t={t:.6g}: needs h={h:.3g} "
                            f"(`min_step`={min_step:g}); the velocity may be non-finite or too stiff for "
                            f"rtol={rtol:g}, atol={atol:g}"
                        )
                h = min(h, max_step)
            bar.update(1)
            if progress:
                bar.set_postfix(nfe=f.nfe, refresh=False)
            if callback is not None:
                callback(seg, t_end, x)
    _fill(stats, f.nfe, accepted, rejected)
    return x.to(x0.dtype)


SOLVERS: Dict[str, Callable[..., torch.Tensor]] = {
    "euler": euler,
    "midpoint": midpoint,
    "rk4": rk4,
    "dopri5": dopri5,
}
