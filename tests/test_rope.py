"""RoPE: kernels against the reference, gradients, opcheck, bad input."""
import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_close, rope_table

from conftest import device_params

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, L, H, D): the released model's head dim 72, odd sequences, tiny and odd pair counts
SHAPES = [(2, 97, 4, 72), (1, 1025, 2, 72), (2, 33, 3, 64), (1, 5, 1, 2), (2, 7, 5, 10), (1, 16, 2, 96)]

needs_ext = pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}")


def test_reference_follows_the_interleaved_pair_convention():
    # Independent check of the oracle: pair i = (x[2i], x[2i+1]) rotated by angle pos * theta_i.
    B, L, H, D = 1, 3, 1, 4
    x = torch.randn(B, L, H, D, dtype=torch.float64)
    f = rope_table(L, D).to(torch.complex128)
    out = reference.apply_rope(x, f)
    for l in range(L):
        for i in range(D // 2):
            ang = torch.angle(f[l, i])
            c, s = torch.cos(ang), torch.sin(ang)
            x0, x1 = x[0, l, 0, 2 * i], x[0, l, 0, 2 * i + 1]
            assert torch.allclose(out[0, l, 0, 2 * i], x0 * c - x1 * s)
            assert torch.allclose(out[0, l, 0, 2 * i + 1], x0 * s + x1 * c)
    assert torch.allclose(reference.apply_rope(out, f, inverse=True), x)


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_batch", [False, True], ids=["table", "per_sample"])
def test_forward_matches_reference(shape, dtype, device, per_batch):
    B, L, H, D = shape
    x = torch.randn(shape, device=device, dtype=dtype)
    f = rope_table(L, D, batch=B if per_batch else None, device=device)
    assert lk.explain("apply_rope", x, f).backend == device
    for inverse in (False, True):
        out = torch.ops.lumina.rope(x, f, inverse)
        assert_close(out, reference.apply_rope(x, f, inverse), msg=f"{shape} {dtype} inverse={inverse}")
    assert_close(lk.apply_rope(x, f), reference.apply_rope(x, f), msg="public wrapper")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 97, 4, 72), (1, 1025, 2, 72), (2, 7, 5, 10)], ids=str)
def test_gradients_match_reference(shape, dtype, device):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    f = rope_table(shape[1], shape[3], batch=shape[0], device=device)
    out = lk.apply_rope(x, f)
    g = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, g)
    x64 = x.detach().double().requires_grad_(True)
    (want,) = torch.autograd.grad(reference.apply_rope(x64, f), x64, g.double())
    assert_close(got, want.to(dtype), kind="grad", msg=f"{shape} {dtype}")


@needs_ext
def test_gradient_of_a_learned_table():
    x = torch.randn(2, 9, 3, 8)
    f = rope_table(9, 8).requires_grad_(True)
    f_ref = f.detach().clone().requires_grad_(True)
    g = torch.randn(2, 9, 3, 8)
    (got,) = torch.autograd.grad(lk.apply_rope(x, f), f, g)
    (want,) = torch.autograd.grad(reference.apply_rope(x, f_ref), f_ref, g)
    assert_close(got, want)


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("per_batch", [False, True], ids=["table", "per_sample"])
def test_opcheck(device, per_batch):
    x = torch.randn(2, 9, 3, 8, device=device, requires_grad=True)
    f = rope_table(9, 8, batch=2 if per_batch else None, device=device)
    torch.library.opcheck(torch.ops.lumina.rope.default, (x, f, False))
    torch.library.opcheck(torch.ops.lumina.rope.default, (x, f, True))


@needs_ext
def test_storage_offset_splitting_a_pair_is_handled():
    base = torch.randn(1 + 2 * 5 * 3 * 8)
    x = base[1:].view(2, 5, 3, 8)  # contiguous, but starts in the middle of a pair in memory
    f = rope_table(5, 8)
    assert_close(lk.apply_rope(x, f), reference.apply_rope(x, f))
    with pytest.raises(RuntimeError, match="`x`"):
        torch.ops.lumina.rope(x, f, False)


BAD_PUBLIC = [
    (lambda: lk.apply_rope(torch.randn(2, 5, 3, 7), rope_table(5, 8)), "x"),
    (lambda: lk.apply_rope(torch.randn(2, 5, 8), rope_table(5, 8)), "x"),
    (lambda: lk.apply_rope(torch.randn(2, 5, 3, 8), rope_table(6, 8)), "freqs_cis"),
    (lambda: lk.apply_rope(torch.randn(2, 5, 3, 8), rope_table(5, 8, batch=3)), "freqs_cis"),
    (lambda: lk.apply_rope(torch.randn(2, 5, 3, 8), torch.randn(5, 4)), "freqs_cis"),
    (lambda: lk.apply_rope(torch.randint(0, 3, (2, 5, 3, 8)), rope_table(5, 8)), "x"),
    (lambda: lk.apply_rope(torch.randn(2, 5, 3, 8), rope_table(5, 8, device="meta")), "freqs_cis"),
]


@pytest.mark.parametrize("call,name", BAD_PUBLIC)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


BAD_RAW = [
    (lambda: torch.ops.lumina.rope(torch.randn(2, 5, 3, 7), rope_table(5, 8), False), "x"),
    (lambda: torch.ops.lumina.rope(torch.randn(2, 5, 3, 8).transpose(1, 2), rope_table(5, 8), False), "x"),
    (lambda: torch.ops.lumina.rope(torch.randn(2, 5, 3, 8).double(), rope_table(5, 8), False), "x"),
    (lambda: torch.ops.lumina.rope(torch.randn(2, 5, 3, 8), rope_table(5, 8).to(torch.complex128), False), "freqs_cis"),
    (lambda: torch.ops.lumina.rope(torch.randn(2, 5, 3, 8), rope_table(4, 8), False), "freqs_cis"),
    (lambda: torch.ops.lumina.rope(torch.randn(2, 5, 3, 8), rope_table(8, 10)[::2, :4], False), "freqs_cis"),
]


@needs_ext
@pytest.mark.parametrize("call,name", BAD_RAW)
def test_raw_op_bad_input_names_the_argument(call, name):
    with pytest.raises(RuntimeError, match=f"`{name}`"):
        call()


@needs_ext
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_wrong_device_is_named():
    x = torch.randn(2, 5, 3, 8, device="cuda")
    with pytest.raises(RuntimeError, match="`freqs_cis`"):
        torch.ops.lumina.rope(x, rope_table(5, 8), False)
    with pytest.raises(ValueError, match="`freqs_cis`"):
        lk.apply_rope(x, rope_table(5, 8))


@needs_ext
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_misaligned_table_takes_the_scalar_path():
    x = torch.randn(2, 6, 3, 72, device="cuda", dtype=torch.bfloat16)
    big = rope_table(6, 74, device="cuda")  # rows of 37 pairs: a [:, 1:] slice is misaligned and strided
    f = big[:, 1:].contiguous()  # contiguous copy: aligned
    f_off = torch.empty(6 * 36 + 1, dtype=torch.complex64, device="cuda")[1:].view(6, 36)
    f_off.copy_(f)  # contiguous but 8 bytes off a 32-byte boundary
    assert_close(torch.ops.lumina.rope(x, f_off, False), reference.apply_rope(x, f))
