// CUDA registrations of nms and batched_nms: argument checks shared with CPU (csrc/checks.h),
// workspace and outputs from the caching allocator, kernels in csrc/cuda/nms.cu. The kept count
// depends on the data, so this is the one place where the host waits for the device: it reads
// back that single int64 to size the result.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/launch.h"
#include "cuda/nms_kernel.h"

namespace mdssd {
namespace {

at::Tensor run_nms(const char* op, const at::Tensor& boxes_in, const at::Tensor& scores_in,
                   const at::Tensor* idxs_in, double iou_threshold) {
  c10::DeviceGuard guard(boxes_in.device());
  const int64_t n = boxes_in.size(0);
  const auto index_options = boxes_in.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, index_options);
  TORCH_CHECK(n <= cuda::kNmsMaxBoxes, op, ": at most ", cuda::kNmsMaxBoxes,
              " boxes on CUDA (the IoU mask grid has at most 65535 tiles of 64), got ", n);
  const auto boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  at::Tensor idxs;
  if (idxs_in != nullptr) idxs = idxs_in->contiguous();
  const bool is_double = boxes.scalar_type() == at::kDouble;
  const bool batched = idxs_in != nullptr;

  int64_t workspace_bytes = 0;
  cuda::check_launch(cuda::nms_workspace_bytes(n, is_double, batched, &workspace_bytes), op);
  at::Tensor workspace;
  try {
    workspace = at::empty({workspace_bytes}, boxes.options().dtype(at::kByte));
  } catch (const c10::OutOfMemoryError& e) {
    // Name the cause: the workspace grows as n^2 (625 MB at 100k boxes, ~78 GB at 1.1M).
    TORCH_CHECK_WITH(OutOfMemoryError, false, op, ": ", n, " boxes need ", workspace_bytes,
                     " bytes of GPU workspace (the IoU bit mask takes about n^2/16 bytes): ",
                     e.what());
  }
  auto out = at::empty({n}, index_options);
  auto count = at::empty({1}, index_options);
  cuda::check_launch(
      cuda::nms_launch(boxes.const_data_ptr(), scores.const_data_ptr(),
                       batched ? idxs.const_data_ptr<int64_t>() : nullptr, n, is_double,
                       iou_threshold, workspace.data_ptr(), workspace_bytes,
                       out.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
                       cuda::current_stream()),
      op);
  const int64_t kept = count.item<int64_t>();  // the op's only host synchronisation
  return out.narrow(0, 0, kept);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args("nms", boxes, scores, iou_threshold);
  return run_nms("nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  check_batched_nms_args(boxes, scores, idxs, iou_threshold);
  return run_nms("batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, MDSSD_CUDA_DISPATCH_KEY, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace mdssd
