"""Builds tests/emulator/kernels_emulator.cpp and runs the merge, solver, RMSNorm and RoPE CUDA kernels (csrc/merge,
csrc/solver, csrc/norm, csrc/rope) through it on CPU tensors, launched by their own launchers (see
csrc/cuda_emulate.h).

Every output is written into a NaN-filled buffer with guard elements on both sides, checked afterwards (a store
out of bounds or an element never written shows up); `offset` places every tensor that many elements past a
64-byte boundary, so that offset 1 sends the launchers down their scalar (unvectorised) paths."""
from __future__ import annotations

import ctypes
import pathlib

import pytest
import torch

from runner import HERE, ROOT, build, compiler  # noqa: F401  (compiler: for the tests' skip)

SOURCES = [HERE / "kernels_emulator.cpp", *sorted((HERE / "cuda_shim").glob("*.h")), ROOT / "csrc" / "cuda_emulate.h",
           ROOT / "csrc" / "attention" / "flash" / "flash_emulate.h", ROOT / "csrc" / "cuda_utils.cuh",
           ROOT / "csrc" / "cuda_device.h", ROOT / "csrc" / "common.h",
           *sorted((ROOT / "csrc" / "merge").glob("merge_*.*h")), *sorted((ROOT / "csrc" / "merge").glob("*.cuh")),
           *sorted((ROOT / "csrc" / "solver").glob("solver_*.*h")), *sorted((ROOT / "csrc" / "solver").glob("*.cuh")),
           *sorted((ROOT / "csrc" / "norm").glob("norm_*.*h")), *sorted((ROOT / "csrc" / "norm").glob("*.cuh")),
           *sorted((ROOT / "csrc" / "rope").glob("rope_*.*h")), *sorted((ROOT / "csrc" / "rope").glob("*.cuh"))]
FLAGS = ("-ffp-contract=off", f"-I{HERE / 'cuda_shim'}")
DTYPE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}               # DType (common.h)
SOLVER_TYPE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}  # SolverType
GUARD = 16

_lib = None


def library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(str(build(HERE / "kernels_emulator.cpp", SOURCES, FLAGS)))
        lib.lumina_emu_configure.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_uint32]
        _lib = lib
    return _lib


def configure(sms: int = 4, max_blocks: int = 0, seed: int = 0) -> None:
    """The SM count the launchers see (grids are capped at 32 per SM), a cap on the blocks the emulator runs
    along x (0: none; the kernels' grid-stride loops must cover the rest), the thread scheduler's seed."""
    library().lumina_emu_configure(sms, max_blocks, seed)


def launches() -> list[tuple[str, int, int, int]]:
    """(kernel, grid.x, block.x, blocks run along x) of every launch since configure()."""
    buf = ctypes.create_string_buffer(1 << 16)
    library().lumina_emu_launches(buf, len(buf))
    rows = [line.split("\t") for line in buf.value.decode().splitlines()]
    return [(k, int(g), int(b), int(r)) for k, g, b, r in rows]


def launched_kernels() -> list[str]:
    """The kernel names (without "void " and arguments) of every launch since configure()."""
    return [k.split("(")[0].replace("void ", "") for k, *_ in launches()]


@pytest.fixture(autouse=True)
def fresh_config():
    """Reset the emulator's configuration (and launch log) before each test; import it into a test module."""
    configure()
    yield


class _Buffer:
    """A tensor at `offset` elements into a guarded buffer."""

    def __init__(self, shape, dtype, offset: int, fill: torch.Tensor | None = None):
        n = 1
        for s in shape:
            n *= s
        # 64-byte aligned storage, then the offset
        poison = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min  # int buffers: ids, inputs only
        self.raw = torch.full((offset + n + GUARD + 64,), poison, dtype=dtype)
        skip = (-self.raw.data_ptr() % 64) // self.raw.element_size()
        self.start = skip + offset
        self.n = n
        self.before = self.raw[: self.start].clone()
        self.after = self.raw[self.start + n:].clone()
        self.t = self.raw[self.start: self.start + n].view(shape)
        if fill is not None:
            self.t.copy_(fill)

    def ptr(self):
        return ctypes.c_void_p(self.t.data_ptr())

    def check(self, what: str) -> torch.Tensor:
        same = lambda a, b: torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())  # noqa
        assert same(self.raw[: self.start], self.before), f"{what}: written before the start of the buffer"
        assert same(self.raw[self.start + self.n:], self.after), f"{what}: written past the end of the buffer"
        return self.t.clone()


