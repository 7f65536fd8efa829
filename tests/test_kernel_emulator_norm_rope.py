"""The RMSNorm and RoPE CUDA kernels (csrc/norm, csrc/rope), run on the CPU by the warp emulator.

As tests/test_kernel_emulator.py does for merge / solver: tests/emulator/kernels_emulator.cpp calls the real launchers
(launch_rms_norm_{fwd,bwd}_cuda: 16-byte vectors or scalars, threads and vectors per thread, the grid cap;
launch_rope_cuda: 16-byte groups of pairs or single pairs, the grid cap) and runs the kernels' .cuh source under
csrc/cuda_emulate.h (block_sum's shuffles and __shared__ through the fiber emulator, race and deadlock checks).
Every output lies in a NaN-filled buffer with guards on both sides; inputs are checked unchanged.

RMSNorm sums its squares in a block-wide tree and the emulated rsqrtf is the correctly rounded one (a GPU's is
within 2 ulp), so the norm is compared with the CPU kernel and the reference within tolerances; the backward's
per-(batch, chunk) partial sums are reduced as norm_host.cpp reduces them. RoPE is compared bit for bit with a model of its fp32
arithmetic (one rounding per operation: the emulator does not contract to FMA, while nvcc and the CPU kernel's FMA
clones may, 1 ulp in fp32) and within tolerance with the CPU kernel and the reference.
"""
import sys
import pathlib

import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_close, rope_table

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "emulator"))
import kernel_runner as kr  # noqa: E402
from kernel_runner import fresh_config  # noqa: E402,F401  (autouse: a fresh emulator configuration per test)

pytestmark = [pytest.mark.skipif(kr.compiler() is None, reason="no host C++ compiler for the warp emulator"),
              pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}"),
              pytest.mark.slow]  # an emulator sweep: CI's first stage

DTYPES = [torch.float32, torch.bfloat16, torch.float16]




