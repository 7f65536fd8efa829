// CUDA kernels of the fused solver-step ops (see solver_params.h for the rounding contract).
//
// solver_update: grid-stride over 16-byte vectors of the state (4 float32 or 2 float64), every k read with the
// matching vector width when all pointers allow it, one element at a time otherwise; each term one fused
// multiply-add (__fma_rn, never re-associated).
// cfg_combine: one grid-stride pass, vectorised the same way; with renorm first a reduction kernel (one block of
// 256 threads per (sample, chunk), double sums, a fixed shuffle tree: deterministic) and one thread per sample
// summing its chunks in order. Explicit _rn intrinsics keep each rounding where the contract puts it.
#pragma once
#include <type_traits>

#include "../cuda_utils.cuh"
#include "solver_cuda.h"

namespace lumina {

template <SolverType t> struct SolverCudaType;
template <> struct SolverCudaType<SolverType::kFloat32> { using type = float; };
template <> struct SolverCudaType<SolverType::kFloat64> { using type = double; };
template <> struct SolverCudaType<SolverType::kBFloat16> { using type = __nv_bfloat16; };
template <> struct SolverCudaType<SolverType::kFloat16> { using type = __half; };

namespace solver_impl {

constexpr int kThreads = 256;

// Conversion to the compute type: exact, except float64 into float32 (round to nearest, as Tensor.to does).
__device__ __forceinline__ float as_float(float v) { return v; }
__device__ __forceinline__ float as_float(double v) { return __double2float_rn(v); }
__device__ __forceinline__ float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float as_float(__half v) { return __half2float(v); }
__device__ __forceinline__ double as_double(double v) { return v; }
template <typename K>
__device__ __forceinline__ double as_double(K v) { return static_cast<double>(as_float(v)); }

template <typename A, typename K>
__device__ __forceinline__ A convert(K v) {
  if constexpr (std::is_same_v<A, double>) {
    return as_double(v);
  } else {
    return as_float(v);
  }
}

__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }

inline bool aligned_to(const void* p, size_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline unsigned grid_for(int64_t work) {
  const int64_t max_blocks = static_cast<int64_t>(num_sms()) * 32;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks);
}

// ---------------------------------------------------------------------------------------------------------
// solver_update
// ---------------------------------------------------------------------------------------------------------
template <typename A, typename K, int V>
__global__ void __launch_bounds__(kThreads) update_kernel(const SolverUpdateParams p) {
  A alpha[kMaxSolverTerms];
#pragma unroll
  for (int t = 0; t < kMaxSolverTerms; ++t) alpha[t] = static_cast<A>(p.alpha[t]);
  const int64_t nvec = p.n / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t idx = first; idx < nvec; idx += stride) {
    Vec<A, V> acc = static_cast<const Vec<A, V>*>(p.x)[idx];
#pragma unroll
    for (int t = 0; t < kMaxSolverTerms; ++t) {
      if (t < p.terms) {
        const Vec<K, V> k = static_cast<const Vec<K, V>*>(p.ks[t])[idx];
#pragma unroll
        for (int e = 0; e < V; ++e) acc.v[e] = fma_rn(alpha[t], convert<A>(k.v[e]), acc.v[e]);
      }
    }
    static_cast<Vec<A, V>*>(p.out)[idx] = acc;
  }
  for (int64_t i = nvec * V + first; i < p.n; i += stride) {  // the last n % V elements
    A acc = static_cast<const A*>(p.x)[i];
#pragma unroll
    for (int t = 0; t < kMaxSolverTerms; ++t) {
      if (t < p.terms) acc = fma_rn(alpha[t], convert<A>(static_cast<const K*>(p.ks[t])[i]), acc);
    }
    static_cast<A*>(p.out)[i] = acc;
  }
}

// ---------------------------------------------------------------------------------------------------------
// cfg_combine
// ---------------------------------------------------------------------------------------------------------
template <typename C>
struct CfgCoef {
  C w, w1;  // scale, scale - 1 (exact for |scale| >= 0.5)
  bool small;
  int64_t guided, inner, channels;

  __device__ __forceinline__ explicit CfgCoef(const CfgParams& p)
      : w(static_cast<C>(p.scale)),
        w1(static_cast<C>(p.scale) - C(1)),
        small(static_cast<C>(p.scale) < C(0.5) && static_cast<C>(p.scale) > C(-0.5)),
        guided(p.guided), inner(p.inner), channels(p.channels) {}

  // v of one element; e is its index within its sample.
  __device__ __forceinline__ C value(C c, C u, int64_t e) const {
    if (guided < 0) {  // torch.lerp(u, c, w)
      const C d = sub_rn(c, u);
      return small ? fma_rn(w, d, u) : fma_rn(w1, d, c);
    }
    if ((e / inner) % channels >= guided) return c;
    return add_rn(u, mul_rn(w, sub_rn(c, u)));
  }
};

template <typename C>
__device__ __forceinline__ C cfg_factor(const CfgParams& p, int64_t b) {
  return p.ratio != nullptr ? static_cast<C>(p.ratio[b]) : C(1);
}

