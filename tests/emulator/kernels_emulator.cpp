// Runs the token-merging, solver-step, RMSNorm and RoPE CUDA kernels (csrc/merge, csrc/solver, csrc/norm,
// csrc/rope) on the CPU under the warp emulator, for tests/test_kernel_emulator.py and
// tests/test_kernel_emulator_norm_rope.py. The kernels and their launchers (launch_merge_*_cuda,
// launch_solver_update_cuda, launch_cfg_combine_cuda, launch_rms_norm_{fwd,bwd}_cuda, launch_rope_cuda: grid
// sizes, the vectorised / scalar choice, vectors per thread, the renorm passes) are the .cuh source nvcc compiles; CUDA itself is csrc/cuda_emulate.h, reached through the stand-in
// CUDA headers of cuda_shim/. Built by tests/emulator/runner.py with the host compiler, called through ctypes.
#include "../../csrc/cuda_emulate.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "../../csrc/merge/merge_kernel.cuh"
#include "../../csrc/norm/norm_kernel.cuh"
#include "../../csrc/rope/rope_kernel.cuh"
#include "../../csrc/solver/solver_kernel.cuh"

using namespace lumina;

namespace {

int report(const std::exception& e, char* err, int err_len) {
  std::strncpy(err, e.what(), static_cast<size_t>(err_len) - 1);
  err[err_len - 1] = 0;
  return 1;
}

template <SolverType state>
cudaError_t update_for_state(const SolverUpdateParams& p, SolverType k) {  // as solver_cuda.cpp dispatches
  switch (k) {
    case SolverType::kFloat32: return launch_solver_update_cuda<state, SolverType::kFloat32>(p, nullptr);
    case SolverType::kFloat64: return launch_solver_update_cuda<state, SolverType::kFloat64>(p, nullptr);
    case SolverType::kBFloat16: return launch_solver_update_cuda<state, SolverType::kBFloat16>(p, nullptr);
    case SolverType::kFloat16: return launch_solver_update_cuda<state, SolverType::kFloat16>(p, nullptr);
  }
  return cudaErrorInvalidValue;
}

// Fn<dt>::run(p) for a DType value, as dispatch_cuda_dtype (cuda_host.h) does.
template <template <DType> class Fn, typename P>
cudaError_t for_dtype(int dtype, const P& p) {
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32: return Fn<DType::kFloat32>::run(p);
    case DType::kBFloat16: return Fn<DType::kBFloat16>::run(p);
    case DType::kFloat16: return Fn<DType::kFloat16>::run(p);
  }
  return cudaErrorInvalidValue;
}
template <DType dt>
struct MergeFwd {
  static cudaError_t run(const MergeParams& p) { return launch_merge_fwd_cuda<dt>(p, nullptr); }
};
template <DType dt>
struct MergeBwd {
  static cudaError_t run(const MergeParams& p) { return launch_merge_bwd_cuda<dt>(p, nullptr); }
};

template <DType dt>
struct NormFwd {
  static cudaError_t run(const RmsNormFwdParams& p) { return launch_rms_norm_fwd_cuda<dt>(p, nullptr); }
};
template <DType dt>
struct NormBwd {
  static cudaError_t run(const RmsNormBwdParams& p) { return launch_rms_norm_bwd_cuda<dt>(p, nullptr); }
};
template <DType dt>
struct Rope {
  static cudaError_t run(const RopeParams& p) { return launch_rope_cuda<dt>(p, nullptr); }
};

void check(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error("launcher returned CUDA error " + std::to_string(e));
}

// A block of 64 threads with a deliberate defect in a plain CUDA kernel, which the emulator must report:
// 1 two threads write one __shared__ word between barriers, 2 a warp shuffle with a partial mask,
// 3 half the block skips __syncthreads, 4 a grid of zero blocks.
__global__ void defect_kernel(int which, float* out) {
  __shared__ float word[2];
  const int t = threadIdx.x;
  if (which == 1) {
    word[t % 2] = static_cast<float>(t);
    __syncthreads();
    out[t] = word[0];
  } else if (which == 2) {
    out[t] = __shfl_xor_sync(0xffffu, 1.f, 1);
  } else if (which == 3) {
    if (t < 32) __syncthreads();
  }
}
}  // namespace

