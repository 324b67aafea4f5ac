// cuda_emu.h: runs plain CUDA kernel sources (csrc/cuda/*.cu, unchanged) on the CPU with the host
// compiler. Every .cu is first rewritten by csrc/cuda_emu/prep.py (the `<<<...>>>` launches and
// `extern __shared__` arrays, the only syntax that is not C++ with macros) into a C++ file that
// includes this header before anything else, so that its definitions of the execution-space
// keywords win over CUDA's crt/host_defines.h (pulled in by cuda_fp16.h / cuda_bf16.h).
//
// Model (docs/cuda_emu.md says what this proves and what it cannot):
//  * Blocks run one after another on the calling thread. Each CUDA thread of a block is a fiber
//    with its own stack; a fiber runs until it reaches a barrier, a warp operation or its end.
//  * __shared__ is `static` (one block at a time, so the block's fibers share it); prep.py
//    registers each static shared variable so that it is refilled with garbage (0xA5 bytes)
//    before every block. Dynamic shared memory is a heap buffer of exactly the launched size
//    (ASan sees any overrun) followed by a canary that is checked after every block.
//  * __syncthreads is a block barrier. Warp intrinsics follow Volta's independent thread
//    scheduling: no lockstep is assumed; every lane named in the mask must reach the same
//    operation, the last one to arrive computes all lanes' results.
//  * Atomics are plain read-modify-writes (fibers never switch inside one).
//  * Diagnostics name the kernel source's file:line: barrier divergence, a lane missing from a
//    warp operation (exited, or waiting elsewhere), deadlock, misaligned __ldg of a vector type,
//    invalid launch configuration, dynamic shared memory past its launched size. Each one is
//    printed to stderr and makes the launch's error (cudaGetLastError) non-zero, so the op that
//    launched the kernel fails with the message (see cudaGetErrorString below).
// Environment: MDSSD_CUDA_EMU_SEED=<n> (n != 0) shuffles the order in which ready fibers resume,
// at every scheduling round, and the order of the blocks of every launch; 0 or unset: in order.
// MDSSD_CUDA_EMU_STACK_KB: fiber stack size (default 64, 512 under ASan).
// MDSSD_CUDA_EMU_ABORT=1: abort() at the first diagnostic (for a debugger).
#pragma once
#ifndef MDSSD_CUDA_EMU
#define MDSSD_CUDA_EMU 1
#endif

#if !defined(__x86_64__)
#error "cuda_emu: the fiber switch is written for x86-64 only"
#endif

#define __host__
#define __device__
#define __global__
#define __shared__ static
#define __launch_bounds__(...)
#define __noinline__ __attribute__((noinline))

#include <cuda_runtime_api.h>  // the real types: cudaError_t, cudaStream_t (host-compilable)
#include <vector_functions.h>  // make_float4, ...
#include <vector_types.h>      // dim3, uint3, float4 (alignas 16), double2, ...
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#else
#define CUDA_EMU_ASAN 0
#endif

// CUDA's math API has float overloads in the global namespace (sqrt(float) is a float sqrt);
// host <cmath> declares only ::sqrt(double) there.
using std::sqrt; using std::exp; using std::log; using std::fabs; using std::floor; using std::ceil;
using std::fmin; using std::fmax; using std::pow; using std::log2; using std::exp2;

