// The __global__ entry points and launchers of the flash-attention kernels (included by the
// generated instance files only).
#pragma once
#include "flash_bwd.h"
#include "flash_cuda.h"
#include "flash_fwd.h"

namespace lumina {
namespace flash {

template <DType dt> struct FlashType;
template <> struct FlashType<DType::kBFloat16> { using type = bf16_t; };
template <> struct FlashType<DType::kFloat16> { using type = f16_t; };

template <typename T, int D>
__global__ void __launch_bounds__(128) fwd_kernel(const AttentionParams p) {
  extern __shared__ __align__(16) char smem[];
  fwd_block<T, D>(p, smem);
}
template <typename T, int D>
__global__ void __launch_bounds__(128) bwd_delta_kernel(const AttentionParams p) {
  bwd_delta_block<T, D>(p, p.delta);
}
template <typename T, int D>
__global__ void __launch_bounds__(128) bwd_kernel(const AttentionParams p) {
  extern __shared__ __align__(16) char smem[];
  bwd_block<T, D>(p, p.delta, p.dq_accum, smem);
}
template <typename T, int D>
__global__ void __launch_bounds__(128) bwd_dq_kernel(const AttentionParams p) {
  bwd_dq_block<T, D>(p, p.dq_accum);
}

// The largest dynamic shared memory a block may take on every architecture the runtime accepts
// (compute capability 8.0 and newer): 99 KiB on sm_86 and sm_89 (163 KiB on sm_80, 227 KiB on sm_90).
constexpr int kMaxSmemPerBlock = 99 * 1024;

// Kernels using more than 48 KiB of dynamic shared memory must say so first.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, int bytes) {
  return bytes > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)
                           : cudaSuccess;
}

}  // namespace flash

template <DType dt, int D>
cudaError_t launch_attention_fwd_cuda(const AttentionParams& p, cudaStream_t stream) {
  using T = typename flash::FlashType<dt>::type;
  constexpr int smem = flash::FwdSmem<D>::kBytes;
  static_assert(smem <= flash::kMaxSmemPerBlock, "forward tile exceeds the 99 KiB shared memory of sm_86/sm_89");
  if (cudaError_t e = flash::allow_smem(flash::fwd_kernel<T, D>, smem); e != cudaSuccess) return e;
  const flash::FwdGrid grid = flash::fwd_grid(p);
  flash::fwd_kernel<T, D><<<dim3(grid.x, grid.y, grid.z), 128, smem, stream>>>(p);
  return cudaGetLastError();
}

template <DType dt, int D>
cudaError_t launch_attention_bwd_cuda(const AttentionParams& p, cudaStream_t stream) {
  using T = typename flash::FlashType<dt>::type;
  constexpr int smem = flash::BwdSmem<D>::kBytes;
  static_assert(smem <= flash::kMaxSmemPerBlock, "backward tile exceeds the 99 KiB shared memory of sm_86/sm_89");
  if (cudaError_t e = flash::allow_smem(flash::bwd_kernel<T, D>, smem); e != cudaSuccess) return e;
  const flash::BwdGrids grids = flash::bwd_grids(p, D);
  flash::bwd_delta_kernel<T, D><<<grids.delta_blocks, 128, 0, stream>>>(p);
  flash::bwd_kernel<T, D><<<dim3(grids.x, grids.y, grids.z), 128, smem, stream>>>(p);
  flash::bwd_dq_kernel<T, D><<<grids.dq_blocks, 128, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace lumina
