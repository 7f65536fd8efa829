// C++ CPU kernels of attention with fused RoPE, GQA and a key padding mask (forward and backward).
//
// Flash-attention on the CPU: tiles of BK keys, online softmax, fp32 accumulation. A forward task is
// (batch, kv head, block of query positions) and holds the rows of all G = q_heads / kv_heads query
// heads that read that KV head, so every K/V tile is loaded (and K rotated) once for G * BQ rows and
// K/V are never copied per query head. RoPE is applied as q and k tiles are loaded into fp32 buffers.
// The backward recomputes P = exp(s - lse) tile by tile (flash attention 2): a task is (batch, kv head,
// chunk of key tiles); dK and dV of its keys are complete in the task (summed over the G heads), dQ is
// summed over the chunks afterwards, then every gradient is rotated back by the conjugate table.
//
// The tile arithmetic works on fp32 buffers only and is compiled three times (AVX-512, AVX2+FMA and the
// build's baseline ISA) and picked at run time, since the extension is built without -march.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../cpu_utils.h"
#include "attention_host.h"

namespace lumina {
namespace {

constexpr int64_t BK = 64;    // keys per tile
constexpr int64_t ROWS = 64;  // query rows (positions x heads of a group) per tile step
constexpr int64_t TASK_ROWS = 512;  // query rows per forward task: each loaded (and rotated) K/V tile serves them all
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------------------------------------
// fp32 tile arithmetic (ISA-dispatched)
// ------------------------------------------------------------------------------------------------
#define LUMINA_INLINE inline __attribute__((always_inline))

// x[j] = exp(x[j] - sub) for j < n, 0 where x[j] - sub < -87 (masked keys: exactly 0). Cephes' expf
// polynomial (about 1 ulp), written without calls or branches so that the compiler vectorizes it.
LUMINA_INLINE void exp_row(float* __restrict x, int64_t n, float sub) {
  for (int64_t j = 0; j < n; ++j) {
    float v = x[j] - sub;
    const bool dead = v < -87.0f;
    v = v < -87.0f ? -87.0f : v;
    v = v > 88.0f ? 88.0f : v;
    const float fx = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(v / ln 2)
    float r = v - fx * 0.693359375f;
    r = r - fx * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
    float p2;
    std::memcpy(&p2, &bits, sizeof(float));
    x[j] = dead ? 0.0f : y * p2;
  }
}

// Register-blocked micro-kernel (GCC/Clang vector extensions: one zmm register under AVX-512):
// C[r][0 : 16 NV] += sum_k A(r, k) * B[k][0 : 16 NV] for r < MR, A(r, k) = A[r * a_rs + k * a_ks].
typedef float vf16 __attribute__((vector_size(64)));
typedef float vf16u __attribute__((vector_size(64), aligned(4)));

template <int MR, int NV, bool ACC>
LUMINA_INLINE void micro(int64_t K, const float* __restrict A, int64_t a_rs, int64_t a_ks, const float* __restrict B,
                         int64_t ldb, float* __restrict C, int64_t ldc) {
  vf16 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = ACC ? *reinterpret_cast<const vf16u*>(C + r * ldc + 16 * v) : vf16{};
  for (int64_t k = 0; k < K; ++k) {
    vf16 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const vf16u*>(B + k * ldb + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * a_rs + k * a_ks];
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<vf16u*>(C + r * ldc + 16 * v) = c[r][v];
}

template <int MR, bool ACC>
LUMINA_INLINE void micro_cols(int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_ks, const float* B,
                              int64_t ldb, float* C, int64_t ldc) {
  int64_t c0 = 0;
  for (; c0 + 64 <= N; c0 += 64) micro<MR, 4, ACC>(K, A, a_rs, a_ks, B + c0, ldb, C + c0, ldc);
  switch ((N - c0) / 16) {
    case 3: micro<MR, 3, ACC>(K, A, a_rs, a_ks, B + c0, ldb, C + c0, ldc); break;
    case 2: micro<MR, 2, ACC>(K, A, a_rs, a_ks, B + c0, ldb, C + c0, ldc); break;
    case 1: micro<MR, 1, ACC>(K, A, a_rs, a_ks, B + c0, ldb, C + c0, ldc); break;
    default: break;
  }
}

// C[i][:N] (+)= sum_k A(i, k) * B[k][:N] for i < M (accumulating when ACC); N a multiple of 16.
template <bool ACC>
LUMINA_INLINE void gemm_acc(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_ks,
                            const float* B, int64_t ldb, float* C, int64_t ldc) {
  int64_t i = 0;
  for (; i + 4 <= M; i += 4) micro_cols<4, ACC>(N, K, A + i * a_rs, a_rs, a_ks, B, ldb, C + i * ldc, ldc);
  for (; i < M; ++i) micro_cols<1, ACC>(N, K, A + i * a_rs, a_rs, a_ks, B, ldb, C + i * ldc, ldc);
}

// S[i][j] = sum_d A[i][d] * BT[d][j], i < M, all BK columns; A row stride lda, BT row stride BK.
LUMINA_INLINE void scores(const float* A, int64_t lda, int64_t M, const float* BT, int64_t D, float* S) {
  gemm_acc<false>(M, BK, D, A, lda, 1, BT, BK, S, BK);
}

// C[i][:] += sum_j P[i][j] * X[j][:], i < M, j < n; P row stride BK, X and C row stride ld (a multiple of 16).
LUMINA_INLINE void acc_pv(const float* P, int64_t M, int64_t n, const float* X, int64_t /*D*/, int64_t ld, float* C) {
  gemm_acc<true>(M, ld, n, P, BK, 1, X, ld, C, ld);
}

// C[j][:] += sum_i P[i][j] * X[i][:], i < M, j < n; P row stride BK, X and C row stride ld.
LUMINA_INLINE void acc_ptx(const float* P, int64_t M, int64_t n, const float* X, int64_t /*D*/, int64_t ld, float* C) {
  gemm_acc<true>(n, ld, M, P, 1, BK, X, ld, C, ld);
}

// One key tile of the forward pass for M rows: Q (pre-scaled) [M][ld], KT [D][BK], V [n][ld], bias [n].
struct FwdTile {
  const float* Q;
  const float* KT;
  const float* V;
  const float* bias;  // 0 or -inf per key, or null
  int64_t M, n, D, ld;
  float* m;    // [M] running max
  float* l;    // [M] running sum
  float* acc;  // [M][ld]
  float* S;    // scratch [M][BK]
};

LUMINA_INLINE void fwd_tile_impl(const FwdTile& t) {
  scores(t.Q, t.ld, t.M, t.KT, t.D, t.S);
  for (int64_t i = 0; i < t.M; ++i) {
    float* s = t.S + i * BK;
    if (t.bias)  // masked keys: -inf exactly (their K rows are zeros, but a NaN query would still give NaN + -inf)
      for (int64_t j = 0; j < t.n; ++j) s[j] = t.bias[j] == 0.f ? s[j] : kNegInf;
    // NaN-propagating max: a NaN score (a NaN or inf in q or an unmasked key) makes the row NaN, as the reference
    float mx = t.m[i];
    if (t.n == BK) {  // full tile: vector max
      vf16 v = *reinterpret_cast<const vf16u*>(s);
      for (int64_t j = 16; j < BK; j += 16) {
        const vf16 w = *reinterpret_cast<const vf16u*>(s + j);
        v = (w > v) | (w != w) ? w : v;
      }
      for (int j = 0; j < 16; ++j) mx = (v[j] > mx || v[j] != v[j]) ? v[j] : mx;
    } else {
      for (int64_t j = 0; j < t.n; ++j) mx = (s[j] > mx || s[j] != s[j]) ? s[j] : mx;
    }
    if (mx == kNegInf) {  // every key so far masked: nothing to add
      for (int64_t j = 0; j < t.n; ++j) s[j] = 0.f;
      continue;
    }
    const float alpha = t.m[i] == kNegInf ? 0.f : std::exp(t.m[i] - mx);
    t.m[i] = mx;
    exp_row(s, t.n, mx);
    float sum = 0.f;
    if (t.n == BK) {  // full tile: vector sum
      vf16 v = *reinterpret_cast<const vf16u*>(s);
      for (int64_t j = 16; j < BK; j += 16) v += *reinterpret_cast<const vf16u*>(s + j);
      for (int j = 0; j < 16; ++j) sum += v[j];
    } else {
      for (int64_t j = 0; j < t.n; ++j) sum += s[j];
    }
    t.l[i] = t.l[i] * alpha + sum;
    if (alpha != 1.f) {
      float* a = t.acc + i * t.ld;
      for (int64_t d = 0; d < t.D; ++d) a[d] *= alpha;
    }
  }
  acc_pv(t.S, t.M, t.n, t.V, t.D, t.ld, t.acc);
}

// One (row block, key tile) step of the backward pass.
struct BwdTile {
  const float* Q;      // [M][ld] rotated, not scaled
  const float* dO;     // [M][ld]
  const float* lse;    // [M]
  const float* delta;  // [M] rowsum(dO * O)
  const float* K;      // [n][ld] rotated
  const float* KT;     // [D][BK]
  const float* VT;     // [D][BK]
  const float* bias;   // [n] or null
  int64_t M, n, D, ld;
  float scale;
  float* dQ;  // [M][ld] (rotated frame)
  float* dK;  // [n][ld] (rotated frame)
  float* dV;  // [n][ld]
  float* P;   // scratch [M][BK]
  float* dP;  // scratch [M][BK]
};

LUMINA_INLINE void bwd_tile_impl(const BwdTile& t) {
  scores(t.Q, t.ld, t.M, t.KT, t.D, t.P);
  scores(t.dO, t.ld, t.M, t.VT, t.D, t.dP);
  for (int64_t i = 0; i < t.M; ++i) {
    float* p = t.P + i * BK;
    float* dp = t.dP + i * BK;
    const float lse = t.lse[i];
    if (lse == kNegInf) {  // a row with every key masked: no gradient
      for (int64_t j = 0; j < t.n; ++j) p[j] = dp[j] = 0.f;
      continue;
    }
    for (int64_t j = 0; j < t.n; ++j) p[j] = p[j] * t.scale + (t.bias ? t.bias[j] : 0.f);
    exp_row(p, t.n, lse);
    const float di = t.delta[i];
    for (int64_t j = 0; j < t.n; ++j) dp[j] = p[j] * (dp[j] - di) * t.scale;  // dS, scale folded in
  }
  acc_ptx(t.P, t.M, t.n, t.dO, t.D, t.ld, t.dV);
  acc_ptx(t.dP, t.M, t.n, t.Q, t.D, t.ld, t.dK);
  acc_pv(t.dP, t.M, t.n, t.K, t.D, t.ld, t.dQ);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LUMINA_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#define LUMINA_AVX2 __attribute__((target("avx2,fma")))
LUMINA_AVX512 void fwd_tile_avx512(const FwdTile& t) { fwd_tile_impl(t); }
LUMINA_AVX512 void bwd_tile_avx512(const BwdTile& t) { bwd_tile_impl(t); }
LUMINA_AVX2 void fwd_tile_avx2(const FwdTile& t) { fwd_tile_impl(t); }
LUMINA_AVX2 void bwd_tile_avx2(const BwdTile& t) { bwd_tile_impl(t); }
#endif
void fwd_tile_base(const FwdTile& t) { fwd_tile_impl(t); }
void bwd_tile_base(const BwdTile& t) { bwd_tile_impl(t); }

struct TileFns {
  void (*fwd)(const FwdTile&);
  void (*bwd)(const BwdTile&);
};

TileFns tile_fns() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq"))
    return {fwd_tile_avx512, bwd_tile_avx512};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {fwd_tile_avx2, bwd_tile_avx2};
#endif
  return {fwd_tile_base, bwd_tile_base};
}

// ------------------------------------------------------------------------------------------------
// loading and storing tiles (element type T), RoPE applied on the way
// ------------------------------------------------------------------------------------------------
// dst[:D] = rotate(src[:D]) * mul, by the table row f (D/2 complex numbers, conjugated when inverse) or not at all.
template <typename S, typename Dst>
inline void load_row(Dst* __restrict dst, const S* __restrict src, int64_t D, const float* f, float mul, bool inverse) {
  if (!f) {
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<Dst>(static_cast<float>(src[d]) * mul);
    return;
  }
  const float sign = inverse ? -1.f : 1.f;
  for (int64_t i = 0; i < D / 2; ++i) {
    const float c = f[2 * i], s = sign * f[2 * i + 1];
    const float x0 = static_cast<float>(src[2 * i]), x1 = static_cast<float>(src[2 * i + 1]);
    dst[2 * i] = static_cast<Dst>((x0 * c - x1 * s) * mul);
    dst[2 * i + 1] = static_cast<Dst>((x0 * s + x1 * c) * mul);
  }
}

inline const float* table_row(const float* freqs, bool per_batch, int64_t b, int64_t len, int64_t l, int64_t D) {
  if (!freqs) return nullptr;
  return freqs + ((per_batch ? b * len : 0) + l) * D;  // D/2 complex = D floats per position
}

// Key tile [j0, j0 + n) of KV head h of batch b: K rows (rotated) [n][ld] and / or transposed KT [D][BK],
// V rows [n][ld] and / or VT [D][BK], bias [n] (0 or -inf). Returns false when every key of the tile is masked.
template <typename T>
bool load_key_tile(const AttentionParams& p, int64_t b, int64_t h, int64_t j0, int64_t n, int64_t ld, float* K,
                   float* KT, float* V, float* VT, float* bias, bool& has_bias) {
  const int64_t D = p.head_dim, Hkv = p.kv_heads;
  has_bias = false;
  if (p.mask) {
    const bool* m = p.mask + b * p.k_len + j0;
    bool any = false;
    for (int64_t j = 0; j < n; ++j) {
      bias[j] = m[j] ? 0.f : kNegInf;
      any |= m[j];
      has_bias |= !m[j];
    }
    if (!any) return false;
  }
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  float row[1024];
  float* tmp = D <= 1024 ? row : nullptr;
  std::vector<float> big(D > 1024 ? D : 0);
  if (!tmp) tmp = big.data();
  for (int64_t j = 0; j < n; ++j) {
    const int64_t off = ((b * p.k_len + j0 + j) * Hkv + h) * D;
    const float* f = table_row(p.k_freqs, p.k_freqs_per_batch, b, p.k_len, j0 + j, D);
    float* kr = K ? K + j * ld : tmp;
    const bool masked = p.mask && !p.mask[b * p.k_len + j0 + j];  // never read: a NaN there contributes nothing
    if (masked)
      std::fill(kr, kr + D, 0.f);
    else
      load_row(kr, k + off, D, f, 1.f, false);
    if (KT)
      for (int64_t d = 0; d < D; ++d) KT[d * BK + j] = kr[d];
    float* vr = V ? V + j * ld : tmp;
    if (masked)
      std::fill(vr, vr + D, 0.f);
    else
      load_row(vr, v + off, D, nullptr, 1.f, false);
    if (VT)
      for (int64_t d = 0; d < D; ++d) VT[d * BK + j] = vr[d];
  }
  return true;
}

// Rows of a task: row r = g * npos + (l - l0) is query position l of query head h * G + g.
template <typename T>
void load_q_rows(const AttentionParams& p, const void* src_v, int64_t b, int64_t h, int64_t l0, int64_t npos,
                 int64_t ld, float mul, bool rotate, float* dst) {
  const T* src = static_cast<const T*>(src_v);
  const int64_t G = p.q_heads / p.kv_heads, D = p.head_dim;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t l = 0; l < npos; ++l) {
      const int64_t off = ((b * p.q_len + l0 + l) * p.q_heads + h * G + g) * D;
      const float* f = rotate ? table_row(p.q_freqs, p.q_freqs_per_batch, b, p.q_len, l0 + l, D) : nullptr;
      load_row(dst + (g * npos + l) * ld, src + off, D, f, mul, false);
    }
}

// ------------------------------------------------------------------------------------------------
// forward
// ------------------------------------------------------------------------------------------------
template <typename T>
void fwd_kernel(const AttentionParams& p) {
  const TileFns fns = tile_fns();
  const int64_t D = p.head_dim, ld = (D + 15) / 16 * 16, G = p.q_heads / p.kv_heads;
  const int64_t bq = std::max<int64_t>(1, TASK_ROWS / G);  // query positions per task
  const int64_t nqb = (p.q_len + bq - 1) / bq;
  T* out = static_cast<T*>(p.out);
  at::parallel_for(0, p.batch * p.kv_heads * nqb, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Q(G * bq * ld), acc(G * bq * ld), S(ROWS * BK), KT(D * BK), V(BK * ld), bias(BK), m(G * bq),
        l(G * bq);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % nqb, h = (task / nqb) % p.kv_heads, b = task / (nqb * p.kv_heads);
      const int64_t l0 = qb * bq, npos = std::min(bq, p.q_len - l0), M = G * npos;
      load_q_rows<T>(p, p.q, b, h, l0, npos, ld, p.softmax_scale, true, Q.data());
      std::fill(acc.begin(), acc.begin() + M * ld, 0.f);
      std::fill(m.begin(), m.begin() + M, kNegInf);
      std::fill(l.begin(), l.begin() + M, 0.f);
      for (int64_t j0 = 0; j0 < p.k_len; j0 += BK) {
        const int64_t n = std::min(BK, p.k_len - j0);
        bool has_bias;
        if (!load_key_tile<T>(p, b, h, j0, n, ld, nullptr, KT.data(), V.data(), nullptr, bias.data(), has_bias)) continue;
        for (int64_t r0 = 0; r0 < M; r0 += ROWS)
          fns.fwd({Q.data() + r0 * ld, KT.data(), V.data(), has_bias ? bias.data() : nullptr, std::min(ROWS, M - r0), n,
                   D, ld, m.data() + r0, l.data() + r0, acc.data() + r0 * ld, S.data()});
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t i = 0; i < npos; ++i) {
          const int64_t r = g * npos + i, hq = h * G + g;
          const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
          T* o = out + ((b * p.q_len + l0 + i) * p.q_heads + hq) * D;
          for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(acc[r * ld + d] * inv);
          p.lse[(b * p.q_heads + hq) * p.q_len + l0 + i] = l[r] > 0.f ? m[r] + std::log(l[r]) : kNegInf;
        }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// backward
// ------------------------------------------------------------------------------------------------
template <typename T>
void bwd_kernel(const AttentionParams& p) {
  const TileFns fns = tile_fns();
  const int64_t D = p.head_dim, ld = (D + 15) / 16 * 16, G = p.q_heads / p.kv_heads, R = G * p.q_len;
  const int64_t nkb = (p.k_len + BK - 1) / BK;
  // Enough tasks for every thread: split the key tiles of a (batch, kv head) into chunks when needed.
  const int64_t groups = p.batch * p.kv_heads;
  const int64_t chunks = std::min<int64_t>(nkb, std::max<int64_t>(1, (2 * at::get_num_threads() + groups - 1) / groups));
  const int64_t kb_per_chunk = (nkb + chunks - 1) / chunks;
  std::vector<float> dq_partial(groups * chunks * R * ld);
  T* gk = static_cast<T*>(p.grad_k);
  T* gv = static_cast<T*>(p.grad_v);
  at::parallel_for(0, groups * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Q(R * ld), dO(R * ld), lse(R), delta(R), K(BK * ld), KT(D * BK), VT(D * BK), bias(BK),
        dK(BK * ld), dV(BK * ld), P(ROWS * BK), dP(ROWS * BK);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task % chunks, bh = task / chunks, h = bh % p.kv_heads, b = bh / p.kv_heads;
      float* dQ = dq_partial.data() + task * R * ld;
      std::fill(dQ, dQ + R * ld, 0.f);
      const int64_t kb0 = c * kb_per_chunk, kb1 = std::min(nkb, kb0 + kb_per_chunk);
      if (kb0 >= kb1) continue;
      load_q_rows<T>(p, p.q, b, h, 0, p.q_len, ld, 1.f, true, Q.data());
      load_q_rows<T>(p, p.grad_out, b, h, 0, p.q_len, ld, 1.f, false, dO.data());
      for (int64_t g = 0; g < G; ++g)
        for (int64_t l = 0; l < p.q_len; ++l) {
          const int64_t r = g * p.q_len + l, hq = h * G + g;
          lse[r] = p.lse_saved[(b * p.q_heads + hq) * p.q_len + l];
          const T* o = static_cast<const T*>(p.out_saved) + ((b * p.q_len + l) * p.q_heads + hq) * D;
          float s = 0.f;
          for (int64_t d = 0; d < D; ++d) s += static_cast<float>(o[d]) * dO[r * ld + d];
          delta[r] = s;
        }
      for (int64_t kb = kb0; kb < kb1; ++kb) {
        const int64_t j0 = kb * BK, n = std::min(BK, p.k_len - j0);
        std::fill(dK.begin(), dK.begin() + n * ld, 0.f);
        std::fill(dV.begin(), dV.begin() + n * ld, 0.f);
        bool has_bias;
        if (load_key_tile<T>(p, b, h, j0, n, ld, K.data(), KT.data(), nullptr, VT.data(), bias.data(), has_bias)) {
          for (int64_t r0 = 0; r0 < R; r0 += ROWS) {
            const int64_t M = std::min(ROWS, R - r0);
            fns.bwd({Q.data() + r0 * ld, dO.data() + r0 * ld, lse.data() + r0, delta.data() + r0, K.data(), KT.data(),
                     VT.data(), has_bias ? bias.data() : nullptr, M, n, D, ld, p.softmax_scale, dQ + r0 * ld, dK.data(),
                     dV.data(), P.data(), dP.data()});
          }
        }
        for (int64_t j = 0; j < n; ++j) {  // dK back to the unrotated frame
          const int64_t off = ((b * p.k_len + j0 + j) * p.kv_heads + h) * D;
          const float* f = table_row(p.k_freqs, p.k_freqs_per_batch, b, p.k_len, j0 + j, D);
          load_row(gk + off, dK.data() + j * ld, D, f, 1.f, true);
          load_row(gv + off, dV.data() + j * ld, D, nullptr, 1.f, false);
        }
      }
    }
  });
  // dQ: sum over the chunks, back to the unrotated frame.
  T* gq = static_cast<T*>(p.grad_q);
  at::parallel_for(0, groups * R, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t begin, int64_t end) {
    std::vector<float> row(D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bh = t / R, r = t % R, g = r / p.q_len, l = r % p.q_len, h = bh % p.kv_heads, b = bh / p.kv_heads;
      const float* src = dq_partial.data() + (bh * chunks) * R * ld + r * ld;
      for (int64_t d = 0; d < D; ++d) row[d] = src[d];
      for (int64_t c = 1; c < chunks; ++c)
        for (int64_t d = 0; d < D; ++d) row[d] += src[c * R * ld + d];
      const int64_t off = ((b * p.q_len + l) * p.q_heads + h * G + g) * D;
      load_row(gq + off, row.data(), D, table_row(p.q_freqs, p.q_freqs_per_batch, b, p.q_len, l, D), 1.f, true);
    }
  });
}

void launch_fwd_cpu(const AttentionParams& p, DType dtype) {
  dispatch_cpu_dtype(dtype, [&](auto t) { fwd_kernel<decltype(t)>(p); });
}

void launch_bwd_cpu(const AttentionParams& p, DType dtype) {
  dispatch_cpu_dtype(dtype, [&](auto t) { bwd_kernel<decltype(t)>(p); });
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const std::optional<at::Tensor>& q_freqs,
                                                     const std::optional<at::Tensor>& k_freqs,
                                                     const std::optional<at::Tensor>& key_padding_mask,
                                                     double softmax_scale) {
  return attention_fwd_host(q, k, v, q_freqs, k_freqs, key_padding_mask, softmax_scale, launch_fwd_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& q_freqs, const std::optional<at::Tensor>& k_freqs,
    const std::optional<at::Tensor>& key_padding_mask, double softmax_scale) {
  return attention_bwd_host(grad_out, q, k, v, out, lse, q_freqs, k_freqs, key_padding_mask, softmax_scale,
                            launch_bwd_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CPU, m) {
  m.impl("attention_fwd", &attention_fwd_cpu);
  m.impl("attention_bwd", &attention_bwd_cpu);
}

}  // namespace lumina
