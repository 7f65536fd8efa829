// Launchers of the fused solver-step CUDA kernels, one instance per element type (instances/*.cu).
#pragma once
#include <cuda_runtime_api.h>

#include "solver_params.h"

namespace lumina {

template <SolverType state, SolverType k>
cudaError_t launch_solver_update_cuda(const SolverUpdateParams& p, cudaStream_t stream);
// Every pass of cfg_combine: with renorm, the per-sample norms, the ratios, then the output.
template <SolverType input> cudaError_t launch_cfg_combine_cuda(const CfgParams& p, cudaStream_t stream);

}  // namespace lumina
