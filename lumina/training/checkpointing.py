"""Training checkpoints and the loss log: atomic writes, the ``latest`` pointer, rotation, the RNG state of an exact
resume.

A checkpoint is ``out_dir/checkpoints/step_NNNNNNN/``: the model (a native NextDiT checkpoint with EMA weights, or a
LoRA adapter) and :data:`STATE_FILE` (optimizer, scheduler, loader position, every RNG). It is written into a
temporary directory, fsynced and renamed, then ``latest`` is replaced atomically: a killed run never leaves a
half-written checkpoint as the latest.
"""
from __future__ import annotations

import csv
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["STATE_FILE", "LATEST", "LOG_FILE", "LOG_FIELDS", "rng_state", "restore_rng", "write_checkpoint",
           "read_state", "latest_checkpoint", "prune", "start_log", "append_log", "read_log"]

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
LOG_FILE = "loss.csv"
LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "seconds"]


# -- RNG ---------------------------------------------------------------------------------------------
def rng_state(gen: torch.Generator) -> dict:
    """The training generator's and the global RNGs' states (torch, Python, NumPy, CUDA), torch.load-safe."""
    py = random.getstate()
    np_state = np.random.get_state()
    rng = {"gen": gen.get_state(), "torch": torch.get_rng_state(), "python": list(py[1]), "python_version": py[0],
           "python_gauss": py[2], "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
           "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def restore_rng(rng: dict, gen: torch.Generator, rank: int = 0) -> None:
    """Restore :func:`rng_state` (``per_rank``: each rank's own generator and torch state)."""
    mine = rng["per_rank"][rank] if "per_rank" in rng else rng
    gen.set_state(mine["gen"])
    torch.set_rng_state(mine["torch"])
    random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


# -- checkpoints ---------------------------------------------------------------------------------------
def write_checkpoint(root: Path, step: int, write_model: Callable[[Path], None], state: dict, keep_last: int) -> Path:
    """Write ``root/step_NNNNNNN`` atomically (``write_model(dir)`` writes the weights, ``state`` goes to
    :data:`STATE_FILE`), point ``latest`` at it and keep the newest ``keep_last``."""
    final = root / f"step_{step:07d}"
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp)
    torch.save(state, tmp / STATE_FILE)
    _fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(root / LATEST, final.name)
    prune(root, keep_last)
    return final


def read_state(path: Path) -> dict:
    """The trainer state of a checkpoint (tensors and plain values only: nothing pickled is executed)."""
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and temporary ones left by a killed run."""
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and ".tmp" not in p.name)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- the loss log ------------------------------------------------------------------------------------
def start_log(path: Path, step: int) -> None:
    """A new log with its header, or an existing one kept up to `step` (a resumed run continues the same curve)."""
    if not path.is_file():
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def append_log(path: Path, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([step, repr(loss), repr(lr), repr(grad_norm), f"{seconds:.3f}"])


def read_log(path) -> list[dict]:
    """The loss log as a list of {step, loss, lr, grad_norm, seconds}."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
