"""Attention benchmarks: lumina_kernels.attention against torch SDPA (each backend) after lumina's RoPE and the reference.

    pytest benchmarks/bench_attention.py --benchmark-only
    pytest benchmarks/bench_attention.py --benchmark-only -m cuda      # CUDA cases (skipped without a GPU)

One pytest-benchmark group per (pass, device, dtype, shape); in it one benchmark per implementation:

    lumina          lumina_kernels.attention: the dispatcher's choice (extra_info["backend"])
    lumina-kernel   torch.ops.lumina.attention_fwd itself (autograd through attention_bwd)
    sdpa            torch scaled_dot_product_attention(enable_gqa=True) after lumina_kernels.apply_rope, torch's
                    choice of backend (CPU)
    sdpa-flash, sdpa-cudnn, sdpa-efficient
                    the same pinned to one CUDA backend (torch.nn.attention.sdpa_kernel); a backend that refuses
                    enable_gqa gets K/V expanded to the query heads (extra_info["gqa"] = "expanded"), as
                    diffusers does; one that refuses the inputs altogether is skipped with torch's reason
    reference       lumina_kernels.reference.attention (plain PyTorch, fp32, GQA by copying K/V)
    fa4             (peer, CUDA, optional) flash-attn-4's flash_attn.cute.flash_attn_func after lumina's RoPE,
                    GQA native, (B, L, H, D) layout as lumina's; skipped with the reason when flash-attn-4 is
                    not importable. It is on the package index only as pre-releases (`pip install --pre
                    flash-attn-4`, a CuTe-DSL JIT package pulling nvidia-cutlass-dsl, quack-kernels,
                    apache-tvm-ffi); its SM90 path takes head dim 72 (a multiple of 8). flash-attn 2
                    (`flash_attn`) has no wheel for torch 2.11 / CUDA 13 on the index (an sdist needing a
                    CUDA build of its own), so it is not a peer here.
    gemm            the machine's dense matmul rate in the group's dtype: torch.mm of two N x N matrices
                    (N = 8192 on CUDA, 1024 on CPU; 2 N^3 FLOPs), timed first in each group; summarize.py's
                    "% gemm" is a row's TFLOP/s over it, and each row records the same in extra_info["% gemm"]

Passes: "fwd" times the forward; "bwd" times the backward alone (torch.autograd.grad on a retained graph).
Every case rotates q and k (self-attention, RoPE included on every side) and has no mask. Shapes
(B, L, Hq, Hkv, D): the released 2B model's heads (32 query, 8 KV, head dim 72) at L = 1024, 4096 and
16384 on CUDA (256 and 1024 on CPU), and the tiny model's (64, 64, 4, 2, 64).
extra_info["flops"] counts useful FLOPs only: 4 * B * Hq * Lq * Lk * D for the forward pass (two GEMMs),
2.5x that for the backward (five GEMMs); benchmarks/summarize.py turns it into TFLOP/s and reports
lumina's speed-up over the best peer of the same group ("x peer": each SDPA backend and fa4).
"""
from __future__ import annotations

import math
import os
import time

import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import ops, reference
from lumina_kernels.testing import rope_table

HAS_CUDA = torch.cuda.is_available()
CPU_MAX_TIME = float(os.environ.get("LUMINA_BENCH_CPU_MAX_TIME", "0.2"))
CUDA_MAX_TIME = float(os.environ.get("LUMINA_BENCH_CUDA_MAX_TIME", "0.3"))
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _lumina(q, k, v, f):
    return lk.attention(q, k, v, q_freqs=f, k_freqs=f)


def _kernel(q, k, v, f):
    return torch.ops.lumina.attention_fwd(q, k, v, f, f, None, 1 / math.sqrt(q.shape[-1]))[0]


def _sdpa(q, k, v, f):
    return ops._sdpa_after_rope(q, k, v, f, f, None, 1 / math.sqrt(q.shape[-1]))


def _sdpa_pinned(backend_name: str):
    """SDPA after lumina's RoPE with one CUDA backend; GQA by enable_gqa, or by expanding K/V if refused."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend_name]

    def run(q, k, v, f, expand=False):
        q, k = lk.apply_rope(q, f), lk.apply_rope(k, f)
        if expand:
            k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
            v = v.repeat_interleave(q.shape[2] // v.shape[2], dim=2)
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1 / math.sqrt(q.shape[-1]),
                enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)
    return run


def _reference(q, k, v, f):
    return reference.attention(q, k, v, f, f)


def _fa4_func():
    """flash-attn-4's flash_attn_func, or raise (ImportError or whatever its import raises)."""
    from flash_attn.cute import flash_attn_func

    return flash_attn_func


