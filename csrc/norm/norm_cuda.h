// Launchers of the fused RMSNorm CUDA kernels, one instance per element type (instances/*.cu).
// Plain declarations: the host file that calls them needs no CUDA compiler.
#pragma once
#include <cuda_runtime_api.h>

#include "../common.h"
#include "../limits.h"
#include "norm_params.h"

namespace lumina {

// The kernels take a last dimension of at most kNormMaxVectorsPerRow vectors (csrc/limits.h).
template <DType dt> cudaError_t launch_rms_norm_fwd_cuda(const RmsNormFwdParams& p, cudaStream_t stream);
template <DType dt> cudaError_t launch_rms_norm_bwd_cuda(const RmsNormBwdParams& p, cudaStream_t stream);

}  // namespace lumina
