// CUDA registration of match_encode: argument checks (shared with the CPU kernel), outputs and
// workspace from torch's caching allocator (so the op is CUDA-graph capturable), two launches on
// the current stream, no host synchronisation. gt_counts are clamped to [0, G] on the device
// instead of being checked (see mdssd/ops.py).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/launch.h"
#include "cuda/match_encode_kernel.h"

namespace mdssd {
namespace {

std::tuple<at::Tensor, at::Tensor> match_encode_cuda(const at::Tensor& priors_in,
                                                     const at::Tensor& gt_boxes_in,
                                                     const at::Tensor& gt_labels_in,
                                                     const at::Tensor& gt_counts_in,
                                                     double iou_threshold, double variance_xy,
                                                     double variance_wh) {
  const char* op = "match_encode";
  check_match_encode_args(priors_in, gt_boxes_in, gt_labels_in, gt_counts_in, iou_threshold,
                          variance_xy, variance_wh);
  const c10::DeviceGuard guard(priors_in.device());
  const auto priors = priors_in.contiguous();
  const auto gt_boxes = gt_boxes_in.contiguous();
  const auto gt_labels = gt_labels_in.contiguous();
  const auto gt_counts = gt_counts_in.contiguous();
  const int64_t batch = gt_boxes.size(0), num_gt = gt_boxes.size(1), num_priors = priors.size(0);
  TORCH_CHECK(num_priors <= cuda::match_encode_max_priors(), op, ": at most ",
              cuda::match_encode_max_priors(), " priors on CUDA, got ", num_priors);
  TORCH_CHECK(num_gt <= INT32_MAX && batch <= INT32_MAX, op,
              ": batch and ground-truth slots must each be < 2^31 on CUDA, got ",
              shape_str(gt_boxes));
  // Every element of both outputs is written by the kernels (background rows with zeros).
  auto loc = at::empty({batch, num_priors, 4}, priors.options());
  auto labels = at::empty({batch, num_priors}, gt_labels.options());
  if (loc.numel() == 0) return {loc, labels};
  const auto workspace = at::empty(
      {cuda::match_encode_workspace_bytes(batch, num_priors, num_gt, priors.element_size())},
      priors.options().dtype(at::kByte));

  AT_DISPATCH_FLOATING_TYPES(priors.scalar_type(), "match_encode_cuda", [&] {
    cuda::check_launch(
        cuda::launch_match_encode(priors.data_ptr<scalar_t>(), gt_boxes.data_ptr<scalar_t>(),
                                  gt_labels.data_ptr<int64_t>(), gt_counts.data_ptr<int64_t>(),
                                  batch, num_priors, num_gt, iou_threshold, variance_xy,
                                  variance_wh, loc.data_ptr<scalar_t>(),
                                  labels.data_ptr<int64_t>(), workspace.data_ptr(),
                                  cuda::current_stream()),
        op);
  });
  return {loc, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, MDSSD_CUDA_DISPATCH_KEY, m) {
  m.impl("match_encode", &match_encode_cuda);
}

}  // namespace mdssd
