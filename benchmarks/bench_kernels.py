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
    copy          (CUDA only) Tensor.copy_ of as many bytes as the op's byte model: the bandwidth ceiling,
                  timed first in its group; every later row of the group records its fraction of it in
                  extra_info["% copy"] (summarize.py computes the same column from the JSON)
    liger         (peer, extra_info["peer"] = True) liger-kernel's Triton kernel where it has one; an
                  optional import: skipped with the reason when liger-kernel is not installed, and on the
                  CPU (Triton kernels run on CUDA only). summarize.py's "x peer" is lumina over it.

Peers (liger-kernel 0.8.5; `pip install liger-kernel`):

    rms_norm            LigerRMSNormFunction(x, w, eps=1e-5, offset=0, casting_mode="gemma", in_place=False).
                        "gemma" casts x and w to fp32, computes, and rounds once: exactly
                        lumina_kernels.reference.rms_norm ("llama" would round x * rstd to the input dtype
                        before the weight multiply). in_place=False: dx gets its own buffer as lumina's does
                        (in_place=True writes dx over dy; the same bytes either way).
    modulated_rms_norm  LigerModulatedRMSNormFunction(x, w, scale, shift=None, eps=1e-5, offset=0, "gemma",
                        in_place=False): y = rms_norm(x) * w rounded to the input dtype, then * (1 + scale)
                        in that dtype, scale (B, D) broadcast over the sequence as lumina's. Two roundings
                        instead of lumina's one (identical in fp32; within the bf16 tolerance), said in
                        extra_info["note"].
    gated_rms_norm_residual
                        no liger equivalent: LigerFusedAddRMSNormFunction normalizes (x + residual) and
                        returns both, while lumina's op adds tanh(gate) * rms_norm(y) * w to the residual
                        after the norm (the Lumina/DiT block's order). No peer row.
    apply_rope          liger's rope_forward / rope_backward (what LigerRopeFunction and
                        liger_rotary_pos_emb run), in place, on the rotate-half layout: pairs (i, i + D/2)
                        of each head rotated by cos / sin tables of width D/2 (rotary_dim = D, fp32, the
                        same bytes as lumina's complex64 table). Lumina rotates interleaved pairs (2i, 2i+1);
                        a model moving to liger permutes the head dimension of its q/k projection weights
                        once (even features first, then odd), which leaves q.k unchanged. The benchmark
                        does that permutation on the inputs outside the timed region and checks the result,
                        permuted back, against lumina_kernels.reference.apply_rope. liger's kernel rotates a
                        q and a k tensor of the physical layout (B, L, H, D) in one launch (it takes the
                        (B, H, L, D) transposed views); one (B, L, H, D) tensor is handed over as q = its
                        first half of the batch and k = its second half (contiguous views, no copy), so the
                        timed work is exactly one rotation of x. The in-place kernel reads and writes as many
                        bytes as lumina's out-of-place one.

Shapes (CUDA): the released 2B model with classifier-free guidance (B = 2): norms (2, 4096, 2304) and
(2, 16384, 2304) in bf16; RoPE on the query heads (2, L, 32, 72) and the KV heads (2, L, 8, 72) for
L = 4096 and 16384 in bf16, and (2, 4096, 32, 72) in fp32; the solver ops on (8, 16, 256, 256) latents.
CPU: small shapes (B = 2, L = 256) so that the CPU suite runs in a few minutes on 2 cores.

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

import functools
import importlib.util
import itertools
import math
import os
import shutil
import time
from dataclasses import dataclass
from types import SimpleNamespace
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
LIGER_OPS = ("rms_norm", "modulated_rms_norm", "apply_rope")  # the ops liger-kernel has a peer of
LIGER_NOTES = {
    "rms_norm": "LigerRMSNormFunction, casting_mode=gemma (fp32 compute, one rounding: the reference's "
                "semantics), offset 0, in_place=False",
    "modulated_rms_norm": "LigerModulatedRMSNormFunction, casting_mode=gemma, no shift: rms_norm(x)*w rounded to "
                          "the dtype, then *(1+scale) in the dtype (two roundings; lumina rounds once)",
    "apply_rope": "liger rope_forward/rope_backward (in place), rotate-half layout: head dim permuted (even "
                  "features, then odd) outside the timed region; q = first half of the batch, k = second half",
}
# group -> GB/s of its copy benchmark (timed first in each CUDA group), for extra_info["% copy"]
COPY_GBS: dict[str, float] = {}


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
# peer: liger-kernel (optional; Triton, CUDA only)
# ----------------------------------------------------------------------------------------------
@functools.cache
def _liger() -> SimpleNamespace:
    from liger_kernel.ops.modulated_rms_norm import LigerModulatedRMSNormFunction
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.rope import rope_backward, rope_forward

    return SimpleNamespace(rms=LigerRMSNormFunction, modulated=LigerModulatedRMSNormFunction,
                           rope_forward=rope_forward, rope_backward=rope_backward)


def liger_unavailable(device: str) -> str | None:
    """Why the liger-kernel peer cannot run here, or None."""
    if device != "cuda":
        return "liger-kernel is Triton-based: its kernels run on CUDA only"
    try:
        _liger()
    except Exception as e:
        return f"liger-kernel is not importable ({_one_line(e, 160)}); pip install liger-kernel"
    return None


LIGER_EPS = 1e-5  # lumina's default (reference.rms_norm's eps)


def _liger_rms_norm(x, w):
    return _liger().rms.apply(x, w, LIGER_EPS, 0.0, "gemma", False)


def _liger_modulated_rms_norm(x, w, scale):
    return _liger().modulated.apply(x, w, scale, None, LIGER_EPS, 0.0, "gemma", False)


class _LigerRope(torch.autograd.Function):
    """liger's rope kernels on x (B, L, H, D) in the rotate-half layout, in place: q = x[:B/2], k = x[B/2:].

    liger's rope_forward takes q and k as (B, H, L, D) views of (B, L, H, D) storage, exactly as
    LigerRopeFunction does; cos / sin (L, D/2) fp32 with rotary_dim = D. The backward rotates the output
    gradient in place, as LigerRopeFunction's does."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        h, d = x.shape[0] // 2, x.shape[-1]
        _liger().rope_forward(x[:h].transpose(1, 2), x[h:].transpose(1, 2), cos, sin, None, 1, d)
        ctx.save_for_backward(cos, sin)
        return x

    @staticmethod
    def backward(ctx, g):
        cos, sin = ctx.saved_tensors
        g = g.contiguous()
        h, d = g.shape[0] // 2, g.shape[-1]
        _liger().rope_backward(g[:h].transpose(1, 2), g[h:].transpose(1, 2), cos, sin, None, 1, d)
        return g, None, None


def _liger_apply_rope(x, cos, sin):
    return _LigerRope.apply(x, cos, sin)


LIGER = {"rms_norm": _liger_rms_norm, "modulated_rms_norm": _liger_modulated_rms_norm,
         "apply_rope": _liger_apply_rope}


def _rotate_half_perm(d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, inverse): x[..., perm] puts the interleaved pairs (2i, 2i+1) at (i, i + d/2)."""
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)]).to(device)
    return perm, torch.argsort(perm)


