// Device-independent host side of the token-merging ops: checks, allocation, params.
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>

#include "../common.h"
#include "merge_params.h"

namespace lumina {

using MergeLauncher = void (*)(const MergeParams&, DType);

std::tuple<at::Tensor, at::Tensor> merge_tokens_host(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                     at::IntArrayRef grid, at::IntArrayRef factor,
                                                     MergeLauncher launch);

at::Tensor merge_tokens_backward_host(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                      const at::Tensor& count, at::IntArrayRef grid, at::IntArrayRef factor,
                                      MergeLauncher launch);

}  // namespace lumina
