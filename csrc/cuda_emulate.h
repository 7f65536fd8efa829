// Plain CUDA C++ on the CPU: what the merge, solver, RMSNorm and RoPE kernels (csrc/merge, csrc/solver, csrc/norm,
// csrc/rope) use of CUDA, carried out by the warp emulator of csrc/attention/flash/flash_emulate.h, so that their
// .cuh source runs unchanged under a host C++ compiler for tests (tests/emulator/kernels_emulator.cpp). Never part
// of the product.
//
// The CUDA headers the kernels include (cuda_runtime.h, cuda_bf16.h, ...) are replaced by the forwarding headers
// of tests/emulator/cuda_shim, which include this file. It provides:
//  * __global__ / __device__ / __forceinline__ / __launch_bounds__ (no-ops) and __shared__ (a static variable,
//    one for all threads as on a GPU; NaN-filled before every block and its writes race-checked: CUDA allows no
//    other static variables in a kernel, so the emulator finds them as the function-local statics outside its
//    own namespaces in the symbol table of the library it is built into, see static_shared_regions);
//  * threadIdx, blockIdx, blockDim, gridDim of the running fiber; __syncthreads; __shfl_*_sync (a warp
//    collective: every lane of the warp must take part, with the full mask);
//  * LUMINA_LAUNCH (cuda_utils.cuh): kernel<<<grid, block, smem, stream>>>(args) runs the grid block after block,
//    synchronously; a grid or block of zero, or more than 1024 threads, is an error as on a GPU. Options
//    (config()): the SM count the launchers see (num_sms), a cap on the grid's x size (the grid-stride loops
//    must give the same result with fewer blocks), the scheduler's seed; every launch is logged;
//  * __nv_bfloat16 / __half with exact round-to-nearest-even conversions, the _rn arithmetic intrinsics (the
//    host's IEEE operations: build with -ffp-contract=off so that nothing else is fused), min / max, atomicAdd,
//    the vector types (float2, float4, uint4, ...), rsqrtf (correctly rounded; the GPU's is approximate), and the
//    runtime calls the launchers make.
#pragma once
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attention/flash/flash_emulate.h"

#define LUMINA_CUDA_EMULATE 1

// ---- qualifiers -------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
// __restrict__ is a GNU C++ keyword already.

// ---- vector and index types -------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ---- runtime API ------------------------------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaDeviceAttr : int { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrMultiProcessorCount = 16 };
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lumina {
namespace cuda_emu {

namespace emu = ::lumina::flash::emu;

struct Config {
  int sms = 4;              // what cudaDevAttrMultiProcessorCount answers: the launchers cap grids at sms * 32
  int64_t max_blocks = 0;   // > 0: the emulator runs at most this many blocks along x (gridDim.x says so)
  uint32_t seed = 0;        // the scheduler's shuffle
};
inline Config& config() {
  static Config c;
  return c;
}

struct LaunchRecord {
  std::string kernel;      // the demangled name of the kernel's instantiation
  unsigned grid[3], block[3];
  unsigned ran_x;          // blocks run along x (the grid, or the cap)
};
inline std::vector<LaunchRecord>& launches() {
  static std::vector<LaunchRecord> l;
  return l;
}

inline emu::Block& block() { return *emu::current_block(); }

inline std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && d != nullptr ? d : name;
  std::free(d);
  return s;
}

struct LocalSymbol {
  const void* addr;
  std::string name;
};
inline std::vector<LocalSymbol>& local_functions() {  // filled by static_shared_regions
  static std::vector<LocalSymbol> f;
  return f;
}
inline const std::vector<std::pair<char*, size_t>>& static_shared_regions();

// The kernel's name, from the dynamic symbols or (internal linkage) the symbol table.
inline std::string symbol_name(const void* f) {
  Dl_info info;
  if (dladdr(f, &info) != 0 && info.dli_sname != nullptr) return demangle(info.dli_sname);
  static_shared_regions();
  for (const auto& s : local_functions())
    if (s.addr == f) return s.name;
  return "?";
}

// The kernels' __shared__ variables: every function-local static object of this library (ELF .symtab) outside the
// emulator's namespaces and std. (A section attribute would be simpler, but GCC ignores it on the statics of
// template instantiations.)
inline const std::vector<std::pair<char*, size_t>>& static_shared_regions() {
  static const std::vector<std::pair<char*, size_t>> regions = [] {
    std::vector<std::pair<char*, size_t>> r;
    Dl_info info;
    if (dladdr(reinterpret_cast<const void*>(&static_shared_regions), &info) == 0 || info.dli_fname == nullptr)
      throw std::runtime_error("emulator: cannot find its own library");
    std::ifstream f(info.dli_fname, std::ios::binary);
    const std::string elf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (elf.size() < sizeof(Elf64_Ehdr)) throw std::runtime_error("emulator: cannot read " + std::string(info.dli_fname));
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(elf.data());
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(elf.data() + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; ++i) {
      if (sh[i].sh_type != SHT_SYMTAB) continue;
      const auto* sym = reinterpret_cast<const Elf64_Sym*>(elf.data() + sh[i].sh_offset);
      const char* names = elf.data() + sh[sh[i].sh_link].sh_offset;
      for (size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); ++k) {
        if (sym[k].st_size == 0 || sym[k].st_shndx == SHN_UNDEF) continue;
        if (ELF64_ST_TYPE(sym[k].st_info) == STT_FUNC) {
          local_functions().push_back({static_cast<char*>(info.dli_fbase) + sym[k].st_value,
                                       demangle(names + sym[k].st_name)});
          continue;
        }
        if (ELF64_ST_TYPE(sym[k].st_info) != STT_OBJECT) continue;
        const std::string name = demangle(names + sym[k].st_name);
        const size_t local = name.rfind(")::");
        if (local == std::string::npos || name.compare(0, 5, "std::") == 0 || name.compare(0, 11, "__gnu_cxx::") == 0 ||
            name.find("lumina::flash::emu::") != std::string::npos ||
            name.find("lumina::cuda_emu::") != std::string::npos || name.find("::__") != std::string::npos ||
            name.compare(0, 8, "typeinfo") == 0 || name.compare(0, 6, "vtable") == 0 ||
            name.compare(0, 5, "guard") == 0)
          continue;
        r.emplace_back(static_cast<char*>(info.dli_fbase) + sym[k].st_value, static_cast<size_t>(sym[k].st_size));
      }
    }
    return r;
  }();
  return regions;
}

