"""pytest setup of the kernel benchmarks (benchmarks/bench_*.py).

    pytest benchmarks --benchmark-only                      # CPU always, CUDA when a GPU is there
    pytest benchmarks --benchmark-only -m cuda --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json               # markdown table: median, GB/s, % of copy

pyproject's addopts carry --benchmark-skip so that a plain `pytest` skips these; --benchmark-only
overrides it.
"""
from __future__ import annotations

import platform

import pytest
import torch


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py as test modules (pyproject's python_files is left at pytest's default test_*.py)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    # Each benchmark compiles the reference afresh for its device, dtype and shape; with the default
    # recompile limit (8) dynamo would give up on the shared reference functions part-way through.
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))


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
