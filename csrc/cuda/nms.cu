// nms and batched_nms on CUDA: greedy NMS with torchvision's semantics (rank = descending score,
// ties to the lower index; a box is dropped when a kept box of better rank has IoU > threshold
// with it). For batched_nms, boxes of different idxs never suppress each other.
//
// Pipeline (all on the launcher's stream; the glue then reads back one int64, the kept count):
//   1. rank_keys: scores -> unsigned keys whose ascending order is descending score (-0 == +0);
//      cub::DeviceRadixSort (stable) sorts (key, index) pairs, so equal scores keep index order.
//      batched: a second stable radix sort by idx groups the ranked boxes by idx (rank order
//      inside each group).
//   2. gather: boxes (and idxs) in that order, with their areas, so the mask kernel reads them
//      contiguously.
//   3. mask: grid (tiles, tiles) of 64-thread blocks over the upper triangle; thread t of block
//      (col, row) writes the 64-bit word whose bit j says IoU(row*64+t, col*64+j) > threshold
//      (only j > t on the diagonal; 0 across different idxs). Stored upper-triangular, row-major
//      inside each row tile: n^2/16 bytes instead of torchvision's n^2/8.
//   4. scan: ONE block of 1024 threads walks the row tiles in order. Thread 0 resolves the 64
//      boxes of a tile serially from the diagonal words (only the kept ones cost a step); then
//      all threads OR the kept rows' words into the removed-bit vector (shared memory up to
//      kScanSharedWords words, global beyond) for the tiles to the right. Writes a keep flag per
//      sorted position.
//   5. cub::DeviceSelect::Flagged compacts the ranked indices whose flag is set, with the count.
//
// Memory traffic for n boxes, T = ceil(n/64) tiles: the sorts read and write O(n) keys and
// values a few times; the mask kernel reads 2 * 32 * n bytes of boxes and writes 64*T*(T+1)/2 *
// 8 ~ n^2/16 bytes; the scan reads, per kept box, the mask words to its right (<= n^2/16 bytes in
// total, usually much less), through one SM. So the floor is about n^2/16 bytes written once at
// full bandwidth plus the single-SM scan; for n = 100k the mask is 625 MB.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>

#include <cstddef>
#include <cstdint>

#include "box_math.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/nms_kernel.h"

