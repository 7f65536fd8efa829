// Launchers of the fused RMSNorm CUDA kernels, one instance per element type (instances/*.cu).
// Plain declarations: the host file that calls them needs no CUDA compiler.
#pragma once
#include <cuda_runtime_api.h>

#include "../common.h"
#include "norm_params.h"

namespace lumina {

// Largest last dimension the CUDA kernels accept: 4096 vectors of `vec` elements, where vec is
// 16 bytes' worth when dim and every pointer allow 16-byte accesses, else 1.
constexpr int kNormMaxVectorsPerRow = 4096;

template <DType dt> cudaError_t launch_rms_norm_fwd_cuda(const RmsNormFwdParams& p, cudaStream_t stream);
template <DType dt> cudaError_t launch_rms_norm_bwd_cuda(const RmsNormBwdParams& p, cudaStream_t stream);

}  // namespace lumina
