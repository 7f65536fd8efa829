// CUDA registration of the attention ops: the flash kernels of csrc/attention/flash, bf16 and fp16,
// head dims 64, 72, 96 and 128 (one generated instance each). Checks are shared with the CPU path
// (attention_host.cpp); what only the CUDA kernels need is checked here.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <utility>

#include "../cuda_host.h"
#include "attention_host.h"
#include "flash/flash_cuda.h"

namespace lumina {
namespace {

bool has_head_dim_kernel(int64_t d) {
  for (int k : kFlashHeadDims)
    if (k == d) return true;
  return false;
}

// "64, 72, 96 and 128": kFlashHeadDims for the messages.
std::string head_dims_text() {
  constexpr int n = sizeof(kFlashHeadDims) / sizeof(kFlashHeadDims[0]);
  std::string s;
  for (int i = 0; i < n; ++i) s += (i == 0 ? "" : i + 1 == n ? " and " : ", ") + std::to_string(kFlashHeadDims[i]);
  return s;
}

void check_cuda_support(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
              "lumina: the CUDA attention kernel takes bfloat16 or float16 `q`, got ", q.scalar_type(),
              " (tensor cores; use torch SDPA for float32)");
  TORCH_CHECK(q.dim() == 4 && has_head_dim_kernel(q.size(3)),
              "lumina: the CUDA attention kernel has head dims ", head_dims_text(), ", `q` has ",
              q.dim() == 4 ? q.size(3) : -1);
  TORCH_CHECK(q.size(0) <= kMaxGridYZ, "lumina: the CUDA attention kernel takes a batch of at most ", kMaxGridYZ,
              " (gridDim.z), `q` has batch ", q.size(0), "; split the batch");
  TORCH_CHECK(q.size(2) <= kMaxGridYZ, "lumina: the CUDA attention kernel takes at most ", kMaxGridYZ,
              " query heads (gridDim.y), `q` has ", q.size(2));
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  TORCH_CHECK(major >= 8, "lumina: the CUDA attention kernel needs compute capability 8.0 or newer (mma.sync ",
              "with bf16), the device has ", major, ".x");
}

// 16-byte vector loads need 16-byte aligned rows: contiguous tensors with a misaligned start are copied.
at::Tensor aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}
std::optional<at::Tensor> aligned(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->numel() > 0 ? std::optional<at::Tensor>(aligned(*t)) : t;
}

// Calls the instance of launcher L for p.head_dim, one of kFlashHeadDims (csrc/limits.h).
template <DType dt, template <DType, int> class L, size_t... I>
cudaError_t for_head_dim(const AttentionParams& p, cudaStream_t s, std::index_sequence<I...>) {
  cudaError_t err = cudaErrorInvalidValue;
  (void)((p.head_dim == kFlashHeadDims[I] && ((err = L<dt, kFlashHeadDims[I]>::run(p, s)), true)) || ...);
  return err;
}
constexpr auto kHeadDimIndices = std::make_index_sequence<sizeof(kFlashHeadDims) / sizeof(kFlashHeadDims[0])>();

template <DType dt, int D>
struct Fwd {
  static cudaError_t run(const AttentionParams& p, cudaStream_t s) { return launch_attention_fwd_cuda<dt, D>(p, s); }
};
template <DType dt, int D>
struct Bwd {
  static cudaError_t run(const AttentionParams& p, cudaStream_t s) { return launch_attention_bwd_cuda<dt, D>(p, s); }
};

template <DType dt>
cudaError_t fwd_for_dim(const AttentionParams& p, cudaStream_t s) {
  return for_head_dim<dt, Fwd>(p, s, kHeadDimIndices);
}

template <DType dt>
cudaError_t bwd_for_dim(const AttentionParams& p, cudaStream_t s) {
  return for_head_dim<dt, Bwd>(p, s, kHeadDimIndices);
}

void launch_fwd(const AttentionParams& p, DType dtype) {
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream().stream();
  check_launch(dtype == DType::kBFloat16 ? fwd_for_dim<DType::kBFloat16>(p, s) : fwd_for_dim<DType::kFloat16>(p, s),
               "attention_fwd");
}

void launch_bwd(const AttentionParams& params, DType dtype) {
  // workspaces: delta = rowsum(dO * O) and the fp32 dQ accumulator
  const auto opts = at::TensorOptions().device(at::kCUDA, c10::cuda::current_device()).dtype(at::kFloat);
  at::Tensor delta = at::empty({params.batch, params.q_heads, params.q_len}, opts);
  at::Tensor dq_accum = at::zeros({params.batch, params.q_len, params.q_heads, params.head_dim}, opts);
  AttentionParams p = params;
  p.delta = delta.data_ptr<float>();
  p.dq_accum = dq_accum.data_ptr<float>();
  const cudaStream_t s = c10::cuda::getCurrentCUDAStream().stream();
  check_launch(dtype == DType::kBFloat16 ? bwd_for_dim<DType::kBFloat16>(p, s) : bwd_for_dim<DType::kFloat16>(p, s),
               "attention_bwd");
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& q_freqs,
                                                      const std::optional<at::Tensor>& k_freqs,
                                                      const std::optional<at::Tensor>& key_padding_mask,
                                                      double softmax_scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  check_cuda_support(q);
  return attention_fwd_host(aligned(q), aligned(k), aligned(v), aligned(q_freqs), aligned(k_freqs), key_padding_mask,
                            softmax_scale, launch_fwd);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& q_freqs, const std::optional<at::Tensor>& k_freqs,
    const std::optional<at::Tensor>& key_padding_mask, double softmax_scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  check_cuda_support(q);
  return attention_bwd_host(aligned(grad_out), aligned(q), aligned(k), aligned(v), aligned(out), lse, aligned(q_freqs),
                            aligned(k_freqs), key_padding_mask, softmax_scale, launch_bwd);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda);
  m.impl("attention_bwd", &attention_bwd_cuda);
}

}  // namespace lumina
