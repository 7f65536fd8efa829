// Flash-attention backward (FlashAttention-2 schedule), through the fused RoPE and for grouped-query heads.
//
//  1. bwd_delta:  delta[b, h, i] = sum_d dO[i, d] O[i, d]  (fp32)
//  2. bwd_block:  block (n, hk, b) owns 64 keys of KV head hk and loops over the query heads of its group
//                 and every tile of 64 queries, recomputing P = exp(S - lse) from the saved log-sum-exp:
//                   dV += P^T dO,  dP = dO V^T,  dS = P (dP - delta),  dK += dS^T Q,  dQ += dS K
//                 Each warp owns 16 keys for dK and dV (kept in registers over the whole loop, so GQA
//                 needs no atomics or expanded copies for them) and 16 queries for dQ, which is added
//                 to an fp32 buffer with atomics. dK leaves rotated back by conj(k_freqs).
//  3. bwd_dq:     dQ = scale * dq_accum, rotated back by conj(q_freqs), in the element type.
#pragma once
#include "flash_tile.h"

namespace lumina {
namespace flash {

// ---- 1. delta -----------------------------------------------------------------------------------
template <typename T, int D>
LUMINA_DEV void bwd_delta_block(const AttentionParams& p, float* delta) {
  // one thread per (b, l, h) row
  const int64_t rows = p.batch * p.q_len * p.q_heads;
  const int64_t row = static_cast<int64_t>(block_x()) * 128 + thread_id();
  if (row >= rows) return;
  const T* dout = static_cast<const T*>(p.grad_out) + row * D;
  const T* out = static_cast<const T*>(p.out_saved) + row * D;
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < D / 8; ++c) {
    const Pack16 a = ld_global16(dout + c * 8), o = ld_global16(out + c * 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const Float2 x = Half2<T>::unpack(a.w[i]), y = Half2<T>::unpack(o.w[i]);
      acc += x.x * y.x + x.y * y.y;
    }
  }
  const int64_t h = row % p.q_heads, bl = row / p.q_heads, l = bl % p.q_len, b = bl / p.q_len;
  delta[(b * p.q_heads + h) * p.q_len + l] = acc;
}

// ---- 2. the main kernel -------------------------------------------------------------------------
template <int D>
struct BwdSmem {
  using G = Geometry<D>;
  static constexpr int kK = 0, kV = G::kTileBytes, kQ = 2 * G::kTileBytes, kdO = 3 * G::kTileBytes;
  static constexpr int kdS = 4 * G::kTileBytes;  // dS^T as [64 keys][kStrideS] halves
  static constexpr int kLse = kdS + 64 * G::kStrideS * 2;
  static constexpr int kDelta = kLse + 64 * 4, kValid = kDelta + 64 * 4;
  static constexpr int kBytes = kValid + 64 * 4;
};

template <typename T, int D>
LUMINA_DEV void bwd_block(const AttentionParams& p, const float* delta, float* dq_accum, char* smem) {
  using G = Geometry<D>;
  using S = BwdSmem<D>;
  char* sK = smem + S::kK;
  char* sV = smem + S::kV;
  char* sQ = smem + S::kQ;
  char* sdO = smem + S::kdO;
  char* sdS = smem + S::kdS;
  float* sLse = reinterpret_cast<float*>(smem + S::kLse);
  float* sDelta = reinterpret_cast<float*>(smem + S::kDelta);
  float* sValid = reinterpret_cast<float*>(smem + S::kValid);

  const int n_block = block_x(), hk = block_y(), b = block_z();
  const int Lq = static_cast<int>(p.q_len), Lk = static_cast<int>(p.k_len);
  const int Hq = static_cast<int>(p.q_heads), Hkv = static_cast<int>(p.kv_heads), group = Hq / Hkv;
  const int tid = thread_id(), warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int col0 = n_block * G::kRows;
  const float scale_log2 = p.softmax_scale * kLog2e;

  const T* k = head_rows<T, D>(p.k, b, Lk, Hkv, hk);
  const T* v = head_rows<T, D>(p.v, b, Lk, Hkv, hk);
  const float* qf = table_rows<D>(p.q_freqs, p.q_freqs_per_batch, b, Lq);
  const float* kf = table_rows<D>(p.k_freqs, p.k_freqs_per_batch, b, Lk);
  const bool* mask = p.mask ? p.mask + static_cast<int64_t>(b) * Lk : nullptr;

  load_tile<T, D>(sK, k, static_cast<int64_t>(Hkv) * D, col0, Lk, kf);
  load_tile<T, D>(sV, v, static_cast<int64_t>(Hkv) * D, col0, Lk, nullptr);
  load_key_valid(sValid, mask, col0, Lk);

  float dk[G::kDn][4], dv[G::kDn][4];  // this warp's 16 keys x D
#pragma unroll
  for (int dn = 0; dn < G::kDn; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dn][e] = dv[dn][e] = 0.f;

  const int m_blocks = (Lq + G::kRows - 1) / G::kRows;
  for (int h = 0; h < group; ++h) {
    const int hq = hk * group + h;
    const T* q = head_rows<T, D>(p.q, b, Lq, Hq, hq);
    const T* dout = head_rows<T, D>(p.grad_out, b, Lq, Hq, hq);
    const float* lse = p.lse_saved + (static_cast<int64_t>(b) * Hq + hq) * Lq;
    const float* dl = delta + (static_cast<int64_t>(b) * Hq + hq) * Lq;
    for (int mb = 0; mb < m_blocks; ++mb) {
      const int row0 = mb * G::kRows;
      sync_block();  // the previous tile's Q, dO and dS are no longer read
      load_tile<T, D>(sQ, q, static_cast<int64_t>(Hq) * D, row0, Lq, qf);
      load_tile<T, D>(sdO, dout, static_cast<int64_t>(Hq) * D, row0, Lq, nullptr);
      if (tid < 64) {
        const int row = row0 + tid;
        const float l = row < Lq ? ld_global<float>(lse + row) : INFINITY;
        // rows past the end, and rows that attended nothing (lse = -inf), get P = 0
        st_shared(sLse + tid, l == -INFINITY ? INFINITY : l * kLog2e);
        st_shared(sDelta + tid, row < Lq ? ld_global<float>(dl + row) : 0.f);
      }
      sync_block();

      // S^T = K Q^T: this warp's 16 keys x 64 queries; P^T = exp(S^T - lse) for valid keys
      float pt[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) pt[nt][0] = pt[nt][1] = pt[nt][2] = pt[nt][3] = 0.f;
      mma_rows_x_rowsT<T, D>(pt, sK, warp * 16, sQ);
      const bool key_ok[2] = {ld_shared<float>(sValid + warp * 16 + g) != 0.f,
                              ld_shared<float>(sValid + warp * 16 + g + 8) != 0.f};
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float l = ld_shared<float>(sLse + nt * 8 + 2 * t + (e & 1));
          pt[nt][e] = key_ok[e / 2] ? fast_exp2(pt[nt][e] * scale_log2 - l) : 0.f;
        }

      // dV += P^T dO
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4];
        c_to_a<T>(a, pt, kk);
        mma_a_x_rows<T, D>(dv, a, sdO, kk);
      }

