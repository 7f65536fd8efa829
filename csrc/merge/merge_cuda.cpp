// CUDA registration of the token-merging ops: checks are shared with the CPU path (merge_host.cpp).
#include <torch/library.h>

#include "../cuda_host.h"
#include "merge_cuda.h"
#include "merge_host.h"

namespace lumina {
namespace {

template <DType dt>
struct Fwd {
  static cudaError_t run(const MergeParams& p, cudaStream_t s) { return launch_merge_fwd_cuda<dt>(p, s); }
};
template <DType dt>
struct Bwd {
  static cudaError_t run(const MergeParams& p, cudaStream_t s) { return launch_merge_bwd_cuda<dt>(p, s); }
};

void launch_fwd(const MergeParams& p, DType dtype) {
  check_launch(dispatch_cuda_dtype<Fwd>(dtype, p, c10::cuda::getCurrentCUDAStream().stream()), "merge_tokens");
}
void launch_bwd(const MergeParams& p, DType dtype) {
  check_launch(dispatch_cuda_dtype<Bwd>(dtype, p, c10::cuda::getCurrentCUDAStream().stream()), "merge_tokens_backward");
}

std::tuple<at::Tensor, at::Tensor> merge_tokens_cuda(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                     at::IntArrayRef grid, at::IntArrayRef factor) {
  const c10::cuda::CUDAGuard guard(x.device());
  return merge_tokens_host(x, mask, grid, factor, launch_fwd);
}
at::Tensor merge_tokens_backward_cuda(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                      const at::Tensor& count, at::IntArrayRef grid, at::IntArrayRef factor) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  return merge_tokens_backward_host(grad_out, mask, count, grid, factor, launch_bwd);
}

// True while the current stream captures a CUDA graph: no host sync (the range check) is allowed then.
bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check_launch(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream().stream(), &status), "merge_tokens_cells");
  return status != cudaStreamCaptureStatusNone;
}

// The forward checks the range of the ids with one min / max reduction (a host sync) unless a graph is captured;
// the backward never does (its ids come from a checked forward). Either way an id out of range only drops its token:
// the kernels skip it (see merge_params.h).
std::tuple<at::Tensor, at::Tensor> merge_tokens_cells_cuda(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                           const at::Tensor& cells, int64_t n_cells) {
  const c10::cuda::CUDAGuard guard(x.device());
  return merge_tokens_cells_host(x, mask, cells, n_cells, /*check_range=*/!capturing(), launch_fwd);
}
at::Tensor merge_tokens_cells_backward_cuda(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                            const at::Tensor& count, const at::Tensor& cells) {
  const c10::cuda::CUDAGuard guard(grad_out.device());
  return merge_tokens_cells_backward_host(grad_out, mask, count, cells, /*check_range=*/false, launch_bwd);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CUDA, m) {
  m.impl("merge_tokens", &merge_tokens_cuda);
  m.impl("merge_tokens_backward", &merge_tokens_backward_cuda);
  m.impl("merge_tokens_cells", &merge_tokens_cells_cuda);
  m.impl("merge_tokens_cells_backward", &merge_tokens_cells_backward_cuda);
}

}  // namespace lumina
