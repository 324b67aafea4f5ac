// box_iou on CUDA: out[bi, i, j] = IoU(boxes1[bi, i], boxes2[bi, j]), [N,4] x [M,4] -> [N,M] or
// batched [B,N,4] x [B,M,4] -> [B,N,M], float32 and float64. The arithmetic is box_math.h's
// (the CPU kernel's), with products rounded explicitly, so the output equals the CPU kernel's
// bit for bit.
//
// One pass; every thread ends with one 16-byte store per output row it touches (4 floats or
// 2 doubles), and boxes are read with 16-byte loads (float4; two double2 for a double box)
// whenever the three pointers are 16-byte aligned (otherwise the same kernels with scalar
// accesses). Two launch shapes, both 256 threads per block on a 1-D grid:
//   * tiled (M a multiple of the vector width and M >= 32 * width): a thread computes an
//     8-row x width-column tile; a warp covers 32 * width consecutive columns of the same 8 rows,
//     so every boxes2 box is fetched once per 8 output rows and every store instruction writes
//     512 contiguous bytes;
//   * flat (any other M, e.g. M = 50 ground truths): a thread computes `width` consecutive
//     elements of the flattened output (crossing rows when M is small), so stores stay 16-byte
//     aligned and fully coalesced whatever M is; the few boxes it needs sit in L1.
// Indices are 32-bit when the output has at most 2^30 elements, 64-bit otherwise (64-bit
// integer division is several times slower and is only paid where it is needed).
//
// Memory traffic: DRAM writes sizeof(T) bytes per output element, the floor; reads are
// 16 (32) bytes per box, (N + M) * B boxes from DRAM, re-reads served by L1/L2 (tiled: one
// boxes2 box per 8 outputs). For N, M >= 50 the reads are < 10% of the writes, so the kernel
// is bound by the store bandwidth.
#include <cstdint>

#include "box_math.h"
#include "cuda/box_iou_kernel.h"
#include "cuda/cuda_utils.cuh"

namespace mdssd {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTileRows = 8;

template <typename T>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(T));  // elements per 16-byte access
}

template <typename T, typename Index>
__device__ __forceinline__ const T* box_at(const T* base, Index index) {
  return base + 4 * static_cast<int64_t>(index);
}

// Loads one xyxy box; kVector needs `p` 16-byte aligned (checked by the launcher).
template <bool kVector>
__device__ __forceinline__ void load_box(const float* p, float (&box)[4]) {
  if constexpr (kVector) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    box[0] = v.x, box[1] = v.y, box[2] = v.z, box[3] = v.w;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) box[k] = __ldg(p + k);
  }
}

template <bool kVector>
__device__ __forceinline__ void load_box(const double* p, double (&box)[4]) {
  if constexpr (kVector) {
    const double2 v0 = __ldg(reinterpret_cast<const double2*>(p));
    const double2 v1 = __ldg(reinterpret_cast<const double2*>(p) + 1);
    box[0] = v0.x, box[1] = v0.y, box[2] = v1.x, box[3] = v1.y;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) box[k] = __ldg(p + k);
  }
}