      // dP^T = V dO^T, then dS^T = P^T (dP^T - delta)
      float ds[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) ds[nt][0] = ds[nt][1] = ds[nt][2] = ds[nt][3] = 0.f;
      mma_rows_x_rowsT<T, D>(ds, sV, warp * 16, sdO);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          ds[nt][e] = pt[nt][e] * (ds[nt][e] - ld_shared<float>(sDelta + nt * 8 + 2 * t + (e & 1)));

      // dK += dS^T Q; dS^T to shared memory for dQ
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4];
        c_to_a<T>(a, ds, kk);
        mma_a_x_rows<T, D>(dk, a, sQ, kk);
        const int key = warp * 16 + g;
        st_shared(sdS + (key * G::kStrideS + kk * 16 + 2 * t) * 2, a[0]);
        st_shared(sdS + ((key + 8) * G::kStrideS + kk * 16 + 2 * t) * 2, a[1]);
        st_shared(sdS + (key * G::kStrideS + kk * 16 + 8 + 2 * t) * 2, a[2]);
        st_shared(sdS + ((key + 8) * G::kStrideS + kk * 16 + 8 + 2 * t) * 2, a[3]);
      }
      sync_block();

      // dQ[16 queries of this warp x D] = dS K over the 64 keys: A = dS read transposed from dS^T
      float dq[G::kDn][4];
