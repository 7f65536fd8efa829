// A CPU emulator of the CUDA features the flash-attention kernels use, for testing them without a GPU.
//
// Only compiled with LUMINA_FLASH_EMULATE (tests/emulator/flash_emulator.cpp), never into the product.
// Every thread of a block runs as a fiber (ucontext) on one OS thread; a fiber runs until it waits at a
// barrier or a warp-collective instruction, and a scheduler resumes the fibers in a shuffled order.
//  * __syncthreads: waits for every thread of the block.
//  * ldmatrix, mma.sync, shfl.sync: wait for the 32 lanes of the warp, then the last lane to arrive
//    computes the result for all of them from the fragment layouts of the PTX ISA; a warp whose
//    lanes issue different collectives is reported as divergent.
//  * shared memory: every access is checked against its bounds, against reading bytes never written,
//    and against races: two threads touching a byte between the same two barriers, at least one of
//    them writing, is an error unless both are lanes of one warp separated by a collective instruction.
// A deadlock (a round in which no fiber makes progress) is reported, not hung on.
// Statically declared shared memory of plain CUDA kernels (`__shared__ T a[n]`, csrc/cuda_emulate.h) is a set
// of static regions instead: they are filled with NaN bytes before every block, and the bytes each thread changes
// are found by comparing them with a snapshot at every barrier, collective and thread switch, so writes there get
// the same race check (reads of them are not seen; a read before the write shows as NaN instead).
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace lumina {
namespace flash {
namespace emu {

// ---- 16-bit floats ----------------------------------------------------------------------------
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };
template <typename T> constexpr bool is_bf16() { return std::is_same<T, bf16>::value; }

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t bf16_bits(float f) {  // round to nearest even
  uint32_t u = float_bits(f);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

inline uint16_t f16_bits(float f) {  // round to nearest even, with subnormals, overflow to inf
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.f) return sign | 0x7c00;
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24
    const float q = std::nearbyint(a * 16777216.f);  // default rounding mode: nearest even
    return sign | static_cast<uint16_t>(q);
  }
  int e;
  const float m = std::frexp(a, &e);                    // a = m * 2^e, m in [0.5, 1)
  float q = std::nearbyint(std::ldexp(m, 11));          // 11 significant bits
  if (q == 2048.f) { q = 1024.f; ++e; }
  if (e + 14 > 30) return sign | 0x7c00;
  return sign | static_cast<uint16_t>(((e + 14) << 10) | (static_cast<uint32_t>(q) - 1024u));
}
inline float f16_float(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const float s = (h & 0x8000) ? -1.f : 1.f;
  if (e == 0) return s * std::ldexp(static_cast<float>(m), -24);
  if (e == 31) return m ? NAN : s * INFINITY;
  return s * std::ldexp(static_cast<float>(m + 1024), e - 25);
}
inline float half_float(uint16_t h, bool bf) { return bf ? bf16_float(h) : f16_float(h); }

// ---- the block being run ----------------------------------------------------------------------
enum Op : int { kShfl = 1, kMma16 = 2, kMma8 = 3, kLdsm = 10 };

struct Slot {
  int op = 0, arg = 0;
  const void* addr = nullptr;
  uint32_t u[4] = {0, 0, 0, 0};
  uint32_t b[2] = {0, 0};
  float f[4] = {0, 0, 0, 0};
};

struct WarpState {
  int arrived = 0;
  uint64_t gen = 0;
  Slot in[32], out[32];
};

struct Shadow {  // per shared-memory byte
  bool written = false;
  int writer = -1;
  uint64_t w_epoch = 0, w_wgen = 0;
  int reader = -1, reader_warp = -1;  // reader -2: several threads; reader_warp -1: several warps
  uint64_t r_epoch = ~0ull, r_wgen = 0;
};

struct Fiber {
  ucontext_t ctx;
  bool done = false;
};

class Block;
inline Block*& current_block() {
  static Block* b = nullptr;
  return b;
}

class Block {
 public:
  Block(int threads, size_t smem_bytes, size_t stack_bytes)
      : nthreads(threads), smem(smem_bytes + 16), shadow(smem_bytes), stack_bytes_(stack_bytes),
        stacks_(new char[static_cast<size_t>(threads) * stack_bytes]), fibers_(threads), warps_((threads + 31) / 32) {
    dim[0] = threads;
  }

  // The static shared-memory regions (address, bytes) (see the top of this file); none by default.
  void set_static_regions(const std::vector<std::pair<char*, size_t>>& regions) {
    st_regions_ = regions;
    st_n_ = 0;
    for (const auto& r : regions) st_n_ += r.second;
    st_snap_.assign(st_n_, 0);
    st_shadow_.assign(st_n_, Shadow{});
  }

  // Runs body(smem) on every thread of block (x, y, z); throws std::runtime_error on a defect.
  void run(const std::function<void(char*)>& body, int x, int y, int z, std::mt19937& rng) {
    idx[0] = x, idx[1] = y, idx[2] = z;
    std::fill(smem.begin(), smem.end(), static_cast<char>(0xff));  // NaN in every 16-bit format
    std::fill(shadow.begin(), shadow.end(), Shadow{});
    for (auto& w : warps_) w = WarpState{};
    if (st_n_ > 0) {
      for (const auto& r : st_regions_) std::memset(r.first, 0xff, r.second);
      std::fill(st_snap_.begin(), st_snap_.end(), static_cast<char>(0xff));
      std::fill(st_shadow_.begin(), st_shadow_.end(), Shadow{});
    }
    bar_arrived_ = 0, bar_gen_ = 0, error_.clear();
    body_ = &body;
    current_block() = this;
    for (int t = 0; t < nthreads; ++t) {
      Fiber& f = fibers_[t];
      f.done = false;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = stacks_.get() + static_cast<size_t>(t) * stack_bytes_;
      f.ctx.uc_stack.ss_size = stack_bytes_;
      f.ctx.uc_link = &sched_;
      makecontext(&f.ctx, &Block::entry, 0);
    }
    std::vector<int> order(nthreads);
    for (int t = 0; t < nthreads; ++t) order[t] = t;
    int live = nthreads;
    while (live > 0 && error_.empty()) {
      const uint64_t before = progress_;
      std::shuffle(order.begin(), order.end(), rng);
      for (int t : order) {
        if (fibers_[t].done || !error_.empty()) continue;
        cur = t;
        swapcontext(&sched_, &fibers_[t].ctx);
        if (fibers_[t].done) --live, ++progress_;
      }
      if (live > 0 && progress_ == before && error_.empty())
        fail("deadlock: no thread can go on (a barrier or collective some threads never reach)");
    }
    current_block() = nullptr;
    if (!error_.empty()) throw std::runtime_error(error_);
  }

  // ---- called from the kernel's threads ----
  void yield() {
    flush();
    swapcontext(&fibers_[cur].ctx, &sched_);
  }

  // Records the bytes of the static shared region the running thread changed since the last flush as its
  // writes, with the race check of shared_access.
  void flush() {
    if (st_n_ == 0) return;
    const int warp = cur / 32;
    const uint64_t wgen = warps_[warp].gen;
    size_t i = 0;
    for (const auto& r : st_regions_) {
      if (std::memcmp(r.first, st_snap_.data() + i, r.second) == 0) {  // the common case: untouched
        i += r.second;
        continue;
      }
      for (size_t j = 0; j < r.second; ++j, ++i) {
        if (r.first[j] == st_snap_[i]) continue;
        st_snap_[i] = r.first[j];
        if (!check_byte(st_shadow_[i], i, true, cur, warp, wgen)) {
          fail("__shared__ memory race at byte " + std::to_string(j) + " of a __shared__ variable: thread " +
               std::to_string(cur) + " writes a byte thread " + std::to_string(st_shadow_[i].writer) +
               " wrote since the last barrier");
          park();
        }
      }
    }
  }

  void fail(const std::string& msg) {
    if (error_.empty()) {
      std::ostringstream os;
      os << msg << " [block (" << idx[0] << ", " << idx[1] << ", " << idx[2] << "), thread " << cur << "]";
      error_ = os.str();
    }
  }
  // After a failure the fiber parks here; the scheduler stops resuming fibers.
  [[noreturn]] void park() {
    for (;;) yield();
  }

  void sync_block() {
    flush();
    const uint64_t gen = bar_gen_;
    ++progress_;
    if (++bar_arrived_ == nthreads) {
      bar_arrived_ = 0;
      ++bar_gen_;
      return;
    }
    while (bar_gen_ == gen) yield();
  }

  // Deposits this lane's slot, waits for the warp, returns this lane's result.
  Slot collective(const Slot& mine, const std::function<void(const Slot*, Slot*, int warp)>& compute) {
    flush();
    const int warp = cur / 32, lane = cur % 32;
    WarpState& w = warps_[warp];
    if (nthreads % 32 != 0) fail("collective instruction in a block that is not whole warps");
    w.in[lane] = mine;
    const uint64_t gen = w.gen;
    ++progress_;
    if (++w.arrived == 32) {
      for (int l = 1; l < 32; ++l)
        if (w.in[l].op != w.in[0].op || w.in[l].arg != w.in[0].arg) {
          fail("warp divergence: lanes of one warp issued different collective instructions");
          park();
        }
      compute(w.in, w.out, warp);
      w.arrived = 0;
      ++w.gen;
    } else {
      while (w.gen == gen) yield();
    }
    if (!error_.empty()) park();
    return w.out[lane];
  }

  // Bounds, initialisation and race checks of an access by thread `tid`.
  void shared_access(const void* p, size_t n, bool write, int tid) {
    const char* c = static_cast<const char*>(p);
    const ptrdiff_t off = c - smem.data();
    if (off < 0 || static_cast<size_t>(off) + n > shadow.size()) {
      fail("shared memory access out of bounds at offset " + std::to_string(off));
      park();
    }
    const int warp = tid / 32;
    const uint64_t wgen = warps_[warp].gen;
    for (size_t i = 0; i < n; ++i) {
      Shadow& s = shadow[off + i];
      if (!write && !s.written) {
        const bool racy = s.writer >= 0 && s.writer != tid && s.w_epoch == bar_gen_;
        if (!racy) {
          fail("shared memory read of a byte never written, at offset " + std::to_string(off + i));
          park();
        }
      }
      if (!check_byte(s, off + i, write, tid, warp, wgen)) {
        fail("shared memory race at offset " + std::to_string(off + i) + ": thread " + std::to_string(tid) +
             (write ? " writes" : " reads") + " a byte thread " + std::to_string(s.writer >= 0 ? s.writer : s.reader) +
             (write ? " touched" : " wrote") + " since the last barrier");
        park();
      }
    }
  }

  // The race rule for one byte: false on a race, else records the access.
  bool check_byte(Shadow& s, size_t, bool write, int tid, int warp, uint64_t wgen) {
    const bool same_interval_w = s.writer >= 0 && s.writer != tid && s.w_epoch == bar_gen_;
    if (same_interval_w && !(s.writer / 32 == warp && s.w_wgen < wgen)) return false;
    if (write) {
      const bool read_here = s.r_epoch == bar_gen_ && s.reader != tid;
      if (read_here && !(s.reader_warp == warp && s.r_wgen < wgen)) return false;
      s.written = true, s.writer = tid, s.w_epoch = bar_gen_, s.w_wgen = wgen;
    } else if (s.r_epoch != bar_gen_) {
      s.reader = tid, s.reader_warp = warp, s.r_epoch = bar_gen_, s.r_wgen = wgen;
    } else {
      if (s.reader != tid) s.reader = -2;
      if (s.reader_warp != warp) s.reader_warp = -1;
      s.r_wgen = std::max(s.r_wgen, wgen);
    }
    return true;
  }

  int nthreads;
  int cur = 0;
  int idx[3] = {0, 0, 0};
  int dim[3] = {1, 1, 1};   // blockDim
  int grid[3] = {1, 1, 1};  // gridDim
  std::vector<char> smem;
  std::vector<Shadow> shadow;

 private:
  static void entry() {
    Block* b = current_block();
    const int t = b->cur;
    (*b->body_)(b->smem.data());
    b->flush();
    b->fibers_[t].done = true;  // returns to sched_ through uc_link
  }

  size_t stack_bytes_;
  std::unique_ptr<char[]> stacks_;  // not cleared: only the pages a fiber touches are mapped
  std::vector<Fiber> fibers_;
  std::vector<WarpState> warps_;
  ucontext_t sched_;
  const std::function<void(char*)>* body_ = nullptr;
  int bar_arrived_ = 0;
  uint64_t bar_gen_ = 0, progress_ = 0;
  std::string error_;
  std::vector<std::pair<char*, size_t>> st_regions_;
  size_t st_n_ = 0;
  std::vector<char> st_snap_;
  std::vector<Shadow> st_shadow_;
};

// Runs a kernel body over a grid, one block after another. The body gets the block's shared memory.
inline void run_grid(int gx, int gy, int gz, int threads, size_t smem_bytes,
                     const std::function<void(char*)>& body, uint32_t seed) {
  Block block(threads, smem_bytes, 256 * 1024);
  std::mt19937 rng(seed);
  for (int z = 0; z < gz; ++z)
    for (int y = 0; y < gy; ++y)
      for (int x = 0; x < gx; ++x) block.run(body, x, y, z, rng);
}

// ---- the primitives the kernels call ----------------------------------------------------------
inline int thread_id() { return current_block()->cur; }
inline int block_idx(int i) { return current_block()->idx[i]; }
inline void sync_block() { current_block()->sync_block(); }
inline void shared_access(const void* p, size_t n, bool write) {
  Block* b = current_block();
  b->shared_access(p, n, write, b->cur);
}

inline void check_aligned16(const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    current_block()->fail("misaligned 16-byte global memory access");
    current_block()->park();
  }
}

