"""The token-merging and solver-step CUDA kernels (csrc/merge, csrc/solver), run on the CPU by the warp emulator.

csrc/cuda_emulate.h supplies what these plain CUDA kernels use (thread and block indices, grid-stride loops,
__syncthreads, static __shared__ arrays, warp shuffles, bf16 / fp16 and the _rn intrinsics with exact host
equivalents) on top of the fiber emulator of the flash kernels; tests/emulator/kernels_emulator.cpp calls the real
launchers (grid sizes, the vectorised / scalar choice, the renorm passes). Results are compared bit for bit with
the CPU kernels where the contracts make them equal (solver_update's FMA chain, cfg_combine without renorm,
merge_tokens' fp32 sums in token order) and with lumina_kernels.reference; the renorm partial sums bit for bit with
a model of the kernel's 256-lane shuffle tree. Every output lies in a NaN-filled buffer with guards on both sides.
Not covered: PTX / nvcc itself (the CUDA build compiles the same source), speed.
"""
import sys
import pathlib

import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_close, assert_within_update_bound

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "emulator"))
import kernel_runner as kr  # noqa: E402
from kernel_runner import fresh_config  # noqa: E402,F401  (autouse: a fresh emulator configuration per test)

pytestmark = [pytest.mark.skipif(kr.compiler() is None, reason="no host C++ compiler for the warp emulator"),
              pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}"),
              pytest.mark.slow]  # an emulator sweep: CI's first stage




