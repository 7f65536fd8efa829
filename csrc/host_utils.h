// Host-side helpers shared by every op's checks: they name the argument and what was expected.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common.h"

namespace lumina {

// The element type a kernel sees for a tensor; errors name the argument for anything else.
inline DType kernel_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      TORCH_CHECK(false, "lumina: `", name, "` must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "lumina: `", name, "` must be contiguous (got strides ", t.strides(),
              " for shape ", t.sizes(), "); call .contiguous() first");
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "lumina: `", name, "` is on ", t.device(), " but `", ref_name, "` is on ",
              ref.device(), "; both must be on the same device");
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "lumina: `", name, "` has dtype ", t.scalar_type(), " but `",
              ref_name, "` has dtype ", ref.scalar_type(), "; they must match");
}

// A same-dtype, same-device, contiguous companion of `ref` (weights, modulation vectors, residuals).
inline void check_companion(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  check_same_device(t, name, ref, ref_name);
  check_same_dtype(t, name, ref, ref_name);
  check_contiguous(t, name);
}

}  // namespace lumina
