// Launchers of the token-merging CUDA kernels, one instance per element type (instances/*.cu).
#pragma once
#include <cuda_runtime_api.h>

#include "../common.h"
#include "merge_params.h"

namespace lumina {

template <DType dt> cudaError_t launch_merge_fwd_cuda(const MergeParams& p, cudaStream_t stream);
template <DType dt> cudaError_t launch_merge_bwd_cuda(const MergeParams& p, cudaStream_t stream);

}  // namespace lumina
