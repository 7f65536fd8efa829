"""Hypothesis fuzzing of every op over shapes, dtypes and memory layouts.

Each case must either give the reference's answer or raise a ValueError that names an argument:
never a crash, a hang, another exception, or a silently different answer.
"""
import re

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lumina_kernels as lk
from lumina_kernels import reference
from lumina_kernels.testing import assert_close, assert_within_reference_error, rope_table

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LAYOUTS = ["contiguous", "strided", "transposed", "offset"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def materialise(shape, dtype, layout, seed):
    """A tensor of `shape` with random values laid out in memory as `layout` says."""
    g = torch.Generator().manual_seed(seed)
    if layout == "strided":  # every other element of the last dimension
        return torch.randn(*shape[:-1], 2 * shape[-1], generator=g).to(dtype)[..., ::2]
    if layout == "transposed" and len(shape) >= 2:
        s = list(shape)
        s[0], s[1] = s[1], s[0]
        return torch.randn(*s, generator=g).to(dtype).transpose(0, 1)
    if layout == "offset":  # contiguous, but one element into its storage
        n = 1
        for d in shape:
            n *= d
        return torch.randn(n + 1, generator=g).to(dtype)[1:].view(shape)
    return torch.randn(*shape, generator=g).to(dtype)


def check_value_error(err: ValueError):
    assert re.search(r"`\w+`", str(err)), f"error does not name an argument: {err}"


@FUZZ
@given(
    variant=st.sampled_from(["plain", "modulated", "gated"]),
    lead=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    dim=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    layouts=st.tuples(*[st.sampled_from(LAYOUTS)] * 4),
    wrong=st.sampled_from([None, "weight", "scale", "residual"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_norm(variant, lead, dim, dtype, layouts, wrong, seed):
    x = materialise((*lead, dim), dtype, layouts[0], seed)
    w = materialise((dim + (wrong == "weight"),), dtype, layouts[1], seed + 1)
    b = lead[0]
    mod = materialise((b + (wrong == "scale"), dim), dtype, layouts[2], seed + 2)
    res = materialise((*lead, dim + (wrong == "residual")), dtype, layouts[3], seed + 3)
    try:
        if variant == "plain":
            out, ref = lk.rms_norm(x, w), reference.rms_norm(x, w)
        elif variant == "modulated":
            out, ref = lk.modulated_rms_norm(x, w, mod), reference.modulated_rms_norm(x, w, mod)
        else:
            out, ref = lk.gated_rms_norm_residual(res, x, w, mod), reference.gated_rms_norm_residual(res, x, w, mod)
    except ValueError as e:
        check_value_error(e)
        invalid = (wrong == "weight" or (variant == "modulated" and (wrong == "scale" or len(lead) < 2))
                   or (variant == "gated" and (wrong in ("scale", "residual") or len(lead) < 2)))
        assert invalid, f"valid input refused: {e}"
        return
    assert wrong is None or (variant == "plain" and wrong != "weight") or (variant == "modulated" and wrong == "residual"), \
        "invalid input accepted"
    assert_close(out, ref, msg=f"{variant} {lead} {dim} {dtype} {layouts}")


@FUZZ
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 5), st.integers(1, 40)),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    per_batch=st.booleans(),
    table_len=st.sampled_from([0, 0, 0, 1]),  # sometimes one position too many
    inverse=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_rope(shape, dtype, layout, per_batch, table_len, inverse, seed):
    B, L, H, D = shape
    x = materialise(shape, dtype, layout, seed)
    f = rope_table(L + table_len, 2 * max(D // 2, 1), batch=B if per_batch else None)
    try:
        out = lk.apply_rope(x, f, inverse)
    except ValueError as e:
        check_value_error(e)
        assert D % 2 == 1 or table_len, f"valid input refused: {e}"
        return
    assert D % 2 == 0 and not table_len, "invalid input accepted"
    assert_close(out, reference.apply_rope(x, f, inverse), msg=f"{shape} {dtype} {layout}")


@FUZZ
@given(
    B=st.integers(1, 2),
    Lq=st.integers(1, 70),
    Lk=st.integers(0, 70),
    Hkv=st.integers(1, 3),
    group=st.integers(1, 4),
    D=st.sampled_from([2, 8, 14, 64, 72, 80, 96, 128]),
    dtype=st.sampled_from(DTYPES),
    layouts=st.tuples(*[st.sampled_from(LAYOUTS)] * 3),
    rope=st.sampled_from(["both", "q", "none", "per_batch"]),
    masked=st.booleans(),
    wrong=st.sampled_from([None, "heads", "q_freqs", "k_dtype", "mask_shape"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_attention(B, Lq, Lk, Hkv, group, D, dtype, layouts, rope, masked, wrong, seed):
    Hq = Hkv * group + (1 if wrong == "heads" and Hkv > 1 else 0)
    q = materialise((B, Lq, Hq, D), dtype, layouts[0], seed)
    k = materialise((B, Lk, Hkv, D), torch.float32 if wrong == "k_dtype" and dtype != torch.float32 else dtype,
                    layouts[1], seed + 1)
    v = materialise((B, Lk, Hkv, D), dtype, layouts[2], seed + 2)
    g = torch.Generator().manual_seed(seed)
    per_batch = B if rope == "per_batch" else None
    fq = rope_table(Lq + (wrong == "q_freqs"), D, batch=per_batch, generator=g) if rope != "none" else None
    fk = rope_table(Lk, D, batch=per_batch, generator=g) if rope in ("both", "per_batch") else None
    mask = None
    if masked or wrong == "mask_shape":
        mask = torch.rand(B, Lk + (wrong == "mask_shape"), generator=g) > 0.3
    bad = {None: False, "heads": Hkv > 1, "q_freqs": rope != "none", "k_dtype": dtype != torch.float32,
           "mask_shape": True}[wrong]
    try:
        out = lk.attention(q, k, v, q_freqs=fq, k_freqs=fk, key_padding_mask=mask)
    except ValueError as err:
        assert bad, f"valid input refused: {err}"
        check_value_error(err)
        return
    assert not bad, f"bad input ({wrong}) accepted"
    ref64 = reference.attention(q.double(), k.double(), v.double(), fq, fk, mask)
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref64)
        return
    low = reference.attention(q, k, v, fq, fk, mask, upcast=False)
    assert_within_reference_error(out, ref64, low, msg=f"{(B, Lq, Lk, Hq, Hkv, D)} {dtype} {layouts} {rope}")


@FUZZ
@given(
    B=st.integers(1, 3),
    grid=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    factor=st.lists(st.integers(1, 5), min_size=3, max_size=3),
    feat=st.lists(st.integers(1, 6), min_size=1, max_size=2),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    by=st.sampled_from(["grid", "shared_cells", "per_sample_cells"]),
    hi=st.integers(1, 12),
    extra=st.integers(0, 3),
    index_dtype=st.sampled_from([torch.int32, torch.int64]),
    masked=st.booleans(),
    wrong=st.sampled_from([None, None, None, "grid", "factor", "both", "cells_range", "cells_shape", "cells_dtype"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_merge(B, grid, factor, feat, dtype, layout, by, hi, extra, index_dtype, masked, wrong, seed):
    L = 1
    for a in grid:
        L *= a
    x = materialise((B, L, *feat), dtype, layout, seed).requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, L, generator=g) > 0.3 if masked else None
    f = tuple(factor[: len(grid)])
    n_cells = hi + extra
    if by == "grid":
        kw = {"grid": tuple(grid) + ((2,) if wrong == "grid" else ()), "factor": (0,) + f[1:] if wrong == "factor" else f}
        if wrong == "both":
            kw.update(cells=torch.zeros(L, dtype=index_dtype), n_cells=1)
        ref_kw = {"grid": tuple(grid), "factor": f}
        bad = wrong in ("grid", "factor", "both")
    else:
        cells = torch.randint(0, hi, (L,) if by == "shared_cells" else (B, L), generator=g).to(index_dtype)
        if wrong == "cells_range" and L:
            cells.view(-1)[int(torch.randint(0, cells.numel(), (1,), generator=g))] = n_cells
        if wrong == "cells_shape":
            cells = cells[..., :-1] if L > 1 else torch.zeros(B + 1, L, dtype=cells.dtype)
        if wrong == "cells_dtype":
            cells = cells.float()
        kw = {"cells": cells, "n_cells": n_cells}
        if wrong == "both":
            kw["grid"] = (L,)
        ref_kw = kw
        bad = wrong in ("both", "cells_range", "cells_shape", "cells_dtype")
    try:
        out, count = lk.merge_tokens(x, mask=m, **kw)
    except ValueError as err:
        assert bad, f"valid input refused: {err}"
        check_value_error(err)
        return
    assert not bad, f"bad input ({wrong}) accepted"
    want, want_count = reference.merge_tokens(x.detach(), mask=m, **ref_kw)
    assert torch.equal(count, want_count)
    assert_close(out, want, msg=f"{by} {grid} {f} {dtype} {layout}")
    go = torch.randn(out.shape, generator=g).to(dtype)
    (gx,) = torch.autograd.grad(out, x, go)
    x64 = x.detach().double().requires_grad_(True)
    (want_gx,) = torch.autograd.grad(reference.merge_tokens(x64, mask=m, **ref_kw)[0], x64, go.double())
    assert_close(gx, want_gx.to(dtype), kind="grad", msg=f"grad {by} {grid} {f} {dtype} {layout}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    op=st.sampled_from(["norm", "rope", "attention_q", "attention_k", "attention_v", "merge"]),
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    L=st.integers(2, 40),
    at=st.integers(0, 10**6),
    seed=st.integers(0, 2**31 - 1),
)
@example(op="attention_q", bad=float("nan"), dtype=torch.bfloat16, L=2, at=0, seed=0)  # torch's bf16 CPU SDPA hid it
def test_fuzz_non_finite_inputs_are_never_hidden(op, bad, dtype, L, at, seed):
    """A NaN or inf in an input reaches the outputs it feeds, as in the reference (never a plausible finite value;
    an inf key may legitimately weigh nothing, so only NaN is compared for keys)."""
    B, H, D = 2, 2, 8
    x = materialise((B, L, H, D), dtype, "contiguous", seed)
    y = materialise((B, L, H, D), dtype, "contiguous", seed + 1)
    target = x if op != "attention_k" and op != "attention_v" else y
    flat = target.view(-1)
    flat[at % flat.numel()] = bad
    f = rope_table(L, D)
    if op == "norm":
        got, ref = lk.rms_norm(x, torch.ones(D, dtype=dtype)), reference.rms_norm(x, torch.ones(D, dtype=dtype))
    elif op == "rope":
        got, ref = lk.apply_rope(x, f), reference.apply_rope(x, f)
    elif op == "merge":
        got, ref = lk.merge_tokens(x[:, :, 0], (L,), 2)[0], reference.merge_tokens(x[:, :, 0], (L,), (2,))[0]
    else:
        q = x
        k = y if op == "attention_k" else x
        v = y if op == "attention_v" else x
        with torch.no_grad():
            got = lk.attention(q, k, v, q_freqs=f, k_freqs=f)
            ref = reference.attention(q, k, v, f, f)
    if op.startswith("attention"):
        if bad != bad:  # NaN: exactly the reference's NaN outputs
            assert torch.equal(torch.isnan(got), torch.isnan(ref))
        else:  # inf: whenever the reference is not finite, neither is the kernel
            assert bool(torch.isfinite(ref).all()) or not bool(torch.isfinite(got).all())
        return
    assert torch.equal(torch.isfinite(got), torch.isfinite(ref))
