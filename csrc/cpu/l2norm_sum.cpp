// l2norm_sum forward and backward on CPU (the Fusion Block's normalize-scale-sum).
//
//   out[c] = sa[c] * a[c] / na + sb[c] * b[c] / nb,   na = max(||a||, eps) over channels per pixel
//
// computed as sa[c] * (a[c] * (1 / na)): the unit vector first, so that no product of a scale
// and a tiny value rounds in the subnormal range (as (sa[c] * a[c]) / na would).
//
// Work is split into blocks of up to kBlock pixels of one image; every block reads each input
// element from memory once (a second pass over the block hits the cache). Accumulation is
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
// memory and the compiler vectorises it: NCHW walks the pixels of one channel, channels_last the
// channels of one pixel. Sums along the innermost loop use kLanes independent partial sums
// (compilers do not reorder a plain float sum into vector lanes without -ffast-math); the order
// is fixed, so results stay bitwise reproducible. Other strides are made contiguous first.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/parallel.h"

namespace mdssd {
namespace {

// Pixels per block: 256 bytes of one channel (64 float32, 128 bfloat16/float16, 32 float64).
// Measured on a 2-core EPYC (512 KB L2 per core) at 256 channels: 128 float32 pixels make the
// backward slower (its three inputs no longer stay in L2 for the second pass); 64 bfloat16
// pixels are ~1.5x slower than 128.
template <typename T>
constexpr int64_t kBlock = 256 / static_cast<int64_t>(sizeof(T));
constexpr int64_t kBlocksPerChunk = 16;   // blocks per partial sum of the scale gradients
constexpr int kLanes = 8;                 // partial sums per vectorised reduction

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

// For a pixel with clamped norm n: the scale m (1 unless the tiny-eps loops apply it) and
// 1 / (n m). Left as plain 1/n otherwise, so that the usual loops do not change.
template <bool kTiny, typename acc_t>
inline acc_t inverse_norm(acc_t n, acc_t& pre) {
  pre = kTiny && n < std::numeric_limits<acc_t>::min() ? kTinyScale<acc_t> : acc_t(1);
  return acc_t(1) / (kTiny ? n * pre : n);
}

// sum_{i < n} term(i) as kLanes interleaved partial sums added pairwise at the end.
template <typename acc_t, typename Term>
inline acc_t lane_sum(int64_t n, const Term& term) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += term(i + j);
  for (int j = 0; i + j < n; ++j) lane[j] += term(i + j);
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) lane[j] += lane[j + width];
  return lane[0];
}