inline uint3 thread_idx() {
  const emu::Block& b = block();
  const unsigned t = static_cast<unsigned>(b.cur), bx = b.dim[0], by = b.dim[1];
  return {t % bx, (t / bx) % by, t / (bx * by)};
}
inline uint3 block_idx() {
  const emu::Block& b = block();
  return {static_cast<unsigned>(b.idx[0]), static_cast<unsigned>(b.idx[1]), static_cast<unsigned>(b.idx[2])};
}
inline uint3 block_dim() {
  const emu::Block& b = block();
  return {static_cast<unsigned>(b.dim[0]), static_cast<unsigned>(b.dim[1]), static_cast<unsigned>(b.dim[2])};
}
inline uint3 grid_dim() {
  const emu::Block& b = block();
  return {static_cast<unsigned>(b.grid[0]), static_cast<unsigned>(b.grid[1]), static_cast<unsigned>(b.grid[2])};
}

// kernel<<<grid, block, smem, stream>>>: the arguments go to operator(), copied as a launch copies them.
template <typename... Params>
class Launch {
 public:
  Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t)
      : kernel_(kernel), grid_(grid), block_(block), smem_(smem) {}

  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
    const std::string name = symbol_name(reinterpret_cast<const void*>(kernel_));
    const unsigned threads = block_.x * block_.y * block_.z;
    if (grid_.x == 0 || grid_.y == 0 || grid_.z == 0 || threads == 0 || threads > 1024 || grid_.y > 65535 ||
        grid_.z > 65535)
      throw std::runtime_error("invalid launch configuration of " + name + ": grid (" + std::to_string(grid_.x) +
                               ", " + std::to_string(grid_.y) + ", " + std::to_string(grid_.z) + "), block (" +
                               std::to_string(block_.x) + ", " + std::to_string(block_.y) + ", " +
                               std::to_string(block_.z) + ")");
    const Config& cfg = config();
    unsigned gx = grid_.x;
    if (cfg.max_blocks > 0 && gx > cfg.max_blocks) gx = static_cast<unsigned>(cfg.max_blocks);
    launches().push_back({name, {grid_.x, grid_.y, grid_.z}, {block_.x, block_.y, block_.z}, gx});
    const std::tuple<std::decay_t<Params>...> copy(std::forward<Args>(args)...);
    emu::Block b(static_cast<int>(threads), smem_, 64 * 1024);
    b.dim[0] = static_cast<int>(block_.x), b.dim[1] = static_cast<int>(block_.y), b.dim[2] = static_cast<int>(block_.z);
    b.grid[0] = static_cast<int>(gx), b.grid[1] = static_cast<int>(grid_.y), b.grid[2] = static_cast<int>(grid_.z);
    b.set_static_regions(static_shared_regions());
    std::mt19937 rng(cfg.seed);
    auto kernel = kernel_;
    const std::function<void(char*)> body = [&copy, kernel](char*) { std::apply(kernel, copy); };
    try {
      for (unsigned z = 0; z < grid_.z; ++z)
        for (unsigned y = 0; y < grid_.y; ++y)
          for (unsigned x = 0; x < gx; ++x) b.run(body, static_cast<int>(x), static_cast<int>(y), static_cast<int>(z), rng);
    } catch (const std::exception& e) {
      throw std::runtime_error(name + ": " + e.what());
    }
  }

 private:
  void (*kernel_)(Params...);
  dim3 grid_, block_;
  size_t smem_;
};

