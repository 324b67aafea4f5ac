// l2norm_sum forward and backward on CPU (the Fusion Block's normalize-scale-sum).
//
//   out[c] = sa[c] * a[c] / na + sb[c] * b[c] / nb,   na = max(||a||, eps) over channels per pixel
//
// Work is split into blocks of up to kBlock pixels of one image; every block reads each input
// element once per pass (two passes: norms, then outputs). NCHW and channels_last are both read
// in place; other strides are made contiguous first. Accumulation is float32 for half/bfloat16/
// float32 inputs and float64 for float64 (at::opmath_type).
//
// Backward, with n = max(||x||, eps), t = sum_k s_k g_k x_k:
//   dx[c] = (s[c] g[c] - x[c] t / n^2) / n   when ||x|| >= eps (the norm is live),
//   dx[c] = s[c] g[c] / eps                  otherwise (the clamp is constant),
//   ds[c] = sum over images and pixels of g[c] x[c] / n.
// The scale gradients are reduced deterministically: fixed chunks of blocks each write partial
// sums, which are then added in chunk order, so the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "checks.h"

namespace mdssd {
namespace {

constexpr int64_t kBlock = 64;            // pixels per block
constexpr int64_t kBlocksPerChunk = 16;   // blocks per partial sum of the scale gradients

struct Layout {
  int64_t batch, channels, pixels;
  int64_t c_stride, p_stride;  // element strides of a channel and of a pixel within one image
  int64_t blocks_per_image;
  int64_t offset(int64_t n) const { return n * channels * pixels; }
};

// Blocks per parallel task: about 64k elements, so that small maps run on one thread (waking
// OpenMP threads costs more than the work, and much more when the cores are busy).
int64_t grain_blocks(const Layout& l) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, kBlock * l.channels));
}

Layout layout_of(const at::Tensor& t, bool channels_last) {
  Layout l;
  l.batch = t.size(0);
  l.channels = t.size(1);
  l.pixels = t.size(2) * t.size(3);
  l.c_stride = channels_last ? 1 : l.pixels;
  l.p_stride = channels_last ? l.channels : 1;
  l.blocks_per_image = (l.pixels + kBlock - 1) / kBlock;
  return l;
}

