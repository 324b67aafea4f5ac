// l2norm_sum forward and backward on CUDA (the Fusion Block's normalize-scale-sum):
//
//   out[c] = sa[c] * a[c] / na + sb[c] * b[c] / nb,   na = max(||a||, eps) over channels per pixel
// computed as sa[c] * (a[c] / na), the unit vector first (csrc/cpu/l2norm_sum.cpp says why).
//
// Backward, with n = max(||x||, eps), t = sum_k s_k g_k x_k, u = x / n and tu = t / n
// (csrc/cpu/l2norm_sum.cpp, which says why this form: no intermediate grows like n^3):
//   dx[c] = (s[c] g[c] - u[c] tu) / n when ||x|| >= eps, s[c] g[c] / eps otherwise;
//   ds[c] = sum over images and pixels of g[c] u[c].
// A clamped norm below the smallest normal number (a tiny eps) is scaled by a power of two
// before the reciprocal, as on CPU, so that 1/n cannot overflow; only launches with such an eps
// use the kernels that apply it (kTiny).
// Accumulation is float32 for float16/bfloat16/float32 and float64 for float64.
//
// Launch shape: 512 threads per block, one tile of pixels x all channels per block:
//   NCHW: 32 consecutive pixels x 16 channel lanes; thread (pixel tid % 32, lane tid / 32) owns
//         channels lane + 16 k; a warp reads 32 consecutive pixels of one channel (coalesced);
//         per-pixel sums over channels go through shared memory (16 lanes, fixed order).
//   NHWC: 16 pixels x 32 channel lanes; warp = pixel, thread owns channels lane + 32 k; a warp
//         reads consecutive channels of one pixel; per-pixel sums are warp butterflies.
// With C <= 256 (128 for float64) every thread keeps its values in registers (16 channels per
// thread for NCHW, 8 for NHWC; half that for float64), so each input element is read once and
// each output element written once. With more channels the same tiles take two passes over the inputs (norms, then outputs); the second pass
// mostly hits L2 because the tile was just read.
//
// Forward grid: one block per tile. Backward grid: at most 1024 blocks, each a contiguous range
// of tiles; every thread accumulates the scale-gradient terms of its channels in registers
// across its tiles (more channels: the block's row of partials in the workspace, updated in a fixed
// order by the one thread that owns each channel); at the end each block writes one row of
// per-channel partial sums [blocks, 2C] to the workspace, and reduce_scale_grads adds the rows
// of each column in a fixed order. The block and tile assignment depends only on the shape, so
// two runs give identical bits; no float atomics anywhere.
//
// Memory traffic per element (e = sizeof(dtype)): forward reads 2e, writes e (the floor);
// backward reads 3e (grad_out, a, b), writes 2e, plus 8 B per channel per backward block of
// partials. More than 256 (128) channels add a second read of the inputs (mostly from L2).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "cuda/cuda_utils.cuh"
#include "cuda/l2norm_sum_kernel.h"

