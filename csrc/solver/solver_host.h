// Device-independent host side of the fused solver-step ops: checks, allocation, params.
#pragma once
#include <ATen/core/ATen_fwd.h>
#include <ATen/core/Tensor.h>
#include <optional>

#include "solver_params.h"

namespace lumina {

using SolverUpdateLauncher = void (*)(const SolverUpdateParams&, SolverType state, SolverType k);
// Runs every pass of cfg_combine; the renorm workspace (p.partial, p.ratio) is allocated by the host.
using CfgLauncher = void (*)(const CfgParams&, SolverType input);

at::Tensor solver_update_host(const at::Tensor& x, at::TensorList ks, at::ArrayRef<double> coeffs, double h,
                              SolverUpdateLauncher launch);

at::Tensor cfg_combine_host(const at::Tensor& cond, const at::Tensor& uncond, double scale,
                            std::optional<int64_t> channels, std::optional<double> renorm, CfgLauncher launch);

}  // namespace lumina
