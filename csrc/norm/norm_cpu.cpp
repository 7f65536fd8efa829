// C++ CPU kernels of the fused RMSNorm family. Math in fp32, one rounding to the output dtype.
#include <ATen/Parallel.h>
#include <torch/library.h>

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

template <typename T>
void fwd_kernel(const RmsNormFwdParams& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* scale = static_cast<const T*>(p.scale);
  const T* gate = static_cast<const T*>(p.gate);
  const T* res = static_cast<const T*>(p.residual);
  T* out = static_cast<T*>(p.out);
  const int64_t D = p.dim;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
  const std::vector<float> mod = per_batch(scale, p.batch * D, false), gat = per_batch(gate, p.batch * D, true);
  at::parallel_for(0, p.batch * p.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / p.rows;
      const T* xr = x + r * D;
      float ss = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        const float v = static_cast<float>(xr[d]);
        ss += v * v;
      }
      const float rstd = 1.f / std::sqrt(ss / static_cast<float>(D) + p.eps);
      p.rstd[r] = rstd;
      T* o = out + r * D;
      for (int64_t d = 0; d < D; ++d) {
        float y = static_cast<float>(xr[d]) * rstd * static_cast<float>(w[d]);
        if (scale) y *= mod[b * D + d];
        if (gate) y *= gat[b * D + d];
        if (res) y += static_cast<float>(res[r * D + d]);
        o[d] = static_cast<T>(y);
      }
    }
  });
}

template <typename T>
void bwd_kernel(const RmsNormBwdParams& p) {
  const T* go = static_cast<const T*>(p.grad_out);
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* scale = static_cast<const T*>(p.scale);
  const T* gate = static_cast<const T*>(p.gate);
  T* gx = static_cast<T*>(p.grad_x);
  const int64_t D = p.dim;
  const std::vector<float> mod = per_batch(scale, p.batch * D, false), gat = per_batch(gate, p.batch * D, true);
  // One task per (batch, chunk): each writes its own partial rows, so no two tasks share memory.
  at::parallel_for(0, p.batch * p.chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dy(D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p.chunks, c = task % p.chunks;
      float* pw = p.partial_weight + task * D;
      float* ps = p.partial_scale ? p.partial_scale + task * D : nullptr;
      float* pg = p.partial_gate ? p.partial_gate + task * D : nullptr;
      for (int64_t d = 0; d < D; ++d) {
        pw[d] = 0.f;
        if (ps) ps[d] = 0.f;
        if (pg) pg[d] = 0.f;
      }
      const int64_t r0 = c * p.rows_per_chunk, r1 = std::min(p.rows, r0 + p.rows_per_chunk);
      for (int64_t l = r0; l < r1; ++l) {
        const int64_t r = b * p.rows + l;
        const float rstd = p.rstd[r];
        const T* xr = x + r * D;
        const T* gr = go + r * D;
        float dot = 0.f;
        for (int64_t d = 0; d < D; ++d) {
          const float m = scale ? mod[b * D + d] : 1.f;
          const float g = gate ? gat[b * D + d] : 1.f;
          const float n = static_cast<float>(xr[d]) * rstd;       // normalised input
          const float wd = static_cast<float>(w[d]);
          const float gd = static_cast<float>(gr[d]);
          const float dn = gd * g * m * wd;                       // d loss / d n
          dy[d] = dn;
          dot += dn * n;
          pw[d] += gd * g * m * n;
          if (ps) ps[d] += gd * g * n * wd;
          if (pg) pg[d] += gd * m * n * wd * (1.f - g * g);
        }
        const float mean_dot = dot / static_cast<float>(D);
        for (int64_t d = 0; d < D; ++d) {
          const float n = static_cast<float>(xr[d]) * rstd;
          gx[r * D + d] = static_cast<T>(rstd * (dy[d] - n * mean_dot));
        }
      }
    }
  });
}

void launch_fwd_cpu(const RmsNormFwdParams& p, DType dtype) {
  dispatch_cpu_dtype(dtype, [&](auto t) { fwd_kernel<decltype(t)>(p); });
}

void launch_bwd_cpu(const RmsNormBwdParams& p, DType dtype) {
  dispatch_cpu_dtype(dtype, [&](auto t) { bwd_kernel<decltype(t)>(p); });
}

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
