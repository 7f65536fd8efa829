// Launchers of the flash-attention CUDA kernels: one instance per (element type, head dim), each in
// its own generated file under csrc/attention/instances/.
#pragma once
#include <cuda_runtime_api.h>

#include "../../common.h"
#include "../attention_params.h"

namespace lumina {

// Head dims with a compiled kernel; others are refused by the op with this list in the message.
constexpr int kFlashHeadDims[] = {64, 72, 96, 128};

template <DType dt, int D> cudaError_t launch_attention_fwd_cuda(const AttentionParams& p, cudaStream_t stream);
// Needs p.delta and p.dq_accum (zeroed) as workspaces.
template <DType dt, int D> cudaError_t launch_attention_bwd_cuda(const AttentionParams& p, cudaStream_t stream);

}  // namespace lumina