namespace cuda_emu {

// ------------------------------------------------------------------------------------------
// Diagnostics
struct Diagnostics {
  int count = 0;                      // every diagnostic since the process started
  cudaError_t pending = cudaSuccess;  // what cudaGetLastError returns next
  char message[640] = {0};            // the first diagnostic since the error was last cleared
  bool message_fresh = false;
};
inline Diagnostics g_diag;

inline int error_count() { return g_diag.count; }

inline void report(cudaError_t code, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
inline void report(cudaError_t code, const char* file, int line, const char* fmt, ...) {
  ++g_diag.count;
  // A diagnostic is an error of the launch even where a GPU would only misbehave (barrier
  // divergence is undefined behaviour there): the op must fail, not return a plausible result.
  if (code == cudaSuccess) code = cudaErrorLaunchFailure;
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (g_diag.pending == cudaSuccess) {
    g_diag.pending = code;
    std::snprintf(g_diag.message, sizeof g_diag.message, "%s:%d: %s", file ? file : "?", line, text);
    g_diag.message_fresh = true;
  }
  std::fprintf(stderr, "cuda_emu: %s:%d: %s\n", file ? file : "?", line, text);
  static const bool abort_on_error = std::getenv("MDSSD_CUDA_EMU_ABORT") != nullptr;
  if (abort_on_error) std::abort();
}

inline unsigned env_seed() {
  const char* s = std::getenv("MDSSD_CUDA_EMU_SEED");
  return s ? static_cast<unsigned>(std::strtoul(s, nullptr, 10)) : 0u;
}
inline unsigned g_seed = env_seed();
inline unsigned& seed() { return g_seed; }

// ------------------------------------------------------------------------------------------
// Fiber switch (x86-64 System V): saves the callee-saved registers and the SSE/x87 control
// words on the current stack, stores the stack pointer in *save, loads `to` and returns into
// the context saved there. No system call (ucontext's swapcontext makes one per switch).
__attribute__((naked, noinline)) static void switch_stack(void** /*save*/, void* /*to*/) {
  asm volatile(
      "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
      "subq $8, %rsp\n\tstmxcsr (%rsp)\n\tfnstcw 4(%rsp)\n\t"
      "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
      "ldmxcsr (%rsp)\n\tfldcw 4(%rsp)\n\taddq $8, %rsp\n\t"
      "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
// First frame of a fiber: the initial stack made by new_fiber_stack holds the fiber in rbx and
// the entry function in r12; the entry function never returns. `.cfi_undefined rip` marks the
// outermost frame, so DWARF unwinders (ASan's reports, debuggers) stop here instead of walking
// off the fiber's stack.
__attribute__((naked, noinline)) static void fiber_trampoline() {
  asm volatile(".cfi_undefined rip\n\tmovq %rbx, %rdi\n\tcall *%r12\n\tud2\n\t");
}

// ------------------------------------------------------------------------------------------
// Fibers and the block scheduler
enum class State { kReady, kBlockBarrier, kWarpBarrier, kDone };
enum class WarpOp { kShflIdx, kShflXor, kShflUp, kShflDown, kBallot, kAny, kAll, kMatchAny, kSyncWarp };

struct Fiber {
  void* sp = nullptr;
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = State::kReady;
  // the warp operation this lane waits in
  WarpOp op{};
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int param = 0, width = 32;
  const char* file = nullptr;
  int line = 0;
  char* stack = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;  // ASan
};

struct SharedRegion {
  const void* kernel;
  void* data;
  size_t bytes;
};

struct Block {
  std::vector<Fiber> fibers;
  std::function<void()> body;
  void* sched_sp = nullptr;
  int live = 0, bar_arrived = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  std::vector<unsigned> warp_arrived;
  std::vector<unsigned> warp_exists;
  std::vector<unsigned> warp_done;
  std::vector<unsigned char> dyn_smem;  // launched size + canary
  size_t dyn_bytes = 0;
  const void* sched_stack_bottom = nullptr;  // ASan
  size_t sched_stack_size = 0;
  void* sched_fake_stack = nullptr;
  bool failed = false;
};

struct Current {
  Fiber* fiber = nullptr;
  Block* block = nullptr;
  const void* kernel = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{1, 1, 1};
  dim3 grid_dim{1, 1, 1};
};
inline Current g_cur;
inline Current& cur() { return g_cur; }

constexpr size_t kCanaryBytes = 64;
constexpr unsigned char kGarbage = 0xA5, kCanary = 0x5A;

inline void* dynamic_shared() { return g_cur.block->dyn_smem.data(); }

// Static __shared__ variables, registered by prep.py's rewrite the first time a thread passes
// their declaration: refilled with garbage before each block of their kernel, as a GPU's shared
// memory holds whatever the previous block left (here: never the previous block's values).
inline std::vector<SharedRegion>& shared_regions() {
  static std::vector<SharedRegion> regions;
  return regions;
}
inline bool register_shared(void* data, size_t bytes) {
  shared_regions().push_back({g_cur.kernel, data, bytes});
  std::memset(data, kGarbage, bytes);
  return true;
}
inline void poison_shared(const void* kernel) {
  for (const SharedRegion& r : shared_regions())
    if (r.kernel == kernel) std::memset(r.data, kGarbage, r.bytes);
}

inline void fiber_yield() {
  Block& b = *g_cur.block;
  Fiber& f = *g_cur.fiber;
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(&f.fake_stack, b.sched_stack_bottom, b.sched_stack_size);
#endif
  switch_stack(&f.sp, b.sched_sp);
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &b.sched_stack_bottom, &b.sched_stack_size);
#endif
}

inline void release_block_barrier(Block& b) {
  for (Fiber& f : b.fibers)
    if (f.state == State::kBlockBarrier) f.state = State::kReady;
  b.bar_arrived = 0;
  b.bar_file = nullptr;
}

inline void check_block_barrier(Block& b) {
  if (b.bar_arrived == 0 || b.bar_arrived != b.live) return;
  if (b.live != static_cast<int>(b.fibers.size())) {
    report(cudaErrorLaunchFailure, b.bar_file, b.bar_line,
           "barrier divergence: __syncthreads completed with %d of %zu threads (the others "
           "exited) in block (%u,%u,%u)",
           b.live, b.fibers.size(), g_cur.block_idx.x, g_cur.block_idx.y, g_cur.block_idx.z);
  }
  release_block_barrier(b);
}

inline void complete_warp(Block& b, int w, unsigned group) {
  Fiber* lanes = &b.fibers[w * 32];
  const int first = __builtin_ctz(group);
  const Fiber& f0 = lanes[first];
  for (unsigned g = group; g; g &= g - 1) {
    const Fiber& f = lanes[__builtin_ctz(g)];
    if (f.op != f0.op || f.line != f0.line || f.file != f0.file || f.mask != f0.mask) {
      report(cudaErrorLaunchFailure, f.file, f.line,
             "warp divergence: lane %d (mask 0x%08x) meets lane %d (at %s:%d, mask 0x%08x) in "
             "one warp operation",
             __builtin_ctz(g), f.mask, first, f0.file, f0.line, f0.mask);
      break;
    }
  }
  unsigned ballot = 0;
  bool any = false, all = true;
  for (unsigned g = group; g; g &= g - 1) {
    const Fiber& f = lanes[__builtin_ctz(g)];
    if (f.value) ballot |= 1u << __builtin_ctz(g);
    any |= f.value != 0;
    all &= f.value != 0;
  }
  for (unsigned g = group; g; g &= g - 1) {
    const int l = __builtin_ctz(g);
    Fiber& f = lanes[l];
    const int seg = (l / f.width) * f.width;
    int src = l;
    switch (f.op) {
      case WarpOp::kShflIdx: src = seg + (f.param & (f.width - 1)); break;
      case WarpOp::kShflXor: src = l ^ f.param; if (src >= seg + f.width) src = l; break;
      case WarpOp::kShflUp: src = l - f.param; if (src < seg) src = l; break;
      case WarpOp::kShflDown: src = l + f.param; if (src >= seg + f.width) src = l; break;
      default: break;
    }
    switch (f.op) {
      case WarpOp::kShflIdx: case WarpOp::kShflXor: case WarpOp::kShflUp: case WarpOp::kShflDown:
        if (src < 0 || src > 31 || !((group >> src) & 1u)) {
          report(cudaErrorLaunchFailure, f.file, f.line,
                 "lane %d shuffles from lane %d, which is not in the mask 0x%08x", l, src, f.mask);
          f.result = f.value;
        } else {
          f.result = lanes[src].value;
        }
        break;
      case WarpOp::kBallot: f.result = ballot; break;
      case WarpOp::kAny: f.result = any; break;
      case WarpOp::kAll: f.result = all; break;
      case WarpOp::kMatchAny: {
        unsigned m = 0;
        for (unsigned g2 = group; g2; g2 &= g2 - 1)
          if (lanes[__builtin_ctz(g2)].value == f.value) m |= 1u << __builtin_ctz(g2);
        f.result = m;
        break;
      }
      case WarpOp::kSyncWarp: break;
    }
    f.state = State::kReady;
  }
  b.warp_arrived[w] &= ~group;
}

// Completes the warp operation of warp w once every lane named in the waiting lanes' mask has
// arrived or exited; exited lanes are reported (on a GPU the operation would hang or read
// undefined values).
inline void check_warp(Block& b, int w) {
  const unsigned arrived = b.warp_arrived[w];
  if (!arrived) return;
  Fiber* lanes = &b.fibers[w * 32];
  const unsigned mask = lanes[__builtin_ctz(arrived)].mask & b.warp_exists[w];
  const unsigned done = mask & b.warp_done[w];
  if ((arrived & mask) == (mask & ~done)) {
    if (done) {
      const Fiber& f = lanes[__builtin_ctz(arrived)];
      report(cudaErrorLaunchFailure, f.file, f.line,
             "warp operation with mask 0x%08x: lanes 0x%08x of warp %d have exited", f.mask, done, w);
    }
    complete_warp(b, w, arrived & mask);
  }
}

inline uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width,
                        const char* file, int line) {
  Block& b = *g_cur.block;
  Fiber& f = *g_cur.fiber;
  const int lane = f.linear & 31, w = f.linear >> 5;
  if (!((mask >> lane) & 1u))
    report(cudaErrorLaunchFailure, file, line,
           "lane %d calls a warp operation with mask 0x%08x that does not name it", lane, mask);
  if ((mask & ~b.warp_exists[w]) != 0)
    report(cudaErrorLaunchFailure, file, line,
           "warp operation with mask 0x%08x names lanes 0x%08x that the block does not have",
           mask, mask & ~b.warp_exists[w]);
  f.op = op, f.mask = mask, f.value = value, f.param = param, f.width = width, f.file = file, f.line = line;
  f.state = State::kWarpBarrier;
  b.warp_arrived[w] |= 1u << lane;
  check_warp(b, w);
  if (f.state != State::kReady) fiber_yield();
  return f.result;
}

inline void syncthreads(const char* file, int line) {
  Block& b = *g_cur.block;
  Fiber& f = *g_cur.fiber;
  if (b.bar_arrived == 0) {
    b.bar_file = file, b.bar_line = line;
  } else if (line != b.bar_line || std::strcmp(file, b.bar_file) != 0) {
    report(cudaErrorLaunchFailure, file, line,
           "barrier divergence: threads wait at different __syncthreads (this one and %s:%d)",
           b.bar_file, b.bar_line);
  }
  f.state = State::kBlockBarrier;
  f.file = file, f.line = line;
  ++b.bar_arrived;
  check_block_barrier(b);
  if (f.state != State::kReady) fiber_yield();
}

// The fiber's first C++ frame (entered from fiber_trampoline). No addressable locals: under
// ASan this frame never returns and must leave no poisoned redzones on the reused stack.
inline void fiber_entry(Fiber* fp) {
  Block& b = *g_cur.block;
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.sched_stack_bottom, &b.sched_stack_size);
#endif
  b.body();
  fp->state = State::kDone;
  --b.live;
  b.warp_done[fp->linear >> 5] |= 1u << (fp->linear & 31);
  check_block_barrier(b);
  check_warp(b, fp->linear >> 5);
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, b.sched_stack_bottom, b.sched_stack_size);
#endif
  switch_stack(&fp->sp, b.sched_sp);  // never resumed
  __builtin_unreachable();
}