namespace mdssd {
namespace cuda {
namespace {

constexpr int kThreads = 512;
// Register path up to this many channels: 256 (16 or 8 values per input per thread); 128 for
// float64, whose values take two registers each (256 would spill in the backward).
template <typename T>
constexpr int max_reg_channels() {
  return sizeof(T) == 8 ? 128 : 256;
}
constexpr int kMaxBackwardBlocks = 1024;
constexpr int kReduceRowLanes = 16;  // reduce_scale_grads: 32 columns x 16 row lanes

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename T>
__device__ __forceinline__ T from_acc(typename AccType<T>::type x);
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}

// A scale value (float32 or T) in the accumulation type.
template <typename T>
__device__ __forceinline__ typename AccType<T>::type load_scale(const void* p, bool is_float,
                                                                int64_t c) {
  using acc_t = typename AccType<T>::type;
  return is_float ? static_cast<acc_t>(static_cast<const float*>(p)[c])
                  : static_cast<acc_t>(to_acc(static_cast<const T*>(p)[c]));
}

// Thread <-> (pixel slot, channel lane) map of a tile, per layout.
template <bool kChannelsLast>
struct TileMap;
template <>
struct TileMap<false> {  // NCHW
  static constexpr int kPixels = 32, kLanes = 16;
  __device__ static int pixel() { return threadIdx.x & 31; }
  __device__ static int lane() { return threadIdx.x >> 5; }
};
template <>
struct TileMap<true> {  // NHWC
  static constexpr int kPixels = 16, kLanes = 32;
  __device__ static int pixel() { return threadIdx.x >> 5; }
  __device__ static int lane() { return threadIdx.x & 31; }
};

// Shared scratch of the per-pixel channel sums (NCHW only): [K][16 lanes][32 pixels].
template <bool kChannelsLast, int K>
constexpr int channel_sum_scratch() {
  return kChannelsLast ? 1 : K * 16 * 32;
}

// v[i] <- sum over the channel lanes of the tile's pixel, the same bits in every lane. Must be
// reached by all threads of the block (NCHW synchronises).
template <bool kChannelsLast, int K, typename acc_t>
__device__ __forceinline__ void sum_over_channels(acc_t (&v)[K], acc_t* scratch) {
  if constexpr (kChannelsLast) {
    // Butterfly: lanes i and i ^ offset add the same two values (in swapped order, which is
    // exact), so every lane ends with the same sum.
#pragma unroll
    for (int i = 0; i < K; ++i) {
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) v[i] += __shfl_xor_sync(0xffffffffu, v[i], offset);
    }
  } else {
    const int px = threadIdx.x & 31, lane = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < K; ++i) scratch[(i * 16 + lane) * 32 + px] = v[i];
    __syncthreads();
#pragma unroll
    for (int i = 0; i < K; ++i) {
      acc_t s = scratch[(i * 16) * 32 + px];
#pragma unroll
      for (int l = 1; l < 16; ++l) s += scratch[(i * 16 + l) * 32 + px];
      v[i] = s;
    }
    __syncthreads();  // scratch free for the next use
  }
}

// max(norm, eps) with std::max's NaN behaviour: a NaN norm stays NaN, as on CPU and in torch's
// clamp_min (fmax, which device max() becomes, would return eps and hide the NaN).
template <typename acc_t>
__device__ __forceinline__ acc_t clamp_norm(acc_t norm, acc_t eps) {
  return norm < eps ? eps : norm;
}

// 1 / (n pre) and the tiny-eps scale pre: 2^64 (2^512 for double) when n is below the smallest
// normal number, else 1. A NaN n gives pre = 1 and a NaN reciprocal. Without kTiny (eps is a
// normal number, so no clamped n is that small) pre is the constant 1 and every multiplication
// by it folds away: the usual kernels are the same code as without the scaling.
template <bool kTiny>
__device__ __forceinline__ float inverse_norm(float n, float& pre) {
  pre = kTiny && n < FLT_MIN ? 0x1p64f : 1.0f;
  return 1.0f / (kTiny ? n * pre : n);
}
template <bool kTiny>
__device__ __forceinline__ double inverse_norm(double n, double& pre) {
  pre = kTiny && n < DBL_MIN ? 0x1p512 : 1.0;
  return 1.0 / (kTiny ? n * pre : n);
}

// Whether eps (as the kernels use it) needs the tiny-eps scaling.
template <typename acc_t>
bool is_tiny_eps(acc_t eps) {
  return eps < (sizeof(acc_t) == 8 ? DBL_MIN : FLT_MIN);
}

struct Geometry {
  int64_t channels, pixels, tiles_per_image, num_tiles;
};

// Element offset of (image, channel 0, pixel) and the stride between channels.
template <bool kChannelsLast>
__device__ __forceinline__ int64_t pixel_offset(const Geometry& g, int64_t image, int64_t p) {
  return image * g.channels * g.pixels + (kChannelsLast ? p * g.channels : p);
}
template <bool kChannelsLast>
__device__ __forceinline__ int64_t channel_stride(const Geometry& g) {
  return kChannelsLast ? 1 : g.pixels;
}

// ------------------------------------------------------------------------------------------
// Forward