def _liger_inputs(op: str, args: list, grad_out):
    """lumina's inputs as a liger user would hold them: (liger's arguments, its output gradient, a map of
    liger's output / input gradient back to lumina's layout). Done once, outside the timed region."""
    if op != "apply_rope":
        return list(args), grad_out, lambda t: t
    x, freqs = args
    perm, inv = _rotate_half_perm(x.shape[-1], x.device)
    x_rh = x.detach()[..., perm].contiguous().requires_grad_(x.requires_grad)
    cos, sin = freqs.real.float().contiguous(), freqs.imag.float().contiguous()
    g_rh = None if grad_out is None else grad_out[..., perm].contiguous()
    return [x_rh, cos, sin], g_rh, lambda t: t[..., inv]


def _check_liger(case: "Case", args, grad_idx, grad_out, largs, lgrad, back) -> None:
    """liger's result (on copies: its rope works in place), mapped back, against lumina's reference."""
    from lumina_kernels.testing import assert_close

    ref, fn = REFERENCE[case.op], LIGER[case.op]
    cargs = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
             for a in largs]
    if case.pass_ == "fwd":
        # liger's modulated norm rounds twice in bf16 / fp16 (module docstring): up to ~3 half-ulps from the
        # once-rounded reference, past the "forward" tolerance on a few of millions of elements
        kind = "grad" if (case.op == "modulated_rms_norm" and case.dtype != torch.float32) else "forward"
        with torch.no_grad():
            assert_close(back(fn(*cargs)), ref(*args), kind, f"{case.id}: output")
        return
    got = torch.autograd.grad(fn(*cargs), [cargs[i] for i in grad_idx], lgrad.clone())
    want = torch.autograd.grad(ref(*args), [args[i] for i in grad_idx], grad_out)
    for i, g, w in zip(grad_idx, got, want):
        assert_close(back(g) if i == 0 else g, w, "grad", f"{case.id}: gradient of argument {i}")


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
    else:  # the 2B model under CFG (B = 2): 32 query heads, 8 KV heads, head dim 72, width 2304
        norm = [((2, 4096, 2304), torch.bfloat16), ((2, 16384, 2304), torch.bfloat16)]
        rope = [((2, L, H, 72), torch.bfloat16) for L in (4096, 16384) for H in (32, 8)]
        rope.append(((2, 4096, 32, 72), torch.float32))
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
    # torch.compile cases come last, so that a run cut short by a timeout still has every other one. The
    # copy (the group's ceiling) comes first in its group, so the rows after it can record their % of it.
    for impls in (("lumina", "reference", "liger"), ("compiled",)):
        for device in ("cpu", "cuda"):
            dev_impls = impls
            if device == "cuda" and "lumina" in impls:
                dev_impls = ("copy",) + impls + ("lumina-eager",)
            for g in _groups(device):
                for impl in dev_impls:
                    if impl == "liger" and g[0] not in LIGER_OPS:
                        continue
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
        elif case.impl == "liger":
            info["peer"] = True
            info["note"] = LIGER_NOTES[case.op]
            reason = liger_unavailable(case.device)
            if reason:
                pytest.skip(reason)
            if case.op == "apply_rope" and case.shape[0] % 2:
                pytest.skip("the liger rope benchmark splits the batch into q and k halves: needs an even batch")
            fn = LIGER[case.op]
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
            if case.impl == "liger":
                largs, lgrad, back = _liger_inputs(case.op, args, grad_out)
                if k == 0:
                    _check_liger(case, args, grad_idx, grad_out, largs, lgrad, back)
                args, grad_out = largs, lgrad
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
        if case.impl == "copy":
            COPY_GBS[case.group] = info["GB/s"]
        elif case.group in COPY_GBS:  # the fraction of the measured bandwidth ceiling
            info["copy_GB/s"] = COPY_GBS[case.group]
            info["% copy"] = 100 * info["GB/s"] / COPY_GBS[case.group]
