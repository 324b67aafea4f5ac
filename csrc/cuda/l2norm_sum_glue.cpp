// CUDA registration of l2norm_sum and l2norm_sum_backward: the CPU kernel's argument checks and
// layout rule (channels_last iff `a` is channels_last and not also contiguous; other strides are
// made contiguous), outputs and workspace from torch's caching allocator, launches on the
// current stream, no host synchronisation.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/l2norm_sum_kernel.h"
#include "cuda/launch.h"

namespace mdssd {
namespace {

cuda::L2NormDType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return cuda::L2NormDType::kFloat16;
    case at::kBFloat16:
      return cuda::L2NormDType::kBFloat16;
    case at::kFloat:
      return cuda::L2NormDType::kFloat32;
    case at::kDouble:
      return cuda::L2NormDType::kFloat64;
    default:
      TORCH_CHECK(false, "l2norm_sum: unsupported dtype ", t.scalar_type(), " on CUDA");
  }
}

cuda::L2NormShape shape_of(const at::Tensor& a, bool channels_last) {
  return {a.size(0), a.size(1), a.size(2) * a.size(3), channels_last};
}

at::Tensor forward_cuda(const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& scale_a_in,
                        const at::Tensor& scale_b_in, double eps) {
  const char* op = "l2norm_sum";
  check_l2norm_sum_args(op, a_in, b_in, scale_a_in, scale_b_in, eps);
  const c10::DeviceGuard guard(a_in.device());
  const auto fmt = l2norm_sum_memory_format(a_in);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const auto a = a_in.contiguous(fmt), b = b_in.contiguous(fmt);
  const auto scale_a = scale_a_in.contiguous(), scale_b = scale_b_in.contiguous();
  auto out = at::empty_like(a, fmt);
  if (a.numel() == 0) return out;
  cuda::check_launch(
      cuda::launch_l2norm_sum_forward(dtype_of(a), a.data_ptr(), b.data_ptr(), scale_a.data_ptr(),
                                      scale_b.data_ptr(), scale_a.scalar_type() == at::kFloat,
                                      eps, out.data_ptr(), shape_of(a, cl),
                                      cuda::current_stream()),
      op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& a_in, const at::Tensor& b_in,
    const at::Tensor& scale_a_in, const at::Tensor& scale_b_in, double eps) {
  check_l2norm_sum_backward_args(grad_in, a_in, b_in, scale_a_in, scale_b_in, eps);
  const c10::DeviceGuard guard(a_in.device());
  const auto fmt = l2norm_sum_memory_format(a_in);
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const auto a = a_in.contiguous(fmt), b = b_in.contiguous(fmt), g = grad_in.contiguous(fmt);
  const auto scale_a = scale_a_in.contiguous(), scale_b = scale_b_in.contiguous();
  auto grad_a = at::empty_like(a, fmt), grad_b = at::empty_like(b, fmt);
  auto grad_sa = at::empty({a.size(1)}, scale_a.options());
  auto grad_sb = at::empty({a.size(1)}, scale_b.options());
  const auto shape = shape_of(a, cl);
  const auto dtype = dtype_of(a);
  const auto workspace = at::empty({cuda::l2norm_sum_backward_workspace_bytes(dtype, shape)},
                                   a.options().dtype(at::kByte));
  cuda::check_launch(
      cuda::launch_l2norm_sum_backward(
          dtype, g.data_ptr(), a.data_ptr(), b.data_ptr(), scale_a.data_ptr(), scale_b.data_ptr(),
          scale_a.scalar_type() == at::kFloat, eps, grad_a.data_ptr(), grad_b.data_ptr(),
          grad_sa.data_ptr(), grad_sb.data_ptr(), workspace.data_ptr(), shape,
          cuda::current_stream()),
      "l2norm_sum_backward");
  return {grad_a, grad_b, grad_sa, grad_sb};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, MDSSD_CUDA_DISPATCH_KEY, m) {
  m.impl("l2norm_sum", &forward_cuda);
  m.impl("l2norm_sum_backward", &backward_cuda);
}

}  // namespace mdssd
