"""Samples of any modality stored as tensors: a JSONL of ``{"path": FILE, "caption": str}`` records, FILE a ``.npy``
array or a ``.safetensors`` file holding one tensor named ``sample``; the sample has the modality's shape (image
(C, H, W), sequence (C, T), volume (F, C, H, W)) in the codec's input space (pixels in [0, 1] for a pixel codec,
latents for the identity codec). Items come out as :class:`lumina.training.data.ImageCaptionDataset` items do, so
:func:`collate`, the loader and the trainer take them unchanged."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .dataset import UnreadableLog, read_jsonl_records

__all__ = ["TensorCaptionDataset", "write_tensor_dataset", "is_tensor_jsonl", "TENSOR_EXTENSIONS"]

TENSOR_EXTENSIONS = (".npy", ".safetensors")


def _load_tensor(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, allow_pickle=False)).float()  # never unpickles
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if "sample" not in tensors:
        raise ValueError(f"{str(path)!r} holds no tensor named 'sample' (found {sorted(tensors)})")
    return tensors["sample"].float()


class TensorCaptionDataset(UnreadableLog, torch.utils.data.Dataset):
    """Tensor-caption pairs from a JSONL file (see the module doc). ``sample_rank``: the rank every sample must have
    (the modality adapter's); a file with another rank, or unreadable, gives ``None`` and a warning (as a bad
    image does), counted in :attr:`skipped`."""

    def __init__(self, source: str | os.PathLike, sample_rank: int):
        self.source = Path(source)
        self.sample_rank = int(sample_rank)
        self._init_unreadable()
        if not self.source.is_file() or self.source.suffix.lower() not in (".jsonl", ".ndjson"):
            raise ValueError(f"`data.source` {str(self.source)!r} must be a JSONL file of {{path, caption}} records "
                             f"for tensor samples ({' or '.join(TENSOR_EXTENSIONS)} files)")
        self._paths, self._captions = [], []
        for where, rec in read_jsonl_records(self.source):
            p = Path(rec["path"])
            if p.suffix not in TENSOR_EXTENSIONS:
                raise ValueError(f"{where}: 'path' must end in {' or '.join(TENSOR_EXTENSIONS)}, got {p.name!r}")
            self._paths.append(p if p.is_absolute() else self.source.parent / p)
            self._captions.append(rec["caption"])
        if not self._paths:
            raise ValueError(f"`data.source` {str(self.source)!r} has no records")

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, i: int) -> Path:
        return self._paths[i]

    def caption(self, i: int) -> str:
        return self._captions[i]

    def set_epoch(self, epoch: int) -> None:  # no random crops: nothing depends on the epoch
        pass

    def __getitem__(self, i: int) -> dict | None:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for dataset of {len(self)}")
        i = int(i) % len(self)
        try:
            x = _load_tensor(self._paths[i])
            if x.dim() != self.sample_rank:
                raise ValueError(f"rank {x.dim()} (shape {tuple(x.shape)}), expected rank {self.sample_rank}")
        except Exception as e:
            self._unreadable(str(self._paths[i]), e, "sample")
            return None
        return {"sample": x, "caption": self._captions[i], "key": self._paths[i].name, "index": i, "meta": {},
                "crop": None}


def is_tensor_jsonl(source: Path) -> bool:
    """Whether a JSONL source lists tensor files (its first record's path)."""
    if not (source.is_file() and source.suffix.lower() in (".jsonl", ".ndjson")):
        return False
    with open(source, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return Path(str(json.loads(line).get("path", ""))).suffix in TENSOR_EXTENSIONS
                except (json.JSONDecodeError, AttributeError):
                    return False
    return False


def write_tensor_dataset(root: str | os.PathLike, samples, captions) -> Path:
    """Write ``samples`` (tensors) as ``root/NNNNNN.npy`` with ``root/data.jsonl``; returns the JSONL path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (x, c) in enumerate(zip(samples, captions)):
        np.save(root / f"{i:06d}.npy", x.detach().to("cpu", torch.float32).numpy())
        lines.append(json.dumps({"path": f"{i:06d}.npy", "caption": c}))
    jsonl = root / "data.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl
