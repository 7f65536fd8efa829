// C++ CPU kernels of the fused solver-step ops (see solver_params.h for the rounding contract).
//
// Plain loops over blocks of kBlock elements that the compiler vectorises; std::fma where the contract fuses
// (solver_update's terms, the lerp of plain CFG), separate loops where it rounds twice (the channel quirk's
// u + (w * d), so that no compiler can contract it). at::parallel_for splits the elements.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../cpu_utils.h"
#include "solver_host.h"

// The hot loops are LUMINA_FMA_CLONES (cpu_utils.h): in the x86-64-v3 clone std::fma becomes a vector fused
// multiply-add, in the baseline it is libm's (exact, but a call). Both give the same results, since every
// multiply-add here is an explicit std::fma. Elsewhere std::fma is the target's own (aarch64) or libm's.

namespace lumina {
namespace {

constexpr int64_t kBlock = 2048;  // elements per inner block: the output block stays in L1 across the terms

// ---------------------------------------------------------------------------------------------------------
// solver_update
// ---------------------------------------------------------------------------------------------------------
template <typename A, typename K>
LUMINA_INLINE void update_block(const SolverUpdateParams& p, int64_t begin, int64_t n) {
  const A* __restrict x = static_cast<const A*>(p.x) + begin;
  A* __restrict out = static_cast<A*>(p.out) + begin;
  if (p.terms == 0) {
    for (int64_t i = 0; i < n; ++i) out[i] = x[i];
    return;
  }
  const K* __restrict k0 = static_cast<const K*>(p.ks[0]) + begin;
  const A a0 = static_cast<A>(p.alpha[0]);
  for (int64_t i = 0; i < n; ++i) out[i] = std::fma(a0, static_cast<A>(k0[i]), x[i]);
  for (int t = 1; t < p.terms; ++t) {
    const K* __restrict k = static_cast<const K*>(p.ks[t]) + begin;
    const A a = static_cast<A>(p.alpha[t]);
    for (int64_t i = 0; i < n; ++i) out[i] = std::fma(a, static_cast<A>(k[i]), out[i]);
  }
}

template <typename A>
LUMINA_INLINE void update_range_k(const SolverUpdateParams& p, SolverType k, int64_t begin, int64_t n) {
  switch (k) {
    case SolverType::kFloat32: update_block<A, float>(p, begin, n); break;
    case SolverType::kFloat64: update_block<A, double>(p, begin, n); break;
    case SolverType::kBFloat16: update_block<A, c10::BFloat16>(p, begin, n); break;
    case SolverType::kFloat16: update_block<A, c10::Half>(p, begin, n); break;
  }
}

LUMINA_FMA_CLONES void update_range(const SolverUpdateParams& p, SolverType state, SolverType k, int64_t begin,
                                    int64_t end) {
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t n = std::min(kBlock, end - b);
    if (state == SolverType::kFloat64) {
      update_range_k<double>(p, k, b, n);
    } else {
      update_range_k<float>(p, k, b, n);
    }
  }
}

void launch_update(const SolverUpdateParams& p, SolverType state, SolverType k) {
  at::parallel_for(0, p.n, 4 * kBlock, [&](int64_t begin, int64_t end) { update_range(p, state, k, begin, end); });
}

// ---------------------------------------------------------------------------------------------------------
// cfg_combine
// ---------------------------------------------------------------------------------------------------------
// v for elements [e0, e0 + n) of sample b, written to dst (the compute type C is the output type).
template <typename T, typename C>
LUMINA_INLINE void cfg_values(const CfgParams& p, int64_t b, int64_t e0, int64_t n, C* __restrict dst) {
  const T* __restrict c = static_cast<const T*>(p.cond) + b * p.per + e0;
  const T* __restrict u = static_cast<const T*>(p.uncond) + b * p.per + e0;
  const C w = static_cast<C>(p.scale);
  if (p.guided < 0) {  // torch.lerp(u, c, w)
    if (std::abs(w) < C(0.5)) {
      for (int64_t i = 0; i < n; ++i) {
        const C ci = static_cast<C>(c[i]), ui = static_cast<C>(u[i]);
        dst[i] = std::fma(w, ci - ui, ui);
      }
    } else {
      const C w1 = w - C(1);
      for (int64_t i = 0; i < n; ++i) {
        const C ci = static_cast<C>(c[i]), ui = static_cast<C>(u[i]);
        dst[i] = std::fma(w1, ci - ui, ci);
      }
    }
    return;
  }
  // the channel quirk: runs of `inner` elements share a channel
  for (int64_t i = 0; i < n;) {
    const int64_t e = e0 + i;
    const int64_t run = std::min(n - i, (e / p.inner + 1) * p.inner - e);
    const bool guided = (e / p.inner) % p.channels < p.guided;
    if (guided) {
      // u + (w * d), rounded twice: the product goes through memory so that it cannot be contracted
      for (int64_t j = i; j < i + run; ++j) dst[j] = w * (static_cast<C>(c[j]) - static_cast<C>(u[j]));
      for (int64_t j = i; j < i + run; ++j) dst[j] = static_cast<C>(u[j]) + dst[j];
    } else {
      for (int64_t j = i; j < i + run; ++j) dst[j] = static_cast<C>(c[j]);
    }
    i += run;
  }
}

// Sums of v^2 and cond^2 over chunk j of sample b, in 8 fixed lanes, in double.
template <typename T, typename C>
LUMINA_INLINE void cfg_chunk_norms(const CfgParams& p, int64_t b, int64_t j) {
  const int64_t e0 = j * p.chunk, e1 = std::min(p.per, e0 + p.chunk);
  const T* c = static_cast<const T*>(p.cond) + b * p.per;
  double sv[8] = {}, sc[8] = {};
  C v[kBlock];
  for (int64_t s = e0; s < e1; s += kBlock) {
    const int64_t n = std::min(kBlock, e1 - s);
    cfg_values<T, C>(p, b, s, n, v);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      for (int l = 0; l < 8; ++l) {
        const double vi = static_cast<double>(v[i + l]), ci = static_cast<double>(static_cast<C>(c[s + i + l]));
        sv[l] += vi * vi;
        sc[l] += ci * ci;
      }
    }
    for (; i < n; ++i) {  // the chunk's tail (kBlock is a multiple of 8: lanes stay i % 8)
      const double vi = static_cast<double>(v[i]), ci = static_cast<double>(static_cast<C>(c[s + i]));
      sv[i % 8] += vi * vi;
      sc[i % 8] += ci * ci;
    }
  }
  double* out = p.partial + (b * p.chunks + j) * 2;
  out[0] = ((sv[0] + sv[1]) + (sv[2] + sv[3])) + ((sv[4] + sv[5]) + (sv[6] + sv[7]));
  out[1] = ((sc[0] + sc[1]) + (sc[2] + sc[3])) + ((sc[4] + sc[5]) + (sc[6] + sc[7]));
}