def fa4_unavailable() -> str | None:
    try:
        _fa4_func()
    except Exception as e:
        return (f"flash-attn-4 is not importable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "pip install --pre flash-attn-4")
    return None


def _fa4(q, k, v, f):
    q, k = lk.apply_rope(q, f), lk.apply_rope(k, f)
    out = _fa4_func()(q, k, v, softmax_scale=1 / math.sqrt(q.shape[-1]), causal=False)
    return out[0] if isinstance(out, tuple) else out  # (out, lse)


IMPLS = {"lumina": _lumina, "lumina-kernel": _kernel, "sdpa": _sdpa, "sdpa-flash": _sdpa_pinned("flash"),
         "sdpa-cudnn": _sdpa_pinned("cudnn"), "sdpa-efficient": _sdpa_pinned("efficient"), "fa4": _fa4,
         "reference": _reference}
CPU_IMPLS = ("gemm", "lumina", "lumina-kernel", "sdpa", "reference")
CUDA_IMPLS = ("gemm", "lumina", "lumina-kernel", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "fa4", "reference")
PEERS = ("sdpa", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "fa4")
GEMM_N = {"cpu": 1024, "cuda": 8192}
# (device, dtype name) -> TFLOP/s of the last gemm row, for extra_info["% gemm"] of the rows after it
GEMM_TFLOPS: dict[tuple[str, str], float] = {}


def cuda_sync_timer() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def _cases():
    params = []
    cpu_mark = pytest.mark.benchmark(max_time=CPU_MAX_TIME, min_rounds=3, warmup=False)
    cuda_marks = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU"),
                  pytest.mark.benchmark(timer=cuda_sync_timer, max_time=CUDA_MAX_TIME, min_rounds=5, warmup=False)]
    groups = {
        "cpu": [((2, 256, 32, 8, 72), torch.float32), ((2, 256, 32, 8, 72), torch.bfloat16),
                ((2, 1024, 32, 8, 72), torch.bfloat16), ((64, 64, 4, 2, 64), torch.float32)],
        "cuda": [((2, 1024, 32, 8, 72), torch.bfloat16), ((2, 4096, 32, 8, 72), torch.bfloat16),
                 ((2, 16384, 32, 8, 72), torch.bfloat16)],
    }
    for device, gs in groups.items():
        for pass_ in ("fwd", "bwd"):
            for shape, dtype in gs:
                for impl in CPU_IMPLS if device == "cpu" else CUDA_IMPLS:
                    if impl == "reference" and shape[1] > (256 if device == "cpu" else 1024):
                        continue  # minutes on a small CPU, gigabytes of scores on a GPU
                    cid = f"{pass_}-{device}-{DTYPE_NAMES[dtype]}-{'x'.join(map(str, shape))}-{impl}"
                    marks = [cpu_mark] if device == "cpu" else list(cuda_marks)
                    params.append(pytest.param((pass_, device, dtype, shape, impl), id=cid, marks=marks))
    return params


def _bench_gemm(benchmark, device, dtype, info):
    n = GEMM_N[device]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    flops = 2 * n**3
    info.update(op="gemm", shape=[n, n, n], flops=flops)
    torch.mm(a, b, out=out)  # warm-up
    benchmark(lambda: torch.mm(a, b, out=out))
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        info["median_ms"] = median * 1e3
        info["TFLOP/s"] = flops / median / 1e12
        GEMM_TFLOPS[(device, DTYPE_NAMES[dtype])] = info["TFLOP/s"]


@pytest.mark.parametrize("case", _cases())
def test_attention(benchmark, case):
    pass_, device, dtype, (B, L, Hq, Hkv, D), impl = case
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    benchmark.group = f"attention {pass_} {device} {DTYPE_NAMES[dtype]} B{B} L{L} H{Hq}/{Hkv} D{D}"
    info = benchmark.extra_info
    info.update(impl=impl, device=device, dtype=DTYPE_NAMES[dtype], seed=seed)
    info["pass"] = pass_
    if impl == "gemm":  # the ceiling: the dense matmul rate of this dtype on this device
        _bench_gemm(benchmark, device, dtype, info)
        return
    if impl == "fa4":
        reason = fa4_unavailable()
        if reason:
            pytest.skip(reason)
    grad = pass_ == "bwd"
    q = torch.randn(B, L, Hq, D, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, L, Hkv, D, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, L, Hkv, D, device=device, dtype=dtype, requires_grad=grad)
    f = rope_table(L, D, device=device)
    fn = IMPLS[impl]
    flops = 4 * B * Hq * L * L * D * (2.5 if grad else 1.0)
    info.update(op="attention", shape=[B, L, Hq, Hkv, D], flops=flops)
    info["peer"] = impl in PEERS
    if impl == "lumina":
        info["backend"] = lk.explain("attention", q, k, v, q_freqs=f, k_freqs=f).backend
    if impl.startswith("sdpa-"):
        try:
            fn(q, k, v, f)
        except RuntimeError as err:  # this backend refuses enable_gqa (or these inputs): expand K/V
            info["gqa"] = "expanded"
            pinned = fn
            fn = lambda q, k, v, f: pinned(q, k, v, f, expand=True)  # noqa: E731
            try:
                fn(q, k, v, f)
            except RuntimeError as err2:
                pytest.skip(f"{impl} refuses these inputs: {str(err2).splitlines()[0]} (with GQA: {err})")
    if impl == "fa4":
        try:
            fn(q, k, v, f)
        except Exception as err:  # e.g. a head dim or architecture its kernels do not take
            pytest.skip(f"fa4 refuses these inputs: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if pass_ == "fwd":
        step = lambda: fn(q, k, v, f)  # noqa: E731
    else:
        out = fn(q, k, v, f)
        g = torch.randn_like(out)
        step = lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True)  # noqa: E731
    step()  # warm-up
    benchmark(step)
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        info["median_ms"] = median * 1e3
        info["TFLOP/s"] = flops / median / 1e12
        gemm = GEMM_TFLOPS.get((device, DTYPE_NAMES[dtype]))
        if gemm:  # the fraction of the measured matmul rate
            info["gemm_TFLOP/s"] = gemm
            info["% gemm"] = 100 * info["TFLOP/s"] / gemm
