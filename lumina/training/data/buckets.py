"""Aspect-ratio buckets (as the official trainer, ``lumina_next_t2i/imgproc.py``).

With ``N`` = the patch budget, walk the staircase ``wp = N, N-1, ..., 1`` raising ``hp`` while ``hp * wp <= N`` and
keep every visited ``(hp, wp)`` whose aspect is within ``max_ratio`` (4:1); sizes are ``(hp * patch_multiple,
wp * patch_multiple)``. An image goes to the bucket that keeps the largest fraction of it after an
aspect-preserving cover resize (equivalently the closest aspect ratio in log space).
"""
from __future__ import annotations

from collections.abc import Sequence

__all__ = ["make_buckets", "closest_bucket"]


def _patch_budget(resolution: int, patch_multiple: int, max_tokens: int | None) -> int:
    if int(patch_multiple) != patch_multiple or patch_multiple < 1:
        raise ValueError(f"patch_multiple must be a positive integer, got {patch_multiple!r}")
    if int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    # floor, not the official round(): keeps h * w <= resolution**2 when resolution is not a multiple of
    # patch_multiple (identical to the official budget when it is).
    n = (int(resolution) ** 2) // (int(patch_multiple) ** 2)
    if max_tokens is not None:
        if int(max_tokens) != max_tokens or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
        n = min(n, int(max_tokens))
    if n < 1:
        raise ValueError(
            f"resolution {resolution} is smaller than one patch of {patch_multiple} px: no bucket fits the budget"
        )
    return n


def make_buckets(
    resolution: int, patch_multiple: int = 16, max_tokens: int | None = None, max_ratio: float = 4.0
) -> list[tuple[int, int]]:
    """Aspect-ratio crop sizes ``(h, w)`` within the patch budget, as the official ``generate_crop_size_list``.

    The budget is ``N = floor(resolution**2 / patch_multiple**2)`` patches (``min``-ed with ``max_tokens`` when
    given). Walking ``wp`` down from ``N`` while raising ``hp`` as long as ``hp * wp <= N`` visits the staircase of
    maximal grids; every visited ``(hp, wp)`` with ``max(hp, wp) / min(hp, wp) <= max_ratio`` is a bucket. All
    sizes are multiples of ``patch_multiple``, ``h * w <= N * patch_multiple**2 <= resolution**2``, aspect ratios are
    all distinct, and the list is symmetric (``(h, w)`` and ``(w, h)``). Ordered from the widest to the tallest.
    ``max_ratio=1`` gives the single largest square.
    """
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio must be >= 1, got {max_ratio!r}")
    n = _patch_budget(resolution, patch_multiple, max_tokens)
    p = int(patch_multiple)
    out: list[tuple[int, int]] = []
    wp, hp = n, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            out.append((hp * p, wp * p))
        if (hp + 1) * wp <= n:
            hp += 1
        else:
            wp -= 1
    return out


def closest_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket ``(h, w)`` whose aspect ratio is closest to ``height / width`` (official ``var_center_crop``).

    Scores each bucket by the fraction of the image kept after an aspect-preserving cover resize,
    ``min(h/H, w/W) / max(h/H, w/W)`` (= closeness of aspect ratios in log space), and takes the best; ties go to
    the wider bucket, as the official ``sorted(..., reverse=True)`` does.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not buckets:
        raise ValueError("no buckets")

    def score(b: tuple[int, int]):
        sh, sw = b[0] / height, b[1] / width
        return (min(sh, sw) / max(sh, sw), b[1], b[0])

    return tuple(max(buckets, key=score))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------------