// Conversions between the storage type and the accumulation type. bfloat16 (the CPU autocast
// type) is converted with plain integer operations, which the compiler vectorises (c10's
// conversion is not): the same values, round-to-nearest-even and a quiet NaN as c10 does.
template <typename T>
inline at::opmath_type<T> to_acc(T v) { return static_cast<at::opmath_type<T>>(v); }
inline float to_acc(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
template <typename T>
inline T from_acc(at::opmath_type<T> v) { return static_cast<T>(v); }
template <>
inline c10::BFloat16 from_acc<c10::BFloat16>(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(f != f ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

struct Layout {
  int64_t batch, channels, pixels, block, blocks_per_image;
  // Element offset of pixel p0 of image n (channel 0).
  int64_t base(int64_t n, int64_t p0, bool channels_last) const {
    return n * channels * pixels + p0 * (channels_last ? channels : 1);
  }
};

// Blocks per chunk for a measured cost per element (python -m benchmarks.grains): a loop goes
// parallel from two chunks of work (parallel.h), so small maps run on the calling thread.
// Measured single-thread ns per element on [1,256,38,38] (cache-resident, so the lower end:
// chunks come out larger, never too small): forward / backward, 2-byte / 4-byte types.
constexpr double kFwdNs16 = 1.2, kFwdNs32 = 0.37, kBwdNs16 = 3.3, kBwdNs32 = 4.8;
int64_t grain_blocks(const Layout& l, double ns_per_element) {
  return grain_for(ns_per_element * static_cast<double>(std::max<int64_t>(1, l.block * l.channels)));
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

// ---- forward ---------------------------------------------------------------------------------

template <bool kTiny, typename scalar_t>
void forward_block_nchw(const Args<scalar_t>& p, int64_t base, int64_t np) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t ia[kBlock<scalar_t>] = {}, ib[kBlock<scalar_t>] = {};
  acc_t pa[kBlock<scalar_t>], pb[kBlock<scalar_t>];  // tiny-eps scales (kTiny only)
  for (int64_t c = 0; c < p.channels; ++c) {
    const scalar_t* x = p.a + base + c * p.pixels;
    const scalar_t* y = p.b + base + c * p.pixels;
    for (int64_t i = 0; i < np; ++i) {
      const acc_t xv = to_acc(x[i]), yv = to_acc(y[i]);
      ia[i] += xv * xv;
      ib[i] += yv * yv;
    }
  }
  for (int64_t i = 0; i < np; ++i) {
    ia[i] = inverse_norm<kTiny>(std::max(std::sqrt(ia[i]), p.eps), pa[i]);
    ib[i] = inverse_norm<kTiny>(std::max(std::sqrt(ib[i]), p.eps), pb[i]);
  }
  for (int64_t c = 0; c < p.channels; ++c) {
    const int64_t off = base + c * p.pixels;
    const acc_t sa = p.sa[c], sb = p.sb[c];
    if constexpr (kTiny) {
      for (int64_t i = 0; i < np; ++i)
        p.out_a[off + i] = from_acc<scalar_t>(sa * ((to_acc(p.a[off + i]) * pa[i]) * ia[i]) +
                                              sb * ((to_acc(p.b[off + i]) * pb[i]) * ib[i]));
    } else {
      for (int64_t i = 0; i < np; ++i)
        p.out_a[off + i] = from_acc<scalar_t>(sa * (to_acc(p.a[off + i]) * ia[i]) +
                                              sb * (to_acc(p.b[off + i]) * ib[i]));
    }
  }
}

template <bool kTiny, typename scalar_t>
void forward_block_channels_last(const Args<scalar_t>& p, int64_t base, int64_t np) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = p.channels;
  for (int64_t i = 0; i < np; ++i) {
    const scalar_t* x = p.a + base + i * C;
    const scalar_t* y = p.b + base + i * C;
    const acc_t ssa = lane_sum<acc_t>(C, [&](int64_t c) { const acc_t v = to_acc(x[c]); return v * v; });
    const acc_t ssb = lane_sum<acc_t>(C, [&](int64_t c) { const acc_t v = to_acc(y[c]); return v * v; });
    acc_t pa, pb;  // 1 unless kTiny
    const acc_t ia = inverse_norm<kTiny>(std::max(std::sqrt(ssa), p.eps), pa);
    const acc_t ib = inverse_norm<kTiny>(std::max(std::sqrt(ssb), p.eps), pb);
    scalar_t* o = p.out_a + base + i * C;
    if (kTiny && (pa != acc_t(1) || pb != acc_t(1))) {
      for (int64_t c = 0; c < C; ++c)
        o[c] = from_acc<scalar_t>(p.sa[c] * ((to_acc(x[c]) * pa) * ia) +
                                  p.sb[c] * ((to_acc(y[c]) * pb) * ib));
    } else {
      for (int64_t c = 0; c < C; ++c)
        o[c] = from_acc<scalar_t>(p.sa[c] * (to_acc(x[c]) * ia) + p.sb[c] * (to_acc(y[c]) * ib));
    }
  }
}

// ---- backward --------------------------------------------------------------------------------

// From a pixel's squared norm and t: inv = 1 / (n pre) with the tiny-eps scale pre (1 unless
// kTiny), and tu = t / n when the norm is live (0 when the clamp holds, so dx = s g / n).
// pre is 1 whenever the norm is live.
template <bool kTiny, typename acc_t>
inline void backward_coefficients(acc_t sumsq, acc_t t, acc_t eps, acc_t& inv, acc_t& tu,
                                  acc_t& pre) {
  const acc_t norm = std::sqrt(sumsq);
  inv = inverse_norm<kTiny>(std::max(norm, eps), pre);
  tu = norm >= eps ? t * inv : acc_t(0);
}

// psa/psb: this chunk's scale-gradient partial sums, added to.
template <bool kTiny, typename scalar_t>
void backward_block_nchw(const Args<scalar_t>& p, int64_t base, int64_t np,
                         at::opmath_type<scalar_t>* psa, at::opmath_type<scalar_t>* psb) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t n = kBlock<scalar_t>;
  // inv_*: squared norms, then 1 / (n pre); t*: t, then tu; pre_*: tiny-eps scales.
  acc_t inv_a[n] = {}, inv_b[n] = {}, ta[n] = {}, tb[n] = {}, pre_a[n], pre_b[n], prod_a[n], prod_b[n];
  // Pass 1: squared norms and t = sum_k s_k g_k x_k.
  for (int64_t c = 0; c < p.channels; ++c) {
    const int64_t off = base + c * p.pixels;
    const acc_t sa = p.sa[c], sb = p.sb[c];
    for (int64_t i = 0; i < np; ++i) {
      const acc_t x = to_acc(p.a[off + i]);
      const acc_t y = to_acc(p.b[off + i]);
      const acc_t gr = to_acc(p.g[off + i]);
      inv_a[i] += x * x;
      inv_b[i] += y * y;
      ta[i] += sa * gr * x;
      tb[i] += sb * gr * y;
    }
  }
  for (int64_t i = 0; i < np; ++i) {
    backward_coefficients<kTiny>(inv_a[i], ta[i], p.eps, inv_a[i], ta[i], pre_a[i]);
    backward_coefficients<kTiny>(inv_b[i], tb[i], p.eps, inv_b[i], tb[i], pre_b[i]);
  }
  // Pass 2: input gradients and the scale-gradient partial sums.
  for (int64_t c = 0; c < p.channels; ++c) {
    const int64_t off = base + c * p.pixels;
    const acc_t sa = p.sa[c], sb = p.sb[c];
    if constexpr (kTiny) {
      for (int64_t i = 0; i < np; ++i) {
        const acc_t gr = to_acc(p.g[off + i]);
        const acc_t ua = (to_acc(p.a[off + i]) * pre_a[i]) * inv_a[i];
        const acc_t ub = (to_acc(p.b[off + i]) * pre_b[i]) * inv_b[i];
        p.out_a[off + i] = from_acc<scalar_t>((sa * gr - ua * ta[i]) * inv_a[i] * pre_a[i]);
        p.out_b[off + i] = from_acc<scalar_t>((sb * gr - ub * tb[i]) * inv_b[i] * pre_b[i]);
        prod_a[i] = gr * ua;
        prod_b[i] = gr * ub;
      }
    } else {
      for (int64_t i = 0; i < np; ++i) {
        const acc_t gr = to_acc(p.g[off + i]);
        const acc_t ua = to_acc(p.a[off + i]) * inv_a[i];  // the unit vector's component
        const acc_t ub = to_acc(p.b[off + i]) * inv_b[i];
        p.out_a[off + i] = from_acc<scalar_t>((sa * gr - ua * ta[i]) * inv_a[i]);
        p.out_b[off + i] = from_acc<scalar_t>((sb * gr - ub * tb[i]) * inv_b[i]);
        prod_a[i] = gr * ua;
        prod_b[i] = gr * ub;
      }
    }
    psa[c] += lane_sum<acc_t>(np, [&](int64_t i) { return prod_a[i]; });
    psb[c] += lane_sum<acc_t>(np, [&](int64_t i) { return prod_b[i]; });
  }
}

template <bool kTiny, typename scalar_t>
void backward_block_channels_last(const Args<scalar_t>& p, int64_t base, int64_t np,
                                  at::opmath_type<scalar_t>* psa, at::opmath_type<scalar_t>* psb) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = p.channels;
  for (int64_t i = 0; i < np; ++i) {
    const int64_t off = base + i * C;
    const scalar_t *x = p.a + off, *y = p.b + off, *gr = p.g + off;
    const acc_t ssa = lane_sum<acc_t>(C, [&](int64_t c) { return to_acc(x[c]) * to_acc(x[c]); });
    const acc_t ssb = lane_sum<acc_t>(C, [&](int64_t c) { return to_acc(y[c]) * to_acc(y[c]); });
    const acc_t ta = lane_sum<acc_t>(C, [&](int64_t c) { return p.sa[c] * to_acc(gr[c]) * to_acc(x[c]); });
    const acc_t tb = lane_sum<acc_t>(C, [&](int64_t c) { return p.sb[c] * to_acc(gr[c]) * to_acc(y[c]); });
    acc_t inv_a, inv_b, tua, tub, pre_a, pre_b;
    backward_coefficients<kTiny>(ssa, ta, p.eps, inv_a, tua, pre_a);
    backward_coefficients<kTiny>(ssb, tb, p.eps, inv_b, tub, pre_b);
    scalar_t *da = p.out_a + off, *db = p.out_b + off;
    if (kTiny && (pre_a != acc_t(1) || pre_b != acc_t(1))) {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t gv = to_acc(gr[c]);
        const acc_t ua = (to_acc(x[c]) * pre_a) * inv_a, ub = (to_acc(y[c]) * pre_b) * inv_b;
        da[c] = from_acc<scalar_t>((p.sa[c] * gv - ua * tua) * inv_a * pre_a);
        db[c] = from_acc<scalar_t>((p.sb[c] * gv - ub * tub) * inv_b * pre_b);
        psa[c] += gv * ua;
        psb[c] += gv * ub;
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t gv = to_acc(gr[c]);
        const acc_t ua = to_acc(x[c]) * inv_a, ub = to_acc(y[c]) * inv_b;  // the unit vectors
        da[c] = from_acc<scalar_t>((p.sa[c] * gv - ua * tua) * inv_a);
        db[c] = from_acc<scalar_t>((p.sb[c] * gv - ub * tub) * inv_b);
        psa[c] += gv * ua;
        psb[c] += gv * ub;
      }
    }
  }
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
    const Layout l = layout_of(a, kBlock<scalar_t>);
    const auto sa_t = scale_a.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto sb_t = scale_b.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const Args<scalar_t> p{a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), nullptr,
                           out.data_ptr<scalar_t>(), nullptr, sa_t.data_ptr<acc_t>(),
                           sb_t.data_ptr<acc_t>(), static_cast<acc_t>(eps), l.channels, l.pixels};
    const double ns = sizeof(scalar_t) == 2 ? kFwdNs16 : kFwdNs32;
    auto run = [&](auto tiny) {
      constexpr bool kTiny = decltype(tiny)::value;
      parallel_for(0, l.batch * l.blocks_per_image, grain_blocks(l, ns), [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end; ++blk) {
          const int64_t p0 = (blk % l.blocks_per_image) * l.block;
          const int64_t np = std::min(l.block, l.pixels - p0);
          const int64_t base = l.base(blk / l.blocks_per_image, p0, cl);
          if (cl) forward_block_channels_last<kTiny>(p, base, np);
          else forward_block_nchw<kTiny>(p, base, np);
        }
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
    const Layout l = layout_of(a, kBlock<scalar_t>);
    const int64_t num_blocks = l.batch * l.blocks_per_image;
    const int64_t num_chunks = (num_blocks + kBlocksPerChunk - 1) / kBlocksPerChunk;
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
    const int64_t grain = (grain_blocks(l, ns) + kBlocksPerChunk - 1) / kBlocksPerChunk;
    auto run = [&](auto tiny) {
      constexpr bool kTiny = decltype(tiny)::value;
      parallel_for(0, num_chunks, grain, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
          acc_t* psa = partial.data() + chunk * 2 * l.channels;
          acc_t* psb = psa + l.channels;
          const int64_t blk_end = std::min(num_blocks, (chunk + 1) * kBlocksPerChunk);
          for (int64_t blk = chunk * kBlocksPerChunk; blk < blk_end; ++blk) {
            const int64_t p0 = (blk % l.blocks_per_image) * l.block;
            const int64_t np = std::min(l.block, l.pixels - p0);
            const int64_t base = l.base(blk / l.blocks_per_image, p0, cl);
            if (cl) backward_block_channels_last<kTiny>(p, base, np, psa, psb);
            else backward_block_nchw<kTiny>(p, base, np, psa, psb);
          }
        }
      });
    };
    if (is_tiny_eps(p.eps)) run(std::true_type{});
    else run(std::false_type{});
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