template <typename... Params>
Launch<Params...> launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
  return Launch<Params...>(kernel, grid, block, smem, stream);
}

// ---- warp shuffles ----------------------------------------------------------------------------------------
enum ShflKind : int { kXor = 0, kDown = 1, kUp = 2, kIdx = 3 };

template <typename T>
T shfl(unsigned mask, T v, int arg, int width, ShflKind kind) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a value over 8 bytes");
  emu::Block& b = block();
  if (mask != 0xffffffffu) {
    b.fail("__shfl_*_sync with a partial mask: the emulator supports whole warps only");
    b.park();
  }
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    b.fail("__shfl_*_sync width must be a power of two <= 32");
    b.park();
  }
  emu::Slot s;
  s.op = 100 + kind * 8 + static_cast<int>(sizeof(T));  // lanes must agree on the kind and the size
  s.arg = width;
  std::memcpy(s.u, &v, sizeof(T));
  s.b[0] = static_cast<uint32_t>(arg);
  const emu::Slot o = b.collective(s, [kind](const emu::Slot* in, emu::Slot* out, int) {
    for (int l = 0; l < 32; ++l) {
      const int w = in[l].arg, a = static_cast<int>(in[l].b[0]), base = l & ~(w - 1);
      int src = l;
      switch (kind) {
        case kXor: src = (l ^ (a & 31)) < base + w ? l ^ (a & 31) : l; break;  // earlier groups are readable
        case kDown: src = (l - base) + a < w ? l + a : l; break;
        case kUp: src = (l - base) - a >= 0 ? l - a : l; break;
        case kIdx: src = base + (a & (w - 1)); break;
      }
      out[l].u[0] = in[src].u[0], out[l].u[1] = in[src].u[1];
    }
  });
  T r;
  std::memcpy(&r, o.u, sizeof(T));
  return r;
}

}  // namespace cuda_emu
}  // namespace lumina

#define LUMINA_LAUNCH(kernel, grid, block, smem, stream) ::lumina::cuda_emu::launch(kernel, grid, block, smem, stream)
#define threadIdx (::lumina::cuda_emu::thread_idx())
#define blockIdx (::lumina::cuda_emu::block_idx())
#define blockDim (::lumina::cuda_emu::block_dim())
#define gridDim (::lumina::cuda_emu::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads() { ::lumina::flash::emu::sync_block(); }
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return ::lumina::cuda_emu::shfl(mask, v, lane_mask, width, ::lumina::cuda_emu::kXor);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::lumina::cuda_emu::shfl(mask, v, static_cast<int>(delta), width, ::lumina::cuda_emu::kDown);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return ::lumina::cuda_emu::shfl(mask, v, static_cast<int>(delta), width, ::lumina::cuda_emu::kUp);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int lane, int width = 32) {
  return ::lumina::cuda_emu::shfl(mask, v, lane, width, ::lumina::cuda_emu::kIdx);
}

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  *v = attr == cudaDevAttrMultiProcessorCount ? ::lumina::cuda_emu::config().sms : 1024;
  return cudaSuccess;
}

// ---- 16-bit floats ----------------------------------------------------------------------------------------
struct __nv_bfloat16 { uint16_t bits; };
struct __half { uint16_t bits; };
typedef __nv_bfloat16 nv_bfloat16;
typedef __half half;

inline float __bfloat162float(__nv_bfloat16 h) { return ::lumina::flash::emu::bf16_float(h.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {::lumina::flash::emu::bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __half2float(__half h) { return ::lumina::flash::emu::f16_float(h.bits); }
inline __half __float2half_rn(float f) { return {::lumina::flash::emu::f16_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }

// ---- arithmetic with an explicit rounding (round to nearest even: the host's default) ---------------------
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline float __double2float_rn(double a) { return static_cast<float>(a); }
// The approximate device functions: the correctly rounded value (a GPU's rsqrtf is within 2 ulp of it, its tanhf
// within 2 ulp of the host's), so results are compared with tolerances, not bit for bit, where these are used.
inline float rsqrtf(float a) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(a))); }
// tanhf, sqrtf, expf, ...: the host's <cmath> functions of the same names.
inline float __int2float_rn(int a) { return static_cast<float>(a); }
template <typename T>
inline T __ldg(const T* p) { return *p; }

// CUDA's min / max overloads (integers and floating point alike), found unqualified from the kernels.
template <typename T, typename = std::enable_if_t<std::is_arithmetic<T>::value>>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T, typename = std::enable_if_t<std::is_arithmetic<T>::value>>
inline T max(T a, T b) { return a < b ? b : a; }

// Atomics: fibers switch only at barriers and collectives, so a read-modify-write is atomic already.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  if (old < v) *p = v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) {
  const T old = *p;
  if (old == cmp) *p = v;
  return old;
}