inline void new_fiber_stack(Fiber& f) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + f.stack_size) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  unsigned short fpu_cw;
  asm volatile("fnstcw %0" : "=m"(fpu_cw));
  const uint64_t control = uint64_t(__builtin_ia32_stmxcsr()) | (uint64_t(fpu_cw) << 32);
  *--sp = reinterpret_cast<void*>(&fiber_trampoline);  // return address of switch_stack
  *--sp = nullptr;                                     // rbp
  *--sp = &f;                                          // rbx: the fiber
  *--sp = reinterpret_cast<void*>(&fiber_entry);       // r12: entry function
  *--sp = nullptr;                                     // r13
  *--sp = nullptr;                                     // r14
  *--sp = nullptr;                                     // r15
  *--sp = reinterpret_cast<void*>(control);            // mxcsr, x87 control word
  f.sp = sp;
}

inline size_t stack_bytes() {
  const char* s = std::getenv("MDSSD_CUDA_EMU_STACK_KB");
  return (s ? std::strtoul(s, nullptr, 10) : (CUDA_EMU_ASAN ? 512 : 64)) * 1024;
}

// Stacks are mapped once (with a guard page below each) and reused by every block and launch.
inline char** stack_pool(size_t count, size_t size) {
  static std::vector<char*> pool;
  while (pool.size() < count) {
    char* p = static_cast<char*>(mmap(nullptr, size + 4096, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (p == MAP_FAILED) { std::perror("cuda_emu: mmap"); std::abort(); }
    mprotect(p, 4096, PROT_NONE);
    pool.push_back(p + 4096);
  }
  return pool.data();
}

inline void run_block(Block& b, const char* kernel_name, const char* file, int line) {
  const dim3 bd = g_cur.block_dim;
  const int n = static_cast<int>(bd.x * bd.y * bd.z);
  static const size_t ss = stack_bytes();
  char** stacks = stack_pool(n, ss);
  b.fibers.assign(n, Fiber{});
  b.live = n, b.bar_arrived = 0, b.failed = false;
  const int warps = (n + 31) / 32;
  b.warp_arrived.assign(warps, 0u);
  b.warp_exists.assign(warps, 0u);
  b.warp_done.assign(warps, 0u);
  for (int t = 0; t < n; ++t) {
    Fiber& f = b.fibers[t];
    f.linear = t;
    f.tid = make_uint3(t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y));
    f.stack = stacks[t], f.stack_size = ss;
    b.warp_exists[t >> 5] |= 1u << (t & 31);
    new_fiber_stack(f);
  }
  poison_shared(g_cur.kernel);
  std::vector<int> order(n);
  for (int t = 0; t < n; ++t) order[t] = t;
  std::mt19937 rng(seed() * 2654435761u + g_cur.block_idx.x * 7919u + g_cur.block_idx.y * 104729u +
                   g_cur.block_idx.z);
  while (b.live > 0) {
    if (seed() != 0) std::shuffle(order.begin(), order.end(), rng);
    bool progress = false;
    for (int t : order) {
      Fiber& f = b.fibers[t];
      if (f.state != State::kReady) continue;
      progress = true;
      g_cur.fiber = &f;
#if CUDA_EMU_ASAN
      __sanitizer_start_switch_fiber(&b.sched_fake_stack, f.stack, f.stack_size);
#endif
      switch_stack(&b.sched_sp, f.sp);
#if CUDA_EMU_ASAN
      __sanitizer_finish_switch_fiber(b.sched_fake_stack, nullptr, nullptr);
#endif
      g_cur.fiber = nullptr;
    }
    if (!progress) {
      int at_bar = 0, at_warp = 0;
      const Fiber* ex_bar = nullptr;
      const Fiber* ex_warp = nullptr;
      for (const Fiber& f : b.fibers) {
        if (f.state == State::kBlockBarrier) ++at_bar, ex_bar = ex_bar ? ex_bar : &f;
        if (f.state == State::kWarpBarrier) ++at_warp, ex_warp = ex_warp ? ex_warp : &f;
      }
      const Fiber* ex = ex_bar ? ex_bar : ex_warp;
      report(cudaErrorLaunchFailure, ex ? ex->file : file, ex ? ex->line : line,
             "deadlock in %s (launched at %s:%d) block (%u,%u,%u): %d threads at __syncthreads "
             "(first: thread %d at %s:%d), %d at warp operations (first: thread %d at %s:%d)",
             kernel_name, file, line, g_cur.block_idx.x, g_cur.block_idx.y, g_cur.block_idx.z,
             at_bar, ex_bar ? ex_bar->linear : -1, ex_bar ? ex_bar->file : "-",
             ex_bar ? ex_bar->line : 0, at_warp, ex_warp ? ex_warp->linear : -1,
             ex_warp ? ex_warp->file : "-", ex_warp ? ex_warp->line : 0);
      b.failed = true;
#if CUDA_EMU_ASAN
      // The abandoned fibers' frames never unwound: clear their poisoned redzones.
      for (const Fiber& f : b.fibers) __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
      break;
    }
  }
#if CUDA_EMU_ASAN
  // Under ASan the canary is poisoned (an overrun aborts at the access); readable for the check.
  __asan_unpoison_memory_region(b.dyn_smem.data() + b.dyn_bytes, kCanaryBytes);
#endif
  for (size_t i = 0; i < kCanaryBytes; ++i) {
    if (b.dyn_smem[b.dyn_bytes + i] != kCanary) {
      report(cudaErrorIllegalAddress, file, line,
             "%s block (%u,%u,%u) wrote dynamic shared memory past its launched %zu bytes (byte "
             "%zu)", kernel_name, g_cur.block_idx.x, g_cur.block_idx.y, g_cur.block_idx.z,
             b.dyn_bytes, b.dyn_bytes + i);
      b.failed = true;
      break;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Launch: `k<<<g, b, s, st>>>(args)` is rewritten by prep.py to
// `::cuda_emu::launch_impl(k, "k", __FILE__, __LINE__, g, b, s, st)(args)`.
template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  const char* name;
  const char* file;
  int line;
  dim3 grid, block;
  size_t shmem;
  template <typename... A>
  void operator()(A&&... a) const {
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 ||
        grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
        grid.z > 65535) {
      report(cudaErrorInvalidConfiguration, file, line,
             "invalid launch configuration of %s: grid (%u,%u,%u) block (%u,%u,%u)", name, grid.x,
             grid.y, grid.z, block.x, block.y, block.z);
      return;
    }
    if (shmem > 48 * 1024) {
      report(cudaErrorInvalidValue, file, line,
             "launch of %s asks for %zu bytes of dynamic shared memory, more than the 48 KB "
             "allowed without cudaFuncSetAttribute",
             name, shmem);
      return;
    }
    Block b;
    b.body = [&]() {
      auto local = args;  // every thread gets its own copy of the parameters
      std::apply(kernel, local);
    };
    Current saved = g_cur;
    g_cur.block = &b;
    g_cur.kernel = reinterpret_cast<const void*>(kernel);
    g_cur.grid_dim = grid;
    g_cur.block_dim = block;
    std::vector<uint3> blocks;
    blocks.reserve(size_t(grid.x) * grid.y * grid.z);
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(make_uint3(x, y, z));
    if (seed() != 0) {
      std::mt19937 rng(seed());
      std::shuffle(blocks.begin(), blocks.end(), rng);
    }
    b.dyn_bytes = shmem;
    for (const uint3& bi : blocks) {
      g_cur.block_idx = bi;
      // Garbage, as on a GPU; the exact size (ASan sees overruns) then the canary.
      b.dyn_smem.assign(shmem + kCanaryBytes, kGarbage);
      std::memset(b.dyn_smem.data() + shmem, kCanary, kCanaryBytes);
#if CUDA_EMU_ASAN
      __asan_poison_memory_region(b.dyn_smem.data() + shmem, kCanaryBytes);
#endif
      run_block(b, name, file, line);
#if CUDA_EMU_ASAN
      __asan_unpoison_memory_region(b.dyn_smem.data() + shmem, kCanaryBytes);
#endif
      if (b.failed) break;
    }
    g_cur = saved;
  }
};

template <typename... P>
Launcher<P...> launch_impl(void (*kernel)(P...), const char* name, const char* file, int line,
                           dim3 grid, dim3 block, size_t shmem = 0, cudaStream_t = nullptr) {
  return Launcher<P...>{kernel, name, file, line, grid, block, shmem};
}

// ------------------------------------------------------------------------------------------
// Device intrinsics
template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffle of a value wider than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace cuda_emu

// Registers a static __shared__ variable (inserted by prep.py after each declaration).
#define CUDA_EMU_SHARED(name) \
  static const bool cuda_emu_shared_##name = ::cuda_emu::register_shared(&name, sizeof(name)); \
  (void)cuda_emu_shared_##name

#define threadIdx (::cuda_emu::g_cur.fiber->tid)
#define blockIdx (::cuda_emu::g_cur.block_idx)
#define blockDim (::cuda_emu::g_cur.block_dim)
#define gridDim (::cuda_emu::g_cur.grid_dim)
constexpr int warpSize = 32;

#define __syncthreads() ::cuda_emu::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  ::cuda_emu::warp_op(::cuda_emu::WarpOp::kSyncWarp, mask, 0, 0, 32, f, l);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op(::cuda_emu::WarpOp::kShflIdx, mask, ::cuda_emu::to_bits(v), src, width, f, l));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op(::cuda_emu::WarpOp::kShflXor, mask, ::cuda_emu::to_bits(v), lane_mask, width, f, l));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op(::cuda_emu::WarpOp::kShflUp, mask, ::cuda_emu::to_bits(v), int(delta), width, f, l));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return ::cuda_emu::from_bits<T>(::cuda_emu::warp_op(::cuda_emu::WarpOp::kShflDown, mask, ::cuda_emu::to_bits(v), int(delta), width, f, l));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return unsigned(::cuda_emu::warp_op(::cuda_emu::WarpOp::kBallot, mask, pred != 0, 0, 32, f, l));
}
inline int __any_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return int(::cuda_emu::warp_op(::cuda_emu::WarpOp::kAny, mask, pred != 0, 0, 32, f, l));
}
inline int __all_sync(unsigned mask, int pred, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return int(::cuda_emu::warp_op(::cuda_emu::WarpOp::kAll, mask, pred != 0, 0, 32, f, l));
}
template <typename T>
inline unsigned __match_any_sync(unsigned mask, T v, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  return unsigned(::cuda_emu::warp_op(::cuda_emu::WarpOp::kMatchAny, mask, ::cuda_emu::to_bits(v), 0, 32, f, l));
}
// The lanes of this thread's warp that have not exited (under independent scheduling a GPU may
// report fewer: code must not rely on more than this).
inline unsigned __activemask() {
  const int w = ::cuda_emu::g_cur.fiber->linear >> 5;
  return ::cuda_emu::g_cur.block->warp_exists[w] & ~::cuda_emu::g_cur.block->warp_done[w];
}
inline void __threadfence() {}
inline void __threadfence_block() {}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline int __float_as_int(float x) { int u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline long long __double_as_longlong(double x) { long long u; std::memcpy(&u, &x, 8); return u; }
inline double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
// Round-to-nearest products, never contracted into an FMA (the build uses -ffp-contract=off).
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }

