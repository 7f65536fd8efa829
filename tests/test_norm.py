"""The fused RMSNorm family: kernels against the reference, gradients, opcheck, bad input."""
import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_close

from conftest import device_params

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (leading shape, dim): odd sequences and hidden sizes, the Next-DiT width, and a 4-D input
SHAPES = [((2, 97), 273), ((1, 1025), 273), ((2, 97), 2304), ((3, 5, 7), 64), ((2, 3), 8), ((1, 1), 1)]
VARIANTS = ["plain", "modulated", "gated"]

needs_ext = pytest.mark.skipif(lk.LOAD_ERROR is not None, reason=f"extension not loaded: {lk.LOAD_ERROR}")


def make_inputs(variant, lead, dim, dtype, device, requires_grad=False):
    def r(*shape):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(requires_grad)

    x, w = r(*lead, dim), r(dim)
    scale = r(lead[0], dim) if variant == "modulated" else None
    gate = r(lead[0], dim) if variant == "gated" else None
    residual = r(*lead, dim) if variant == "gated" else None
    return x, w, scale, gate, residual


def call_public(variant, x, w, scale, gate, residual, eps=1e-5):
    if variant == "plain":
        return lk.rms_norm(x, w, eps), reference.rms_norm(x, w, eps)
    if variant == "modulated":
        return lk.modulated_rms_norm(x, w, scale, eps), reference.modulated_rms_norm(x, w, scale, eps)
    return (lk.gated_rms_norm_residual(residual, x, w, gate, eps),
            reference.gated_rms_norm_residual(residual, x, w, gate, eps))


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant,lead,dim", [(v, lead, dim) for v in VARIANTS for lead, dim in SHAPES
                                               if v == "plain" or len(lead) >= 2], ids=str)  # modulation: (B, ..., dim)
def test_forward_matches_reference(variant, lead, dim, dtype, device):
    x, w, scale, gate, residual = make_inputs(variant, lead, dim, dtype, device)
    assert lk.explain("fused_rms_norm", x, w).backend == device  # the kernel runs, not the reference
    out, rstd = torch.ops.lumina.fused_rms_norm(x, w, scale, gate, residual, 1e-5)
    expected = reference.fused_rms_norm(x, w, scale, gate, residual, 1e-5)
    assert_close(out, expected, msg=f"{variant} {lead} {dim} {dtype}")
    xf = x.float()
    assert_close(rstd, torch.rsqrt(xf.pow(2).mean(-1) + 1e-5), msg="rstd")
    public, ref = call_public(variant, x, w, scale, gate, residual)
    assert_close(public, ref, msg="public wrapper")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,dim", [((2, 97), 273), ((2, 1025), 273), ((2, 33), 2304), ((3, 4, 5), 72)], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_match_reference(variant, lead, dim, dtype, device):
    x, w, scale, gate, residual = make_inputs(variant, lead, dim, dtype, device, requires_grad=True)
    inputs = [t for t in (x, w, scale, gate, residual) if t is not None]
    out, ref = call_public(variant, x, w, scale, gate, residual)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, g)
    # The oracle: the reference's autograd on the same inputs in float64, rounded to the dtype.
    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    it = iter(inputs64)
    x64, w64 = next(it), next(it)
    s64 = next(it) if scale is not None else None
    g64 = next(it) if gate is not None else None
    r64 = next(it) if residual is not None else None
    want = torch.autograd.grad(reference.fused_rms_norm(x64, w64, s64, g64, r64), inputs64, g.double())
    for name, a, b in zip(["x", "weight", "scale/gate", "residual"], got, want):
        assert_close(a, b.to(dtype), kind="grad", msg=f"grad {name} {variant} {lead} {dim} {dtype}")


@needs_ext
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("variant", VARIANTS)
def test_opcheck(variant, device):
    x, w, scale, gate, residual = make_inputs(variant, (2, 9), 40, torch.float32, device, requires_grad=True)
    torch.library.opcheck(torch.ops.lumina.fused_rms_norm.default, (x, w, scale, gate, residual, 1e-5))
    out, rstd = torch.ops.lumina.fused_rms_norm(x, w, scale, gate, residual, 1e-5)
    args = (torch.randn_like(out), x.detach(), w.detach(),
            None if scale is None else scale.detach(), None if gate is None else gate.detach(), rstd.detach())
    torch.library.opcheck(torch.ops.lumina.fused_rms_norm_backward.default, args)


@needs_ext
def test_torch_compile_traces_the_op():
    x, w, scale, _, _ = make_inputs("modulated", (2, 16), 32, torch.float32, "cpu")
    f = torch.compile(lk.modulated_rms_norm, backend="aot_eager", fullgraph=True)
    assert_close(f(x, w, scale), reference.modulated_rms_norm(x, w, scale))


@needs_ext
def test_empty_and_zero_rows():
    x = torch.randn(2, 0, 16)
    w = torch.randn(16)
    assert lk.modulated_rms_norm(x, w, torch.randn(2, 16)).shape == (2, 0, 16)
    # an all-zero row normalises to zero, not NaN
    z = lk.rms_norm(torch.zeros(3, 16), w)
    assert torch.equal(z, torch.zeros(3, 16))


@needs_ext
def test_scale_accepts_b1d_and_casts_weight():
    x = torch.randn(2, 10, 32, dtype=torch.bfloat16)
    w = torch.randn(32)  # fp32 weight with bf16 activations: cast to x's dtype
    s = torch.randn(2, 1, 32, dtype=torch.bfloat16)
    out = lk.modulated_rms_norm(x, w, s)
    assert out.dtype == torch.bfloat16
    assert_close(out, reference.modulated_rms_norm(x, w.bfloat16(), s[:, 0]))


