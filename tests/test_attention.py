"""Attention with fused RoPE, GQA and key padding: kernels against a float64 reference, gradients, opcheck, bad input.

Accuracy follows flash-attention's tests: max|out - ref64| <= k * max|ref_lowprec - ref64| + eps, where
ref_lowprec is the plain reference computed in the input dtype (lumina_kernels.testing.ATTENTION_ERROR).
"""
import math

import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_within_reference_error, rope_table

from conftest import device_params
from lumina_kernels.ops import CUDA_HEAD_DIMS, _attn_fits_cuda_kernel

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
needs_ext = pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}")


def make(B, Lq, Lk, Hq, Hkv, D, dtype, device="cpu", *, rope="both", per_batch=False, mask=None, requires_grad=False):
    """Inputs of one case. rope: both | q (cross-attention) | none; mask: None | random | dead (random, batch 0
    with every key masked)."""
    def r(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(requires_grad)

    q, k, v = r(B, Lq, Hq, D), r(B, Lk, Hkv, D), r(B, Lk, Hkv, D)
    fq = rope_table(Lq, D, batch=B if per_batch else None, device=device) if rope != "none" else None
    fk = rope_table(Lk, D, batch=B if per_batch else None, device=device) if rope == "both" else None
    m = None
    if mask is not None:
        m = torch.rand(B, Lk, device=device) > 0.3
        m[:, 0] = True
        if mask == "dead":
            m[0] = False
    return q, k, v, fq, fk, m


def references(q, k, v, fq, fk, m, scale):
    """(float64 reference, low-precision reference) of the forward pass."""
    ref64 = reference.attention(q.double(), k.double(), v.double(), fq, fk, m, scale)
    low = reference.attention(q, k, v, fq, fk, m, scale, upcast=False)
    return ref64, low


def test_reference_against_explicit_loops():
    # independent check of the oracle: per batch, head and query, GQA head mapping, mask, zero rows
    B, Lq, Lk, Hq, Hkv, D = 2, 3, 5, 4, 2, 4
    q, k, v, fq, fk, m = make(B, Lq, Lk, Hq, Hkv, D, torch.float64, mask="dead")
    qr, kr = reference.apply_rope(q, fq), reference.apply_rope(k, fk)
    out = reference.attention(q, k, v, fq, fk, m, 0.3)
    for b in range(B):
        for h in range(Hq):
            kv = h // (Hq // Hkv)
            for i in range(Lq):
                s = torch.tensor([(qr[b, i, h] * kr[b, j, kv]).sum() * 0.3 for j in range(Lk)], dtype=torch.float64)
                keep = m[b]
                want = torch.zeros(D, dtype=torch.float64)
                if keep.any():
                    p = torch.softmax(s.masked_fill(~keep, float("-inf")), 0)
                    want = (p[:, None] * v[b, :, kv]).sum(0)
                assert torch.allclose(out[b, i, h], want), (b, h, i)
    assert torch.equal(out[0], torch.zeros_like(out[0]))


# (B, Lq, Lk, Hq, Hkv, D): sequence lengths 1, 97, 256, 1025; head dims 64/72/96/128; GQA ratios 1, 4, 8
SHAPES = [
    (2, 97, 97, 8, 2, 72),     # GQA 4, the released model's head dim
    (1, 1, 1, 2, 2, 64),       # single query and key
    (2, 256, 256, 8, 1, 64),   # MQA, ratio 8
    (2, 33, 97, 4, 4, 96),     # MHA, Lq != Lk
    (1, 97, 1, 8, 1, 128),     # one key
    (2, 70, 130, 4, 1, 72),    # partial key tiles
]
LONG = [(1, 1025, 1025, 4, 1, 72)]


def _check_forward(shape, dtype, device, rope, per_batch, mask, scale=None):
    B, Lq, Lk, Hq, Hkv, D = shape
    q, k, v, fq, fk, m = make(*shape, dtype, device, rope=rope, per_batch=per_batch, mask=mask)
    s = 1 / math.sqrt(D) if scale is None else scale
    ref64, low = references(q, k, v, fq, fk, m, s)
    msg = f"{shape} {dtype} rope={rope} per_batch={per_batch} mask={mask}"
    if device == "cpu" or (dtype != torch.float32 and D in CUDA_HEAD_DIMS):  # the raw op where it has a kernel
        out, lse = torch.ops.lumina.attention_fwd(q, k, v, fq, fk, m, s)
        assert_within_reference_error(out, ref64, low, msg=msg + " raw op")
        assert lse.shape == (B, Hq, Lq) and lse.dtype == torch.float32
    public = lk.attention(q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=m, softmax_scale=scale)
    assert public.dtype == dtype
    assert_within_reference_error(public, ref64, low, msg=msg + " public")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_float64_reference(shape, dtype, device):
    _check_forward(shape, dtype, device, rope="both", per_batch=False, mask="random")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", LONG, ids=str)
def test_forward_long_sequence(shape, dtype, device):
    _check_forward(shape, dtype, device, rope="both", per_batch=False, mask=None)


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("rope,per_batch,mask", [("q", False, "random"), ("none", False, None), ("both", True, "dead"),
                                                 ("q", True, "dead")])
def test_forward_variants(rope, per_batch, mask, device):
    # cross-attention (q rotated only), no RoPE, per-sample tables, a fully masked batch element
    for dtype in DTYPES:
        _check_forward((2, 37, 53, 8, 2, 72), dtype, device, rope, per_batch, mask)


@needs_ext
@pytest.mark.parametrize("device", device_params())
def test_proportional_attention_scale(device):
    # Lumina-Next's proportional attention: scale = sqrt(log_4096(N) / D) for N image tokens
    N, D = 97, 72
    scale = math.sqrt(math.log(N, 4096) / D)
    for dtype in DTYPES:
        _check_forward((2, N, N, 8, 2, D), dtype, device, "both", False, "random", scale=scale)


def _check_gradients(shape, dtype, device, rope="both", per_batch=False, mask="random"):
    q, k, v, fq, fk, m = make(*shape, dtype, device, rope=rope, per_batch=per_batch, mask=mask, requires_grad=True)
    out = lk.attention(q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=m)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), g)
    x64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    want = torch.autograd.grad(reference.attention(*x64, fq, fk, m), x64, g.double())
    xl = [t.detach().requires_grad_(True) for t in (q, k, v)]
    low = torch.autograd.grad(reference.attention(*xl, fq, fk, m, upcast=False), xl, g)
    for name, a, w, lo in zip("qkv", got, want, low):
        assert_within_reference_error(a, w, lo, kind="grad", msg=f"grad {name} {shape} {dtype} rope={rope} mask={mask}")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 97, 97, 8, 2, 72), (2, 33, 70, 8, 1, 64), (1, 1, 1, 2, 1, 96),
                                   (1, 65, 130, 8, 8, 128)], ids=str)