namespace mdssd {
namespace cuda {
namespace {

using u64 = unsigned long long;  // the type of CUDA's 64-bit bit intrinsics (__ffsll, __popcll)

constexpr int kTile = static_cast<int>(kNmsTile);
constexpr int kThreads = 256;            // element-wise kernels
constexpr int kScanThreads = 1024;       // the single scan block: as many loads in flight as can be
constexpr int64_t kScanSharedWords = 5120;  // removed-bit vector in shared memory up to 40 KB

template <typename T>
struct RankKey;
template <>
struct RankKey<float> {
  using type = uint32_t;
};
template <>
struct RankKey<double> {
  using type = uint64_t;
};

// Unsigned key whose ascending order is descending score (ties are left to the stable sort).
__device__ __forceinline__ uint32_t descending_key(float s) { return ~score_key(s); }
__device__ __forceinline__ uint64_t descending_key(double s) { return ~score_key(s); }

// Word offset of the first row of row tile `rb` in the upper-triangular mask: tile rb stores
// 64 rows of (tiles - rb) words.
__host__ __device__ __forceinline__ int64_t tile_row_offset(int64_t rb, int64_t tiles) {
  return kNmsTile * (rb * tiles - rb * (rb - 1) / 2);
}

__host__ __device__ __forceinline__ int64_t mask_words(int64_t tiles) {
  return tile_row_offset(tiles, tiles);
}

template <typename T>
__global__ void rank_keys_kernel(const T* __restrict__ scores, int64_t n,
                                 typename RankKey<T>::type* __restrict__ keys,
                                 int64_t* __restrict__ values) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  keys[i] = descending_key(scores[i]);
  values[i] = i;
}

// Boxes in processing order (perm), with their areas computed exactly as on CPU.
template <typename T>
__global__ void gather_boxes_kernel(const T* __restrict__ boxes, const int64_t* __restrict__ perm,
                                    int64_t n, T* __restrict__ sorted_boxes,
                                    T* __restrict__ areas) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const T* b = boxes + 4 * perm[i];
  const T x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  T* o = sorted_boxes + 4 * i;
  o[0] = x1;
  o[1] = y1;
  o[2] = x2;
  o[3] = y2;
  areas[i] = box_area(x1, y1, x2, y2);
}

// One 64x64 tile of the suppression mask. `groups` (sorted ascending along the order) is null for
// plain nms; for batched_nms a pair of different groups never sets a bit.
template <typename T>
__global__ void __launch_bounds__(kTile)
    nms_mask_kernel(const T* __restrict__ boxes, const T* __restrict__ areas,
                    const int64_t* __restrict__ groups, int64_t n, int64_t tiles, T threshold,
                    u64* __restrict__ mask) {
  const int64_t col = blockIdx.x, row = blockIdx.y;
  if (col < row) return;  // whole block: the lower triangle is neither stored nor read
  if (groups != nullptr) {
    // Whole block: the column tile starts past the row tile's last group, so (groups sorted)
    // no pair meets; nms_scan_kernel stops before such tiles and never reads them.
    const int64_t row_last = ((row + 1) * kTile < n ? (row + 1) * kTile : n) - 1;
    if (groups[col * kTile] > groups[row_last]) return;
  }
  __shared__ T col_boxes[kTile * 4];
  __shared__ T col_areas[kTile];
  __shared__ int64_t col_groups[kTile];
  const int t = threadIdx.x;
  const int64_t col_start = col * kTile;
  const int col_count = static_cast<int>(n - col_start < kTile ? n - col_start : kTile);
  if (t < col_count) {
    const T* b = boxes + 4 * (col_start + t);
    col_boxes[4 * t + 0] = b[0];
    col_boxes[4 * t + 1] = b[1];
    col_boxes[4 * t + 2] = b[2];
    col_boxes[4 * t + 3] = b[3];
    col_areas[t] = areas[col_start + t];
    col_groups[t] = groups != nullptr ? groups[col_start + t] : 0;
  }
  __syncthreads();
  const int64_t i = row * kTile + t;
  if (i >= n) return;
  const T* b = boxes + 4 * i;
  const T x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
  const T area = areas[i];
  const int64_t group = groups != nullptr ? groups[i] : 0;
  u64 bits = 0;
  // Groups are sorted, so a row whose group lies outside the column tile's range meets none.
  if (groups == nullptr || (group >= col_groups[0] && group <= col_groups[col_count - 1])) {
    for (int j = (col == row) ? t + 1 : 0; j < col_count; ++j) {
      if (groups != nullptr && col_groups[j] != group) continue;
      const T* c = col_boxes + 4 * j;
      if (box_iou(x1, y1, x2, y2, area, c[0], c[1], c[2], c[3], col_areas[j]) > threshold) {
        bits |= 1ull << j;
      }
    }
  }
  mask[tile_row_offset(row, tiles) + static_cast<int64_t>(t) * (tiles - row) + (col - row)] = bits;
}

// The greedy pass over the mask (see the file comment). keep_flag[k] = 1 when the k-th box of the
// processing order is kept. For batched_nms (`groups` not null) a row tile's kept boxes only
// reach the column tiles that start within its last group: later tiles were never written.
__global__ void __launch_bounds__(kScanThreads)
    nms_scan_kernel(const u64* __restrict__ mask, const int64_t* __restrict__ groups, int64_t n,
                    int64_t tiles, u64* __restrict__ removed_global, bool removed_in_shared,
                    uint8_t* __restrict__ keep_flag) {
  extern __shared__ u64 removed_shared[];
  __shared__ u64 diagonal[kTile];
  __shared__ u64 kept_shared;
  u64* removed = removed_in_shared ? removed_shared : removed_global;
  const int tid = threadIdx.x;
  for (int64_t x = tid; x < tiles; x += kScanThreads) removed[x] = 0;
  __syncthreads();
  for (int64_t rb = 0; rb < tiles; ++rb) {
    const int rows = static_cast<int>(n - rb * kTile < kTile ? n - rb * kTile : kTile);
    const int64_t width = tiles - rb;
    const u64* tile_rows = mask + tile_row_offset(rb, tiles);
    if (tid < rows) diagonal[tid] = tile_rows[tid * width];
    __syncthreads();
    if (tid == 0) {
      // The diagonal tile stores only j > i, which is all greedy_tile reads.
      kept_shared = greedy_tile(removed[rb], rows, [&](int bit) { return diagonal[bit]; });
    }
    __syncthreads();
    const u64 kept = kept_shared;
    if (tid < rows) keep_flag[rb * kTile + tid] = static_cast<uint8_t>((kept >> tid) & 1ull);
    if (kept != 0) {
      const int64_t last_group = groups != nullptr ? groups[rb * kTile + rows - 1] : 0;
      for (int64_t x = rb + 1 + tid; x < tiles; x += kScanThreads) {
        // Same test as nms_mask_kernel's skip; sorted groups make every later tile skipped too.
        if (groups != nullptr && groups[x * kTile] > last_group) break;
        const u64* column = tile_rows + (x - rb);
        u64 acc = removed[x];
        u64 pending = kept;
        while (pending != 0) {
          // Eight independent loads in flight per thread instead of one dependent chain.
          u64 w[8];
#pragma unroll
          for (int u = 0; u < 8; ++u) {
            w[u] = 0;
            if (pending != 0) {
              const int bit = __ffsll(static_cast<long long>(pending)) - 1;
              pending &= pending - 1;
              w[u] = column[bit * width];
            }
          }
          acc |= (w[0] | w[1]) | (w[2] | w[3]) | (w[4] | w[5]) | (w[6] | w[7]);
        }
        removed[x] = acc;
      }
    }
    __syncthreads();  // removed[] and diagonal[] are reused by the next tile
  }
}

// batched_nms: kept flags from processing order (grouped) to box index, then to rank order.
__global__ void scatter_flags_kernel(const uint8_t* __restrict__ flag_by_position,
                                     const int64_t* __restrict__ position_to_index, int64_t n,
                                     uint8_t* __restrict__ flag_by_index) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  flag_by_index[position_to_index[i]] = flag_by_position[i];
}

