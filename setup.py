"""Builds lumina_kernels._C: the C++ CPU kernels always, the CUDA kernels when torch has CUDA and nvcc exists.

Environment:
  LUMINA_FORCE_CPU=1        build the CPU kernels only
  LUMINA_CUDA_ARCHS="9.0"   semicolon/space separated compute capabilities, "+PTX" adds PTX of that one
                            (default: the visible GPUs' architectures; with none visible "8.0;9.0+PTX")
  MAX_JOBS=N                parallel compile jobs (ninja; defaults to the CPU count)
"""
from __future__ import annotations

import glob
import os
import pathlib
import shutil

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).resolve().parent


def _find_cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit of the nvcc on PATH, else /usr/local/cuda (a wrapper script on PATH has no headers)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(pathlib.Path(os.path.realpath(nvcc)).parent.parent)
    candidates.append(pathlib.Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return str(home)
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import time.
    os.environ.setdefault("CUDA_HOME", _cuda_home)

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


# With no GPU visible and LUMINA_CUDA_ARCHS unset: machine code for sm_80 (which also runs on 8.6 and 8.9)
# and sm_90, plus sm_90 PTX for newer GPUs. The kernels need compute capability 8.0 (bf16 mma.sync).
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _visible_gpu_archs() -> str | None:
    """The visible GPUs' compute capabilities (8.0 and newer), the newest with +PTX, as torch's builder does."""
    try:
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    except Exception:  # no driver, or CUDA refuses to initialise: build the default list
        return None
    caps = [c for c in caps if c >= (8, 0)]
    if not caps:
        return None
    archs = [f"{major}.{minor}" for major, minor in caps]
    archs[-1] += "+PTX"
    return ";".join(archs)


def _cuda_archs() -> str:
    """LUMINA_CUDA_ARCHS in torch's TORCH_CUDA_ARCH_LIST form ("9.0+PTX", "8.0;9.0"); unset: the visible GPUs'
    architectures, else DEFAULT_CUDA_ARCHS."""
    spec = os.environ.get("LUMINA_CUDA_ARCHS", "").strip()
    if not spec:
        spec = _visible_gpu_archs() or DEFAULT_CUDA_ARCHS
    return ";".join(spec.replace(",", " ").replace(";", " ").split())


def _extension():
    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/**/*.cpp") if not p.name.endswith("_cuda.cpp"))
    cuda_host_sources = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/**/*_cuda.cpp"))
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/**/*.cu"))
    cxx = ["-O3", "-DNDEBUG"]
    want_cuda = (
        os.environ.get("LUMINA_FORCE_CPU", "0") not in ("1", "true", "yes")
        and torch.version.cuda is not None
        and _cuda_home is not None
    )
    if not want_cuda:
        print("lumina: building the CPU kernels only", "(LUMINA_FORCE_CPU)" if os.environ.get("LUMINA_FORCE_CPU") else
              f"(torch CUDA: {torch.version.cuda}, nvcc: {_cuda_home})")
        return CppExtension("lumina_kernels._C", cpu_sources, extra_compile_args={"cxx": cxx})

    arch_spec = _cuda_archs()
    # torch's builder turns TORCH_CUDA_ARCH_LIST into -gencode flags; ours overrides any global setting.
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_spec
    print(f"lumina: building CPU and CUDA kernels for {arch_spec} with {_cuda_home}")
    defines = ["-DLUMINA_WITH_CUDA", f'-DLUMINA_CUDA_ARCH_LIST="{arch_spec}"', f'-DLUMINA_CUDA_VERSION="{torch.version.cuda}"']
    # cuBLAS/cuSPARSE headers that some torch CUDA headers pull in live in the nvidia wheels, not the
    # toolkit. Searched after the toolkit's own headers (the wheel's cuda_runtime.h must not shadow them).
    after = [f"-idirafter{p}" for p in (pathlib.Path(d) / "nvidia" / "cu13" / "include" for d in _site_dirs()) if p.is_dir()]
    nvcc = ["-O3", "-DNDEBUG", "-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "lumina_kernels._C",
        cpu_sources + cuda_host_sources + cuda_sources,
        extra_compile_args={"cxx": cxx + defines + after, "nvcc": nvcc},
    )


def _site_dirs() -> list[str]:
    import site
    import sysconfig

    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # virtualenv's old site module
        pass
    return list(dict.fromkeys(dirs))


setup(
    packages=find_packages(include=["lumina", "lumina.*", "lumina_kernels", "lumina_kernels.*"]),
    # the bundled default model (lumina/assets/default_model: bf16 weights, config.json, pipeline config)
    package_data={"lumina": ["assets/default_model/*", "assets/default_model/transformer/*"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