inline float shfl_xor(float v, int mask) {
  Slot s;
  s.op = kShfl, s.arg = mask, s.f[0] = v;
  return current_block()->collective(s, [](const Slot* in, Slot* out, int) {
    for (int l = 0; l < 32; ++l) out[l].f[0] = in[l ^ in[0].arg].f[0];
  }).f[0];
}

// ldmatrix .m8n8 .x1/.x2/.x4 (.trans) .b16: lanes 8i..8i+7 address the rows of matrix i.
inline void ldmatrix(uint32_t* r, int n, bool trans, const void* p) {
  Block* blk = current_block();
  Slot s;
  s.op = kLdsm, s.arg = n * 2 + (trans ? 1 : 0), s.addr = p;
  Slot o = blk->collective(s, [blk, n, trans](const Slot* in, Slot* out, int warp) {
    for (int i = 0; i < n; ++i) {
      uint16_t m[8][8];
      for (int j = 0; j < 8; ++j) {
        const int src = 8 * i + j;
        const void* a = in[src].addr;
        if (reinterpret_cast<uintptr_t>(a) % 16 != 0) {
          blk->fail("ldmatrix row address not 16-byte aligned (lane " + std::to_string(src) + ")");
          blk->park();
        }
        blk->shared_access(a, 16, false, warp * 32 + src);
        std::memcpy(m[j], a, 16);
      }
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        const uint16_t lo = trans ? m[2 * t][g] : m[g][2 * t];
        const uint16_t hi = trans ? m[2 * t + 1][g] : m[g][2 * t + 1];
        out[l].u[i] = lo | (uint32_t(hi) << 16);
      }
    }
  });
  for (int i = 0; i < n; ++i) r[i] = o.u[i];
}

