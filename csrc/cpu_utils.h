// Element-type plumbing for the C++ CPU kernels.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <utility>

#include "common.h"

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
