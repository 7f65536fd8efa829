"""pytest setup of the kernel benchmarks (benchmarks/bench_*.py).

    pytest benchmarks --benchmark-only                      # CPU always, CUDA when a GPU is there
    pytest benchmarks --benchmark-only -m cuda --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json               # markdown table: median, GB/s, % of copy

pyproject's addopts carry --benchmark-skip so that a plain `pytest` skips these; --benchmark-only
overrides it.

Environment: LUMINA_BENCH_COMPILE=0 skips the torch.compile cases; LUMINA_BENCH_CPU_MAX_TIME and
LUMINA_BENCH_CUDA_MAX_TIME (seconds per benchmark, default 0.2 and 0.3); LUMINA_BENCH_CPU_THREADS
sets torch's CPU threads (CPU timings on a small shared machine are noisy: other processes on the
same cores stall torch's thread pool).
"""
from __future__ import annotations

import os
import platform

import pytest
import torch


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py as test modules (pyproject's python_files is left at pytest's default test_*.py)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    # On a CPU-only machine inductor's pool of compile workers only competes with the timed code.
    if not torch.cuda.is_available() and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        from torch._inductor import config as inductor_config

        inductor_config.compile_threads = 1
    if os.environ.get("LUMINA_BENCH_CPU_THREADS"):
        torch.set_num_threads(int(os.environ["LUMINA_BENCH_CPU_THREADS"]))
    # Each benchmark compiles the reference afresh for its device, dtype and shape; with the default
    # recompile limit (8) dynamo would give up on the shared reference functions part-way through.
    from torch._dynamo import config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["cpu_threads"] = torch.get_num_threads()
    machine_info["python"] = platform.python_version()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        machine_info["gpu"] = {"name": p.name, "sm_count": p.multi_processor_count,
                               "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)}
    try:
        import lumina_kernels

        machine_info["lumina_build"] = dict(lumina_kernels.BUILD_INFO)
        machine_info["lumina_load_error"] = lumina_kernels.LOAD_ERROR
    except Exception as e:  # pragma: no cover - the benchmarks themselves will fail loudly
        machine_info["lumina_load_error"] = f"{type(e).__name__}: {e}"
