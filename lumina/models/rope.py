"""Rotary position tables for Next-DiT: one builder for N-D positions, and resolution-extrapolation scaling.

Every table is complex64, one unit complex number per rotated pair, ready for
``lumina_kernels.apply_rope(x, freqs_cis)`` (pair i of a head, ``(x[2i], x[2i+1])``, is rotated by
``freqs_cis[..., i]``).

Conventions (Lumina-Next, facts sections 4 and 5):

* One RoPE axis with a share ``d`` of the head dim has ``d // 2`` angular frequencies
  ``theta_i = theta ** (-2i / d)``. In the 2D text-to-image model each axis gets ``head_dim // 2``
  (36 of 72 -> 18 frequencies per axis); the official code writes the same numbers as
  ``1 / theta ** (arange(0, head_dim, 4)[: head_dim // 4] / head_dim)``.
* :func:`rope_nd` builds every table: positions ``(..., n_axes)`` (integer or fractional), one share of the head dim
  per axis, scaling per axis. The axes' pairs are concatenated (``[axis0 pairs, axis1 pairs, ...]``, like
  Lumina-Image-2.0) or, ``interleave=True``, interleaved pair by pair (``[h0, w0, h1, w1, ...]``: the official
  Lumina-Next 2D layout). :func:`rope_grid` is its cached form for integer grids; :func:`rope_2d` (the released
  model's table) and :func:`rope_3d` are thin calls of it.
* Angles are computed in float64 and rounded once to complex64. The official code and diffusers compute them in
  float32, so tables differ from theirs by float32 rounding of the angle (about 1e-5 rad at position 383).
* ``t`` is the flow time in [0, 1], 0 = pure noise, 1 = data.

Scaling (``RopeScaling``), applied only when ``scale > 1`` (extrapolation; ``scale <= 1`` is always the plain table):

* ``linear``: position interpolation (PI), ``theta_i / s``.
* ``ntk``: NTK-aware, base ``theta * s``.
* ``time_aware``: the official ("early implementation") hard switch: ``t < scale_watershed`` -> linear, else ntk.
* ``smooth_time_aware``: the paper's time-aware rule, ``d_t = (d - 1) t + 1``, ``b' = b s^(d / d_t)``,
  ``freq_i = max(b'^(-2i/d), theta_i / s)``.
* ``frequency_aware``: the paper's frequency-aware rule, ``d_target = d log_b(L_train / 2 pi)``,
  ``b' = b s^(d / d_target)``, ``freq_i = max(b'^(-2i/d), theta_i / s)``.

Note on the two max rules as written: frequency 0 has exponent 0, so ``b'^0 = 1`` for every base and the max keeps
it at 1 (> 1/s). At ``t = 0`` the smooth time-aware rule is therefore PI on every frequency except frequency 0,
which stays unscaled; at ``t = 1`` it is exactly NTK with base ``b s``.

Cache: ``rope_grid``, ``rope_2d`` and ``rope_3d`` memoise their tables (one LRU of ``_CACHE_SIZE`` entries keyed on the layout, the
device and the *effective* per-axis frequencies, so all methods at ``s <= 1`` share one entry and the official
time-aware switch costs two entries per resolution). They return the cached tensor itself: treat it as read-only
and ``.clone()`` it before any in-place operation. ``rope_cache_clear()`` empties the cache; ``rope_cache_info()``
reports hits and misses.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .._checks import integer
from .._checks import real as _real

__all__ = [
    "METHODS",
    "RopeScaling",
    "axis_frequencies",
    "rope_1d",
    "rope_nd",
    "rope_2d",
    "rope_3d",
    "rope_grid",
    "rope_table_for_grid",
    "grid_positions",
    "grid_positions_3d",
    "rope_cache_clear",
    "rope_cache_info",
]

METHODS = ("none", "linear", "ntk", "time_aware", "smooth_time_aware", "frequency_aware")
_TIME_METHODS = ("time_aware", "smooth_time_aware")
_CACHE_SIZE = 16


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _int(value, name: str, minimum: int = 0) -> int:
    return integer(value, name, minimum)


def _even(value, name: str) -> int:
    v = _int(value, name, minimum=2)
    if v % 2:
        raise ValueError(f"`{name}` must be a positive even integer, got {v}")
    return v


def _theta(theta) -> float:
    v = _real(theta, "theta")
    if v <= 1.0:
        raise ValueError(f"`theta` (the RoPE base) must be > 1, got {v}")
    return v


def _time(t) -> float | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"`t` must be a scalar flow time, got a tensor of shape {tuple(t.shape)}")
        t = t.item()
    v = _real(t, "t")
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"`t` (flow time, 0 = noise, 1 = data) must be in [0, 1], got {v}")
    return v


def _scaling(scaling) -> RopeScaling | None:
    if scaling is None or isinstance(scaling, RopeScaling):
        return scaling
    raise ValueError(f"`scaling` must be a RopeScaling or None, got {type(scaling).__name__}")


def _device(device) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


# ----------------------------------------------------------------------------------------------
# scaling description
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RopeScaling:
    """How to scale RoPE frequencies for resolution extrapolation.

    method: one of ``METHODS``. scale: ``s = sqrt(W * H) / train_size`` (pixels or tokens, the caller's choice);
    only ``s > 1`` scales anything. scale_watershed: the official time-aware switch point (``t < watershed`` ->
    linear, else NTK; diffusers defaults it to 1.0, the official sampler to 0.3). train_len: training length in
    tokens per axis (1024 px / 8 (VAE) / 2 (patch) = 64), used by ``frequency_aware``.
    """

    method: str = "none"
    scale: float = 1.0
    scale_watershed: float = 0.3
    train_len: int = 64

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown RoPE scaling `method` {self.method!r}; expected one of {METHODS}")
        scale = _real(self.scale, "scale")
        if scale <= 0:
            raise ValueError(f"`scale` must be > 0, got {scale}")
        object.__setattr__(self, "scale", scale)
        watershed = _real(self.scale_watershed, "scale_watershed")
        if not 0.0 <= watershed <= 1.0:
            raise ValueError(f"`scale_watershed` must be a time in [0, 1], got {watershed}")
        object.__setattr__(self, "scale_watershed", watershed)
        train_len = _int(self.train_len, "train_len", minimum=1)
        if self.method == "frequency_aware" and train_len <= 2 * math.pi:
            raise ValueError(f"`train_len` must exceed 2*pi (one wavelength of the fastest frequency) for "
                             f"frequency_aware scaling, got {train_len}")
        object.__setattr__(self, "train_len", train_len)

    @property
    def active(self) -> bool:
        """True when the tables differ from the plain ones (a method other than none, and s > 1)."""
        return self.method != "none" and self.scale > 1.0

    @property
    def needs_t(self) -> bool:
        """True for the methods whose table depends on the flow time t."""
        return self.method in _TIME_METHODS

    @staticmethod
    def for_resolution(method: str, height: int, width: int, train_size: int = 1024, **kw) -> "RopeScaling":
        """Scaling for a height x width target trained at train_size x train_size: s = sqrt(H * W) / train_size."""
        h = _real(height, "height")
        w = _real(width, "width")
        ts = _real(train_size, "train_size")
        for name, v in (("height", h), ("width", w), ("train_size", ts)):
            if v <= 0:
                raise ValueError(f"`{name}` must be > 0, got {v}")
        return RopeScaling(method=method, scale=math.sqrt(h * w) / ts, **kw)


# ----------------------------------------------------------------------------------------------
# frequencies
# ----------------------------------------------------------------------------------------------
def _freqs_from_log_base(axis_dim: int, log_base: float) -> torch.Tensor:
    """b ** (-2i / d) for i < d/2, computed as exp(-(2i/d) log b) (no overflow for huge scaled bases)."""
    exps = torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim
    return torch.exp(-exps * log_base)


def axis_frequencies(axis_dim: int, theta: float = 10000.0, scaling: RopeScaling | None = None,
                     t: float | None = None) -> torch.Tensor:
    """float64 (axis_dim // 2,) CPU angular frequencies of one RoPE axis with a share ``axis_dim`` of the head dim.

    Base frequencies ``theta_i = theta ** (-2i / axis_dim)``; then the scaling of ``scaling`` (see the module doc).
    ``t`` is the flow time in [0, 1] (0 = noise); the time-aware methods raise ValueError when it is None.
    """
    d = _even(axis_dim, "axis_dim")
    theta = _theta(theta)
    scaling = _scaling(scaling)
    t = _time(t)
    if scaling is not None and scaling.needs_t and t is None:
        raise ValueError(f"`t` (flow time) is required by RoPE scaling method {scaling.method!r}")
    log_b = math.log(theta)
    base = _freqs_from_log_base(d, log_b)
    if scaling is None or not scaling.active:
        return base
    s = scaling.scale
    method = scaling.method
    if method == "time_aware":
        method = "linear" if t < scaling.scale_watershed else "ntk"
    pi = base / s
    if method == "linear":
        return pi
    if method == "ntk":
        return _freqs_from_log_base(d, log_b + math.log(s))
    if method == "smooth_time_aware":
        d_t = (d - 1) * t + 1
        return torch.maximum(_freqs_from_log_base(d, log_b + (d / d_t) * math.log(s)), pi)
    if method == "frequency_aware":
        d_target = d * math.log(scaling.train_len / (2 * math.pi)) / log_b
        return torch.maximum(_freqs_from_log_base(d, log_b + (d / d_target) * math.log(s)), pi)
    raise AssertionError(method)  # unreachable: RopeScaling validates the method


def _polar(angles: torch.Tensor) -> torch.Tensor:
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


# ----------------------------------------------------------------------------------------------
# tables: one builder, any number of axes
# ----------------------------------------------------------------------------------------------
def _table(positions: torch.Tensor, freqs: Sequence[torch.Tensor], interleave: bool) -> torch.Tensor:
    """complex64 (..., sum(len(f))): exp(i * position_a * freq) per axis a, axes concatenated or interleaved.

    positions: float64 (..., n_axes); freqs: one float64 vector per axis (interleaving needs equal lengths).
    """
    parts = [positions[..., a, None] * f for a, f in enumerate(freqs)]  # each (..., n_a)
    if interleave:
        angles = torch.stack(parts, dim=-1).flatten(-2)  # (..., n, n_axes) -> (..., n * n_axes): [a0, b0, a1, ...]
    else:
        angles = torch.cat(parts, dim=-1)  # (..., sum n_a): [a0, a1, ..., b0, b1, ...]
    return _polar(angles)


def _axis_dims(axis_dims, n: int | None = None) -> tuple[int, ...]:
    try:
        dims = tuple(axis_dims)
    except TypeError:
        raise ValueError(f"`axis_dims` must be a sequence of even integers, got {axis_dims!r}") from None
    if n is not None and len(dims) != n:
        raise ValueError(f"`axis_dims` must have {n} entries, got {len(dims)}")
    if not dims:
        raise ValueError("`axis_dims` must have at least one entry")
    return tuple(_even(d, f"axis_dims[{i}]") for i, d in enumerate(dims))


def _axis_freqs(dims: tuple[int, ...], theta, scaling, t, scaled_axes, interleave: bool) -> tuple[tuple[float, ...], ...]:
    """Validated per-axis frequencies as hashable tuples (the cache key): scaling applies to the axes marked in
    `scaled_axes` (default every axis); a time-aware scaling needs `t` even when no axis is scaled."""
    scaling = _scaling(scaling)
    t = _time(t)
    if scaling is not None and scaling.needs_t and t is None:
        raise ValueError(f"`t` (flow time) is required by RoPE scaling method {scaling.method!r}")
    scaled = (True,) * len(dims) if scaled_axes is None else tuple(bool(a) for a in scaled_axes)
    if len(scaled) != len(dims):
        raise ValueError(f"`scaled_axes` needs one entry per axis ({len(dims)}), got {len(scaled)}")
    if interleave and len(set(dims)) != 1:
        raise ValueError(f"the interleaved (official) layout needs equal `axis_dims`, got {dims}")
    return tuple(tuple(axis_frequencies(d, theta, scaling if sc else None, t).tolist())
                 for d, sc in zip(dims, scaled))


def rope_nd(positions: torch.Tensor, axis_dims: Sequence[int], theta: float = 10000.0,
            scaling: RopeScaling | None = None, t: float | None = None,
            scaled_axes: Sequence[bool] | None = None, interleave: bool = False) -> torch.Tensor:
    """complex64 (..., sum(axis_dims) // 2) from per-axis positions (..., n_axes), integer or fractional.

    Axis a takes a share ``axis_dims[a]`` of the head dim (``axis_dims[a] // 2`` rotated pairs) with its own
    frequencies; ``scaled_axes[a]`` says whether ``scaling`` applies to it (default: every axis). The axes'
    pairs are concatenated in order (``[a0, a1, ..., b0, b1, ...]``), or with ``interleave=True`` interleaved
    pair by pair (``[a0, b0, a1, b1, ...]``, the official Lumina-Next layout; equal shares only). On positions'
    device; not cached (see :func:`rope_grid` for the cached tables of integer grids).
    """
    if not isinstance(positions, torch.Tensor) or positions.dim() < 1:
        raise ValueError(f"`positions` must be a tensor (..., n_axes), got "
                         f"{type(positions).__name__ if not isinstance(positions, torch.Tensor) else 'a scalar'}")
    if positions.is_complex():
        raise ValueError("`positions` must be real, got a complex tensor")
    dims = _axis_dims(axis_dims, positions.shape[-1])
    freqs = _axis_freqs(dims, theta, scaling, t, scaled_axes, interleave)
    dev = positions.device
    work = torch.device("cpu") if dev.type == "mps" else dev  # no float64 on MPS
    f64 = [torch.tensor(f, dtype=torch.float64, device=work) for f in freqs]
    return _table(positions.to(work, torch.float64), f64, interleave).to(dev)


def rope_1d(positions: torch.Tensor, axis_dim: int, theta: float = 10000.0, scaling: RopeScaling | None = None,
            t: float | None = None) -> torch.Tensor:
    """complex64 (*positions.shape, axis_dim // 2): exp(i * position * freq_j), on positions' device. Not cached."""
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"`positions` must be a tensor, got {type(positions).__name__}")
    _even(axis_dim, "axis_dim")
    return rope_nd(positions[..., None], (axis_dim,), theta, scaling, t)


def grid_positions(grid: Sequence[int], offset: Sequence[int] | None = None) -> torch.Tensor:
    """int64 (prod(grid), n_axes): the integer position of every cell of `grid`, row-major, plus `offset`."""
    g = tuple(_int(n, f"grid[{i}]", minimum=1) for i, n in enumerate(grid))
    if not g:
        raise ValueError("`grid` must have at least one axis")
    axes = torch.meshgrid(*[torch.arange(n) for n in g], indexing="ij")
    pos = torch.stack(axes, dim=-1).reshape(-1, len(g))  # (prod(grid), n_axes)
    if offset is not None:
        if len(offset) != len(g):
            raise ValueError(f"`offset` needs one entry per axis of `grid` ({len(g)}), got {len(offset)}")
        pos = pos + torch.tensor([int(o) for o in offset], dtype=torch.int64)
    return pos


def grid_positions_3d(frames: int, height: int, width: int, caption_len: int = 0) -> torch.Tensor:
    """int64 (caption_len + frames * height * width, 3) position ids of the 3-axis layout.

    Caption token j: (j, 0, 0). Image token (f, h, w), row-major over (frames, height, width): (caption_len + f, h, w),
    i.e. axis 0 keeps advancing after the caption, one step per frame (for one frame: Lumina-Image-2.0's layout,
    image tokens at axis-0 position caption_len).
    """
    F = _int(frames, "frames", minimum=1)
    H = _int(height, "height", minimum=1)
    W = _int(width, "width", minimum=1)
    C = _int(caption_len, "caption_len", minimum=0)
    cap = torch.zeros(C, 3, dtype=torch.int64)
    cap[:, 0] = torch.arange(C)
    return torch.cat([cap, grid_positions((F, H, W), (C, 0, 0))], dim=0)


def rope_grid(grid: Sequence[int], axis_dims: Sequence[int], theta: float = 10000.0,
              scaling: RopeScaling | None = None, t: float | None = None,
              scaled_axes: Sequence[bool] | None = None, interleave: bool = False,
              device: torch.device | str | None = None) -> torch.Tensor:
    """:func:`rope_nd` of :func:`grid_positions` (grid): complex64 (prod(grid), sum(axis_dims) // 2), row-major.

    Cached: the returned tensor is shared, do not mutate it.
    """
    g = tuple(_int(n, f"grid[{i}]", minimum=1) for i, n in enumerate(grid))
    dims = _axis_dims(axis_dims, len(g))
    freqs = _axis_freqs(dims, theta, scaling, t, scaled_axes, interleave)
    return _cached(("grid", g), freqs, interleave, _device(device))


def rope_2d(height: int, width: int, head_dim: int, theta: float = 10000.0, scaling: RopeScaling | None = None,
            t: float | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """complex64 (height * width, head_dim // 2), the official Lumina-Next 2D table.

    Row-major (h, w) tokens; each axis gets head_dim // 2 of the head dim; the pairs interleave the axes
    ``[h0, w0, h1, w1, ...]``. Equal to the official 384 x 384 table sliced to ``[:height, :width]``. Cached: the
    returned tensor is shared, do not mutate it.
    """
    H = _int(height, "height", minimum=1)
    W = _int(width, "width", minimum=1)
    D = _int(head_dim, "head_dim", minimum=4)
    if D % 4:
        raise ValueError(f"`head_dim` must be divisible by 4 for a 2D table (two axes of complex pairs), got {D}")
    return rope_grid((H, W), (D // 2, D // 2), theta, scaling, t, interleave=True, device=device)


rope_table_for_grid = rope_2d


def rope_3d(frames: int, height: int, width: int, axis_dims: tuple[int, int, int], theta: float = 10000.0,
            scaling: RopeScaling | None = None, t: float | None = None, caption_len: int = 0,
            device: torch.device | str | None = None,
            scaled_axes: tuple[bool, bool, bool] = (False, True, True)) -> torch.Tensor:
    """complex64 (caption_len + frames * height * width, sum(axis_dims) // 2), axes concatenated in (T, H, W) order.

    Positions are ``grid_positions_3d`` (caption rows first, axis 0 advancing over caption tokens then frames; with
    frames > 1 and a caption, frame f sits at axis-0 position caption_len + f). ``scaling`` is a resolution
    scaling, so by default it applies to the spatial axes 1 and 2 only (``scaled_axes``); axis 0 keeps plain
    frequencies. Cached: the returned tensor is shared, do not mutate it.
    """
    F = _int(frames, "frames", minimum=1)
    H = _int(height, "height", minimum=1)
    W = _int(width, "width", minimum=1)
    C = _int(caption_len, "caption_len", minimum=0)
    dims = _axis_dims(axis_dims, 3)
    freqs = _axis_freqs(dims, theta, scaling, t, scaled_axes, False)
    return _cached(("caption_grid_3d", F, H, W, C), freqs, False, _device(device))


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------
def _layout_positions(layout: tuple) -> torch.Tensor:
    if layout[0] == "grid":
        return grid_positions(layout[1])
    return grid_positions_3d(*layout[1:])


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cached(layout: tuple, freqs: tuple[tuple[float, ...], ...], interleave: bool,
            device: torch.device) -> torch.Tensor:
    pos = _layout_positions(layout).to(torch.float64)  # (L, n_axes)
    f64 = [torch.tensor(f, dtype=torch.float64) for f in freqs]
    return _table(pos, f64, interleave).to(device)


def rope_cache_clear() -> None:
    """Drop every memoised table."""
    _cached.cache_clear()


def rope_cache_info() -> dict:
    """functools cache statistics of the table cache (every grid and 3D table shares it)."""
    return {"tables": _cached.cache_info()}
