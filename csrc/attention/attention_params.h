// Parameters of the attention kernels (forward and backward), seen by the CPU and CUDA kernels.
//
// q [batch, q_len, q_heads, head_dim]; k, v [batch, k_len, kv_heads, head_dim], all contiguous;
// query head h reads KV head h / (q_heads / kv_heads) (MHA, GQA, MQA: no copy of K and V).
// RoPE is applied to q (q_freqs) and / or k (k_freqs) as they are loaded: pair i of a head,
// (x[2i], x[2i+1]), is rotated by the complex number freqs[(b,) l, i] = (cos, sin):
//   x'[2i] = x[2i] cos - x[2i+1] sin,   x'[2i+1] = x[2i] sin + x[2i+1] cos.
// s = softmax_scale * q' . k'; keys with mask[b, j] == 0 are left out; a row with no key left
// gives out = 0 and lse = -inf. lse [batch, q_heads, q_len] (fp32) = log sum_j exp(s_j).
#pragma once
#include <cstdint>

namespace lumina {

struct AttentionParams {
  const void* q = nullptr;         // [batch, q_len, q_heads, head_dim]
  const void* k = nullptr;         // [batch, k_len, kv_heads, head_dim]
  const void* v = nullptr;         // like k
  const float* q_freqs = nullptr;  // [batch or 1, q_len, head_dim / 2, 2] (complex64 as floats), or null: no RoPE
  const float* k_freqs = nullptr;  // [batch or 1, k_len, head_dim / 2, 2], or null
  const bool* mask = nullptr;      // [batch, k_len], true = attend; or null: every key
  int64_t batch = 0, q_len = 0, k_len = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  bool q_freqs_per_batch = false, k_freqs_per_batch = false;
  float softmax_scale = 1.f;
  // forward outputs
  void* out = nullptr;             // like q
  float* lse = nullptr;            // [batch, q_heads, q_len]
  // backward: inputs grad_out (like q), out, lse; outputs grad_q, grad_k, grad_v (like q, k, v)
  const void* grad_out = nullptr;
  const void* out_saved = nullptr;
  const float* lse_saved = nullptr;
  void* grad_q = nullptr;
  void* grad_k = nullptr;
  void* grad_v = nullptr;
  // CUDA backward workspaces (fp32): delta [batch, q_heads, q_len] = rowsum(grad_out * out), and the
  // dq accumulator [batch, q_len, q_heads, head_dim], zeroed by the caller
  float* delta = nullptr;
  float* dq_accum = nullptr;
};

}  // namespace lumina
