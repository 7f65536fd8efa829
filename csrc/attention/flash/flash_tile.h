// Tile geometry and the pieces shared by the forward and backward flash-attention kernels:
// loading a tile of rows into shared memory (with RoPE applied on the way) and the warp-level
// matrix products on tiles of 64 rows.
#pragma once
#include "../attention_params.h"
#include "flash_common.h"

namespace lumina {
namespace flash {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Both kernels: blocks of 4 warps work on tiles of 64 rows (queries or keys); each warp owns 16 rows.
template <int D>
struct Geometry {
  static_assert(D % 8 == 0 && D >= 16 && D <= 256, "head dim must be a multiple of 8");
  static constexpr int kThreads = 128;
  static constexpr int kRows = 64;                  // rows per tile (Br = Bc = 64)
  static constexpr int kStride = smem_stride(D);    // elements per tile row in shared memory
  static constexpr int kTileBytes = kRows * kStride * 2;
  static constexpr int kK16 = D / 16;               // k16 MMA steps over the head dim ...
  static constexpr bool kK8 = D % 16 == 8;          // ... and one k8 step for D = 72 (no padding to 80 or 96)
  static constexpr int kDn = D / 8;                 // n8 MMA tiles over the head dim
  static constexpr int kChunks = D / 8;             // 16-byte chunks per row
  static constexpr int kStrideS = 72;               // [64][72] halves tile of probabilities (bwd)
};

// Row 0 of head h of sample b in a [batch, len, heads, D] tensor (rows are heads * D elements apart).
template <typename T, int D>
LUMINA_DEV const T* head_rows(const void* base, int b, int len, int heads, int h) {
  return static_cast<const T*>(base) + (static_cast<int64_t>(b) * len * heads + h) * D;
}

// Row 0 of sample b's RoPE table ([batch or 1, len, D/2] complex as D floats per row), or null without one.
template <int D>
LUMINA_DEV const float* table_rows(const float* freqs, bool per_batch, int b, int len) {
  return freqs ? freqs + (per_batch ? static_cast<int64_t>(b) * len * D : 0) : nullptr;
}

// Copies rows [row0, row0 + 64) of one head into a [64][kStride] tile. `src` points at row 0 of the
// head, rows are `row_stride` elements apart; `freqs` (or null) at the RoPE table row of row 0
// (head_dim floats per row). Rows at or past `len` are zero.
template <typename T, int D>
LUMINA_DEV void load_tile(char* tile, const T* src, int64_t row_stride, int row0, int len, const float* freqs) {
  using G = Geometry<D>;
  for (int i = thread_id(); i < G::kRows * G::kChunks; i += G::kThreads) {
    const int r = i / G::kChunks, c = i % G::kChunks;
    const int row = row0 + r;
    Pack16 x = {{0u, 0u, 0u, 0u}};
    if (row < len) {
      x = ld_global16(src + row * row_stride + c * 8);
      if (freqs != nullptr) {
        const float* f = freqs + static_cast<int64_t>(row) * D + c * 8;
        x = rotate8<T>(x, ld_global_f4(f), ld_global_f4(f + 4), 1.f);
      }
    }
    st_shared(tile + (r * G::kStride + c * 8) * 2, x);
  }
}

// Validity of keys [col0, col0 + 64) as 1 / 0 floats: inside the sequence and not masked out.
LUMINA_DEV void load_key_valid(float* valid, const bool* mask_row, int col0, int len) {
  const int t = thread_id();
  if (t < 64) {
    const int col = col0 + t;
    const bool ok = col < len && (mask_row == nullptr || mask_row[col]);
    st_shared(valid + t, ok ? 1.f : 0.f);
  }
}

// acc[16 x 64] (+)= A[16 x D] * B[64 x D]^T: A is rows [a_row0, +16) of a [.][kStride] tile,
// B the 64 rows of another (8 n8 tiles of acc, C layout).
template <typename T, int D>
LUMINA_DEV void mma_rows_x_rowsT(float (&acc)[8][4], const char* a_tile, int a_row0, const char* b_tile) {
  using G = Geometry<D>;
  const int lane = thread_id() % 32;
  const int a_row = a_row0 + lane % 16, a_col = (lane / 16) * 8;          // x4 A: 16 rows x 16
  const int b_row = (lane / 16) * 8 + lane % 8, b_col = ((lane / 8) % 2) * 8;  // x4 B: 2 n8 tiles x k16
#pragma unroll
  for (int ks = 0; ks < G::kK16; ++ks) {
    uint32_t a[4];
    ldsm_x4(a, a_tile + (a_row * G::kStride + ks * 16 + a_col) * 2);
#pragma unroll
    for (int nt = 0; nt < 8; nt += 2) {
      uint32_t b[4];
      ldsm_x4(b, b_tile + ((nt * 8 + b_row) * G::kStride + ks * 16 + b_col) * 2);
      Mma<T>::k16(acc[nt], a, b[0], b[1]);
      Mma<T>::k16(acc[nt + 1], a, b[2], b[3]);
    }
  }
  if constexpr (G::kK8) {
    constexpr int k0 = G::kK16 * 16;
    uint32_t a[2];
    ldsm_x2(a, a_tile + (a_row * G::kStride + k0) * 2);  // lanes 0..15: rows 0..15
    const int b_row8 = ((lane / 8) % 2) * 8 + lane % 8;    // lanes 0..7: tile nt, 8..15: tile nt + 1
#pragma unroll
    for (int nt = 0; nt < 8; nt += 2) {
      uint32_t b[2];
      ldsm_x2(b, b_tile + ((nt * 8 + b_row8) * G::kStride + k0) * 2);
      Mma<T>::k8(acc[nt], a, b[0]);
      Mma<T>::k8(acc[nt + 1], a, b[1]);
    }
  }
}

// Packs a 16 x 64 C-layout accumulator's columns [16 kk, 16 kk + 16) as a 16x16 A fragment.
template <typename T>
LUMINA_DEV void c_to_a(uint32_t (&a)[4], const float (&acc)[8][4], int kk) {
  a[0] = Half2<T>::pack(acc[2 * kk][0], acc[2 * kk][1]);
  a[1] = Half2<T>::pack(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = Half2<T>::pack(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  a[3] = Half2<T>::pack(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// out[16 x D] += A * B[16 rows of b_tile from row 16 kk][D]: A a 16x16 fragment, B read with
// ldmatrix.trans from a [.][kStride] tile (rows are the reduction index).
template <typename T, int D>
LUMINA_DEV void mma_a_x_rows(float (&out)[Geometry<D>::kDn][4], const uint32_t (&a)[4], const char* b_tile, int kk) {
  using G = Geometry<D>;
  const int lane = thread_id() % 32;
  const int b_row = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8;  // matrices: (k 0-7, n), (k 8-15, n), (k 0-7, n+1), ...
#pragma unroll
  for (int dn = 0; dn + 1 < G::kDn; dn += 2) {
    uint32_t b[4];
    ldsm_x4_t(b, b_tile + (b_row * G::kStride + (dn + lane / 16) * 8) * 2);
    Mma<T>::k16(out[dn], a, b[0], b[1]);
    Mma<T>::k16(out[dn + 1], a, b[2], b[3]);
  }
  if constexpr (G::kDn % 2 == 1) {
    constexpr int dn = G::kDn - 1;
    uint32_t b[2];
    ldsm_x2_t(b, b_tile + (b_row * G::kStride + dn * 8) * 2);
    Mma<T>::k16(out[dn], a, b[0], b[1]);
  }
}

}  // namespace flash
}  // namespace lumina
