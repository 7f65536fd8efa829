"""lumina.sampling: solver orders, dopri5 control, exactness on straight flows, schedules, CFG, bad input."""
import math

import pytest
import torch

from lumina.sampling import SCHEDULES, SOLVERS, SolverError, cfg_velocity, sample, time_grid
from lumina.sampling.guidance import cfg_combine
from lumina.sampling.schedules import _sigmoid_warp, shift_time
from lumina.sampling.solvers import dopri5, euler, midpoint, rk4

FIXED = {"euler": 1, "midpoint": 2, "rk4": 4}


# ----------------------------------------------------------------------------------------------
# a test ODE with a closed-form solution, non-linear in x and in t, not separable:
#   dx/dt = phi'(t) - (x - phi(t))^2,  phi(t) = sin(4t)   =>   x(t) = phi(t) + x0 / (1 + x0 t)
# ----------------------------------------------------------------------------------------------
def _bcast(t, x):
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def riccati(x, t):
    t = _bcast(t, x)
    phi = torch.sin(4 * t)
    return 4 * torch.cos(4 * t) - (x - phi) ** 2


def riccati_exact(x0, t):
    return math.sin(4 * t) + x0 / (1 + x0 * t)


def _x0(dtype=torch.float64):
    return (torch.rand(3, 2, 5, dtype=dtype) + 0.5)  # x0 in [0.5, 1.5): no blow-up on [0, 1]


def _err(x, x0, t=1.0):
    return (x - riccati_exact(x0, t)).abs().max().item()


def _fitted_order(steps, errs):
    lh = torch.log(1.0 / torch.tensor(steps, dtype=torch.float64))
    le = torch.log(torch.tensor(errs, dtype=torch.float64))
    return float(((lh - lh.mean()) * (le - le.mean())).sum() / ((lh - lh.mean()) ** 2).sum())


# ----------------------------------------------------------------------------------------------
# solvers
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,order", FIXED.items())
def test_convergence_order(name, order):
    x0 = _x0()
    base = {1: 32, 2: 16, 4: 8}[order]
    steps = [base, 2 * base, 4 * base, 8 * base]
    errs = [_err(sample(riccati, x0, n, name, progress=False), x0) for n in steps]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), errs
    p = _fitted_order(steps, errs)
    assert abs(p - order) < 0.3, (name, p, errs)
    # the last halving alone, too
    assert abs(math.log2(errs[-2] / errs[-1]) - order) < 0.3, (name, errs)


def test_dopri5_beats_rk4_at_equal_error():
    x0 = _x0()
    stats = {}
    xd = sample(riccati, x0, 1, "dopri5", rtol=1e-8, atol=1e-8, progress=False, stats=stats)
    err_d = _err(xd, x0)
    assert err_d < 20 * 1e-8
    # smallest rk4 grid reaching the same error
    n = 4
    while _err(sample(riccati, x0, n, "rk4", progress=False), x0) > err_d:
        n += 4
        assert n < 1000
    assert stats["nfe"] < 4 * n, (stats, n)
    # FSAL: 2 starting evaluations, then 6 per attempted step
    assert stats["nfe"] == 2 + 6 * (stats["steps"] + stats["rejected"])


def test_dopri5_error_follows_tolerance():
    x0 = _x0()
    errs, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8):
        st = {}
        errs.append(_err(sample(riccati, x0, 1, "dopri5", rtol=tol, atol=tol, progress=False, stats=st), x0))
        nfes.append(st["nfe"])
        assert errs[-1] < 20 * tol, (tol, errs)
    assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2]


def test_dopri5_hits_grid_points_and_ends_at_one():
    x0 = _x0()
    grid = time_grid(7, "uniform", shift=3.0)
    seen_t, cb = [], []

    def f(x, t):
        seen_t.append(float(t[0]))
        return riccati(x, t)

    out = dopri5(f, x0, grid, rtol=1e-7, atol=1e-7, callback=lambda i, t, x: cb.append((i, t, x.clone())))
    assert [c[0] for c in cb] == list(range(7))
    assert [c[1] for c in cb] == grid[1:].tolist()
    assert cb[-1][1] == 1.0 and max(seen_t) == 1.0 and min(seen_t) == 0.0
    for _, t, x in cb:
        assert (x - riccati_exact(x0, t)).abs().max() < 1e-5
    assert torch.equal(out, cb[-1][2])


