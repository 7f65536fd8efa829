// Launchers of the flash-attention CUDA kernels: one instance per (element type, head dim), each in
// its own generated file under csrc/attention/instances/.
#pragma once
#include <cuda_runtime_api.h>

#include "../../common.h"
#include "../../limits.h"
#include "../attention_params.h"

namespace lumina {

// One instance per head dim of kFlashHeadDims (csrc/limits.h).
template <DType dt, int D> cudaError_t launch_attention_fwd_cuda(const AttentionParams& p, cudaStream_t stream);
// Needs p.delta and p.dq_accum (zeroed) as workspaces.
template <DType dt, int D> cudaError_t launch_attention_bwd_cuda(const AttentionParams& p, cudaStream_t stream);

}  // namespace lumina
