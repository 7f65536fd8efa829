// CUDA registration of the fused solver-step ops: checks are shared with the CPU path (solver_host.cpp).
#include <torch/library.h>

#include "../cuda_host.h"
#include "solver_cuda.h"
#include "solver_host.h"

namespace lumina {
namespace {

template <SolverType state>
cudaError_t update_for_state(const SolverUpdateParams& p, SolverType k, cudaStream_t s) {
  switch (k) {
    case SolverType::kFloat32: return launch_solver_update_cuda<state, SolverType::kFloat32>(p, s);
    case SolverType::kFloat64: return launch_solver_update_cuda<state, SolverType::kFloat64>(p, s);
    case SolverType::kBFloat16: return launch_solver_update_cuda<state, SolverType::kBFloat16>(p, s);
    case SolverType::kFloat16: return launch_solver_update_cuda<state, SolverType::kFloat16>(p, s);
  }
  return cudaErrorInvalidValue;
}

void launch_update(const SolverUpdateParams& p, SolverType state, SolverType k) {
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream().stream();
  check_launch(state == SolverType::kFloat64 ? update_for_state<SolverType::kFloat64>(p, k, s)
                                             : update_for_state<SolverType::kFloat32>(p, k, s),
               "solver_update");
}

void launch_cfg(const CfgParams& p, SolverType type) {
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream().stream();
  cudaError_t err = cudaErrorInvalidValue;
  switch (type) {
    case SolverType::kFloat32: err = launch_cfg_combine_cuda<SolverType::kFloat32>(p, s); break;
    case SolverType::kFloat64: err = launch_cfg_combine_cuda<SolverType::kFloat64>(p, s); break;
    case SolverType::kBFloat16: err = launch_cfg_combine_cuda<SolverType::kBFloat16>(p, s); break;
    case SolverType::kFloat16: err = launch_cfg_combine_cuda<SolverType::kFloat16>(p, s); break;
  }
  check_launch(err, "cfg_combine");
}

at::Tensor solver_update_cuda(const at::Tensor& x, at::TensorList ks, at::ArrayRef<double> coeffs, double h) {
  const c10::cuda::CUDAGuard guard(x.device());
  return solver_update_host(x, ks, coeffs, h, launch_update);
}

at::Tensor cfg_combine_cuda(const at::Tensor& cond, const at::Tensor& uncond, double scale,
                            std::optional<int64_t> channels, std::optional<double> renorm) {
  const c10::cuda::CUDAGuard guard(cond.device());
  return cfg_combine_host(cond, uncond, scale, channels, renorm, launch_cfg);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CUDA, m) {
  m.impl("solver_update", &solver_update_cuda);
  m.impl("cfg_combine", &cfg_combine_cuda);
}

}  // namespace lumina
