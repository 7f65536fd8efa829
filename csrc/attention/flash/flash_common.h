// Warp-level building blocks of the flash-attention kernels: tensor-core MMA, ldmatrix, shuffles,
// barriers, shared-memory access and 16-bit float packing.
//
// Compiled two ways:
//  * by nvcc (the product): each primitive is one PTX instruction or CUDA intrinsic (sm_80+).
//  * by a host C++ compiler with LUMINA_FLASH_EMULATE defined (tests/emulator): each primitive is
//    carried out by the warp emulator (flash_emulate.h), which runs every thread of a block as a
//    fiber and implements the collective instructions from the PTX ISA's fragment layouts. The
//    kernels themselves are the same source in both builds.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16 / m16n8k8"), g = lane / 4, t = lane % 4:
//   A 16x16 (row): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..), a[2] = (g, 8+2t..), a[3] = (g+8, 8+2t..)
//   A 16x8:        a[0] = (g, 2t..),     a[1] = (g+8, 2t..)
//   B 16x8 (col):  b[0] = (k 2t..2t+1, n g), b[1] = (k 8+2t.., n g);  B 8x8: b[0] = (k 2t.., n g)
//   C 16x8 (f32):  c[0], c[1] = (g, 2t), (g, 2t+1);  c[2], c[3] = (g+8, 2t), (g+8, 2t+1)
// Two 16-bit values share a 32-bit register, the lower index in the low half.
#pragma once
#include <cstdint>

#ifdef LUMINA_FLASH_EMULATE
#include "flash_emulate.h"
#define LUMINA_DEV inline
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define LUMINA_DEV __device__ __forceinline__
#endif