// __ldg: checks the natural alignment of the load (a misaligned float4 load faults on a GPU).
template <typename T>
inline T __ldg(const T* p, const char* f = __builtin_FILE(), int l = __builtin_LINE()) {
  if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) {
    ::cuda_emu::report(cudaErrorMisalignedAddress, f, l, "misaligned __ldg of a %zu-byte type at %p",
                       sizeof(T), (const void*)p);
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }
  return *p;
}

// Plain read-modify-writes: fibers never switch inside one. Non-template overloads, as in CUDA,
// so that e.g. atomicAdd(unsigned*, int) converts its argument.
#define CUDA_EMU_ATOMIC_ARITH(T)                                                          \
  inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }                      \
  inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
#define CUDA_EMU_ATOMIC_INT(T)                                                            \
  CUDA_EMU_ATOMIC_ARITH(T)                                                                \
  inline T atomicSub(T* p, T v) { T o = *p; *p = o - v; return o; }                      \
  inline T atomicMax(T* p, T v) { T o = *p; if (v > o) *p = v; return o; }              \
  inline T atomicMin(T* p, T v) { T o = *p; if (v < o) *p = v; return o; }              \
  inline T atomicCAS(T* p, T c, T v) { T o = *p; if (o == c) *p = v; return o; }         \
  inline T atomicOr(T* p, T v) { T o = *p; *p = o | v; return o; }                       \
  inline T atomicAnd(T* p, T v) { T o = *p; *p = o & v; return o; }
