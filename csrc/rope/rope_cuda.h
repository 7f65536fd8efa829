// Launcher of the RoPE CUDA kernel, one instance per element type (instances/*.cu).
#pragma once
#include <cuda_runtime_api.h>

#include "../common.h"
#include "rope_params.h"

namespace lumina {

template <DType dt> cudaError_t launch_rope_cuda(const RopeParams& p, cudaStream_t stream);

}  // namespace lumina
