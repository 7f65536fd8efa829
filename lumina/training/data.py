"""Image-caption data for training: dataset with aspect-ratio buckets, collate, feature cache, resumable sampler.

Public API
----------
- :func:`make_buckets` / :func:`closest_bucket` -- the official Lumina-Next aspect-ratio crop sizes within a patch
  budget, and the bucket an image of a given size goes to.
- :class:`ImageCaptionDataset` -- a folder of images with sibling ``.txt`` captions, or a JSONL file of
  ``{"path", "caption", ...}`` records; items are bucket-cropped float32 ``(3, h, w)`` tensors in ``[0, 1]``.
- :func:`collate` -- list of items -> batch dict (sizes may differ; bad items dropped).
- :class:`FeatureCache`, :func:`content_key`, :func:`text_key` -- an on-disk, content-addressed cache of per-sample
  tensors (VAE latents, text features) in safetensors files, written atomically.
- :func:`make_loader`, :func:`epochs`, :func:`loader_state`, :func:`load_loader_state` -- a shuffling, rank-sharded
  loader (torchdata's StatefulDataLoader) that resumes mid-epoch at exactly the next batch, workers included.

Bucket rule (as the official trainer, ``lumina_next_t2i/imgproc.py``): with ``N`` = the patch budget, walk the
staircase ``wp = N, N-1, ..., 1`` raising ``hp`` while ``hp * wp <= N`` and keep every visited ``(hp, wp)`` whose
aspect is within ``max_ratio`` (4:1); sizes are ``(hp * patch_multiple, wp * patch_multiple)``. An image goes to the
bucket that keeps the largest fraction of it after an aspect-preserving cover resize (equivalently the closest
aspect ratio in log space), is resized to cover it (box halving, then bicubic) and cropped to exactly that size.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

__all__ = [
    "IMAGE_EXTENSIONS",
    "make_buckets",
    "closest_bucket",
    "ImageCaptionDataset",
    "collate",
    "FeatureCache",
    "content_key",
    "text_key",
    "make_loader",
    "epochs",
    "loader_state",
    "load_loader_state",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
"""File suffixes (case-insensitive) picked up from an image folder."""


# ----------------------------------------------------------------------------------------------------------------------
# Buckets
# ----------------------------------------------------------------------------------------------------------------------


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
# Dataset
# ----------------------------------------------------------------------------------------------------------------------


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


class ImageCaptionDataset(torch.utils.data.Dataset):
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
        #: Images whose decoding failed (or that were missing) in this process; see the class docstring.
        self.skipped = 0
        #: Images in a source folder skipped at indexing because they have no sibling ``.txt`` caption.
        self.missing_captions = 0
        self._warned: set[str] = set()

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
        self.skipped += 1
        name = str(self._paths[i])
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"skipping unreadable image {name!r}: {type(err).__name__}: {err}", RuntimeWarning)

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
    """Batch dataset items, dropping ``None`` (bad images); ``None`` if nothing is left.

    Returns ``{"images": list of (3, h, w) tensors (sizes may differ), "captions": list[str], "keys": list[str],
    "indices": int64 tensor, "metas": list[dict], "crops": list[tuple], "dropped": int}``.
    """
    items = [b for b in batch if b is not None]
    if not items:
        return None
    return {
        "images": [b["image"] for b in items],
        "captions": [b["caption"] for b in items],
        "keys": [b["key"] for b in items],
        "indices": torch.tensor([b["index"] for b in items], dtype=torch.int64),
        "metas": [b.get("meta", {}) for b in items],
        "crops": [b.get("crop") for b in items],
        "dropped": len(batch) - len(items),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=,-]*$")
_TMP_PREFIX = ".tmp-"


def _sha256_parts(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            part = part.encode("utf-8")
        elif not isinstance(part, (bytes, bytearray, memoryview)):
            raise TypeError(f"key parts must be bytes or str, got {type(part).__name__}")
        part = bytes(part)
        h.update(len(part).to_bytes(8, "little"))  # length framing: ("ab", "c") != ("a", "bc")
        h.update(part)
    return h.hexdigest()


def content_key(image_path: str | os.PathLike, crop: Any = None) -> str:
    """Key for an image's cached latents: sha256 hex of the file bytes, plus the crop parameters when given.

    ``crop`` is any JSON-serialisable description of the transform (e.g. the item's ``(top, left, h, w)`` and the
    resolution); without it the result is the plain sha256 of the file (as ``sha256sum``).
    """
    h = hashlib.sha256()
    with open(image_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if crop is None:
        return h.hexdigest()
    crop_json = json.dumps(crop, sort_keys=True, separators=(",", ":"), default=list)
    return _sha256_parts([h.digest(), "crop", crop_json])


def text_key(encoder_id: str, caption: str) -> str:
    """Key for a caption's cached text features: sha256 hex of ``(encoder_id, caption)``."""
    return _sha256_parts(["text", encoder_id, caption])


