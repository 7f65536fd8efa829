"""lumina_kernels.solver_update and cfg_combine (fused solver steps): kernels against the reference, the solvers
against their pre-fusion formulas, opcheck, bad input, and that the sampler really runs the fused ops."""
import math
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lumina_kernels as lk
from lumina.sampling import cfg_velocity, sample, solvers
from lumina.sampling.guidance import cfg_combine as guidance_cfg_combine
from lumina_kernels import reference
from lumina_kernels.testing import assert_close, assert_within_update_bound

from conftest import device_params

needs_ext = pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}")
# torch's CPU add / lerp are fused multiply-adds where its vector kernels have FMA: then the kernels must match
# the reference bit for bit (elsewhere within the rounding bound of the contract).
TORCH_CPU_FMA = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
SHAPES = [(1, 4, 13, 17), (2, 16, 97), (3, 273)]
STATES = [torch.float32, torch.float64]
KDTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
ALL_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _coeffs(n: int, zeros: bool = True) -> list[float]:
    cs = (torch.rand(n, dtype=torch.float64) * 4 - 2).tolist()
    if zeros and n > 1:  # some zero coefficients, never all
        for i in torch.randperm(n)[: n // 2].tolist():
            cs[i] = 0.0
    return cs


def _check_update(out, want, x, ks, coeffs, h, bitwise: bool):
    if bitwise:
        assert torch.equal(out, want), f"max diff {(out.double() - want.double()).abs().max().item():.3g}"
    assert_within_update_bound(out, want, x, ks, coeffs, h)


# ----------------------------------------------------------------------------------------------
# solver_update
# ----------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("state", STATES, ids=str)
@pytest.mark.parametrize("kdtype", KDTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_solver_update_matches_reference(device, state, kdtype, shape, n):
    x = torch.randn(shape, device=device, dtype=torch.float64).to(state)
    ks = [torch.randn(shape, device=device, dtype=torch.float64).to(kdtype) for _ in range(n)]
    coeffs, h = _coeffs(n), float(torch.rand(()) * 0.2 - 0.1)
    assert lk.explain("solver_update", x, ks).backend == device
    out = lk.solver_update(x, ks, coeffs, h)
    want = reference.solver_update(x, ks, coeffs, h)
    _check_update(out, want, x, ks, coeffs, h, bitwise=device == "cpu" and TORCH_CPU_FMA)


@needs_ext
@pytest.mark.parametrize("device", device_params())
def test_solver_update_zero_coefficients_and_h(device):
    x = torch.randn(3, 273, device=device)
    ks = [torch.randn(3, 273, device=device).bfloat16() for _ in range(3)]
    out = lk.solver_update(x, ks, [0.0, 0.0, 0.0], 0.5)  # all zero: a copy of x
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    # h = 0 with nonzero coefficients: x + 0 * k, as torch.add(alpha=0.0) gives (not skipped)
    want = reference.solver_update(x, ks, [1.0, 0.0, 2.0], 0.0)
    assert torch.equal(lk.solver_update(x, ks, [1.0, 0.0, 2.0], 0.0), want)
    # a zero coefficient skips its k entirely: inf there does not poison the result (0 * inf would be NaN)
    bad = torch.full_like(x, float("inf"))
    assert torch.equal(lk.solver_update(x, [ks[0], bad], [1.0, 0.0], 0.1), lk.solver_update(x, [ks[0]], [1.0], 0.1))


@needs_ext
@pytest.mark.parametrize("device", device_params())
def test_solver_update_views(device):
    """Non-contiguous and offset views: the wrapper makes them contiguous (or reads offset views in place)."""
    big = torch.randn(2, 16, 2 * 97, device=device, dtype=torch.float64)
    x = big[..., ::2]  # non-contiguous state
    doubled = torch.randn(4, 16, 97, device=device).half()
    k0, k1 = doubled[:2], doubled[2:]  # halves of one doubled-batch output: offset views
    k2 = torch.randn(2, 97, 16, device=device).transpose(1, 2).half()  # transposed
    k3 = torch.randn(1, 2 * 16 * 97 + 1, device=device).half()[0, 1:].view(2, 16, 97)  # odd storage offset
    ks, coeffs, h = [k0, k1, k2, k3], [0.5, -1.0, 0.0, 2.0], 0.07
    out = lk.solver_update(x, ks, coeffs, h)
    want = reference.solver_update(x.contiguous(), [k.contiguous() for k in ks], coeffs, h)
    _check_update(out, want, x, ks, coeffs, h, bitwise=device == "cpu" and TORCH_CPU_FMA)
    # the compiled op itself takes offset views as they are
    raw = torch.ops.lumina.solver_update(x.contiguous(), [k0, k1, k3], [0.5, -1.0, 2.0], h)
    _check_update(raw, reference.solver_update(x, [k0, k1, k3], [0.5, -1.0, 2.0], h), x, [k0, k1, k3],
                  [0.5, -1.0, 2.0], h, bitwise=device == "cpu" and TORCH_CPU_FMA)


@needs_ext
def test_solver_update_fallbacks_are_explained():
    x = torch.randn(2, 5)
    ks = [torch.randn(2, 5), torch.randn(2, 5).bfloat16()]
    d = lk.explain("solver_update", x, ks)
    assert d.backend == "reference" and "mix dtypes" in str(d)
    want = reference.solver_update(x, ks, [1.0, 2.0], 0.1)
    torch.testing.assert_close(lk.solver_update(x, ks, [1.0, 2.0], 0.1), want)
    # differentiable through the reference
    k = torch.randn(2, 5, requires_grad=True)
    d = lk.explain("solver_update", x, [k])
    assert d.backend == "reference" and "inference-only" in str(d)
    (g,) = torch.autograd.grad(lk.solver_update(x, [k], [0.5], 0.2).sum(), k)
    assert torch.allclose(g, torch.full_like(g, 0.1))
    with torch.no_grad():
        assert lk.explain("solver_update", x, [k]).backend == "cpu"


# ----------------------------------------------------------------------------------------------
# the solvers against their pre-fusion formulas (torch.add, velocities cast to the accumulation dtype)
# ----------------------------------------------------------------------------------------------
def _old_comb(x, h, coeffs, ks):
    out = None
    for c, k in zip(coeffs, ks):
        if c == 0:
            continue
        if out is None:
            out = torch.add(x, k, alpha=h * c)
        else:
            out.add_(k, alpha=h * c)
    return x.clone() if out is None else out


def _old_fixed_grid(name, v, x0, grid):
    acc = torch.float32 if x0.dtype in (torch.bfloat16, torch.float16) else x0.dtype

    def f(x, t):
        return v(x.to(x0.dtype), torch.full((x0.shape[0],), t, dtype=acc)).to(acc)

    x = x0.to(acc)
    for t0, t1 in zip(grid[:-1], grid[1:]):
        h = t1 - t0
        if name == "euler":
            x = torch.add(x, f(x, t0), alpha=t1 - t0)
        elif name == "midpoint":
            k1 = f(x, t0)
            k2 = f(torch.add(x, k1, alpha=0.5 * h), t0 + 0.5 * h)
            x = torch.add(x, k2, alpha=h)
        else:  # rk4
            tm = t0 + 0.5 * h
            k1 = f(x, t0)
            k2 = f(torch.add(x, k1, alpha=0.5 * h), tm)
            k3 = f(torch.add(x, k2, alpha=0.5 * h), tm)
            k4 = f(torch.add(x, k3, alpha=h), t1)
            x = _old_comb(x, h, (1 / 6, 1 / 3, 1 / 3, 1 / 6), (k1, k2, k3, k4))
    return x.to(x0.dtype)


def _field(x, t):
    """An analytic velocity field, returned in x's dtype (as a model would)."""
    tt = t.reshape(-1, *([1] * (x.dim() - 1))).to(torch.float32)
    xf = x.float()
    return (-xf * (1 + tt) + torch.cos(3 * tt) * torch.tanh(2 * xf) + 0.3).to(x.dtype)


def _assert_solver_close(new, old, steps):
    if TORCH_CPU_FMA:
        assert torch.equal(new, old), f"max diff {(new.double() - old.double()).abs().max().item():.3g}"
    eps = torch.finfo(new.dtype).eps
    torch.testing.assert_close(new, old, rtol=8 * eps * steps, atol=8 * eps * steps)


@needs_ext
@pytest.mark.parametrize("name", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_fixed_grid_solvers_match_the_torch_add_formulas(name, dtype):
    x0 = torch.randn(2, 4, 13, 17).to(dtype)
    grid = torch.linspace(0, 1, 9, dtype=torch.float64).tolist()
    new = solvers.SOLVERS[name](_field, x0, grid)
    old = _old_fixed_grid(name, _field, x0, grid)
    _assert_solver_close(new.float() if dtype == torch.bfloat16 else new,
                         old.float() if dtype == torch.bfloat16 else old, len(grid))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_dopri5_matches_the_torch_add_formulas(dtype, monkeypatch):
    x0 = torch.randn(2, 16, 97).to(dtype)
    stats_new, stats_old = {}, {}
    new = solvers.dopri5(_field, x0, [0.0, 0.5, 1.0], rtol=1e-4, atol=1e-4, stats=stats_new)
    # the pre-fusion dopri5: _comb with torch.add on velocities cast to the accumulation dtype
    acc = torch.float32 if dtype == torch.bfloat16 else dtype
    old_kernels = types.SimpleNamespace(
        solver_update=lambda x, ks, coeffs, h: _old_comb(x, h, coeffs, [k.to(acc) for k in ks]))
    monkeypatch.setattr(solvers, "lumina_kernels", old_kernels)
    old = solvers.dopri5(_field, x0, [0.0, 0.5, 1.0], rtol=1e-4, atol=1e-4, stats=stats_old)
    assert stats_new == stats_old and stats_new["steps"] > 2
    _assert_solver_close(new.float(), old.float(), stats_new["steps"])


# ----------------------------------------------------------------------------------------------
# cfg_combine
# ----------------------------------------------------------------------------------------------
def _out_dtype(dtype):
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("channels", [None, 1, 3, 64])
@pytest.mark.parametrize("renorm", [None, 0.5, 100.0])
def test_cfg_combine_matches_reference(device, dtype, shape, channels, renorm):
    out2 = torch.randn(2 * shape[0], *shape[1:], device=device, dtype=torch.float64).to(dtype)
    cond, uncond = out2[: shape[0]], out2[shape[0]:]  # the halves of a doubled-batch output (offset views)
    for scale in (4.0, 0.3, 1.0, 0.0, -0.7):
        got = lk.cfg_combine(cond, uncond, scale, channels=channels, renorm=renorm)
        want = reference.cfg_combine(cond, uncond, scale, channels, renorm)
        assert got.dtype == _out_dtype(dtype) and got.shape == cond.shape
        if renorm is None and device == "cpu" and (TORCH_CPU_FMA or channels is not None):
            assert torch.equal(got, want), f"scale {scale}: max diff {(got - want).abs().max().item():.3g}"
        assert_close(got, want, msg=f"scale {scale}")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_cfg_renorm_clipped_and_unclipped(device, dtype):
    cond = torch.randn(2, 4, 13, 17, device=device, dtype=torch.float64)
    uncond = cond.clone()
    uncond[0] = -cond[0]  # sample 0: v = (2 w - 1) cond, far longer than r ||cond||: clipped
    uncond[1] = cond[1] * 1.1  # sample 1: v = (1.1 - 0.1 w) cond, shorter: untouched
    cond, uncond = cond.to(dtype), uncond.to(dtype)
    w, r = 4.0, 1.5
    got = lk.cfg_combine(cond, uncond, w, renorm=r)
    plain = lk.cfg_combine(cond, uncond, w)
    n = lambda a: torch.linalg.vector_norm(a.double().reshape(a.shape[0], -1), dim=1)  # noqa: E731
    assert n(plain)[0] > r * n(cond)[0] and n(plain)[1] < r * n(cond)[1]
    assert torch.allclose(n(got)[0], r * n(cond)[0], rtol=1e-6)
    assert torch.equal(got[1], plain[1])  # unclipped: not even multiplied
    assert_close(got, reference.cfg_combine(cond, uncond, w, None, r))
    # run-to-run deterministic, whatever the thread count
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        again = lk.cfg_combine(cond, uncond, w, renorm=r)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, again) and torch.equal(got, lk.cfg_combine(cond, uncond, w, renorm=r))


@needs_ext
@pytest.mark.parametrize("device", device_params())
def test_cfg_combine_views_and_mixed_dtypes(device):
    out = torch.randn(4, 3, 5, 7, device=device)
    cond, uncond = out[:2], out[2:]
    raw = torch.ops.lumina.cfg_combine(cond, uncond, 4.0, 3, None)  # offset views taken as they are
    assert torch.equal(raw, reference.cfg_combine(cond, uncond, 4.0, 3, None))
    nc_cond, nc_uncond = out[:2].transpose(2, 3), out[2:].transpose(2, 3)  # non-contiguous: the wrapper copies
    assert_close(lk.cfg_combine(nc_cond, nc_uncond, 4.0, renorm=1.0),
                 reference.cfg_combine(nc_cond.contiguous(), nc_uncond.contiguous(), 4.0, None, 1.0))
    mixed = uncond.bfloat16()
    d = lk.explain("cfg_combine", cond, mixed)
    assert d.backend == "reference" and "differ in dtype" in str(d)
    assert torch.equal(lk.cfg_combine(cond, mixed, 2.0), reference.cfg_combine(cond, mixed, 2.0))


@needs_ext
def test_guidance_cfg_combine_runs_the_op():
    c, u = torch.randn(2, 4, 3, 3).bfloat16(), torch.randn(2, 4, 3, 3).bfloat16()
    for kw in ({}, {"channels": 3}, {"renorm": 1.0}, {"channels": 3, "renorm": 0.8}):
        with _OpLog() as log:
            got = guidance_cfg_combine(c, u, 4.0, **kw)
        assert log.count("lumina::cfg_combine") == 1, log.ops
        assert_close(got, reference.cfg_combine(c, u, 4.0, kw.get("channels"), kw.get("renorm")))


# ----------------------------------------------------------------------------------------------
# opcheck and bad input
# ----------------------------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    x = torch.randn(2, 16, 97, device=device)
    ks = [torch.randn(2, 16, 97, device=device).bfloat16() for _ in range(3)]
    torch.library.opcheck(torch.ops.lumina.solver_update.default, (x, ks, [0.5, 0.0, -1.5], 0.1))
    torch.library.opcheck(torch.ops.lumina.solver_update.default,
                          (x.double(), [k.float() for k in ks], [0.0, 0.0, 0.0], 0.25))
    c, u = torch.randn(2, 4, 13, 17, device=device).half(), torch.randn(2, 4, 13, 17, device=device).half()
    torch.library.opcheck(torch.ops.lumina.cfg_combine.default, (c, u, 4.0))
    torch.library.opcheck(torch.ops.lumina.cfg_combine.default, (c.float(), u.float(), 4.0, 3, 1.0))
    torch.library.opcheck(torch.ops.lumina.cfg_combine.default, (c.double(), u.double(), 0.3, None, 0.5))


_X = torch.randn(2, 5)
_K = torch.randn(2, 5)


@pytest.mark.parametrize("call,name", [
    (lambda: lk.solver_update(_X.bfloat16(), [_K], [1.0], 0.1), "x"),
    (lambda: lk.solver_update(_X.long(), [_K], [1.0], 0.1), "x"),
    (lambda: lk.solver_update(_X, [], [], 0.1), "ks"),
    (lambda: lk.solver_update(_X, [_K] * 8, [1.0] * 8, 0.1), "ks"),
    (lambda: lk.solver_update(_X, _K, [1.0], 0.1), "ks"),
    (lambda: lk.solver_update(_X, [_K, _K[:1]], [1.0, 1.0], 0.1), r"ks\[1\]"),
    (lambda: lk.solver_update(_X, [_K, _K.long()], [1.0, 1.0], 0.1), r"ks\[1\]"),
    (lambda: lk.solver_update(_X, [_K, _K], [1.0], 0.1), "coeffs"),
    (lambda: lk.solver_update(_X, [_K], [float("nan")], 0.1), "coeffs"),
    (lambda: lk.solver_update(_X, [_K], [1.0], float("inf")), "h"),
    (lambda: lk.solver_update(_X, [_K], [1.0], None), "h"),
    (lambda: lk.cfg_combine(_X, _K[:1], 4.0), "uncond"),
    (lambda: lk.cfg_combine(_X, _K.long(), 4.0), "uncond"),
    (lambda: lk.cfg_combine(_X, _K, float("nan")), "scale"),
    (lambda: lk.cfg_combine(_X, _K, 4.0, channels=0), "channels"),
    (lambda: lk.cfg_combine(_X[0], _K[0], 4.0, channels=1), "channels"),
    (lambda: lk.cfg_combine(_X, _K, 4.0, renorm=-1.0), "renorm"),
    (lambda: lk.cfg_combine(_X, _K, 4.0, renorm=float("inf")), "renorm"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


@needs_ext
@pytest.mark.parametrize("call,name", [
    (lambda: torch.ops.lumina.solver_update(_X.bfloat16(), [_K], [1.0], 0.1), "x"),
    (lambda: torch.ops.lumina.solver_update(_X, [], [], 0.1), "ks"),
    (lambda: torch.ops.lumina.solver_update(_X, [_K] * 8, [1.0] * 8, 0.1), "ks"),
    (lambda: torch.ops.lumina.solver_update(_X, [_K, _K], [1.0], 0.1), "coeffs"),
    (lambda: torch.ops.lumina.solver_update(_X, [_K], [float("inf")], 0.1), "coeffs"),
    (lambda: torch.ops.lumina.solver_update(_X, [_K], [1.0], float("nan")), "h"),
    (lambda: torch.ops.lumina.solver_update(_X, [_K, _K.half()], [1.0, 1.0], 0.1), r"ks\[1\]"),
    (lambda: torch.ops.lumina.solver_update(_X, [_K.t().contiguous()], [1.0], 0.1), r"ks\[0\]"),
    (lambda: torch.ops.lumina.solver_update(_X, [torch.randn(5, 2).t()], [1.0], 0.1), r"ks\[0\]"),
    (lambda: torch.ops.lumina.solver_update(_X, [_K.long()], [1.0], 0.1), r"ks\[0\]"),
    (lambda: torch.ops.lumina.solver_update(torch.randn(5, 2).t(), [_K], [1.0], 0.1), "x"),
    (lambda: torch.ops.lumina.cfg_combine(_X, _K.double(), 4.0), "uncond"),
    (lambda: torch.ops.lumina.cfg_combine(_X, _K[:1], 4.0), "uncond"),
    (lambda: torch.ops.lumina.cfg_combine(torch.randn(5, 2).t(), _K, 4.0), "cond"),
    (lambda: torch.ops.lumina.cfg_combine(_X.long(), _K.long(), 4.0), "cond"),
    (lambda: torch.ops.lumina.cfg_combine(_X, _K, float("inf")), "scale"),
    (lambda: torch.ops.lumina.cfg_combine(_X, _K, 4.0, 0), "channels"),
    (lambda: torch.ops.lumina.cfg_combine(_X[0], _K[0], 4.0, 1), "channels"),
    (lambda: torch.ops.lumina.cfg_combine(_X, _K, 4.0, None, 0.0), "renorm"),
])
def test_compiled_op_checks_name_the_argument(call, name):
    with pytest.raises(RuntimeError, match=f"`{name}`"):
        call()


# ----------------------------------------------------------------------------------------------
# the sampler runs the fused ops
# ----------------------------------------------------------------------------------------------
class _OpLog(TorchDispatchMode):
    """Records every op dispatched while active, with its input dtypes."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
        self.ops.append((func._schema.name, dtypes, func))
        return func(*args, **(kwargs or {}))

    def count(self, name: str) -> int:
        return sum(1 for n, _, _ in self.ops if n == name)


@needs_ext
@pytest.mark.parametrize("solver,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_sample_calls_the_fused_ops(solver, per_step):
    b, steps = 2, 3
    cond, uncond = torch.randn(b, 4, 6, 6).bfloat16(), torch.randn(b, 4, 6, 6).bfloat16()

    def model(xx, tt):  # a doubled-batch "model" returning bf16, like the pipelines in bf16
        return torch.cat([cond, uncond])

    x0 = torch.randn(b, 4, 6, 6).bfloat16()
    with _OpLog() as log:
        out = sample(cfg_velocity(model, 4.0, channels=3), x0, steps, solver, progress=False)
    assert out.dtype == torch.bfloat16
    assert log.count("lumina::solver_update") == per_step * steps
    assert log.count("lumina::cfg_combine") == per_step * steps
    assert log.count("aten::add") == 0 and log.count("aten::lerp") == 0  # no unfused arithmetic left


@needs_ext
@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_sample_reads_low_precision_velocities_without_a_copy(solver):
    x0 = torch.randn(2, 4, 6, 6).bfloat16()
    with _OpLog() as log:
        sample(lambda x, t: x * -0.5, x0, 3, solver, progress=False)
    assert log.count("lumina::solver_update") >= 3
    ups = [op for op in log.ops if op[0] == "aten::_to_copy" and op[1] == (torch.bfloat16,)]
    # only x0 into the float32 state (and dopri5's two velocities of its initial step-size estimate), never the
    # velocities the updates read
    assert len(ups) == (3 if solver == "dopri5" else 1), [o[:2] for o in ups]


@needs_ext
def test_sample_falls_back_to_the_reference(monkeypatch):
    x0 = torch.randn(2, 3, 5, 5)
    fast = sample(_field, x0, 4, "rk4", progress=False)
    monkeypatch.setenv("LUMINA_KERNELS_DISABLE", "cpu,cuda")
    assert lk.explain("solver_update", x0, [x0]).backend == "reference"
    with _OpLog() as log:
        slow = sample(_field, x0, 4, "rk4", progress=False)
    assert log.count("lumina::solver_update") == 0
    if TORCH_CPU_FMA:
        assert torch.equal(fast, slow)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