namespace lumina {
namespace flash {

struct alignas(16) Pack16 {  // 16 bytes: 8 halves or 4 floats
  uint32_t w[4];
};
struct alignas(16) Float4 {
  float v[4];
};
struct Float2 {
  float x, y;
};

#ifdef LUMINA_FLASH_EMULATE
using bf16_t = emu::bf16;
using f16_t = emu::f16;
#else
using bf16_t = __nv_bfloat16;
using f16_t = __half;
#endif

// ---- 16-bit float packing -------------------------------------------------------------------
template <typename T> struct Half2;
template <> struct Half2<bf16_t> {
  static LUMINA_DEV uint32_t pack(float lo, float hi) {
#ifdef LUMINA_FLASH_EMULATE
    return emu::bf16_bits(lo) | (uint32_t(emu::bf16_bits(hi)) << 16);
#else
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
#endif
  }
  static LUMINA_DEV Float2 unpack(uint32_t w) {
#ifdef LUMINA_FLASH_EMULATE
    return {emu::bf16_float(uint16_t(w & 0xffffu)), emu::bf16_float(uint16_t(w >> 16))};
#else
    __nv_bfloat162 h = *reinterpret_cast<__nv_bfloat162*>(&w);
    float2 f = __bfloat1622float2(h);
    return {f.x, f.y};
#endif
  }
};
template <> struct Half2<f16_t> {
  static LUMINA_DEV uint32_t pack(float lo, float hi) {
#ifdef LUMINA_FLASH_EMULATE
    return emu::f16_bits(lo) | (uint32_t(emu::f16_bits(hi)) << 16);
#else
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
#endif
  }
  static LUMINA_DEV Float2 unpack(uint32_t w) {
#ifdef LUMINA_FLASH_EMULATE
    return {emu::f16_float(uint16_t(w & 0xffffu)), emu::f16_float(uint16_t(w >> 16))};
#else
    __half2 h = *reinterpret_cast<__half2*>(&w);
    float2 f = __half22float2(h);
    return {f.x, f.y};
#endif
  }
};

// ---- thread coordinates and barriers --------------------------------------------------------
#ifdef LUMINA_FLASH_EMULATE
LUMINA_DEV int thread_id() { return emu::thread_id(); }
LUMINA_DEV int block_x() { return emu::block_idx(0); }
LUMINA_DEV int block_y() { return emu::block_idx(1); }
LUMINA_DEV int block_z() { return emu::block_idx(2); }
LUMINA_DEV void sync_block() { emu::sync_block(); }
#else
LUMINA_DEV int thread_id() { return static_cast<int>(threadIdx.x); }
LUMINA_DEV int block_x() { return static_cast<int>(blockIdx.x); }
LUMINA_DEV int block_y() { return static_cast<int>(blockIdx.y); }
LUMINA_DEV int block_z() { return static_cast<int>(blockIdx.z); }
LUMINA_DEV void sync_block() { __syncthreads(); }
#endif

// ---- shared memory (every access goes through these, so the emulator can check for races) ----
template <typename V>
LUMINA_DEV void st_shared(void* p, const V& v) {
#ifdef LUMINA_FLASH_EMULATE
  emu::shared_access(p, sizeof(V), true);
#endif
  *static_cast<V*>(p) = v;
}
template <typename V>
LUMINA_DEV V ld_shared(const void* p) {
#ifdef LUMINA_FLASH_EMULATE
  emu::shared_access(p, sizeof(V), false);
#endif
  return *static_cast<const V*>(p);
}

// ---- global memory --------------------------------------------------------------------------
template <typename V>
LUMINA_DEV V ld_global(const void* p) {
#ifdef LUMINA_FLASH_EMULATE
  return *static_cast<const V*>(p);
#else
  return __ldg(static_cast<const V*>(p));
#endif
}
LUMINA_DEV Pack16 ld_global16(const void* p) {
#ifdef LUMINA_FLASH_EMULATE
  emu::check_aligned16(p);
  return *static_cast<const Pack16*>(p);
#else
  uint4 u = __ldg(static_cast<const uint4*>(p));
  return {{u.x, u.y, u.z, u.w}};
#endif
}
LUMINA_DEV Float4 ld_global_f4(const float* p) {
#ifdef LUMINA_FLASH_EMULATE
  emu::check_aligned16(p);
  return *reinterpret_cast<const Float4*>(p);
#else
  const float4 u = __ldg(reinterpret_cast<const float4*>(p));
  return {{u.x, u.y, u.z, u.w}};
#endif
}
LUMINA_DEV void st_global16(void* p, const Pack16& v) {
#ifdef LUMINA_FLASH_EMULATE
  emu::check_aligned16(p);
#endif
  *static_cast<Pack16*>(p) = v;
}
LUMINA_DEV void atomic_add(float* p, float v) {
#ifdef LUMINA_FLASH_EMULATE
  *p += v;  // fibers never interleave inside a statement
#else
  atomicAdd(p, v);
#endif
}

// ---- warp shuffles --------------------------------------------------------------------------
LUMINA_DEV float shfl_xor(float v, int mask) {
#ifdef LUMINA_FLASH_EMULATE
  return emu::shfl_xor(v, mask);
#else
  return __shfl_xor_sync(0xffffffffu, v, mask);
#endif
}
// max that propagates NaN (fmaxf drops it): a NaN score makes its row NaN, as the reference does
LUMINA_DEV float nan_max(float a, float b) { return (a > b || a != a) ? a : b; }
// Max and sum over the four threads of a quad (the threads that share a row of a C fragment).
LUMINA_DEV float quad_max(float v) {
  v = nan_max(v, shfl_xor(v, 1));
  return nan_max(v, shfl_xor(v, 2));
}
LUMINA_DEV float quad_sum(float v) {
  v += shfl_xor(v, 1);
  return v + shfl_xor(v, 2);
}

LUMINA_DEV float fast_exp2(float x) {
#ifdef LUMINA_FLASH_EMULATE
  return exp2f(x);
#else
  return exp2f(x);  // ex2.approx.ftz under -use_fast_math; exact-rounded otherwise
#endif
}

// ---- ldmatrix -------------------------------------------------------------------------------
// x4: lanes 8i..8i+7 give the row addresses of matrix i; register i of every lane holds its part of
// matrix i. x2 uses lanes 0..15, x1 lanes 0..7. .trans delivers the transposed 8x8 matrices.
// The "memory" clobber: ldmatrix reads shared memory that plain C++ stores wrote; without it the
// compiler may move those stores (or cached shared-memory loads) across the asm statement.
#ifdef LUMINA_FLASH_EMULATE
LUMINA_DEV void ldsm_x4(uint32_t (&r)[4], const void* p) { emu::ldmatrix(r, 4, false, p); }
LUMINA_DEV void ldsm_x2(uint32_t (&r)[2], const void* p) { emu::ldmatrix(r, 2, false, p); }
LUMINA_DEV void ldsm_x4_t(uint32_t (&r)[4], const void* p) { emu::ldmatrix(r, 4, true, p); }
LUMINA_DEV void ldsm_x2_t(uint32_t (&r)[2], const void* p) { emu::ldmatrix(r, 2, true, p); }
#else
LUMINA_DEV uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
LUMINA_DEV void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
LUMINA_DEV void ldsm_x2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p))
               : "memory");
}
LUMINA_DEV void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p))
               : "memory");
}
LUMINA_DEV void ldsm_x2_t(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p))
               : "memory");
}
#endif