@needs_ext
def test_reference_fallback_for_float64_is_explained():
    x, w = torch.randn(4, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    d = lk.explain("fused_rms_norm", x, w)
    assert d.backend == "reference"
    assert "float64" in dict(d.verdicts)["cpu"]
    assert_close(lk.rms_norm(x, w), reference.rms_norm(x, w))


def test_disabled_backend_is_refused(monkeypatch):
    monkeypatch.setenv("LUMINA_KERNELS_DISABLE", "cpu,cuda")
    x, w = torch.randn(4, 8), torch.randn(8)
    d = lk.explain("fused_rms_norm", x, w)
    assert d.backend == "reference" and dict(d.verdicts)["cpu"] == "disabled by LUMINA_KERNELS_DISABLE"
    assert "reference" in str(d) and "refused" in str(d)


# ------------------------------------------------------------------ bad input
BAD_PUBLIC = [
    (lambda: lk.rms_norm(torch.randn(4, 8), torch.randn(7)), "weight"),
    (lambda: lk.rms_norm(torch.arange(8).reshape(2, 4), torch.randn(4)), "x"),
    (lambda: lk.rms_norm(torch.randn(2, 4), "w"), "weight"),
    (lambda: lk.rms_norm(torch.randn(2, 4), torch.randn(4), eps=-1.0), "eps"),
    (lambda: lk.rms_norm(torch.randn(2, 4), torch.randn(4), eps=float("nan")), "eps"),
    (lambda: lk.rms_norm(torch.tensor(1.0), torch.randn(1)), "x"),
    (lambda: lk.modulated_rms_norm(torch.randn(2, 3, 8), torch.randn(8), torch.randn(3, 8)), "scale"),
    (lambda: lk.modulated_rms_norm(torch.randn(2, 3, 8), torch.randn(8), None), "scale"),
    (lambda: lk.modulated_rms_norm(torch.randn(8), torch.randn(8), torch.randn(1, 8)), "x"),
    (lambda: lk.gated_rms_norm_residual(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(8), torch.randn(2, 8)), "residual"),
    (lambda: lk.gated_rms_norm_residual(torch.randn(2, 3, 8), torch.randn(2, 3, 8).half(), torch.randn(8), torch.randn(2, 8)), "residual"),
    (lambda: lk.gated_rms_norm_residual(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(8), torch.randn(2, 7)), "gate"),
    (lambda: lk.gated_rms_norm_residual(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(8), torch.randn(2, 8, device="meta")), "gate"),
]


@pytest.mark.parametrize("call,name", BAD_PUBLIC)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


BAD_RAW = [
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(4, 8), torch.randn(7), None, None, None, 1e-5), "weight"),
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(4, 8).double(), torch.randn(8).double(), None, None, None, 1e-5), "x"),
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(4, 8), torch.randn(8).half(), None, None, None, 1e-5), "weight"),
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(8, 4).t(), torch.randn(8), None, None, None, 1e-5), "x"),
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(2, 4, 8), torch.randn(8), torch.randn(3, 8), None, None, 1e-5), "scale"),
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(2, 4, 8), torch.randn(8), None, torch.randn(2, 8).t().contiguous().t(), None, 1e-5), "gate"),
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(2, 4, 8), torch.randn(8), None, None, torch.randn(2, 4, 9), 1e-5), "residual"),
    (lambda: torch.ops.lumina.fused_rms_norm(torch.randn(2, 4), torch.randn(4), None, None, None, -1.0), "eps"),
    (lambda: torch.ops.lumina.fused_rms_norm_backward(torch.randn(2, 5), torch.randn(2, 4), torch.randn(4), None, None, torch.randn(2)), "grad_out"),
    (lambda: torch.ops.lumina.fused_rms_norm_backward(torch.randn(2, 4), torch.randn(2, 4), torch.randn(4), None, None, torch.randn(3)), "rstd"),
    (lambda: torch.ops.lumina.fused_rms_norm_backward(torch.randn(2, 4), torch.randn(2, 4), torch.randn(4), None, None, torch.randn(2).half()), "rstd"),
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
    with pytest.raises(RuntimeError, match="`weight`"):
        torch.ops.lumina.fused_rms_norm(torch.randn(4, 8, device="cuda"), torch.randn(8), None, None, None, 1e-5)
    with pytest.raises(ValueError, match="`weight`"):
        lk.rms_norm(torch.randn(4, 8, device="cuda"), torch.randn(8))


@needs_ext
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_misaligned_and_large_dims():
    # a contiguous view that starts off a 16-byte boundary takes the scalar path
    base = torch.randn(4 * 64 + 1, device="cuda", dtype=torch.bfloat16)
    x = base[1:].view(4, 64)
    w = torch.randn(64, device="cuda", dtype=torch.bfloat16)
    assert_close(lk.rms_norm(x, w), reference.rms_norm(x, w))
    # the widest dims the kernels take, and one over the limit (falls back to the reference)
    for dim in (32768, 4097, 40000):
        x = torch.randn(3, dim, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(dim, device="cuda", dtype=torch.bfloat16)
        assert_close(lk.rms_norm(x, w), reference.rms_norm(x, w), msg=str(dim))
    assert lk.explain("fused_rms_norm", torch.randn(2, 4097, device="cuda"), None).backend == "reference"
