// Parameters of the fused solver-step kernels, seen by the CPU and CUDA kernels.
//
// solver_update: out = x + sum_i alpha_i * k_i over the `terms` nonzero coefficients, in order, each term
// added with one rounding (fused multiply-add) in the state's type, alpha_i = h * c_i computed in double on
// the host and cast to the state's type by the kernel, each k_i first converted to the state's type (exact
// for bfloat16 / float16, and float32 into a float64 state). This is torch.add(x, k, alpha=h * c) followed
// by out.add_(k, alpha=h * c) on CUDA and on CPUs with FMA. terms == 0: out = x.
//
// cfg_combine (classifier-free guidance, in float32 for float32 / bfloat16 / float16 inputs, float64 for
// float64), with c = cond, u = uncond, w = scale, d = c - u:
//   guided < 0 (plain CFG, torch.lerp(u, c, w)):  v = |w| < 0.5 ? fma(w, d, u) : fma(w - 1, d, c)
//   guided = k (the channel quirk): channel ch of dim 1 (ch = (e / inner) % channels) gets
//            v = u + (w * d) (two roundings) when ch < k, else v = c.
//   renorm > 0: per sample, norms over all of the sample's elements, summed in double in a fixed order
//            (chunks of `chunk` elements, each chunk in 8 (CPU) or 256 (CUDA) fixed lanes, then the chunk
//            partials in order); if ||v|| > renorm * ||c||: v *= renorm * ||c|| / ||v||.
#pragma once
#include <cstdint>

#include "../limits.h"  // kMaxSolverTerms

namespace lumina {

// Element types of the solver ops: the kernel dtypes of common.h (same values) plus float64, which the
// solver state of a float64 run has.
enum class SolverType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

struct SolverUpdateParams {
  const void* x = nullptr;                   // [n] the state, float32 or float64
  const void* ks[kMaxSolverTerms] = {};      // [n] each, one element type; the first `terms` are read
  double alpha[kMaxSolverTerms] = {};        // h * c_i of the nonzero coefficients, in order
  int terms = 0;                             // 0..kMaxSolverTerms
  void* out = nullptr;                       // [n] in the state's type
  int64_t n = 0;
};

struct CfgParams {
  const void* cond = nullptr;    // [batch, per] in the input type
  const void* uncond = nullptr;  // [batch, per] in the input type
  void* out = nullptr;           // [batch, per] float32 (float64 for float64 inputs)
  int64_t batch = 1, per = 0;    // samples, elements per sample
  int64_t channels = 1, inner = 1;  // dim 1 and the product of the dims after it (channel quirk)
  int64_t guided = -1;           // -1: plain CFG (lerp); k >= 0: channels [0, k) guided, the rest = cond
  double scale = 1.0;            // w
  double renorm = 0.0;           // r > 0, or 0: off
  int64_t chunks = 1, chunk = 0; // renorm reduction: chunks per sample of `chunk` elements (the last may be short)
  double* partial = nullptr;     // renorm workspace [batch, chunks, 2]: sum v^2, sum cond^2
  double* ratio = nullptr;       // renorm workspace [batch]: the factor of each sample (1: unclipped)
};

}  // namespace lumina
