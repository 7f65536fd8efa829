// Parameters of the token-merging kernels (context drop), seen by the CPU and CUDA kernels.
//
// x [batch, tokens, width] (width = heads * head_dim); every token belongs to at most one of `cells` cells.
// Two layouts:
// * grid (cell_ids == null): tokens row-major on a grid (f, h, w) (2-D grids as f = 1, 1-D as f = h = 1), cells
//   of factor (kf, kh, kw) tile it, ceil-divided: cells on the far edges are partial and average the tokens they
//   hold.
// * explicit: cell_ids[b, t] is the cell of token t, rows of `ids_stride` elements (tokens, or 0: one row for every
//   batch). The forward reads the ids sorted ascending (sorted_ids) with the stable permutation that sorts them
//   (order: the tokens of a cell in ascending order); the backward reads cell_ids. An id outside [0, cells) belongs
//   to no cell: the kernels neither read nor write out of bounds for it (the host checks the range where it can).
// Tokens with mask == 0 are left out; a cell with no token left gives 0 and count 0. Sums run in fp32, in token order.
//   out[b, c] = sum_{t in c, mask} x[b, t] / count[b, c],   count[b, c] = #{t in c, mask}
// Backward: grad_x[b, t] = mask ? grad_out[b, cell(t)] / count[b, cell(t)] : 0 (0 where count is 0 or t has no cell).
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
  // explicit layout only (null: the grid layout)
  const int64_t* cell_ids = nullptr;    // [batch or 1, tokens] (backward)
  const int64_t* sorted_ids = nullptr;  // [batch or 1, tokens] cell_ids sorted ascending (forward)
  const int64_t* order = nullptr;       // [batch or 1, tokens] the stable permutation that sorts them (forward)
  int64_t ids_stride = 0;               // elements between the rows of the three: tokens, or 0 (one shared row)
};

}  // namespace lumina
