// match_encode on CUDA: SSD prior matching + box encoding for a whole batch, with exactly the
// rule and tie-breaks of mdssd/reference.py and csrc/cpu/match_encode.cpp (IoUs from box_math.h,
// hence bitwise equal to the CPU's; labels equal bit for bit, offsets to the last ulps of log).
//
// Two launches over a grid of (prior blocks of 2048 priors) x (images), 256 threads, 8 priors
// per thread (prior p0 + tid + 256 k, so loads and stores are coalesced):
//   1. match_kernel: the block's priors (xyxy + area) live in registers; the image's ground
//      truths are staged in shared memory 128 at a time (any G works; a few hundred is 1-3
//      chunks). For each ground truth every thread updates, for each of its priors, the best
//      ground truth so far (strict >, so the lowest index wins ties: no atomics, each prior is
//      owned by one thread) and its own best prior for that ground truth; a warp butterfly
//      argmax (IoU, then lowest prior index), skipped when no lane overlaps the ground truth,
//      and a fixed-order pass over the 8 warps give the block's best prior per ground truth,
//      written to a workspace partial [B, G, prior blocks]. Also written: matched[b, p] = the
//      prior's best ground truth if its IoU >= threshold (threshold cast to the boxes' dtype),
//      else -1.
//   2. encode_kernel: one warp per ground truth reduces its partials (same order, so ties go to
//      the lowest prior index) to the ground truth's best prior; a ground truth forces that
//      prior only if the IoU is > 0, and when several force the same prior the highest ground
//      truth index wins (an int atomicMax in shared memory: the result does not depend on the
//      order). Then every prior takes its forced ground truth, else matched[b, p], else
//      background, and its loc (4 values, 0 for background) and label are written. Each block
//      re-reduces the partials of every ground truth (G x prior blocks values, L2-resident)
//      because any ground truth may force a prior in its range; that keeps it to two launches.
// Images beyond the 65535 grid rows are handled by a grid-stride loop over images.
//
// gt_counts are not value-checked on CUDA (that would synchronise the host): each kernel
// clamps them to [0, G], so out-of-range counts are memory-safe (and documented in ops.py).
//
// Memory traffic per (image, prior): 16 (32) B prior read (L2 after the first image), 4 B
// matched written and read back, 16 (32) B loc + 8 B label written: ~48 B for float32. Ground
// truths, partials and the prior re-reads are L2 traffic. At 31,232 priors x 50 ground truths
// the IoU arithmetic (~12 instructions per pair, the division only for overlapping pairs)
// dominates, not memory.
#include <cstdint>

#include "box_math.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/match_encode_kernel.h"

namespace mdssd {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPriorsPerThread = 8;
constexpr int kPriorsPerBlock = kThreads * kPriorsPerThread;
constexpr int kGtChunk = 128;           // ground truths staged in shared memory at a time
constexpr unsigned kNone = 0xffffffffu;  // "no prior": loses every tie against a real index
constexpr int kMaxGridY = 65535;

__device__ __forceinline__ int clamp_count(const int64_t* counts, int64_t b, int num_gt) {
  const int64_t c = counts[b];
  return c < 0 ? 0 : (c > num_gt ? num_gt : static_cast<int>(c));
}

// (iou, index) pairs ordered by larger IoU, then smaller index: a total order (for non-NaN
// IoUs), so every reduction tree gives the same result.
template <typename T>
__device__ __forceinline__ bool better(T v, unsigned i, T best_v, unsigned best_i) {
  return v > best_v || (v == best_v && i < best_i);
}

// Butterfly argmax over the warp; every lane ends with the maximum. All 32 lanes must call it.
template <typename T>
__device__ __forceinline__ void warp_argmax(T& v, unsigned& i) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T ov = __shfl_xor_sync(0xffffffffu, v, offset);
    const unsigned oi = __shfl_xor_sync(0xffffffffu, i, offset);
    if (better(ov, oi, v, i)) v = ov, i = oi;
  }
}

template <typename T>
__device__ __forceinline__ void load4(const T* p, bool vector, T (&out)[4]);

template <>
__device__ __forceinline__ void load4(const float* p, bool vector, float (&out)[4]) {
  if (vector) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = __ldg(p + k);
  }
}

