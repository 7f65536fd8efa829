// C++ CPU kernels of token merging (context drop): sums in fp32, one rounding.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../cpu_utils.h"
#include "merge_host.h"

namespace lumina {
namespace {

// Calls f(token) for every token of cell c of batch row b, in ascending token order.
template <typename F>
void for_tokens(const MergeParams& p, int64_t b, int64_t c, F&& f) {
  if (p.sorted_ids != nullptr) {  // explicit layout: the cell's run of the sorted ids
    const int64_t* ids = p.sorted_ids + b * p.ids_stride;
    const int64_t* order = p.order + b * p.ids_stride;
    const int64_t* lo = std::lower_bound(ids, ids + p.tokens, c);
    const int64_t* hi = std::lower_bound(lo, ids + p.tokens, c + 1);
    for (const int64_t* k = lo; k < hi; ++k) f(order[k - ids]);
    return;
  }
  const int64_t cw = c % p.cgrid[2], ch = (c / p.cgrid[2]) % p.cgrid[1], cf = c / (p.cgrid[2] * p.cgrid[1]);
  for (int64_t i = cf * p.factor[0]; i < std::min(p.grid[0], (cf + 1) * p.factor[0]); ++i)
    for (int64_t j = ch * p.factor[1]; j < std::min(p.grid[1], (ch + 1) * p.factor[1]); ++j)
      for (int64_t k = cw * p.factor[2]; k < std::min(p.grid[2], (cw + 1) * p.factor[2]); ++k)
        f((i * p.grid[1] + j) * p.grid[2] + k);
}

// The cell of token t of batch row b, or -1 for none (an explicit id out of range).
int64_t cell_of(const MergeParams& p, int64_t b, int64_t t) {
  if (p.cell_ids != nullptr) {
    const int64_t c = p.cell_ids[b * p.ids_stride + t];
    return c >= 0 && c < p.cells ? c : -1;
  }
  const int64_t k = t % p.grid[2], j = (t / p.grid[2]) % p.grid[1], i = t / (p.grid[2] * p.grid[1]);
  return ((i / p.factor[0]) * p.cgrid[1] + j / p.factor[1]) * p.cgrid[2] + k / p.factor[2];
}

template <typename T>
void merge_fwd(const MergeParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  const int64_t W = p.width;
  at::parallel_for(0, p.batch * p.cells, std::max<int64_t>(1, 8192 / std::max<int64_t>(W, 1)), [&](int64_t b0, int64_t b1) {
    std::vector<float> acc(W);
    for (int64_t bc = b0; bc < b1; ++bc) {
      const int64_t b = bc / p.cells, c = bc % p.cells;
      std::fill(acc.begin(), acc.end(), 0.f);
      int64_t n = 0;
      for_tokens(p, b, c, [&](int64_t t) {
        if (p.mask != nullptr && !p.mask[b * p.tokens + t]) return;
        ++n;
        const T* row = x + (b * p.tokens + t) * W;
        for (int64_t i = 0; i < W; ++i) acc[i] += static_cast<float>(row[i]);
      });
      const float inv = n > 0 ? 1.f / static_cast<float>(n) : 0.f;
      T* o = out + bc * W;
      for (int64_t i = 0; i < W; ++i) o[i] = static_cast<T>(acc[i] * inv);
      p.count[bc] = static_cast<float>(n);
    }
  });
}

template <typename T>
void merge_bwd(const MergeParams& p) {
  const T* g = static_cast<const T*>(p.grad_out);
  T* gx = static_cast<T*>(p.grad_x);
  const int64_t W = p.width;
  at::parallel_for(0, p.batch * p.tokens, std::max<int64_t>(1, 8192 / std::max<int64_t>(W, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t bt = b0; bt < b1; ++bt) {
      const int64_t b = bt / p.tokens, t = bt % p.tokens;
      const int64_t c = cell_of(p, b, t);
      T* dst = gx + bt * W;
      if (c < 0) {
        std::fill(dst, dst + W, static_cast<T>(0.f));
        continue;
      }
      const int64_t bc = b * p.cells + c;
      const float n = p.count[bc];
      const bool live = (p.mask == nullptr || p.mask[bt]) && n > 0.f;
      const float inv = live ? 1.f / n : 0.f;
      const T* src = g + bc * W;
      for (int64_t i = 0; i < W; ++i) dst[i] = static_cast<T>(static_cast<float>(src[i]) * inv);
    }
  });
}

void launch_fwd(const MergeParams& p, DType dtype) {
  dispatch_cpu_dtype(dtype, [&](auto t) { merge_fwd<decltype(t)>(p); });
}
void launch_bwd(const MergeParams& p, DType dtype) {
  dispatch_cpu_dtype(dtype, [&](auto t) { merge_bwd<decltype(t)>(p); });
}

std::tuple<at::Tensor, at::Tensor> merge_tokens_cpu(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                    at::IntArrayRef grid, at::IntArrayRef factor) {
  return merge_tokens_host(x, mask, grid, factor, launch_fwd);
}
at::Tensor merge_tokens_backward_cpu(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                     const at::Tensor& count, at::IntArrayRef grid, at::IntArrayRef factor) {
  return merge_tokens_backward_host(grad_out, mask, count, grid, factor, launch_bwd);
}
// The CPU ops check the range of the ids always (one min / max reduction).
std::tuple<at::Tensor, at::Tensor> merge_tokens_cells_cpu(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                          const at::Tensor& cells, int64_t n_cells) {
  return merge_tokens_cells_host(x, mask, cells, n_cells, /*check_range=*/true, launch_fwd);
}
at::Tensor merge_tokens_cells_backward_cpu(const at::Tensor& grad_out, const std::optional<at::Tensor>& mask,
                                           const at::Tensor& count, const at::Tensor& cells) {
  return merge_tokens_cells_backward_host(grad_out, mask, count, cells, /*check_range=*/true, launch_bwd);
}

}  // namespace

TORCH_LIBRARY_IMPL(lumina, CPU, m) {
  m.impl("merge_tokens", &merge_tokens_cpu);
  m.impl("merge_tokens_backward", &merge_tokens_backward_cpu);
  m.impl("merge_tokens_cells", &merge_tokens_cells_cpu);
  m.impl("merge_tokens_cells_backward", &merge_tokens_cells_backward_cpu);
}

}  // namespace lumina
