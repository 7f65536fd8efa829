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

// Kernels with a deliberate defect, each of which the emulator must report: 1 a shared-memory race,
// 2 a deadlock at a barrier, 3 a divergent warp, 4 a read of uninitialised shared memory.
int lumina_emulate_selftest(int which, char* err, int err_len) {
  try {
    emu::run_grid(1, 1, 1, 64, 256, [which](char* smem) {
      const int t = thread_id();
      float* f = reinterpret_cast<float*>(smem);
      if (which == 1) {
        st_shared(f + t, 1.f);
        sync_block();
        if (t == 0) st_shared(f + 1, 2.f);
        if (t == 33) (void)ld_shared<float>(f + 1);
      } else if (which == 2) {
        if (t < 32) sync_block();
      } else if (which == 3) {
        if (t < 64) (void)shfl_xor(1.f, t % 32 < 16 ? 1 : 2);
      } else if (which == 4) {
        (void)ld_shared<float>(f + t);
      }
    }, 7);
  } catch (const std::exception& e) {
    std::strncpy(err, e.what(), static_cast<size_t>(err_len) - 1);
    err[err_len - 1] = 0;
    return 1;
  }
  return 0;
}

// One warp: a (16x16) @ b (16x8) in bf16 through ldmatrix and mma, written out through the C layout:
// c16 with b stored [n][k] (ldmatrix), c16t with b stored [k][n] (ldmatrix.trans), c8 = a[:, :8] @ b[:8].
int lumina_emulate_mma_selftest(const uint16_t* a, const uint16_t* b, float* c16, float* c8, float* c16t) {
  try {
    emu::run_grid(1, 1, 1, 32, 16 * 16 * 2 + 2 * 16 * 8 * 2, [&](char* smem) {
      const int lane = thread_id(), g = lane / 4, t = lane % 4;
      char* sA = smem;                 // [16][16]
      char* sBnk = smem + 512;         // [8 n][16 k]
      char* sBkn = smem + 512 + 256;   // [16 k][8 n]
      for (int i = lane; i < 256; i += 32) st_shared(sA + 2 * i, a[i]);
      for (int i = lane; i < 128; i += 32) {
        const int k = i / 8, n = i % 8;
        st_shared(sBkn + 2 * i, b[i]);
        st_shared(sBnk + 2 * (n * 16 + k), b[i]);
      }
      sync_block();
      uint32_t fa[4], fa8[2], fb[2], fbt[2];
      ldsm_x4(fa, sA + 2 * ((lane % 16) * 16 + (lane / 16) * 8));
      ldsm_x2(fa8, sA + 2 * ((lane % 16) * 16));
      ldsm_x2(fb, sBnk + 2 * ((lane % 8) * 16 + ((lane / 8) % 2) * 8));
      ldsm_x2_t(fbt, sBkn + 2 * ((lane % 16) * 8));
      float d16[4] = {0, 0, 0, 0}, d8[4] = {0, 0, 0, 0}, d16t[4] = {0, 0, 0, 0};
      Mma<bf16_t>::k16(d16, fa, fb[0], fb[1]);
      Mma<bf16_t>::k8(d8, fa8, fb[0]);
      Mma<bf16_t>::k16(d16t, fa, fbt[0], fbt[1]);
      for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = 2 * t + (e % 2);
        c16[row * 8 + col] = d16[e], c8[row * 8 + col] = d8[e], c16t[row * 8 + col] = d16t[e];
      }
    }, 3);
  } catch (const std::exception&) {
    return 1;
  }
  return 0;
}

}  // extern "C"