// mma.sync.aligned.m16n8k16 (na = 4) or m16n8k8 (na = 2) .row.col.f32.{bf16,f16}.{bf16,f16}.f32
inline void mma(float (&d)[4], const uint32_t (&a)[4], int na, uint32_t b0, uint32_t b1, bool bf) {
  Slot s;
  s.op = na == 4 ? kMma16 : kMma8, s.arg = bf ? 1 : 0;
  for (int i = 0; i < 4; ++i) s.u[i] = a[i], s.f[i] = d[i];
  s.b[0] = b0, s.b[1] = b1;
  Slot o = current_block()->collective(s, [na, bf](const Slot* in, Slot* out, int) {
    const int K = na == 4 ? 16 : 8;
    float A[16][16] = {}, B[16][8] = {}, C[16][8] = {};
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      for (int j = 0; j < na; ++j) {  // a[j]: row g + 8 (j % 2), k 8 (j / 2) + 2t, +1
        const int row = g + 8 * (j % 2), k = 8 * (j / 2) + 2 * t;
        A[row][k] = half_float(uint16_t(in[l].u[j] & 0xffff), bf);
        A[row][k + 1] = half_float(uint16_t(in[l].u[j] >> 16), bf);
      }
      for (int j = 0; j < K / 8; ++j) {  // b[j]: k 8 j + 2t, +1; n g
        B[8 * j + 2 * t][g] = half_float(uint16_t(in[l].b[j] & 0xffff), bf);
        B[8 * j + 2 * t + 1][g] = half_float(uint16_t(in[l].b[j] >> 16), bf);
      }
      C[g][2 * t] = in[l].f[0], C[g][2 * t + 1] = in[l].f[1];
      C[g + 8][2 * t] = in[l].f[2], C[g + 8][2 * t + 1] = in[l].f[3];
    }
    float D[16][8];
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 8; ++j) {
        double acc = C[i][j];
        for (int k = 0; k < K; ++k) acc += static_cast<double>(A[i][k]) * B[k][j];
        D[i][j] = static_cast<float>(acc);
      }
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      out[l].f[0] = D[g][2 * t], out[l].f[1] = D[g][2 * t + 1];
      out[l].f[2] = D[g + 8][2 * t], out[l].f[3] = D[g + 8][2 * t + 1];
    }
  });
  for (int i = 0; i < 4; ++i) d[i] = o.f[i];
}

}  // namespace emu
}  // namespace flash
}  // namespace lumina