def test_dopri5_max_steps_and_underflow():
    x0 = _x0()
    with pytest.raises(SolverError, match="max_steps"):
        dopri5(riccati, x0, [0.0, 1.0], rtol=1e-12, atol=1e-12, max_steps=5)
    with pytest.raises(RuntimeError, match="max_steps"):  # SolverError is a RuntimeError
        dopri5(riccati, x0, time_grid(4), rtol=1e-13, atol=1e-13, max_steps=3)

    def bad(x, t):  # finite at first, then NaN: the controller must give up with a clear error
        return torch.full_like(x, float("nan")) if float(t[0]) > 0.3 else torch.ones_like(x)

    with pytest.raises(SolverError, match="underflow"):
        dopri5(bad, x0, [0.0, 1.0], min_step=1e-6)


def test_dopri5_rejects_and_recovers():
    # a sharp pulse at t = 0.5 forces rejected steps; the answer is still right
    x0 = torch.randn(4, 3, dtype=torch.float64)

    def pulse(x, t):
        return _bcast(50 * torch.exp(-((t - 0.5) * 30) ** 2), x) * torch.ones_like(x)

    st = {}
    out = dopri5(pulse, x0, [0.0, 1.0], rtol=1e-8, atol=1e-8, stats=st)
    total = 50 * math.sqrt(math.pi) / 30 * 0.5 * (math.erf(15) - math.erf(-15))
    assert st["rejected"] > 0
    assert (out - (x0 + total)).abs().max() < 1e-6


