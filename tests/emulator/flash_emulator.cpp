// Runs the flash-attention CUDA kernels (csrc/attention/flash) on the CPU under the warp emulator,
// for tests/test_flash_emulator.py. The kernel source is the one nvcc compiles; only the warp-level
// primitives differ (see flash_common.h and flash_emulate.h). Built by the test with the host
// compiler and called through ctypes; not part of the package.
#define LUMINA_FLASH_EMULATE 1
#include <cstring>
#include <stdexcept>

#include "../../csrc/attention/flash/flash_bwd.h"
#include "../../csrc/attention/flash/flash_fwd.h"

using namespace lumina;
using namespace lumina::flash;

namespace {

template <typename T, int D>
void fwd(const AttentionParams& p, uint32_t seed) {
  const FwdGrid grid = fwd_grid(p);
  emu::run_grid(grid.x, grid.y, grid.z, Geometry<D>::kThreads, FwdSmem<D>::kBytes,
                [&p](char* smem) { fwd_block<T, D>(p, smem); }, seed);
}

template <typename T, int D>
void bwd(const AttentionParams& p, uint32_t seed) {
  const BwdGrids grids = bwd_grids(p, D);
  emu::run_grid(grids.delta_blocks, 1, 1, 128, 16, [&p](char*) { bwd_delta_block<T, D>(p, p.delta); }, seed);
  emu::run_grid(grids.x, grids.y, grids.z, Geometry<D>::kThreads, BwdSmem<D>::kBytes,
                [&p](char* smem) { bwd_block<T, D>(p, p.delta, p.dq_accum, smem); }, seed);
  emu::run_grid(grids.dq_blocks, 1, 1, 128, 16, [&p](char*) { bwd_dq_block<T, D>(p, p.dq_accum); }, seed);
}

template <typename T>
void dispatch_dim(bool backward, const AttentionParams& p, uint32_t seed) {
  switch (p.head_dim) {
    case 64: return backward ? bwd<T, 64>(p, seed) : fwd<T, 64>(p, seed);
    case 72: return backward ? bwd<T, 72>(p, seed) : fwd<T, 72>(p, seed);
    case 96: return backward ? bwd<T, 96>(p, seed) : fwd<T, 96>(p, seed);
    case 128: return backward ? bwd<T, 128>(p, seed) : fwd<T, 128>(p, seed);
    default: throw std::runtime_error("no kernel for this head dim");
  }
}

}  // namespace

extern "C" {

// sizes: batch, q_len, k_len, q_heads, kv_heads, head_dim, q_freqs_per_batch, k_freqs_per_batch.
// Returns 0, or 1 with a message in err.
int lumina_emulate_attention(int backward, int bf16, const int64_t* sizes, float softmax_scale, const void* q,
                             const void* k, const void* v, const float* q_freqs, const float* k_freqs,
                             const bool* mask, void* out, float* lse, const void* grad_out, void* grad_q,
                             void* grad_k, void* grad_v, float* delta, float* dq_accum, uint32_t seed, char* err,
                             int err_len) {
  AttentionParams p;
  p.batch = sizes[0], p.q_len = sizes[1], p.k_len = sizes[2], p.q_heads = sizes[3], p.kv_heads = sizes[4];
  p.head_dim = sizes[5], p.q_freqs_per_batch = sizes[6] != 0, p.k_freqs_per_batch = sizes[7] != 0;
  p.softmax_scale = softmax_scale;
  p.q = q, p.k = k, p.v = v, p.q_freqs = q_freqs, p.k_freqs = k_freqs, p.mask = mask;
  p.out = out, p.lse = lse;
  p.grad_out = grad_out, p.out_saved = out, p.lse_saved = lse;
  p.grad_q = grad_q, p.grad_k = grad_k, p.grad_v = grad_v, p.delta = delta, p.dq_accum = dq_accum;
  try {
    if (bf16)
      dispatch_dim<bf16_t>(backward != 0, p, seed);
    else
      dispatch_dim<f16_t>(backward != 0, p, seed);
  } catch (const std::exception& e) {
    std::strncpy(err, e.what(), static_cast<size_t>(err_len) - 1);
    err[err_len - 1] = 0;
    return 1;
  }
  return 0;
}

}  // extern "C"
