// nms and batched_nms on CPU (torchvision's semantics; rank = descending score, ties to the lower
// index). batched_nms groups the globally ranked boxes by idx and runs the groups (in parallel
// when they are worth it),
// then lists the kept boxes in global rank order: no coordinate-offset trick, so boxes of
// different idxs never interact whatever their coordinates.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "cpu/cpu_utils.h"
#include "cpu/greedy_nms.h"
#include "cpu/parallel.h"

namespace mdssd {
namespace {

at::Tensor indices_tensor(const std::vector<int64_t>& v) {
  auto out = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), out.data_ptr<int64_t>());
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in, double iou_threshold) {
  check_nms_args("nms", boxes_in, scores_in, iou_threshold);
  const auto boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  check_all_finite("nms", "boxes", boxes);
  check_all_finite("nms", "scores", scores);
  const int64_t n = boxes.size(0);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    const scalar_t* pb = boxes.data_ptr<scalar_t>();
    const auto order = rank_by_score(scores.data_ptr<scalar_t>(), n);
    const auto areas = box_areas(pb, n);
    greedy_nms(pb, areas.data(), order.data(), n, static_cast<scalar_t>(iou_threshold), keep);
  });
  return indices_tensor(keep);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes_in, const at::Tensor& scores_in,
                           const at::Tensor& idxs_in, double iou_threshold) {
  check_batched_nms_args(boxes_in, scores_in, idxs_in, iou_threshold);
  const auto boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const auto idxs = idxs_in.contiguous();
  check_all_finite("batched_nms", "boxes", boxes);
  check_all_finite("batched_nms", "scores", scores);
  const int64_t n = boxes.size(0);
  std::vector<int64_t> keep;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_cpu", [&] {
    const scalar_t* pb = boxes.data_ptr<scalar_t>();
    const int64_t* pi = idxs.data_ptr<int64_t>();
    const auto order = rank_by_score(scores.data_ptr<scalar_t>(), n);
    const auto areas = box_areas(pb, n);
    // rank[r] = position in `order`; group boxes by idx, each group in rank order.
    std::vector<int64_t> by_group(order);
    std::stable_sort(by_group.begin(), by_group.end(),
                     [pi](int64_t i, int64_t j) { return pi[i] < pi[j]; });
    std::vector<int64_t> group_start;
    for (int64_t r = 0; r < n; ++r) {
      if (r == 0 || pi[by_group[r]] != pi[by_group[r - 1]]) group_start.push_back(r);
    }
    group_start.push_back(n);
    const int64_t num_groups = static_cast<int64_t>(group_start.size()) - 1;
    std::vector<char> kept(n, 0);
    auto run_groups = [&](int64_t begin, int64_t end) {
      std::vector<int64_t> group_keep;
      for (int64_t gi = begin; gi < end; ++gi) {
        group_keep.clear();
        greedy_nms(pb, areas.data(), by_group.data() + group_start[gi],
                   group_start[gi + 1] - group_start[gi], static_cast<scalar_t>(iou_threshold),
                   group_keep);
        for (int64_t k : group_keep) kept[k] = 1;
      }
    };
    // Groups go parallel (one group per chunk) only when their estimated single-thread time
    // reaches two chunks (parallel.h): 1,000 boxes in 20 classes is ~50 us, far below.
    double estimate_ns = 0;
    for (int64_t gi = 0; gi < num_groups; ++gi) {
      estimate_ns += greedy_nms_cost_ns(group_start[gi + 1] - group_start[gi]);
    }
    if (estimate_ns >= 2 * kChunkNs) {
      parallel_for(0, num_groups, 1, run_groups);
    } else {
      run_groups(0, num_groups);
    }
    for (int64_t r = 0; r < n; ++r) {
      if (kept[order[r]]) keep.push_back(order[r]);
    }
  });
  return indices_tensor(keep);
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace mdssd