def test_gradients_match_float64_reference(shape, dtype, device):
    _check_gradients(shape, dtype, device)


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("rope,per_batch,mask", [("q", False, "dead"), ("both", True, "dead"), ("none", False, None)])
def test_gradients_variants(rope, per_batch, mask, device):
    for dtype in (torch.float32, torch.bfloat16):
        _check_gradients((2, 37, 53, 4, 2, 72), dtype, device, rope, per_batch, mask)


@needs_ext
def test_gradients_long_sequence():
    _check_gradients((1, 1025, 1025, 2, 1, 72), torch.float32, "cpu", mask="random")


@needs_ext
@pytest.mark.parametrize("backend", ["cpu", "sdpa", "reference"])
def test_fully_masked_rows_give_zeros_and_zero_gradients(backend, monkeypatch):
    others = {"cpu", "sdpa", "cuda"} - {backend}
    monkeypatch.setenv("LUMINA_KERNELS_DISABLE", ",".join(sorted(others)))
    q, k, v, fq, fk, m = make(3, 9, 11, 4, 2, 8, torch.float32, mask="random", requires_grad=True)
    m[1] = False
    assert lk.explain("attention", q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=m).backend == backend
    out = lk.attention(q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=m)
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros_like(out[1]))
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    for g in (gq, gk, gv):
        assert torch.isfinite(g).all() and torch.equal(g[1], torch.zeros_like(g[1]))
    ref = reference.attention(q.double(), k.double(), v.double(), fq, fk, m)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sdpa_backend_matches_reference(dtype, monkeypatch):
    monkeypatch.setenv("LUMINA_KERNELS_DISABLE", "cpu")
    shape = (2, 37, 53, 8, 2, 72)
    q, k, v, fq, fk, m = make(*shape, dtype, mask="dead")
    assert lk.explain("attention", q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=m).backend == "sdpa"
    ref64, low = references(q, k, v, fq, fk, m, 1 / math.sqrt(72))
    out = lk.attention(q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=m)
    assert_within_reference_error(out, ref64, low, msg="sdpa")


