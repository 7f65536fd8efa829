// C++ CPU kernel of the rotary position embedding. Math in fp32, output in x's dtype.
#include <ATen/Parallel.h>
#include <algorithm>
#include <torch/library.h>

#include "../cpu_utils.h"
#include "rope_host.h"

namespace lumina {
namespace {

// Positions [begin, end) of (batch * seq): each (x[2i], x[2i+1]) pair rotated by the table's (cos, sin), math in
// fp32. __restrict and the AVX2 clone (cpu_utils.h) let the compiler vectorise the interleaved pairs.
template <typename T>
LUMINA_INLINE void rope_rows_t(const RopeParams& p, int64_t begin, int64_t end) {
  const T* __restrict x = static_cast<const T*>(p.x);
  T* __restrict out = static_cast<T*>(p.out);
  const int64_t half = p.head_dim / 2, H = p.heads;
  const float sign = p.inverse ? -1.f : 1.f;
  for (int64_t bl = begin; bl < end; ++bl) {
    const float* __restrict f = p.freqs + (p.freqs_per_batch ? bl : bl % p.seq) * half * 2;
    for (int64_t h = 0; h < H; ++h) {
      const int64_t base = (bl * H + h) * p.head_dim;
      const T* __restrict xr = x + base;
      T* __restrict o = out + base;
      for (int64_t i = 0; i < half; ++i) {
        const float c = f[2 * i], sn = sign * f[2 * i + 1];
        const float x0 = static_cast<float>(xr[2 * i]), x1 = static_cast<float>(xr[2 * i + 1]);
        o[2 * i] = static_cast<T>(x0 * c - x1 * sn);
        o[2 * i + 1] = static_cast<T>(x0 * sn + x1 * c);
      }
    }
  }
}

LUMINA_FMA_CLONES void rope_rows(const RopeParams& p, DType dtype, int64_t begin, int64_t end) {
  switch (dtype) {
    case DType::kFloat32: rope_rows_t<float>(p, begin, end); break;
    case DType::kBFloat16: rope_rows_t<c10::BFloat16>(p, begin, end); break;
    case DType::kFloat16: rope_rows_t<c10::Half>(p, begin, end); break;
  }
}

void launch_rope_cpu(const RopeParams& p, DType dtype) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(p.heads * p.head_dim, 1));
  // One task per (batch, position): the table row is loaded once for all heads.
  at::parallel_for(0, p.batch * p.seq, grain, [&](int64_t begin, int64_t end) { rope_rows(p, dtype, begin, end); });
}

at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& freqs_cis, bool inverse) {
  return rope_host(x, freqs_cis, inverse, launch_rope_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CPU, m) { m.impl("rope", &rope_cpu); }

}  // namespace lumina
