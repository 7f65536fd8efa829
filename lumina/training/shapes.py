"""Synthetic "coloured shape on a coloured background" images with captions, and a pixel-statistics judge.

This is the data for the tiny text-to-image model lumina trains itself (pixel space, 32x32 RGB by default):

* :class:`ShapeSpec` / :func:`random_spec` / :func:`caption` / :func:`render`: one image is a filled
  circle, square or triangle of one named colour on a flat background of another named colour, placed at
  one of five positions; rendered anti-aliased (drawn ``supersample`` times larger, box-downsampled).
* :class:`ShapesDataset` (deterministic per ``(seed, index)``, rendered on the fly) and
  :func:`write_dataset` (``images/00000.png`` ... plus ``captions.jsonl``).
* :func:`parse_prompt`: colour / shape / position / background words from a caption or a free prompt.
* :func:`judge` / :func:`adherence`: does an image show the prompted shape and colours (and, reported apart,
  position)? Background = majority named colour of the border pixels; shape colour = majority named colour
  of the (eroded) pixels far from the background; shape = which corners of its box the shape fills; position =
  centre of the shape pixels' robust bounding box.

Only PIL, numpy and torch are used.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "POSITIONS",
    "POSITION_ANCHORS",
    "TEMPLATES",
    "TEMPLATE_GROUPS",
    "DATA_VERSION",
    "named_fields",
    "caption_and_fields",
    "SIZE_RANGE",
    "ShapeSpec",
    "random_spec",
    "caption",
    "render",
    "ShapesDataset",
    "write_dataset",
    "parse_prompt",
    "judge",
    "adherence",
]

PathLike = Union[str, os.PathLike]
RNG = Union[random.Random, np.random.Generator]

# Named colours, chosen far apart in RGB (closest pair: orange/yellow, about 110 apart).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 160, 40),
    "blue": (30, 60, 230),
    "yellow": (255, 240, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "orange": (255, 130, 0),
    "purple": (128, 0, 160),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("center", "top left", "top right", "bottom left", "bottom right")
# Where a shape's centre goes, as (x, y) fractions of the image side (y down): quadrant centres for corners.
POSITION_ANCHORS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
# Shape size (side of its bounding box) as a fraction of the image side.
SIZE_RANGE: tuple[float, float] = (0.4, 0.55)
# Shapes are kept this far (fraction of the side) from the image edge, so the border shows only background.
_MARGIN = 0.05
# Jitter of the shape centre (fraction of the side) when `render` gets an rng.
_JITTER = 0.04

# Caption templates, grouped by what they name besides the colour and the shape: the position and the background,
# the position only, the background only, or neither. `{a_color}` is the colour with its article ("a red", "an
# orange"). A random caption picks the group uniformly, then a template in it; what a caption leaves out is still
# random in its image (a caption without a position shows the shape at any of the five positions).
TEMPLATE_GROUPS: dict[tuple[bool, bool], tuple[str, ...]] = {  # (names the position, names the background)
    (True, True): (
        "{a_color} {shape} at the {position} on {a_background} background",
        "{color} {shape}, {position}, {background} background",
        "{a_background} background with {a_color} {shape} in the {position}",
        "{position}: {a_color} {shape} on {background}",
        "an image of {a_color} {shape} placed at the {position} of {a_background} canvas",
    ),
    (True, False): (
        "{a_color} {shape} at the {position}",
        "{a_color} {shape} in the {position}",
        "{position}: {a_color} {shape}",
        "{color} {shape}, {position}",
    ),
    (False, True): (
        "{a_color} {shape} on {a_background} background",
        "{a_color} {shape} on {background}",
        "{a_background} background with {a_color} {shape}",
        "{color} {shape}, {background} background",
    ),
    (False, False): (
        "{a_color} {shape}",
        "{color} {shape}",
        "an image of {a_color} {shape}",
        "a picture of {a_color} {shape}",
    ),
}
TEMPLATES: tuple[str, ...] = tuple(t for group in TEMPLATE_GROUPS.values() for t in group)
_NAMES_OF = tuple(key for key, group in TEMPLATE_GROUPS.items() for _ in group)  # per template: its group's key
# Bumped whenever the data a seed renders changes (templates, sizes): the trainer's rendered-data folder names it.
DATA_VERSION = 2

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[n] for n in _NAMES], dtype=np.float32)  # (K, 3)


@dataclass(frozen=True)
class ShapeSpec:
    """One image: a ``shape`` (in :data:`SHAPES`) of named ``color`` at ``position`` (in :data:`POSITIONS`) on a
    flat ``background`` colour (``color != background``); ``size`` is the shape's extent as a fraction of the
    image side."""

    shape: str
    color: str
    background: str
    position: str = "center"
    size: float = 0.45

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        for field in ("color", "background"):
            if getattr(self, field) not in COLORS:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; expected one of {tuple(COLORS)}")
        if self.color == self.background:
            raise ValueError(f"shape colour and background must differ (both {self.color!r})")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; expected one of {POSITIONS}")
        if not 0.05 <= float(self.size) <= 1.0 - 2 * _MARGIN:
            raise ValueError(f"size must be in [0.05, {1 - 2 * _MARGIN}], got {self.size}")

    def to_dict(self) -> dict:
        """Plain dict (JSON- and ``default_collate``-friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShapeSpec":
        """Inverse of :meth:`to_dict` (extra keys ignored)."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# ----------------------------------------------------------------------------------------------- randomness


def _choice(rng: RNG, seq: Sequence):
    if isinstance(rng, np.random.Generator):
        return seq[int(rng.integers(len(seq)))]
    return rng.choice(seq)


def _uniform(rng: RNG, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def random_spec(rng: Optional[RNG] = None) -> ShapeSpec:
    """A uniformly random :class:`ShapeSpec` (shape, colour, a different background colour, position, size in
    :data:`SIZE_RANGE`). ``rng`` is a ``random.Random`` or a ``numpy.random.Generator`` (``None``: a fresh
    unseeded ``random.Random``)."""
    rng = random.Random() if rng is None else rng
    shape = _choice(rng, SHAPES)
    color = _choice(rng, _NAMES)
    background = _choice(rng, [n for n in _NAMES if n != color])
    position = _choice(rng, POSITIONS)
    size = round(_uniform(rng, *SIZE_RANGE), 3)
    return ShapeSpec(shape=shape, color=color, background=background, position=position, size=size)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _template_index(rng: Optional[RNG]) -> int:
    if rng is None:
        return 0
    group = _choice(rng, list(TEMPLATE_GROUPS))
    return TEMPLATES.index(_choice(rng, TEMPLATE_GROUPS[group]))


def named_fields(spec: ShapeSpec, template: int) -> dict:
    """The fields of ``spec`` that template ``template`` names (``ShapeSpec`` field names; ``None`` for the position
    or background it leaves out): what an image for that caption is judged against."""
    spec, (position, background) = _as_spec(spec), _NAMES_OF[template]
    return {"shape": spec.shape, "color": spec.color, "background": spec.background if background else None,
            "position": spec.position if position else None}


def caption(spec: ShapeSpec, rng: Optional[RNG] = None, template: Optional[int] = None) -> str:
    """Caption of ``spec``, e.g. ``"a red circle at the top left on a blue background"`` or ``"a red circle"``.
    The template (index into :data:`TEMPLATES`) is ``template`` if given, else drawn from ``rng`` (a uniform group
    of :data:`TEMPLATE_GROUPS`, then a uniform template in it), else the first one. Every template names the colour
    and the shape; :func:`named_fields` says which of the position and background it names."""
    return caption_and_fields(spec, rng, template)[0]


def caption_and_fields(spec: ShapeSpec, rng: Optional[RNG] = None, template: Optional[int] = None) -> tuple[str, dict]:
    """``(caption, named_fields)`` of one drawn template (see :func:`caption`)."""
    spec = _as_spec(spec)
    if template is None:
        template = _template_index(rng)
    text = TEMPLATES[template].format(
        color=spec.color,
        a_color=_article(spec.color),
        shape=spec.shape,
        position=spec.position,
        background=spec.background,
        a_background=_article(spec.background),
    )
    return text, named_fields(spec, template)


# ----------------------------------------------------------------------------------------------- rendering


def _shape_center(spec: ShapeSpec, rng: Optional[RNG]) -> tuple[float, float]:
    """Centre (x, y) of the shape's bounding box, fractions of the side: the position anchor, jittered when
    ``rng`` is given, clamped so the shape stays ``_MARGIN`` inside the image."""
    cx, cy = POSITION_ANCHORS[spec.position]
    if rng is not None:
        cx += _uniform(rng, -_JITTER, _JITTER)
        cy += _uniform(rng, -_JITTER, _JITTER)
    lo, hi = spec.size / 2 + _MARGIN, 1 - spec.size / 2 - _MARGIN
    return min(max(cx, lo), hi), min(max(cy, lo), hi)


def render(spec: ShapeSpec, size: int = 32, supersample: int = 4, rng: Optional[RNG] = None) -> Image.Image:
    """Render ``spec`` as a ``size`` x ``size`` RGB ``PIL.Image``: drawn at ``size * supersample`` and
    box-downsampled (anti-aliased edges). The shape centre is at its position's anchor (quadrant centre for
    corners), with a small random jitter only when ``rng`` (``random.Random`` / numpy ``Generator``) is given."""
    spec = _as_spec(spec)
    if size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    ss = max(1, int(supersample))
    big = size * ss
    img = Image.new("RGB", (big, big), COLORS[spec.background])
    draw = ImageDraw.Draw(img)
    cx, cy = _shape_center(spec, rng)
    cx, cy, half = cx * big, cy * big, spec.size * big / 2
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    fill = COLORS[spec.color]
    if spec.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif spec.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:  # triangle, apex up
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    if ss > 1:
        img = img.resize((size, size), Image.BOX)
    return img


# ----------------------------------------------------------------------------------------------- datasets


def _item_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _make_item(seed: int, index: int, size: int) -> tuple[ShapeSpec, str, Image.Image]:
    rng = _item_rng(seed, index)
    spec = random_spec(rng)
    text = caption(spec, rng)
    return spec, text, render(spec, size=size, rng=rng)


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


class ShapesDataset(torch.utils.data.Dataset):
    """``n`` random shape images rendered on the fly; item ``i`` depends only on ``(seed, i)``.

    Each item is ``{"image": float32 tensor (3, size, size) in [0, 1], "caption": str, "spec": dict}`` (``spec``
    is :meth:`ShapeSpec.to_dict`, so the default ``DataLoader`` collation works; :meth:`spec` gives the
    dataclass).
    """

    def __init__(self, n: int, size: int = 32, seed: int = 0):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n, self.size, self.seed = int(n), int(size), int(seed)

    def __len__(self) -> int:
        return self.n

    def _check(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        return index

    def spec(self, index: int) -> ShapeSpec:
        """The :class:`ShapeSpec` of item ``index``."""
        return random_spec(_item_rng(self.seed, self._check(index)))

    def __getitem__(self, index: int) -> dict:
        spec, text, img = _make_item(self.seed, self._check(index), self.size)
        return {"image": _to_tensor(img), "caption": text, "spec": spec.to_dict()}


def write_dataset(root: PathLike, n: int, size: int = 32, seed: int = 0) -> Path:
    """Write the ``n`` items of ``ShapesDataset(n, size, seed)`` as ``root/images/00000.png`` ... and
    ``root/captions.jsonl`` (one ``{"path": "images/00000.png", "caption": ..., "spec": {...}}`` per line, paths
    relative to the JSONL file). Returns the path of ``captions.jsonl``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(max(n - 1, 0))))
    jsonl = root / "captions.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for i in range(n):
            spec, text, img = _make_item(seed, i, size)
            rel = f"images/{i:0{width}d}.png"
            img.save(root / rel, format="PNG", compress_level=1)
            f.write(json.dumps({"path": rel, "caption": text, "spec": spec.to_dict()}) + "\n")
    return jsonl