// 16-byte store of vec_width<T>() consecutive outputs; `p` must be 16-byte aligned.
__device__ __forceinline__ void store16(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store16(double* p, const double (&v)[2]) {
  *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
}

template <typename T>
__device__ __forceinline__ T area_of(const T (&b)[4]) {
  return box_area(b[0], b[1], b[2], b[3]);
}

template <typename T>
__device__ __forceinline__ T iou_of(const T (&a)[4], T area_a, const T (&b)[4], T area_b) {
  return box_iou(a[0], a[1], a[2], a[3], area_a, b[0], b[1], b[2], b[3], area_b);
}

// Tiled shape: thread -> (image bi, rows i0 .. i0 + 7, columns j0 .. j0 + width - 1), columns
// fastest. Requires m % width == 0 and aligned pointers (every row starts 16-byte aligned).
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    box_iou_tiled_kernel(const T* __restrict__ boxes1, const T* __restrict__ boxes2,
                         T* __restrict__ out, Index n, Index m, Index row_groups,
                         Index col_groups, Index num_threads) {
  constexpr int kW = vec_width<T>();
  const Index t = static_cast<Index>(blockIdx.x) * kThreads + static_cast<Index>(threadIdx.x);
  if (t >= num_threads) return;
  const Index group = t / col_groups;
  const Index j0 = (t - group * col_groups) * kW;
  const Index bi = group / row_groups;
  const Index i0 = (group - bi * row_groups) * kTileRows;

  T q[kW][4], area_q[kW];
#pragma unroll
  for (int v = 0; v < kW; ++v) {
    load_box<true>(box_at(boxes2, bi * m + j0 + v), q[v]);
    area_q[v] = area_of(q[v]);
  }
  const Index rows = n - i0 < kTileRows ? n - i0 : static_cast<Index>(kTileRows);
  for (Index r = 0; r < rows; ++r) {
    const Index row = bi * n + i0 + r;
    T p[4];
    load_box<true>(box_at(boxes1, row), p);
    const T area_p = area_of(p);
    T res[kW];
#pragma unroll
    for (int v = 0; v < kW; ++v) res[v] = iou_of(p, area_p, q[v], area_q[v]);
    store16(out + static_cast<int64_t>(row) * m + j0, res);
  }
}

// Flat shape: thread -> `width` consecutive elements of the flattened [B*N*M] output, starting at
// a multiple of the width (so the store is 16-byte aligned whenever `out` is).
template <typename T, typename Index, bool kVector>
__global__ void __launch_bounds__(kThreads)
    box_iou_flat_kernel(const T* __restrict__ boxes1, const T* __restrict__ boxes2,
                        T* __restrict__ out, Index n, Index m, Index total) {
  constexpr int kW = vec_width<T>();
  const Index start =
      (static_cast<Index>(blockIdx.x) * kThreads + static_cast<Index>(threadIdx.x)) * kW;
  if (start >= total) return;
  Index row = start / m;  // global row bi * n + i
  Index col = start - row * m;
  Index bi = row / n;
  T p[4];
  load_box<kVector>(box_at(boxes1, row), p);
  T area_p = area_of(p);
  T res[kW];
#pragma unroll
  for (int v = 0; v < kW; ++v) {
    res[v] = T(0);
    if (start + v < total) {
      T q[4];
      load_box<kVector>(box_at(boxes2, bi * m + col), q);
      res[v] = iou_of(p, area_p, q, area_of(q));
      if (++col == m && start + v + 1 < total) {  // next element starts the next row
        col = 0;
        ++row;
        bi = row / n;
        load_box<kVector>(box_at(boxes1, row), p);
        area_p = area_of(p);
      }
    }
  }
  if (kVector && start + kW <= total) {
    store16(out + start, res);
  } else {
#pragma unroll
    for (int v = 0; v < kW; ++v) {
      if (start + v < total) out[start + v] = res[v];
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, typename Index>
int launch_typed(const T* boxes1, const T* boxes2, T* out, int64_t batch, int64_t n, int64_t m,
                 cudaStream_t stream) {
  constexpr int kW = vec_width<T>();
  const int64_t total = batch * n * m;
  const bool vector = aligned16(boxes1) && aligned16(boxes2) && aligned16(out);
  if (vector && m % kW == 0 && m >= 32 * kW) {
    const int64_t row_groups = (n + kTileRows - 1) / kTileRows;
    const int64_t col_groups = m / kW;
    const int64_t threads = batch * row_groups * col_groups;
    const int64_t blocks = (threads + kThreads - 1) / kThreads;
    if (blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
    box_iou_tiled_kernel<T, Index><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        boxes1, boxes2, out, static_cast<Index>(n), static_cast<Index>(m),
        static_cast<Index>(row_groups), static_cast<Index>(col_groups),
        static_cast<Index>(threads));
  } else {
    const int64_t blocks = (total + int64_t(kThreads) * kW - 1) / (int64_t(kThreads) * kW);
    if (blocks > INT32_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
    if (vector) {
      box_iou_flat_kernel<T, Index, true><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          boxes1, boxes2, out, static_cast<Index>(n), static_cast<Index>(m),
          static_cast<Index>(total));
    } else {
      box_iou_flat_kernel<T, Index, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          boxes1, boxes2, out, static_cast<Index>(n), static_cast<Index>(m),
          static_cast<Index>(total));
    }
  }
  return last_launch_error();
}

template <typename T>
int launch(const T* boxes1, const T* boxes2, T* out, int64_t batch, int64_t n, int64_t m,
           void* stream) {
  if (batch <= 0 || n <= 0 || m <= 0) return 0;  // empty output: nothing to launch
  const auto s = static_cast<cudaStream_t>(stream);
  // 32-bit indices while every index (and the thread-start overshoot of the last block) stays
  // far below 2^31.
  if (batch * n * m <= (int64_t(1) << 30)) {
    return launch_typed<T, int32_t>(boxes1, boxes2, out, batch, n, m, s);
  }
  return launch_typed<T, int64_t>(boxes1, boxes2, out, batch, n, m, s);
}

}  // namespace

int launch_box_iou(const float* boxes1, const float* boxes2, float* out, int64_t batch, int64_t n,
                   int64_t m, void* stream) {
  return launch(boxes1, boxes2, out, batch, n, m, stream);
}

int launch_box_iou(const double* boxes1, const double* boxes2, double* out, int64_t batch,
                   int64_t n, int64_t m, void* stream) {
  return launch(boxes1, boxes2, out, batch, n, m, stream);
}

}  // namespace cuda
}  // namespace mdssd
