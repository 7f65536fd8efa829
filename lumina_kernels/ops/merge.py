"""Token merging (context drop): merge_tokens (lumina::merge_tokens and merge_tokens_cells), its dispatcher,
fake kernels and autograd."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _ext, dispatch, reference
from ._common import _no_double_backward, _no_host_sync, _same_device, _tensor

__all__ = ["merge_tokens"]


def _merge_inputs(x, grid=None, factor=None, mask=None, *, cells=None, n_cells=None):
    return {"x": x}


_merge_dispatch = dispatch.register(
    "merge_tokens",
    [
        dispatch.Backend("cuda", dispatch.compiled_backend("cuda"), "lumina CUDA kernel"),
        dispatch.Backend("cpu", dispatch.compiled_backend("cpu"), "lumina C++ kernel"),
    ],
    _merge_inputs,
)


def _axes(v: object, name: str, n: int | None = None) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,) * (n or 1)
    try:
        t = tuple(v)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"`{name}` must be a tuple of ints, got {v!r}") from None
    if not all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in t):
        raise ValueError(f"`{name}` entries must be ints >= 1, got {v!r}")
    return t


def _merge_grid(x: Tensor, grid, factor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    for name, v in (("grid", grid), ("factor", factor)):
        if v is None:
            raise ValueError(f"`{name}` must be given: pass (grid, factor), or cells= and n_cells= instead")
    g = _axes(grid, "grid")
    if len(g) not in (1, 2, 3):
        raise ValueError(f"`grid` must be (tokens,), (h, w) or (frames, h, w), got {grid!r}")
    f = _axes(factor, "factor", len(g))
    if len(f) != len(g):
        raise ValueError(f"`factor` must have one entry per axis of `grid` {g}, got {factor!r}")
    if math.prod(g) != x.shape[1]:
        raise ValueError(f"`grid` {g} holds {math.prod(g)} tokens but `x` has {x.shape[1]}")
    return g, f


def _merge_cells(x: Tensor, grid, factor, cells, n_cells) -> tuple[Tensor, int]:
    for name, v in (("grid", grid), ("factor", factor)):
        if v is not None:
            raise ValueError(f"`{name}` must be None when `cells` / `n_cells` give the layout, got {v!r}")
    if cells is None:
        raise ValueError("`cells` must be given with `n_cells`: the cell id of every token, (tokens,) or (batch, tokens)")
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 0:
        raise ValueError(f"`n_cells` must be an int >= 0 given with `cells`, got {n_cells!r}")
    _tensor(cells, "cells", floating=False)
    if cells.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"`cells` must be an int32 or int64 tensor, got dtype {cells.dtype}")
    _same_device(cells, "cells", x, "x")
    B, L = x.shape[:2]
    if tuple(cells.shape) not in ((L,), (B, L)):
        raise ValueError(f"`cells` must have shape (tokens,) = ({L},) or (batch, tokens) = ({B}, {L}), "
                         f"got {tuple(cells.shape)}")
    return cells, n_cells


def _check_cell_range(cells: Tensor, n_cells: int) -> None:
    """One min / max reduction (a host sync on CUDA); a ValueError naming `cells` for an id outside [0, n_cells)."""
    if cells.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(cells))
    if lo < 0 or hi >= n_cells:
        raise ValueError(f"`cells` ids must lie in [0, n_cells) = [0, {n_cells}), got ids from {lo} to {hi}")


def merge_tokens(x: Tensor, grid=None, factor=None, mask: Tensor | None = None, *, cells: Tensor | None = None,
                 n_cells: int | None = None) -> tuple[Tensor, Tensor]:
    """Average-pool tokens over cells (context drop): cells of a 1-, 2- or 3-axis grid, or any cells given per token.

    x: (B, L, ...) e.g. (B, L, H, D). Give the layout one of two ways (anything else is a ValueError naming the
    argument):

    * ``grid, factor``: tokens row-major on ``grid`` = (L,) (a sequence: time runs), (h, w) or (frames, h, w),
      prod(grid) == L; ``factor`` the cell size, an int for every axis or one per axis (>= 1). A factor that does not
      divide its axis leaves a partial last cell, which averages the tokens it holds (grid (10,), factor 4: cells
      [0..3], [4..7], [8, 9]). prod(ceil(grid / factor)) cells, numbered row-major.
    * ``cells=, n_cells=``: ``cells`` an int32 / int64 tensor of the cell id of every token, in [0, n_cells): (L,)
      (one layout for the whole batch) or (B, L) (one per sample), on x's device. Any grouping: time runs, space
      cells, point clusters; cells that no token names are empty. An id out of range is a ValueError naming `cells`
      (checked with one min / max reduction: a host sync on CUDA, where the op's own check raises a RuntimeError
      naming `cells`); while a CUDA graph is captured or torch.compile traces nothing is synced, and a token with an
      id out of range is then left out (the kernels never read or write out of bounds for it).

    mask: (B, L) bool, False tokens are left out of the averages. Returns (out (B, n_cells, ...) in x's dtype, the
    mean of each cell's unmasked tokens summed in fp32 in token order; count (B, n_cells) float32, the number of
    tokens averaged: 0 marks an empty cell, whose output is 0). Differentiable in x: a token's gradient is its cell's
    gradient / count (0 when masked). A ``cells`` tensor equal to ``reference.merge_cells(grid, factor)[0]`` gives the
    grid's results bit for bit.
    """
    _tensor(x, "x")
    if x.dim() < 3:
        raise ValueError(f"`x` must be (batch, tokens, ...) e.g. (batch, tokens, heads, head_dim), got shape {tuple(x.shape)}")
    if mask is not None:
        _tensor(mask, "mask", floating=False)
        if mask.dtype != torch.bool:
            raise ValueError(f"`mask` must be a bool tensor (True = keep), got dtype {mask.dtype}")
        _same_device(mask, "mask", x, "x")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"`mask` must have shape (batch, tokens) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    m = None if mask is None else mask.contiguous()
    if cells is None and n_cells is None:
        g, f = _merge_grid(x, grid, factor)
        if _merge_dispatch.decide(_merge_inputs(x)).backend == "reference":
            return reference.merge_tokens(x, g, f, mask)
        return torch.ops.lumina.merge_tokens(x.contiguous(), m, list(g), list(f))
    cells, n_cells = _merge_cells(x, grid, factor, cells, n_cells)
    backend = _merge_dispatch.decide(_merge_inputs(x)).backend
    if (x.device.type == "cpu" or backend == "reference") and not _no_host_sync():
        _check_cell_range(cells, n_cells)  # the CUDA op checks its own (RuntimeError), once
    if backend == "reference":
        return reference.merge_tokens(x, mask=mask, cells=cells, n_cells=n_cells)
    return torch.ops.lumina.merge_tokens_cells(x.contiguous(), m, cells.contiguous(), n_cells)


# ----------------------------------------------------------------------------------------------
# fake kernels and autograd of the compiled ops
# ----------------------------------------------------------------------------------------------
if _ext.LOAD_ERROR is None:

    @torch.library.register_fake("lumina::merge_tokens")
    def _(x, mask, grid, factor):
        cells = math.prod(-(-g // k) for g, k in zip(grid, factor))
        return x.new_empty((x.shape[0], cells, *x.shape[2:])), x.new_empty((x.shape[0], cells), dtype=torch.float32)

    @torch.library.register_fake("lumina::merge_tokens_backward")
    def _(grad_out, mask, count, grid, factor):
        return grad_out.new_empty((grad_out.shape[0], math.prod(grid), *grad_out.shape[2:]))

    def _merge_setup(ctx, inputs, output):
        x, mask, grid, factor = inputs
        ctx.grid, ctx.factor = list(grid), list(factor)
        ctx.save_for_backward(mask, output[1])

    def _merge_backward(ctx, grad_out, grad_count):
        _no_double_backward("merge_tokens")
        mask, count = ctx.saved_tensors
        gx = torch.ops.lumina.merge_tokens_backward(grad_out.contiguous(), mask, count, ctx.grid, ctx.factor)
        return gx, None, None, None

    torch.library.register_autograd("lumina::merge_tokens", _merge_backward, setup_context=_merge_setup)

    @torch.library.register_fake("lumina::merge_tokens_cells")
    def _(x, mask, cells, n_cells):
        return x.new_empty((x.shape[0], n_cells, *x.shape[2:])), x.new_empty((x.shape[0], n_cells), dtype=torch.float32)

    @torch.library.register_fake("lumina::merge_tokens_cells_backward")
    def _(grad_out, mask, count, cells):
        return grad_out.new_empty((grad_out.shape[0], cells.shape[-1], *grad_out.shape[2:]))

    def _merge_cells_setup(ctx, inputs, output):
        x, mask, cells, n_cells = inputs
        ctx.save_for_backward(mask, cells, output[1])

    def _merge_cells_backward(ctx, grad_out, grad_count):
        _no_double_backward("merge_tokens")
        mask, cells, count = ctx.saved_tensors
        gx = torch.ops.lumina.merge_tokens_cells_backward(grad_out.contiguous(), mask, count, cells)
        return gx, None, None, None

    torch.library.register_autograd("lumina::merge_tokens_cells", _merge_cells_backward,
                                    setup_context=_merge_cells_setup)
