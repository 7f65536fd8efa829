"""Image-caption datasets: a folder of images with ``.txt`` captions or a JSONL of ``{path, caption}``, each image
resized to cover its aspect-ratio bucket (box halving, then bicubic) and cropped to it; :func:`collate`."""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .buckets import closest_bucket, make_buckets

__all__ = ["IMAGE_EXTENSIONS", "ImageCaptionDataset", "collate", "read_jsonl_records"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
"""File suffixes (case-insensitive) picked up from an image folder."""



def _load_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB (EXIF orientation applied, alpha composited on white)."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba)
        return im.convert("RGB")


def _resize_cover(im: Image.Image, h: int, w: int) -> Image.Image:
    """Aspect-preserving resize so the image covers ``h x w`` (official: box halving, then bicubic)."""
    while im.size[0] >= 2 * w and im.size[1] >= 2 * h:
        im = im.resize((im.size[0] // 2, im.size[1] // 2), resample=Image.BOX)
    scale = max(w / im.size[0], h / im.size[1])
    size = (max(w, round(im.size[0] * scale)), max(h, round(im.size[1] * scale)))
    if size != im.size:
        im = im.resize(size, resample=Image.BICUBIC)
    return im


def read_jsonl_records(file: Path):
    """Yield ``(where, record)`` for every non-blank line of a ``{"path", "caption", ...}`` JSONL file; ValueError
    naming the file and line for malformed JSON, a non-object, a missing or non-string field, or an empty path."""
    with open(file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{str(file)!r} line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            for field in ("path", "caption"):
                if not isinstance(rec.get(field), str):
                    raise ValueError(f"{where}: missing or non-string {field!r}")
            if not rec["path"]:
                raise ValueError(f"{where}: empty 'path'")
            yield where, rec


class UnreadableLog:
    """Mixin of the datasets: items that cannot be read are counted (:attr:`skipped`), their reasons kept per path
    (:attr:`errors`, this process's) and warned about once per path."""

    def _init_unreadable(self) -> None:
        self.skipped = 0
        self.errors: dict[str, str] = {}
        self._warned: set[str] = set()

    def _unreadable(self, name: str, err: BaseException, what: str) -> None:
        self.skipped += 1
        self.errors[name] = f"{type(err).__name__}: {err}"
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"skipping unreadable {what} {name!r}: {type(err).__name__}: {err}", RuntimeWarning)


class ImageCaptionDataset(UnreadableLog, torch.utils.data.Dataset):
    """Image-caption pairs, each cropped to its aspect-ratio bucket.

    ``source`` is either

    - a folder: every ``*.png|jpg|jpeg|webp`` under it (recursively, sorted) whose sibling ``<stem>.txt`` exists;
      the caption is that file's stripped text. Images without a caption are skipped at indexing and counted in
      :attr:`missing_captions`. The key is the image path relative to the folder (POSIX separators).
    - a JSONL file: one ``{"path": ..., "caption": ...}`` object per non-blank line; ``path`` is relative to the
      JSONL's folder or absolute and is the item's key as written; any other fields are kept as the item's
      ``meta``. A malformed line raises ``ValueError`` naming the file and line number.

    Arguments: ``resolution`` -- target area is ``resolution**2``; ``patch_multiple`` -- VAE downscale x patch size
    (16 for the SDXL VAE with patch 2; 2 for a pixel-space patch-2 model); ``max_tokens`` -- optional cap on the
    image tokens (patches of ``patch_multiple`` px) per sample, tightening the budget; ``buckets`` -- ``None``
    (aspect buckets 1:4..4:1, see :func:`make_buckets`), ``"square"`` (the largest square only) or an explicit list
    of ``(h, w)``; ``random_crop`` -- random instead of center crop, seeded per ``(seed, epoch, index)`` (call
    :meth:`set_epoch`; with DataLoader workers, use ``persistent_workers=False`` so the workers see the new epoch);
    ``seed``.

    ``dataset[i]`` returns ``{"image": float32 (3, h, w) in [0, 1], "caption": str, "key": str, "index": i,
    "meta": dict, "crop": (top, left, h, w)}`` (``crop`` in the resized image, for keying cached latents with
    :func:`content_key`), or ``None`` when the image is missing or cannot be decoded: it never raises for a bad
    image. A bad file is warned about once per file per process and counted in :attr:`skipped`. The count is
    per process: with DataLoader workers each worker counts its own (the main process's stays 0); for a global
    figure, sum ``batch["dropped"]`` from :func:`collate` in the training loop.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        resolution: int = 256,
        patch_multiple: int = 16,
        max_tokens: int | None = None,
        buckets: str | Sequence[tuple[int, int]] | None = None,
        random_crop: bool = False,
        seed: int = 0,
    ):
        self.source = Path(source)
        self.resolution = int(resolution)
        self.patch_multiple = int(patch_multiple)
        self.max_tokens = max_tokens
        self.random_crop = bool(random_crop)
        self.seed = int(seed)
        self.epoch = 0
        #: Images whose decoding failed (or that were missing) in this process (``skipped``, ``errors``); see the
        #: class docstring.
        self._init_unreadable()
        #: Images in a source folder skipped at indexing because they have no sibling ``.txt`` caption.
        self.missing_captions = 0

        if buckets is None:
            self.buckets = make_buckets(self.resolution, self.patch_multiple, max_tokens)
        elif isinstance(buckets, str):
            if buckets != "square":
                raise ValueError(f"buckets must be None, 'square' or a list of (h, w), got {buckets!r}")
            self.buckets = make_buckets(self.resolution, self.patch_multiple, max_tokens, max_ratio=1.0)
        else:
            self.buckets = [self._check_bucket(b) for b in buckets]
            if not self.buckets:
                raise ValueError("buckets: empty list")

        if not self.source.exists():
            raise FileNotFoundError(f"dataset source not found: {str(self.source)!r}")
        if self.source.is_dir():
            self._paths, self._keys, self._captions, self._metas = self._index_folder(self.source)
        elif self.source.is_file():
            if self.source.suffix.lower() not in (".jsonl", ".ndjson"):
                raise ValueError(
                    f"dataset source {str(self.source)!r} is a file but not a .jsonl file; "
                    "give a folder of images with .txt captions or a JSONL file"
                )
            self._paths, self._keys, self._captions, self._metas = self._index_jsonl(self.source)
        else:
            raise ValueError(f"dataset source {str(self.source)!r} is neither a folder nor a file")
        if not self._paths:
            extra = f" ({self.missing_captions} images without a .txt caption)" if self.missing_captions else ""
            raise ValueError(f"dataset source {str(self.source)!r} has no image-caption pairs{extra}")

    @classmethod
    def from_source(cls, path: str | os.PathLike, **kwargs: Any) -> "ImageCaptionDataset":
        """Build from a folder or a ``.jsonl`` file (picked by what ``path`` is); ``kwargs`` as the constructor."""
        return cls(path, **kwargs)

    # -- indexing ------------------------------------------------------------------------------------------------------

    def _check_bucket(self, b) -> tuple[int, int]:
        h, w = (int(x) for x in b)
        p = self.patch_multiple
        if h <= 0 or w <= 0 or h % p or w % p:
            raise ValueError(f"bucket {tuple(b)} is not a positive multiple of patch_multiple={p}")
        return h, w

    def _index_folder(self, root: Path):
        paths, keys, captions, metas = [], [], [], []
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
                continue
            txt = p.with_suffix(".txt")
            if not txt.is_file():
                self.missing_captions += 1
                continue
            paths.append(p)
            keys.append(p.relative_to(root).as_posix())
            captions.append(txt.read_text(encoding="utf-8", errors="replace").strip())
            metas.append({})
        return paths, keys, captions, metas

    def _index_jsonl(self, file: Path):
        paths, keys, captions, metas = [], [], [], []
        base = file.parent
        for _, rec in read_jsonl_records(file):
            rel = rec["path"]
            p = Path(rel)
            paths.append(p if p.is_absolute() else base / p)
            keys.append(Path(rel).as_posix())
            captions.append(rec["caption"])
            metas.append({k: v for k, v in rec.items() if k not in ("path", "caption")})
        return paths, keys, captions, metas

    # -- access --------------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> Path:
        """Filesystem path of sample ``i`` (for :func:`content_key`)."""
        return self._paths[i]

    def key(self, i: int) -> str:
        """Stable id of sample ``i``: the path relative to the folder, or as written in the JSONL."""
        return self._keys[i]

    def caption(self, i: int) -> str:
        """Caption of sample ``i``."""
        return self._captions[i]

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed random crops (``(seed, epoch, index)``)."""
        self.epoch = int(epoch)

    def bucket_for(self, height: int, width: int) -> tuple[int, int]:
        """The bucket ``(h, w)`` an image of ``height x width`` is cropped to."""
        return closest_bucket(height, width, self.buckets)

    def _crop_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFFFFFFFFFF, self.epoch & 0xFFFFFFFFFFFFFFFF, int(index)])

    def _bad(self, i: int, err: BaseException) -> None:
        self._unreadable(str(self._paths[i]), err, "image")

    def __getitem__(self, i: int) -> dict | None:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for dataset of {len(self)}")
        i = int(i) % len(self)
        try:
            im = _load_rgb(self._paths[i])
        except Exception as e:  # missing, truncated, not an image, decompression bomb, ...
            self._bad(i, e)
            return None
        h, w = self.bucket_for(im.size[1], im.size[0])
        im = _resize_cover(im, h, w)
        W, H = im.size
        if self.random_crop:
            rng = self._crop_rng(i)
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        else:
            top, left = (H - h) // 2, (W - w) // 2
        im = im.crop((left, top, left + w, top + h))
        arr = np.asarray(im, dtype=np.uint8)
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous().float().div_(255.0)
        return {
            "image": image,
            "caption": self._captions[i],
            "key": self._keys[i],
            "index": i,
            "meta": dict(self._metas[i]),
            "crop": (top, left, h, w),
        }


def collate(batch: list) -> dict | None:
    """Batch dataset items, dropping ``None`` (bad items); ``None`` if nothing is left.

    Returns ``{"samples": list of tensors (an image item's "image", a tensor item's "sample"; sizes may differ),
    "images": the same list (the earlier name), "captions": list[str], "keys": list[str], "indices": int64 tensor,
    "metas": list[dict], "crops": list, "dropped": int}``.
    """
    items = [b for b in batch if b is not None]
    if not items:
        return None
    samples = [b["sample"] if "sample" in b else b["image"] for b in items]
    return {
        "samples": samples,
        "images": samples,
        "captions": [b["caption"] for b in items],
        "keys": [b["key"] for b in items],
        "indices": torch.tensor([b["index"] for b in items], dtype=torch.int64),
        "metas": [b.get("meta", {}) for b in items],
        "crops": [b.get("crop") for b in items],
        "dropped": len(batch) - len(items),
    }
