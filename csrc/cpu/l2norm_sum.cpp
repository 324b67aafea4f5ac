// l2norm_sum forward and backward on CPU (the Fusion Block's normalize-scale-sum).
//
//   out[c] = sa[c] * a[c] / na + sb[c] * b[c] / nb,   na = max(||a||, eps) over channels per pixel
//
// computed as sa[c] * (a[c] * (1 / na)): the unit vector first, so that no product of a scale
// and a tiny value rounds in the subnormal range (as (sa[c] * a[c]) / na would).
//
// Work is split into blocks of pixels of one image (nchw_block); every block reads each input
// element from memory once (a second pass over the block hits the cache, L3 in NCHW). Accumulation is
// float32 for half/bfloat16/float32 inputs and float64 for float64 (at::opmath_type).
//
// Backward, with n = max(||x||, eps), t = sum_k s_k g_k x_k, the unit vector u = x / n and
// tu = t / n = sum_k s_k g_k u_k:
//   dx[c] = (s[c] g[c] - u[c] tu) / n   when ||x|| >= eps (the norm is live),
//   dx[c] = s[c] g[c] / eps             otherwise (the clamp is constant: tu = 0),
//   ds[c] = sum over images and pixels of g[c] u[c].
// Written with u and tu, no intermediate grows like a power of n: t / n^3 overflows float32 for
// norms above ~7e12 and underflows below ~5e-14; |u| <= 1 and |tu| <= max |s g| * sqrt(C).
//
// Tiny eps: a pixel whose norm is clamped to an eps below the smallest normal number would
// overflow 1/n (inf, and 0 * inf = NaN for an all-zero pixel). A live norm is never that small
// (a norm that is not 0 is at least the square root of the smallest subnormal, ~3.7e-23 in
// float32), so only clamped pixels of calls with such an eps are affected. They are computed
// with an exact power-of-two scaling: x / n = (x * m) * (1 / (n * m)), m = kTinyScale. Only such
// calls take the loops that apply it (kTiny), so the usual loops are unchanged.
// The scale gradients are reduced deterministically: fixed chunks of blocks each write partial
// sums, which are then added in chunk order, so the result does not depend on the thread count.
//
// Two loop orders, one per memory format, so that the innermost loop always walks contiguous
// memory and vectorises: NCHW walks the pixels of a block per channel (the loop order
// torch.compile generates for the reference: a pixel vector's norms accumulated over the
// channels), channels_last the channels of one pixel. Sums along the innermost loop use kLanes
// independent partial sums (compilers do not reorder a plain float sum into vector lanes without
// -ffast-math); the order is fixed, so results stay bitwise reproducible. Other strides are made
// contiguous first.
//
// Vector width: the extension is built for baseline x86-64 (SSE2: 4 floats a register), which
// left these loops 2-5x slower per element than torch.compile's AVX-512 code. The loops
// (l2norm_sum_kernels.inc) are compiled three times in this file, for SSE2, AVX2 and AVX-512,
// and the widest the CPU has runs (cpu/isa.h); all three give bitwise equal results.
//
// Threads: small maps go parallel too (the compiled reference uses every thread at every size):
// chunks hold kL2normChunkNs of single-thread work rather than parallel.h's default kChunkNs.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "checks.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"

