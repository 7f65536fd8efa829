// Every schema of the lumina op library, and nothing else: implementations register from their family folders.
#include <torch/library.h>

#include "build_info.h"

TORCH_LIBRARY(lumina, m) {
  // out = [residual +] [tanh(gate) *] rms_norm(x) * weight [* (1 + scale)]; rstd is saved for backward.
  m.def("fused_rms_norm(Tensor x, Tensor weight, Tensor? scale, Tensor? gate, Tensor? residual, float eps)"
        " -> (Tensor out, Tensor rstd)",
        {at::Tag::pt2_compliant_tag});
  // Gradients of fused_rms_norm; grad_scale / grad_gate are empty when scale / gate were not given.
  m.def("fused_rms_norm_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? scale, Tensor? gate,"
        " Tensor rstd) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_scale, Tensor grad_gate)",
        {at::Tag::pt2_compliant_tag});
  // Rotate pairs (x[2i], x[2i+1]) of x (batch, seq, heads, head_dim) by freqs_cis (complex64), or by its
  // conjugate when inverse (which is also the backward pass).
  m.def("rope(Tensor x, Tensor freqs_cis, bool inverse=False) -> Tensor", {at::Tag::pt2_compliant_tag});
  // Attention with fused RoPE: q (B, Lq, Hq, D), k / v (B, Lk, Hkv, D), Hq a multiple of Hkv (GQA); q_freqs /
  // k_freqs complex64 (L, D/2) or (B, L, D/2) rotate q / k; key_padding_mask (B, Lk) bool, True = attend.
  // out (B, Lq, Hq, D); lse (B, Hq, Lq) fp32 log-sum-exp of the scaled scores (-inf for a row with no key).
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? q_freqs, Tensor? k_freqs, Tensor? key_padding_mask,"
        " float softmax_scale) -> (Tensor out, Tensor lse)",
        {at::Tag::pt2_compliant_tag});
  // Gradients of attention_fwd with respect to q, k and v (through the RoPE), recomputing P from lse.
  m.def("attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? q_freqs,"
        " Tensor? k_freqs, Tensor? key_padding_mask, float softmax_scale) -> (Tensor grad_q, Tensor grad_k,"
        " Tensor grad_v)",
        {at::Tag::pt2_compliant_tag});
  // Context drop: average tokens of x (batch, tokens, ...) laid out row-major on grid (tokens,), (h, w) or
  // (frames, h, w) over cells of `factor` (ceil-divided: edge cells are partial); mask (batch, tokens) bool leaves
  // tokens out.
  // out (batch, cells, ...) in x's dtype; count (batch, cells) fp32 = tokens averaged (0: the cell is empty).
  m.def("merge_tokens(Tensor x, Tensor? mask, int[] grid, int[] factor) -> (Tensor out, Tensor count)",
        {at::Tag::pt2_compliant_tag});
  // Gradient of merge_tokens with respect to x: each token gets its cell's gradient / count (0 if masked).
  m.def("merge_tokens_backward(Tensor grad_out, Tensor? mask, Tensor count, int[] grid, int[] factor) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // Context drop over any layout: cells (tokens,) (shared by the batch) or (batch, tokens), int32 or int64, holds the
  // cell id of every token, in [0, n_cells) (an error on CPU; on CUDA checked by one host-synced reduction except while
  // a graph is captured, when a token with an id out of range is left out). out (batch, n_cells, ...) averages the
  // unmasked tokens of each cell in token order; count as merge_tokens.
  m.def("merge_tokens_cells(Tensor x, Tensor? mask, Tensor cells, int n_cells) -> (Tensor out, Tensor count)",
        {at::Tag::pt2_compliant_tag});
  // Gradient of merge_tokens_cells with respect to x (0 for a masked token or one whose cell is empty).
  m.def("merge_tokens_cells_backward(Tensor grad_out, Tensor? mask, Tensor count, Tensor cells) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // Fused ODE-solver step: x + h * sum_i coeffs[i] * ks[i] in x's dtype (the solver state, float32 or float64):
  // zero coefficients skipped, then each term added in order with one rounding (fused multiply-add), the products
  // h * coeffs[i] in double cast to x's dtype; ks (1 to 7 tensors of x's shape, one floating dtype) are read and
  // converted in the kernel. All coefficients zero: a copy of x. Inference only (no autograd).
  m.def("solver_update(Tensor x, Tensor[] ks, float[] coeffs, float h) -> Tensor", {at::Tag::pt2_compliant_tag});
  // Classifier-free guidance: lerp(uncond, cond, scale); channels=k guides channels [:k] of dim 1 (uncond +
  // scale * (cond - uncond)) and keeps cond for the rest; renorm=r scales each sample's v down to r * ||cond||
  // when it is longer. float32 out for bfloat16 / float16 inputs, else their dtype. Inference only.
  m.def("cfg_combine(Tensor cond, Tensor uncond, float scale, int? channels=None, float? renorm=None) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // What this build holds: backends, CUDA archs, compiler.
  m.def("build_info() -> str", &lumina::build_info);
}
