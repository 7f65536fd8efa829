"""Loads the compiled library lumina_kernels._C, which registers the torch.ops.lumina.* ops."""
from __future__ import annotations

import warnings

import torch

LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (its static initialisers register the ops)
except (ImportError, OSError) as e:  # not built, or built against another torch
    LOAD_ERROR = f"{type(e).__name__}: {e}"
    warnings.warn(
        f"lumina_kernels._C could not be loaded ({LOAD_ERROR}); every op falls back to its PyTorch reference. "
        "Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def _parse_build_info() -> dict[str, str]:
    if LOAD_ERROR is not None:
        return {}
    lines = torch.ops.lumina.build_info().strip().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


BUILD_INFO: dict[str, str] = _parse_build_info()
HAS_CPU_KERNELS: bool = BUILD_INFO.get("cpu") == "1"
HAS_CUDA_KERNELS: bool = BUILD_INFO.get("cuda") == "1"
