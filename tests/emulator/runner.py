"""Builds tests/emulator/flash_emulator.cpp with the host C++ compiler and runs the CUDA attention
kernels through it on CPU tensors (see csrc/attention/flash/flash_emulate.h)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SOURCES = [HERE / "flash_emulator.cpp", *sorted((ROOT / "csrc" / "attention" / "flash").glob("*.h")),
           ROOT / "csrc" / "attention" / "attention_params.h"]
HEAD_DIMS = (64, 72, 96, 128)


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


_lib = None


def build(main: pathlib.Path, sources, flags=()) -> pathlib.Path:
    """Compiles `main` into a shared library, once per version of `sources` into a cache folder."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ or clang++) to build the warp emulator")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + " ".join(flags).encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("LUMINA_EMULATOR_CACHE", pathlib.Path(tempfile.gettempdir()) / "lumina-emulator"))
    cache.mkdir(parents=True, exist_ok=True)
    so = cache / f"{main.stem}_{digest}.so"
    if not so.exists():
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas", *flags, "-o", str(tmp),
               str(main)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"building the emulator failed:\n{' '.join(cmd)}\n{res.stderr[-4000:]}")
        os.replace(tmp, so)
    return so


def library() -> ctypes.CDLL:
    """The flash-attention emulator library."""
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(str(build(HERE / "flash_emulator.cpp", SOURCES)))
    lib.lumina_emulate_attention.restype = ctypes.c_int
    _lib = lib
    return lib


def _ptr(t: torch.Tensor | None):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _table(f: torch.Tensor | None) -> torch.Tensor | None:
    return None if f is None else torch.view_as_real(f.contiguous()).contiguous()


def _call(backward: bool, q, k, v, q_freqs, k_freqs, mask, scale, out, lse, grad_out=None, grads=(None,) * 3,
          delta=None, dq_accum=None, seed: int = 0) -> None:
    B, Lq, Hq, D = q.shape
    Lk, Hkv = k.shape[1], k.shape[2]
    sizes = (ctypes.c_int64 * 8)(B, Lq, Lk, Hq, Hkv, D, int(q_freqs is not None and q_freqs.dim() == 3),
                                 int(k_freqs is not None and k_freqs.dim() == 3))
    err = ctypes.create_string_buffer(512)
    qf, kf = _table(q_freqs), _table(k_freqs)
    rc = library().lumina_emulate_attention(
        int(backward), int(q.dtype == torch.bfloat16), sizes, ctypes.c_float(scale), _ptr(q), _ptr(k), _ptr(v),
        _ptr(qf), _ptr(kf), _ptr(mask), _ptr(out), _ptr(lse), _ptr(grad_out), *(_ptr(g) for g in grads),
        _ptr(delta), _ptr(dq_accum), ctypes.c_uint32(seed), err, ctypes.c_int(len(err)))
    if rc != 0:
        raise RuntimeError(f"emulated kernel failed: {err.value.decode()}")


def _check(q, k, v, mask):
    assert q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] in HEAD_DIMS
    for t in (q, k, v):
        assert t.is_contiguous() and t.dtype == q.dtype
    assert mask is None or (mask.dtype == torch.bool and mask.is_contiguous())


def attention_fwd(q, k, v, q_freqs=None, k_freqs=None, key_padding_mask=None, softmax_scale=None, seed=0):
    """(out, lse) of the CUDA forward kernel, run under the emulator."""
    _check(q, k, v, key_padding_mask)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
    _call(False, q, k, v, q_freqs, k_freqs, key_padding_mask, scale, out, lse, seed=seed)
    return out, lse


def attention_bwd(grad_out, q, k, v, out, lse, q_freqs=None, k_freqs=None, key_padding_mask=None,
                  softmax_scale=None, seed=0):
    """(dq, dk, dv) of the CUDA backward kernels, run under the emulator."""
    _check(q, k, v, key_padding_mask)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    grads = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
    delta = torch.empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)
    dq_accum = torch.zeros(q.shape, dtype=torch.float32)
    _call(True, q, k, v, q_freqs, k_freqs, key_padding_mask, scale, out.contiguous(), lse.contiguous(),
          grad_out.contiguous(), grads, delta, dq_accum, seed=seed)
    return grads


def selftest(case: int) -> None:
    """Runs a kernel with a deliberate defect (1 race, 2 deadlock, 3 divergence, 4 uninitialised read);
    raises RuntimeError with the emulator's report."""
    err = ctypes.create_string_buffer(512)
    if library().lumina_emulate_selftest(ctypes.c_int(case), err, ctypes.c_int(len(err))) != 0:
        raise RuntimeError(err.value.decode())


def mma_selftest(a: torch.Tensor, b: torch.Tensor):
    """(a @ b via ldmatrix + mma.m16n8k16, a[:, :8] @ b[:8] via m16n8k8, a @ b with ldmatrix.trans) for
    bf16 a (16, 16) and b (16, 8), as float32 (16, 8)."""
    a16 = a.contiguous().view(torch.int16)
    b16 = b.contiguous().view(torch.int16)
    outs = [torch.zeros(16, 8) for _ in range(3)]
    if library().lumina_emulate_mma_selftest(_ptr(a16), _ptr(b16), *(_ptr(o) for o in outs)) != 0:
        raise RuntimeError("mma self-test kernel failed")
    return tuple(outs)