def _shape(dim: int, dtype, aligned: bool = True):
    """(vectorised, threads, vectors per thread) as norm_impl::pick_shape chooses them."""
    V = 16 // torch.empty((), dtype=dtype).element_size()
    vec = aligned and dim % V == 0
    nvec = dim // V if vec else dim
    threads = min(512, max(32, -(-nvec // 32) * 32))
    k = -(-nvec // threads)
    return vec, threads, 1 if k <= 1 else 2 if k <= 2 else 4 if k <= 4 else 8


# ---- fused_rms_norm ---------------------------------------------------------------------------------------
# every combination of the optional inputs: (scale, gate, residual)
FLAGS = [(s, g, r) for s in (False, True) for g in (False, True) for r in (False, True)]
FLAG_IDS = ["".join(n for n, on in zip("sgr", f) if on) or "none" for f in FLAGS]
# (leading shape, dim): odd widths (273: scalars, 2304 and 4104: 2 or 4 vectors per thread, 72, 1) and row counts
# (1, 97). The emulator runs ~1 us per thread and barrier or shuffle: wide rows come few.
NORM_SHAPES = [((2, 97), 72), ((2, 3), 273), ((1, 1), 2304), ((2, 5, 3), 72), ((3, 1), 1), ((2, 2), 4104)]


def _norm_inputs(lead, dim, dtype, flags):
    s, g, r = flags
    x = torch.randn(*lead, dim).to(dtype)
    w = (1 + 0.5 * torch.randn(dim)).to(dtype)
    scale = (0.5 * torch.randn(lead[0], dim)).to(dtype) if s else None
    gate = torch.randn(lead[0], dim).to(dtype) if g else None
    residual = torch.randn(*lead, dim).to(dtype) if r else None
    return x, w, scale, gate, residual


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,dim", NORM_SHAPES, ids=str)
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_rms_norm_forward(flags, lead, dim, dtype):
    x, w, scale, gate, residual = _norm_inputs(lead, dim, dtype, flags)
    out, rstd = kr.rms_norm(x, w, scale, gate, residual)
    cpu_out, cpu_rstd = torch.ops.lumina.fused_rms_norm(x, w, scale, gate, residual, 1e-5)
    assert_close(rstd, cpu_rstd, msg="rstd vs the CPU kernel")
    assert_close(rstd, torch.rsqrt(x.double().pow(2).mean(-1) + 1e-5).float(), msg="rstd")
    assert_close(out, cpu_out, msg=f"{flags} vs the CPU kernel")
    assert_close(out, reference.fused_rms_norm(x, w, scale, gate, residual, 1e-5), msg=f"{flags} vs the reference")
    vec, threads, k = _shape(dim, dtype)
    (kernel,) = kr.launched_kernels()
    assert kernel.endswith(f"{16 // x.element_size() if vec else 1}, {k}>"), kernel
    assert kr.launches()[0][2] == threads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,dim", [((2, 97), 72), ((2, 5), 273), ((1, 3), 2304), ((3, 4, 5), 72), ((2, 1), 1)],
                         ids=str)
@pytest.mark.parametrize("flags", [(False, False, False), (True, False, False), (False, True, False),
                                   (True, True, False)], ids=["none", "s", "g", "sg"])
def test_rms_norm_backward(flags, lead, dim, dtype):
    x, w, scale, gate, _ = _norm_inputs(lead, dim, dtype, flags)
    _, rstd = kr.rms_norm(x, w, scale, gate)
    g = torch.randn_like(x)
    gx, gw, gs, gg, parts = kr.rms_norm_backward(g, x, w, scale, gate, rstd)
    cpu = torch.ops.lumina.fused_rms_norm_backward(g, x, w, scale, gate, rstd)
    for name, a, b in zip(("x", "weight", "scale", "gate"), (gx, gw, gs, gg), cpu):
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert_close(a, b, kind="grad", msg=f"grad {name} vs the CPU kernel")
    # the oracle: the reference's autograd in float64 (the residual's gradient is grad_out itself)
    ins = [t.double().requires_grad_(True) for t in (x, w, scale, gate) if t is not None]
    it = iter(ins)
    x64, w64 = next(it), next(it)
    s64 = next(it) if scale is not None else None
    g64 = next(it) if gate is not None else None
    want = torch.autograd.grad(reference.fused_rms_norm(x64, w64, s64, g64), ins, g.double())
    got = [(n, t) for n, t in zip(("x", "weight", "scale", "gate"), (gx, gw, gs, gg)) if t is not None]
    for (name, a), b in zip(got, want):
        assert_close(a, b.to(a.dtype), kind="grad", msg=f"grad {name} vs the reference")
    # every (batch, chunk) wrote its partial row, and the empty tail chunks (if any) wrote zeros
    for p in parts:
        assert p is None or not p.isnan().any()


def test_rms_norm_backward_chunks():
    # 97 rows split into 1, 8, 33 (+ 7 empty) and 97 chunks: the same gradients whatever the split
    x, w, scale, gate, _ = _norm_inputs((2, 97), 72, torch.float32, (True, True, False))
    _, rstd = kr.rms_norm(x, w, scale, gate)
    g = torch.randn_like(x)
    results = []
    for target in (1, 16, 80, 1000):
        kr.configure()
        chunks, rpc = kr.norm_chunks(2, 97, target)
        *grads, parts = kr.rms_norm_backward(g, x, w, scale, gate, rstd, target_blocks=target)
        assert [r[1] for r in kr.launches()] == [chunks]
        assert parts[0].shape == (2, chunks, 72)
        empty = -(-97 // rpc)
        assert torch.equal(parts[0][:, empty:], torch.zeros_like(parts[0][:, empty:])), "empty chunks write zeros"
        results.append(grads)
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0]), "grad_x does not depend on the split"
        for a, b in zip(results[0][1:], other[1:]):
            assert_close(a, b, kind="grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_grid_stride_scalar_path_and_thread_order(dtype):
    # the launcher's cap (1 SM: 2048 / threads * 4 blocks for 82 rows), then the emulator's (1 and 3 blocks), the
    # last misaligned (scalars)
    x, w, scale, gate, residual = _norm_inputs((2, 41), 520, dtype, (True, True, True))
    want = torch.ops.lumina.fused_rms_norm(x, w, scale, gate, residual, 1e-5)
    results = []
    for sms, cap, seed, offset in ((1, 0, 1, 0), (4, 1, 2, 0), (4, 3, 3, 1)):
        kr.configure(sms=sms, max_blocks=cap, seed=seed)
        out, rstd = kr.rms_norm(x, w, scale, gate, residual, offset=offset)
        assert_close(out, want[0])
        assert_close(rstd, want[1])
        (launch,) = kr.launches()
        vec, threads, k = _shape(520, dtype, aligned=offset == 0)
        assert launch[0].split("(")[0].endswith(f"{16 // x.element_size() if vec else 1}, {k}>"), launch
        grid = min(82, sms * (2048 // threads) * 4)
        assert launch[1:] == (grid, threads, cap or grid)
        results.append((out, rstd))
    assert torch.equal(results[0][1], results[1][1]), "the row sums do not depend on the grid"
    assert torch.equal(results[0][0], results[1][0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_eight_scalars_per_thread(dtype):
    # misaligned and 4095 wide: 512 threads, 8 scalars each, the last one partly past the row
    x, w, scale, gate, residual = _norm_inputs((2, 2), 4095, dtype, (True, False, True))
    out, rstd = kr.rms_norm(x, w, scale, gate, residual, offset=1)
    assert kr.launched_kernels()[0].endswith("1, 8>") and kr.launches()[0][2] == 512
    assert_close(out, torch.ops.lumina.fused_rms_norm(x, w, scale, gate, residual, 1e-5)[0])
    assert_close(out, reference.fused_rms_norm(x, w, scale, gate, residual, 1e-5))
    g = torch.randn_like(x)
    gx, gw, gs, _, _ = kr.rms_norm_backward(g, x, w, scale, gate, rstd, offset=1)
    for a, b in zip((gx, gw, gs), torch.ops.lumina.fused_rms_norm_backward(g, x, w, scale, gate, rstd)):
        assert_close(a, b, kind="grad")


def test_rms_norm_backward_scalar_path_and_width_limit():
    x, w, scale, gate, _ = _norm_inputs((2, 9), 264, torch.bfloat16, (True, True, False))
    _, rstd = kr.rms_norm(x, w, scale, gate)
    g = torch.randn_like(x)
    kr.configure()
    a = kr.rms_norm_backward(g, x, w, scale, gate, rstd)
    kr.configure()
    b = kr.rms_norm_backward(g, x, w, scale, gate, rstd, offset=1)  # misaligned: one element per access
    assert kr.launched_kernels()[0].endswith("1, 1>")
    for u, v in zip(a[:4], b[:4]):
        assert_close(u, v, kind="grad")
    # wider than the kernels hold (4096 scalars per row): the launcher refuses, as norm_cuda.cpp's check says
    x = torch.randn(1, 4097)
    with pytest.raises(RuntimeError, match="CUDA error 1"):
        kr.rms_norm(x, torch.randn(4097))


# ---- rope -------------------------------------------------------------------------------------------------
ROPE_SHAPES = [(2, 97, 3, 72), (1, 97, 2, 64), (2, 5, 3, 128), (1, 7, 2, 10)]


def _rope_model(x, f, inverse=False):
    """The kernel's arithmetic in fp32, one rounding per operation (no FMA), then x's dtype."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    t = torch.view_as_real(f).unsqueeze(-3)  # (..., L, 1, D/2, 2)
    c, s = t[..., 0], t[..., 1] * (-1.0 if inverse else 1.0)
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).flatten(-2).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ROPE_SHAPES, ids=str)
@pytest.mark.parametrize("per_batch", [False, True], ids=["table", "per_sample"])
def test_rope(shape, dtype, per_batch):
    B, L, H, D = shape
    x = torch.randn(shape).to(dtype)
    f = rope_table(L, D, batch=B if per_batch else None)
    for inverse in (False, True):
        kr.configure()
        out = kr.rope(x, f, inverse)
        model = _rope_model(x, f, inverse)
        assert torch.equal(out, model), f"inverse={inverse}: max diff {(out.float() - model.float()).abs().max():.3g}"
        assert_close(out, torch.ops.lumina.rope(x, f, inverse), msg=f"{shape} {dtype} inverse={inverse} vs CPU")
        assert_close(out, reference.apply_rope(x, f, inverse), msg=f"{shape} {dtype} inverse={inverse}")
        pairs = 8 // x.element_size() if (D // 2) % (8 // x.element_size()) == 0 else 1
        (kernel,) = kr.launched_kernels()
        assert kernel.endswith(f", {pairs}>"), kernel
    back = kr.rope(kr.rope(x.float(), f), f, inverse=True)
    assert_close(back, x.float(), msg="the inverse undoes the rotation")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_grid_stride_scalar_paths_and_thread_order(dtype):
    B, L, H, D = 2, 97, 4, 72
    x = torch.randn(B, L, H, D).to(dtype)
    f = rope_table(L, D, batch=B)
    want = _rope_model(x, f)
    pairs = 8 // x.element_size()
    # launcher cap (1 SM: 32 blocks), emulator caps, then x / the table misaligned: one pair per thread
    for sms, cap, seed, offset, foffset, vec in ((1, 0, 1, 0, 0, True), (4, 1, 2, 0, 0, True), (4, 3, 3, 2, 0, False),
                                                  (4, 2, 4, 0, 2, False)):
        kr.configure(sms=sms, max_blocks=cap, seed=seed)
        assert torch.equal(kr.rope(x, f, offset=offset, freqs_offset=foffset), want), (sms, cap, offset, foffset)
        (launch,) = kr.launches()
        n = B * L * H * D // 2 // (pairs if vec else 1)
        assert launch[0].split("(")[0].endswith(f", {pairs if vec else 1}>"), launch
        assert launch[1:] == (min(-(-n // 256), sms * 32), 256, cap or min(-(-n // 256), sms * 32))
