"""Kernel benchmarks: the lumina kernels against their PyTorch reference and torch.compile of it.

    pytest benchmarks --benchmark-only                                   # CPU (+ CUDA when present)
    pytest benchmarks --benchmark-only -m cuda --benchmark-json=b.json   # CUDA only
    python benchmarks/summarize.py b.json                                # median, GB/s, % of copy

One pytest-benchmark group per (op, pass, device, dtype, shape); in it one benchmark per
implementation:

    lumina        the public wrapper (lumina_kernels.rms_norm, ...), i.e. the compiled kernel
    reference     lumina_kernels.reference.* (plain PyTorch, several kernels and fp32 temporaries)
    compiled      torch.compile(reference, dynamic=False); skipped, with the reason, where it cannot run
    lumina-eager  (CUDA only) the wrapper called eagerly, Python and dispatch overhead included
    copy          (CUDA only) Tensor.copy_ of as many bytes as the op's byte model: the bandwidth ceiling

Passes: "fwd" (the op alone) and "fwdbwd" (the op, then torch.autograd.grad of a random output
gradient with respect to every differentiable input).

Timing. CPU: pytest-benchmark's default wall clock around eager calls. CUDA: every implementation
but lumina-eager is captured into CUDA graphs (one per input set) and the timed function replays one
graph; the timer (`cuda_sync_timer`) synchronizes the device before each clock read, and pytest-
benchmark runs each round as many back-to-back calls (min_time 2 ms), so a round's time is device
time and the per-call figure is round time / calls. A synchronize inside every call would add a
launch-and-sync latency (~10-20 us) to ops that take ~20 us, and eager Python dispatch alone takes
about as long as these kernels, which lumina-eager shows. Where a graph cannot be captured the
benchmark falls back to eager calls and says so in extra_info["timing"].

Inputs are fresh random tensors (seed in extra_info["seed"]), never zeros. Several input sets are
rotated (4 on CUDA: ~4x the 60 MB L2 of an H200 even for the smallest group) so repeated calls do not
time the cache. Before timing, the lumina implementation's outputs (and gradients) are checked
against the reference.

Byte model (extra_info["bytes"], GB/s = bytes / median time): the fewest bytes that must move, each
input read once and each output written once, e = element size of the dtype, N = B*L*D (norms) or
B*L*H*D (rope), M = B*D (one scale or gate), F = L*D/2*8 (the complex64 rope table):

    rms_norm                 fwd: read x, w; write y                       (2N + D) e
                             bwd: read dy, x, w; write dx, dw              (3N + 2D) e
    modulated_rms_norm       fwd: read x, w, scale; write y                (2N + D + M) e
                             bwd: read dy, x, w, scale; write dx, dw, ds   (3N + 2D + 2M) e
    gated_rms_norm_residual  fwd: read residual, y, w, gate; write out     (3N + D + M) e
                             bwd: read dout, y, w, gate; write dy, dw, dg  (3N + 2D + 2M) e
                                  (d residual = dout itself: no bytes)
    apply_rope               fwd: read x, table; write y                   2N e + F
                             bwd: read dy, table; write dx                 2N e + F
    solver_update            fwd: read x, 4 ks; write out                  (4 + 4 e + 4) N   (rk4's final step:
                                  a float32 state, 4 velocities in the model's dtype, N = B*C*H*W)
    cfg_combine              fwd: read cond, uncond; write v               (2 e + 4) N       (v float32; e = 8 for
                                  float64 inputs, whose v is float64)
    cfg_combine+renorm       fwd: as cfg_combine, plus reading cond and    (4 e + 4) N
                                  uncond again (the norms must be known before v is written; re-reading the
                                  inputs moves no more bytes than writing v twice)

"fwdbwd" counts fwd + bwd: the two as separate passes, x read again by the backward. The saved
per-row rstd (4 bytes a row) is left out: a backward can recompute it.
"""
from __future__ import annotations

import importlib.util
import itertools
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import lumina_kernels as lk
from lumina_kernels import reference

