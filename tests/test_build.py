"""The build itself: what was compiled, the registry, generated sources, the info command."""
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

import lumina_kernels as lk

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _nvcc_available() -> bool:
    import os

    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return bool(shutil.which("nvcc") or (home and pathlib.Path(home, "bin", "nvcc").exists())
                or pathlib.Path("/usr/local/cuda/bin/nvcc").exists())


def test_extension_is_loaded_with_cpu_kernels():
    assert lk.LOAD_ERROR is None, lk.LOAD_ERROR
    assert lk.HAS_CPU_KERNELS


@pytest.mark.skipif(torch.version.cuda is None or not _nvcc_available(), reason="torch without CUDA, or no nvcc")
def test_cuda_kernels_were_compiled_in_this_build():
    import os

    if os.environ.get("LUMINA_FORCE_CPU") == "1":
        pytest.skip("LUMINA_FORCE_CPU=1")
    assert lk.HAS_CUDA_KERNELS, f"torch has CUDA {torch.version.cuda} and nvcc exists, but build_info says {lk.BUILD_INFO}"
    assert lk.BUILD_INFO["cuda_archs"]
    so = pathlib.Path(lk._ext._C.__file__).read_bytes()
    assert b".nv_fatbin" in so, "the library holds no CUDA device code"
    for arch in lk.BUILD_INFO["cuda_archs"].replace("+PTX", "").split(";"):
        assert f"sm_{arch.replace('.', '')}".encode() in so, f"no code for sm_{arch}"


def test_every_op_is_registered_in_the_lumina_namespace():
    for name in ["fused_rms_norm", "fused_rms_norm_backward", "rope", "attention_fwd", "attention_bwd", "merge_tokens",
                 "merge_tokens_backward", "merge_tokens_cells", "merge_tokens_cells_backward", "solver_update",
                 "cfg_combine", "build_info"]:
        assert hasattr(torch.ops.lumina, name), name
    # every schema lives in csrc/registry.cpp, and nowhere else
    defs = [p for p in (ROOT / "csrc").rglob("*.c*") if "m.def(" in p.read_text()]
    assert [p.name for p in defs] == ["registry.cpp"]


def _gen_instances():
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        import gen_instances
    finally:
        sys.path.pop(0)
    return gen_instances


def test_generated_instances_are_current():
    gen_instances = _gen_instances()
    for path, text in gen_instances.expected_files().items():
        assert path.exists() and path.read_text() == text, f"{path} is stale: run python csrc/gen_instances.py"
    on_disk = set((ROOT / "csrc").rglob("instances/*.cu"))
    assert on_disk == set(gen_instances.expected_files()), "instance files not produced by the generator"


def test_info_command_reports_backends():
    out = subprocess.run([sys.executable, "-m", "lumina_kernels.info"], capture_output=True, text=True, check=True).stdout
    assert "CPU kernels:  yes" in out
    assert ("CUDA kernels: yes" in out) == lk.HAS_CUDA_KERNELS
    assert "fused_rms_norm   cpu    bfloat16  cpu" in out
    assert "apply_rope       cpu    float32   cpu" in out


def test_explain_accepts_public_names():
    x, w = torch.randn(2, 3, 8), torch.randn(8)
    assert lk.explain("rms_norm", x, w).backend == "cpu"
    assert lk.explain("modulated_rms_norm", x, w, torch.randn(2, 8)).backend == "cpu"
    assert lk.explain("gated_rms_norm_residual", x, x, w, torch.randn(2, 8)).backend == "cpu"
    with pytest.raises(ValueError, match="unknown op"):
        lk.explain("nope", x)


def test_shared_limits_are_read_from_build_info():
    """The limits C++ and Python share live in csrc/limits.h; build_info prints them (CPU-only builds too), Python
    uses the printed values, its fallbacks for an unloaded library equal them, and the generator agrees."""
    from lumina_kernels import _ext, ops

    printed = {key: lk.BUILD_INFO.get(key) for key in ("attention_cuda_head_dims", "cuda_max_grid_yz",
                                                        "norm_cuda_max_vectors_per_row", "solver_max_terms")}
    assert None not in printed.values(), f"build_info lacks a limit: {lk.BUILD_INFO}"
    assert set(_ext.LIMIT_FALLBACKS) == set(printed)
    head_dims = tuple(int(v) for v in printed["attention_cuda_head_dims"].split(","))
    parsed = {"attention_cuda_head_dims": head_dims, "cuda_max_grid_yz": int(printed["cuda_max_grid_yz"]),
              "norm_cuda_max_vectors_per_row": int(printed["norm_cuda_max_vectors_per_row"]),
              "solver_max_terms": int(printed["solver_max_terms"])}
    assert _ext.LIMITS == parsed
    assert _ext.LIMIT_FALLBACKS == parsed, "the fallbacks in lumina_kernels/_ext.py differ from csrc/limits.h"
    # what the Python layer uses
    assert ops.CUDA_HEAD_DIMS == head_dims
    assert ops.CUDA_MAX_GRID_YZ == ops.norm.CUDA_MAX_GRID_YZ == parsed["cuda_max_grid_yz"]
    assert ops.NORM_CUDA_MAX_VECTORS_PER_ROW == parsed["norm_cuda_max_vectors_per_row"]
    assert ops.MAX_SOLVER_TERMS == parsed["solver_max_terms"]
    # what csrc/gen_instances.py generates: one flash-attention instance per compiled head dim
    gen_instances = _gen_instances()
    assert gen_instances.HEAD_DIMS == head_dims
    dims = {int(m.group(1)) for path in gen_instances.expected_files()
            if (m := re.fullmatch(r"attention_(?:fwd|bwd)_(?:bf16|f16)_d(\d+)\.cu", path.name))}
    assert dims == set(head_dims)


def test_shared_limits_fall_back_without_the_library():
    """With lumina_kernels._C not loadable, the limits are the documented fallbacks and the ops run the reference."""
    code = (
        "import sys, warnings; sys.modules['lumina_kernels._C'] = None; warnings.simplefilter('ignore')\n"
        "import torch, lumina_kernels as lk\n"
        "from lumina_kernels import _ext, ops\n"
        "assert lk.LOAD_ERROR is not None and _ext.LIMITS == _ext.LIMIT_FALLBACKS\n"
        "assert ops.CUDA_HEAD_DIMS == _ext.LIMIT_FALLBACKS['attention_cuda_head_dims']\n"
        "x, w = torch.randn(2, 3, 8), torch.randn(8)\n"
        "assert lk.explain('rms_norm', x, w).backend == 'reference'\n"
        "torch.testing.assert_close(lk.rms_norm(x, w), lk.reference.fused_rms_norm(x, w, None, None, None, 1e-5))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
