// Host-side CUDA helpers for the op files: the current stream, a device guard, and error reporting.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "common.h"
#include "cuda_device.h"

namespace lumina {

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "lumina: CUDA kernel of `", op, "` failed to launch: ", cudaGetErrorString(err));
}

// Calls f(std::integral_constant-like tag) for the DType; used to pick a launcher instance.
template <template <DType> class Fn, typename... Args>
cudaError_t dispatch_cuda_dtype(DType dtype, Args&&... args) {
  switch (dtype) {
    case DType::kFloat32: return Fn<DType::kFloat32>::run(std::forward<Args>(args)...);
    case DType::kBFloat16: return Fn<DType::kBFloat16>::run(std::forward<Args>(args)...);
    case DType::kFloat16: return Fn<DType::kFloat16>::run(std::forward<Args>(args)...);
  }
  return cudaErrorInvalidValue;
}

}  // namespace lumina