template <>
__device__ __forceinline__ void load4(const double* p, bool vector, double (&out)[4]) {
  if (vector) {
    const double2 v0 = __ldg(reinterpret_cast<const double2*>(p));
    const double2 v1 = __ldg(reinterpret_cast<const double2*>(p) + 1);
    out[0] = v0.x, out[1] = v0.y, out[2] = v1.x, out[3] = v1.y;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) out[k] = __ldg(p + k);
  }
}

__device__ __forceinline__ void store4(float* p, bool vector, const float (&v)[4]) {
  if (vector) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) p[k] = v[k];
  }
}

__device__ __forceinline__ void store4(double* p, bool vector, const double (&v)[4]) {
  if (vector) {
    reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
    reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) p[k] = v[k];
  }
}

// Two blocks per SM for float32 (<= 128 registers); float64 needs ~160 registers, so one.
template <typename T>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 4 ? 2 : 1)
    match_kernel(const T* __restrict__ priors, const T* __restrict__ gt_boxes,
                 const int64_t* __restrict__ gt_counts, int batch, int num_priors, int num_gt,
                 int num_prior_blocks, T threshold, bool vector_priors, int* __restrict__ matched,
                 T* __restrict__ part_iou, unsigned* __restrict__ part_idx) {
  __shared__ T s_gt[kGtChunk][4];
  __shared__ T s_area[kGtChunk];
  __shared__ T s_warp_iou[kWarps][kGtChunk];
  __shared__ unsigned s_warp_idx[kWarps][kGtChunk];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int p_base = blockIdx.x * kPriorsPerBlock + tid;

  // The block's priors in xyxy form, shared by every image of the grid-stride loop.
  // Out-of-range slots get a zero prior and never count (the `p < num_priors` tests below).
  T box[kPriorsPerThread][4], area[kPriorsPerThread];
#pragma unroll
  for (int k = 0; k < kPriorsPerThread; ++k) {
    const int p = p_base + k * kThreads;
    T prior[4] = {T(0), T(0), T(0), T(0)};
    if (p < num_priors) load4(priors + 4 * static_cast<int64_t>(p), vector_priors, prior);
    prior_to_xyxy(prior, box[k]);
    area[k] = box_area(box[k][0], box[k][1], box[k][2], box[k][3]);
  }

  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {  // int64: b + gridDim.y never wraps
    const int n = clamp_count(gt_counts, b, num_gt);
    const T* gts = gt_boxes + 4 * static_cast<int64_t>(b) * num_gt;
    T best[kPriorsPerThread];
    int best_g[kPriorsPerThread];
#pragma unroll
    for (int k = 0; k < kPriorsPerThread; ++k) best[k] = T(-1), best_g[k] = 0;

    for (int g0 = 0; g0 < n; g0 += kGtChunk) {  // n is uniform over the block
      const int chunk = n - g0 < kGtChunk ? n - g0 : kGtChunk;
      __syncthreads();  // the previous chunk's shared data has been consumed
      if (tid < chunk) {
        T q[4];
        load4(gts + 4 * static_cast<int64_t>(g0 + tid), false, q);
#pragma unroll
        for (int c = 0; c < 4; ++c) s_gt[tid][c] = q[c];
        s_area[tid] = box_area(q[0], q[1], q[2], q[3]);
      }
      __syncthreads();
      for (int j = 0; j < chunk; ++j) {
        const T gx1 = s_gt[j][0], gy1 = s_gt[j][1], gx2 = s_gt[j][2], gy2 = s_gt[j][3];
        const T garea = s_area[j];
        T local_iou = T(0);  // this thread's best positive IoU with ground truth g0 + j
        unsigned local_idx = kNone;
#pragma unroll
        for (int k = 0; k < kPriorsPerThread; ++k) {
          const T* q = box[k];
          // Same expressions as box_math.h's box_iou: when the boxes do not overlap it returns
          // exactly +0, so the division is skipped without changing any bit.
          const bool overlap = (gx2 < q[2] ? gx2 : q[2]) > (gx1 > q[0] ? gx1 : q[0]) &&
                               (gy2 < q[3] ? gy2 : q[3]) > (gy1 > q[1] ? gy1 : q[1]);
          const T iou =
              overlap ? box_iou(gx1, gy1, gx2, gy2, garea, q[0], q[1], q[2], q[3], area[k])
                      : T(0);
          if (iou > best[k]) best[k] = iou, best_g[k] = g0 + j;
          // k ascending is prior index ascending: strict > keeps the lowest index.
          if (iou > local_iou && p_base + k * kThreads < num_priors) {
            local_iou = iou;
            local_idx = static_cast<unsigned>(p_base + k * kThreads);
          }
        }
        if (__any_sync(0xffffffffu, local_idx != kNone)) warp_argmax(local_iou, local_idx);
        if (lane == 0) s_warp_iou[warp][j] = local_iou, s_warp_idx[warp][j] = local_idx;
      }
      __syncthreads();
      if (tid < chunk) {  // the block's best prior for ground truth g0 + tid, warps in order
        T v = s_warp_iou[0][tid];
        unsigned i = s_warp_idx[0][tid];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) {
          const T ov = s_warp_iou[w][tid];
          const unsigned oi = s_warp_idx[w][tid];
          if (better(ov, oi, v, i)) v = ov, i = oi;
        }
        const int64_t o =
            (static_cast<int64_t>(b) * num_gt + g0 + tid) * num_prior_blocks + blockIdx.x;
        part_iou[o] = v;
        part_idx[o] = i;
      }
    }
#pragma unroll
    for (int k = 0; k < kPriorsPerThread; ++k) {
      if (p_base + k * kThreads < num_priors) {
        const int64_t o = static_cast<int64_t>(b) * num_priors + p_base + k * kThreads;
        matched[o] = best[k] >= threshold ? best_g[k] : -1;
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    encode_kernel(const T* __restrict__ priors, const T* __restrict__ gt_boxes,
                  const int64_t* __restrict__ gt_labels, const int64_t* __restrict__ gt_counts,
                  int batch, int num_priors, int num_gt, int num_prior_blocks, T variance_xy,
                  T variance_wh, bool vector_priors, bool vector_loc,
                  const int* __restrict__ matched, const T* __restrict__ part_iou,
                  const unsigned* __restrict__ part_idx, T* __restrict__ loc,
                  int64_t* __restrict__ labels) {
  __shared__ int s_forced[kPriorsPerBlock];  // forcing ground truth of each prior, -1 if none
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int p_first = blockIdx.x * kPriorsPerBlock;

  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {  // int64: b + gridDim.y never wraps
    const int n = clamp_count(gt_counts, b, num_gt);
    __syncthreads();  // the previous image's reads of s_forced are done
    for (int i = tid; i < kPriorsPerBlock; i += kThreads) s_forced[i] = -1;
    __syncthreads();
    for (int g = warp; g < n; g += kWarps) {
      const int64_t row = (static_cast<int64_t>(b) * num_gt + g) * num_prior_blocks;
      T v = T(0);
      unsigned i = kNone;
      for (int blk = lane; blk < num_prior_blocks; blk += 32) {
        const T ov = part_iou[row + blk];
        const unsigned oi = part_idx[row + blk];
        if (better(ov, oi, v, i)) v = ov, i = oi;
      }
      warp_argmax(v, i);
      // i != kNone iff the best IoU is > 0: only then does the ground truth force its prior.
      if (lane == 0 && i != kNone) {
        const int64_t local = static_cast<int64_t>(i) - p_first;
        if (local >= 0 && local < kPriorsPerBlock) atomicMax(&s_forced[local], g);
      }
    }
    __syncthreads();
#pragma unroll 2
    for (int k = 0; k < kPriorsPerThread; ++k) {
      const int local = tid + k * kThreads;
      const int p = p_first + local;
      if (p >= num_priors) break;
      const int64_t o = static_cast<int64_t>(b) * num_priors + p;
      const int forced = s_forced[local];
      const int g = forced >= 0 ? forced : matched[o];
      T out[4] = {T(0), T(0), T(0), T(0)};
      int64_t label = 0;
      if (g >= 0) {
        const int64_t gi = static_cast<int64_t>(b) * num_gt + g;
        label = gt_labels[gi];
        T prior[4], gt[4];
        load4(priors + 4 * static_cast<int64_t>(p), vector_priors, prior);
        load4(gt_boxes + 4 * gi, false, gt);
        encode_box(gt, prior, variance_xy, variance_wh, out);
      }
      store4(loc + 4 * o, vector_loc, out);
      labels[o] = label;
    }
  }
}

int64_t align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

struct Workspace {
  int* matched;
  void* part_iou;
  unsigned* part_idx;
};

Workspace carve(void* base, int64_t batch, int64_t num_priors, int64_t num_gt,
                int64_t elem_size) {
  const int64_t num_blocks = (num_priors + kPriorsPerBlock - 1) / kPriorsPerBlock;
  const int64_t parts = batch * num_gt * num_blocks;
  char* p = static_cast<char*>(base);
  Workspace w;
  w.matched = reinterpret_cast<int*>(p);
  p += align256(batch * num_priors * 4);
  w.part_iou = p;
  p += align256(parts * elem_size);
  w.part_idx = reinterpret_cast<unsigned*>(p);
  return w;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
int launch(const T* priors, const T* gt_boxes, const int64_t* gt_labels, const int64_t* gt_counts,
           int64_t batch, int64_t num_priors, int64_t num_gt, double iou_threshold,
           double variance_xy, double variance_wh, T* loc, int64_t* labels, void* workspace,
           void* stream) {
  if (batch <= 0 || num_priors <= 0) return 0;  // empty outputs: nothing to launch
  if (num_priors > match_encode_max_priors() || num_gt > INT32_MAX || batch > INT32_MAX) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const auto s = static_cast<cudaStream_t>(stream);
  const Workspace w = carve(workspace, batch, num_priors, num_gt, sizeof(T));
  const int num_blocks = ceil_div(num_priors, kPriorsPerBlock);
  const dim3 grid(num_blocks, static_cast<unsigned>(batch < kMaxGridY ? batch : kMaxGridY));
  const bool vector_priors = aligned16(priors);
  match_kernel<T><<<grid, kThreads, 0, s>>>(
      priors, gt_boxes, gt_counts, static_cast<int>(batch), static_cast<int>(num_priors),
      static_cast<int>(num_gt), num_blocks, static_cast<T>(iou_threshold), vector_priors,
      w.matched, static_cast<T*>(w.part_iou), w.part_idx);
  if (const int err = last_launch_error()) return err;
  encode_kernel<T><<<grid, kThreads, 0, s>>>(
      priors, gt_boxes, gt_labels, gt_counts, static_cast<int>(batch),
      static_cast<int>(num_priors), static_cast<int>(num_gt), num_blocks,
      static_cast<T>(variance_xy), static_cast<T>(variance_wh), vector_priors, aligned16(loc),
      w.matched, static_cast<const T*>(w.part_iou), w.part_idx, loc, labels);
  return last_launch_error();
}

}  // namespace

int64_t match_encode_workspace_bytes(int64_t batch, int64_t num_priors, int64_t num_gt,
                                     int64_t elem_size) {
  const int64_t num_blocks = (num_priors + kPriorsPerBlock - 1) / kPriorsPerBlock;
  const int64_t parts = batch * num_gt * num_blocks;
  return align256(batch * num_priors * 4) + align256(parts * elem_size) + parts * 4;
}

int64_t match_encode_max_priors() { return INT32_MAX - 2 * kPriorsPerBlock; }

int launch_match_encode(const float* priors, const float* gt_boxes, const int64_t* gt_labels,
                        const int64_t* gt_counts, int64_t batch, int64_t num_priors,
                        int64_t num_gt, double iou_threshold, double variance_xy,
                        double variance_wh, float* loc, int64_t* labels, void* workspace,
                        void* stream) {
  return launch(priors, gt_boxes, gt_labels, gt_counts, batch, num_priors, num_gt, iou_threshold,
                variance_xy, variance_wh, loc, labels, workspace, stream);
}

int launch_match_encode(const double* priors, const double* gt_boxes, const int64_t* gt_labels,
                        const int64_t* gt_counts, int64_t batch, int64_t num_priors,
                        int64_t num_gt, double iou_threshold, double variance_xy,
                        double variance_wh, double* loc, int64_t* labels, void* workspace,
                        void* stream) {
  return launch(priors, gt_boxes, gt_labels, gt_counts, batch, num_priors, num_gt, iou_threshold,
                variance_xy, variance_wh, loc, labels, workspace, stream);
}

}  // namespace cuda
}  // namespace mdssd
