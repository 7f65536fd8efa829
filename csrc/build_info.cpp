// What was compiled into this build, and the Python module entry point of lumina_kernels._C.
#include "build_info.h"

#include "limits.h"

#include <Python.h>

#include <cstddef>
#include <sstream>

#ifndef LUMINA_CUDA_ARCH_LIST
#define LUMINA_CUDA_ARCH_LIST ""
#endif

namespace lumina {

std::string build_info() {
  std::ostringstream s;
  s << "cpu=1\n";
#ifdef LUMINA_WITH_CUDA
  s << "cuda=1\n";
  s << "cuda_archs=" << LUMINA_CUDA_ARCH_LIST << "\n";
#ifdef LUMINA_CUDA_VERSION
  s << "cuda_version=" << LUMINA_CUDA_VERSION << "\n";
#endif
#else
  s << "cuda=0\n";
#endif
#if defined(__clang__)
  s << "compiler=clang " << __clang_major__ << "." << __clang_minor__ << "\n";
#elif defined(__GNUC__)
  s << "compiler=gcc " << __GNUC__ << "." << __GNUC_MINOR__ << "\n";
#endif
  s << "cplusplus=" << __cplusplus << "\n";
  // the limits Python shares with the kernels (csrc/limits.h), printed from the constants themselves
  s << "attention_cuda_head_dims=";
  for (std::size_t i = 0; i < sizeof(kFlashHeadDims) / sizeof(kFlashHeadDims[0]); ++i)
    s << (i ? "," : "") << kFlashHeadDims[i];
  s << "\n";
  s << "cuda_max_grid_yz=" << kMaxGridYZ << "\n";
  s << "norm_cuda_max_vectors_per_row=" << kNormMaxVectorsPerRow << "\n";
  s << "solver_max_terms=" << kMaxSolverTerms << "\n";
  return s.str();
}

}  // namespace lumina

// Importing lumina_kernels._C loads this library, whose static initialisers register the ops.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "lumina kernel library", -1, nullptr};
  return PyModule_Create(&module_def);
}
