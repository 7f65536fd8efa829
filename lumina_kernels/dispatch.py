"""Who can run what, and why not.

Every op declares its backends in order of preference (compiled CUDA, compiled C++ CPU, PyTorch
reference), each with a check that returns None when it supports the inputs or a sentence saying why
it refuses them. The dispatcher takes the first that accepts; `explain` shows the whole decision:

    >>> import lumina_kernels
    >>> print(lumina_kernels.explain("rms_norm", x, w))
    fused_rms_norm -> reference
      cuda: refused: x is on cpu, not a CUDA device
      cpu: refused: dtype torch.float64 is not one of float32, bfloat16, float16
      reference: accepted

Set LUMINA_KERNELS_DISABLE=cuda,cpu (any subset) to refuse backends by name, e.g. to compare against
the reference inside a full model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import _ext

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
Check = Callable[[dict[str, Any]], "str | None"]


@dataclass(frozen=True)
class Backend:
    name: str
    check: Check
    doc: str = ""


@dataclass
class Decision:
    op: str
    backend: str
    verdicts: list[tuple[str, str | None]] = field(default_factory=list)  # (backend, refusal reason or None)

    def __str__(self) -> str:
        lines = [f"{self.op} -> {self.backend}"]
        for name, reason in self.verdicts:
            lines.append(f"  {name}: " + ("accepted" if reason is None else f"refused: {reason}"))
        return "\n".join(lines)


def _disabled() -> set[str]:
    return {s.strip() for s in os.environ.get("LUMINA_KERNELS_DISABLE", "").split(",") if s.strip()}


class Dispatcher:
    """The ordered backends of one op."""

    def __init__(self, op: str, backends: list[Backend]):
        self.op = op
        self.backends = backends + [Backend("reference", lambda _: None, "plain PyTorch, any device and dtype")]

    def decide(self, inputs: dict[str, Any], explain: bool = False) -> Decision:
        disabled = _disabled()
        verdicts: list[tuple[str, str | None]] = []
        chosen = None
        for b in self.backends:
            if b.name in disabled and b.name != "reference":
                reason = "disabled by LUMINA_KERNELS_DISABLE"
            else:
                reason = b.check(inputs)
            verdicts.append((b.name, reason))
            if reason is None and chosen is None:
                chosen = b.name
                if not explain:
                    break
        return Decision(self.op, chosen or "reference", verdicts)


REGISTRY: dict[str, Dispatcher] = {}
# op name -> function mapping the op's call arguments to the dispatcher's input dict
INPUTS: dict[str, Callable[..., dict[str, Any]]] = {}


def register(op: str, backends: list[Backend], inputs: Callable[..., dict[str, Any]]) -> Dispatcher:
    d = Dispatcher(op, backends)
    REGISTRY[op] = d
    INPUTS[op] = inputs
    return d


def alias(name: str, op: str, inputs: Callable[..., dict[str, Any]]) -> None:
    """Let `explain(name, ...)` take the arguments of a public function that runs `op`."""
    REGISTRY[name] = REGISTRY[op]
    INPUTS[name] = inputs


def explain(op: str, *args: Any, **kwargs: Any) -> Decision:
    """Which backend `op` would run on these arguments, and why each other one was refused."""
    if op not in REGISTRY:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(REGISTRY)}")
    return REGISTRY[op].decide(INPUTS[op](*args, **kwargs), explain=True)


# Checks shared by the compiled backends. Each returns None or the reason for refusing.
def needs_extension(device_type: str) -> str | None:
    if _ext.LOAD_ERROR is not None:
        return f"lumina_kernels._C is not loaded ({_ext.LOAD_ERROR})"
    if device_type == "cuda" and not _ext.HAS_CUDA_KERNELS:
        return "this build has no CUDA kernels (torch without CUDA, no nvcc, or LUMINA_FORCE_CPU=1 at build time)"
    if device_type == "cpu" and not _ext.HAS_CPU_KERNELS:
        return "this build has no CPU kernels"
    return None


def on_device(x: torch.Tensor, device_type: str, name: str = "x") -> str | None:
    if x.device.type != device_type:
        return f"{name} is on {x.device.type}, not a {device_type.upper() if device_type == 'cuda' else device_type} device"
    return None


def compiled_for(x: torch.Tensor) -> str | None:
    """On a CUDA tensor: None when this build holds code for the GPU's architecture, else why not."""
    return _ext.arch_refusal(x.device) if x.device.type == "cuda" and _ext.LOAD_ERROR is None else None


def kernel_dtype(x: torch.Tensor, name: str = "x") -> str | None:
    if x.dtype not in KERNEL_DTYPES:
        return f"{name} has dtype {x.dtype}, not one of float32, bfloat16, float16"
    return None


def compiled_backend(device_type: str, *extra: Check) -> Check:
    """The standard check of a compiled backend on `device_type`, plus op-specific ones."""

    def check(inputs: dict[str, Any]) -> str | None:
        x = inputs["x"]
        for reason in (needs_extension(device_type), on_device(x, device_type), kernel_dtype(x), compiled_for(x)):
            if reason is not None:
                return reason
        for c in extra:
            reason = c(inputs)
            if reason is not None:
                return reason
        return None

    return check
