#include "merge_host.h"

#include <ATen/ops/empty.h>

#include <vector>

#include "../host_utils.h"

namespace lumina {
namespace {

// Fills the geometry of the params from grid / factor (2 or 3 entries each).
void geometry(MergeParams& p, at::IntArrayRef grid, at::IntArrayRef factor) {
  TORCH_CHECK(grid.size() == 2 || grid.size() == 3, "lumina: `grid` must be (h, w) or (frames, h, w), got ", grid);
  TORCH_CHECK(factor.size() == grid.size(), "lumina: `factor` must have one entry per axis of `grid` ", grid,
              ", got ", factor);
  const size_t off = 3 - grid.size();
  for (size_t i = 0; i < grid.size(); ++i) {
    TORCH_CHECK(grid[i] >= 1, "lumina: `grid` entries must be >= 1, got ", grid);
    TORCH_CHECK(factor[i] >= 1, "lumina: `factor` entries must be >= 1, got ", factor);
    p.grid[off + i] = grid[i];
    p.factor[off + i] = factor[i];
  }
  p.cells = 1;
  for (int i = 0; i < 3; ++i) {
    p.cgrid[i] = (p.grid[i] + p.factor[i] - 1) / p.factor[i];
    p.cells *= p.cgrid[i];
  }
}

const bool* mask_arg(const std::optional<at::Tensor>& mask, const at::Tensor& ref, const char* ref_name, int64_t B,
                     int64_t L) {
  if (!mask.has_value()) return nullptr;
  TORCH_CHECK(mask->scalar_type() == at::kBool, "lumina: `mask` must be bool, got ", mask->scalar_type());
  TORCH_CHECK(mask->dim() == 2 && mask->size(0) == B && mask->size(1) == L,
              "lumina: `mask` must have shape (batch, tokens) = (", B, ", ", L, "), got ", mask->sizes());
  check_same_device(*mask, "mask", ref, ref_name);
  check_contiguous(*mask, "mask");
  return mask->data_ptr<bool>();
}

std::vector<int64_t> with_len(const at::Tensor& t, int64_t len) {
  std::vector<int64_t> s(t.sizes().begin(), t.sizes().end());
  s[1] = len;
  return s;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> merge_tokens_host(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                     at::IntArrayRef grid, at::IntArrayRef factor,
                                                     MergeLauncher launch) {
  const DType dtype = kernel_dtype(x, "x");
  TORCH_CHECK(x.dim() >= 3, "lumina: `x` must be (batch, tokens, ...) e.g. (batch, tokens, heads, head_dim), got shape ",
              x.sizes());
  check_contiguous(x, "x");
  MergeParams p;
  geometry(p, grid, factor);
  const int64_t B = x.size(0), L = x.size(1);
  TORCH_CHECK(p.grid[0] * p.grid[1] * p.grid[2] == L, "lumina: `grid` ", grid, " holds ",
              p.grid[0] * p.grid[1] * p.grid[2], " tokens but `x` has ", L);
  p.mask = mask_arg(mask, x, "x", B, L);
  p.batch = B;
  p.tokens = L;
  p.width = L > 0 && B > 0 ? x.numel() / (B * L) : 0;
  at::Tensor out = at::empty(with_len(x, p.cells), x.options());
  at::Tensor count = at::empty({B, p.cells}, x.options().dtype(at::kFloat));
  if (B == 0) return {out, count};
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.count = count.data_ptr<float>();
  launch(p, dtype);
  return {out, count};
}

at::Tensor merge_tokens_backward_host(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                      const at::Tensor& count, at::IntArrayRef grid, at::IntArrayRef factor,
                                      MergeLauncher launch) {
  const DType dtype = kernel_dtype(grad_out, "grad_out");
  TORCH_CHECK(grad_out.dim() >= 3, "lumina: `grad_out` must be (batch, cells, ...), got shape ", grad_out.sizes());
  check_contiguous(grad_out, "grad_out");
  MergeParams p;
  geometry(p, grid, factor);
  const int64_t B = grad_out.size(0), L = p.grid[0] * p.grid[1] * p.grid[2];
  TORCH_CHECK(grad_out.size(1) == p.cells, "lumina: `grad_out` must have ", p.cells, " cells for `grid` ", grid,
              " and `factor` ", factor, ", got ", grad_out.size(1));
  TORCH_CHECK(count.scalar_type() == at::kFloat && count.dim() == 2 && count.size(0) == B && count.size(1) == p.cells,
              "lumina: `count` must be float32 (batch, cells) = (", B, ", ", p.cells, "), got ", count.scalar_type(),
              " ", count.sizes());
  check_same_device(count, "count", grad_out, "grad_out");
  check_contiguous(count, "count");
  p.mask = mask_arg(mask, grad_out, "grad_out", B, L);
  p.batch = B;
  p.tokens = L;
  p.width = B > 0 && p.cells > 0 ? grad_out.numel() / (B * p.cells) : 0;
  at::Tensor grad_x = at::empty(with_len(grad_out, L), grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  p.grad_out = grad_out.data_ptr();
  p.count = count.data_ptr<float>();
  p.grad_x = grad_x.data_ptr();
  launch(p, dtype);
  return grad_x;
}

}  // namespace lumina
