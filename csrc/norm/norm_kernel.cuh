// CUDA kernels of the fused RMSNorm family (see norm_params.h for the math).
//
// A block of `threads` threads owns one row at a time; thread t holds vectors t, t + threads, ...
// (K of them, K a template parameter) in registers, so each row is read from memory once.
// The backward block walks the rows of one (batch, chunk) and keeps its columns' partial
// sums of d weight, d scale and d gate in registers, written once at the end.
#pragma once
#include "../cuda_utils.cuh"
#include "norm_cuda.h"

namespace lumina {
namespace norm_impl {

constexpr int kMaxThreads = 512;

template <typename T, int VEC, int K>
__global__ void __launch_bounds__(kMaxThreads) fwd_kernel(const RmsNormFwdParams p) {
  using V = Vec<T, VEC>;
  __shared__ float red[2][32];
  const int nvec = static_cast<int>(p.dim / VEC);
  const int64_t total_rows = p.batch * p.rows;
  const V* w = static_cast<const V*>(p.weight);
  int parity = 0;
  for (int64_t r = blockIdx.x; r < total_rows; r += gridDim.x, parity ^= 1) {
    const int64_t b = r / p.rows;
    const V* xr = static_cast<const V*>(p.x) + r * nvec;
    float xv[K][VEC];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        const V v = xr[j];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          xv[k][e] = to_float(v.v[e]);
          ss += xv[k][e] * xv[k][e];
        }
      }
    }
    ss = block_sum(ss, red[parity]);
    const float rstd = rsqrtf(ss / static_cast<float>(p.dim) + p.eps);
    if (threadIdx.x == 0) p.rstd[r] = rstd;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        const V wv = w[j];
        V sv, gv, rv, ov;
        if (p.scale) sv = static_cast<const V*>(p.scale)[b * nvec + j];
        if (p.gate) gv = static_cast<const V*>(p.gate)[b * nvec + j];
        if (p.residual) rv = static_cast<const V*>(p.residual)[r * nvec + j];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          float y = xv[k][e] * rstd * to_float(wv.v[e]);
          if (p.scale) y *= 1.f + to_float(sv.v[e]);
          if (p.gate) y *= tanhf(to_float(gv.v[e]));
          if (p.residual) y += to_float(rv.v[e]);
          ov.v[e] = from_float<T>(y);
        }
        static_cast<V*>(p.out)[r * nvec + j] = ov;
      }
    }
  }
}

template <typename T, int VEC, int K>
__global__ void __launch_bounds__(kMaxThreads) bwd_kernel(const RmsNormBwdParams p) {
  using V = Vec<T, VEC>;
  __shared__ float red[2][32];
  const int nvec = static_cast<int>(p.dim / VEC);
  const int64_t b = blockIdx.y, chunk = blockIdx.x;
  const int64_t r0 = chunk * p.rows_per_chunk;
  const int64_t r1 = r0 + p.rows_per_chunk < p.rows ? r0 + p.rows_per_chunk : p.rows;
  const V* w = static_cast<const V*>(p.weight);
  const V* scale = static_cast<const V*>(p.scale);
  const V* gate = static_cast<const V*>(p.gate);
  float acc_w[K][VEC], acc_s[K][VEC], acc_g[K][VEC];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc_w[k][e] = acc_s[k][e] = acc_g[k][e] = 0.f;

  int parity = 0;
  for (int64_t l = r0; l < r1; ++l, parity ^= 1) {
    const int64_t r = b * p.rows + l;
    const float rstd = p.rstd[r];
    float n[K][VEC], dn[K][VEC];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        const V xv = static_cast<const V*>(p.x)[r * nvec + j];
        const V gv = static_cast<const V*>(p.grad_out)[r * nvec + j];
        const V wv = w[j];
        V sv, tv;
        if (scale) sv = scale[b * nvec + j];
        if (gate) tv = gate[b * nvec + j];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          const float m = scale ? 1.f + to_float(sv.v[e]) : 1.f;
          const float g = gate ? tanhf(to_float(tv.v[e])) : 1.f;
          const float wd = to_float(wv.v[e]), go = to_float(gv.v[e]);
          n[k][e] = to_float(xv.v[e]) * rstd;
          dn[k][e] = go * g * m * wd;
          dot += dn[k][e] * n[k][e];
          acc_w[k][e] += go * g * m * n[k][e];
          acc_s[k][e] += go * g * n[k][e] * wd;
          acc_g[k][e] += go * m * n[k][e] * wd * (1.f - g * g);
        }
      }
    }
    const float mean_dot = block_sum(dot, red[parity]) / static_cast<float>(p.dim);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j < nvec) {
        V ov;
#pragma unroll
        for (int e = 0; e < VEC; ++e) ov.v[e] = from_float<T>(rstd * (dn[k][e] - n[k][e] * mean_dot));
        static_cast<V*>(p.grad_x)[r * nvec + j] = ov;
      }
    }
  }
  const int64_t task = b * p.chunks + chunk;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j < nvec) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const int64_t d = task * p.dim + static_cast<int64_t>(j) * VEC + e;
        p.partial_weight[d] = acc_w[k][e];
        if (p.partial_scale) p.partial_scale[d] = acc_s[k][e];
        if (p.partial_gate) p.partial_gate[d] = acc_g[k][e];
      }
    }
  }
}

