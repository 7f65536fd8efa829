// Device-independent host side of the RoPE op: checks, allocation, params. CPU and CUDA pass their launcher.
#pragma once
#include <ATen/core/Tensor.h>

#include "../common.h"
#include "rope_params.h"

namespace lumina {

using RopeLauncher = void (*)(const RopeParams&, DType);

at::Tensor rope_host(const at::Tensor& x, const at::Tensor& freqs_cis, bool inverse, RopeLauncher launch);

}  // namespace lumina
