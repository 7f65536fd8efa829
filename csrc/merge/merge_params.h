// Parameters of the token-merging kernels (context drop), seen by the CPU and CUDA kernels.
//
// x [batch, tokens, width] (width = heads * head_dim), tokens laid out row-major on a grid (f, h, w)
// (2-D grids as f = 1). Cells of factor (kf, kh, kw) tile the grid, ceil-divided: cells on the far
// edges are partial and average the tokens they hold. Tokens with mask == 0 are left out; a cell with
// no token left gives 0 and count 0.
//   out[b, c] = sum_{t in c, mask} x[b, t] / count[b, c],   count[b, c] = #{t in c, mask}
// Backward: grad_x[b, t] = mask ? grad_out[b, cell(t)] / count[b, cell(t)] : 0 (0 where count is 0).
#pragma once
#include <cstdint>

namespace lumina {

struct MergeParams {
  const void* x = nullptr;         // [batch, tokens, width]
  const bool* mask = nullptr;      // [batch, tokens] or null: every token
  void* out = nullptr;             // [batch, cells, width]
  float* count = nullptr;          // [batch, cells] (written by the forward, read by the backward)
  const void* grad_out = nullptr;  // [batch, cells, width]
  void* grad_x = nullptr;          // [batch, tokens, width]
  int64_t batch = 0, tokens = 0, width = 0, cells = 0;
  int64_t grid[3] = {1, 1, 1};     // (f, h, w)
  int64_t factor[3] = {1, 1, 1};   // (kf, kh, kw)
  int64_t cgrid[3] = {1, 1, 1};    // cells per axis: ceil(grid / factor)
};

}  // namespace lumina