extern "C" {

// The SM count the launchers see, a cap on the blocks run along x (0: none), the scheduler's seed. Clears the
// launch log.
void lumina_emu_configure(int sms, int64_t max_blocks, uint32_t seed) {
  cuda_emu::config() = {sms, max_blocks, seed};
  cuda_emu::launches().clear();
}

// The SM count the launchers see (the host's num_sms, e.g. for the RMSNorm backward's chunks).
int lumina_emu_sms() { return cuda_emu::config().sms; }

// The launches since lumina_emu_configure, one a line: kernel \t grid.x \t block.x \t blocks run along x.
int lumina_emu_launches(char* buf, int len) {
  std::string s;
  for (const auto& l : cuda_emu::launches())
    s += l.kernel + "\t" + std::to_string(l.grid[0]) + "\t" + std::to_string(l.block[0]) + "\t" +
         std::to_string(l.ran_x) + "\n";
  std::strncpy(buf, s.c_str(), static_cast<size_t>(len) - 1);
  buf[len - 1] = 0;
  return static_cast<int>(s.size());
}

// merge_tokens (backward = 0) or its backward (1) for DType dtype; grid and factor as (f, h, w), the geometry
// filled in as merge_host.cpp does. Returns 0, or 1 with a message in err.
int lumina_emu_merge(int backward, int dtype, int64_t batch, int64_t width, const int64_t* grid,
                     const int64_t* factor, const void* x, const bool* mask, void* out, float* count,
                     const void* grad_out, void* grad_x, char* err, int err_len) {
  MergeParams p;
  p.cells = 1;
  for (int i = 0; i < 3; ++i) {
    p.grid[i] = grid[i], p.factor[i] = factor[i];
    p.cgrid[i] = (grid[i] + factor[i] - 1) / factor[i];
    p.cells *= p.cgrid[i];
  }
  p.batch = batch, p.width = width, p.tokens = grid[0] * grid[1] * grid[2];
  p.x = x, p.mask = mask, p.out = out, p.count = count, p.grad_out = grad_out, p.grad_x = grad_x;
  try {
    check(backward ? for_dtype<MergeBwd>(dtype, p) : for_dtype<MergeFwd>(dtype, p));
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

// merge_tokens_cells (backward = 0) or its backward (1): the forward reads sorted_ids and order (the host's stable
// sort of the ids), the backward cell_ids; rows of ids_stride elements (tokens, or 0: one row for the batch).
int lumina_emu_merge_cells(int backward, int dtype, int64_t batch, int64_t tokens, int64_t width, int64_t cells,
                           int64_t ids_stride, const int64_t* cell_ids, const int64_t* sorted_ids,
                           const int64_t* order, const void* x, const bool* mask, void* out, float* count,
                           const void* grad_out, void* grad_x, char* err, int err_len) {
  MergeParams p;
  p.batch = batch, p.tokens = tokens, p.width = width, p.cells = cells, p.ids_stride = ids_stride;
  p.cell_ids = cell_ids, p.sorted_ids = sorted_ids, p.order = order;
  p.x = x, p.mask = mask, p.out = out, p.count = count, p.grad_out = grad_out, p.grad_x = grad_x;
  try {
    check(backward ? for_dtype<MergeBwd>(dtype, p) : for_dtype<MergeFwd>(dtype, p));
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

// solver_update with `terms` k tensors; state and ktype are SolverType values.
int lumina_emu_solver_update(int state, int ktype, int terms, const void* x, const void* const* ks,
                             const double* alpha, void* out, int64_t n, char* err, int err_len) {
  SolverUpdateParams p;
  p.x = x, p.out = out, p.n = n, p.terms = terms;
  for (int t = 0; t < terms && t < kMaxSolverTerms; ++t) p.ks[t] = ks[t], p.alpha[t] = alpha[t];
  try {
    const SolverType k = static_cast<SolverType>(ktype);
    check(static_cast<SolverType>(state) == SolverType::kFloat64 ? update_for_state<SolverType::kFloat64>(p, k)
                                                                 : update_for_state<SolverType::kFloat32>(p, k));
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

// cfg_combine of `type` (SolverType); guided < 0: plain; renorm > 0 with `chunks` chunks per sample and a
// workspace of batch * (2 * chunks + 1) doubles (partials, then ratios).
int lumina_emu_cfg_combine(int type, int64_t batch, int64_t per, int64_t channels, int64_t inner, int64_t guided,
                           double scale, double renorm, int64_t chunks, const void* cond, const void* uncond,
                           void* out, double* workspace, char* err, int err_len) {
  CfgParams p;
  p.batch = batch, p.per = per, p.channels = channels, p.inner = inner, p.guided = guided;
  p.scale = scale, p.renorm = renorm;
  p.cond = cond, p.uncond = uncond, p.out = out;
  if (renorm > 0) {
    p.chunks = chunks;
    p.chunk = (per + chunks - 1) / chunks;
    p.partial = workspace;
    p.ratio = workspace + batch * chunks * 2;
  }
  try {
    cudaError_t e = cudaErrorInvalidValue;
    switch (static_cast<SolverType>(type)) {
      case SolverType::kFloat32: e = launch_cfg_combine_cuda<SolverType::kFloat32>(p, nullptr); break;
      case SolverType::kFloat64: e = launch_cfg_combine_cuda<SolverType::kFloat64>(p, nullptr); break;
      case SolverType::kBFloat16: e = launch_cfg_combine_cuda<SolverType::kBFloat16>(p, nullptr); break;
      case SolverType::kFloat16: e = launch_cfg_combine_cuda<SolverType::kFloat16>(p, nullptr); break;
    }
    check(e);
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

// fused_rms_norm for DType dtype, x viewed as [batch, rows, dim] (norm_host.cpp); scale, gate, residual may be
// null.
int lumina_emu_rms_norm_fwd(int dtype, int64_t batch, int64_t rows, int64_t dim, float eps, const void* x,
                            const void* weight, const void* scale, const void* gate, const void* residual, void* out,
                            float* rstd, char* err, int err_len) {
  RmsNormFwdParams p;
  p.x = x, p.weight = weight, p.scale = scale, p.gate = gate, p.residual = residual, p.out = out, p.rstd = rstd;
  p.batch = batch, p.rows = rows, p.dim = dim, p.eps = eps;
  try {
    check(for_dtype<NormFwd>(dtype, p));
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

// fused_rms_norm_backward: grad_x and the per-(batch, chunk) partial sums, chunks as norm_host.cpp splits the rows.
int lumina_emu_rms_norm_bwd(int dtype, int64_t batch, int64_t rows, int64_t dim, int64_t chunks,
                            int64_t rows_per_chunk, const void* grad_out, const void* x, const void* weight,
                            const void* scale, const void* gate, const float* rstd, void* grad_x,
                            float* partial_weight, float* partial_scale, float* partial_gate, char* err, int err_len) {
  RmsNormBwdParams p;
  p.grad_out = grad_out, p.x = x, p.weight = weight, p.scale = scale, p.gate = gate, p.rstd = rstd;
  p.grad_x = grad_x, p.partial_weight = partial_weight, p.partial_scale = partial_scale;
  p.partial_gate = partial_gate;
  p.batch = batch, p.rows = rows, p.dim = dim, p.chunks = chunks, p.rows_per_chunk = rows_per_chunk;
  try {
    check(for_dtype<NormBwd>(dtype, p));
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

// rope on x [batch, seq, heads, head_dim] with freqs (float pairs) [batch or 1, seq, head_dim / 2, 2].
int lumina_emu_rope(int dtype, int64_t batch, int64_t seq, int64_t heads, int64_t head_dim, int per_batch,
                    int inverse, const void* x, const float* freqs, void* out, char* err, int err_len) {
  RopeParams p;
  p.x = x, p.freqs = freqs, p.out = out;
  p.batch = batch, p.seq = seq, p.heads = heads, p.head_dim = head_dim;
  p.freqs_per_batch = per_batch != 0, p.inverse = inverse != 0;
  try {
    check(for_dtype<Rope>(dtype, p));
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

int lumina_emu_defect(int which, char* err, int err_len) {
  float out[64];
  try {
    LUMINA_LAUNCH(defect_kernel, which == 4 ? 0u : 1u, 64, 0, nullptr)(which, out);
  } catch (const std::exception& e) {
    return report(e, err, err_len);
  }
  return 0;
}

}  // extern "C"