// Carves the workspace; with base == nullptr it only measures (offsets from 0).
class Carver {
 public:
  explicit Carver(void* base) : base_(static_cast<char*>(base)) {}
  template <typename U>
  U* take(int64_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    U* p = base_ != nullptr ? reinterpret_cast<U*>(base_ + offset_) : nullptr;
    offset_ += static_cast<size_t>(count) * sizeof(U);
    return p;
  }
  size_t used() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

template <typename T>
struct Buffers {
  using Key = typename RankKey<T>::type;
  Key* keys_in;
  Key* keys_out;
  int64_t* iota;
  int64_t* order;         // box indices in rank order
  int64_t* group_in;      // batched: idxs in rank order
  int64_t* group_sorted;  // batched: idxs in processing order (sorted)
  int64_t* grouped;       // batched: box indices in processing order
  T* boxes;
  T* areas;
  u64* mask;
  u64* removed;
  uint8_t* keep_flag;
  uint8_t* flag_by_index;
  uint8_t* flag_by_rank;
  void* temp;
  size_t temp_bytes;
  size_t total;
};

template <typename T>
Buffers<T> carve(void* base, int64_t n, bool batched, size_t temp_bytes) {
  using Key = typename RankKey<T>::type;
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t grouped_n = batched ? n : 0;
  Carver c(base);
  Buffers<T> b;
  b.keys_in = c.take<Key>(n);
  b.keys_out = c.take<Key>(n);
  b.iota = c.take<int64_t>(n);
  b.order = c.take<int64_t>(n);
  b.group_in = c.take<int64_t>(grouped_n);
  b.group_sorted = c.take<int64_t>(grouped_n);
  b.grouped = c.take<int64_t>(grouped_n);
  b.boxes = c.take<T>(4 * n);
  b.areas = c.take<T>(n);
  b.mask = c.take<u64>(mask_words(tiles));
  b.removed = c.take<u64>(tiles);
  b.keep_flag = c.take<uint8_t>(n);
  b.flag_by_index = c.take<uint8_t>(grouped_n);
  b.flag_by_rank = c.take<uint8_t>(grouped_n);
  b.temp = c.take<char>(static_cast<int64_t>(temp_bytes));
  b.temp_bytes = temp_bytes;
  b.total = c.used();
  return b;
}

// The largest temporary storage any of the CUB calls needs (they run one after another).
template <typename T>
cudaError_t cub_temp_bytes(int64_t n, bool batched, size_t* bytes) {
  using Key = typename RankKey<T>::type;
  const int count = static_cast<int>(n);
  size_t sort_bytes = 0, group_bytes = 0, select_bytes = 0;
  MDSSD_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<const Key*>(nullptr), static_cast<Key*>(nullptr),
      static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), count));
  if (batched) {
    MDSSD_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(
        nullptr, group_bytes, static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
        static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), count));
  }
  MDSSD_RETURN_IF_ERROR(cub::DeviceSelect::Flagged(
      nullptr, select_bytes, static_cast<const int64_t*>(nullptr),
      static_cast<const uint8_t*>(nullptr), static_cast<int64_t*>(nullptr),
      static_cast<int64_t*>(nullptr), count));
  size_t m = sort_bytes > group_bytes ? sort_bytes : group_bytes;
  *bytes = m > select_bytes ? m : select_bytes;
  return cudaSuccess;
}

