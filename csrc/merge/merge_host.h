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

// The explicit layout: cells (tokens,) or (batch, tokens), int32 or int64, ids in [0, n_cells). check_range: one
// min / max reduction over the ids (a host sync on CUDA) and an error naming `cells` for any id out of range; without
// it such a token belongs to no cell (the kernels never read or write out of bounds for it).
std::tuple<at::Tensor, at::Tensor> merge_tokens_cells_host(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                           const at::Tensor& cells, int64_t n_cells, bool check_range,
                                                           MergeLauncher launch);

at::Tensor merge_tokens_cells_backward_host(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                            const at::Tensor& count, const at::Tensor& cells, bool check_range,
                                            MergeLauncher launch);

}  // namespace lumina