# ---- merge_tokens -----------------------------------------------------------------------------------------
MERGE_CASES = [((13, 17), (2, 3)), ((13, 17), (4, 4)), ((3, 5, 7), (2, 2, 3)), ((3, 5, 7), (1, 4, 4)), ((1, 1), (2, 2)),
               ((5, 3), (1, 1)), ((10,), (4,)), ((37,), (5,))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("grid,factor", MERGE_CASES, ids=str)
@pytest.mark.parametrize("masked", [False, True])
def test_merge_tokens(grid, factor, dtype, masked):
    L = 1
    for g in grid:
        L *= g
    x = torch.randn(2, L, 3, 5).to(dtype)
    m = torch.rand(2, L) > 0.4 if masked else None
    if masked:
        m[1, : L // 2] = False  # whole cells without a token
    out, n = kr.merge_tokens(x, grid, factor, m, offset=1 if masked else 0)
    cpu_out, cpu_n = lk.merge_tokens(x, grid, factor, m)
    assert torch.equal(n, cpu_n) and torch.equal(out, cpu_out), "fp32 sums in token order: bitwise as the CPU kernel"
    want, wn = reference.merge_tokens(x, grid, factor, m)
    assert torch.equal(n, wn)
    assert_close(out, want, msg=f"{grid} {factor}")
    g = torch.randn_like(out)
    gx = kr.merge_tokens_backward(g, m, n, grid, factor)
    assert torch.equal(gx, torch.ops.lumina.merge_tokens_backward(g, m, n, list(grid), list(factor)))
    x64 = x.double().requires_grad_(True)
    (want_gx,) = torch.autograd.grad(reference.merge_tokens(x64, grid, factor, m)[0], x64, g.double())
    assert_close(gx, want_gx.to(dtype), kind="grad")


def test_merge_tokens_grid_stride_and_zero_width():
    # one block of 256 threads for 2 * 7 * 6 * 15 outputs and 2 * 221 * 15 gradients: the grid-stride loops
    kr.configure(max_blocks=1)
    x = torch.randn(2, 13 * 17, 15).bfloat16()
    out, n = kr.merge_tokens(x, (13, 17), (2, 3))
    assert torch.equal(out, lk.merge_tokens(x, (13, 17), (2, 3))[0])
    g = torch.randn_like(out)
    assert torch.equal(kr.merge_tokens_backward(g, None, n, (13, 17), (2, 3)),
                       torch.ops.lumina.merge_tokens_backward(g, None, n, [13, 17], [2, 3]))
    assert [(r[1], r[3]) for r in kr.launches()] == [(5, 1), (26, 1)]  # grids as launched, 1 block run
    # width 0: no output elements, but the counts are still written (once a launch of zero blocks)
    x0 = torch.randn(2, 6, 0)
    m = torch.rand(2, 6) > 0.3
    out0, n0 = kr.merge_tokens(x0, (2, 3), (2, 2), m)
    assert out0.shape == (2, 2, 0) and torch.equal(n0, reference.merge_tokens(x0, (2, 3), (2, 2), m)[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
@pytest.mark.parametrize("masked", [False, True])
def test_merge_tokens_cells(dtype, shared, masked):
    B, L, n_cells = 3, 37, 13  # ids in [0, 9): cells 9..12 empty
    x = torch.randn(B, L, 3, 5).to(dtype)
    cells = torch.randint(0, 9, (L,) if shared else (B, L), dtype=torch.int32)
    m = None
    if masked:
        m = torch.rand(B, L) > 0.4
        m[1] = False  # an all-masked row
    out, n = kr.merge_tokens_cells(x, cells, n_cells, m, offset=1 if masked else 0)
    cpu_out, cpu_n = lk.merge_tokens(x, mask=m, cells=cells, n_cells=n_cells)
    assert torch.equal(n, cpu_n) and torch.equal(out, cpu_out), "fp32 sums in token order: bitwise as the CPU kernel"
    want, wn = reference.merge_tokens(x, mask=m, cells=cells, n_cells=n_cells)
    assert torch.equal(n, wn)
    assert_close(out, want, msg=f"shared={shared}")
    g = torch.randn_like(out)
    gx = kr.merge_tokens_cells_backward(g, m, n, cells, offset=1 if masked else 0)
    assert torch.equal(gx, torch.ops.lumina.merge_tokens_cells_backward(g, m, n, cells))
    x64 = x.double().requires_grad_(True)
    (want_gx,) = torch.autograd.grad(reference.merge_tokens(x64, mask=m, cells=cells, n_cells=n_cells)[0], x64,
                                     g.double())
    assert_close(gx, want_gx.to(dtype), kind="grad")


def test_merge_tokens_cells_ids_out_of_range_are_skipped_and_grid_stride():
    # what the kernels do with ids the host did not check (CUDA graph capture): the token is in no cell, nothing is
    # read or written out of bounds (guarded buffers), the rest is bit for bit the CPU kernel with the token masked
    B, L, n_cells = 2, 41, 6
    x = torch.randn(B, L, 15).bfloat16()
    cells = torch.randint(0, n_cells, (B, L))
    cells[0, 3], cells[0, 40], cells[1, 0], cells[1, 7] = -1, n_cells, -(2**40), 2**40
    inside = (cells >= 0) & (cells < n_cells)
    kr.configure(max_blocks=1)  # one block of 256 threads for 2 * 6 * 15 outputs, 2 * 41 * 15 gradients
    out, n = kr.merge_tokens_cells(x, cells, n_cells)
    want, wn = lk.merge_tokens(x, mask=inside, cells=cells.clamp(0, n_cells - 1), n_cells=n_cells)
    assert torch.equal(out, want) and torch.equal(n, wn)
    assert torch.equal(wn, reference.merge_tokens(x, cells=cells, n_cells=n_cells)[1])
    g = torch.randn_like(out)
    gx = kr.merge_tokens_cells_backward(g, None, n, cells)
    assert torch.equal(gx, torch.ops.lumina.merge_tokens_cells_backward(g, inside, n, cells.clamp(0, n_cells - 1)))
    assert not gx[~inside].any()
    assert [(r[1], r[3]) for r in kr.launches()] == [(1, 1), (5, 1)]  # grids as launched, 1 block run


# ---- solver_update ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kdtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("terms", [1, 2, 4, 7])
@pytest.mark.parametrize("offset", [0, 1])
def test_solver_update(state, kdtype, terms, offset):
    shape = (3, 91) if terms % 2 else (5, 13)  # n % 4 == 1: a vector tail of one element
    x = torch.randn(shape, dtype=torch.float64).to(state)
    ks = [torch.randn(shape, dtype=torch.float64).to(kdtype) for _ in range(terms)]
    coeffs = (torch.rand(terms, dtype=torch.float64) * 4 - 2).tolist()
    if terms > 2:
        coeffs[1] = 0.0  # skipped, as the host skips it
    h = float(torch.rand(()) * 0.2 - 0.1)
    out = kr.solver_update(x, ks, coeffs, h, offset=offset)
    cpu = lk.solver_update(x, ks, coeffs, h)
    assert torch.equal(out, cpu), f"max diff {(out.double() - cpu.double()).abs().max().item():.3g}: FMA chain order"
    assert_within_update_bound(out, reference.solver_update(x, ks, coeffs, h), x, ks, coeffs, h)
    V = 16 // x.element_size()
    (kernel,) = kr.launched_kernels()
    assert kernel.endswith(f", {V if offset == 0 else 1}>"), kernel  # aligned: vectorised; offset by 1: scalar


def test_solver_update_misaligned_ks_only_and_grid_stride():
    x = torch.randn(4099)
    ks = [torch.randn(4099).bfloat16() for _ in range(3)]
    kr.configure(max_blocks=1)  # 1025 vectors, then 4099 elements, over 256 threads
    a = kr.solver_update(x, ks, [0.5, -1.0, 2.0], 0.05)
    b = kr.solver_update(x, ks, [0.5, -1.0, 2.0], 0.05, k_offset=1)  # x and out aligned, ks not: scalar path
    want = lk.solver_update(x, ks, [0.5, -1.0, 2.0], 0.05)
    assert torch.equal(a, want) and torch.equal(b, want)
    vec, scalar = kr.launched_kernels()
    assert vec.endswith(", 4>") and scalar.endswith(", 1>"), (vec, scalar)
    assert [(r[1], r[3]) for r in kr.launches()] == [(4, 1), (17, 1)]  # grids as launched, 1 block run


# ---- cfg_combine ------------------------------------------------------------------------------------------
CFG_SHAPES = [(4, 13, 17), (3, 273), (1, 4, 13, 17), (2, 16, 8)]  # the last two vectorise (plain / both)


def _tree_sums(sq: torch.Tensor) -> float:
    """The kernel's reduction of one chunk: 256 lanes striding over it, a butterfly per warp, the 8 warp sums
    through __shared__, a butterfly again (float64, bit for bit)."""
    lanes = torch.zeros(256, dtype=torch.float64)
    for t in range(256):
        s = 0.0
        for v in sq[t::256].tolist():
            s = s + v  # v is the square of a float32: exact, so fma(v, v, s) rounds once, as this add does
        lanes[t] = s
    idx = torch.arange(32)

    def butterfly(w):
        for o in (16, 8, 4, 2, 1):
            w = w + w[..., idx ^ o]
        return w

    warps = butterfly(lanes.view(8, 32))[:, 0]
    return butterfly(torch.cat([warps, torch.zeros(24, dtype=torch.float64)]))[0].item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", CFG_SHAPES, ids=str)
@pytest.mark.parametrize("channels", [None, 1, 3])
def test_cfg_combine(dtype, shape, channels):
    cond = torch.randn(shape, dtype=torch.float64).to(dtype)
    uncond = torch.randn(shape, dtype=torch.float64).to(dtype)
    for scale, offset in ((4.0, 0), (0.3, 1), (-0.7, 0)):
        kr.configure()
        got, _ = kr.cfg_combine(cond, uncond, scale, channels, offset=offset)
        cpu = lk.cfg_combine(cond, uncond, scale, channels=channels)
        assert torch.equal(got, cpu), f"scale {scale}: max diff {(got - cpu).abs().max().item():.3g}"
        assert_close(got, reference.cfg_combine(cond, uncond, scale, channels, None), msg=f"scale {scale}")
        V = 4 if got.dtype == torch.float32 else 2
        per, inner = cond[0].numel(), cond[0, 0].numel()
        vec = offset == 0 and per % V == 0 and (channels is None or inner % V == 0)  # the launcher's rule
        (kernel,) = kr.launched_kernels()
        assert kernel.endswith(f", {V if vec else 1}>"), kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,chunks", [((4, 13, 17), None), ((3, 273), 4), ((2, 4099), None), ((2, 16, 8), 3)],
                         ids=str)
@pytest.mark.parametrize("renorm", [0.5, 100.0])
def test_cfg_combine_renorm(dtype, shape, chunks, renorm):
    cond = torch.randn(shape, dtype=torch.float64).to(dtype)
    uncond = torch.randn(shape, dtype=torch.float64).to(dtype)
    B = shape[0]
    channels = 3 if len(shape) == 3 else None
    got, ws = kr.cfg_combine(cond, uncond, 4.0, channels, renorm, chunks=chunks)
    want = reference.cfg_combine(cond, uncond, 4.0, channels, renorm)
    assert_close(got, want, msg=f"renorm {renorm}")
    assert_close(got, lk.cfg_combine(cond, uncond, 4.0, channels=channels, renorm=renorm))
    # the partial sums, bit for bit, from v (the output without renorm) and cond
    n_chunks = chunks or kr.cfg_chunks(cond[0].numel())
    v, _ = kr.cfg_combine(cond, uncond, 4.0, channels)
    per = v[0].numel()
    chunk = -(-per // n_chunks)
    partial = ws[: B * n_chunks * 2].view(B, n_chunks, 2)
    for b in range(B):
        for j in range(n_chunks):
            sl = slice(j * chunk, min(per, (j + 1) * chunk))
            assert partial[b, j, 0].item() == _tree_sums(v[b].reshape(-1)[sl].double() ** 2), (b, j)
            assert partial[b, j, 1].item() == _tree_sums(cond[b].reshape(-1)[sl].float().double() ** 2), (b, j)
    ratio = ws[B * n_chunks * 2:]
    assert torch.equal(got, v * ratio.float().view(B, *([1] * (v.dim() - 1))))


def test_cfg_combine_renorm_float64_grid_stride_and_thread_order():
    cond = torch.randn(3, 4, 13, 17, dtype=torch.float64)
    uncond = -cond + 0.1 * torch.randn_like(cond)
    want = reference.cfg_combine(cond, uncond, 4.0, None, 1.5)
    results = []
    for seed, cap in ((1, 0), (2, 1), (3, 2)):
        kr.configure(seed=seed, max_blocks=cap)
        got, _ = kr.cfg_combine(cond, uncond, 4.0, None, 1.5, chunks=5)
        assert_close(got, want)
        results.append(got)
        if cap:
            assert all(r[3] <= cap for r in kr.launches())
    assert all(torch.equal(results[0], r) for r in results[1:]), "deterministic for any grid and thread order"


# ---- the emulator itself ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case,message", [
    (1, "__shared__ memory race"),         # two threads write one __shared__ word between barriers
    (2, "partial mask"),                   # __shfl_xor_sync with half a warp in the mask
    (3, "deadlock"),                       # half the block skips __syncthreads
    (4, "invalid launch configuration"),   # a grid of zero blocks (what a zero-width merge used to launch)
])
def test_emulator_reports_defects(case, message):
    with pytest.raises(RuntimeError, match=message):
        kr.defect(case)