namespace mdssd {
namespace {

// Pixels per block: channels_last 256 bytes of one channel (64 float32, 128 bfloat16/float16,
// 32 float64). NCHW (nchw_block): long rows. A block is read twice, channel row by channel row
// (pass 1: the per-pixel sums; pass 2: the outputs), and its rows are C strided segments of each
// input. Short rows that keep the block in L2 (256-1024 bytes, the earlier plan) left the reads
// of pass 1 to C x inputs short strided segments that the prefetchers hardly follow: the float32
// backward ran at 28-31% of the copy floor, behind torch.compile, whose loops stream whole channel
// rows (TORCH_LOGS=output_code: the scale-gradient and the output loops run channel-major over the
// whole image). Rows of 1 KB up to the whole image stream; pass 2 then finds the block in L3, not
// L2. Measured on the 2-core EPYC (512 KB L2, 32 MB L3) at one thread, the row length switched
// per call in one process, float32, 256-byte rows (the L2 plan there) against this plan: backward
// 1.3-1.8x faster at [1|8,256,19..75,...], forward 1.2-1.7x; whole-image rows were faster still at
// one thread, but two of them (two threads) no longer fit L3.
// The block's re-read inputs (3 backward, 2 forward) x C rows must fit a share of L3: half of
// it divided among the machine's cores (not torch's thread count: the block size decides the
// scale-gradient chunks, which must not depend on the number of threads).
template <typename T>
constexpr int64_t kBlock = 256 / static_cast<int64_t>(sizeof(T));
// Rows no shorter than this where the image allows (shorter ones stop streaming).
constexpr int64_t kMinRowBytes = 1024;
// Blocks wanted per call, so that small batches still go parallel (rows permitting).
constexpr int64_t kParallelBlocks = 4;

int64_t l3_share_bytes() {
  static const int64_t bytes = [] {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const int64_t cache = l3 > 0 ? l3 : l2 > 0 ? l2 : int64_t(1) << 20;
    return std::max<int64_t>(int64_t(256) << 10, cache / 2 / std::max<long>(1, cores));
  }();
  return bytes;
}

// Pixels per NCHW block of a [batch, channels, pixels] map: the image cut into k equal blocks
// (rounded up to kBlock), k the smallest count whose blocks fit the L3 share, raised towards
// kParallelBlocks blocks per call while rows stay >= kMinRowBytes. Every dtype and both
// directions use this plan. (The backward of 2-byte types kept the earlier L2 plan until
// 2026-12-08: re-measured with the __restrict parameters on the Xeon, one process switching the
// plan per call, bfloat16 backward, long rows were 1.0-1.5x faster at [1|8|32,256,38|75,...].)
template <typename T>
int64_t nchw_block(int64_t batch, int64_t channels, int64_t pixels, int64_t reread_inputs) {
  const int64_t elem = static_cast<int64_t>(sizeof(T));
  const int64_t fit = l3_share_bytes() / (reread_inputs * std::max<int64_t>(1, channels) * elem);
  const int64_t max_px = std::max(kBlock<T>, fit / kBlock<T> * kBlock<T>);
  const int64_t min_px = std::min(max_px, std::max(kBlock<T>, kMinRowBytes / elem));
  const int64_t px = std::max<int64_t>(1, pixels);
  const int64_t k_fit = (px + max_px - 1) / max_px;
  const int64_t k_parallel = (kParallelBlocks + std::max<int64_t>(1, batch) - 1) / std::max<int64_t>(1, batch);
  const int64_t k_rows = std::max<int64_t>(1, px / min_px);
  const int64_t k = std::max(k_fit, std::min(k_parallel, k_rows));
  const int64_t block = (px + k - 1) / k;
  return (block + kBlock<T> - 1) / kBlock<T> * kBlock<T>;
}

// Per-chunk scratch of the NCHW loops (the block's per-pixel sums), 64-byte aligned.
template <typename acc_t>
class Scratch {
 public:
  explicit Scratch(int64_t n) : raw_(static_cast<size_t>(n) + 64 / sizeof(acc_t)) {}
  acc_t* data() {
    auto addr = reinterpret_cast<uintptr_t>(raw_.data());
    return reinterpret_cast<acc_t*>((addr + 63) & ~uintptr_t(63));
  }

