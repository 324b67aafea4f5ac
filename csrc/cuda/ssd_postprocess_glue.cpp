// CUDA registration of ssd_postprocess: argument checks shared with CPU (csrc/checks.h), outputs
// and workspace from the caching allocator (CUDA-graph safe), kernels in
// csrc/cuda/ssd_postprocess.cu. Fixed-shape outputs: no host synchronisation.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "checks.h"
#include "cuda/launch.h"
#include "cuda/ssd_postprocess_kernel.h"

namespace mdssd {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssd_postprocess_cuda(
    const at::Tensor& loc_in, const at::Tensor& conf_in, const at::Tensor& priors_in,
    double variance_xy, double variance_wh, double score_threshold, double iou_threshold,
    int64_t top_k_per_class, int64_t keep_top_k) {
  const char* op = "ssd_postprocess";
  check_ssd_postprocess_args(loc_in, conf_in, priors_in, variance_xy, variance_wh, score_threshold,
                             iou_threshold, top_k_per_class, keep_top_k);
  c10::DeviceGuard guard(loc_in.device());
  const auto loc = loc_in.contiguous(), conf = conf_in.contiguous(), priors = priors_in.contiguous();
  const int64_t batch = conf.size(0), num_priors = conf.size(1), num_classes = conf.size(2);

  auto out_boxes = at::empty({batch, keep_top_k, 4}, loc.options());
  auto out_scores = at::empty({batch, keep_top_k}, conf.options());
  auto out_labels = at::empty({batch, keep_top_k}, loc.options().dtype(at::kLong));
  auto out_counts = at::empty({batch}, loc.options().dtype(at::kLong));
  if (batch == 0) return {out_boxes, out_scores, out_labels, out_counts};

  const int64_t candidates = std::min(top_k_per_class, num_priors);
  TORCH_CHECK(candidates <= cuda::kPostprocessMaxCandidates, op,
              ": min(top_k_per_class, number of priors) must be at most ",
              cuda::kPostprocessMaxCandidates, " on CUDA, got ", candidates);
  TORCH_CHECK(cuda::ssd_postprocess_fits(batch, num_priors, num_classes, top_k_per_class), op,
              ": sizes too large for the CUDA kernels (loc ", shape_str(loc), ", conf ",
              shape_str(conf), ", top_k_per_class ", top_k_per_class,
              "): priors, classes, batch x classes and classes x min(top_k_per_class, priors) "
              "must each be below 2^31 (priors and classes x candidates: 2^31 - 256)");

  const bool is_double = loc.scalar_type() == at::kDouble;
  int64_t workspace_bytes = 0;
  cuda::check_launch(
      cuda::ssd_postprocess_workspace_bytes(batch, num_priors, num_classes, top_k_per_class,
                                            keep_top_k, is_double, &workspace_bytes),
      op);
  auto workspace = at::empty({workspace_bytes}, loc.options().dtype(at::kByte));
  cuda::check_launch(
      cuda::ssd_postprocess_launch(
          loc.const_data_ptr(), conf.const_data_ptr(), priors.const_data_ptr(), batch, num_priors,
          num_classes, is_double, variance_xy, variance_wh, score_threshold, iou_threshold,
          top_k_per_class, keep_top_k, workspace.data_ptr(), workspace_bytes,
          out_boxes.data_ptr(), out_scores.data_ptr(), out_labels.data_ptr<int64_t>(),
          out_counts.data_ptr<int64_t>(), cuda::current_stream()),
      op);
  return {out_boxes, out_scores, out_labels, out_counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, MDSSD_CUDA_DISPATCH_KEY, m) {
  m.impl("ssd_postprocess", &ssd_postprocess_cuda);
}

}  // namespace mdssd
