"""lumina_kernels.merge_tokens (context drop): kernels against the reference, gradients, opcheck, bad input; the grid
layout (1, 2 or 3 axes) and the explicit one (cells=, n_cells=)."""
import math

import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_close

from conftest import device_params

needs_ext = pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}")
CASES = [((13, 17), (2, 2)), ((13, 17), (4, 4)), ((8, 8), (2, 2)), ((3, 5, 7), (1, 2, 2)), ((3, 5, 7), (2, 4, 4)),
         ((1, 1), (2, 2)), ((10,), (4,)), ((37,), (1,)), ((1,), (3,))]


def test_reference_against_loops():
    x = torch.randn(2, 5 * 7, 3, dtype=torch.float64)
    m = torch.rand(2, 35) > 0.3
    out, n = reference.merge_tokens(x, (5, 7), (2, 3), m)
    assert out.shape == (2, 3 * 3, 3)
    for b in range(2):
        for ci in range(3):
            for cj in range(3):
                toks = [i * 7 + j for i in range(2 * ci, min(5, 2 * ci + 2)) for j in range(3 * cj, min(7, 3 * cj + 3))
                        if m[b, i * 7 + j]]
                want = x[b, toks].mean(0) if toks else torch.zeros(3, dtype=torch.float64)
                assert n[b, ci * 3 + cj] == len(toks)
                assert torch.allclose(out[b, ci * 3 + cj], want)


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("grid,factor", CASES, ids=str)
@pytest.mark.parametrize("masked", [False, True])
def test_kernel_matches_reference(grid, factor, dtype, masked, device):
    L = 1
    for g in grid:
        L *= g
    x = torch.randn(2, L, 3, 24, device=device, dtype=dtype, requires_grad=True)
    m = (torch.rand(2, L, device=device) > 0.4) if masked else None
    out, n = lk.merge_tokens(x, grid, factor, m)
    want, wn = reference.merge_tokens(x.detach(), grid, factor, m)
    assert torch.equal(n, wn)
    assert_close(out, want, msg=f"{grid} {factor}")
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    x64 = x.detach().double().requires_grad_(True)
    (want_gx,) = torch.autograd.grad(reference.merge_tokens(x64, grid, factor, m)[0], x64, g.double())
    assert_close(gx, want_gx.to(dtype), kind="grad", msg=f"grad {grid} {factor}")


@needs_ext
@pytest.mark.parametrize("device", device_params())
def test_opcheck(device):
    x = torch.randn(2, 13 * 17, 2, 8, device=device, requires_grad=True)
    m = torch.rand(2, 13 * 17, device=device) > 0.3
    torch.library.opcheck(torch.ops.lumina.merge_tokens.default, (x, m, [13, 17], [2, 2]))
    torch.library.opcheck(torch.ops.lumina.merge_tokens.default, (x, None, [1, 13, 17], [1, 4, 4]))


@pytest.mark.parametrize("call,name", [
    (lambda x: lk.merge_tokens(x, (5, 5), 2), "grid"),
    (lambda x: lk.merge_tokens(x, (4, 6), 0), "factor"),
    (lambda x: lk.merge_tokens(x, (4, 6), (2, 2, 2)), "factor"),
    (lambda x: lk.merge_tokens(x, (25,), 2), "grid"),
    (lambda x: lk.merge_tokens(x, (24,), 0), "factor"),
    (lambda x: lk.merge_tokens(x, (24,), (2, 2)), "factor"),
    (lambda x: lk.merge_tokens(x, (1, 1, 4, 6), 2), "grid"),
    (lambda x: lk.merge_tokens(x), "grid"),
    (lambda x: lk.merge_tokens(x, (4, 6)), "factor"),
    (lambda x: lk.merge_tokens(x, (4, 6), 2, cells=torch.zeros(24, dtype=torch.long), n_cells=1), "grid"),
    (lambda x: lk.merge_tokens(x, None, 2, cells=torch.zeros(24, dtype=torch.long), n_cells=1), "factor"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(24, dtype=torch.long)), "n_cells"),
    (lambda x: lk.merge_tokens(x, n_cells=3), "cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(24, dtype=torch.long), n_cells=-1), "n_cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(24, dtype=torch.long), n_cells=True), "n_cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(24, dtype=torch.long), n_cells=2.0), "n_cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(24), n_cells=1), "cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(24, dtype=torch.int16), n_cells=1), "cells"),
    (lambda x: lk.merge_tokens(x, cells=[0] * 24, n_cells=1), "cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(2, 23, dtype=torch.long), n_cells=1), "cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(3, 24, dtype=torch.long), n_cells=1), "cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(2, 24, 1, dtype=torch.long), n_cells=1), "cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(24, dtype=torch.long, device="meta"), n_cells=1), "cells"),
    (lambda x: lk.merge_tokens(x, cells=torch.arange(24), n_cells=23), "cells"),  # an id out of range
    (lambda x: lk.merge_tokens(x, cells=torch.arange(24, dtype=torch.int32) - 1, n_cells=24), "cells"),  # -1
    (lambda x: lk.merge_tokens(x, cells=torch.zeros(2, 24, dtype=torch.long), n_cells=0), "cells"),
    (lambda x: lk.merge_tokens(x, mask=torch.ones(2, 23, dtype=torch.bool), cells=torch.zeros(24, dtype=torch.long),
                               n_cells=1), "mask"),
    (lambda x: lk.merge_tokens(x, (4, 6), 2, torch.ones(2, 23, dtype=torch.bool)), "mask"),
    (lambda x: lk.merge_tokens(x, (4, 6), 2, torch.ones(2, 24)), "mask"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call(torch.randn(2, 24, 2, 8))


def test_factor_larger_than_grid_pools_everything():
    x = torch.randn(1, 6, 4)
    out, n = lk.merge_tokens(x, (2, 3), 5)
    assert out.shape == (1, 1, 4) and n.item() == 6
    assert torch.allclose(out[0, 0], x[0].mean(0), atol=1e-6)


# ---- 1-D grids and the explicit layout -------------------------------------------------------------------
def _loop_merge(x, cells, n_cells, mask):
    """out, count by loops over tokens: cells (L,) or (B, L)."""
    B, L = x.shape[:2]
    ids = cells.expand(B, L)
    out = torch.zeros(B, n_cells, *x.shape[2:], dtype=torch.float64)
    count = torch.zeros(B, n_cells)
    for b in range(B):
        for c in range(n_cells):
            toks = [t for t in range(L) if ids[b, t] == c and (mask is None or mask[b, t])]
            count[b, c] = len(toks)
            if toks:
                out[b, c] = x[b, toks].double().mean(0)
    return out, count


def test_reference_1d_grid_edge_cell():
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    out, n = reference.merge_tokens(x, (10,), (4,))
    assert n.tolist() == [[4, 4, 2]] * 2  # cells [0..3], [4..7], [8, 9]
    for c, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        assert torch.allclose(out[:, c], x[:, a:b].mean(1))


@pytest.mark.parametrize("shared", [False, True])
def test_reference_cells_against_loops(shared):
    B, L, n_cells = 3, 11, 7  # ids in [0, 5): cells 5 and 6 are never named
    x = torch.randn(B, L, 2, 3, dtype=torch.float64)
    cells = torch.randint(0, 5, (L,) if shared else (B, L))
    m = torch.rand(B, L) > 0.3
    m[2] = False  # a row with every token masked
    out, n = reference.merge_tokens(x, mask=m, cells=cells, n_cells=n_cells)
    want, wn = _loop_merge(x, cells, n_cells, m)
    assert torch.equal(n, wn) and n[2].sum() == 0 and n[:, 5:].sum() == 0
    assert torch.allclose(out, want)


def _cells(kind: str, B: int, L: int, hi: int, index_dtype, device, g=None):
    shape = (L,) if kind == "shared" else (B, L)
    return torch.randint(0, hi, shape, generator=g).to(device=device, dtype=index_dtype)


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", ["shared", "per_sample"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("masked", [False, True])
def test_cells_kernel_matches_reference(kind, index_dtype, dtype, masked, device):
    B, L, n_cells = 3, 37, 13  # ids in [0, 9): cells 9..12 empty; odd L
    x = torch.randn(B, L, 3, 5, device=device, dtype=dtype, requires_grad=True)
    cells = _cells(kind, B, L, 9, index_dtype, device)
    m = None
    if masked:
        m = torch.rand(B, L, device=device) > 0.4
        m[1] = False  # an all-masked row: every cell empty
    out, n = lk.merge_tokens(x, mask=m, cells=cells, n_cells=n_cells)
    assert out.shape == (B, n_cells, 3, 5) and n.shape == (B, n_cells)
    want, wn = reference.merge_tokens(x.detach(), mask=m, cells=cells, n_cells=n_cells)
    assert torch.equal(n, wn) and n[:, 9:].sum() == 0
    assert_close(out, want, msg=f"{kind} {index_dtype}")
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    x64 = x.detach().double().requires_grad_(True)
    (want_gx,) = torch.autograd.grad(reference.merge_tokens(x64, mask=m, cells=cells, n_cells=n_cells)[0], x64,
                                     g.double())
    assert_close(gx, want_gx.to(dtype), kind="grad", msg=f"grad {kind} {index_dtype}")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("grid,factor", [((10,), (4,)), ((13, 17), (2, 3)), ((3, 5, 7), (2, 2, 3))], ids=str)
@pytest.mark.parametrize("per_sample", [False, True])
def test_cells_of_a_grid_give_the_grid_bitwise(grid, factor, per_sample, device):
    L = math.prod(grid)
    ids, cg = reference.merge_cells(grid, factor, device)
    cells = ids.expand(2, L).contiguous() if per_sample else ids
    x = torch.randn(2, L, 4, 3, device=device, dtype=torch.bfloat16, requires_grad=True)
    m = torch.rand(2, L, device=device) > 0.3
    a, an = lk.merge_tokens(x, grid, factor, m)
    b, bn = lk.merge_tokens(x, mask=m, cells=cells, n_cells=math.prod(cg))
    assert torch.equal(a, b) and torch.equal(an, bn)
    g = torch.randn_like(a)
    assert torch.equal(torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0])


