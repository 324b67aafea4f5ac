// CUDA registration of box_iou: argument checks (shared with the CPU kernel), output allocation
// and launch on the current stream. Values are not checked on CUDA (see mdssd/ops.py).
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/box_iou_kernel.h"
#include "cuda/launch.h"

namespace mdssd {
namespace {

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);
  const c10::DeviceGuard guard(boxes1.device());
  const bool batched = boxes1.dim() == 3;
  const auto a = (batched ? boxes1 : boxes1.unsqueeze(0)).contiguous();
  const auto b = (batched ? boxes2 : boxes2.unsqueeze(0)).contiguous();
  const int64_t batch = a.size(0), n = a.size(1), m = b.size(1);
  auto out = at::empty({batch, n, m}, a.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "box_iou_cuda", [&] {
      cuda::check_launch(cuda::launch_box_iou(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                              out.data_ptr<scalar_t>(), batch, n, m,
                                              cuda::current_stream()),
                         "box_iou");
    });
  }
  return batched ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, MDSSD_CUDA_DISPATCH_KEY, m) {
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace mdssd