 private:
  std::vector<acc_t> raw_;
};

// The backward's scale-gradient partial sums: the blocks are cut into at most kMaxChunks chunks
// of equal size (a function of the shape only, never of the thread count), each summed on its
// own and then added in chunk order.
constexpr int64_t kMaxChunks = 64;

// The tiny-eps scaling (see the top of the file): pixels with n below the smallest normal number
// are scaled by m = 2^64 (float) or 2^512 (double), so that 1 / (n m) is finite.
template <typename acc_t>
constexpr acc_t kTinyScale = acc_t(0x1p64);
template <>
constexpr double kTinyScale<double> = 0x1p512;

template <typename acc_t>
bool is_tiny_eps(acc_t eps) {
  return eps < std::numeric_limits<acc_t>::min();
}

struct Layout {
  int64_t batch, channels, pixels, block, blocks_per_image;
  // Element offset of pixel p0 of image n (channel 0).
  int64_t base(int64_t n, int64_t p0, bool channels_last) const {
    return n * channels * pixels + p0 * (channels_last ? channels : 1);
  }
};

// Single-thread work per parallel chunk: 100 us rather than parallel.h's 500 us, so that maps of
// 0.2-1 ms (one image at 38x38, a batch at 19x19) use both cores as the compiled reference does.
// Beside a busy neighbour the back-off of parallel.cpp falls back to one thread.
constexpr double kL2normChunkNs = 100e3;
// Measured single-thread ns per element of the vectorised loops (python -m benchmarks.grains,
// AVX-512, [1,256,38,38], cache-resident, so the lower end): forward / backward, 2-byte / 4-byte.
constexpr double kFwdNs16 = 0.25, kFwdNs32 = 0.25, kBwdNs16 = 0.6, kBwdNs32 = 0.6;
int64_t grain_blocks(const Layout& l, double ns_per_element) {
  const double per_block = ns_per_element * static_cast<double>(std::max<int64_t>(1, l.block * l.channels));
  return grain_for(per_block, kL2normChunkNs);
}

Layout layout_of(const at::Tensor& t, int64_t block) {
  Layout l;
  l.batch = t.size(0);
  l.channels = t.size(1);
  l.pixels = t.size(2) * t.size(3);
  l.block = block;
  l.blocks_per_image = (l.pixels + block - 1) / block;
  return l;
}

template <typename scalar_t>
struct Args {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *a, *b, *g;  // g: the output gradient (backward only)
  scalar_t *out_a, *out_b;    // forward: out_a; backward: grad_a, grad_b
  const acc_t *sa, *sb;
  acc_t eps;
  int64_t channels, pixels;   // pixels: the channel stride in NCHW
};

// ---- the loops, once per instruction set ------------------------------------------------------
// Every header is included above: only the code of the .inc file is compiled for the target.

namespace sse2 {
#include "cpu/l2norm_sum_kernels.inc"
}  // namespace sse2

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#include "cpu/l2norm_sum_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,prefer-vector-width=512")
namespace avx512 {
#include "cpu/l2norm_sum_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#define MDSSD_L2NORM_WIDE 1
#endif

template <bool kTiny, typename scalar_t>
void run_forward_blocks(const Args<scalar_t>& p, const Layout& l, bool cl, int64_t begin, int64_t end) {
#ifdef MDSSD_L2NORM_WIDE
  switch (cpu_isa()) {
    case Isa::kAvx512: return avx512::forward_blocks<kTiny>(p, l, cl, begin, end);
    case Isa::kAvx2: return avx2::forward_blocks<kTiny>(p, l, cl, begin, end);
    default: break;
  }
#endif
  sse2::forward_blocks<kTiny>(p, l, cl, begin, end);
}

template <bool kTiny, typename scalar_t>
void run_backward_blocks(const Args<scalar_t>& p, const Layout& l, bool cl, int64_t begin, int64_t end,
                         at::opmath_type<scalar_t>* psa, at::opmath_type<scalar_t>* psb) {
#ifdef MDSSD_L2NORM_WIDE
  switch (cpu_isa()) {
    case Isa::kAvx512: return avx512::backward_blocks<kTiny>(p, l, cl, begin, end, psa, psb);
    case Isa::kAvx2: return avx2::backward_blocks<kTiny>(p, l, cl, begin, end, psa, psb);
    default: break;
  }
#endif
  sse2::backward_blocks<kTiny>(p, l, cl, begin, end, psa, psb);
}

// ---- ops -------------------------------------------------------------------------------------

at::Tensor forward_cpu(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& scale_a,
                       const at::Tensor& scale_b, double eps) {
  check_l2norm_sum_args("l2norm_sum", a_in, b_in, scale_a, scale_b, eps);
  const auto fmt = l2norm_sum_memory_format(a_in);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const auto a = a_in.contiguous(fmt), b = b_in.contiguous(fmt);
  auto out = at::empty_like(a, fmt);
  if (a.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "l2norm_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Layout l = layout_of(
        a, cl ? kBlock<scalar_t> : nchw_block<scalar_t>(a.size(0), a.size(1), a.size(2) * a.size(3), 2));
    const auto sa_t = scale_a.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto sb_t = scale_b.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const Args<scalar_t> p{a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), nullptr,
                           out.data_ptr<scalar_t>(), nullptr, sa_t.data_ptr<acc_t>(),
                           sb_t.data_ptr<acc_t>(), static_cast<acc_t>(eps), l.channels, l.pixels};
    const double ns = sizeof(scalar_t) == 2 ? kFwdNs16 : kFwdNs32;
    auto run = [&](auto tiny) {
      constexpr bool kTiny = decltype(tiny)::value;
      parallel_for(0, l.batch * l.blocks_per_image, grain_blocks(l, ns), [&](int64_t begin, int64_t end) {
        run_forward_blocks<kTiny>(p, l, cl, begin, end);
      });
    };
    if (is_tiny_eps(p.eps)) run(std::true_type{});
    else run(std::false_type{});
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& a_in, const at::Tensor& b_in,
    const at::Tensor& scale_a, const at::Tensor& scale_b, double eps) {
  check_l2norm_sum_backward_args(grad_in, a_in, b_in, scale_a, scale_b, eps);
  const auto fmt = l2norm_sum_memory_format(a_in);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const auto a = a_in.contiguous(fmt), b = b_in.contiguous(fmt), g = grad_in.contiguous(fmt);
  auto grad_a = at::empty_like(a, fmt), grad_b = at::empty_like(b, fmt);
  at::Tensor grad_sa, grad_sb;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "l2norm_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Layout l = layout_of(
        a, cl ? kBlock<scalar_t> : nchw_block<scalar_t>(a.size(0), a.size(1), a.size(2) * a.size(3), 3));
    const int64_t num_blocks = l.batch * l.blocks_per_image;
    const int64_t chunk_blocks = std::max<int64_t>(1, (num_blocks + kMaxChunks - 1) / kMaxChunks);
    const int64_t num_chunks = num_blocks == 0 ? 0 : (num_blocks + chunk_blocks - 1) / chunk_blocks;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const auto sa_t = scale_a.to(acc_type).contiguous();
    const auto sb_t = scale_b.to(acc_type).contiguous();
    const Args<scalar_t> p{a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                           grad_a.data_ptr<scalar_t>(), grad_b.data_ptr<scalar_t>(),
                           sa_t.data_ptr<acc_t>(), sb_t.data_ptr<acc_t>(), static_cast<acc_t>(eps),
                           l.channels, l.pixels};
    // partial[chunk][0 or 1][c]: per-chunk sums for scale_a and scale_b.
    std::vector<acc_t> partial(num_chunks * 2 * l.channels, acc_t(0));