template <typename T>
cudaError_t run(const T* boxes, const T* scores, const int64_t* idxs, int64_t n,
                double iou_threshold, void* workspace, int64_t workspace_bytes,
                int64_t* out_indices, int64_t* out_count, cudaStream_t stream) {
  using Key = typename RankKey<T>::type;
  const bool batched = idxs != nullptr;
  size_t temp_bytes = 0;
  MDSSD_RETURN_IF_ERROR(cub_temp_bytes<T>(n, batched, &temp_bytes));
  Buffers<T> b = carve<T>(workspace, n, batched, temp_bytes);
  if (b.total > static_cast<size_t>(workspace_bytes)) return cudaErrorInvalidValue;
  const int count = static_cast<int>(n);
  const int blocks = ceil_div(n, kThreads);
  const int64_t tiles = (n + kTile - 1) / kTile;

  // 1. Rank.
  rank_keys_kernel<T><<<blocks, kThreads, 0, stream>>>(scores, n, b.keys_in, b.iota);
  MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
  size_t temp = b.temp_bytes;
  MDSSD_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(b.temp, temp, b.keys_in, b.keys_out,
                                                        b.iota, b.order, count, 0,
                                                        static_cast<int>(sizeof(Key) * 8), stream));
  const int64_t* processing = b.order;
  const int64_t* groups = nullptr;
  if (batched) {
    gather_kernel<int64_t><<<blocks, kThreads, 0, stream>>>(idxs, b.order, n, b.group_in);
    MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
    temp = b.temp_bytes;
    MDSSD_RETURN_IF_ERROR(cub::DeviceRadixSort::SortPairs(b.temp, temp, b.group_in,
                                                          b.group_sorted, b.order, b.grouped,
                                                          count, 0, 64, stream));
    processing = b.grouped;
    groups = b.group_sorted;
  }

  // 2-4. Gather, mask, scan.
  gather_boxes_kernel<T><<<blocks, kThreads, 0, stream>>>(boxes, processing, n, b.boxes, b.areas);
  MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
  const dim3 mask_grid(static_cast<unsigned>(tiles), static_cast<unsigned>(tiles));
  nms_mask_kernel<T><<<mask_grid, kTile, 0, stream>>>(b.boxes, b.areas, groups, n, tiles,
                                                       static_cast<T>(iou_threshold), b.mask);
  MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
  const bool removed_in_shared = tiles <= kScanSharedWords;
  const size_t scan_shared = removed_in_shared ? static_cast<size_t>(tiles) * sizeof(u64) : 0;
  nms_scan_kernel<<<1, kScanThreads, scan_shared, stream>>>(b.mask, groups, n, tiles, b.removed,
                                                            removed_in_shared, b.keep_flag);
  MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));

  // 5. Kept indices in rank order.
  const uint8_t* flags = b.keep_flag;
  if (batched) {
    scatter_flags_kernel<<<blocks, kThreads, 0, stream>>>(b.keep_flag, b.grouped, n,
                                                          b.flag_by_index);
    MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
    gather_kernel<uint8_t><<<blocks, kThreads, 0, stream>>>(b.flag_by_index, b.order, n,
                                                            b.flag_by_rank);
    MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
    flags = b.flag_by_rank;
  }
  temp = b.temp_bytes;
  // Same iterator types as the size query in cub_temp_bytes (const input), so both are one
  // instantiation and the queried temp_bytes is the one this call needs.
  return cub::DeviceSelect::Flagged(b.temp, temp, static_cast<const int64_t*>(b.order), flags,
                                    out_indices, out_count, count, stream);
}

}  // namespace

int nms_workspace_bytes(int64_t n, bool is_double, bool batched, int64_t* bytes) {
  *bytes = 0;
  if (n < 1 || n > kNmsMaxBoxes) return static_cast<int>(cudaErrorInvalidValue);
  size_t temp = 0;
  cudaError_t err = is_double ? cub_temp_bytes<double>(n, batched, &temp)
                              : cub_temp_bytes<float>(n, batched, &temp);
  if (err != cudaSuccess) return static_cast<int>(err);
  const size_t total = is_double ? carve<double>(nullptr, n, batched, temp).total
                                 : carve<float>(nullptr, n, batched, temp).total;
  *bytes = static_cast<int64_t>(total);
  return 0;
}

int nms_launch(const void* boxes, const void* scores, const int64_t* idxs, int64_t n,
               bool is_double, double iou_threshold, void* workspace, int64_t workspace_bytes,
               int64_t* out_indices, int64_t* out_count, void* stream) {
  if (n < 1 || n > kNmsMaxBoxes) return static_cast<int>(cudaErrorInvalidValue);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const cudaError_t err =
      is_double ? run<double>(static_cast<const double*>(boxes), static_cast<const double*>(scores),
                              idxs, n, iou_threshold, workspace, workspace_bytes, out_indices,
                              out_count, s)
                : run<float>(static_cast<const float*>(boxes), static_cast<const float*>(scores),
                             idxs, n, iou_threshold, workspace, workspace_bytes, out_indices,
                             out_count, s);
  return static_cast<int>(err);
}

}  // namespace cuda
}  // namespace mdssd
