// CUDA registration of the RoPE op: checks are shared with the CPU path (rope_host.cpp).
#include <torch/library.h>

#include "../cuda_host.h"
#include "rope_cuda.h"
#include "rope_host.h"

namespace lumina {
namespace {

template <DType dt>
struct Rope {
  static cudaError_t run(const RopeParams& p, cudaStream_t s) { return launch_rope_cuda<dt>(p, s); }
};

void launch(const RopeParams& p, DType dtype) {
  check_launch(dispatch_cuda_dtype<Rope>(dtype, p, c10::cuda::getCurrentCUDAStream().stream()), "rope");
}

at::Tensor rope_cuda(const at::Tensor& x, const at::Tensor& freqs_cis, bool inverse) {
  const c10::cuda::CUDAGuard guard(x.device());
  return rope_host(x, freqs_cis, inverse, launch);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CUDA, m) { m.impl("rope", &rope_cuda); }

}  // namespace lumina
