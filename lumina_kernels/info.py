"""`python -m lumina_kernels.info`: what this build holds and which backend runs each op.

Prints the compiled backends (CPU, CUDA and its archs), the torch / CUDA versions, the GPU if any,
and for each op on each available device and kernel dtype, the backend the dispatcher picks (and why
it refused the faster ones).
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import _ext, dispatch
from . import ops  # noqa: F401  (registers the dispatchers)
from .testing import rope_table

# op name -> builds example arguments (device, dtype) for the dispatcher
EXAMPLES = {
    "fused_rms_norm": lambda dev, dt: (torch.empty(2, 16, 2304, device=dev, dtype=dt),
                                       torch.empty(2304, device=dev, dtype=dt)),
    "apply_rope": lambda dev, dt: (torch.empty(2, 16, 32, 72, device=dev, dtype=dt), rope_table(16, 72, device=dev)),
    "attention": lambda dev, dt: (torch.empty(2, 256, 32, 72, device=dev, dtype=dt),
                                  torch.empty(2, 256, 8, 72, device=dev, dtype=dt),
                                  torch.empty(2, 256, 8, 72, device=dev, dtype=dt)),
    # a float32 solver state, velocities in the model's dtype
    "solver_update": lambda dev, dt: (torch.empty(2, 16, 128, 128, device=dev),
                                      [torch.empty(2, 16, 128, 128, device=dev, dtype=dt)]),
    "cfg_combine": lambda dev, dt: (torch.empty(2, 16, 128, 128, device=dev, dtype=dt),
                                    torch.empty(2, 16, 128, 128, device=dev, dtype=dt)),
}


def report(verbose: bool = False) -> str:
    lines = ["lumina_kernels"]
    if _ext.LOAD_ERROR is not None:
        lines.append(f"  compiled library: NOT LOADED ({_ext.LOAD_ERROR})")
    else:
        b = _ext.BUILD_INFO
        lines.append(f"  compiled library: {_ext.__name__.rsplit('.', 1)[0]}._C")
        lines.append(f"  CPU kernels:  {'yes' if _ext.HAS_CPU_KERNELS else 'no'} ({b.get('compiler', '?')}, "
                     f"C++ {b.get('cplusplus', '?')})")
        if _ext.HAS_CUDA_KERNELS:
            lines.append(f"  CUDA kernels: yes, archs {b.get('cuda_archs', '?')}, built with CUDA {b.get('cuda_version', '?')}")
        else:
            lines.append("  CUDA kernels: no")
    lines.append(f"  torch {torch.__version__}, CUDA runtime {torch.version.cuda or 'none'}, python {sys.version.split()[0]}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(f"  GPU: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    else:
        lines.append("  GPU: none visible")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    lines.append("")
    lines.append(f"  {'op':<16} {'device':<6} {'dtype':<9} backend")
    for op, make in EXAMPLES.items():
        for dev in devices:
            for dt in dispatch.KERNEL_DTYPES:
                d = dispatch.explain(op, *make(dev, dt))
                why = "" if d.backend != "reference" else "  (" + "; ".join(
                    f"{n}: {r}" for n, r in d.verdicts if r is not None and n != "reference") + ")"
                lines.append(f"  {op:<16} {dev:<6} {str(dt).replace('torch.', ''):<9} {d.backend}{why}")
                if verbose:
                    lines.extend("      " + line for line in str(d).splitlines()[1:])
    return "\n".join(lines)


def cuda_problem(require_gpu: bool = True) -> str | None:
    """None when the compiled CUDA kernels can run here, else what is missing: the library, its CUDA kernels, a
    visible GPU (unless `require_gpu` is False), or code for that GPU's architecture."""
    problem = dispatch.needs_extension("cuda")
    if problem is not None:
        return problem
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU" if require_gpu else None
    return _ext.arch_refusal(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lumina_kernels.info", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true", help="show every backend's verdict")
    ap.add_argument("--require-cuda", action="store_true",
                    help="exit 1, saying why, unless the CUDA kernels are built, loaded and run on the visible GPU")
    args = ap.parse_args(argv)
    print(report(args.verbose))
    if args.require_cuda:
        problem = cuda_problem()
        if problem is not None:
            print(f"\nFAILED (--require-cuda): {problem}")
            return 1
        print("\nCUDA kernels: ready on this GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
