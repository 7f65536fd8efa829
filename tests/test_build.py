"""The build itself: what was compiled, the registry, generated sources, the info command."""
import pathlib
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


def test_generated_instances_are_current():
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        import gen_instances
    finally:
        sys.path.pop(0)
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
