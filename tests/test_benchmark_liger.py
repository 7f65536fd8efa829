"""The liger-kernel RoPE peer of benchmarks/bench_kernels.py on the CPU: liger's Triton launch replaced by the
same arithmetic in torch, so that the benchmark's layout conversion (interleaved pairs -> rotate-half, the batch
split into liger's q and k, autograd around the in-place kernel) is checked without a GPU."""
import pathlib
import sys

import pytest
import torch

rope = pytest.importorskip("liger_kernel.ops.rope", reason="liger-kernel (the optional benchmark peer) not installed")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_kernels as bk  # noqa: E402


class _EmulatedLaunch:
    """liger's _triton_rope[grid](...) in torch: q, k (B, L, H, D) storage rotated in place, rotate-half pairs
    (i, i + rd/2) by cos / sin rows of width >= rd/2, in the table's dtype (fp32), rounded once."""

    def __getitem__(self, grid):
        def launch(q, q_stride, k, k_stride, cos, cos_stride, sin, sin_stride, sl, bs, cos_bs, n_qh, n_kh, hd,
                   pad_n_qh, pad_n_kh, pad_hd, pad_rd, rd, BLOCK_SIZE, BACKWARD_PASS=False):
            c = cos[..., : rd // 2].float()[:, :, None, :]
            s = sin[..., : rd // 2].float()[:, :, None, :]
            s = -s if BACKWARD_PASS else s
            for t in (q, k):
                x1, x2 = t[..., : rd // 2].float(), t[..., rd // 2: rd].float()
                t[..., : rd // 2], t[..., rd // 2: rd] = (x1 * c - x2 * s).to(t.dtype), (x2 * c + x1 * s).to(t.dtype)
        return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
def test_liger_rope_peer_matches_the_reference(monkeypatch, dtype, pass_):
    monkeypatch.setattr(rope, "_triton_rope", _EmulatedLaunch())
    case = bk.Case("apply_rope", pass_, "cpu", dtype, (2, 16, 4, 72), "liger")
    args, grad_idx = bk._make_inputs("apply_rope", case.shape, dtype, "cpu")
    grad_out = None
    if pass_ == "fwdbwd":
        args[0].requires_grad_(True)
        grad_out = bk._rand(args[0].shape, dtype, "cpu")
    largs, lgrad, back = bk._liger_inputs("apply_rope", args, grad_out)
    bk._check_liger(case, args, grad_idx, grad_out, largs, lgrad, back)  # asserts
    step = bk._step(bk.LIGER["apply_rope"], largs, grad_idx, lgrad, pass_)
    for _ in range(3):  # the timed step, repeated in place, stays finite
        step()
    assert torch.isfinite(largs[0]).all()
    # without the map back to lumina's interleaved layout the check fails: the layouts really differ
    with pytest.raises(AssertionError):
        bk._check_liger(case, args, grad_idx, grad_out, largs, lgrad, lambda t: t)
