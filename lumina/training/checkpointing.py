"""Training checkpoints and the loss log: atomic writes, the ``latest`` pointer, rotation, the RNG state of an exact
resume.

A checkpoint is ``out_dir/checkpoints/step_NNNNNNN/``: the model (a native NextDiT checkpoint with EMA weights, or a
LoRA adapter) and :data:`STATE_FILE` (optimizer, scheduler, loader position, every RNG). It is written into a
temporary directory, fsynced and renamed, then ``latest`` is replaced atomically: a killed run never leaves a
half-written checkpoint as the latest.

Nothing a run had is lost: a missing, dangling or corrupt ``latest`` (or a checkpoint whose files do not read) falls
back to the newest complete checkpoint (:func:`resume_candidates`; the trainer warns naming what was wrong); a run
only ever deletes checkpoints it wrote itself (``keep_last`` rotation), and a checkpoint of the same step written
earlier is moved aside (``step_NNNNNNN.replaced-<time>``), never deleted; the loss log is appended to, and
:func:`read_log` gives the last row of each step.
"""
from __future__ import annotations

import csv
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["STATE_FILE", "LATEST", "LOG_FILE", "LOG_FIELDS", "rng_state", "restore_rng", "write_checkpoint",
           "read_state", "latest_checkpoint", "complete_checkpoints", "resume_candidates", "prune", "start_log",
           "append_log", "read_log"]

STATE_FILE = "trainer_state.pt"
LATEST = "latest"
LOG_FILE = "loss.csv"
LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "seconds"]
_STEP_DIR = re.compile(r"^step_\d{7}$")


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
def write_checkpoint(root: Path, step: int, write_model: Callable[[Path], None], state: dict) -> Path:
    """Write ``root/step_NNNNNNN`` atomically (``write_model(dir)`` writes the weights, ``state`` goes to
    :data:`STATE_FILE`) and point ``latest`` at it. A directory of that name from an earlier run is moved aside."""
    final = root / f"step_{step:07d}"
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp)
    torch.save(state, tmp / STATE_FILE)
    _fsync_dir(tmp)
    if final.exists():
        os.replace(final, final.with_name(f"{final.name}.replaced-{time.time_ns()}"))
    os.replace(tmp, final)
    _write_atomic(root / LATEST, final.name)
    return final


def read_state(path: Path) -> dict:
    """The trainer state of a checkpoint (tensors and plain values only: nothing pickled is executed); ValueError
    naming the file when it is corrupt, truncated or holds anything else."""
    file = path / STATE_FILE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{file}: not a readable trainer state ({type(e).__name__}: {first[:120]})") from None


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, when it exists with its state file; else None."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Every ``step_NNNNNNN`` directory with a state file, newest first."""
    found = [p for p in root.glob("step_*") if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def resume_candidates(root: Path) -> tuple[list[Path], list[str]]:
    """The checkpoints to resume from, best first (the one ``latest`` names, then the others newest first), and
    what is wrong with the ``latest`` pointer (empty when nothing is)."""
    problems: list[str] = []
    found = complete_checkpoints(root)
    pointer = root / LATEST
    named = None
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        named = root / name
        if not _STEP_DIR.match(name) or not named.is_dir():
            problems.append(f"{pointer} names {name!r}, which does not exist")
        elif named not in found:
            problems.append(f"{pointer} names {name}, which has no {STATE_FILE}")
    elif pointer.exists():
        problems.append(f"{pointer} is not a file")
    elif found:
        problems.append(f"{pointer} is missing")
    if named in found:
        found.remove(named)
        found.insert(0, named)
    return found, problems


def prune(root: Path, keep: int, written: list[Path]) -> None:
    """Delete all but the newest ``keep`` of the checkpoints this run ``written`` (never an earlier run's), and
    temporary directories left by a killed run."""
    for old in written[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    del written[:-keep]
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
def start_log(path: Path) -> None:
    """A new log with its header; an existing one is kept whole (a resumed run appends: :func:`read_log` takes the
    last row of each step)."""
    if not path.is_file() or path.stat().st_size == 0:
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)


def append_log(path: Path, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([step, repr(loss), repr(lr), repr(grad_norm), f"{seconds:.3f}"])


def read_log(path) -> list[dict]:
    """The loss log as a list of {step, loss, lr, grad_norm, seconds} in step order, the last row written for each
    step (a run resumed from an earlier checkpoint logs its steps again)."""
    rows: dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rec = {k: (int(v) if k == "step" else float(v)) for k, v in row.items()}
            except (TypeError, ValueError):  # a row cut short by a kill
                continue
            rows[rec["step"]] = rec
    return [rows[k] for k in sorted(rows)]
