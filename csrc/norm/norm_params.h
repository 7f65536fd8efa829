// Parameters of the fused RMSNorm family, seen by the CPU and CUDA kernels.
//
// One kernel serves rms_norm, modulated_rms_norm and gated_rms_norm_residual:
//   out = [residual +] [tanh(gate) *] (x * rstd * weight) [* (1 + scale)]
// x is viewed as [batch, rows, dim]; scale and gate are [batch, dim] and broadcast over rows.
// When neither scale nor gate is given, batch is 1 and rows covers every leading dimension.
#pragma once
#include <cstdint>

namespace lumina {

struct RmsNormFwdParams {
  const void* x = nullptr;         // [batch, rows, dim]
  const void* weight = nullptr;    // [dim]
  const void* scale = nullptr;     // [batch, dim] or null
  const void* gate = nullptr;      // [batch, dim] or null (tanh is applied in the kernel)
  const void* residual = nullptr;  // [batch, rows, dim] or null
  void* out = nullptr;             // [batch, rows, dim]
  float* rstd = nullptr;           // [batch, rows], saved for the backward pass
  int64_t batch = 0, rows = 0, dim = 0;
  float eps = 1e-5f;
};

// The backward pass writes grad_x directly and reduces the per-column gradients
// (weight, scale, gate) into fp32 partial sums, one row of `dim` per (batch, chunk);
// the host sums the partials. A chunk is a run of `rows_per_chunk` rows of one batch.
struct RmsNormBwdParams {
  const void* grad_out = nullptr;  // [batch, rows, dim]
  const void* x = nullptr;         // [batch, rows, dim]
  const void* weight = nullptr;    // [dim]
  const void* scale = nullptr;     // [batch, dim] or null
  const void* gate = nullptr;      // [batch, dim] or null
  const float* rstd = nullptr;     // [batch, rows]
  void* grad_x = nullptr;          // [batch, rows, dim]
  float* partial_weight = nullptr; // [batch, chunks, dim]
  float* partial_scale = nullptr;  // [batch, chunks, dim] or null
  float* partial_gate = nullptr;   // [batch, chunks, dim] or null
  int64_t batch = 0, rows = 0, dim = 0;
  int64_t chunks = 1, rows_per_chunk = 1;
};

}  // namespace lumina