class FeatureCache:
    """On-disk cache of per-sample tensor dicts, content-addressed, one safetensors file per entry.

    Entries live at ``root/namespace/<key[:2]>/<key>.safetensors``; ``namespace`` separates feature kinds (e.g.
    ``"sdxl-vae@1024"``, ``"gemma-2b"``) and must be a plain name (letters, digits, ``._@+=,-``). Keys are 64-hex
    sha256 digests (:meth:`key`, :func:`content_key`, :func:`text_key`). :meth:`put` writes a temp file in the same
    folder and ``os.replace``-s it in, so a killed writer never leaves a half-written entry (a stray
    ``.tmp-*`` file is never read; :meth:`clean_temp` removes old ones). :meth:`get` treats an unreadable entry as
    a miss, deletes it and warns. :attr:`hits` / :attr:`misses` count :meth:`get` results in this process.
    """

    SUFFIX = ".safetensors"

    def __init__(self, root: str | os.PathLike, namespace: str):
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ValueError(
                f"namespace {namespace!r} must be a plain name (letters, digits and ._@+=,- ; no path separators)"
            )
        self.root = Path(root)
        self.namespace = namespace
        self.dir = self.root / namespace
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: bytes | str) -> str:
        """sha256 hex of the parts (str as UTF-8, each length-prefixed so part boundaries matter)."""
        return _sha256_parts(parts)

    def path(self, key: str) -> Path:
        """File path of entry ``key``."""
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(f"cache key must be 64 lowercase hex characters (a sha256), got {key!r}")
        return self.dir / key[:2] / f"{key}{self.SUFFIX}"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors stored under ``key`` (on CPU), or ``None`` on a miss (absent or corrupt entry)."""
        from safetensors.torch import load

        p = self.path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        try:
            out = load(data)
        except Exception as e:
            warnings.warn(f"feature cache: deleting corrupt entry {str(p)!r} ({type(e).__name__}: {e})", RuntimeWarning)
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` under ``key`` atomically (temp file + fsync + ``os.replace``); overwrites."""
        from safetensors.torch import save

        p = self.path(key)
        if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
        ):
            raise TypeError("tensors must be a dict[str, torch.Tensor]")
        # clone: safetensors refuses tensors that share storage (views of one latent batch).
        data = save({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".part", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def clean_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp files left by killed writers, older than ``older_than_s`` seconds; returns how many."""
        import time

        n = 0
        if not self.dir.is_dir():
            return 0
        now = time.time()
        for t in self.dir.glob(f"*/{_TMP_PREFIX}*"):
            try:
                if now - t.stat().st_mtime >= older_than_s:
                    t.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n


# ----------------------------------------------------------------------------------------------------------------------
# Sampler
# ----------------------------------------------------------------------------------------------------------------------


# Resumable loading is torchdata's StatefulDataLoader over its StatefulDistributedSampler (DistributedSampler's
# order: randperm seeded with seed + epoch, padded by wrapping to a multiple of world_size, every world_size-th index
# from rank). Its state_dict() is taken when a batch is handed out, not when workers prefetched it, so after
# load_state_dict() the next iter() yields exactly the batches an uninterrupted loader would, workers included
# (tests/test_data.py checks 0 and 2 workers, mid-epoch and across an epoch end). It does not save the epoch, which
# the sampler needs to draw the order: loader_state() / load_loader_state() add it. Caveat: torchdata 0.11.0 (the
# newest release) calls torch.set_vital, deprecated in torch 2.14 and removed from torch's main branch in March 2026
# (pytorch/pytorch#178479, tracked as meta-pytorch/data#1536): a torch without it needs a newer torchdata.


def make_loader(dataset, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                collate_fn=collate) -> StatefulDataLoader:
    """A resumable loader of this rank's shard; ``epochs(loader)`` runs it forever, epoch after epoch."""
    sampler = StatefulDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                         drop_last=drop_last)
    with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated since (see above)
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                                  num_workers=num_workers, drop_last=False)


def epochs(loader: StatefulDataLoader) -> Iterator:
    """The loader's batches, epoch after epoch (a restored loader first finishes its saved epoch)."""
    while True:
        yield from loader
        loader.sampler.set_epoch(loader.sampler.epoch + 1)


def loader_state(loader: StatefulDataLoader) -> dict:
    """``{"epoch", "loader"}``: where the next batch comes from, for a checkpoint (``torch.load(weights_only)``)."""
    return {"epoch": loader.sampler.epoch, "loader": loader.state_dict()}


def load_loader_state(loader: StatefulDataLoader, state: dict) -> None:
    """Restore :func:`loader_state`; the next ``iter(loader)`` continues that epoch at the next batch."""
    loader.sampler.set_epoch(int(state["epoch"]))
    loader.load_state_dict(state["loader"])
