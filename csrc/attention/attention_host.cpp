#include "attention_host.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <cmath>

#include "../host_utils.h"

namespace lumina {
namespace {

// Checks q, k, v, the tables and the mask (shared by forward and backward) and fills the input half of the params.
AttentionParams check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const std::optional<at::Tensor>& q_freqs,
                                     const std::optional<at::Tensor>& k_freqs,
                                     const std::optional<at::Tensor>& mask, double softmax_scale) {
  kernel_dtype(q, "q");
  TORCH_CHECK(q.dim() == 4, "lumina: `q` must be (batch, q_len, q_heads, head_dim), got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 4, "lumina: `k` must be (batch, k_len, kv_heads, head_dim), got shape ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "lumina: `v` must have the shape of `k` ", k.sizes(), ", got ", v.sizes());
  check_companion(k, "k", q, "q");
  check_companion(v, "v", q, "q");
  check_contiguous(q, "q");
  const int64_t B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3), Lk = k.size(1), Hkv = k.size(2);
  TORCH_CHECK(k.size(0) == B, "lumina: `k` must have the batch size of `q` (", B, "), got ", k.size(0));
  TORCH_CHECK(k.size(3) == D, "lumina: `k` must have the head dim of `q` (", D, "), got ", k.size(3));
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, "lumina: the query heads of `q` (", Hq,
              ") must be a multiple of the KV heads of `k` (", Hkv, ")");
  TORCH_CHECK(std::isfinite(softmax_scale), "lumina: `softmax_scale` must be finite, got ", softmax_scale);

  AttentionParams p;
  auto table = [&](const std::optional<at::Tensor>& f, const char* name, int64_t L, bool& per_batch) -> const float* {
    if (!f.has_value()) return nullptr;
    TORCH_CHECK(D % 2 == 0, "lumina: the head dim of `q` must be even when `", name, "` is given, got ", D);
    TORCH_CHECK(f->scalar_type() == at::kComplexFloat, "lumina: `", name, "` must be complex64, got ", f->scalar_type());
    check_same_device(*f, name, q, "q");
    check_contiguous(*f, name);
    per_batch = f->dim() == 3;
    TORCH_CHECK((f->dim() == 2 && f->size(0) == L && f->size(1) == D / 2) ||
                    (per_batch && f->size(0) == B && f->size(1) == L && f->size(2) == D / 2),
                "lumina: `", name, "` must have shape (seq, head_dim/2) = (", L, ", ", D / 2,
                ") or (batch, seq, head_dim/2) = (", B, ", ", L, ", ", D / 2, "), got ", f->sizes());
    return reinterpret_cast<const float*>(f->data_ptr());  // complex64 is (real, imag) float pairs
  };
  p.q_freqs = table(q_freqs, "q_freqs", Lq, p.q_freqs_per_batch);
  p.k_freqs = table(k_freqs, "k_freqs", Lk, p.k_freqs_per_batch);
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, "lumina: `key_padding_mask` must be bool, got ", mask->scalar_type());
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == B && mask->size(1) == Lk,
                "lumina: `key_padding_mask` must have shape (batch, k_len) = (", B, ", ", Lk, "), got ", mask->sizes());
    check_same_device(*mask, "key_padding_mask", q, "q");
    check_contiguous(*mask, "key_padding_mask");
    p.mask = mask->data_ptr<bool>();
  }
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.batch = B;
  p.q_len = Lq;
  p.k_len = Lk;
  p.q_heads = Hq;
  p.kv_heads = Hkv;
  p.head_dim = D;
  p.softmax_scale = static_cast<float>(softmax_scale);
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_fwd_host(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const std::optional<at::Tensor>& q_freqs,
                                                      const std::optional<at::Tensor>& k_freqs,
                                                      const std::optional<at::Tensor>& key_padding_mask,
                                                      double softmax_scale, AttentionLauncher launch) {
  AttentionParams p = check_attention_args(q, k, v, q_freqs, k_freqs, key_padding_mask, softmax_scale);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({p.batch, p.q_heads, p.q_len}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  launch(p, kernel_dtype(q, "q"));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_host(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& q_freqs, const std::optional<at::Tensor>& k_freqs,
    const std::optional<at::Tensor>& key_padding_mask, double softmax_scale, AttentionLauncher launch) {
  AttentionParams p = check_attention_args(q, k, v, q_freqs, k_freqs, key_padding_mask, softmax_scale);
  TORCH_CHECK(grad_out.sizes() == q.sizes(), "lumina: `grad_out` must have the shape of `q` ", q.sizes(), ", got ",
              grad_out.sizes());
  check_companion(grad_out, "grad_out", q, "q");
  TORCH_CHECK(out.sizes() == q.sizes(), "lumina: `out` must have the shape of `q` ", q.sizes(), ", got ", out.sizes());
  check_companion(out, "out", q, "q");
  TORCH_CHECK(lse.scalar_type() == at::kFloat, "lumina: `lse` must be float32, got ", lse.scalar_type());
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == p.batch && lse.size(1) == p.q_heads && lse.size(2) == p.q_len,
              "lumina: `lse` must have shape (batch, q_heads, q_len) = (", p.batch, ", ", p.q_heads, ", ", p.q_len,
              "), got ", lse.sizes());
  check_same_device(lse, "lse", q, "q");
  check_contiguous(lse, "lse");
  at::Tensor grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  if (q.numel() == 0 || k.numel() == 0) {  // no query or no key: nothing flows
    grad_q.zero_();
    grad_k.zero_();
    grad_v.zero_();
    return {grad_q, grad_k, grad_v};
  }
  p.grad_out = grad_out.data_ptr();
  p.out_saved = out.data_ptr();
  p.lse_saved = lse.data_ptr<float>();
  p.grad_q = grad_q.data_ptr();
  p.grad_k = grad_k.data_ptr();
  p.grad_v = grad_v.data_ptr();
  launch(p, kernel_dtype(q, "q"));
  return {grad_q, grad_k, grad_v};
}

}  // namespace lumina