template <typename T, typename C, int V>
__global__ void __launch_bounds__(kThreads) cfg_apply_kernel(const CfgParams p) {
  const CfgCoef<C> k(p);
  const int64_t nvec = p.batch * p.per / V;  // V divides per (and inner in the channel mode): no vector straddles
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < nvec;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t flat = idx * V, b = flat / p.per, e = flat % p.per;
    const Vec<T, V> cv = static_cast<const Vec<T, V>*>(p.cond)[idx];
    const Vec<T, V> uv = static_cast<const Vec<T, V>*>(p.uncond)[idx];
    const C r = cfg_factor<C>(p, b);
    Vec<C, V> ov;
#pragma unroll
    for (int l = 0; l < V; ++l) {
      const C v = k.value(convert<C>(cv.v[l]), convert<C>(uv.v[l]), e + l);
      ov.v[l] = p.ratio != nullptr ? mul_rn(v, r) : v;
    }
    static_cast<Vec<C, V>*>(p.out)[idx] = ov;
  }
}

template <typename T, typename C>
__global__ void __launch_bounds__(kThreads) cfg_norm_kernel(const CfgParams p) {
  __shared__ double red[2][32];
  const CfgCoef<C> k(p);
  const T* cond = static_cast<const T*>(p.cond);
  const T* uncond = static_cast<const T*>(p.uncond);
  for (int64_t bj = blockIdx.x; bj < p.batch * p.chunks; bj += gridDim.x) {
    const int64_t b = bj / p.chunks, e0 = (bj % p.chunks) * p.chunk;
    const int64_t e1 = min(p.per, e0 + p.chunk);
    double sv = 0.0, sc = 0.0;
    for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
      const C c = convert<C>(cond[b * p.per + e]), u = convert<C>(uncond[b * p.per + e]);
      const double v = static_cast<double>(k.value(c, u, e)), cd = static_cast<double>(c);
      sv = __fma_rn(v, v, sv);
      sc = __fma_rn(cd, cd, sc);
    }
    sv = block_sum(sv, red[0]);
    sc = block_sum(sc, red[1]);
    if (threadIdx.x == 0) {
      p.partial[bj * 2] = sv;
      p.partial[bj * 2 + 1] = sc;
    }
    __syncthreads();  // red is reused by the next (sample, chunk)
  }
}

template <typename C>
__global__ void __launch_bounds__(kThreads) cfg_ratio_kernel(const CfgParams p) {
  for (int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; b < p.batch;
       b += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double sv = 0.0, sc = 0.0;
    for (int64_t j = 0; j < p.chunks; ++j) {
      sv += p.partial[(b * p.chunks + j) * 2];
      sc += p.partial[(b * p.chunks + j) * 2 + 1];
    }
    const C norm_v = static_cast<C>(sqrt(sv)), norm_c = static_cast<C>(sqrt(sc));
    const C max_norm = mul_rn(static_cast<C>(p.renorm), norm_c);
    // the smallest normal number of C (torch.finfo(dtype).tiny)
    const C tiny = std::is_same_v<C, double> ? static_cast<C>(2.2250738585072014e-308)
                                             : static_cast<C>(1.17549435e-38f);
    p.ratio[b] = norm_v > max_norm ? static_cast<double>(max_norm / (norm_v > tiny ? norm_v : tiny)) : 1.0;
  }
}

}  // namespace solver_impl

template <SolverType state, SolverType kt>
cudaError_t launch_solver_update_cuda(const SolverUpdateParams& p, cudaStream_t stream) {
  using A = typename SolverCudaType<state>::type;
  using K = typename SolverCudaType<kt>::type;
  constexpr int V = 16 / static_cast<int>(sizeof(A));
  bool vec = solver_impl::aligned_to(p.x, sizeof(A) * V) && solver_impl::aligned_to(p.out, sizeof(A) * V);
  for (int t = 0; t < p.terms; ++t) vec = vec && solver_impl::aligned_to(p.ks[t], sizeof(K) * V);
  if (vec) {
    LUMINA_LAUNCH((solver_impl::update_kernel<A, K, V>), solver_impl::grid_for(p.n / V), solver_impl::kThreads, 0,
                  stream)(p);
  } else {
    LUMINA_LAUNCH((solver_impl::update_kernel<A, K, 1>), solver_impl::grid_for(p.n), solver_impl::kThreads, 0, stream)(p);
  }
  return cudaGetLastError();
}

template <SolverType input>
cudaError_t launch_cfg_combine_cuda(const CfgParams& p, cudaStream_t stream) {
  using T = typename SolverCudaType<input>::type;
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  constexpr int V = 16 / static_cast<int>(sizeof(C));
  using namespace solver_impl;
  if (p.renorm > 0) {
    const int64_t blocks = p.batch * p.chunks, max_blocks = static_cast<int64_t>(num_sms()) * 32;
    LUMINA_LAUNCH((cfg_norm_kernel<T, C>), static_cast<unsigned>(blocks < max_blocks ? blocks : max_blocks), kThreads, 0,
                  stream)(p);
    LUMINA_LAUNCH(cfg_ratio_kernel<C>, grid_for(p.batch), kThreads, 0, stream)(p);
  }
  const bool vec = p.per % V == 0 && (p.guided < 0 || p.inner % V == 0) && aligned_to(p.cond, sizeof(T) * V) &&
                   aligned_to(p.uncond, sizeof(T) * V) && aligned_to(p.out, sizeof(C) * V);
  if (vec) {
    LUMINA_LAUNCH((cfg_apply_kernel<T, C, V>), grid_for(p.batch * p.per / V), kThreads, 0, stream)(p);
  } else {
    LUMINA_LAUNCH((cfg_apply_kernel<T, C, 1>), grid_for(p.batch * p.per), kThreads, 0, stream)(p);
  }
  return cudaGetLastError();
}

}  // namespace lumina