template <typename T, bool kChannelsLast, bool kInRegisters, bool kTiny>
__global__ void __launch_bounds__(kThreads, 2)
    l2norm_sum_forward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                              const void* __restrict__ scale_a, const void* __restrict__ scale_b,
                              bool scales_float, typename AccType<T>::type eps,
                              T* __restrict__ out, Geometry geo) {
  using acc_t = typename AccType<T>::type;
  using Map = TileMap<kChannelsLast>;
  constexpr int kPerThread = max_reg_channels<T>() / Map::kLanes;
  __shared__ acc_t s_scale[2][kInRegisters ? max_reg_channels<T>() : 1];
  __shared__ acc_t s_scratch[channel_sum_scratch<kChannelsLast, 2>()];

  const int64_t tile = blockIdx.x;
  const int64_t image = tile / geo.tiles_per_image;
  const int64_t p = (tile - image * geo.tiles_per_image) * Map::kPixels + Map::pixel();
  const bool valid = p < geo.pixels;
  const int lane = Map::lane();
  const int64_t C = geo.channels;
  const int64_t base = pixel_offset<kChannelsLast>(geo, image, valid ? p : 0);
  const int64_t cs = channel_stride<kChannelsLast>(geo);

  acc_t ss[2] = {acc_t(0), acc_t(0)};
  if constexpr (kInRegisters) {
    for (int c = threadIdx.x; c < C; c += kThreads) {
      s_scale[0][c] = load_scale<T>(scale_a, scales_float, c);
      s_scale[1][c] = load_scale<T>(scale_b, scales_float, c);
    }
    acc_t va[kPerThread], vb[kPerThread];
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int c = lane + Map::kLanes * k;
      va[k] = vb[k] = acc_t(0);
      if (valid && c < C) {
        va[k] = to_acc(a[base + c * cs]);
        vb[k] = to_acc(b[base + c * cs]);
      }
      ss[0] += va[k] * va[k];
      ss[1] += vb[k] * vb[k];
    }
    __syncthreads();  // scales staged
    sum_over_channels<kChannelsLast>(ss, s_scratch);
    acc_t pre_a, pre_b;
    const acc_t inv_a = inverse_norm<kTiny>(clamp_norm(sqrt(ss[0]), eps), pre_a);
    const acc_t inv_b = inverse_norm<kTiny>(clamp_norm(sqrt(ss[1]), eps), pre_b);
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
      const int c = lane + Map::kLanes * k;
      if (valid && c < C) {
        out[base + c * cs] = from_acc<T>(s_scale[0][c] * ((va[k] * pre_a) * inv_a) +
                                         s_scale[1][c] * ((vb[k] * pre_b) * inv_b));
      }
    }
  } else {
    if (valid) {
      for (int64_t c = lane; c < C; c += Map::kLanes) {
        const acc_t x = to_acc(a[base + c * cs]), y = to_acc(b[base + c * cs]);
        ss[0] += x * x;
        ss[1] += y * y;
      }
    }
    sum_over_channels<kChannelsLast>(ss, s_scratch);
    acc_t pre_a, pre_b;
    const acc_t inv_a = inverse_norm<kTiny>(clamp_norm(sqrt(ss[0]), eps), pre_a);
    const acc_t inv_b = inverse_norm<kTiny>(clamp_norm(sqrt(ss[1]), eps), pre_b);
    if (valid) {
      for (int64_t c = lane; c < C; c += Map::kLanes) {
        const acc_t x = to_acc(a[base + c * cs]), y = to_acc(b[base + c * cs]);
        out[base + c * cs] =
            from_acc<T>(load_scale<T>(scale_a, scales_float, c) * ((x * pre_a) * inv_a) +
                        load_scale<T>(scale_b, scales_float, c) * ((y * pre_b) * inv_b));
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Backward

// Per-pixel statistics of the backward: inv = 1 / (n pre) with the tiny-eps scale pre, and
// tu = t / n (0 when the clamp holds; pre is 1 whenever the norm is live).
template <bool kTiny, typename acc_t>
__device__ __forceinline__ void backward_stats(acc_t sum_sq, acc_t t, acc_t eps, acc_t& inv,
                                               acc_t& tu, acc_t& pre) {
  const acc_t norm = sqrt(sum_sq);
  inv = inverse_norm<kTiny>(clamp_norm(norm, eps), pre);
  tu = norm >= eps ? t * inv : acc_t(0);
}

// dx = (s g - u tu) / n with u = x / n (see backward_stats); *ds_term = g u.
template <typename acc_t>
__device__ __forceinline__ acc_t input_grad(acc_t s, acc_t g, acc_t x, acc_t inv, acc_t tu,
                                            acc_t pre, acc_t* ds_term) {
  const acc_t u = (x * pre) * inv;
  *ds_term = g * u;
  return (s * g - u * tu) * inv * pre;
}

template <typename T, bool kChannelsLast, bool kInRegisters, bool kTiny>
__global__ void __launch_bounds__(kThreads, 1)
    l2norm_sum_backward_kernel(const T* __restrict__ grad, const T* __restrict__ a,
                               const T* __restrict__ b, const void* __restrict__ scale_a,
                               const void* __restrict__ scale_b, bool scales_float,
                               typename AccType<T>::type eps, T* __restrict__ grad_a,
                               T* __restrict__ grad_b,
                               typename AccType<T>::type* __restrict__ partial, Geometry geo,
                               int64_t tiles_per_block) {
  using acc_t = typename AccType<T>::type;
  using Map = TileMap<kChannelsLast>;
  constexpr int kPerThread = max_reg_channels<T>() / Map::kLanes;
  // NHWC sums the scale-gradient terms over the 16 pixel slots through shared memory:
  // [16][256] (register path, once per block) or [2][16][32] (two-pass path, per channel chunk).
  constexpr int kSlotScratch =
      !kChannelsLast ? 1 : (kInRegisters ? Map::kPixels * max_reg_channels<T>() : 2 * Map::kPixels * 32);
  __shared__ acc_t s_scale[2][kInRegisters ? max_reg_channels<T>() : 1];
  __shared__ acc_t s_scratch[channel_sum_scratch<kChannelsLast, 4>()];
  __shared__ acc_t s_slots[kSlotScratch];

  const int lane = Map::lane(), slot = Map::pixel();
  const int64_t C = geo.channels;
  const int64_t cs = channel_stride<kChannelsLast>(geo);
  acc_t* row = partial + static_cast<int64_t>(blockIdx.x) * 2 * C;  // this block's partials
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.x) * tiles_per_block;
  const int64_t tile_end =
      tile_begin + tiles_per_block < geo.num_tiles ? tile_begin + tiles_per_block : geo.num_tiles;

  if constexpr (kInRegisters) {
    for (int c = threadIdx.x; c < C; c += kThreads) {
      s_scale[0][c] = load_scale<T>(scale_a, scales_float, c);
      s_scale[1][c] = load_scale<T>(scale_b, scales_float, c);
    }
    __syncthreads();
    acc_t dsa[kPerThread], dsb[kPerThread];
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) dsa[k] = dsb[k] = acc_t(0);

    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {  // uniform over the block
      const int64_t image = tile / geo.tiles_per_image;
      const int64_t p = (tile - image * geo.tiles_per_image) * Map::kPixels + Map::pixel();
      const bool valid = p < geo.pixels;
      const int64_t base = pixel_offset<kChannelsLast>(geo, image, valid ? p : 0);
      acc_t vg[kPerThread], va[kPerThread], vb[kPerThread];
      acc_t r[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};  // ||a||^2, ||b||^2, ta, tb
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        const int c = lane + Map::kLanes * k;
        vg[k] = va[k] = vb[k] = acc_t(0);
        if (valid && c < C) {
          vg[k] = to_acc(grad[base + c * cs]);
          va[k] = to_acc(a[base + c * cs]);
          vb[k] = to_acc(b[base + c * cs]);
        }
        // Slots c >= C of s_scale are not initialised: never read them.
        const acc_t sa = c < C ? s_scale[0][c] : acc_t(0);
        const acc_t sb = c < C ? s_scale[1][c] : acc_t(0);
        r[0] += va[k] * va[k];
        r[1] += vb[k] * vb[k];
        r[2] += sa * vg[k] * va[k];
        r[3] += sb * vg[k] * vb[k];
      }
      sum_over_channels<kChannelsLast>(r, s_scratch);
      acc_t inv_a, tua, pre_a, inv_b, tub, pre_b;
      backward_stats<kTiny>(r[0], r[2], eps, inv_a, tua, pre_a);
      backward_stats<kTiny>(r[1], r[3], eps, inv_b, tub, pre_b);
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        const int c = lane + Map::kLanes * k;
        // Guarded, not just zero: empty slots must not add to the scale gradients.
        if (valid && c < C) {
          acc_t ta, tb;
          grad_a[base + c * cs] =
              from_acc<T>(input_grad(s_scale[0][c], vg[k], va[k], inv_a, tua, pre_a, &ta));
          grad_b[base + c * cs] =
              from_acc<T>(input_grad(s_scale[1][c], vg[k], vb[k], inv_b, tub, pre_b, &tb));
          dsa[k] += ta;
          dsb[k] += tb;
        }
      }
    }

    // Sum the terms over the block's pixel slots and write the block's row of partials.
    if constexpr (kChannelsLast) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
          s_slots[slot * max_reg_channels<T>() + lane + Map::kLanes * k] = half == 0 ? dsa[k] : dsb[k];
        }
        __syncthreads();
        for (int c = threadIdx.x; c < C; c += kThreads) {
          acc_t s = s_slots[c];
          for (int w = 1; w < Map::kPixels; ++w) s += s_slots[w * max_reg_channels<T>() + c];
          row[half * C + c] = s;
        }
        __syncthreads();
      }
    } else {
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        // Butterfly over the 32 pixel slots of the warp (same bits in every lane).
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
          dsa[k] += __shfl_xor_sync(0xffffffffu, dsa[k], offset);
          dsb[k] += __shfl_xor_sync(0xffffffffu, dsb[k], offset);
        }
        const int c = lane + Map::kLanes * k;
        if (slot == 0 && c < C) {
          row[c] = dsa[k];
          row[C + c] = dsb[k];
        }
      }
    }
  } else {
    // Two-pass path (too many channels for registers). The row is owned channel by channel (NCHW: pixel slot 0 of the channel's warp;
    // NHWC: warp 0), zeroed and updated by the owner only, so program order makes it exact.
    const bool owner = kChannelsLast ? slot == 0 : Map::pixel() == 0;
    if (owner) {
      for (int64_t c = lane; c < C; c += Map::kLanes) row[c] = row[C + c] = acc_t(0);
    }
    const int64_t chunks = (C + Map::kLanes - 1) / Map::kLanes;
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t image = tile / geo.tiles_per_image;
      const int64_t p = (tile - image * geo.tiles_per_image) * Map::kPixels + Map::pixel();
      const bool valid = p < geo.pixels;
      const int64_t base = pixel_offset<kChannelsLast>(geo, image, valid ? p : 0);
      acc_t r[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
      if (valid) {
        for (int64_t c = lane; c < C; c += Map::kLanes) {
          const acc_t g = to_acc(grad[base + c * cs]);
          const acc_t x = to_acc(a[base + c * cs]), y = to_acc(b[base + c * cs]);
          r[0] += x * x;
          r[1] += y * y;
          r[2] += load_scale<T>(scale_a, scales_float, c) * g * x;
          r[3] += load_scale<T>(scale_b, scales_float, c) * g * y;
        }
      }
      sum_over_channels<kChannelsLast>(r, s_scratch);
      acc_t inv_a, tua, pre_a, inv_b, tub, pre_b;
      backward_stats<kTiny>(r[0], r[2], eps, inv_a, tua, pre_a);
      backward_stats<kTiny>(r[1], r[3], eps, inv_b, tub, pre_b);
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {  // same trip count in every thread
        const int64_t c = lane + Map::kLanes * chunk;
        acc_t ta = acc_t(0), tb = acc_t(0);
        if (valid && c < C) {
          const acc_t g = to_acc(grad[base + c * cs]);
          const acc_t x = to_acc(a[base + c * cs]), y = to_acc(b[base + c * cs]);
          grad_a[base + c * cs] = from_acc<T>(
              input_grad(load_scale<T>(scale_a, scales_float, c), g, x, inv_a, tua, pre_a, &ta));
          grad_b[base + c * cs] = from_acc<T>(
              input_grad(load_scale<T>(scale_b, scales_float, c), g, y, inv_b, tub, pre_b, &tb));
        }
        if constexpr (kChannelsLast) {
          s_slots[slot * 32 + lane] = ta;
          s_slots[(Map::kPixels + slot) * 32 + lane] = tb;
          __syncthreads();
          if (owner && c < C) {
            acc_t sa = s_slots[lane], sb = s_slots[Map::kPixels * 32 + lane];
            for (int w = 1; w < Map::kPixels; ++w) {
              sa += s_slots[w * 32 + lane];
              sb += s_slots[(Map::kPixels + w) * 32 + lane];
            }
            row[c] += sa;
            row[C + c] += sb;
          }
          __syncthreads();
        } else {
#pragma unroll
          for (int offset = 16; offset > 0; offset >>= 1) {
            ta += __shfl_xor_sync(0xffffffffu, ta, offset);
            tb += __shfl_xor_sync(0xffffffffu, tb, offset);
          }
          if (owner && c < C) {
            row[c] += ta;
            row[C + c] += tb;
          }
        }
      }
    }
  }
}

