// Launchers of the box_iou CUDA kernels (csrc/cuda/box_iou.cu). Plain C++ types only: the torch
// glue (box_iou_glue.cpp) includes this without any CUDA header.
#pragma once

#include <cstdint>

namespace mdssd {
namespace cuda {

// out[bi, i, j] = IoU(boxes1[bi, i], boxes2[bi, j]) for bi < batch, i < n, j < m; all three
// arrays contiguous (boxes as 4 consecutive values). Launches nothing when batch * n * m == 0.
// `stream` is a cudaStream_t; returns the launch's cudaError_t as int (0 = success).
int launch_box_iou(const float* boxes1, const float* boxes2, float* out, int64_t batch, int64_t n,
                   int64_t m, void* stream);
int launch_box_iou(const double* boxes1, const double* boxes2, double* out, int64_t batch,
                   int64_t n, int64_t m, void* stream);

}  // namespace cuda
}  // namespace mdssd
