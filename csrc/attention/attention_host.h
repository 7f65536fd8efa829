// Device-independent host side of the attention ops: checks, allocation, params. CPU and CUDA pass their launcher.
#pragma once
#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>

#include "../common.h"
#include "attention_params.h"

namespace lumina {

using AttentionLauncher = void (*)(const AttentionParams&, DType);

std::tuple<at::Tensor, at::Tensor> attention_fwd_host(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& q_freqs,
                                                      const std::optional<at::Tensor>& k_freqs,
                                                      const std::optional<at::Tensor>& key_padding_mask,
                                                      double softmax_scale, AttentionLauncher launch);

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_host(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& q_freqs, const std::optional<at::Tensor>& k_freqs,
    const std::optional<at::Tensor>& key_padding_mask, double softmax_scale, AttentionLauncher launch);

}  // namespace lumina