@pytest.mark.parametrize("name", list(SOLVERS))
def test_backward_integration(name):
    # integrating the known solution from t = 1 back to 0 (inversion) recovers x0
    x0 = _x0()
    x1 = riccati_exact(x0, 1.0)
    grid = torch.linspace(1, 0, 257, dtype=torch.float64)
    out = SOLVERS[name](riccati, x1, grid)
    tol = {"euler": 5e-2, "midpoint": 1e-4, "rk4": 1e-9, "dopri5": 1e-4}[name]
    assert (out - x0).abs().max() < tol


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("schedule,shift", [("uniform", 1.0), ("uniform", 4.0), ("sigmoid", 1.0), ("sigmoid", 0.5)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_straight_path_is_exact(name, schedule, shift, dtype, tol):
    x0 = torch.randn(2, 4, 3, 3, dtype=dtype)
    x1 = torch.randn(2, 4, 3, 3, dtype=dtype) * 3
    d = x1 - x0
    calls = []

    def v(x, t):
        calls.append(t)
        return d

    out = sample(v, x0, 9, name, schedule, shift, progress=False)
    assert out.dtype == dtype and out.shape == x0.shape
    assert (out - x1).abs().max().item() < tol * (1 + x1.abs().max().item())
    for t in calls:
        assert t.shape == (2,) and t.dtype == dtype and bool((t == t[0]).all())


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_solvers_evaluation_times_and_callback(name):
    grid = time_grid(6, "sigmoid", shift=2.0)
    ts, cb = [], []
    x0 = torch.randn(3, 5, dtype=torch.float64)
    stats = {}
    SOLVERS[name](lambda x, t: ts.append(float(t[0])) or -x, x0, grid,
                  callback=lambda i, t, x: cb.append((i, t)), stats=stats)
    g = grid.tolist()
    assert cb == [(i, g[i + 1]) for i in range(6)]
    assert stats == {"nfe": 6 * {"euler": 1, "midpoint": 2, "rk4": 4}[name], "steps": 6, "rejected": 0}
    h = [b - a for a, b in zip(g, g[1:])]
    expected = {
        "euler": g[:-1],
        "midpoint": [t for a, dh in zip(g, h) for t in (a, a + dh / 2)],
        "rk4": [t for a, b, dh in zip(g, g[1:], h) for t in (a, a + dh / 2, a + dh / 2, b)],
    }[name]
    assert ts == pytest.approx(expected, abs=1e-15)


def test_midpoint_formula_one_step():
    # x_{n+1} = x_n + h v(x_n + h/2 v(x_n, t_n), t_n + h/2), checked by hand on v = x * t + 1
    x0 = torch.randn(4, dtype=torch.float64)
    h = 1.0
    k1 = x0 * 0 + 1
    expected = x0 + h * ((x0 + h / 2 * k1) * 0.5 + 1)
    out = midpoint(lambda x, t: x * t + 1, x0, [0.0, 1.0])
    assert torch.allclose(out, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_accumulates_in_float32(name, dtype):
    # 8 + 0.0025 rounds back to 8 in bf16/fp16: a low-precision state would never move. float32 accumulation
    # reaches 8.5 exactly; the model sees x in the low dtype and t in float32.
    x0 = torch.full((2, 3), 8.0, dtype=dtype)
    seen = []

    def v(x, t):
        seen.append((x.dtype, t.dtype))
        return torch.full_like(x, 0.5)

    out = sample(v, x0, 200, name, progress=False)
    assert out.dtype == dtype
    assert torch.equal(out.float(), torch.full((2, 3), 8.5))
    assert set(seen) == {(dtype, torch.float32)}


def test_velocity_shape_checked():
    with pytest.raises(ValueError, match="velocity_fn"):
        sample(lambda x, t: x[:, :1], torch.randn(2, 3), 2, progress=False)


def test_progress_bar(capsys):
    x0 = torch.randn(2, 3)
    sample(lambda x, t: -x, x0, 5, progress=False)
    assert "5/5" not in capsys.readouterr().err
    sample(lambda x, t: -x, x0, 5, progress=True)
    assert "5/5" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 7, 30, 100])
@pytest.mark.parametrize("shift", [1.0, 4.0, 0.3])
def test_grid_shape_ends_monotone(schedule, steps, shift):
    g = time_grid(steps, schedule, shift)
    assert g.dtype == torch.float64 and g.shape == (steps + 1,)
    assert g[0].item() == 0.0 and g[-1].item() == 1.0
    assert bool((g[1:] > g[:-1]).all())


def test_uniform_and_shift():
    n = int(torch.randint(2, 50, ()).item())
    g = time_grid(n)
    assert torch.allclose(g, torch.arange(n + 1, dtype=torch.float64) / n, rtol=0, atol=1e-15)
    s = float(torch.empty(()).uniform_(1.5, 8.0))
    gs = time_grid(n, shift=s)
    assert torch.allclose(gs, g / (g + s - s * g), rtol=0, atol=1e-15)
    # s > 1 moves every inner point towards t = 0 (noise): small steps near noise, large near data
    assert bool((gs[1:-1] < g[1:-1]).all())
    assert (gs[1] - gs[0]) < 1 / n < (gs[-1] - gs[-2])
    # s < 1 does the opposite, and the shifts compose like s1 * s2 (t' = t / (t + s(1-t)))
    assert bool((time_grid(n, shift=1 / s)[1:-1] > g[1:-1]).all())
    assert torch.allclose(shift_time(shift_time(g, s), 1 / s), g, rtol=0, atol=1e-14)
    assert torch.equal(time_grid(n, shift=1.0), g)
    # the demo grid, by hand: 30 steps, shift 4
    demo = time_grid(30, shift=4)
    assert demo[15].item() == pytest.approx(0.5 / (0.5 + 4 - 2), abs=1e-15)


def test_sigmoid_schedule_properties():
    n = int(torch.randint(10, 40, ()).item())
    g = time_grid(n, "sigmoid")
    h = g[1:] - g[:-1]
    mid = int(torch.argmin(h))
    # smallest steps around mu = 0.6, larger at both ends than in the middle
    assert abs(0.5 * (g[mid] + g[mid + 1]).item() - 0.6) < 0.1
    assert h[0] > 2 * h[mid] and h[-1] > 1.5 * h[mid]
    inner = h[n // 3: 2 * n // 3]
    assert h[0] > inner.max() and h[-1] > inner.max()
    # the grid is the inverse of the documented warp at uniform u
    u = torch.arange(n + 1, dtype=torch.float64) / n
    assert torch.allclose(_sigmoid_warp(g, 0.6, 6.0, 20.0), u, rtol=0, atol=1e-12)
    # beta = 0 is uniform; mu moves the dense region; larger beta concentrates more
    assert torch.allclose(time_grid(n, "sigmoid", beta=0.0), u, rtol=0, atol=1e-12)
    g2 = time_grid(n, "sigmoid", mu=0.3)
    assert abs(0.5 * (g2[int(torch.argmin(g2[1:] - g2[:-1]))] + g2[int(torch.argmin(g2[1:] - g2[:-1])) + 1]).item()
               - 0.3) < 0.1
    h40 = time_grid(n, "sigmoid", beta=40.0).diff()
    assert h40.min() < h.min() and h40[0] > h[0]
    # explicit defaults are the defaults
    assert torch.equal(time_grid(n, "sigmoid", mu=0.6, alpha=6, beta=20), g)
    # shift applies on top
    assert torch.allclose(time_grid(n, "sigmoid", shift=3.0), shift_time(g, 3.0), rtol=0, atol=0)


def test_sigmoid_helps_where_the_velocity_varies():
    # dx/dt = -k(t) x with a stiffness bump around t = 0.6 (where the sigmoid schedule puts its small steps):
    # midpoint on the sigmoid grid beats the uniform grid at the same number of steps
    x0 = torch.randn(3, 4, dtype=torch.float64)
    a, w = 10.0, 0.15

    def v(x, t):
        return -_bcast(a * torch.exp(-(((t - 0.6) / w) ** 2)), x) * x

    exact = x0 * math.exp(-a * w * math.sqrt(math.pi) / 2 * (math.erf(0.4 / w) + math.erf(0.6 / w)))
    for n in (10, 15, 20):
        e_uni = (sample(v, x0, n, "midpoint", "uniform", progress=False) - exact).abs().max()
        e_sig = (sample(v, x0, n, "midpoint", "sigmoid", progress=False) - exact).abs().max()
        assert e_sig < 0.7 * e_uni, (n, e_sig, e_uni)


# ----------------------------------------------------------------------------------------------
# classifier-free guidance
# ----------------------------------------------------------------------------------------------
def _const_model(cond, uncond, log=None):
    def model_fn(xx, tt):
        if log is not None:
            log.append((xx, tt))
        return torch.cat([cond, uncond])

    return model_fn


def test_cfg_by_hand():
    cond = torch.tensor([[[2.0, -1.0]], [[0.5, 4.0]]])
    uncond = torch.tensor([[[1.0, 1.0]], [[0.5, 2.0]]])
    v = cfg_velocity(_const_model(cond, uncond), 4.0)(torch.zeros(2, 1, 2), torch.full((2,), 0.3))
    assert torch.equal(v, torch.tensor([[[5.0, -7.0]], [[0.5, 10.0]]]))


def test_cfg_formula_and_doubled_batch():
    b = 3
    cond, uncond = torch.randn(b, 4, 5, 5), torch.randn(b, 4, 5, 5)
    x, t = torch.randn(b, 4, 5, 5), torch.full((b,), 0.25)
    log = []
    cfg = float(torch.empty(()).uniform_(1.5, 7.0))
    v = cfg_velocity(_const_model(cond, uncond, log), cfg)(x, t)
    assert torch.allclose(v, uncond + cfg * (cond - uncond), atol=1e-5)
    xx, tt = log[0]
    assert torch.equal(xx, torch.cat([x, x])) and torch.equal(tt, torch.cat([t, t]))
    assert torch.allclose(cfg_velocity(_const_model(cond, uncond), 1.0)(x, t), cond, atol=1e-6)
    assert torch.allclose(cfg_velocity(_const_model(cond, uncond), 0.0)(x, t), uncond, atol=1e-6)


def test_cfg_three_channel_quirk():
    b = 2
    cond, uncond = torch.randn(b, 4, 3, 3), torch.randn(b, 4, 3, 3)
    cfg = 4.0
    v = cfg_velocity(_const_model(cond, uncond), cfg, channels=3)(torch.randn(b, 4, 3, 3), torch.zeros(b))
    assert torch.allclose(v[:, :3], uncond[:, :3] + cfg * (cond[:, :3] - uncond[:, :3]), atol=1e-5)
    assert torch.equal(v[:, 3], cond[:, 3])  # the conditional velocity, not the unconditional one
    assert not torch.allclose(v[:, 3], (uncond + cfg * (cond - uncond))[:, 3])
    # channels >= C is plain CFG
    full = cfg_velocity(_const_model(cond, uncond), cfg, channels=4)(torch.randn(b, 4, 3, 3), torch.zeros(b))
    assert torch.allclose(full, uncond + cfg * (cond - uncond), atol=1e-5)


def test_cfg_renorm_clamps_per_sample():
    cond = torch.randn(2, 4, 6)
    uncond = cond.clone()
    uncond[0] = -cond[0]  # sample 0: guided = (2 cfg - 1) cond: far above ||cond|| -> clamped
    uncond[1] = cond[1] * 1.1  # sample 1: guided = (1.1 - 0.1 cfg) cond: below ||cond|| for cfg = 4 -> untouched
    cfg, r = 4.0, 1.5
    v = cfg_velocity(_const_model(cond, uncond), cfg, renorm=r)(torch.zeros(2, 4, 6), torch.zeros(2))
    raw = uncond + cfg * (cond - uncond)
    n = lambda a: torch.linalg.vector_norm(a.reshape(a.shape[0], -1), dim=1)  # noqa: E731
    assert n(raw)[0] > r * n(cond)[0]
    assert torch.allclose(n(v)[0], r * n(cond)[0], rtol=1e-5)
    assert torch.allclose(v[0] / n(v)[0], raw[0] / n(raw)[0], atol=1e-6)  # direction kept
    assert torch.equal(v[1], raw[1])
    # by hand: cond = [3, 4] (norm 5), uncond = 0, cfg 2 -> [6, 8] (norm 10) -> clamp to norm 5 * 1.2 = 6
    c = torch.tensor([[3.0, 4.0]])
    out = cfg_combine(c, torch.zeros_like(c), 2.0, renorm=1.2)
    assert torch.allclose(out, torch.tensor([[3.6, 4.8]]), atol=1e-6)


def test_cfg_truncation():
    b = 2
    cond, uncond = torch.randn(b, 4, 2, 2), torch.randn(b, 4, 2, 2)
    x = torch.randn(b, 4, 2, 2)
    tau = 0.7
    log, cond_calls = [], []
    fn = cfg_velocity(_const_model(cond, uncond, log), 5.0, truncation=tau)
    guided = uncond + 5.0 * (cond - uncond)
    assert torch.allclose(fn(x, torch.full((b,), 0.69)), guided, atol=1e-5)
    assert torch.equal(fn(x, torch.full((b,), 0.7)), cond)  # t >= tau: cfg off, the conditional velocity
    assert torch.equal(fn(x, torch.full((b,), 0.95)), cond)
    assert len(log) == 3
    fn2 = cfg_velocity(_const_model(cond, uncond, log), 5.0, truncation=tau,
                       cond_fn=lambda x, t: cond_calls.append(t) or cond)
    assert torch.equal(fn2(x, torch.full((b,), 0.9)), cond)
    assert len(log) == 3 and len(cond_calls) == 1  # only the conditional half was evaluated
    assert torch.allclose(fn2(x, torch.full((b,), 0.1)), guided, atol=1e-5)
    assert len(cond_calls) == 1


def test_cfg_in_sampler_bf16():
    # guided sampling of a constant field: x1 = x0 + guided velocity; bf16 model output, float32 arithmetic
    b = 2
    cond = torch.randn(b, 4, 3, 3).bfloat16()
    uncond = torch.randn(b, 4, 3, 3).bfloat16()
    x0 = torch.randn(b, 4, 3, 3).bfloat16()
    out = sample(cfg_velocity(_const_model(cond, uncond), 4.0), x0, 8, "midpoint", shift=4.0, progress=False)
    expected = x0.float() + uncond.float() + 4.0 * (cond.float() - uncond.float())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected, atol=0.1, rtol=1e-2)


# ----------------------------------------------------------------------------------------------
# bad input: ValueError naming the argument
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(solver="heun"), "`solver`"),
        (dict(solver=None), "`solver`"),
        (dict(schedule="cosine"), "`schedule`"),
        (dict(steps=0), "`steps`"),
        (dict(steps=-3), "`steps`"),
        (dict(steps=2.5), "`steps`"),
        (dict(steps=True), "`steps`"),
        (dict(shift=0.0), "`shift`"),
        (dict(shift=-4.0), "`shift`"),
        (dict(shift=float("nan")), "`shift`"),
        (dict(shift=float("inf")), "`shift`"),
        (dict(schedule="sigmoid", alpha=0.0), "`alpha`"),
        (dict(schedule="sigmoid", beta=-1.0), "`beta`"),
        (dict(schedule="sigmoid", mu=1.5), "`mu`"),
        (dict(schedule="sigmoid", gamma=1.0), "`gamma`"),
        (dict(schedule="uniform", mu=0.5), "`mu`"),
        (dict(solver="dopri5", rtol=0.0), "`rtol`"),
        (dict(solver="dopri5", atol=-1e-5), "`atol`"),
    ],
)
def test_bad_sample_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample(lambda x, t: x, torch.randn(2, 3), progress=False, **kwargs)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(cfg_scale=-1.0), "`cfg_scale`"),
        (dict(cfg_scale=float("nan")), "`cfg_scale`"),
        (dict(cfg_scale="4"), None),  # a numeric string is accepted as 4.0
        (dict(cfg_scale="four"), "`cfg_scale`"),
        (dict(channels=0), "`channels`"),
        (dict(channels=2.5), "`channels`"),
        (dict(renorm=0.0), "`renorm`"),
        (dict(renorm=-1.0), "`renorm`"),
        (dict(truncation=1.5), "`truncation`"),
        (dict(truncation=-0.1), "`truncation`"),
    ],
)
def test_bad_cfg_arguments(kwargs, name):
    args = dict(cfg_scale=4.0)
    args.update(kwargs)
    cfg = args.pop("cfg_scale")
    if name is None:
        cfg_velocity(lambda xx, tt: xx, cfg, **args)
        return
    with pytest.raises(ValueError, match=name):
        cfg_velocity(lambda xx, tt: xx, cfg, **args)