// grad_scale[c] (c < C: scale_a, else scale_b) = sum of column c of partial [rows, 2C], rows in
// a fixed order: row lane l adds rows l, l + 16, ..., then lane 0 adds the 16 lane sums in order.
template <typename T>
__global__ void __launch_bounds__(32 * kReduceRowLanes)
    reduce_scale_grads(const typename AccType<T>::type* __restrict__ partial, int64_t rows,
                       int64_t channels, bool scales_float, void* __restrict__ grad_scale_a,
                       void* __restrict__ grad_scale_b) {
  using acc_t = typename AccType<T>::type;
  __shared__ acc_t s_sum[kReduceRowLanes][32];
  const int x = threadIdx.x & 31, row_lane = threadIdx.x >> 5;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + x;
  const int64_t cols = 2 * channels;
  acc_t s = acc_t(0);
  if (col < cols) {
    for (int64_t r = row_lane; r < rows; r += kReduceRowLanes) s += partial[r * cols + col];
  }
  s_sum[row_lane][x] = s;
  __syncthreads();
  if (row_lane == 0 && col < cols) {
    for (int l = 1; l < kReduceRowLanes; ++l) s += s_sum[l][x];
    const bool is_a = col < channels;
    void* dst = is_a ? grad_scale_a : grad_scale_b;
    const int64_t c = is_a ? col : col - channels;
    if (scales_float) {
      static_cast<float*>(dst)[c] = static_cast<float>(s);
    } else {
      static_cast<T*>(dst)[c] = from_acc<T>(s);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Launchers

template <bool kChannelsLast>
Geometry geometry(const L2NormShape& shape) {
  constexpr int kPixels = TileMap<kChannelsLast>::kPixels;
  Geometry g;
  g.channels = shape.channels;
  g.pixels = shape.pixels;
  g.tiles_per_image = (shape.pixels + kPixels - 1) / kPixels;
  g.num_tiles = shape.batch * g.tiles_per_image;
  return g;
}

template <typename T, bool kChannelsLast>
int forward_typed(const void* a, const void* b, const void* scale_a, const void* scale_b,
                  bool scales_float, double eps, void* out, const L2NormShape& shape,
                  cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const Geometry geo = geometry<kChannelsLast>(shape);
  if (geo.num_tiles > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
  const auto blocks = static_cast<unsigned>(geo.num_tiles);
  const auto pa = static_cast<const T*>(a), pb = static_cast<const T*>(b);
  const auto eps_k = static_cast<acc_t>(eps);
  auto launch = [&](auto tiny) {
    constexpr bool kTiny = decltype(tiny)::value;
    if (shape.channels <= max_reg_channels<T>()) {
      l2norm_sum_forward_kernel<T, kChannelsLast, true, kTiny><<<blocks, kThreads, 0, stream>>>(
          pa, pb, scale_a, scale_b, scales_float, eps_k, static_cast<T*>(out), geo);
    } else {
      l2norm_sum_forward_kernel<T, kChannelsLast, false, kTiny><<<blocks, kThreads, 0, stream>>>(
          pa, pb, scale_a, scale_b, scales_float, eps_k, static_cast<T*>(out), geo);
    }
  };
  if (is_tiny_eps(eps_k)) {
    launch(std::true_type{});
  } else {
    launch(std::false_type{});
  }
  return last_launch_error();
}

template <bool kChannelsLast>
void backward_blocks(const L2NormShape& shape, int64_t& blocks, int64_t& tiles_per_block) {
  const int64_t tiles = geometry<kChannelsLast>(shape).num_tiles;
  tiles_per_block = tiles == 0 ? 1 : (tiles + kMaxBackwardBlocks - 1) / kMaxBackwardBlocks;
  blocks = (tiles + tiles_per_block - 1) / tiles_per_block;
}

int64_t acc_size(L2NormDType dtype) { return dtype == L2NormDType::kFloat64 ? 8 : 4; }

template <typename T, bool kChannelsLast>
int backward_typed(const void* grad, const void* a, const void* b, const void* scale_a,
                   const void* scale_b, bool scales_float, double eps, void* grad_a,
                   void* grad_b, void* grad_scale_a, void* grad_scale_b, void* workspace,
                   const L2NormShape& shape, cudaStream_t stream) {
  using acc_t = typename AccType<T>::type;
  const Geometry geo = geometry<kChannelsLast>(shape);
  int64_t blocks = 0, tiles_per_block = 1;
  backward_blocks<kChannelsLast>(shape, blocks, tiles_per_block);
  auto* partial = static_cast<acc_t*>(workspace);
  if (blocks > 0) {
    const auto pg = static_cast<const T*>(grad), pa = static_cast<const T*>(a),
               pb = static_cast<const T*>(b);
    const auto ga = static_cast<T*>(grad_a), gb = static_cast<T*>(grad_b);
    const auto eps_k = static_cast<acc_t>(eps);
    auto launch = [&](auto tiny) {
      constexpr bool kTiny = decltype(tiny)::value;
      if (shape.channels <= max_reg_channels<T>()) {
        l2norm_sum_backward_kernel<T, kChannelsLast, true, kTiny>
            <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
                pg, pa, pb, scale_a, scale_b, scales_float, eps_k, ga, gb, partial, geo,
                tiles_per_block);
      } else {
        l2norm_sum_backward_kernel<T, kChannelsLast, false, kTiny>
            <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
                pg, pa, pb, scale_a, scale_b, scales_float, eps_k, ga, gb, partial, geo,
                tiles_per_block);
      }
    };
    if (is_tiny_eps(eps_k)) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
    if (const int err = last_launch_error()) return err;
  }
  const int64_t reduce_blocks = (2 * shape.channels + 31) / 32;
  if (reduce_blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
  // blocks == 0 (empty maps): zero rows, so the scale gradients are written as 0.
  reduce_scale_grads<T><<<static_cast<unsigned>(reduce_blocks), 32 * kReduceRowLanes, 0, stream>>>(
      partial, blocks, shape.channels, scales_float, grad_scale_a, grad_scale_b);
  return last_launch_error();
}

template <typename F>
int dispatch(L2NormDType dtype, bool channels_last, F&& f) {
  auto with_layout = [&](auto type_tag) {
    using T = decltype(type_tag);
    return channels_last ? f(T{}, std::true_type{}) : f(T{}, std::false_type{});
  };
  switch (dtype) {
    case L2NormDType::kFloat16:
      return with_layout(__half{});
    case L2NormDType::kBFloat16:
      return with_layout(__nv_bfloat16{});
    case L2NormDType::kFloat32:
      return with_layout(float{});
    case L2NormDType::kFloat64:
      return with_layout(double{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace

int launch_l2norm_sum_forward(L2NormDType dtype, const void* a, const void* b,
                              const void* scale_a, const void* scale_b, bool scales_float32,
                              double eps, void* out, const L2NormShape& shape, void* stream) {
  if (shape.batch <= 0 || shape.channels <= 0 || shape.pixels <= 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, shape.channels_last, [&](auto type_tag, auto layout) {
    using T = decltype(type_tag);
    return forward_typed<T, decltype(layout)::value>(a, b, scale_a, scale_b, scales_float32, eps,
                                                     out, shape, s);
  });
}

int64_t l2norm_sum_backward_workspace_bytes(L2NormDType dtype, const L2NormShape& shape) {
  int64_t blocks = 0, tiles_per_block = 1;
  if (shape.channels_last) {
    backward_blocks<true>(shape, blocks, tiles_per_block);
  } else {
    backward_blocks<false>(shape, blocks, tiles_per_block);
  }
  return blocks * 2 * shape.channels * acc_size(dtype);
}

int launch_l2norm_sum_backward(L2NormDType dtype, const void* grad_out, const void* a,
                               const void* b, const void* scale_a, const void* scale_b,
                               bool scales_float32, double eps, void* grad_a, void* grad_b,
                               void* grad_scale_a, void* grad_scale_b, void* workspace,
                               const L2NormShape& shape, void* stream) {
  if (shape.channels <= 0) return 0;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, shape.channels_last, [&](auto type_tag, auto layout) {
    using T = decltype(type_tag);
    return backward_typed<T, decltype(layout)::value>(grad_out, a, b, scale_a, scale_b,
                                                      scales_float32, eps, grad_a, grad_b,
                                                      grad_scale_a, grad_scale_b, workspace,
                                                      shape, s);
  });
}

}  // namespace cuda
}  // namespace mdssd
