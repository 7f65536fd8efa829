#include "solver_host.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "../host_utils.h"

namespace lumina {
namespace {

// The element type a solver kernel sees for a tensor; errors name the argument for anything else.
SolverType solver_type(const at::Tensor& t, const std::string& name) {
  switch (t.scalar_type()) {
    case at::kFloat: return SolverType::kFloat32;
    case at::kBFloat16: return SolverType::kBFloat16;
    case at::kHalf: return SolverType::kFloat16;
    case at::kDouble: return SolverType::kFloat64;
    default:
      TORCH_CHECK(false, "lumina: `", name, "` must be float32, float64, bfloat16 or float16, got ", t.scalar_type());
  }
}

void check_finite(double v, const char* name) {
  TORCH_CHECK(std::isfinite(v), "lumina: `", name, "` must be finite, got ", v);
}

}  // namespace

at::Tensor solver_update_host(const at::Tensor& x, at::TensorList ks, at::ArrayRef<double> coeffs, double h,
                              SolverUpdateLauncher launch) {
  const SolverType state = solver_type(x, "x");
  TORCH_CHECK(state == SolverType::kFloat32 || state == SolverType::kFloat64,
              "lumina: `x` (the solver state) must be float32 or float64, got ", x.scalar_type());
  check_contiguous(x, "x");
  TORCH_CHECK(!ks.empty() && static_cast<int>(ks.size()) <= kMaxSolverTerms, "lumina: `ks` must hold 1 to ",
              kMaxSolverTerms, " tensors, got ", ks.size());
  TORCH_CHECK(coeffs.size() == ks.size(), "lumina: `coeffs` must have one entry per tensor of `ks` (", ks.size(),
              "), got ", coeffs.size());
  check_finite(h, "h");
  SolverType ktype = SolverType::kFloat32;
  for (size_t i = 0; i < ks.size(); ++i) {
    const std::string name = "ks[" + std::to_string(i) + "]";
    const SolverType t = solver_type(ks[i], name);
    if (i == 0) ktype = t;
    TORCH_CHECK(t == ktype, "lumina: `", name, "` has dtype ", ks[i].scalar_type(), " but `ks[0]` has ",
                ks[0].scalar_type(), "; every tensor of `ks` must have one dtype");
    TORCH_CHECK(ks[i].sizes() == x.sizes(), "lumina: `", name, "` must have the shape of `x` ", x.sizes(), ", got ",
                ks[i].sizes());
    check_same_device(ks[i], name.c_str(), x, "x");
    check_contiguous(ks[i], name.c_str());
    TORCH_CHECK(std::isfinite(coeffs[i]), "lumina: `coeffs` must be finite, got coeffs[", i, "] = ", coeffs[i]);
  }
  SolverUpdateParams p;
  for (size_t i = 0; i < ks.size(); ++i) {
    if (coeffs[i] == 0.0) continue;  // skipped, as the Python solvers skip them (0 * inf would be NaN)
    p.ks[p.terms] = ks[i].data_ptr();
    p.alpha[p.terms] = h * coeffs[i];
    ++p.terms;
  }
  at::Tensor out = at::empty(x.sizes(), x.options());
  p.n = x.numel();
  if (p.n == 0) return out;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  launch(p, state, ktype);
  return out;
}

at::Tensor cfg_combine_host(const at::Tensor& cond, const at::Tensor& uncond, double scale,
                            std::optional<int64_t> channels, std::optional<double> renorm, CfgLauncher launch) {
  const SolverType type = solver_type(cond, "cond");
  check_same_device(uncond, "uncond", cond, "cond");
  check_same_dtype(uncond, "uncond", cond, "cond");
  TORCH_CHECK(uncond.sizes() == cond.sizes(), "lumina: `uncond` must have the shape of `cond` ", cond.sizes(),
              ", got ", uncond.sizes());
  check_contiguous(cond, "cond");
  check_contiguous(uncond, "uncond");
  check_finite(scale, "scale");
  CfgParams p;
  p.scale = scale;
  if (channels.has_value()) {
    TORCH_CHECK(*channels >= 1, "lumina: `channels` must be None or >= 1, got ", *channels);
    TORCH_CHECK(cond.dim() >= 2, "lumina: `channels` needs a channel dimension (dim 1) in `cond`, got shape ",
                cond.sizes());
    p.channels = cond.size(1);
    p.inner = 1;
    for (int64_t d = 2; d < cond.dim(); ++d) p.inner *= cond.size(d);
    p.guided = std::min<int64_t>(*channels, p.channels);
  }
  if (renorm.has_value()) {
    TORCH_CHECK(std::isfinite(*renorm) && *renorm > 0, "lumina: `renorm` must be None (off) or a finite number > 0, "
                "got ", *renorm);
    TORCH_CHECK(cond.dim() >= 1, "lumina: `renorm` needs a batch dimension (dim 0) in `cond`, got a scalar");
    p.renorm = *renorm;
  }
  const bool low = type == SolverType::kBFloat16 || type == SolverType::kFloat16;
  at::Tensor out = at::empty(cond.sizes(), cond.options().dtype(low ? at::kFloat : cond.scalar_type()));
  if (cond.numel() == 0) return out;
  p.batch = cond.dim() >= 1 ? cond.size(0) : 1;
  p.per = cond.numel() / p.batch;
  at::Tensor workspace;
  if (p.renorm > 0) {
    // A fixed split of each sample (a function of its size only): run-to-run deterministic sums.
    p.chunks = std::min<int64_t>(1024, (p.per + 2047) / 2048);
    p.chunk = (p.per + p.chunks - 1) / p.chunks;
    workspace = at::empty({p.batch * (2 * p.chunks + 1)}, cond.options().dtype(at::kDouble));
    p.partial = workspace.data_ptr<double>();
    p.ratio = p.partial + p.batch * p.chunks * 2;
  }
  p.cond = cond.data_ptr();
  p.uncond = uncond.data_ptr();
  p.out = out.data_ptr();
  launch(p, type);
  return out;
}

}  // namespace lumina