def _err():
    return ctypes.create_string_buffer(1024)


def _raise(rc: int, err, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"emulated {what} failed: {err.value.decode()}")


def _geometry(grid, factor):
    g = (1,) * (3 - len(grid)) + tuple(grid)
    f = (1,) * (3 - len(factor)) + tuple(factor)
    cells = 1
    for a, k in zip(g, f):
        cells *= -(-a // k)
    return (ctypes.c_int64 * 3)(*g), (ctypes.c_int64 * 3)(*f), cells


def merge_tokens(x: torch.Tensor, grid, factor, mask: torch.Tensor | None = None, offset: int = 0):
    """(out, count) of the CUDA merge_tokens forward kernel: x (B, L, ...)."""
    B, L = x.shape[:2]
    W = x[0, 0].numel() if B and L else 0
    g, f, cells = _geometry(grid, factor)
    xb = _Buffer(x.shape, x.dtype, offset, x)
    out = _Buffer((B, cells, *x.shape[2:]), x.dtype, offset)
    count = _Buffer((B, cells), torch.float32, offset)
    m = mask.contiguous() if mask is not None else None
    err = _err()
    rc = library().lumina_emu_merge(0, DTYPE[x.dtype], ctypes.c_int64(B), ctypes.c_int64(W), g, f, xb.ptr(),
                                    ctypes.c_void_p(m.data_ptr() if m is not None else 0), out.ptr(), count.ptr(),
                                    None, None, err, len(err))
    _raise(rc, err, "merge_tokens")
    return out.check("out"), count.check("count")


def merge_tokens_backward(grad_out: torch.Tensor, mask, count: torch.Tensor, grid, factor, offset: int = 0):
    """grad_x of the CUDA merge_tokens backward kernel."""
    B, C = grad_out.shape[:2]
    W = grad_out[0, 0].numel()
    g, f, cells = _geometry(grid, factor)
    assert cells == C
    L = g[0] * g[1] * g[2]
    gb = _Buffer(grad_out.shape, grad_out.dtype, offset, grad_out)
    cb = _Buffer(count.shape, torch.float32, offset, count)
    gx = _Buffer((B, L, *grad_out.shape[2:]), grad_out.dtype, offset)
    m = mask.contiguous() if mask is not None else None
    err = _err()
    rc = library().lumina_emu_merge(1, DTYPE[grad_out.dtype], ctypes.c_int64(B), ctypes.c_int64(W), g, f, None,
                                    ctypes.c_void_p(m.data_ptr() if m is not None else 0), None, cb.ptr(), gb.ptr(),
                                    gx.ptr(), err, len(err))
    _raise(rc, err, "merge_tokens_backward")
    return gx.check("grad_x")


def _ids(cells: torch.Tensor, offset: int) -> tuple[_Buffer, int]:
    """A guarded int64 copy of cell ids (L,) or (B, L), and the row stride the host passes (0: one shared row)."""
    ids = cells.long().contiguous()
    return _Buffer(ids.shape, torch.int64, offset, ids), (ids.shape[-1] if ids.dim() == 2 else 0)


def merge_tokens_cells(x: torch.Tensor, cells: torch.Tensor, n_cells: int, mask: torch.Tensor | None = None,
                       offset: int = 0):
    """(out, count) of the CUDA merge_tokens_cells forward kernel: x (B, L, ...), cells (L,) or (B, L); the ids sorted
    as merge_host.cpp sorts them (stable, per row)."""
    B, L = x.shape[:2]
    W = x[0, 0].numel() if B and L else 0
    sorted_ids, order = torch.sort(cells.long(), dim=-1, stable=True)
    sb, stride = _ids(sorted_ids, offset)
    ob, _ = _ids(order, offset)
    xb = _Buffer(x.shape, x.dtype, offset, x)
    out = _Buffer((B, n_cells, *x.shape[2:]), x.dtype, offset)
    count = _Buffer((B, n_cells), torch.float32, offset)
    m = mask.contiguous() if mask is not None else None
    err = _err()
    rc = library().lumina_emu_merge_cells(
        0, DTYPE[x.dtype], ctypes.c_int64(B), ctypes.c_int64(L), ctypes.c_int64(W), ctypes.c_int64(n_cells),
        ctypes.c_int64(stride), None, sb.ptr(), ob.ptr(), xb.ptr(), ctypes.c_void_p(m.data_ptr() if m is not None else 0),
        out.ptr(), count.ptr(), None, None, err, len(err))
    _raise(rc, err, "merge_tokens_cells")
    for b, what in ((sb, "sorted_ids"), (ob, "order"), (xb, "x")):
        b.check(what)
    return out.check("out"), count.check("count")


def merge_tokens_cells_backward(grad_out: torch.Tensor, mask, count: torch.Tensor, cells: torch.Tensor,
                                offset: int = 0):
    """grad_x of the CUDA merge_tokens_cells backward kernel."""
    B, C = grad_out.shape[:2]
    L = cells.shape[-1]
    W = grad_out[0, 0].numel() if B and C else 0
    ib, stride = _ids(cells, offset)
    gb = _Buffer(grad_out.shape, grad_out.dtype, offset, grad_out)
    cb = _Buffer(count.shape, torch.float32, offset, count)
    gx = _Buffer((B, L, *grad_out.shape[2:]), grad_out.dtype, offset)
    m = mask.contiguous() if mask is not None else None
    err = _err()
    rc = library().lumina_emu_merge_cells(
        1, DTYPE[grad_out.dtype], ctypes.c_int64(B), ctypes.c_int64(L), ctypes.c_int64(W), ctypes.c_int64(C),
        ctypes.c_int64(stride), ib.ptr(), None, None, None, ctypes.c_void_p(m.data_ptr() if m is not None else 0),
        None, cb.ptr(), gb.ptr(), gx.ptr(), err, len(err))
    _raise(rc, err, "merge_tokens_cells_backward")
    for b, what in ((ib, "cells"), (gb, "grad_out"), (cb, "count")):
        b.check(what)
    return gx.check("grad_x")


def solver_update(x: torch.Tensor, ks, coeffs, h: float, offset: int = 0, k_offset: int | None = None):
    """The CUDA solver_update kernel, terms as solver_host.cpp builds them (zero coefficients skipped)."""
    terms = [(k, h * c) for k, c in zip(ks, coeffs) if c != 0]
    ko = offset if k_offset is None else k_offset
    xb = _Buffer(x.shape, x.dtype, offset, x)
    kbs = [_Buffer(k.shape, k.dtype, ko, k) for k, _ in terms]
    out = _Buffer(x.shape, x.dtype, offset)
    kptrs = (ctypes.c_void_p * 7)(*[b.t.data_ptr() for b in kbs])
    alpha = (ctypes.c_double * 7)(*[a for _, a in terms])
    ktype = SOLVER_TYPE[ks[0].dtype]
    err = _err()
    rc = library().lumina_emu_solver_update(SOLVER_TYPE[x.dtype], ktype, len(terms), xb.ptr(), kptrs, alpha,
                                            out.ptr(), ctypes.c_int64(x.numel()), err, len(err))
    _raise(rc, err, "solver_update")
    for b in kbs:
        b.check("ks")
    return out.check("out")


def cfg_chunks(per: int) -> int:
    """The renorm split of solver_host.cpp: chunks per sample."""
    return min(1024, (per + 2047) // 2048)


def cfg_combine(cond, uncond, scale: float, channels=None, renorm=None, offset: int = 0, chunks: int | None = None):
    """(out, workspace) of the CUDA cfg_combine kernels; the arguments as solver_host.cpp turns them into params
    (chunks: the host's split unless given). workspace: the renorm partials then ratios (None without renorm)."""
    low = cond.dtype in (torch.bfloat16, torch.float16)
    odt = torch.float32 if low else cond.dtype
    B = cond.shape[0] if cond.dim() >= 1 else 1
    per = cond.numel() // B
    if channels is not None:
        C = cond.shape[1]
        inner = per // C
        guided = min(channels, C)
    else:
        C, inner, guided = 1, 1, -1
    cb = _Buffer(cond.shape, cond.dtype, offset, cond)
    ub = _Buffer(uncond.shape, uncond.dtype, offset, uncond)
    out = _Buffer(cond.shape, odt, offset)
    r = 0.0 if renorm is None else float(renorm)
    n_chunks = (chunks or cfg_chunks(per)) if r > 0 else 1
    ws = _Buffer((B * (2 * n_chunks + 1),), torch.float64, 0) if r > 0 else None
    err = _err()
    rc = library().lumina_emu_cfg_combine(
        SOLVER_TYPE[cond.dtype], ctypes.c_int64(B), ctypes.c_int64(per), ctypes.c_int64(C), ctypes.c_int64(inner),
        ctypes.c_int64(guided), ctypes.c_double(scale), ctypes.c_double(r), ctypes.c_int64(n_chunks), cb.ptr(),
        ub.ptr(), out.ptr(), ws.ptr() if ws is not None else None, err, len(err))
    _raise(rc, err, "cfg_combine")
    return out.check("out"), (ws.check("workspace") if ws is not None else None)


def _ptr_or_null(b: _Buffer | None):
    return b.ptr() if b is not None else None


def rms_norm(x: torch.Tensor, weight, scale=None, gate=None, residual=None, eps: float = 1e-5, offset: int = 0):
    """(out, rstd) of the CUDA fused_rms_norm forward kernel, x viewed as norm_host.cpp views it: [batch, rows, dim]
    with batch = x.shape[0] when scale or gate is given, else 1."""
    dim = x.shape[-1]
    batch = x.shape[0] if (scale is not None or gate is not None) else 1
    rows = x.numel() // (batch * dim)
    xb = _Buffer(x.shape, x.dtype, offset, x)
    wb = _Buffer(weight.shape, weight.dtype, offset, weight)
    sb = _Buffer(scale.shape, scale.dtype, offset, scale) if scale is not None else None
    gb = _Buffer(gate.shape, gate.dtype, offset, gate) if gate is not None else None
    rb = _Buffer(residual.shape, residual.dtype, offset, residual) if residual is not None else None
    out = _Buffer(x.shape, x.dtype, offset)
    rstd = _Buffer(x.shape[:-1], torch.float32, offset)
    err = _err()
    rc = library().lumina_emu_rms_norm_fwd(
        DTYPE[x.dtype], ctypes.c_int64(batch), ctypes.c_int64(rows), ctypes.c_int64(dim), ctypes.c_float(eps),
        xb.ptr(), wb.ptr(), _ptr_or_null(sb), _ptr_or_null(gb), _ptr_or_null(rb), out.ptr(), rstd.ptr(), err, len(err))
    _raise(rc, err, "fused_rms_norm")
    for b, what in ((xb, "x"), (wb, "weight"), (sb, "scale"), (gb, "gate"), (rb, "residual")):
        if b is not None:
            b.check(what)
    return out.check("out"), rstd.check("rstd")


def norm_chunks(batch: int, rows: int, target_blocks: int) -> tuple[int, int]:
    """(chunks, rows_per_chunk): the backward's split of the rows of one batch (norm_host.cpp)."""
    b = max(batch, 1)
    chunks = max(1, min(rows, (target_blocks + b - 1) // b))
    return chunks, (1 if rows == 0 else (rows + chunks - 1) // chunks)


def rms_norm_backward(grad_out, x, weight, scale, gate, rstd, target_blocks: int | None = None, offset: int = 0):
    """(grad_x, grad_weight, grad_scale, grad_gate, partials) of the CUDA fused_rms_norm backward kernel, the partial
    sums reduced as norm_host.cpp reduces them (fp32 sums over (batch, chunk) / chunk, then the inputs' dtype).
    target_blocks: the host's 4 * num_sms unless given. partials: (weight, scale, gate) [batch, chunks, dim] or None."""
    dim = x.shape[-1]
    batch = x.shape[0] if (scale is not None or gate is not None) else 1
    rows = x.numel() // (batch * dim)
    sms = library().lumina_emu_sms()
    chunks, rpc = norm_chunks(batch, rows, 4 * sms if target_blocks is None else target_blocks)
    gob = _Buffer(grad_out.shape, grad_out.dtype, offset, grad_out)
    xb = _Buffer(x.shape, x.dtype, offset, x)
    wb = _Buffer(weight.shape, weight.dtype, offset, weight)
    sb = _Buffer(scale.shape, scale.dtype, offset, scale) if scale is not None else None
    gb = _Buffer(gate.shape, gate.dtype, offset, gate) if gate is not None else None
    rb = _Buffer(rstd.shape, torch.float32, 0, rstd)
    gx = _Buffer(x.shape, x.dtype, offset)
    pw = _Buffer((batch, chunks, dim), torch.float32, 0)
    ps = _Buffer((batch, chunks, dim), torch.float32, 0) if scale is not None else None
    pg = _Buffer((batch, chunks, dim), torch.float32, 0) if gate is not None else None
    err = _err()
    rc = library().lumina_emu_rms_norm_bwd(
        DTYPE[x.dtype], ctypes.c_int64(batch), ctypes.c_int64(rows), ctypes.c_int64(dim), ctypes.c_int64(chunks),
        ctypes.c_int64(rpc), gob.ptr(), xb.ptr(), wb.ptr(), _ptr_or_null(sb), _ptr_or_null(gb),
        ctypes.c_void_p(rb.t.data_ptr()), gx.ptr(), pw.ptr(), _ptr_or_null(ps), _ptr_or_null(pg), err, len(err))
    _raise(rc, err, "fused_rms_norm_backward")
    for b, what in ((gob, "grad_out"), (xb, "x"), (wb, "weight"), (sb, "scale"), (gb, "gate"), (rb, "rstd")):
        if b is not None:
            b.check(what)
    parts = (pw.check("partial_weight"), ps.check("partial_scale") if ps is not None else None,
             pg.check("partial_gate") if pg is not None else None)
    grad_weight = parts[0].sum((0, 1)).to(weight.dtype)
    grad_scale = parts[1].sum(1).to(x.dtype) if scale is not None else None
    grad_gate = parts[2].sum(1).to(x.dtype) if gate is not None else None
    return gx.check("grad_x"), grad_weight, grad_scale, grad_gate, parts


def rope(x: torch.Tensor, freqs_cis: torch.Tensor, inverse: bool = False, offset: int = 0, freqs_offset: int = 0):
    """The CUDA rope kernel: x (B, L, H, D), freqs_cis complex64 (L, D/2) or (B, L, D/2). `offset` is in elements of
    x (keep it even: the host rejects a split pair), `freqs_offset` in floats of the table."""
    B, L, H, D = x.shape
    f = torch.view_as_real(freqs_cis.contiguous()).reshape(-1)
    xb = _Buffer(x.shape, x.dtype, offset, x)
    fb = _Buffer(f.shape, torch.float32, freqs_offset, f)
    out = _Buffer(x.shape, x.dtype, offset)
    err = _err()
    rc = library().lumina_emu_rope(DTYPE[x.dtype], ctypes.c_int64(B), ctypes.c_int64(L), ctypes.c_int64(H),
                                   ctypes.c_int64(D), int(freqs_cis.dim() == 3), int(inverse), xb.ptr(),
                                   ctypes.c_void_p(fb.t.data_ptr()), out.ptr(), err, len(err))
    _raise(rc, err, "rope")
    xb.check("x")
    fb.check("freqs")
    return out.check("out")


def defect(case: int) -> None:
    """Runs a plain CUDA kernel with a deliberate defect (1 __shared__ race, 2 partial shuffle mask, 3 deadlock,
    4 an empty grid); raises RuntimeError with the emulator's report."""
    err = _err()
    _raise(library().lumina_emu_defect(case, err, len(err)), err, "defect kernel")