at::Tensor forward_cpu(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& scale_a,
                       const at::Tensor& scale_b, double eps) {
  check_l2norm_sum_args("l2norm_sum", a_in, b_in, scale_a, scale_b, eps);
  const auto fmt = l2norm_sum_memory_format(a_in);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const auto a = a_in.contiguous(fmt), b = b_in.contiguous(fmt);
  auto out = at::empty_like(a, fmt);
  if (a.numel() == 0) return out;
  const Layout l = layout_of(a, cl);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "l2norm_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto sa_t = scale_a.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto sb_t = scale_b.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* sa = sa_t.data_ptr<acc_t>();
    const acc_t* sb = sb_t.data_ptr<acc_t>();
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    const acc_t eps_v = static_cast<acc_t>(eps);

    at::parallel_for(0, l.batch * l.blocks_per_image, grain_blocks(l), [&](int64_t begin, int64_t end) {
      acc_t ia[kBlock], ib[kBlock];
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t n = blk / l.blocks_per_image;
        const int64_t p0 = (blk % l.blocks_per_image) * kBlock;
        const int64_t np = std::min(kBlock, l.pixels - p0);
        const int64_t base = l.offset(n) + p0 * l.p_stride;
        for (int64_t i = 0; i < np; ++i) ia[i] = ib[i] = 0;
        for (int64_t c = 0; c < l.channels; ++c) {
          const int64_t off = base + c * l.c_stride;
          for (int64_t i = 0; i < np; ++i) {
            const acc_t x = static_cast<acc_t>(pa[off + i * l.p_stride]);
            const acc_t y = static_cast<acc_t>(pb[off + i * l.p_stride]);
            ia[i] += x * x;
            ib[i] += y * y;
          }
        }
        for (int64_t i = 0; i < np; ++i) {
          ia[i] = acc_t(1) / std::max(std::sqrt(ia[i]), eps_v);
          ib[i] = acc_t(1) / std::max(std::sqrt(ib[i]), eps_v);
        }
        for (int64_t c = 0; c < l.channels; ++c) {
          const int64_t off = base + c * l.c_stride;
          for (int64_t i = 0; i < np; ++i) {
            const int64_t e = off + i * l.p_stride;
            po[e] = static_cast<scalar_t>(sa[c] * static_cast<acc_t>(pa[e]) * ia[i] +
                                          sb[c] * static_cast<acc_t>(pb[e]) * ib[i]);
          }
        }
      }
    });
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
  const Layout l = layout_of(a, cl);
  const int64_t num_blocks = l.batch * l.blocks_per_image;
  const int64_t num_chunks = (num_blocks + kBlocksPerChunk - 1) / kBlocksPerChunk;
  at::Tensor grad_sa, grad_sb;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "l2norm_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const auto sa_t = scale_a.to(acc_type).contiguous();
    const auto sb_t = scale_b.to(acc_type).contiguous();
    const acc_t* sa = sa_t.data_ptr<acc_t>();
    const acc_t* sb = sb_t.data_ptr<acc_t>();
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* pga = grad_a.data_ptr<scalar_t>();
    scalar_t* pgb = grad_b.data_ptr<scalar_t>();
    const acc_t eps_v = static_cast<acc_t>(eps);
    // partial[chunk][0 or 1][c]: per-chunk sums for scale_a and scale_b.
    std::vector<acc_t> partial(num_chunks * 2 * l.channels, acc_t(0));

    const int64_t grain = (grain_blocks(l) + kBlocksPerChunk - 1) / kBlocksPerChunk;
    at::parallel_for(0, num_chunks, grain, [&](int64_t chunk_begin, int64_t chunk_end) {
      acc_t inv_a[kBlock], inv_b[kBlock], ta[kBlock], tb[kBlock], ka[kBlock], kb[kBlock];
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        acc_t* psa = partial.data() + chunk * 2 * l.channels;
        acc_t* psb = psa + l.channels;
        const int64_t blk_end = std::min(num_blocks, (chunk + 1) * kBlocksPerChunk);
        for (int64_t blk = chunk * kBlocksPerChunk; blk < blk_end; ++blk) {
          const int64_t n = blk / l.blocks_per_image;
          const int64_t p0 = (blk % l.blocks_per_image) * kBlock;
          const int64_t np = std::min(kBlock, l.pixels - p0);
          const int64_t base = l.offset(n) + p0 * l.p_stride;
          for (int64_t i = 0; i < np; ++i) inv_a[i] = inv_b[i] = ta[i] = tb[i] = 0;
          // Pass 1: squared norms and t = sum_k s_k g_k x_k.
          for (int64_t c = 0; c < l.channels; ++c) {
            const int64_t off = base + c * l.c_stride;
            for (int64_t i = 0; i < np; ++i) {
              const int64_t e = off + i * l.p_stride;
              const acc_t x = static_cast<acc_t>(pa[e]);
              const acc_t y = static_cast<acc_t>(pb[e]);
              const acc_t gr = static_cast<acc_t>(pg[e]);
              inv_a[i] += x * x;
              inv_b[i] += y * y;
              ta[i] += sa[c] * gr * x;
              tb[i] += sb[c] * gr * y;
            }
          }
          // k = t / (n^2 * n) when the norm is live, 0 when the clamp holds.
          for (int64_t i = 0; i < np; ++i) {
            const acc_t norm_a = std::sqrt(inv_a[i]), norm_b = std::sqrt(inv_b[i]);
            const acc_t na = std::max(norm_a, eps_v), nb = std::max(norm_b, eps_v);
            ka[i] = norm_a >= eps_v ? ta[i] / (na * na * na) : acc_t(0);
            kb[i] = norm_b >= eps_v ? tb[i] / (nb * nb * nb) : acc_t(0);
            inv_a[i] = acc_t(1) / na;
            inv_b[i] = acc_t(1) / nb;
          }
          // Pass 2: input gradients and the scale-gradient partial sums.
          for (int64_t c = 0; c < l.channels; ++c) {
            const int64_t off = base + c * l.c_stride;
            acc_t sum_a = 0, sum_b = 0;
            for (int64_t i = 0; i < np; ++i) {
              const int64_t e = off + i * l.p_stride;
              const acc_t x = static_cast<acc_t>(pa[e]);
              const acc_t y = static_cast<acc_t>(pb[e]);
              const acc_t gr = static_cast<acc_t>(pg[e]);
              pga[e] = static_cast<scalar_t>(sa[c] * gr * inv_a[i] - x * ka[i]);
              pgb[e] = static_cast<scalar_t>(sb[c] * gr * inv_b[i] - y * kb[i]);
              sum_a += gr * x * inv_a[i];
              sum_b += gr * y * inv_b[i];
            }
            psa[c] += sum_a;
            psb[c] += sum_b;
          }
        }
      }
    });
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
