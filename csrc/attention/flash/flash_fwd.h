// Flash-attention forward (FlashAttention-2 schedule) with RoPE applied as q and k are loaded,
// grouped-query heads read in place, a key padding mask and an exact head dim (72 is 4 k16 + 1 k8
// MMA steps, not padded to 96).
//
// Block (m, hq, b): 64 queries of query head hq, 4 warps of 16 queries each. For every tile of 64
// keys of KV head hq / (Hq / Hkv): S = Q K^T on tensor cores, online softmax in fp32 (exp2 with the
// scale folded in), O += P V with P rounded to the element type. Writes O and the log-sum-exp.
#pragma once
#include "flash_tile.h"

namespace lumina {
namespace flash {

template <int D>
struct FwdSmem {
  using G = Geometry<D>;
  static constexpr int kQ = 0, kK = G::kTileBytes, kV = 2 * G::kTileBytes, kValid = 3 * G::kTileBytes;
  static constexpr int kBytes = kValid + 64 * 4;
};

template <typename T, int D>
LUMINA_DEV void fwd_block(const AttentionParams& p, char* smem) {
  using G = Geometry<D>;
  using S = FwdSmem<D>;
  char* sQ = smem + S::kQ;
  char* sK = smem + S::kK;
  char* sV = smem + S::kV;
  float* sValid = reinterpret_cast<float*>(smem + S::kValid);

  const int m_block = block_x(), hq = block_y(), b = block_z();
  const int Lq = static_cast<int>(p.q_len), Lk = static_cast<int>(p.k_len);
  const int Hq = static_cast<int>(p.q_heads), Hkv = static_cast<int>(p.kv_heads);
  const int hk = hq / (Hq / Hkv);
  const int tid = thread_id(), warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int row0 = m_block * G::kRows;

  const T* q = head_rows<T, D>(p.q, b, Lq, Hq, hq);
  const T* k = head_rows<T, D>(p.k, b, Lk, Hkv, hk);
  const T* v = head_rows<T, D>(p.v, b, Lk, Hkv, hk);
  const float* qf = table_rows<D>(p.q_freqs, p.q_freqs_per_batch, b, Lq);
  const float* kf = table_rows<D>(p.k_freqs, p.k_freqs_per_batch, b, Lk);
  const bool* mask = p.mask ? p.mask + static_cast<int64_t>(b) * Lk : nullptr;

  load_tile<T, D>(sQ, q, static_cast<int64_t>(Hq) * D, row0, Lq, qf);

  float o[G::kDn][4];
#pragma unroll
  for (int dn = 0; dn < G::kDn; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY};  // running max of the scaled scores (log2 units), rows g, g + 8
  float l_run[2] = {0.f, 0.f};              // this thread's share of the running sum of exp2
  const float scale_log2 = p.softmax_scale * kLog2e;

  const int n_blocks = (Lk + G::kRows - 1) / G::kRows;
  for (int nb = 0; nb < n_blocks; ++nb) {
    const int col0 = nb * G::kRows;
    if (nb > 0) sync_block();  // every warp is done with the previous K and V
    load_tile<T, D>(sK, k, static_cast<int64_t>(Hkv) * D, col0, Lk, kf);
    load_tile<T, D>(sV, v, static_cast<int64_t>(Hkv) * D, col0, Lk, nullptr);
    load_key_valid(sValid, mask, col0, Lk);
    sync_block();

    // S = Q K^T: 16 queries of this warp x 64 keys
    float s[8][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    mma_rows_x_rowsT<T, D>(s, sQ, warp * 16, sK);

    // online softmax; masked keys get -inf
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool ok = ld_shared<float>(sValid + nt * 8 + 2 * t + (e & 1)) != 0.f;
        s[nt][e] = ok ? s[nt][e] * scale_log2 : -INFINITY;
        mx[e / 2] = nan_max(mx[e / 2], s[nt][e]);
      }
    float m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = nan_max(m_run[r], quad_max(mx[r]));
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // no key yet: keep exp2 finite (every p is 0)
      const float alpha = fast_exp2(m_run[r] - m_use[r]);
      m_run[r] = m_new;
      l_run[r] *= alpha;
#pragma unroll
      for (int dn = 0; dn < G::kDn; ++dn) o[dn][2 * r] *= alpha, o[dn][2 * r + 1] *= alpha;
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = fast_exp2(s[nt][e] - m_use[e / 2]);
        l_run[e / 2] += s[nt][e];
      }

    // O += P V
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pa[4];
      c_to_a<T>(pa, s, kk);
      mma_a_x_rows<T, D>(o, pa, sV, kk);
    }
  }

  // O / l and the log-sum-exp (natural log); rows without any key: O = 0, lse = -inf
  float lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    const float inv = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? (m_run[r] + log2f(l)) * kLn2 : -INFINITY;
#pragma unroll
    for (int dn = 0; dn < G::kDn; ++dn) o[dn][2 * r] *= inv, o[dn][2 * r + 1] *= inv;
  }

  // stage O in the Q tile (this warp's rows), then 16-byte coalesced stores
  sync_block();
#pragma unroll
  for (int dn = 0; dn < G::kDn; ++dn)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = warp * 16 + g + 8 * r;
      st_shared(sQ + (row * G::kStride + dn * 8 + 2 * t) * 2, Half2<T>::pack(o[dn][2 * r], o[dn][2 * r + 1]));
    }
  if (t == 0)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + warp * 16 + g + 8 * r;
      if (row < Lq) p.lse[(static_cast<int64_t>(b) * Hq + hq) * Lq + row] = lse[r];
    }
  sync_block();
  T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(b) * Lq * Hq + hq) * D;
  for (int i = tid; i < G::kRows * G::kChunks; i += G::kThreads) {
    const int r = i / G::kChunks, c = i % G::kChunks;
    if (row0 + r < Lq)
      st_global16(out + static_cast<int64_t>(row0 + r) * Hq * D + c * 8,
                  ld_shared<Pack16>(sQ + (r * G::kStride + c * 8) * 2));
  }
}

struct FwdGrid {
  int x, y, z;
};
inline FwdGrid fwd_grid(const AttentionParams& p) {
  return {static_cast<int>((p.q_len + 63) / 64), static_cast<int>(p.q_heads), static_cast<int>(p.batch)};
}

}  // namespace flash
}  // namespace lumina
