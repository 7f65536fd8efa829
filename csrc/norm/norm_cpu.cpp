// C++ CPU kernels of the fused RMSNorm family. Math in fp32, one rounding to the output dtype.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../cpu_utils.h"
#include "norm_host.h"

namespace lumina {
namespace {

// Per-(batch, column) factors, computed once instead of once per row: 1 + scale and tanh(gate).
template <typename T>
std::vector<float> per_batch(const T* v, int64_t n, bool is_gate) {
  std::vector<float> out(v ? n : 0);
  for (int64_t i = 0; v && i < n; ++i) {
    const float f = static_cast<float>(v[i]);
    out[i] = is_gate ? std::tanh(f) : 1.f + f;
  }
  return out;
}

// Rows are processed with kLanes independent fp32 accumulators: a single running sum is a serial dependency chain
// the compiler may not reorder (no fast-math), which kept these loops scalar at ~1 element per 4 cycles. Lanes are
// summed pairwise in a fixed order, so results do not depend on the thread count; the AVX2 clone (cpu_utils.h) may
// contract a multiply-add into an FMA, so it can differ from the baseline clone in the last bit.
// The scale / gate / residual flags are template parameters: the row loops have no branches.
constexpr int kLanes = 16;

LUMINA_INLINE float reduce_lanes(float* acc) {
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

template <typename T>
LUMINA_INLINE float sum_squares(const T* __restrict xr, int64_t D) {
  float acc[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float v = static_cast<float>(xr[d + j]);
      acc[j] += v * v;
    }
  float tail = 0.f;
  for (; d < D; ++d) {
    const float v = static_cast<float>(xr[d]);
    tail += v * v;
  }
  return reduce_lanes(acc) + tail;
}

// Rows [begin, end): y = x * rstd * w [* (1 + scale)] [* tanh(gate)] [+ residual], one rounding.
template <typename T, bool kScale, bool kGate, bool kRes>
LUMINA_INLINE void fwd_rows_t(const RmsNormFwdParams& p, const float* mod, const float* gat, int64_t begin,
                              int64_t end) {
  const T* __restrict x = static_cast<const T*>(p.x);
  const T* __restrict w = static_cast<const T*>(p.weight);
  const T* __restrict res = static_cast<const T*>(p.residual);
  T* __restrict out = static_cast<T*>(p.out);
  const int64_t D = p.dim;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / p.rows;
    const T* __restrict xr = x + r * D;
    const float rstd = 1.f / std::sqrt(sum_squares(xr, D) / static_cast<float>(D) + p.eps);
    p.rstd[r] = rstd;
    const float* __restrict m = kScale ? mod + b * D : nullptr;
    const float* __restrict g = kGate ? gat + b * D : nullptr;
    const T* __restrict rr = kRes ? res + r * D : nullptr;
    T* __restrict o = out + r * D;
    for (int64_t d = 0; d < D; ++d) {
      float y = static_cast<float>(xr[d]) * rstd * static_cast<float>(w[d]);
      if (kScale) y *= m[d];
      if (kGate) y *= g[d];
      if (kRes) y += static_cast<float>(rr[d]);
      o[d] = static_cast<T>(y);
    }
  }
}

template <typename T>
LUMINA_INLINE void fwd_rows_any(const RmsNormFwdParams& p, const float* mod, const float* gat, int64_t begin,
                                int64_t end) {
  switch ((p.scale ? 4 : 0) | (p.gate ? 2 : 0) | (p.residual ? 1 : 0)) {
    case 0: fwd_rows_t<T, false, false, false>(p, mod, gat, begin, end); break;
    case 1: fwd_rows_t<T, false, false, true>(p, mod, gat, begin, end); break;
    case 2: fwd_rows_t<T, false, true, false>(p, mod, gat, begin, end); break;
    case 3: fwd_rows_t<T, false, true, true>(p, mod, gat, begin, end); break;
    case 4: fwd_rows_t<T, true, false, false>(p, mod, gat, begin, end); break;
    case 5: fwd_rows_t<T, true, false, true>(p, mod, gat, begin, end); break;
    case 6: fwd_rows_t<T, true, true, false>(p, mod, gat, begin, end); break;
    default: fwd_rows_t<T, true, true, true>(p, mod, gat, begin, end); break;
  }
}

LUMINA_FMA_CLONES void fwd_rows(const RmsNormFwdParams& p, DType dtype, const float* mod, const float* gat,
                                int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::kFloat32: fwd_rows_any<float>(p, mod, gat, begin, end); break;
    case DType::kBFloat16: fwd_rows_any<c10::BFloat16>(p, mod, gat, begin, end); break;
    case DType::kFloat16: fwd_rows_any<c10::Half>(p, mod, gat, begin, end); break;
  }
}

template <typename T>
std::vector<float> per_batch_of(const void* v, int64_t n, bool is_gate) {
  return per_batch(static_cast<const T*>(v), n, is_gate);
}

void fwd_kernel(const RmsNormFwdParams& p, DType dtype) {
  const int64_t D = p.dim;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
  std::vector<float> mod, gat;
  dispatch_cpu_dtype(dtype, [&](auto t) {
    mod = per_batch_of<decltype(t)>(p.scale, p.batch * D, false);
    gat = per_batch_of<decltype(t)>(p.gate, p.batch * D, true);
  });
  at::parallel_for(0, p.batch * p.rows, grain, [&](int64_t begin, int64_t end) {
    fwd_rows(p, dtype, mod.data(), gat.data(), begin, end);
  });
}

// Backward of rows [r0, r1) of batch b into one task's partial weight / scale / gate gradients:
// dn = dy * g * m * w (d loss / d normalised input), dot = sum(dn * n) over kLanes accumulators,
// dx = rstd * (dn - n * dot / D).
template <typename T, bool kScale, bool kGate>
LUMINA_INLINE void bwd_elem(const T* __restrict xr, const T* __restrict gr, const T* __restrict w,
                            const float* __restrict m, const float* __restrict g, float rstd, int64_t d, float& dot,
                            float* __restrict dy, float* __restrict pw, float* __restrict ps, float* __restrict pg) {
  const float md = kScale ? m[d] : 1.f;
  const float gd = kGate ? g[d] : 1.f;
  const float n = static_cast<float>(xr[d]) * rstd;  // normalised input
  const float wd = static_cast<float>(w[d]);
  const float god = static_cast<float>(gr[d]);
  const float dn = god * gd * md * wd;  // d loss / d n
  dy[d] = dn;
  dot += dn * n;
  pw[d] += god * gd * md * n;
  if (kScale) ps[d] += god * gd * n * wd;
  if (kGate) pg[d] += god * md * n * wd * (1.f - gd * gd);
}

template <typename T, bool kScale, bool kGate>
LUMINA_INLINE void bwd_rows_t(const RmsNormBwdParams& p, const float* mod, const float* gat, int64_t b, int64_t r0,
                              int64_t r1, float* __restrict dy, float* __restrict pw, float* __restrict ps,
                              float* __restrict pg) {
  const T* __restrict go = static_cast<const T*>(p.grad_out);
  const T* __restrict x = static_cast<const T*>(p.x);
  const T* __restrict w = static_cast<const T*>(p.weight);
  T* __restrict gx = static_cast<T*>(p.grad_x);
  const int64_t D = p.dim;
  const float* __restrict m = kScale ? mod + b * D : nullptr;
  const float* __restrict g = kGate ? gat + b * D : nullptr;
  for (int64_t l = r0; l < r1; ++l) {
    const int64_t r = b * p.rows + l;
    const float rstd = p.rstd[r];
    const T* __restrict xr = x + r * D;
    const T* __restrict gr = go + r * D;
    float acc[kLanes] = {};
    float tail = 0.f;
    int64_t d = 0;
    for (; d + kLanes <= D; d += kLanes)
      for (int j = 0; j < kLanes; ++j)
        bwd_elem<T, kScale, kGate>(xr, gr, w, m, g, rstd, d + j, acc[j], dy, pw, ps, pg);
    for (; d < D; ++d) bwd_elem<T, kScale, kGate>(xr, gr, w, m, g, rstd, d, tail, dy, pw, ps, pg);
    const float mean_dot = (reduce_lanes(acc) + tail) / static_cast<float>(D);
    T* __restrict gxr = gx + r * D;
    for (d = 0; d < D; ++d) {
      const float n = static_cast<float>(xr[d]) * rstd;
      gxr[d] = static_cast<T>(rstd * (dy[d] - n * mean_dot));
    }
  }
}

template <typename T>
LUMINA_INLINE void bwd_rows_any(const RmsNormBwdParams& p, const float* mod, const float* gat, int64_t b,
                                int64_t r0, int64_t r1, float* dy, float* pw, float* ps, float* pg) {
  if (p.scale && p.gate) bwd_rows_t<T, true, true>(p, mod, gat, b, r0, r1, dy, pw, ps, pg);
  else if (p.scale) bwd_rows_t<T, true, false>(p, mod, gat, b, r0, r1, dy, pw, ps, pg);
  else if (p.gate) bwd_rows_t<T, false, true>(p, mod, gat, b, r0, r1, dy, pw, ps, pg);
  else bwd_rows_t<T, false, false>(p, mod, gat, b, r0, r1, dy, pw, ps, pg);
}

LUMINA_FMA_CLONES void bwd_rows(const RmsNormBwdParams& p, DType dtype, const float* mod, const float* gat,
                                int64_t b, int64_t r0, int64_t r1, float* dy, float* pw, float* ps, float* pg) {
  switch (dtype) {
    case DType::kFloat32: bwd_rows_any<float>(p, mod, gat, b, r0, r1, dy, pw, ps, pg); break;
    case DType::kBFloat16: bwd_rows_any<c10::BFloat16>(p, mod, gat, b, r0, r1, dy, pw, ps, pg); break;
    case DType::kFloat16: bwd_rows_any<c10::Half>(p, mod, gat, b, r0, r1, dy, pw, ps, pg); break;
  }
}

void bwd_kernel(const RmsNormBwdParams& p, DType dtype) {
  const int64_t D = p.dim;
  std::vector<float> mod, gat;
  dispatch_cpu_dtype(dtype, [&](auto t) {
    mod = per_batch_of<decltype(t)>(p.scale, p.batch * D, false);
    gat = per_batch_of<decltype(t)>(p.gate, p.batch * D, true);
  });
  // One task per (batch, chunk): each writes its own partial rows, so no two tasks share memory.
  at::parallel_for(0, p.batch * p.chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dy(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p.chunks, c = task % p.chunks;
      float* pw = p.partial_weight + task * D;
      float* ps = p.partial_scale ? p.partial_scale + task * D : nullptr;
      float* pg = p.partial_gate ? p.partial_gate + task * D : nullptr;
      std::fill(pw, pw + D, 0.f);
      if (ps) std::fill(ps, ps + D, 0.f);
      if (pg) std::fill(pg, pg + D, 0.f);
      const int64_t r0 = c * p.rows_per_chunk, r1 = std::min(p.rows, r0 + p.rows_per_chunk);
      bwd_rows(p, dtype, mod.data(), gat.data(), b, r0, r1, dy.data(), pw, ps, pg);
    }
  });
}

void launch_fwd_cpu(const RmsNormFwdParams& p, DType dtype) { fwd_kernel(p, dtype); }

void launch_bwd_cpu(const RmsNormBwdParams& p, DType dtype) { bwd_kernel(p, dtype); }

std::tuple<at::Tensor, at::Tensor> fused_rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& scale,
                                                      const std::optional<at::Tensor>& gate,
                                                      const std::optional<at::Tensor>& residual, double eps) {
  return fused_rms_norm_host(x, weight, scale, gate, residual, eps, launch_fwd_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rms_norm_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& gate, const at::Tensor& rstd) {
  return fused_rms_norm_backward_host(grad_out, x, weight, scale, gate, rstd, 4 * at::get_num_threads(),
                                      launch_bwd_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CPU, m) {
  m.impl("fused_rms_norm", &fused_rms_norm_cpu);
  m.impl("fused_rms_norm_backward", &fused_rms_norm_backward_cpu);
}

}  // namespace lumina
