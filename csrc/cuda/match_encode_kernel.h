// Launchers of the match_encode CUDA kernels (csrc/cuda/match_encode.cu). Plain C++ types only:
// the torch glue (match_encode_glue.cpp) includes this without any CUDA header.
#pragma once

#include <cstdint>

namespace mdssd {
namespace cuda {

// Bytes of scratch memory the launch needs for `batch` images, `num_priors` priors and
// `num_gt` ground-truth slots with elements of `elem_size` bytes (4 or 8); the caller allocates
// it on the device (e.g. from torch's caching allocator) and passes it as `workspace`.
int64_t match_encode_workspace_bytes(int64_t batch, int64_t num_priors, int64_t num_gt,
                                     int64_t elem_size);

// Largest prior count the kernels index (prior indices are 32-bit).
int64_t match_encode_max_priors();

// SSD matching + encoding of a whole batch in two launches (see match_encode.cu). All arrays
// contiguous: priors [P,4] cxcywh, gt_boxes [B,G,4] xyxy, gt_labels [B,G], gt_counts [B] (clamped
// to [0, G] on the device), loc [B,P,4] and labels [B,P] fully written (background rows are 0).
// Launches nothing when B * P == 0. Returns the first failing launch's cudaError_t as int.
int launch_match_encode(const float* priors, const float* gt_boxes, const int64_t* gt_labels,
                        const int64_t* gt_counts, int64_t batch, int64_t num_priors,
                        int64_t num_gt, double iou_threshold, double variance_xy,
                        double variance_wh, float* loc, int64_t* labels, void* workspace,
                        void* stream);
int launch_match_encode(const double* priors, const double* gt_boxes, const int64_t* gt_labels,
                        const int64_t* gt_counts, int64_t batch, int64_t num_priors,
                        int64_t num_gt, double iou_threshold, double variance_xy,
                        double variance_wh, double* loc, int64_t* labels, void* workspace,
                        void* stream);

}  // namespace cuda
}  // namespace mdssd
