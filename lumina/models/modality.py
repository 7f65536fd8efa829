"""The contract between the model and the modality adapters: the token batch an adapter hands the model, and the
registry of adapters by name.

Layering: ``lumina.models`` never imports ``lumina.modalities``. The adapters (``lumina/modalities/*.py``, one
floor up) register their classes here when ``lumina.modalities`` is imported, which ``import lumina`` does; the
model finds its adapter by ``config.modality`` through :func:`get`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

__all__ = ["TokenBatch", "MergePlan", "register", "get", "names"]


@dataclass
class TokenBatch:
    """A padded batch of samples as tokens.

    features: (B, L, F) raw token features (patches), zero on padded tokens, before the input embedder.
    mask: (B, L) bool, True on real tokens.
    positions: (B, L, n_axes) position of every token (int64 on a grid, float for fractional positions), padded
      tokens repeat their sample's last position; None for point sets (no RoPE).
    grids: per sample, the token grid (row-major over the position axes) when the positions are exactly that
      grid's integer positions: lets the model take cached RoPE tables; None otherwise.
    layout: whatever the adapter's detokenize needs (sample sizes, ...).
    """

    features: Tensor
    mask: Tensor
    positions: Tensor | None
    grids: list[tuple[int, ...]] | None
    layout: Any


@dataclass(frozen=True)
class MergePlan:
    """How context drop merges keys/values: tokens row-major on a shared `grid` pooled over `factors` cells, or
    an explicit cell index per token, `cells` (B, L) int64 in [0, n_cells)."""

    grid: tuple[int, ...] | None = None
    factors: tuple[int, ...] | None = None
    cells: Tensor | None = None
    n_cells: int | None = None


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a modality adapter class under `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a modality name must be a non-empty string, got {name!r}")

    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"modality {name!r} is already registered to {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def get(name: str) -> type:
    """The adapter class registered as `name`; ValueError naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown `modality` {name!r}; known modalities: {sorted(_REGISTRY)} "
                         "(adapters register when lumina.modalities is imported)")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)