CUDA_EMU_ATOMIC_INT(int)
CUDA_EMU_ATOMIC_INT(unsigned int)
CUDA_EMU_ATOMIC_INT(unsigned long long)
CUDA_EMU_ATOMIC_INT(long long)
CUDA_EMU_ATOMIC_ARITH(float)
CUDA_EMU_ATOMIC_ARITH(double)

// Runtime API subset (weak: every translation unit may define them).
extern "C" __attribute__((weak)) cudaError_t cudaGetLastError(void) {
  const cudaError_t e = ::cuda_emu::g_diag.pending;
  ::cuda_emu::g_diag.pending = cudaSuccess;
  return e;
}
extern "C" __attribute__((weak)) cudaError_t cudaPeekAtLastError(void) { return ::cuda_emu::g_diag.pending; }
// The error's name, followed by the emulator's first diagnostic since the error was last
// cleared (file:line and what happened), so that the op's exception says where.
extern "C" __attribute__((weak)) const char* cudaGetErrorString(cudaError_t e) {
  const char* name;
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: name = "invalid argument"; break;
    case cudaErrorInvalidConfiguration: name = "invalid configuration argument"; break;
    case cudaErrorMisalignedAddress: name = "misaligned address"; break;
    case cudaErrorIllegalAddress: name = "an illegal memory access was encountered"; break;
    case cudaErrorLaunchFailure: name = "unspecified launch failure"; break;
    default: name = "cuda_emu: other error"; break;
  }
  static char text[800];
  if (::cuda_emu::g_diag.message_fresh) {
    std::snprintf(text, sizeof text, "%s (cuda_emu: %s)", name, ::cuda_emu::g_diag.message);
    ::cuda_emu::g_diag.message_fresh = false;
    return text;
  }
  return name;
}
