"""The CUDA flash-attention kernels, run on the CPU by the warp emulator (tests/emulator).

The kernel source in csrc/attention/flash is compiled here by the host C++ compiler with each warp-level
primitive (ldmatrix, mma.sync, shfl, __syncthreads, shared memory) carried out by flash_emulate.h
from the PTX ISA's fragment layouts, every thread a fiber. That checks the kernels' tiling, fragment
bookkeeping, online softmax, masking, RoPE, GQA, the backward's recomputation and the absence of
shared-memory races and deadlocks without a GPU. It does not check PTX syntax (nvcc does, in the CUDA
build) or speed. Accuracy is judged as for the other backends (lumina_kernels.testing.ATTENTION_ERROR).
"""
import math
import sys
import pathlib

import pytest
import torch

from lumina_kernels import reference
from lumina_kernels.testing import assert_within_reference_error

from test_attention import make, references

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "emulator"))
import runner  # noqa: E402

pytestmark = [pytest.mark.skipif(runner.compiler() is None, reason="no host C++ compiler for the warp emulator"),
              pytest.mark.slow]  # an emulator sweep: CI's first stage


def _forward(shape, dtype, rope="both", per_batch=False, mask="random", scale=None, seed=0):
    B, Lq, Lk, Hq, Hkv, D = shape
    q, k, v, fq, fk, m = make(*shape, dtype, rope=rope, per_batch=per_batch, mask=mask)
    s = 1 / math.sqrt(D) if scale is None else scale
    out, lse = runner.attention_fwd(q, k, v, fq, fk, m, s, seed=seed)
    ref64, low = references(q, k, v, fq, fk, m, s)
    msg = f"emulated CUDA forward {shape} {dtype} rope={rope} per_batch={per_batch} mask={mask}"
    assert_within_reference_error(out, ref64, low, msg=msg)
    # the log-sum-exp the backward relies on, against float64
    qr = reference.apply_rope(q.double(), fq) if fq is not None else q.double()
    kr = reference.apply_rope(k.double(), fk) if fk is not None else k.double()
    heads = torch.arange(Hq) // (Hq // Hkv)
    sc = torch.einsum("bqhd,bkhd->bhqk", qr, kr[:, :, heads]) * s
    if m is not None:
        sc = sc.masked_fill(~m[:, None, None, :], float("-inf"))
    want = torch.logsumexp(sc, -1)
    dead = torch.isinf(want)
    assert torch.equal(torch.isinf(lse), dead), msg + ": lse is -inf exactly for rows with no key"
    assert (lse.double()[~dead] - want[~dead]).abs().max().item() < 0.05 if (~dead).any() else True, msg
    return q, k, v, fq, fk, m, s, out, lse


def _gradients(shape, dtype, rope="both", per_batch=False, mask="random", scale=None, seed=0):
    q, k, v, fq, fk, m, s, out, lse = _forward(shape, dtype, rope, per_batch, mask, scale, seed)
    g = torch.randn_like(out)
    got = runner.attention_bwd(g, q, k, v, out, lse, fq, fk, m, s, seed=seed)
    x64 = [t.double().requires_grad_(True) for t in (q, k, v)]
    want = torch.autograd.grad(reference.attention(*x64, fq, fk, m, s), x64, g.double())
    xl = [t.clone().requires_grad_(True) for t in (q, k, v)]
    low = torch.autograd.grad(reference.attention(*xl, fq, fk, m, s, upcast=False), xl, g)
    for name, a, w, lo in zip("qkv", got, want, low):
        assert_within_reference_error(a, w, lo, kind="grad",
                                      msg=f"emulated CUDA grad {name} {shape} {dtype} rope={rope} mask={mask}")
    return got


# (B, Lq, Lk, Hq, Hkv, D): every compiled head dim, GQA ratios 1, 4, 8, sequence lengths 1 and 97 with
# partial tiles; the longer lengths below
SHAPES = [
    (1, 97, 97, 4, 1, 72),    # GQA 4 at the released model's head dim (4 k16 + 1 k8 MMA steps, 9 n8 tiles)
    (1, 70, 97, 2, 2, 64),    # MHA
    (1, 33, 65, 8, 1, 96),    # MQA, ratio 8
    (1, 97, 40, 2, 1, 128),
    (2, 1, 1, 2, 1, 72),      # one query, one key
    (1, 1, 97, 2, 2, 64),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_emulated_kernels_match_float64_reference(shape, dtype):
    _gradients(shape, dtype)


@pytest.mark.parametrize("rope,per_batch,mask", [("q", False, "random"), ("none", False, None), ("both", True, "dead"),
                                                 ("q", True, "dead")])
def test_emulated_kernels_variants(rope, per_batch, mask):
    # cross-attention (q rotated only), no RoPE, per-sample tables, a batch element with every key masked
    _gradients((2, 37, 53, 4, 2, 72), torch.bfloat16, rope, per_batch, mask)


def test_emulated_fully_masked_rows_give_zeros():
    shape = (2, 20, 30, 2, 1, 72)
    q, k, v, fq, fk, m, s, out, lse = _forward(shape, torch.bfloat16, mask="dead")
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.isinf(lse[0]).all()
    dq, dk, dv = runner.attention_bwd(torch.randn_like(out), q, k, v, out, lse, fq, fk, m, s)
    for g in (dq[0], dk[0], dv[0]):
        assert torch.equal(g, torch.zeros_like(g))


def test_emulated_proportional_scale():
    N, D = 97, 72
    _gradients((1, N, N, 4, 2, D), torch.bfloat16, scale=math.sqrt(math.log(N, 4096) / D))


def test_emulated_longer_sequences():
    # 256 (whole tiles), 1025 (one key past a tile); the backward at 256 only, for time
    _gradients((1, 256, 256, 2, 1, 72), torch.bfloat16)
    _forward((1, 1025, 1025, 1, 1, 72), torch.bfloat16, mask=None)


def test_emulated_forward_does_not_depend_on_thread_order():
    # the scheduler interleaves the threads differently per seed; a race would show as a difference
    shape = (1, 97, 97, 2, 1, 72)
    q, k, v, fq, fk, m = make(*shape, torch.bfloat16, mask="random")
    a = runner.attention_fwd(q, k, v, fq, fk, m, seed=1)
    b = runner.attention_fwd(q, k, v, fq, fk, m, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---- the emulator itself ---------------------------------------------------------------------------
@pytest.mark.parametrize("case,message", [
    (1, "shared memory race"),        # a thread reads what another wrote, no barrier between
    (2, "deadlock"),                  # half the block skips a barrier
    (3, "warp divergence"),           # lanes of a warp issue different collectives
    (4, "never written"),             # reading uninitialised shared memory
])
def test_emulator_reports_defects(case, message):
    with pytest.raises(RuntimeError, match=message):
        runner.selftest(case)


def test_emulator_mma_and_ldmatrix_follow_the_ptx_layouts():
    # a 16x16 @ 16x8 product through ldmatrix (A plain, B plain and transposed) and mma.m16n8k16 / k8,
    # written out through the C fragment layout, against torch
    a = torch.randn(16, 16).to(torch.bfloat16)
    b = torch.randn(16, 8).to(torch.bfloat16)
    c16, c8, c16t = runner.mma_selftest(a, b)
    want = a.double() @ b.double()
    assert (c16.double() - want).abs().max() < 1e-4
    assert (c16t.double() - want).abs().max() < 1e-4
    assert (c8.double() - a[:, :8].double() @ b[:8].double()).abs().max() < 1e-4
