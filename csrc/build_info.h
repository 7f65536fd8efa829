#pragma once
#include <string>

namespace lumina {
// "key=value" lines describing this build: cpu, cuda, cuda_archs, cuda_version, compiler, cplusplus, and the
// limits of csrc/limits.h (attention_cuda_head_dims, cuda_max_grid_yz, norm_cuda_max_vectors_per_row,
// solver_max_terms), printed in CPU-only builds too.
std::string build_info();
}  // namespace lumina
