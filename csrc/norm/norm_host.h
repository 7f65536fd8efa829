// Device-independent host side of the fused RMSNorm ops: argument checks, output allocation and
// params filling. The CPU and CUDA files pass their launcher; nothing else differs between them.
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>

#include "../common.h"
#include "norm_params.h"

namespace lumina {

using RmsNormFwdLauncher = void (*)(const RmsNormFwdParams&, DType);
using RmsNormBwdLauncher = void (*)(const RmsNormBwdParams&, DType);

std::tuple<at::Tensor, at::Tensor> fused_rms_norm_host(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& residual, double eps,
    RmsNormFwdLauncher launch);

// `target_blocks` is how many (batch, chunk) pieces of work the device wants in flight.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rms_norm_backward_host(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& gate, const at::Tensor& rstd,
    int64_t target_blocks, RmsNormBwdLauncher launch);

}  // namespace lumina
