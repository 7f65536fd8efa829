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

Passes: "fwd" times the forward; "bwd" times the backward alone (torch.autograd.grad on a retained graph).
Every case rotates q and k (self-attention, RoPE included on every side) and has no mask. Shapes
(B, L, Hq, Hkv, D): the released 2B model's heads (32 query, 8 KV, head dim 72) at L = 1024, 4096 and
16384 on CUDA (256 and 1024 on CPU), and the tiny model's (64, 64, 4, 2, 64).
extra_info["flops"] counts useful FLOPs only: 4 * B * Hq * Lq * Lk * D for the forward pass (two GEMMs),
2.5x that for the backward (five GEMMs); benchmarks/summarize.py turns it into TFLOP/s and reports
lumina's speed-up over the best SDPA backend of the same group ("x peer").
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


IMPLS = {"lumina": _lumina, "lumina-kernel": _kernel, "sdpa": _sdpa, "sdpa-flash": _sdpa_pinned("flash"),
         "sdpa-cudnn": _sdpa_pinned("cudnn"), "sdpa-efficient": _sdpa_pinned("efficient"), "reference": _reference}
CPU_IMPLS = ("lumina", "lumina-kernel", "sdpa", "reference")
CUDA_IMPLS = ("lumina", "lumina-kernel", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "reference")


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


@pytest.mark.parametrize("case", _cases())
def test_attention(benchmark, case):
    pass_, device, dtype, (B, L, Hq, Hkv, D), impl = case
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    grad = pass_ == "bwd"
    q = torch.randn(B, L, Hq, D, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, L, Hkv, D, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, L, Hkv, D, device=device, dtype=dtype, requires_grad=grad)
    f = rope_table(L, D, device=device)
    fn = IMPLS[impl]
    flops = 4 * B * Hq * L * L * D * (2.5 if grad else 1.0)
    benchmark.group = f"attention {pass_} {device} {DTYPE_NAMES[dtype]} B{B} L{L} H{Hq}/{Hkv} D{D}"
    info = benchmark.extra_info
    info.update(op="attention", impl=impl, device=device, dtype=DTYPE_NAMES[dtype], shape=[B, L, Hq, Hkv, D],
                flops=flops, seed=seed)
    info["pass"] = pass_
    info["peer"] = impl.startswith("sdpa")
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
