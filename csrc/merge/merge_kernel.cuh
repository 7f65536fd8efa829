// CUDA kernels of token merging (see merge_params.h): one thread per output element, consecutive
// threads along the width so that every token row is read coalesced; sums in fp32, in token order (a gather:
// deterministic, bit for bit the CPU kernel's). A width of 0 still gets one thread per cell, which writes its
// count. The explicit layout finds a cell's tokens by a binary search of the sorted ids, so a thread reads only
// its own cell's tokens; ids out of range fall outside every cell's run.
#pragma once
#include "../cuda_utils.cuh"
#include "merge_cuda.h"

namespace lumina {
namespace merge_impl {

// The first of the n sorted ids at or above c (a binary search, as std::lower_bound).
__device__ __forceinline__ int64_t lower_bound(const int64_t* ids, int64_t n, int64_t c) {
  int64_t lo = 0;
  while (n > 0) {
    const int64_t half = n / 2;
    if (ids[lo + half] < c) {
      lo += half + 1;
      n -= half + 1;
    } else {
      n = half;
    }
  }
  return lo;
}

// kCells: the explicit layout (p.sorted_ids / p.order), else the grid.
template <typename T, bool kCells>
__global__ void __launch_bounds__(256) fwd_kernel(const MergeParams p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t W = p.width, lanes = W > 0 ? W : 1, total = p.batch * p.cells * lanes;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % lanes, bc = idx / lanes, b = bc / p.cells, c = bc % p.cells;
    float acc = 0.f;
    int n = 0;
    const auto add = [&](int64_t t) {
      if (p.mask != nullptr && !p.mask[b * p.tokens + t]) return;
      if (i < W) acc += to_float(x[(b * p.tokens + t) * W + i]);
      ++n;
    };
    if constexpr (kCells) {  // the cell's run of the sorted ids, tokens in ascending order
      const int64_t* ids = p.sorted_ids + b * p.ids_stride;
      const int64_t* order = p.order + b * p.ids_stride;
      const int64_t lo = lower_bound(ids, p.tokens, c);
      const int64_t hi = lo + lower_bound(ids + lo, p.tokens - lo, c + 1);
      for (int64_t k = lo; k < hi; ++k) add(order[k]);
    } else {
      const int64_t cw = c % p.cgrid[2], ch = (c / p.cgrid[2]) % p.cgrid[1], cf = c / (p.cgrid[2] * p.cgrid[1]);
      const int64_t f1 = min(p.grid[0], (cf + 1) * p.factor[0]), h1 = min(p.grid[1], (ch + 1) * p.factor[1]),
                    w1 = min(p.grid[2], (cw + 1) * p.factor[2]);
      for (int64_t f = cf * p.factor[0]; f < f1; ++f)
        for (int64_t h = ch * p.factor[1]; h < h1; ++h)
          for (int64_t w = cw * p.factor[2]; w < w1; ++w) add((f * p.grid[1] + h) * p.grid[2] + w);
    }
    if (i < W) out[idx] = from_float<T>(n > 0 ? acc * (1.f / static_cast<float>(n)) : 0.f);
    if (i == 0) p.count[bc] = static_cast<float>(n);
  }
}

template <typename T, bool kCells>
__global__ void __launch_bounds__(256) bwd_kernel(const MergeParams p) {
  const T* g = static_cast<const T*>(p.grad_out);
  T* gx = static_cast<T*>(p.grad_x);
  const int64_t W = p.width, total = p.batch * p.tokens * W;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % W, bt = idx / W, b = bt / p.tokens, t = bt % p.tokens;
    int64_t c;
    if constexpr (kCells) {
      c = p.cell_ids[b * p.ids_stride + t];
      if (c < 0 || c >= p.cells) {  // no cell: no gradient, nothing read
        gx[idx] = from_float<T>(0.f);
        continue;
      }
    } else {
      const int64_t w = t % p.grid[2], h = (t / p.grid[2]) % p.grid[1], f = t / (p.grid[2] * p.grid[1]);
      c = ((f / p.factor[0]) * p.cgrid[1] + h / p.factor[1]) * p.cgrid[2] + w / p.factor[2];
    }
    const int64_t bc = b * p.cells + c;
    const float n = p.count[bc];
    const bool live = (p.mask == nullptr || p.mask[bt]) && n > 0.f;
    gx[idx] = from_float<T>(live ? to_float(g[bc * W + i]) * (1.f / n) : 0.f);
  }
}

template <typename Kernel>
cudaError_t launch(Kernel kernel, const MergeParams& p, int64_t total, cudaStream_t stream) {
  const int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(num_sms()) * 32;
  const int64_t blocks = (total + threads - 1) / threads;
  LUMINA_LAUNCH(kernel, static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks), threads, 0, stream)(p);
  return cudaGetLastError();
}

}  // namespace merge_impl

template <DType dt>
cudaError_t launch_merge_fwd_cuda(const MergeParams& p, cudaStream_t stream) {
  using T = typename CudaType<dt>::type;
  const int64_t total = p.batch * p.cells * (p.width > 0 ? p.width : 1);
  if (p.sorted_ids != nullptr) return merge_impl::launch(merge_impl::fwd_kernel<T, true>, p, total, stream);
  return merge_impl::launch(merge_impl::fwd_kernel<T, false>, p, total, stream);
}

template <DType dt>
cudaError_t launch_merge_bwd_cuda(const MergeParams& p, cudaStream_t stream) {
  using T = typename CudaType<dt>::type;
  const int64_t total = p.batch * p.tokens * p.width;
  if (p.cell_ids != nullptr) return merge_impl::launch(merge_impl::bwd_kernel<T, true>, p, total, stream);
  return merge_impl::launch(merge_impl::bwd_kernel<T, false>, p, total, stream);
}

}  // namespace lumina
