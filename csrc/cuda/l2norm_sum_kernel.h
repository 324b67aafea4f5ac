// Launchers of the l2norm_sum CUDA kernels (csrc/cuda/l2norm_sum.cu). Plain C++ types only: the
// torch glue (l2norm_sum_glue.cpp) includes this without any CUDA header. Tensors cross as
// untyped pointers plus an element type; half and bfloat16 are IEEE binary16 / bfloat16 bits.
#pragma once

#include <cstdint>

namespace mdssd {
namespace cuda {

enum class L2NormDType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

// [batch, channels, pixels = H * W], contiguous NCHW or (channels_last) NHWC.
struct L2NormShape {
  int64_t batch;
  int64_t channels;
  int64_t pixels;
  bool channels_last;
};

// out = scale_a * a / max(||a||, eps) + scale_b * b / max(||b||, eps), norms over channels per
// pixel. a, b, out in `dtype`; scales [C] are float32 when scales_float32, else `dtype`.
// Launches nothing when the tensors are empty. Returns the launch's cudaError_t as int.
int launch_l2norm_sum_forward(L2NormDType dtype, const void* a, const void* b,
                              const void* scale_a, const void* scale_b, bool scales_float32,
                              double eps, void* out, const L2NormShape& shape, void* stream);

// Scratch bytes launch_l2norm_sum_backward needs (per-block partial sums of the scale gradients).
int64_t l2norm_sum_backward_workspace_bytes(L2NormDType dtype, const L2NormShape& shape);

// Gradients of the forward w.r.t. a, b (in `dtype`, the layout of a) and the scales (in the
// scales' dtype, [C]); the scale gradients are reduced deterministically (fixed order, no
// atomics). Launches nothing when C == 0; when the maps are empty the scale gradients are set
// to 0. Returns the first failing launch's cudaError_t as int.
int launch_l2norm_sum_backward(L2NormDType dtype, const void* grad_out, const void* a,
                               const void* b, const void* scale_a, const void* scale_b,
                               bool scales_float32, double eps, void* grad_a, void* grad_b,
                               void* grad_scale_a, void* grad_scale_b, void* workspace,
                               const L2NormShape& shape, void* stream);

}  // namespace cuda
}  // namespace mdssd