# ----------------------------------------------------------------------------------------------- prompts

_COLOR_SYNONYMS = {n: n for n in COLORS} | {"violet": "purple", "grey": None, "gray": None}
_SHAPE_SYNONYMS = {"circle": "circle", "circles": "circle", "disc": "circle", "disk": "circle", "dot": "circle",
                   "square": "square", "squares": "square", "box": "square",
                   "triangle": "triangle", "triangles": "triangle"}
_BG_WORDS = r"(?:background|backdrop|canvas)"
_COL_RE = "|".join(sorted((w for w, v in _COLOR_SYNONYMS.items() if v), key=len, reverse=True))
_SHAPE_RE = "|".join(sorted(_SHAPE_SYNONYMS, key=len, reverse=True))
_POS_PATTERNS = [
    (re.compile(r"\b(?:top|upper)\s+(?:left|right)\b|\b(?:bottom|lower)\s+(?:left|right)\b"), None),
    (re.compile(r"\b(?:left|right)\s+(?:top|upper|bottom|lower)\b"), "swap"),
    (re.compile(r"\b(?:center|centre|middle|centered|centred)\b"), "center"),
]


def _normalize(text: str) -> str:
    text = re.sub(r"[^a-z]+", " ", str(text).lower().replace("-", " "))
    return re.sub(r"\s+", " ", text).strip()


