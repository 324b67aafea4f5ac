// Launchers of the nms / batched_nms CUDA kernels (csrc/cuda/nms.cu), called by the torch glue
// (csrc/cuda/nms_glue.cpp). Standard types only: pointers are device pointers, `stream` is a
// cudaStream_t, every function returns a cudaError_t as int (0 on success).
#pragma once

#include <cstdint>

namespace mdssd {
namespace cuda {

// Boxes per tile of the IoU bit mask (one 64-bit word holds a tile row). The mask kernel's grid
// is tiles x tiles with the tile count in gridDim.y, so at most 65535 tiles.
constexpr int64_t kNmsTile = 64;
constexpr int64_t kNmsMaxBoxes = kNmsTile * 65535;

// Device workspace, in bytes, that nms_launch needs for `n` boxes (n in [1, kNmsMaxBoxes]).
// Dominated by the upper-triangular IoU bit mask: 64 * T * (T + 1) / 2 words for T = ceil(n/64)
// tiles, i.e. about n^2 / 16 bytes (625 MB for 100k boxes).
int nms_workspace_bytes(int64_t n, bool is_double, bool batched, int64_t* bytes);

// Greedy NMS of `n` xyxy boxes [n,4] with scores [n] (float32, or float64 when is_double; both
// contiguous). `idxs` (int64 [n]) is null for nms; for batched_nms boxes of different idxs never
// suppress each other. Writes the kept indices in rank order (descending score, ties to the lower
// index) to out_indices[0 .. *out_count) and their number to *out_count (device memory).
int nms_launch(const void* boxes, const void* scores, const int64_t* idxs, int64_t n,
               bool is_double, double iou_threshold, void* workspace, int64_t workspace_bytes,
               int64_t* out_indices, int64_t* out_count, void* stream);

}  // namespace cuda
}  // namespace mdssd