@needs_ext
def test_cpu_path_choice_is_explained():
    q, k = torch.randn(1, 1024, 4, 72), torch.randn(1, 1024, 2, 72)
    f = rope_table(1024, 72)
    with torch.no_grad():  # long forward-only self-attention: SDPA after RoPE measured faster
        d = lk.explain("attention", q, k, k, q_freqs=f, k_freqs=f)
        assert d.backend == "sdpa" and "measured faster" in dict(d.verdicts)["cpu"]
        qb, kb = q.bfloat16(), k.bfloat16()
        assert lk.explain("attention", qb, kb, kb, q_freqs=f, k_freqs=f).backend == "sdpa"
        k1 = k[:, :, :1]  # GQA 4:1 self-attention too
        assert lk.explain("attention", q, k1, k1, q_freqs=f, k_freqs=f).backend == "sdpa"
        # cross-attention to unrotated (caption) keys: the C++ kernel, exact under caption padding
        assert lk.explain("attention", q, k1[:, :128], k1[:, :128], q_freqs=f).backend == "cpu"
        qt, kt, ft = q[:, :64], k[:, :64], f[:64]  # tiny fp32 scores (64 x 64): C++
        assert lk.explain("attention", qt, kt, kt, q_freqs=ft, k_freqs=ft).backend == "cpu"
    qs, ks = torch.randn(2, 97, 4, 72, requires_grad=True), torch.randn(2, 97, 1, 72)
    assert lk.explain("attention", qs, ks, ks).backend == "cpu"
    d = lk.explain("attention", q.double(), k.double(), k.double())
    assert d.backend == "reference" and "float64" in dict(d.verdicts)["cpu"]
    f = rope_table(97, 72).requires_grad_(True)
    assert "learned" in dict(lk.explain("attention", qs, ks, ks, q_freqs=f).verdicts)["cpu"]


def test_cuda_path_refusals_are_explained():
    # checked before any device query, so they run without a GPU (meta tensors)
    def reason(dtype, D):
        return _attn_fits_cuda_kernel({"x": torch.empty(1, 4, 2, D, dtype=dtype, device="meta"), "q_freqs": None,
                                       "k_freqs": None})
    assert "bf16/fp16" in reason(torch.float32, 72)
    assert "head dim 80 has no compiled CUDA kernel" in reason(torch.bfloat16, 80)
    assert "64, 72, 96, 128" in reason(torch.float16, 48)


@needs_ext
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_kernel_is_chosen_and_refuses_bad_input():
    q, k = torch.randn(2, 97, 8, 72, device="cuda", dtype=torch.bfloat16), torch.randn(2, 97, 2, 72, device="cuda",
                                                                                        dtype=torch.bfloat16)
    assert lk.explain("attention", q, k, k).backend == "cuda"
    d = lk.explain("attention", q[..., :40].contiguous(), k[..., :40].contiguous(), k[..., :40].contiguous())
    assert d.backend == "sdpa" and "head dim 40" in dict(d.verdicts)["cuda"]
    with pytest.raises(RuntimeError, match="head dims 64, 72, 96 and 128"):
        torch.ops.lumina.attention_fwd(q[..., :40].contiguous(), k[..., :40].contiguous(), k[..., :40].contiguous(),
                                       None, None, None, 0.1)
    with pytest.raises(RuntimeError, match="bfloat16 or float16"):
        torch.ops.lumina.attention_fwd(q.float(), k.float(), k.float(), None, None, None, 0.1)
    # a contiguous input that starts off a 16-byte boundary is copied, not misread
    big = torch.randn(2 * 97 * 8 * 72 + 1, device="cuda", dtype=torch.bfloat16)
    qo = big[1:].view(2, 97, 8, 72)
    out = torch.ops.lumina.attention_fwd(qo, k, k, None, None, None, 0.1)[0]
    want = reference.attention(qo.double(), k.double(), k.double(), softmax_scale=0.1)
    assert_within_reference_error(out, want, reference.attention(qo, k, k, softmax_scale=0.1, upcast=False))


