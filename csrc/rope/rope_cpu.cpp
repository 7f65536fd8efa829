// C++ CPU kernel of the rotary position embedding. Math in fp32, output in x's dtype.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu_utils.h"
#include "rope_host.h"

namespace lumina {
namespace {

template <typename T>
void rope_kernel(const RopeParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t half = p.head_dim / 2, H = p.heads;
  const float sign = p.inverse ? -1.f : 1.f;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(H * p.head_dim, 1));
  // One task per (batch, position): the table row is loaded once for all heads.
  at::parallel_for(0, p.batch * p.seq, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bl = begin; bl < end; ++bl) {
      const float* f = p.freqs + (p.freqs_per_batch ? bl : bl % p.seq) * half * 2;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = (bl * H + h) * p.head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float c = f[2 * i], s = sign * f[2 * i + 1];
          const float x0 = static_cast<float>(x[base + 2 * i]), x1 = static_cast<float>(x[base + 2 * i + 1]);
          out[base + 2 * i] = static_cast<T>(x0 * c - x1 * s);
          out[base + 2 * i + 1] = static_cast<T>(x0 * s + x1 * c);
        }
      }
    }
  });
}

void launch_rope_cpu(const RopeParams& p, DType dtype) {
  dispatch_cpu_dtype(dtype, [&](auto t) { rope_kernel<decltype(t)>(p); });
}

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& freqs_cis, bool inverse) {
  return rope_host(x, freqs_cis, inverse, launch_rope_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CPU, m) { m.impl("rope", &rope_cpu); }

}  // namespace lumina
