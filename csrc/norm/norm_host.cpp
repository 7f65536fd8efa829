#include "norm_host.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <cmath>

#include "../host_utils.h"

namespace lumina {
namespace {

struct NormShape {
  int64_t batch, rows, dim;
};

// Checks the arguments shared by the forward and backward passes and returns the [batch, rows, dim] view.
NormShape check_norm_args(const at::Tensor& x, const char* x_name, const at::Tensor& weight,
                          const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& gate) {
  kernel_dtype(x, x_name);
  check_contiguous(x, x_name);
  TORCH_CHECK(x.dim() >= 1, "lumina: `", x_name, "` must have at least one dimension, got a scalar");
  const int64_t dim = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == dim, "lumina: `weight` must have shape (", dim,
              ",) to match the last dimension of `", x_name, "`, got ", weight.sizes());
  check_companion(weight, "weight", x, x_name);
  const bool modulated = scale.has_value() || gate.has_value();
  const int64_t batch = modulated ? (x.dim() >= 2 ? x.size(0) : -1) : 1;
  auto check_mod = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t.has_value()) return;
    TORCH_CHECK(x.dim() >= 2, "lumina: `", x_name, "` must be (batch, ..., dim) when `", name,
                "` is given, got shape ", x.sizes());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == batch && t->size(1) == dim, "lumina: `", name,
                "` must have shape (", batch, ", ", dim, ") = (batch, dim) of `", x_name, "`, got ", t->sizes());
    check_companion(*t, name, x, x_name);
  };
  check_mod(scale, "scale");
  check_mod(gate, "gate");
  const int64_t rows = (batch == 0 || dim == 0) ? 0 : x.numel() / (batch * dim);
  return {batch, rows, dim};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fused_rms_norm_host(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& residual, double eps,
    RmsNormFwdLauncher launch) {
  const NormShape s = check_norm_args(x, "x", weight, scale, gate);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "lumina: `eps` must be a finite number >= 0, got ", eps);
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == x.sizes(), "lumina: `residual` must have the shape of `x` ", x.sizes(),
                ", got ", residual->sizes());
    check_companion(*residual, "residual", x, "x");
  }
  at::Tensor out = at::empty_like(x);
  at::Tensor rstd = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  if (x.numel() == 0) return {out, rstd};

  RmsNormFwdParams p;
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  p.scale = scale.has_value() ? scale->data_ptr() : nullptr;
  p.gate = gate.has_value() ? gate->data_ptr() : nullptr;
  p.residual = residual.has_value() ? residual->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.rstd = rstd.data_ptr<float>();
  p.batch = s.batch;
  p.rows = s.rows;
  p.dim = s.dim;
  p.eps = static_cast<float>(eps);
  launch(p, kernel_dtype(x, "x"));
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_rms_norm_backward_host(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& gate, const at::Tensor& rstd,
    int64_t target_blocks, RmsNormBwdLauncher launch) {
  const NormShape s = check_norm_args(x, "x", weight, scale, gate);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "lumina: `grad_out` must have the shape of `x` ", x.sizes(), ", got ",
              grad_out.sizes());
  check_companion(grad_out, "grad_out", x, "x");
  TORCH_CHECK(rstd.scalar_type() == at::kFloat, "lumina: `rstd` must be float32, got ", rstd.scalar_type());
  TORCH_CHECK(rstd.numel() == s.batch * s.rows || x.numel() == 0, "lumina: `rstd` must hold one value per row of `x` (",
              s.batch * s.rows, "), got shape ", rstd.sizes());
  check_same_device(rstd, "rstd", x, "x");
  check_contiguous(rstd, "rstd");

  at::Tensor grad_x = at::empty_like(x);
  const auto f32 = x.options().dtype(at::kFloat);
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(s.rows, (target_blocks + std::max<int64_t>(s.batch, 1) - 1) / std::max<int64_t>(s.batch, 1)));
  const int64_t rows_per_chunk = s.rows == 0 ? 1 : (s.rows + chunks - 1) / chunks;
  at::Tensor pw = at::empty({s.batch, chunks, s.dim}, f32);
  at::Tensor ps = scale.has_value() ? at::empty({s.batch, chunks, s.dim}, f32) : at::empty({0}, f32);
  at::Tensor pg = gate.has_value() ? at::empty({s.batch, chunks, s.dim}, f32) : at::empty({0}, f32);
  if (x.numel() > 0) {
    RmsNormBwdParams p;
    p.grad_out = grad_out.data_ptr();
    p.x = x.data_ptr();
    p.weight = weight.data_ptr();
    p.scale = scale.has_value() ? scale->data_ptr() : nullptr;
    p.gate = gate.has_value() ? gate->data_ptr() : nullptr;
    p.rstd = rstd.data_ptr<float>();
    p.grad_x = grad_x.data_ptr();
    p.partial_weight = pw.data_ptr<float>();
    p.partial_scale = scale.has_value() ? ps.data_ptr<float>() : nullptr;
    p.partial_gate = gate.has_value() ? pg.data_ptr<float>() : nullptr;
    p.batch = s.batch;
    p.rows = s.rows;
    p.dim = s.dim;
    p.chunks = chunks;
    p.rows_per_chunk = rows_per_chunk;
    launch(p, kernel_dtype(x, "x"));
  } else {
    pw.zero_();
    ps.zero_();
    pg.zero_();
  }
  // Sum the per-chunk partials (fp32, deterministic) and return the gradients in the inputs' dtype.
  at::Tensor grad_weight = at::sum(pw, at::IntArrayRef{0, 1}).to(weight.scalar_type());
  at::Tensor grad_scale = scale.has_value() ? at::sum(ps, at::IntArrayRef{1}).to(x.scalar_type()) : at::empty({0}, x.options());
  at::Tensor grad_gate = gate.has_value() ? at::sum(pg, at::IntArrayRef{1}).to(x.scalar_type()) : at::empty({0}, x.options());
  return {grad_x, grad_weight, grad_scale, grad_gate};
}

}  // namespace lumina
