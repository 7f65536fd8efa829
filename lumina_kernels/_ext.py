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
    index = torch.cuda.current_device() if device is None else torch.device("cuda", device).index
    if isinstance(device, torch.device) and device.index is None:
        index = torch.cuda.current_device()
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