def test_bad_solver_inputs():
    x0 = torch.randn(2, 3)
    for solver in SOLVERS.values():
        with pytest.raises(ValueError, match="`grid`"):
            solver(lambda x, t: x, x0, [0.0, 0.5, 0.4, 1.0])
        with pytest.raises(ValueError, match="`grid`"):
            solver(lambda x, t: x, x0, [0.0])
        with pytest.raises(ValueError, match="`x0`"):
            solver(lambda x, t: x, torch.ones(2, 3, dtype=torch.int64), [0.0, 1.0])
    with pytest.raises(ValueError, match="`max_steps`"):
        dopri5(lambda x, t: x, x0, [0.0, 1.0], max_steps=0)
    with pytest.raises(ValueError, match="`min_factor`"):
        dopri5(lambda x, t: x, x0, [0.0, 1.0], min_factor=1.5)


def test_registries():
    assert set(SOLVERS) == {"euler", "midpoint", "rk4", "dopri5"}
    assert set(SCHEDULES) == {"uniform", "sigmoid"}
    assert [SOLVERS[k].order for k in ("euler", "midpoint", "rk4", "dopri5")] == [1, 2, 4, 5]
    assert SOLVERS["dopri5"].adaptive and not any(SOLVERS[k].adaptive for k in FIXED)
    assert SOLVERS["euler"] is euler and SOLVERS["rk4"] is rk4
