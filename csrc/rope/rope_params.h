// Parameters of the rotary position embedding kernel, seen by the CPU and CUDA kernels.
//
// x is [batch, seq, heads, head_dim]; pair i of a head is (x[2i], x[2i+1]) and is rotated by
// the complex number freqs[(b,) l, i] = (cos, sin) stored as two floats:
//   out[2i]   = x[2i] * cos - x[2i+1] * sin
//   out[2i+1] = x[2i] * sin + x[2i+1] * cos
// `inverse` rotates by the conjugate, which is also the backward pass.
#pragma once
#include <cstdint>

namespace lumina {

struct RopeParams {
  const void* x = nullptr;      // [batch, seq, heads, head_dim]
  const float* freqs = nullptr; // [batch or 1, seq, head_dim / 2, 2] (complex64 viewed as float)
  void* out = nullptr;          // like x
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  bool freqs_per_batch = false; // freqs has a batch dimension
  bool inverse = false;         // rotate by conj(freqs)
};

}  // namespace lumina
