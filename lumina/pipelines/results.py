"""What a pipeline returns: one result type per modality, each with ``.save(path)``.

* :class:`ImageResult`: a list of PIL images (as before); ``save("out.png")`` writes ``out.png`` for one image,
  ``out_0.png, out_1.png, ...`` for several.
* :class:`SequenceResult`: ``samples`` (B, C, T) float32; ``save`` writes ``.wav`` (C channels, 16-bit PCM of the
  values clipped to [-1, 1], at ``sample_rate``) or ``.npy`` (the array, float32).
* :class:`VolumeResult`: ``samples`` (B, F, C, H, W) float32 in [0, 1]; ``save`` writes ``.gif`` (the frames,
  looping, at ``fps``), ``.png`` (the frames side by side) or ``.npy``.

Several samples go to ``STEM_i.SUFFIX``; ``save`` returns the paths it wrote. A suffix the type cannot write raises
``ValueError`` naming the ones it can (:func:`check_output` checks a path before any work is done).
"""
from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import torch

from ..codecs import to_pil

__all__ = ["ImageResult", "SequenceResult", "VolumeResult", "check_output", "output_paths"]


def output_paths(path, n: int) -> list[Path]:
    """``path`` for one sample, ``STEM_i.SUFFIX`` for ``n`` > 1."""
    out = Path(os.fspath(path))
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


def check_output(result_type, path) -> Path:
    """``path`` as a Path; ``ValueError`` unless ``result_type`` can write its suffix."""
    out = Path(os.fspath(path))
    if out.suffix.lower() not in result_type.SUFFIXES:
        want = " or ".join(result_type.SUFFIXES)
        raise ValueError(f"`path` must end in {want} for {result_type.__name__}, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"`path` {str(out)!r} is a directory; expected a file name")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:  # the folders save() would create
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"`path` {str(out)!r} cannot be written: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"`path` {str(out)!r} cannot be written: no write permission in {str(parent)!r}")
    return out


class ImageResult(list):
    """A list of PIL images with :meth:`save`."""

    SUFFIXES = (".png",)
    DEFAULT_NAME = "lumina.png"

    @classmethod
    def from_samples(cls, samples: torch.Tensor, config=None) -> "ImageResult":
        return cls(to_pil(samples))  # (B, 3 or 1, H, W) in [0, 1]

    def save(self, path) -> list[Path]:
        check_output(type(self), path)
        paths = output_paths(path, len(self))
        for img, p in zip(self, paths):
            p.parent.mkdir(parents=True, exist_ok=True)
            img.save(p)
        return paths


class _TensorResult:
    SUFFIXES: tuple[str, ...] = (".npy",)
    DEFAULT_NAME = "lumina.npy"
    rank = 0

    def __init__(self, samples: torch.Tensor, config=None):
        if not isinstance(samples, torch.Tensor) or samples.dim() != self.rank:
            raise ValueError(f"`samples` must be a rank-{self.rank} tensor for {type(self).__name__}, got "
                             f"{tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__}")
        self.samples = samples.detach().to("cpu", torch.float32)
        self.config = config

    @classmethod
    def from_samples(cls, samples: torch.Tensor, config=None):
        return cls(samples, config)

    def __len__(self) -> int:
        return self.samples.shape[0]

    def __getitem__(self, i) -> torch.Tensor:
        return self.samples[i]

    def __iter__(self):
        return iter(self.samples.unbind(0))

    def save(self, path) -> list[Path]:
        out = check_output(type(self), path)
        paths = output_paths(out, len(self))
        for sample, p in zip(self.samples, paths):
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.suffix.lower() == ".npy":
                np.save(p, sample.numpy())
            else:
                self._write(sample, p)
        return paths

    def _write(self, sample: torch.Tensor, path: Path) -> None:
        raise NotImplementedError


class SequenceResult(_TensorResult):
    """Sequences (B, C, T): channels x time (a waveform, or latents without a vocoder)."""

    SUFFIXES = (".wav", ".npy")
    DEFAULT_NAME = "lumina.wav"
    rank = 3

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.config, "sample_rate", 16000))

    def _write(self, sample: torch.Tensor, path: Path) -> None:
        pcm = (sample.nan_to_num(0.0).clamp(-1, 1) * 32767).round().to(torch.int16)  # (C, T)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(pcm.shape[0])
            w.setsampwidth(2)
            w.setframerate(self.sample_rate)
            w.writeframes(pcm.t().contiguous().numpy().tobytes())  # interleaved (T, C)


class VolumeResult(_TensorResult):
    """Stacks of frames (B, F, C, H, W) in [0, 1]: video frames or the views of an object."""

    SUFFIXES = (".gif", ".png", ".npy")
    DEFAULT_NAME = "lumina.gif"
    rank = 5

    @property
    def fps(self) -> float:
        return float(getattr(self.config, "fps", 8.0))

    def frames(self, i: int) -> list:
        """Sample ``i``'s frames as PIL images (channels 1 or 3)."""
        return to_pil(self.samples[i][:, :3] if self.samples.shape[2] >= 3 else self.samples[i][:, :1])

    def _write(self, sample: torch.Tensor, path: Path) -> None:
        frames = to_pil(sample[:, :3] if sample.shape[1] >= 3 else sample[:, :1])
        if path.suffix.lower() == ".gif":
            frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                           duration=max(1, round(1000 / self.fps)))
            return
        from PIL import Image

        w, h = frames[0].size
        strip = Image.new("RGB", (w * len(frames), h))
        for k, f in enumerate(frames):
            strip.paste(f, (k * w, 0))
        strip.save(path)


RESULTS = {"image": ImageResult, "sequence": SequenceResult, "volume": VolumeResult}