def test_gradcheck_reference_float64():
    x = torch.randn(2, 10, 3, dtype=torch.float64, requires_grad=True)
    m = torch.rand(2, 10) > 0.3
    cells = torch.tensor([[4, 0, 0, 1, 4, 4, 1, 0, 2, 2], [1, 1, 1, 1, 1, 0, 0, 0, 0, 5]])
    assert torch.autograd.gradcheck(lambda t: reference.merge_tokens(t, (10,), (4,), m)[0], (x,))
    assert torch.autograd.gradcheck(lambda t: reference.merge_tokens(t, mask=m, cells=cells, n_cells=6)[0], (x,))
    # float64 has no kernel: the op runs (and differentiates) the reference
    assert torch.autograd.gradcheck(lambda t: lk.merge_tokens(t, mask=m, cells=cells[0], n_cells=5)[0], (x,))


@needs_ext
@pytest.mark.parametrize("device", device_params())
def test_opcheck_1d_grid_and_cells(device):
    x = torch.randn(2, 37, 2, 8, device=device, requires_grad=True)
    m = torch.rand(2, 37, device=device) > 0.3
    cells = torch.randint(0, 6, (2, 37), device=device)
    torch.library.opcheck(torch.ops.lumina.merge_tokens.default, (x, m, [37], [4]))
    torch.library.opcheck(torch.ops.lumina.merge_tokens_cells.default, (x, m, cells, 9))
    torch.library.opcheck(torch.ops.lumina.merge_tokens_cells.default, (x, None, cells[0].int(), 6))
    g = torch.randn(2, 9, 2, 8, device=device)
    n = lk.merge_tokens(x, mask=m, cells=cells, n_cells=9)[1]
    # (no double backward: the backward ops register no autograd of their own)
    torch.library.opcheck(torch.ops.lumina.merge_tokens_cells_backward.default, (g, m, n, cells),
                          test_utils=("test_schema", "test_faketensor"))


@needs_ext
@pytest.mark.parametrize("call", [
    lambda x, c: torch.ops.lumina.merge_tokens_cells(x, None, c + 1, 5),                           # id 5 of 5
    lambda x, c: torch.ops.lumina.merge_tokens_cells(x, None, c - 1, 5),                           # id -1
    lambda x, c: torch.ops.lumina.merge_tokens_cells_backward(torch.zeros(2, 5, 3), None, torch.ones(2, 5), c + 1),
    lambda x, c: torch.ops.lumina.merge_tokens_cells(x, None, c.float(), 5),                       # dtype
    lambda x, c: torch.ops.lumina.merge_tokens_cells(x, None, c[:, :5], 5),                        # shape
    lambda x, c: torch.ops.lumina.merge_tokens_cells(x, None, c[:1].expand(3, 6), 5),              # shape
])
def test_cpu_op_checks_the_cells(call):
    x = torch.randn(2, 6, 3)
    with pytest.raises(RuntimeError, match="`cells`"):
        call(x, torch.tensor([[0, 1, 2, 3, 4, 4], [4, 3, 2, 1, 0, 0]]))
    with pytest.raises(RuntimeError, match="`n_cells`"):
        torch.ops.lumina.merge_tokens_cells(x, None, torch.zeros(6, dtype=torch.long), -1)


@needs_ext
def test_cells_without_tokens_or_cells():
    x = torch.randn(2, 0, 3)
    out, n = lk.merge_tokens(x, cells=torch.zeros(2, 0, dtype=torch.long), n_cells=4)
    assert out.shape == (2, 4, 3) and not out.any() and not n.any()
    out, n = lk.merge_tokens(x, cells=torch.zeros(0, dtype=torch.int32), n_cells=0)
    assert out.shape == (2, 0, 3) and n.shape == (2, 0)
    out, n = lk.merge_tokens(torch.randn(0, 5, 3), cells=torch.zeros(5, dtype=torch.long), n_cells=2)
    assert out.shape == (0, 2, 3) and n.shape == (0, 2)
    x = torch.randn(2, 5, 0)  # no features: the counts still come back
    out, n = lk.merge_tokens(x, cells=torch.tensor([0, 0, 2, 2, 2]), n_cells=3)
    assert out.shape == (2, 3, 0) and n.tolist() == [[2, 0, 3]] * 2


@needs_ext
def test_cells_path_traces_without_graph_breaks():
    # under torch.compile the wrapper syncs nothing (no range check on the host); the compiled op checks on CPU
    x = torch.randn(2, 37, 2, 8, requires_grad=True)
    cells, m = torch.randint(0, 6, (2, 37)), torch.rand(2, 37) > 0.3

    def f(x, cells, m):
        out, n = lk.merge_tokens(x, mask=m, cells=cells, n_cells=9)
        return out * n[..., None, None]

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, cells, m)
    assert torch.equal(got, f(x, cells, m))
    (g,) = torch.autograd.grad(got.sum(), x)
    assert torch.equal(g, torch.autograd.grad(f(x, cells, m).sum(), x)[0])
    with pytest.raises(RuntimeError, match="`cells`"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(x, cells + 9, m)