template <typename T, typename C>
LUMINA_INLINE void cfg_apply_range(const CfgParams& p, int64_t begin, int64_t end) {
  C* out = static_cast<C*>(p.out);
  for (int64_t s = begin; s < end;) {
    const int64_t b = s / p.per, e = s % p.per;
    const int64_t n = std::min({kBlock, end - s, p.per - e});
    C* dst = out + s;
    cfg_values<T, C>(p, b, e, n, dst);
    if (p.ratio != nullptr) {
      const C r = static_cast<C>(p.ratio[b]);
      for (int64_t i = 0; i < n; ++i) dst[i] = dst[i] * r;
    }
    s += n;
  }
}

template <typename C>
void cfg_ratios(const CfgParams& p) {
  for (int64_t b = 0; b < p.batch; ++b) {
    double sv = 0.0, sc = 0.0;
    for (int64_t j = 0; j < p.chunks; ++j) {
      sv += p.partial[(b * p.chunks + j) * 2];
      sc += p.partial[(b * p.chunks + j) * 2 + 1];
    }
    const C norm_v = static_cast<C>(std::sqrt(sv)), norm_c = static_cast<C>(std::sqrt(sc));
    const C max_norm = static_cast<C>(p.renorm) * norm_c;
    p.ratio[b] = norm_v > max_norm ? static_cast<double>(max_norm / std::max(norm_v, std::numeric_limits<C>::min()))
                                   : 1.0;
  }
}

template <typename T, typename C>
LUMINA_INLINE void cfg_norms_typed(const CfgParams& p, int64_t begin, int64_t end) {
  for (int64_t bj = begin; bj < end; ++bj) cfg_chunk_norms<T, C>(p, bj / p.chunks, bj % p.chunks);
}

LUMINA_FMA_CLONES void cfg_norms_range(const CfgParams& p, SolverType type, int64_t begin, int64_t end) {
  switch (type) {
    case SolverType::kFloat32: cfg_norms_typed<float, float>(p, begin, end); break;
    case SolverType::kFloat64: cfg_norms_typed<double, double>(p, begin, end); break;
    case SolverType::kBFloat16: cfg_norms_typed<c10::BFloat16, float>(p, begin, end); break;
    case SolverType::kFloat16: cfg_norms_typed<c10::Half, float>(p, begin, end); break;
  }
}

LUMINA_FMA_CLONES void cfg_apply(const CfgParams& p, SolverType type, int64_t begin, int64_t end) {
  switch (type) {
    case SolverType::kFloat32: cfg_apply_range<float, float>(p, begin, end); break;
    case SolverType::kFloat64: cfg_apply_range<double, double>(p, begin, end); break;
    case SolverType::kBFloat16: cfg_apply_range<c10::BFloat16, float>(p, begin, end); break;
    case SolverType::kFloat16: cfg_apply_range<c10::Half, float>(p, begin, end); break;
  }
}

void launch_cfg(const CfgParams& p, SolverType type) {
  if (p.renorm > 0) {
    at::parallel_for(0, p.batch * p.chunks, 4, [&](int64_t b0, int64_t b1) { cfg_norms_range(p, type, b0, b1); });
    if (type == SolverType::kFloat64) {
      cfg_ratios<double>(p);
    } else {
      cfg_ratios<float>(p);
    }
  }
  at::parallel_for(0, p.batch * p.per, 4 * kBlock, [&](int64_t b0, int64_t b1) { cfg_apply(p, type, b0, b1); });
}

at::Tensor solver_update_cpu(const at::Tensor& x, at::TensorList ks, at::ArrayRef<double> coeffs, double h) {
  return solver_update_host(x, ks, coeffs, h, launch_update);
}

at::Tensor cfg_combine_cpu(const at::Tensor& cond, const at::Tensor& uncond, double scale,
                           std::optional<int64_t> channels, std::optional<double> renorm) {
  return cfg_combine_host(cond, uncond, scale, channels, renorm, launch_cfg);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CPU, m) {
  m.impl("solver_update", &solver_update_cpu);
  m.impl("cfg_combine", &cfg_combine_cpu);
}

}  // namespace lumina
