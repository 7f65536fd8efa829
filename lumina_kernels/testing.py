"""Test helpers shared by tests/ and benchmarks/: the one table of tolerances, and fresh inputs."""
from __future__ import annotations

import torch

# (atol, rtol) per dtype, for a kernel against the reference run on the same inputs. Both compute in
# fp32 and round once, so outputs differ by about one unit in the last place of the dtype; gradients
# pass through reductions summed in another order, hence the looser "grad" entries.
TOLERANCES: dict[str, dict[torch.dtype, tuple[float, float]]] = {
    "forward": {
        torch.float32: (1e-5, 1e-5),
        torch.float16: (1e-3, 1e-3),
        torch.bfloat16: (8e-3, 8e-3),
        torch.float64: (1e-12, 1e-12),
        torch.complex64: (1e-5, 1e-5),
    },
    "grad": {
        torch.float32: (1e-4, 1e-4),
        torch.float16: (2e-3, 4e-3),
        torch.bfloat16: (2e-2, 2e-2),
        torch.float64: (1e-10, 1e-10),
        torch.complex64: (1e-4, 1e-4),
    },
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, kind: str = "forward", msg: str = "") -> None:
    """torch.testing.assert_close with the tolerance of `expected`'s dtype; NaN never passes."""
    atol, rtol = TOLERANCES[kind][expected.dtype]
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    assert torch.isfinite(actual).all(), f"{msg}: non-finite values in the result"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def rope_table(seq: int, head_dim: int, batch: int | None = None, theta: float = 10000.0,
               device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """A complex64 RoPE table (seq, head_dim/2), or (batch, seq, head_dim/2) with shuffled positions per sample."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64)[: head_dim // 2] / head_dim)
    if batch is None:
        pos = torch.arange(seq, dtype=torch.float64)
    else:
        pos = torch.stack([torch.randperm(seq, generator=generator).double() for _ in range(batch)])
    angles = pos[..., None] * freqs  # (..., seq, head_dim/2)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


# Attention is compared with a float64 reference, as flash-attention's tests do: the kernel's largest
# error must stay within `factor` times the largest error of a plain low-precision implementation (the
# reference with upcast=False: RoPE, scores and P @ V rounded to the input dtype) plus `eps`.
ATTENTION_ERROR: dict[str, dict[torch.dtype, tuple[float, float]]] = {  # (factor, eps)
    "forward": {torch.float32: (3.0, 1e-5), torch.bfloat16: (2.0, 1e-3), torch.float16: (2.0, 2e-4)},
    "grad": {torch.float32: (3.0, 1e-4), torch.bfloat16: (3.0, 4e-3), torch.float16: (3.0, 1e-3)},
}


def assert_within_reference_error(actual: torch.Tensor, ref64: torch.Tensor, ref_low: torch.Tensor,
                                  kind: str = "forward", msg: str = "") -> None:
    """max|actual - ref64| <= factor * max|ref_low - ref64| + eps, factor and eps from ATTENTION_ERROR."""
    factor, eps = ATTENTION_ERROR[kind][actual.dtype]
    assert torch.isfinite(actual).all(), f"{msg}: non-finite values in the result"
    assert actual.shape == ref64.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(ref64.shape)}"
    err = (actual.double() - ref64).abs().max().item() if actual.numel() else 0.0
    base = (ref_low.double() - ref64).abs().max().item() if actual.numel() else 0.0
    assert err <= factor * base + eps, (f"{msg}: max error {err:.3g} > {factor} x the low-precision reference's "
                                        f"{base:.3g} + {eps:g}")


def assert_within_update_bound(actual: torch.Tensor, expected: torch.Tensor, x: torch.Tensor, ks, coeffs, h: float,
                               msg: str = "") -> None:
    """solver_update against its reference: elementwise |actual - expected| <= 2 n eps (|x| + sum |h c_i k_i|), n the
    nonzero terms, eps of x's dtype. Each term of either side rounds once (fused multiply-add) or twice (a CPU
    without FMA), so this is the contract's bound; on CUDA and FMA CPUs the two agree bit for bit."""
    assert actual.dtype == x.dtype and actual.shape == x.shape, f"{msg}: {actual.dtype} {tuple(actual.shape)}"
    assert torch.isfinite(actual).all(), f"{msg}: non-finite values in the result"
    eps = torch.finfo(x.dtype).eps
    mag = x.double().abs()
    n = 0
    for c, k in zip(coeffs, ks):
        if c != 0:
            mag = mag + abs(h * c) * k.to(x.dtype).double().abs()
            n += 1
    bound = 2 * max(n, 1) * eps * mag + torch.finfo(x.dtype).tiny
    err = (actual.double() - expected.double()).abs()
    assert bool((err <= bound).all()), f"{msg}: max error / bound {(err / bound).max().item():.3g}"
