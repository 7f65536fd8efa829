"""lumina_kernels.merge_tokens (context drop): kernels against the reference, gradients, opcheck, bad input."""
import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_close

from conftest import device_params

needs_ext = pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}")
CASES = [((13, 17), (2, 2)), ((13, 17), (4, 4)), ((8, 8), (2, 2)), ((3, 5, 7), (1, 2, 2)), ((3, 5, 7), (2, 4, 4)),
         ((1, 1), (2, 2))]


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
    (lambda x: lk.merge_tokens(x, (24,), 2), "grid"),
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