// Picks the vector width (16 bytes when dim and all pointers allow it) and the vectors per thread.
struct LaunchShape {
  bool vectorized;
  int threads, k;
};

template <typename T>
inline bool pick_shape(int64_t dim, bool aligned, LaunchShape* s) {
  s->vectorized = aligned && dim % vec16<T>() == 0;
  const int64_t nvec = s->vectorized ? dim / vec16<T>() : dim;
  if (nvec > static_cast<int64_t>(kMaxThreads) * 8 || nvec > kNormMaxVectorsPerRow) return false;
  int64_t threads = ((nvec + 31) / 32) * 32;
  threads = threads < 32 ? 32 : (threads > kMaxThreads ? kMaxThreads : threads);
  const int64_t k = (nvec + threads - 1) / threads;
  s->threads = static_cast<int>(threads);
  s->k = k <= 1 ? 1 : k <= 2 ? 2 : k <= 4 ? 4 : 8;
  return true;
}

template <template <typename, int, int> class Launch, typename T, typename P>
cudaError_t dispatch_shape(const P& p, const LaunchShape& s, dim3 grid, cudaStream_t stream) {
  constexpr int V = vec16<T>();
  if (s.vectorized) {
    switch (s.k) {
      case 1: return Launch<T, V, 1>::run(p, grid, s.threads, stream);
      case 2: return Launch<T, V, 2>::run(p, grid, s.threads, stream);
      case 4: return Launch<T, V, 4>::run(p, grid, s.threads, stream);
      default: return Launch<T, V, 8>::run(p, grid, s.threads, stream);
    }
  }
  switch (s.k) {
    case 1: return Launch<T, 1, 1>::run(p, grid, s.threads, stream);
    case 2: return Launch<T, 1, 2>::run(p, grid, s.threads, stream);
    case 4: return Launch<T, 1, 4>::run(p, grid, s.threads, stream);
    default: return Launch<T, 1, 8>::run(p, grid, s.threads, stream);
  }
}

template <typename T, int VEC, int K>
struct FwdLaunch {
  static cudaError_t run(const RmsNormFwdParams& p, dim3 grid, int threads, cudaStream_t stream) {
    LUMINA_LAUNCH((fwd_kernel<T, VEC, K>), grid, threads, 0, stream)(p);
    return cudaGetLastError();
  }
};

template <typename T, int VEC, int K>
struct BwdLaunch {
  static cudaError_t run(const RmsNormBwdParams& p, dim3 grid, int threads, cudaStream_t stream) {
    LUMINA_LAUNCH((bwd_kernel<T, VEC, K>), grid, threads, 0, stream)(p);
    return cudaGetLastError();
  }
};

}  // namespace norm_impl

template <DType dt>
cudaError_t launch_rms_norm_fwd_cuda(const RmsNormFwdParams& p, cudaStream_t stream) {
  using T = typename CudaType<dt>::type;
  norm_impl::LaunchShape s;
  const bool aligned = aligned16(p.x) && aligned16(p.weight) && aligned16(p.scale) && aligned16(p.gate) &&
                       aligned16(p.residual) && aligned16(p.out);
  if (!norm_impl::pick_shape<T>(p.dim, aligned, &s)) return cudaErrorInvalidValue;
  const int64_t rows = p.batch * p.rows;
  const int64_t max_blocks = static_cast<int64_t>(num_sms()) * (2048 / s.threads) * 4;
  const dim3 grid(static_cast<unsigned>(rows < max_blocks ? rows : max_blocks));
  return norm_impl::dispatch_shape<norm_impl::FwdLaunch, T>(p, s, grid, stream);
}

template <DType dt>
cudaError_t launch_rms_norm_bwd_cuda(const RmsNormBwdParams& p, cudaStream_t stream) {
  using T = typename CudaType<dt>::type;
  norm_impl::LaunchShape s;
  const bool aligned = aligned16(p.x) && aligned16(p.weight) && aligned16(p.scale) && aligned16(p.gate) &&
                       aligned16(p.grad_out) && aligned16(p.grad_x);
  if (!norm_impl::pick_shape<T>(p.dim, aligned, &s)) return cudaErrorInvalidValue;
  if (p.batch > kMaxGridYZ) return cudaErrorInvalidValue;  // gridDim.y
  const dim3 grid(static_cast<unsigned>(p.chunks), static_cast<unsigned>(p.batch));
  return norm_impl::dispatch_shape<norm_impl::BwdLaunch, T>(p, s, grid, stream);
}

}  // namespace lumina