    const double ns = sizeof(scalar_t) == 2 ? kBwdNs16 : kBwdNs32;
    const int64_t grain = (grain_blocks(l, ns) + chunk_blocks - 1) / chunk_blocks;
    auto run = [&](auto tiny) {
      constexpr bool kTiny = decltype(tiny)::value;
      parallel_for(0, num_chunks, grain, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
          acc_t* psa = partial.data() + chunk * 2 * l.channels;
          const int64_t blk_end = std::min(num_blocks, (chunk + 1) * chunk_blocks);
          run_backward_blocks<kTiny>(p, l, cl, chunk * chunk_blocks, blk_end, psa, psa + l.channels);
        }
      });
    };
    if (num_chunks > 0) {
      if (is_tiny_eps(p.eps)) run(std::true_type{});
      else run(std::false_type{});
    }
    auto gsa = at::zeros({l.channels}, sa_t.options());
    auto gsb = at::zeros({l.channels}, sb_t.options());
    acc_t* qa = gsa.data_ptr<acc_t>();
    acc_t* qb = gsb.data_ptr<acc_t>();
    for (int64_t chunk = 0; chunk < num_chunks; ++chunk) {
      const acc_t* psa = partial.data() + chunk * 2 * l.channels;
      for (int64_t c = 0; c < l.channels; ++c) {
        qa[c] += psa[c];
        qb[c] += psa[l.channels + c];
      }
    }
    grad_sa = gsa.to(scale_a.scalar_type());
    grad_sb = gsb.to(scale_b.scalar_type());
  });
  return {grad_a, grad_b, grad_sa, grad_sb};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, CPU, m) {
  m.impl("l2norm_sum", &forward_cpu);
  m.impl("l2norm_sum_backward", &backward_cpu);
}

}  // namespace mdssd
