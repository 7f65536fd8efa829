"""An on-disk, content-addressed cache of per-sample tensors (codec latents, text features) in safetensors files,
written atomically; :func:`content_key` / :func:`text_key` name the entries."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["FeatureCache", "content_key", "text_key"]


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
