// Limits of the compiled kernels that the Python layer needs too (its dispatch checks, messages and the
// generated instance list). They live here, once: build_info() prints them, lumina_kernels/_ext.py reads
// them from there, and tests/test_build.py checks that Python and csrc/gen_instances.py agree with them.
// Plain C++ (no ATen, no CUDA headers): CPU-only builds print them too.
#pragma once
#include <cstdint>

namespace lumina {

// Head dims with a compiled flash-attention kernel (one generated instance each, csrc/gen_instances.py reads
// this list); others are refused by the CUDA op with this list in the message. build_info:
// attention_cuda_head_dims.
constexpr int kFlashHeadDims[] = {64, 72, 96, 128};

// gridDim.y and gridDim.z are at most 65535 on every architecture: the flash kernels put the query heads
// (forward) or KV heads (backward) on y and the batch on z; the RMSNorm backward puts the batch on y.
// build_info: cuda_max_grid_yz.
constexpr int64_t kMaxGridYZ = 65535;

// Largest last dimension the CUDA RMSNorm kernels accept: 4096 vectors of `vec` elements, where vec is
// 16 bytes' worth when dim and every pointer allow 16-byte accesses, else 1. build_info:
// norm_cuda_max_vectors_per_row.
constexpr int kNormMaxVectorsPerRow = 4096;

// Most terms (ks) of one solver_update. build_info: solver_max_terms.
constexpr int kMaxSolverTerms = 7;

}  // namespace lumina