@needs_ext
def test_float64_and_learned_table_run_on_the_reference():
    q, k, v, fq, fk, m = make(2, 9, 9, 4, 2, 8, torch.float64, mask="random")
    torch.testing.assert_close(lk.attention(q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=m),
                               reference.attention(q, k, v, fq, fk, m))
    q, k, v, fq, fk, m = make(2, 9, 9, 4, 2, 8, torch.float32)
    fq.requires_grad_(True)
    (g,) = torch.autograd.grad(lk.attention(q, k, v, q_freqs=fq, k_freqs=fk).sum(), fq)
    assert g.shape == fq.shape and torch.isfinite(torch.view_as_real(g)).all()


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", ["self", "cross", "per_sample"])
def test_opcheck(case, device):
    rope = {"self": "both", "cross": "q", "per_sample": "both"}[case]
    # the CUDA kernel takes bf16/fp16 and head dims 64/72/96/128; the CPU kernel any float dtype and even head dim
    dtype, D = (torch.bfloat16, 64) if device == "cuda" else (torch.float32, 8)
    q, k, v, fq, fk, m = make(2, 9, 11, 4, 2, D, dtype, device, rope=rope, per_batch=case == "per_sample",
                              mask="dead", requires_grad=True)
    torch.library.opcheck(torch.ops.lumina.attention_fwd.default, (q, k, v, fq, fk, m, 0.35))
    out, lse = torch.ops.lumina.attention_fwd(q, k, v, fq, fk, m, 0.35)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse, fq, fk, m, 0.35)
    torch.library.opcheck(torch.ops.lumina.attention_bwd.default, args)


@needs_ext
def test_torch_compile_traces_the_op():
    q, k, v, fq, fk, m = make(2, 16, 16, 4, 2, 8, torch.float32, mask="random")
    f = torch.compile(lambda *a: lk.attention(a[0], a[1], a[2], q_freqs=a[3], k_freqs=a[4], key_padding_mask=a[5]),
                      backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(q, k, v, fq, fk, m), reference.attention(q, k, v, fq, fk, m), atol=1e-5, rtol=1e-5)


@needs_ext
def test_empty_inputs():
    q, k = torch.randn(2, 0, 4, 8), torch.randn(2, 5, 2, 8)
    assert lk.attention(q, k, k).shape == (2, 0, 4, 8)
    out, _ = torch.ops.lumina.attention_fwd(torch.randn(2, 3, 4, 8), torch.randn(2, 0, 2, 8), torch.randn(2, 0, 2, 8),
                                            None, None, None, 0.5)
    assert torch.equal(out, torch.zeros(2, 3, 4, 8))


# ------------------------------------------------------------------ bad input
def _qkv(Hq=4, Hkv=2, D=8, L=5, dtype=torch.float32):
    return torch.randn(2, L, Hq, D, dtype=dtype), torch.randn(2, L, Hkv, D, dtype=dtype), torch.randn(2, L, Hkv, D, dtype=dtype)


