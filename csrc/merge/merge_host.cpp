#include "merge_host.h"

#include <ATen/ops/empty.h>

#include <vector>

#include "../host_utils.h"

namespace lumina {
namespace {

// Fills the geometry of the params from grid / factor (1, 2 or 3 entries each).
void geometry(MergeParams& p, at::IntArrayRef grid, at::IntArrayRef factor) {
  TORCH_CHECK(grid.size() >= 1 && grid.size() <= 3, "lumina: `grid` must be (tokens,), (h, w) or (frames, h, w), got ",
              grid);
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

// The cell ids as a contiguous int64 tensor of shape (L,) or (B, L); with check_range, every id in [0, n_cells).
at::Tensor cell_ids_arg(const at::Tensor& cells, const at::Tensor& ref, const char* ref_name, int64_t B, int64_t L,
                        int64_t n_cells, bool check_range) {
  TORCH_CHECK(cells.scalar_type() == at::kInt || cells.scalar_type() == at::kLong,
              "lumina: `cells` must be int32 or int64, got ", cells.scalar_type());
  const bool shared = cells.dim() == 1 && cells.size(0) == L;
  TORCH_CHECK(shared || (cells.dim() == 2 && cells.size(0) == B && cells.size(1) == L),
              "lumina: `cells` must have shape (tokens,) = (", L, ",) or (batch, tokens) = (", B, ", ", L, "), got ",
              cells.sizes());
  check_same_device(cells, "cells", ref, ref_name);
  TORCH_CHECK(n_cells >= 0, "lumina: `n_cells` must be >= 0, got ", n_cells);
  at::Tensor ids = cells.to(at::kLong).contiguous();
  if (check_range && ids.numel() > 0) {
    const auto range = ids.aminmax();
    const int64_t lo = std::get<0>(range).item<int64_t>(), hi = std::get<1>(range).item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < n_cells, "lumina: `cells` ids must lie in [0, n_cells) = [0, ", n_cells,
                "), got ids from ", lo, " to ", hi);
  }
  return ids;
}

void check_count(const at::Tensor& count, const at::Tensor& grad_out, int64_t B, int64_t cells) {
  TORCH_CHECK(count.scalar_type() == at::kFloat && count.dim() == 2 && count.size(0) == B && count.size(1) == cells,
              "lumina: `count` must be float32 (batch, cells) = (", B, ", ", cells, "), got ", count.scalar_type(), " ",
              count.sizes());
  check_same_device(count, "count", grad_out, "grad_out");
  check_contiguous(count, "count");
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
  check_count(count, grad_out, B, p.cells);
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

std::tuple<at::Tensor, at::Tensor> merge_tokens_cells_host(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                           const at::Tensor& cells, int64_t n_cells, bool check_range,
                                                           MergeLauncher launch) {
  const DType dtype = kernel_dtype(x, "x");
  TORCH_CHECK(x.dim() >= 3, "lumina: `x` must be (batch, tokens, ...) e.g. (batch, tokens, heads, head_dim), got shape ",
              x.sizes());
  check_contiguous(x, "x");
  const int64_t B = x.size(0), L = x.size(1);
  const at::Tensor ids = cell_ids_arg(cells, x, "x", B, L, n_cells, check_range);
  MergeParams p;
  p.mask = mask_arg(mask, x, "x", B, L);
  p.batch = B;
  p.tokens = L;
  p.cells = n_cells;
  p.width = L > 0 && B > 0 ? x.numel() / (B * L) : 0;
  at::Tensor out = at::empty(with_len(x, n_cells), x.options());
  at::Tensor count = at::empty({B, n_cells}, x.options().dtype(at::kFloat));
  if (B == 0 || n_cells == 0) return {out, count};
  if (L == 0) return {out.zero_(), count.zero_()};  // no token: every cell empty (and no ids for the kernels)
  // the tokens of each cell as a run of the stably sorted ids: gathered in ascending token order
  const auto sorted = ids.sort(std::optional<bool>(true), /*dim=*/-1, /*descending=*/false);  // stable
  p.sorted_ids = std::get<0>(sorted).data_ptr<int64_t>();
  p.order = std::get<1>(sorted).data_ptr<int64_t>();
  p.ids_stride = ids.dim() == 2 ? L : 0;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.count = count.data_ptr<float>();
  launch(p, dtype);
  return {out, count};
}

at::Tensor merge_tokens_cells_backward_host(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                            const at::Tensor& count, const at::Tensor& cells, bool check_range,
                                            MergeLauncher launch) {
  const DType dtype = kernel_dtype(grad_out, "grad_out");
  TORCH_CHECK(grad_out.dim() >= 3, "lumina: `grad_out` must be (batch, cells, ...), got shape ", grad_out.sizes());
  check_contiguous(grad_out, "grad_out");
  const int64_t B = grad_out.size(0), C = grad_out.size(1), L = cells.dim() >= 1 ? cells.size(-1) : 0;
  const at::Tensor ids = cell_ids_arg(cells, grad_out, "grad_out", B, L, C, check_range);
  check_count(count, grad_out, B, C);
  MergeParams p;
  p.mask = mask_arg(mask, grad_out, "grad_out", B, L);
  p.batch = B;
  p.tokens = L;
  p.cells = C;
  p.width = B > 0 && C > 0 ? grad_out.numel() / (B * C) : 0;
  at::Tensor grad_x = at::empty(with_len(grad_out, L), grad_out.options());
  if (grad_x.numel() == 0) return grad_x;
  if (C == 0) return grad_x.zero_();  // no cell (every id out of range): no gradient
  p.cell_ids = ids.data_ptr<int64_t>();
  p.ids_stride = ids.dim() == 2 ? L : 0;
  p.grad_out = grad_out.data_ptr();
  p.count = count.data_ptr<float>();
  p.grad_x = grad_x.data_ptr();
  launch(p, dtype);
  return grad_x;
}

}  // namespace lumina
