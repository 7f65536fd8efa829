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
  // What this build holds: backends, CUDA archs, compiler.
  m.def("build_info() -> str", &lumina::build_info);
}
