"""Context drop: which layers merge the keys and values of image self-attention, at which times.

Lumina-Next's context drop (paper section 3.3) merges redundant visual tokens for attention. lumina merges the
*keys and values* of the image self-attention by average-pooling them over ``factor x factor`` cells of the patch
grid (``lumina_kernels.merge_tokens``); queries keep full resolution, so the token stream, the FFN and the output
are never downsampled and nothing has to be unmerged. With ``method="tome"`` the keys and values are merged by
similarity instead (ToMe-style bipartite matching, see :mod:`lumina.models.tome`).

A :class:`ContextDrop` is a schedule over the flow time ``t`` (0 = noise, 1 = data) and over the layers: merging
happens while ``start <= t < until`` (the noisy steps, where the image is coarse; the last steps near the data run
at full resolution and restore the details) and only in the layers ``layers`` (a slice, default every layer).

It is given to ``lumina.generate(..., context_drop=...)`` / ``LuminaPipeline(...)`` and the CLI's
``--context-drop`` in any of these forms (one to one):

* ``None`` / ``0`` / ``"off"``: no merging (bitwise the plain sampler);
* an int ``k`` (``"2"`` on the command line): ``ContextDrop(factor=k)`` with the default schedule;
* a spec string ``"factor=2,until=0.6,layers=2:-2,method=pool"`` (any subset of the fields);
* a dict of the fields, or a :class:`ContextDrop`.
"""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

__all__ = ["ContextDrop", "METHODS"]

METHODS = ("pool", "tome")


def _int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"context_drop `{name}` must be an integer, got {value!r}")
    try:
        v = operator.index(value) if not isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"context_drop `{name}` must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"context_drop `{name}` must be >= {minimum}, got {v}")
    return v


def _time(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"context_drop `{name}` must be a time in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0) or math.isnan(v):
        raise ValueError(f"context_drop `{name}` must be a time in [0, 1], got {value!r}")
    return v


def _layers(value) -> Optional[Tuple[Optional[int], Optional[int]]]:
    if value is None or value == "all" or value == ":":
        return None
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2:
            raise ValueError(f"context_drop `layers` must be a slice 'first:stop' (e.g. '2:-2'), got {value!r}")
        value = tuple(int(p) if p.strip() else None for p in parts)
    elif isinstance(value, slice):
        if value.step not in (None, 1):
            raise ValueError(f"context_drop `layers` must be a slice without a step, got {value!r}")
        value = (value.start, value.stop)
    try:
        first, stop = value
    except (TypeError, ValueError):
        raise ValueError(f"context_drop `layers` must be None (all), 'first:stop' or a (first, stop) pair, "
                         f"got {value!r}") from None
    for v in (first, stop):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"context_drop `layers` bounds must be ints or None, got {value!r}")
    return (first, stop)


@dataclass(frozen=True)
class ContextDrop:
    """Merge image keys/values over ``factor x factor`` cells while ``start <= t < until``, in ``layers``.

    * ``factor``: the cell size k (k >= 2; 1 means off). Keys and values shrink k^2-fold (4x at 2, 16x at 4). A k
      that does not divide the patch grid leaves partial cells on the bottom/right edges, averaged over the tokens
      they hold (documented edge pooling). Video / 3-D grids pool only the two spatial axes.
    * ``start``, ``until``: the time window of merging (t: 0 = noise, 1 = data). Default ``[0, 0.6)``: merge the
      noisy steps, keep full attention for the final 40% of the flow.
    * ``layers``: ``(first, stop)`` like a Python slice over the transformer blocks (negative counts from the
      end, ``None`` open); default every layer.
    * ``method``: ``"pool"`` (average pooling, the fused kernels) or ``"tome"`` (similarity-based merging).
    """

    factor: int = 2
    start: float = 0.0
    until: float = 0.6
    layers: Optional[Tuple[Optional[int], Optional[int]]] = None
    method: str = "pool"

    def __post_init__(self):
        object.__setattr__(self, "factor", _int(self.factor, "factor", 1))
        object.__setattr__(self, "start", _time(self.start, "start"))
        object.__setattr__(self, "until", _time(self.until, "until"))
        object.__setattr__(self, "layers", _layers(self.layers))
        if self.start > self.until:
            raise ValueError(f"context_drop needs `start` <= `until`, got {self.start} > {self.until}")
        if self.method not in METHODS:
            raise ValueError(f"context_drop `method` must be one of {list(METHODS)}, got {self.method!r}")

    # -- parsing ---------------------------------------------------------------------------------
    @classmethod
    def parse(cls, value) -> Optional["ContextDrop"]:
        """None / 0 / 'off' -> None; int k; 'k' or 'key=value,...' strings; a dict; a ContextDrop."""
        if value is None or isinstance(value, ContextDrop):
            return None if isinstance(value, ContextDrop) and value.factor == 1 else value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"context_drop: unknown keys {unknown}; expected some of {sorted(known)}")
            cd = cls(**value)
        elif isinstance(value, str):
            s = value.strip()
            if s.lower() in ("", "off", "none", "0", "1"):
                return None
            if "=" not in s:
                cd = cls(factor=_int(s, "factor", 1))
            else:
                kw = {}
                for item in s.split(","):
                    if "=" not in item:
                        raise ValueError(f"context_drop spec items must be key=value, got {item!r} in {value!r}")
                    k, v = (p.strip() for p in item.split("=", 1))
                    if k in kw:
                        raise ValueError(f"context_drop spec gives `{k}` twice ({kw[k]!r} and {v!r}) in {value!r}")
                    kw[k] = v
                return cls.parse(kw)
        elif isinstance(value, int) and not isinstance(value, bool):
            if value == 0:
                return None
            cd = cls(factor=value)
        else:
            raise ValueError(f"`context_drop` must be None, an int factor, a spec string, a dict or a ContextDrop, "
                             f"got {value!r}")
        return None if cd.factor == 1 else cd

    def spec(self) -> str:
        """The spec string that :meth:`parse` turns back into this object."""
        layers = "all" if self.layers is None else ":".join("" if v is None else str(v) for v in self.layers)
        return f"factor={self.factor},start={self.start:g},until={self.until:g},layers={layers},method={self.method}"

    def to_dict(self) -> dict:
        return asdict(self)

    def check_layers(self, n_layers: int) -> None:
        """ValueError unless ``layers`` selects at least one of the model's ``n_layers`` blocks, within range."""
        if self.layers is None:
            return
        for v in self.layers:
            if v is not None and not -n_layers <= v <= n_layers:
                raise ValueError(f"context_drop `layers` {self.layers} is outside the model's {n_layers} layers")
        if len(range(n_layers)[slice(*self.layers)]) == 0:
            raise ValueError(f"context_drop `layers` {self.layers} selects none of the model's {n_layers} layers")

    # -- the schedule ----------------------------------------------------------------------------
    def active(self, t: float) -> bool:
        return self.factor > 1 and self.start <= t < self.until

    def factors(self, t: float, n_layers: int) -> Optional[Tuple[int, ...]]:
        """Per-layer merge factors at time ``t`` (1 = full attention), or None when no layer merges."""
        if not self.active(t):
            return None
        chosen = range(n_layers)[slice(*self.layers)] if self.layers is not None else range(n_layers)
        if len(chosen) == 0:
            return None
        on = set(chosen)
        return tuple(self.factor if i in on else 1 for i in range(n_layers))
