// Device-side helpers shared by the CUDA kernels. No ATen here: kernels see params structs only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"
#include "cuda_device.h"

namespace lumina {

// kernel<<<grid, block, smem, stream>>>, spelled LUMINA_LAUNCH(kernel, grid, block, smem, stream)(args...) so that
// the warp emulator (csrc/cuda_emulate.h, for tests on the CPU) can run the same launch code; a kernel name with
// template arguments goes in parentheses.
#ifndef LUMINA_LAUNCH
#define LUMINA_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif

template <DType dt> struct CudaType;
template <> struct CudaType<DType::kFloat32> { using type = float; };
template <> struct CudaType<DType::kBFloat16> { using type = __nv_bfloat16; };
template <> struct CudaType<DType::kFloat16> { using type = __half; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// N elements moved as one aligned load or store (16 bytes when N * sizeof(T) == 16).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Elements per 16-byte access.
template <typename T>
constexpr int vec16() { return 16 / static_cast<int>(sizeof(T)); }

inline bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

// Sum over the warp (a fixed butterfly: deterministic), returned to every lane; float or double.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (a fixed tree: deterministic), returned to every thread. `shared` holds 32 values;
// consecutive calls need distinct buffers (e.g. alternate two), since only one barrier is taken per call.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  return warp_sum(lane < nwarps ? shared[lane] : T(0));
}

}  // namespace lumina