BAD_PUBLIC = [
    (lambda: lk.attention(*_qkv(Hq=6, Hkv=4)), "q"),                                                  # Hq % Hkv
    (lambda: lk.attention(*_qkv(), q_freqs=rope_table(6, 8)), "q_freqs"),                              # wrong length
    (lambda: lk.attention(*_qkv(), k_freqs=rope_table(5, 10)), "k_freqs"),                             # wrong head dim
    (lambda: lk.attention(*_qkv(), q_freqs=rope_table(5, 8, batch=3)), "q_freqs"),                     # wrong batch
    (lambda: lk.attention(*_qkv(), q_freqs=torch.randn(5, 4)), "q_freqs"),                             # not complex
    (lambda: lk.attention(*_qkv(D=7), q_freqs=rope_table(5, 8)[:, :3]), "q_freqs"),                    # odd head dim
    (lambda: lk.attention(_qkv()[0], _qkv()[1].half(), _qkv()[2]), "k"),                               # dtypes differ
    (lambda: lk.attention(_qkv()[0], _qkv()[1], _qkv()[2].bfloat16()), "v"),
    (lambda: lk.attention(_qkv()[0], _qkv()[1], torch.randn(2, 6, 2, 8)), "v"),                        # v shape
    (lambda: lk.attention(_qkv()[0], torch.randn(2, 5, 2, 4), torch.randn(2, 5, 2, 4)), "k"),          # head dim
    (lambda: lk.attention(torch.randn(2, 5, 32), *_qkv()[1:]), "q"),                                   # 3-D
    (lambda: lk.attention(*_qkv(), key_padding_mask=torch.ones(2, 6, dtype=torch.bool)), "key_padding_mask"),
    (lambda: lk.attention(*_qkv(), key_padding_mask=torch.ones(2, 5)), "key_padding_mask"),           # float mask
    (lambda: lk.attention(*_qkv(), key_padding_mask=torch.ones(2, 1, 5, dtype=torch.bool)), "key_padding_mask"),
    (lambda: lk.attention(*_qkv(), softmax_scale=float("nan")), "softmax_scale"),
    (lambda: lk.attention(*_qkv(), softmax_scale="x"), "softmax_scale"),
    (lambda: lk.attention(*_qkv(), q_freqs=rope_table(5, 8, device="meta")), "q_freqs"),
    (lambda: lk.attention(torch.randint(0, 3, (2, 5, 4, 8)), *_qkv()[1:]), "q"),
]


@pytest.mark.parametrize("call,name", BAD_PUBLIC)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def _raw(q, k, v, fq=None, fk=None, m=None, s=0.5):
    return torch.ops.lumina.attention_fwd(q, k, v, fq, fk, m, s)


BAD_RAW = [
    (lambda: _raw(*_qkv(Hq=6, Hkv=4)), "q"),
    (lambda: _raw(*_qkv(), rope_table(6, 8)), "q_freqs"),
    (lambda: _raw(*_qkv(), None, rope_table(5, 8).to(torch.complex128)), "k_freqs"),
    (lambda: _raw(_qkv()[0], _qkv()[1].half(), _qkv()[2]), "k"),
    (lambda: _raw(*_qkv(dtype=torch.float64)), "q"),
    (lambda: _raw(_qkv()[0].transpose(1, 2), *_qkv()[1:]), "q"),
    (lambda: _raw(*_qkv(), None, None, torch.ones(2, 5)), "key_padding_mask"),
    (lambda: _raw(*_qkv(), None, None, torch.ones(2, 4, dtype=torch.bool)), "key_padding_mask"),
    (lambda: _raw(*_qkv(), None, None, None, float("inf")), "softmax_scale"),
    (lambda: torch.ops.lumina.attention_bwd(torch.randn(2, 5, 4, 8), *_qkv(), torch.randn(2, 5, 4, 8),
                                            torch.randn(2, 4, 4), None, None, None, 0.5), "lse"),
    (lambda: torch.ops.lumina.attention_bwd(torch.randn(2, 5, 4, 9), *_qkv(), torch.randn(2, 5, 4, 8),
                                            torch.randn(2, 4, 5), None, None, None, 0.5), "grad_out"),
]


@needs_ext
@pytest.mark.parametrize("call,name", BAD_RAW)
def test_raw_op_bad_input_names_the_argument(call, name):
    with pytest.raises(RuntimeError, match=f"`{name}`"):
        call()
