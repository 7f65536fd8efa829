// CUDA kernel of the rotary position embedding (see rope_params.h for the math).
//
// Each thread rotates PAIRS consecutive pairs of one head: with 16-byte accesses when the head dim
// and pointers allow (4 pairs for bf16/fp16, 2 for fp32), one pair otherwise. The table row is
// shared by every head of a position and stays in L2.
#pragma once
#include "../cuda_utils.cuh"
#include "rope_cuda.h"

namespace lumina {
namespace rope_impl {

template <typename T, int PAIRS>
__global__ void __launch_bounds__(256) rope_kernel(const RopeParams p) {
  using V = Vec<T, 2 * PAIRS>;
  using F = Vec<float, 2 * PAIRS>;
  const int64_t half = p.head_dim / 2;
  const int64_t groups_per_head = half / PAIRS;
  const int64_t total = p.batch * p.seq * p.heads * groups_per_head;
  const float sign = p.inverse ? -1.f : 1.f;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = idx % groups_per_head;
    const int64_t row = idx / groups_per_head;  // (b, l, h)
    const int64_t bl = row / p.heads;           // (b, l)
    const int64_t frow = p.freqs_per_batch ? bl : bl % p.seq;
    const F f = reinterpret_cast<const F*>(p.freqs + frow * half * 2)[g];
    const V xv = static_cast<const V*>(p.x)[idx];
    V ov;
#pragma unroll
    for (int i = 0; i < PAIRS; ++i) {
      const float c = f.v[2 * i], s = sign * f.v[2 * i + 1];
      const float x0 = to_float(xv.v[2 * i]), x1 = to_float(xv.v[2 * i + 1]);
      ov.v[2 * i] = from_float<T>(x0 * c - x1 * s);
      ov.v[2 * i + 1] = from_float<T>(x0 * s + x1 * c);
    }
    static_cast<V*>(p.out)[idx] = ov;
  }
}

template <typename T, int PAIRS>
cudaError_t launch(const RopeParams& p, cudaStream_t stream) {
  const int64_t total = p.batch * p.seq * p.heads * (p.head_dim / 2 / PAIRS);
  const int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(num_sms()) * 32;
  const int64_t blocks = (total + threads - 1) / threads;
  LUMINA_LAUNCH((rope_kernel<T, PAIRS>), static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks), threads, 0,
                stream)(p);
  return cudaGetLastError();
}

}  // namespace rope_impl

template <DType dt>
cudaError_t launch_rope_cuda(const RopeParams& p, cudaStream_t stream) {
  using T = typename CudaType<dt>::type;
  // 16 bytes of x per thread; the matching table slice (2 * PAIRS floats) must be aligned too.
  constexpr int kPairs = vec16<T>() / 2;
  const int64_t half = p.head_dim / 2;
  const bool vec_ok = half % kPairs == 0 && aligned16(p.x) && aligned16(p.out) &&
                      reinterpret_cast<uintptr_t>(p.freqs) % (2 * kPairs * sizeof(float)) == 0;
  return vec_ok ? rope_impl::launch<T, kPairs>(p, stream) : rope_impl::launch<T, 1>(p, stream);
}

}  // namespace lumina