// ---- tensor-core MMA: d += a * b, fp32 accumulators ------------------------------------------
template <typename T> struct Mma;
#ifdef LUMINA_FLASH_EMULATE
template <typename T> struct Mma {
  static LUMINA_DEV void k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    emu::mma(d, a, 4, b0, b1, emu::is_bf16<T>());
  }
  static LUMINA_DEV void k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b0) {
    uint32_t a4[4] = {a[0], a[1], 0u, 0u};
    emu::mma(d, a4, 2, b0, 0u, emu::is_bf16<T>());
  }
};
#else
#define LUMINA_MMA_K16(TY)                                                                          \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TY "." TY                                   \
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"             \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                    \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
#define LUMINA_MMA_K8(TY)                                                                        \
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32." TY "." TY                                 \
               ".f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"                      \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                 \
               : "r"(a[0]), "r"(a[1]), "r"(b0))
template <> struct Mma<bf16_t> {
  static LUMINA_DEV void k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { LUMINA_MMA_K16("bf16"); }
  static LUMINA_DEV void k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b0) { LUMINA_MMA_K8("bf16"); }
};
template <> struct Mma<f16_t> {
  static LUMINA_DEV void k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { LUMINA_MMA_K16("f16"); }
  static LUMINA_DEV void k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b0) { LUMINA_MMA_K8("f16"); }
};
#undef LUMINA_MMA_K16
#undef LUMINA_MMA_K8
#endif

// ---- tile geometry ---------------------------------------------------------------------------
// Row stride (in elements) of a [rows][D] tile in shared memory: ldmatrix reads 8 rows of 16 bytes
// at once, which hit 32 distinct banks when the stride in 4-byte words is an odd multiple of 4
// (D = 72 as it is; 64, 96 and 128 padded by 8 elements).
constexpr int smem_stride(int d) { return ((d / 2) % 8 == 4) ? d : d + 8; }

// Rotates the four (even, odd) pairs of 8 packed halves by four complex numbers f = (cos, sin);
// `sign` = -1 rotates by the conjugate (the inverse, for gradients).
template <typename T>
LUMINA_DEV Pack16 rotate8(const Pack16& x, const Float4& f01, const Float4& f23, float sign) {
  Pack16 y;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const Float2 v = Half2<T>::unpack(x.w[i]);
    const float c = i < 2 ? f01.v[2 * i] : f23.v[2 * (i - 2)];
    const float s = sign * (i < 2 ? f01.v[2 * i + 1] : f23.v[2 * (i - 2) + 1]);
    y.w[i] = Half2<T>::pack(v.x * c - v.y * s, v.x * s + v.y * c);
  }
  return y;
}

}  // namespace flash
}  // namespace lumina
