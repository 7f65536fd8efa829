// Element-type plumbing for the C++ CPU kernels.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <utility>

#include "common.h"

// On x86-64 Linux with GCC, a function marked LUMINA_FMA_CLONES is compiled twice, for x86-64-v3 (AVX2 + FMA) and
// for the baseline, and the loader picks one; helpers it calls must be LUMINA_INLINE so each clone gets its own
// vectorised copy (lambdas and out-of-line templates would stay baseline). Elsewhere both are plain.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define LUMINA_FMA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define LUMINA_INLINE inline __attribute__((always_inline))
#else
#define LUMINA_FMA_CLONES
#define LUMINA_INLINE inline
#endif

namespace lumina {

// Calls f(T{}) with T the C++ element type named by `dtype`.
template <typename F>
void dispatch_cpu_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kBFloat16: f(c10::BFloat16{}); break;
    case DType::kFloat16: f(c10::Half{}); break;
  }
}

}  // namespace lumina