def parse_prompt(text: str) -> dict:
    """Colour, shape, position and background named in a caption or free prompt, by word matching.

    Returns ``{"shape", "color", "background", "position"}`` (``ShapeSpec`` field names); a field that cannot
    be found is ``None``. The background is the colour in ``"X background"`` (also ``backdrop`` / ``canvas``),
    ``"background (is|of) X"`` or ``"on (a) X"`` (when X is not followed by a shape word); the shape colour is the
    colour right before a shape word, else the first other colour. Positions: ``center`` (``centre``,
    ``middle``), ``top left`` (``upper left``, ``left top``, ``top-left``) and the other corners.
    """
    t = _normalize(text)
    out: dict = {"shape": None, "color": None, "background": None, "position": None}

    # background colour, and the character span it came from (so it is not reused as the shape colour)
    bg_span = None
    for pat in (
        rf"\b({_COL_RE})\s+{_BG_WORDS}\b",
        rf"\b{_BG_WORDS}\s+(?:is\s+|of\s+|colou?r\s+)?(?:a\s+|an\s+)?({_COL_RE})\b",
        rf"\bon\s+(?:a\s+|an\s+|the\s+)?({_COL_RE})\b(?!\s+(?:{_SHAPE_RE})\b)",
    ):
        m = re.search(pat, t)
        if m:
            out["background"] = _COLOR_SYNONYMS[m.group(1)]
            bg_span = m.span(1)
            break

    m = re.search(rf"\b({_COL_RE})\s+(?:[a-z]+\s+)?({_SHAPE_RE})\b", t)
    if m and m.span(1) != bg_span:
        out["color"] = _COLOR_SYNONYMS[m.group(1)]
    else:
        for m in re.finditer(rf"\b({_COL_RE})\b", t):
            if m.span(1) != bg_span:
                out["color"] = _COLOR_SYNONYMS[m.group(1)]
                break

    m = re.search(rf"\b({_SHAPE_RE})\b", t)
    if m:
        out["shape"] = _SHAPE_SYNONYMS[m.group(1)]

    for pat, kind in _POS_PATTERNS:
        m = pat.search(t)
        if m:
            words = m.group(0).split()
            if kind == "center":
                out["position"] = "center"
            else:
                if kind == "swap":
                    words = words[::-1]
                vert = "top" if words[0] in ("top", "upper") else "bottom"
                out["position"] = f"{vert} {words[1]}"
            break
    return out