#pragma unroll
      for (int dn = 0; dn < G::kDn; ++dn) dq[dn][0] = dq[dn][1] = dq[dn][2] = dq[dn][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        // matrices: (keys 0-7, queries 0-7), (keys 0-7, queries 8-15), (keys 8-15, q 0-7), (keys 8-15, q 8-15)
        uint32_t a[4];
        ldsm_x4_t(a, sdS + ((kk * 16 + (lane / 16) * 8 + lane % 8) * G::kStrideS + warp * 16 + ((lane / 8) % 2) * 8) * 2);
        mma_a_x_rows<T, D>(dq, a, sK, kk);
      }
      float* dqa = dq_accum + (static_cast<int64_t>(b) * Lq * Hq + hq) * D;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row0 + warp * 16 + g + 8 * r;
        if (row < Lq)
#pragma unroll
          for (int dn = 0; dn < G::kDn; ++dn) {
            float* dst = dqa + static_cast<int64_t>(row) * Hq * D + dn * 8 + 2 * t;
            atomic_add(dst, dq[dn][2 * r]);
            atomic_add(dst + 1, dq[dn][2 * r + 1]);
          }
      }
    }
  }

  // dK (times the scale, rotated back by conj(k_freqs)) and dV, straight from the accumulators
  T* grad_k = static_cast<T*>(p.grad_k) + (static_cast<int64_t>(b) * Lk * Hkv + hk) * D;
  T* grad_v = static_cast<T*>(p.grad_v) + (static_cast<int64_t>(b) * Lk * Hkv + hk) * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = col0 + warp * 16 + g + 8 * r;
    if (key >= Lk) continue;
#pragma unroll
    for (int dn = 0; dn < G::kDn; ++dn) {
      const int d = dn * 8 + 2 * t;
      float x0 = dk[dn][2 * r] * p.softmax_scale, x1 = dk[dn][2 * r + 1] * p.softmax_scale;
      if (kf != nullptr) {
        const float c = kf[static_cast<int64_t>(key) * D + d], s = kf[static_cast<int64_t>(key) * D + d + 1];
        const float y0 = x0 * c + x1 * s, y1 = x1 * c - x0 * s;
        x0 = y0, x1 = y1;
      }
      const int64_t off = static_cast<int64_t>(key) * Hkv * D + d;
      *reinterpret_cast<uint32_t*>(grad_k + off) = Half2<T>::pack(x0, x1);
      *reinterpret_cast<uint32_t*>(grad_v + off) = Half2<T>::pack(dv[dn][2 * r], dv[dn][2 * r + 1]);
    }
  }
}

// ---- 3. dQ from its fp32 accumulator ------------------------------------------------------------
template <typename T, int D>
LUMINA_DEV void bwd_dq_block(const AttentionParams& p, const float* dq_accum) {
  // one thread per 8 elements of a (b, l, h) row
  constexpr int kChunks = D / 8;
  const int64_t total = p.batch * p.q_len * p.q_heads * kChunks;
  const int64_t i = static_cast<int64_t>(block_x()) * 128 + thread_id();
  if (i >= total) return;
  const int64_t c = i % kChunks, row = i / kChunks;  // row = (b, l, h)
  const int64_t bl = row / p.q_heads;
  const float* src = dq_accum + row * D + c * 8;
  const Float4 a = ld_global_f4(src), b4 = ld_global_f4(src + 4);
  const float x[8] = {a.v[0], a.v[1], a.v[2], a.v[3], b4.v[0], b4.v[1], b4.v[2], b4.v[3]};
  const float* f = nullptr;
  if (p.q_freqs != nullptr) {
    const int64_t frow = p.q_freqs_per_batch ? bl : bl % p.q_len;
    f = p.q_freqs + frow * D + c * 8;
  }
  Pack16 y;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float x0 = x[2 * j] * p.softmax_scale, x1 = x[2 * j + 1] * p.softmax_scale;
    if (f != nullptr) {
      const float cs = f[2 * j], sn = f[2 * j + 1];
      const float y0 = x0 * cs + x1 * sn, y1 = x1 * cs - x0 * sn;
      x0 = y0, x1 = y1;
    }
    y.w[j] = Half2<T>::pack(x0, x1);
  }
  st_global16(static_cast<T*>(p.grad_q) + row * D + c * 8, y);
}

struct BwdGrids {
  int delta_blocks, dq_blocks, x, y, z;
};
inline BwdGrids bwd_grids(const AttentionParams& p, int head_dim) {
  const int64_t rows = p.batch * p.q_len * p.q_heads;
  return {static_cast<int>((rows + 127) / 128), static_cast<int>((rows * (head_dim / 8) + 127) / 128),
          static_cast<int>((p.k_len + 63) / 64), static_cast<int>(p.kv_heads), static_cast<int>(p.batch)};
}

}  // namespace flash
}  // namespace lumina