HAS_CUDA = torch.cuda.is_available()
COMPILE = os.environ.get("LUMINA_BENCH_COMPILE", "1") not in ("0", "false", "no")
CPU_MAX_TIME = float(os.environ.get("LUMINA_BENCH_CPU_MAX_TIME", "0.2"))
CUDA_MAX_TIME = float(os.environ.get("LUMINA_BENCH_CUDA_MAX_TIME", "0.3"))

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
NORM_OPS = ("rms_norm", "modulated_rms_norm", "gated_rms_norm_residual")
SOLVER_OPS = ("solver_update", "cfg_combine", "cfg_combine+renorm")
SOLVER_KS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # rk4's final combination
# benchmark op name -> the op name `lumina_kernels.explain` knows
EXPLAIN_AS = {"cfg_combine+renorm": "cfg_combine"}


def cuda_sync_timer() -> float:
    """pytest-benchmark timer for CUDA: the host clock read after all queued device work is done."""
    torch.cuda.synchronize()
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------
# ops: inputs, byte model, implementations
# ----------------------------------------------------------------------------------------------
def _rand(shape, dtype, device, scale=1.0, offset=0.0):
    return (torch.randn(shape, dtype=torch.float32, device=device) * scale + offset).to(dtype)


def _make_inputs(op: str, shape, dtype, device) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """(call arguments, indices of the differentiable ones); fresh random values, never zeros."""
    if op == "apply_rope":
        B, L, H, D = shape
        x = _rand(shape, dtype, device)
        angles = torch.rand(L, D // 2, device=device) * (2 * math.pi)
        freqs = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
        return [x, freqs], (0,)
    if op == "solver_update":  # a float32 solver state, the velocities in the model's dtype
        ks = [_rand(shape, dtype, device) for _ in SOLVER_KS]
        return [_rand(shape, torch.float32, device), ks, list(SOLVER_KS), 0.05], ()
    if op in ("cfg_combine", "cfg_combine+renorm"):  # the halves of a doubled-batch model output
        out = _rand((2 * shape[0], *shape[1:]), dtype, device)
        return [out[: shape[0]], out[shape[0]:], 4.0, None, 1.0 if op.endswith("renorm") else None], ()
    B, L, D = shape
    x = _rand(shape, dtype, device)
    w = _rand((D,), dtype, device, scale=0.1, offset=1.0)
    if op == "rms_norm":
        return [x, w], (0, 1)
    if op == "modulated_rms_norm":
        return [x, w, _rand((B, D), dtype, device, scale=0.1)], (0, 1, 2)
    if op == "gated_rms_norm_residual":  # (residual, y, weight, gate)
        return [_rand(shape, dtype, device), x, w, _rand((B, D), dtype, device)], (0, 1, 2, 3)
    raise ValueError(op)


def op_bytes(op: str, pass_: str, shape, dtype) -> int:
    """The fewest bytes `op` must move (module docstring)."""
    e = torch.empty((), dtype=dtype).element_size()
    if op in SOLVER_OPS:
        N = math.prod(shape)
        out_e = max(e, 4)  # float32 v for bf16 / fp16 inputs
        if op == "solver_update":
            return (4 + len(SOLVER_KS) * e + 4) * N
        return (2 * e + out_e) * N + (2 * e * N if op.endswith("renorm") else 0)
    if op == "apply_rope":
        B, L, H, D = shape
        N, F = B * L * H * D, L * (D // 2) * 8
        fwd = bwd = 2 * N * e + F
    else:
        B, L, D = shape
        N, M = B * L * D, B * D
        fwd = {"rms_norm": 2 * N + D, "modulated_rms_norm": 2 * N + D + M, "gated_rms_norm_residual": 3 * N + D + M}[op] * e
        bwd = {"rms_norm": 3 * N + 2 * D}.get(op, 3 * N + 2 * D + 2 * M) * e
    return fwd if pass_ == "fwd" else fwd + bwd


LUMINA = {
    "rms_norm": lk.rms_norm,
    "modulated_rms_norm": lk.modulated_rms_norm,
    "gated_rms_norm_residual": lk.gated_rms_norm_residual,
    "apply_rope": lk.apply_rope,
    "solver_update": lk.solver_update,
    "cfg_combine": lk.cfg_combine,
    "cfg_combine+renorm": lk.cfg_combine,
}
REFERENCE = {
    "rms_norm": reference.rms_norm,
    "modulated_rms_norm": reference.modulated_rms_norm,
    "gated_rms_norm_residual": reference.gated_rms_norm_residual,
    "apply_rope": reference.apply_rope,
    "solver_update": reference.solver_update,  # the solvers' former torch.add chain, velocities cast to float32
    "cfg_combine": reference.cfg_combine,  # lumina.sampling.guidance's former eager code
    "cfg_combine+renorm": reference.cfg_combine,
}


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile cannot run here, or None."""
    if not COMPILE:
        return "torch.compile disabled by LUMINA_BENCH_COMPILE=0"
    if hasattr(torch._dynamo, "is_dynamo_supported") and not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) is not supported on this Python/platform"
    if device == "cpu":
        cxx = os.environ.get("CXX")
        if not ((cxx and shutil.which(cxx)) or any(shutil.which(c) for c in ("g++", "c++", "clang++"))):
            return "no C++ compiler on PATH for inductor's CPU backend"
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        return "triton is not installed (inductor's CUDA backend needs it)"
    return None


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    op: str
    pass_: str
    device: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    impl: str

    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def group(self) -> str:
        return f"{self.op} {self.pass_} {self.device} {DTYPE_NAMES[self.dtype]} {self.shape_str}"

    @property
    def id(self) -> str:
        return f"{self.op}-{self.pass_}-{self.device}-{DTYPE_NAMES[self.dtype]}-{self.shape_str}-{self.impl}"


def _groups(device: str):
    if device == "cpu":
        norm = [((2, 256, 2304), torch.bfloat16), ((2, 256, 2304), torch.float32)]
        rope = [((2, 256, 32, 72), torch.bfloat16), ((2, 256, 32, 72), torch.float32)]
        solver = [((2, 16, 128, 128), torch.bfloat16), ((2, 16, 128, 128), torch.float32)]  # 1024^2 latents
    else:
        norm = [((2, 4096, 2304), torch.bfloat16)]
        rope = [((2, 4096, 32, 72), torch.bfloat16), ((2, 4096, 32, 72), torch.float32)]
        solver = [((8, 16, 256, 256), torch.bfloat16), ((8, 16, 256, 256), torch.float32)]  # past the L2
    for pass_ in ("fwd", "fwdbwd"):
        for op in NORM_OPS:
            for shape, dtype in norm:
                yield op, pass_, device, dtype, shape
        for shape, dtype in rope:
            yield "apply_rope", pass_, device, dtype, shape
    for op in SOLVER_OPS:  # inference ops: forward only
        for shape, dtype in solver:
            yield op, "fwd", device, dtype, shape


def _cases() -> list:
    params = []
    cpu_mark = pytest.mark.benchmark(max_time=CPU_MAX_TIME, min_rounds=5, warmup=False)
    cuda_marks = [
        pytest.mark.cuda,
        pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU"),
        pytest.mark.benchmark(timer=cuda_sync_timer, min_time=0.002, max_time=CUDA_MAX_TIME, min_rounds=5, warmup=False),
    ]
    # torch.compile cases come last, so that a run cut short by a timeout still has every other one.
    for impls in (("lumina", "reference"), ("compiled",)):
        for device in ("cpu", "cuda"):
            dev_impls = impls + (("lumina-eager", "copy") if device == "cuda" and "lumina" in impls else ())
            for g in _groups(device):
                for impl in dev_impls:
                    c = Case(*g, impl=impl)
                    params.append(pytest.param(c, id=c.id, marks=[cpu_mark] if device == "cpu" else cuda_marks))
    return params


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------
def _step(fn: Callable, args: list[torch.Tensor], grad_idx: tuple[int, ...], grad_out, pass_: str) -> Callable:
    if pass_ == "fwd":
        return lambda: fn(*args)
    targets = [args[i] for i in grad_idx]
    return lambda: torch.autograd.grad(fn(*args), targets, grad_out)


def _capture_graphs(steps: list[Callable]) -> list[Callable]:
    """One CUDA graph per step (after a warm-up on a side stream); returns their replay functions."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for st in steps:
            st()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = []
    for st in steps:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            st()
        graphs.append(g)
    torch.cuda.synchronize()
    return [g.replay for g in graphs]


def _check_lumina(case: Case, args, grad_idx, grad_out) -> None:
    from lumina_kernels.testing import assert_close

    fn, ref = LUMINA[case.op], REFERENCE[case.op]
    if case.pass_ == "fwd":
        assert_close(fn(*args), ref(*args), "forward", f"{case.id}: output")
        return
    targets = [args[i] for i in grad_idx]
    got = torch.autograd.grad(fn(*args), targets, grad_out)
    want = torch.autograd.grad(ref(*args), targets, grad_out)
    for i, g, w in zip(grad_idx, got, want):
        assert_close(g, w, "grad", f"{case.id}: gradient of argument {i}")


def _one_line(e: BaseException, n: int = 240) -> str:
    s = f"{type(e).__name__}: {e}".strip().splitlines()
    return (s[0] if s else type(e).__name__)[:n]


@pytest.mark.parametrize("case", _cases())
def test_kernel(benchmark, case: Case):
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    device = torch.device(case.device)
    nbytes = op_bytes(case.op, case.pass_, case.shape, case.dtype)
    n_sets = 4 if case.device == "cuda" else 2
    benchmark.group = case.group
    info = benchmark.extra_info
    info.update(op=case.op, pass_=case.pass_, impl=case.impl, device=case.device, dtype=DTYPE_NAMES[case.dtype],
                shape=list(case.shape), bytes=nbytes, seed=seed, input_sets=n_sets)
    info["pass"] = info.pop("pass_")
    if case.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)

    if case.impl == "copy":  # the same bytes through Tensor.copy_: half read, half written
        numel = nbytes // 2
        pairs = [(torch.randint(0, 256, (numel,), dtype=torch.uint8, device=device),
                  torch.empty(numel, dtype=torch.uint8, device=device)) for _ in range(n_sets)]
        steps = [lambda s=s, d=d: d.copy_(s) for s, d in pairs]
        info["bytes"] = 2 * numel
    else:
        if case.impl == "compiled":
            reason = compile_unavailable(case.device)
            if reason:
                pytest.skip(reason)
            fn = torch.compile(REFERENCE[case.op], dynamic=False)
        else:
            fn = REFERENCE[case.op] if case.impl == "reference" else LUMINA[case.op]
        steps = []
        for k in range(n_sets):
            args, grad_idx = _make_inputs(case.op, case.shape, case.dtype, device)
            grad_out = None
            if case.pass_ == "fwdbwd":
                for i in grad_idx:
                    args[i].requires_grad_(True)
                out_like = args[1] if case.op == "gated_rms_norm_residual" else args[0]  # y, else x
                grad_out = _rand(out_like.shape, case.dtype, device)
            if k == 0 and case.impl in ("lumina", "lumina-eager"):  # which backend the wrapper runs
                info["backend"] = lk.explain(EXPLAIN_AS.get(case.op, case.op), *args).backend
            if k == 0 and case.impl == "lumina":
                _check_lumina(case, args, grad_idx, grad_out)
            steps.append(_step(fn, args, grad_idx, grad_out, case.pass_))
        if case.impl == "compiled":
            try:  # compiles (forward, and backward at its first call)
                for st in steps:
                    st()
                if case.device == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:
                pytest.skip(f"torch.compile failed: {_one_line(e)}")

    timing = "eager"
    if case.device == "cuda" and case.impl != "lumina-eager":
        try:
            steps = _capture_graphs(steps)
            timing = "cuda-graph"
        except Exception as e:
            torch.cuda.synchronize()
            timing = f"eager (graph capture failed: {_one_line(e, 160)})"
    for st in steps * 2:  # warm-up
        st()
    if case.device == "cuda":
        torch.cuda.synchronize()
    info["timing"] = timing

    cycle = itertools.cycle(steps)
    benchmark(lambda: next(cycle)())

    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        info["median_us"] = median * 1e6
        info["GB/s"] = info["bytes"] / median / 1e9
