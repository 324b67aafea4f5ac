// Launchers of the ssd_postprocess CUDA kernels (csrc/cuda/ssd_postprocess.cu), called by the
// torch glue (csrc/cuda/ssd_postprocess_glue.cpp). Standard types only: pointers are device
// pointers, `stream` is a cudaStream_t, every function returns a cudaError_t as int (0 on
// success). Nothing here synchronises the host, allocates or changes device state, so a launch
// can be captured in a CUDA graph.
#pragma once

#include <cstdint>

namespace mdssd {
namespace cuda {

// Device workspace, in bytes, for ssd_postprocess_launch with these sizes (batch >= 1,
// num_classes >= 1, top_k_per_class >= 1, keep_top_k >= 1). Holds the class-major scores
// [B, K-1, P], the decoded boxes [B, P, 4], the per-(image, class) kept lists, and the per-block
// scratch of the selection/NMS blocks when it does not fit in shared memory (large top_k).
// Returns cudaErrorInvalidValue when a size exceeds the kernels' 32-bit per-block indexing
// (see ssd_postprocess_fits).
int ssd_postprocess_workspace_bytes(int64_t batch, int64_t num_priors, int64_t num_classes,
                                    int64_t top_k_per_class, int64_t keep_top_k, bool is_double,
                                    int64_t* bytes);

// Candidates per (image, class), min(top_k_per_class, num_priors), at most this many on CUDA:
// their IoU mask (k * k / 8 bytes per block) is indexed with 32-bit ints, and beyond it the
// per-block scratch would not fit in any GPU's memory for a realistic batch anyway.
constexpr int64_t kPostprocessMaxCandidates = 65536;

// Whether the sizes are within the kernels' limits: num_classes, batch and
// batch * (num_classes - 1) at most 2^31 - 1; num_priors and (num_classes - 1) *
// min(top_k, num_priors) at most 2^31 - 1 - 256 (the selection loops step an int by 256 threads);
// min(top_k, num_priors) at most kPostprocessMaxCandidates.
bool ssd_postprocess_fits(int64_t batch, int64_t num_priors, int64_t num_classes,
                          int64_t top_k_per_class);

// loc [B,P,4], conf [B,P,K], priors [P,4] (contiguous; float32, or float64 when is_double).
// Writes every element of out_boxes [B,keep_top_k,4], out_scores [B,keep_top_k] (the input
// dtype), out_labels [B,keep_top_k] and out_counts [B] (int64), padding included.
int ssd_postprocess_launch(const void* loc, const void* conf, const void* priors, int64_t batch,
                           int64_t num_priors, int64_t num_classes, bool is_double,
                           double variance_xy, double variance_wh, double score_threshold,
                           double iou_threshold, int64_t top_k_per_class, int64_t keep_top_k,
                           void* workspace, int64_t workspace_bytes, void* out_boxes,
                           void* out_scores, int64_t* out_labels, int64_t* out_counts,
                           void* stream);

}  // namespace cuda
}  // namespace mdssd
