// CUDA registration of the fused RMSNorm ops: checks and allocation are shared with the CPU path
// (norm_host.cpp); this file only launches the per-dtype instances on the current stream.
#include <torch/library.h>

#include "../cuda_host.h"
#include "norm_cuda.h"
#include "norm_host.h"

namespace lumina {
namespace {

template <DType dt>
struct Fwd {
  static cudaError_t run(const RmsNormFwdParams& p, cudaStream_t s) { return launch_rms_norm_fwd_cuda<dt>(p, s); }
};
template <DType dt>
struct Bwd {
  static cudaError_t run(const RmsNormBwdParams& p, cudaStream_t s) { return launch_rms_norm_bwd_cuda<dt>(p, s); }
};

void check_dim(int64_t dim, int64_t elem_size) {
  const int64_t vec = 16 / elem_size;
  const int64_t max_dim = dim % vec == 0 ? kNormMaxVectorsPerRow * vec : kNormMaxVectorsPerRow;
  TORCH_CHECK(dim <= max_dim, "lumina: the last dimension of `x` (", dim, ") is larger than the CUDA RMSNorm ",
              "kernels hold (", max_dim, " for this dtype", dim % vec == 0 ? "" : " when dim is not a multiple of 16 bytes",
              "); use lumina_kernels.reference");
}

void launch_fwd(const RmsNormFwdParams& p, DType dtype) {
  check_launch(dispatch_cuda_dtype<Fwd>(dtype, p, c10::cuda::getCurrentCUDAStream().stream()), "fused_rms_norm");
}

void launch_bwd(const RmsNormBwdParams& p, DType dtype) {
  TORCH_CHECK(p.batch <= kMaxGridYZ, "lumina: the CUDA RMSNorm backward takes at most ", kMaxGridYZ, " batches, got ",
              p.batch);
  check_launch(dispatch_cuda_dtype<Bwd>(dtype, p, c10::cuda::getCurrentCUDAStream().stream()),
               "fused_rms_norm_backward");
}

std::tuple<at::Tensor, at::Tensor> fused_rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& scale,
                                                       const std::optional<at::Tensor>& gate,
                                                       const std::optional<at::Tensor>& residual, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.dim() >= 1) check_dim(x.size(-1), x.element_size());
  return fused_rms_norm_host(x, weight, scale, gate, residual, eps, launch_fwd);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rms_norm_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& gate, const at::Tensor& rstd) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (x.dim() >= 1) check_dim(x.size(-1), x.element_size());
  return fused_rms_norm_backward_host(grad_out, x, weight, scale, gate, rstd, 4 * num_sms(), launch_bwd);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CUDA, m) {
  m.impl("fused_rms_norm", &fused_rms_norm_cuda);
  m.impl("fused_rms_norm_backward", &fused_rms_norm_backward_cuda);
}

}  // namespace lumina