# ----------------------------------------------------------------------------------------------- judging

# A pixel belongs to the shape when it is at least this far (RGB, 0..255) from the measured background colour.
_FAR = 60.0
# The shape must cover at least this fraction of the image (pixels of the winning colour).
_MIN_SHAPE_FRAC = 0.03
# Majority votes must be at least this share of the voters (rejects noise).
_MIN_SHARE = 0.5


def _as_spec(spec) -> ShapeSpec:
    return spec if isinstance(spec, ShapeSpec) else ShapeSpec.from_dict(spec)


def _spec_fields(spec) -> dict:
    if isinstance(spec, ShapeSpec):
        return spec.to_dict()
    if isinstance(spec, str):
        return parse_prompt(spec)
    return dict(spec)


def _to_array(image) -> np.ndarray:
    """(H, W, 3) float32 in 0..255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", torch.float32)
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(t.shape)}")
        return (t.clamp(0, 1) * 255.0).permute(1, 2, 0).numpy()
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):  # float arrays are taken to be in [0, 1], like tensors
        return np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0
    return a.astype(np.float32)


def _classify(px: np.ndarray) -> np.ndarray:
    """Index of the nearest named colour for each pixel of (..., 3)."""
    d = ((px[..., None, :] - _PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def _vote(labels: np.ndarray) -> tuple[int, float, int]:
    counts = np.bincount(labels.ravel(), minlength=len(_NAMES))
    k = int(counts.argmax())
    total = int(counts.sum())
    return k, (counts[k] / total if total else 0.0), int(counts[k])


def _erode(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, constant_values=False)
    return p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _nearest_position(x: float, y: float) -> str:
    return min(POSITIONS, key=lambda p: (POSITION_ANCHORS[p][0] - x) ** 2 + (POSITION_ANCHORS[p][1] - y) ** 2)


_CORNER_FULL = 0.55  # mean coverage of a corner patch of the shape's box that counts as filled


def _shape_of(a: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> tuple[Optional[str], Optional[tuple]]:
    """The shape from its coverage: each pixel's fraction of shape colour (its projection between the measured
    background and shape colours), the box of the pixels at least half covered, and the mean coverage of the box's
    corner patches (a fifth of the side): a square fills all four, an apex-up triangle only the bottom two, a
    circle none. Ground-truth renders: top corners 0.66-1.0 for squares, <= 0.42 for circles and 0 for triangles;
    bottom corners 0.67-0.98 for triangles, <= 0.42 for circles."""
    d = (fg - bg).astype(np.float32)
    norm = float((d * d).sum())
    if norm < 1.0:
        return None, None
    alpha = np.clip(((a - bg) * d).sum(-1) / norm, 0.0, 1.0)
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) < 4:
        return None, None
    box = alpha[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    k = max(1, round(0.2 * min(box.shape)))
    top = float((box[:k, :k].mean() + box[:k, -k:].mean()) / 2)
    bottom = float((box[-k:, :k].mean() + box[-k:, -k:].mean()) / 2)
    if top >= _CORNER_FULL:
        return "square", (top, bottom)
    if bottom >= _CORNER_FULL:
        return "triangle", (top, bottom)
    return "circle", (top, bottom)


def judge(image, spec) -> dict:
    """Check an image against a :class:`ShapeSpec`, a dict with (some of) its fields, or a prompt string (parsed
    with :func:`parse_prompt`).

    ``image``: ``PIL.Image``, a tensor (3, H, W) in [0, 1], or an (H, W, 3) array (uint8, or float in [0, 1]).

    * background: every pixel of a border ring (``max(1, H // 16)`` wide) votes for its nearest named colour; the
      winner must hold at least half the votes (else ``"background": None``).
    * shape colour: pixels at least 60 RGB units from the measured background colour are shape pixels; their
      interior (4-neighbour erosion, when big enough) votes for the nearest named colour other than the
      background; the winner must hold half the votes and cover at least 3% of the image (else
      ``"color": None``).
    * position (reported, not part of ``correct``): the centre of the 5th..95th percentile box of the winning
      shape pixels (interior ones when enough), snapped to the nearest :data:`POSITION_ANCHORS` entry.
    * shape: from the coverage of the corners of the shape's box (:func:`_shape_of`); ``corners`` holds the (top,
      bottom) coverages.

    Returns ``background_ok``, ``shape_color_ok``, ``shape_ok``, ``position_ok`` (each ``None`` when the spec does
    not name that field), ``correct`` (a shape was found and none of ``background_ok``, ``shape_color_ok`` and
    ``shape_ok`` is ``False``; the position is reported apart), ``shape_present``, ``shape``, ``corners``, and the measurements ``background`` / ``color`` / ``position`` (names or
    ``None``), ``background_share``, ``color_share``, ``shape_fraction``, ``center`` ((x, y) fractions or
    ``None``).
    """
    want = _spec_fields(spec)
    a = _to_array(image)
    h, w, _ = a.shape
    b = max(1, min(h, w) // 16)
    border = np.ones((h, w), dtype=bool)
    border[b:-b, b:-b] = False

    # background
    blab = _classify(a[border])
    bk, bshare, _ = _vote(blab)
    background = _NAMES[bk] if bshare >= _MIN_SHARE else None
    bg_ref = np.median(a[border][blab == bk], axis=0)

    # shape pixels: far from the measured background colour
    far = np.sqrt(((a - bg_ref) ** 2).sum(-1)) >= _FAR
    labels = _classify(a)
    cand = far & (labels != bk)
    core = _erode(cand)
    voters = core if core.sum() >= max(4, int(0.01 * h * w)) else cand
    color, cshare, frac, center = None, 0.0, 0.0, None
    if voters.any():
        ck, cshare, _ = _vote(labels[voters])
        winners = cand & (labels == ck)
        frac = float(winners.sum()) / (h * w)
        if cshare >= _MIN_SHARE and frac >= _MIN_SHAPE_FRAC:
            color = _NAMES[ck]
            solid = winners & core
            ys, xs = np.nonzero(solid if solid.sum() >= max(4, int(0.01 * h * w)) else winners)
            cx = (np.percentile(xs, 5) + np.percentile(xs, 95)) / 2
            cy = (np.percentile(ys, 5) + np.percentile(ys, 95)) / 2
            center = ((cx + 0.5) / w, (cy + 0.5) / h)
    position = _nearest_position(*center) if center is not None else None
    shape, corners = None, None
    if color is not None:
        fg_ref = np.median(a[winners], axis=0)
        shape, corners = _shape_of(a, bg_ref, fg_ref)

    def ok(field, measured):
        return None if want.get(field) is None else (measured is not None and measured == want[field])

    background_ok = ok("background", background)
    shape_color_ok = ok("color", color)
    position_ok = ok("position", position)
    shape_ok = ok("shape", shape)
    shape_present = color is not None
    correct = bool(shape_present and background_ok is not False and shape_color_ok is not False
                   and shape_ok is not False)
    return {
        "correct": correct,
        "background_ok": background_ok,
        "shape_color_ok": shape_color_ok,
        "position_ok": position_ok,
        "shape_ok": shape_ok,
        "shape_present": shape_present,
        "shape": shape,
        "corners": corners,
        "background": background,
        "color": color,
        "position": position,
        "background_share": float(bshare),
        "color_share": float(cshare),
        "shape_fraction": frac,
        "center": center,
    }


def adherence(images: Union[torch.Tensor, Iterable], specs: Iterable) -> dict:
    """Judge each image against its spec (``ShapeSpec``, dict or prompt string) and aggregate.

    ``images``: a (N, 3, H, W) tensor in [0, 1] or an iterable of anything :func:`judge` takes. Returns ``n`` and
    the rates ``correct``, ``background``, ``shape_color``, ``position``, ``shape`` (each over the items whose spec names
    that field; ``None`` when none does), plus ``results`` (the per-image :func:`judge` dicts).
    """
    specs = list(specs)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    images = list(images)
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} images but {len(specs)} specs")
    results = [judge(im, sp) for im, sp in zip(images, specs)]

    def rate(key):
        vals = [r[key] for r in results if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "n": len(results),
        "correct": rate("correct"),
        "background": rate("background_ok"),
        "shape_color": rate("shape_color_ok"),
        "position": rate("position_ok"),
        "shape": rate("shape_ok"),
        "results": results,
    }
