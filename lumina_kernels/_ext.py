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

# Limits of the compiled kernels that Python needs too, as build_info prints them from the C++ constants of
# csrc/limits.h. These fallbacks, the same values, serve only when the library is not loaded (every op then runs
# its reference, so they only shape `explain`'s messages); tests/test_build.py checks they equal the build's.
LIMIT_FALLBACKS: dict[str, "int | tuple[int, ...]"] = {
    "attention_cuda_head_dims": (64, 72, 96, 128),  # kFlashHeadDims: head dims with a flash-attention instance
    "cuda_max_grid_yz": 65535,  # kMaxGridYZ: gridDim.y / gridDim.z (attention heads and batch, norm backward batch)
    "norm_cuda_max_vectors_per_row": 4096,  # kNormMaxVectorsPerRow: the CUDA RMSNorm's widest row, in vectors
    "solver_max_terms": 7,  # kMaxSolverTerms: most ks of one solver_update
}


def _limit(key: str) -> "int | tuple[int, ...]":
    fallback = LIMIT_FALLBACKS[key]
    if key not in BUILD_INFO:  # not loaded (or a library built before the limits were printed)
        return fallback
    if isinstance(fallback, tuple):
        return tuple(int(v) for v in BUILD_INFO[key].split(",") if v.strip())
    return int(BUILD_INFO[key])


LIMITS: dict[str, "int | tuple[int, ...]"] = {key: _limit(key) for key in LIMIT_FALLBACKS}


def _parse_archs(spec: str) -> list[tuple[int, int, bool, bool]]:
    """'8.0;9.0+PTX' -> [(8, 0, arch_specific, ptx), ...] (arch_specific: a '9.0a'-style target)."""
    out = []
    for item in spec.replace(",", " ").replace(";", " ").split():
        ptx = item.endswith("+PTX")
        item = item.removesuffix("+PTX")
        specific = item.endswith("a")
        major, _, minor = item.removesuffix("a").partition(".")
        try:
            out.append((int(major), int(minor or 0), specific, ptx))
        except ValueError:
            continue
    return out


def arch_runs_on(spec: str, major: int, minor: int) -> bool:
    """Can a build for `spec` (TORCH_CUDA_ARCH_LIST form) run on a GPU of compute capability major.minor?
    Machine code for X.Y runs on X.Z with Z >= Y ('X.Ya' only on X.Y itself); PTX for X.Y is compiled by the
    driver for any X'.Y' >= X.Y."""
    for a_major, a_minor, specific, ptx in _parse_archs(spec):
        if specific:
            if (a_major, a_minor) == (major, minor):
                return True
        elif a_major == major and minor >= a_minor:
            return True
        if ptx and (major, minor) >= (a_major, a_minor):
            return True
    return False


_ARCH_REFUSALS: dict[int, "str | None"] = {}


def arch_refusal(device: "torch.device | int | None" = None) -> "str | None":
    """None when this build's CUDA kernels run on `device`'s GPU, else the reason and what to rebuild with."""
    if isinstance(device, int):
        index = device
    else:  # None, "cuda", "cuda:1" or a torch.device (the dispatcher passes a tensor's .device)
        index = None if device is None else torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
    if index not in _ARCH_REFUSALS:
        spec = BUILD_INFO.get("cuda_archs", "")
        major, minor = torch.cuda.get_device_capability(index)
        reason = None
        if not arch_runs_on(spec, major, minor):
            name = torch.cuda.get_device_name(index)
            reason = (f"this build's CUDA kernels are for compute capability {spec or '?'}, which cannot run on "
                      f"{name} ({major}.{minor}); rebuild with LUMINA_CUDA_ARCHS={major}.{minor} (or leave it unset "
                      "on a machine that sees the GPU: the build then targets it)")
        _ARCH_REFUSALS[index] = reason
    return _ARCH_REFUSALS[index]
