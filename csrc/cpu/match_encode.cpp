// match_encode on CPU: SSD prior matching + box encoding for a batch, parallel over images when
// that pays (parallel.h).
// Per image: one pass over (prior, real ground truth) pairs finds both each prior's best ground
// truth and each ground truth's best prior (match_encode_kernels.inc: vectorised over priors,
// exact tie rules), then the forced matches and the encoding. Rule and tie-breaks:
// mdssd/reference.py (match_encode).
//
// The pair loop is compiled for SSE2, AVX2 and AVX-512 (cpu/isa.h, as l2norm_sum); the IoUs and
// so the matches are the same for all three.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "cpu/cpu_utils.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"

namespace mdssd {
namespace {

// Priors in xyxy form with their areas, as a structure of arrays (for the vectorised loop).
template <typename T>
struct PriorSoA {
  const T *x1, *y1, *x2, *y2, *area;
};

namespace sse2 {
#include "cpu/match_encode_kernels.inc"
}  // namespace sse2

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "cpu/match_encode_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")
namespace avx512 {
#include "cpu/match_encode_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#define MDSSD_MATCH_WIDE 1
#endif

template <typename T>
void best_matches(const T* gt, const T* gt_area, int64_t n, const PriorSoA<T>& pr, int64_t p0,
                  int64_t p1, T* best_gt_iou, int32_t* best_gt, T* best_prior_iou, int64_t* best_prior) {
#ifdef MDSSD_MATCH_WIDE
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return avx512::best_matches(gt, gt_area, n, pr, p0,
                                  p1, best_gt_iou, best_gt, best_prior_iou, best_prior);
    case Isa::kAvx2:
      return avx2::best_matches(gt, gt_area, n, pr, p0,
                                p1, best_gt_iou, best_gt, best_prior_iou, best_prior);
    default: break;
  }
#endif
  sse2::best_matches(gt, gt_area, n, pr, p0, p1, best_gt_iou, best_gt, best_prior_iou, best_prior);
}

// Plain loops, not torch ops: each of those is an OpenMP region on large inputs (parallel.h).
void check_values(const at::Tensor& priors, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                  const at::Tensor& gt_counts) {
  const char* op = "match_encode";
  check_all_finite(op, "priors", priors);
  const int64_t num_gt = gt_boxes.size(1);
  AT_DISPATCH_FLOATING_TYPES(priors.scalar_type(), "match_encode_check", [&] {
    const scalar_t* p = priors.data_ptr<scalar_t>();
    bool positive = true;
    for (int64_t i = 0; i < priors.size(0); ++i) positive &= p[4 * i + 2] > 0 && p[4 * i + 3] > 0;
    TORCH_CHECK(positive, op, ": priors must have positive width and height");
  });
  const int64_t* counts = gt_counts.data_ptr<int64_t>();
  const int64_t* labels = gt_labels.data_ptr<int64_t>();
  for (int64_t b = 0; b < gt_counts.size(0); ++b) {
    TORCH_CHECK(counts[b] >= 0 && counts[b] <= num_gt, op, ": gt_counts[", b, "] = ", counts[b],
                " is outside [0, G = ", num_gt, "]");
    if (counts[b] == 0) continue;
    bool finite = true;
    AT_DISPATCH_FLOATING_TYPES(gt_boxes.scalar_type(), "match_encode_check", [&] {
      finite = all_finite(gt_boxes.data_ptr<scalar_t>() + 4 * b * num_gt, 4 * counts[b]);
    });
    TORCH_CHECK(finite, op, ": gt_boxes of image ", b, " contain NaN or infinite values");
    bool real = true;
    for (int64_t g = 0; g < counts[b]; ++g) real &= labels[b * num_gt + g] >= 1;
    TORCH_CHECK(real, op, ": gt_labels of image ", b,
                " contain a label < 1 (0 is background; real ground truths need labels >= 1)");
  }
}

std::tuple<at::Tensor, at::Tensor> match_encode_cpu(const at::Tensor& priors_in,
                                                    const at::Tensor& gt_boxes_in,
                                                    const at::Tensor& gt_labels_in,
                                                    const at::Tensor& gt_counts_in,
                                                    double iou_threshold, double variance_xy,
                                                    double variance_wh) {
  check_match_encode_args(priors_in, gt_boxes_in, gt_labels_in, gt_counts_in, iou_threshold,
                          variance_xy, variance_wh);
  const auto priors = priors_in.contiguous();
  const auto gt_boxes = gt_boxes_in.contiguous();
  const auto gt_labels = gt_labels_in.contiguous();
  const auto gt_counts = gt_counts_in.contiguous();
  check_values(priors, gt_boxes, gt_labels, gt_counts);

  const int64_t batch = gt_boxes.size(0), num_gt = gt_boxes.size(1), num_priors = priors.size(0);
  TORCH_CHECK(num_priors <= std::numeric_limits<int32_t>::max() && num_gt <= std::numeric_limits<int32_t>::max(),
              "match_encode: at most 2^31 - 1 priors and ground truths per image on CPU, got ",
              num_priors, " priors and ", num_gt, " ground truths");
  // Zeroed per image inside the loop below: at::zeros would be one more OpenMP region.
  auto loc = at::empty({batch, num_priors, 4}, priors.options());
  auto labels = at::empty({batch, num_priors}, gt_labels.options());
  if (loc.numel() == 0) return {loc, labels};

  AT_DISPATCH_FLOATING_TYPES(priors.scalar_type(), "match_encode_cpu", [&] {
    const scalar_t threshold = static_cast<scalar_t>(iou_threshold);
    const scalar_t vxy = static_cast<scalar_t>(variance_xy);
    const scalar_t vwh = static_cast<scalar_t>(variance_wh);
    const scalar_t* pr = priors.data_ptr<scalar_t>();
    // Priors in xyxy form with their areas, shared by every image, as a structure of arrays.
    std::vector<scalar_t> soa(5 * num_priors);
    for (int64_t p = 0; p < num_priors; ++p) {
      scalar_t q[4];
      prior_to_xyxy(pr + 4 * p, q);
      for (int k = 0; k < 4; ++k) soa[k * num_priors + p] = q[k];
      soa[4 * num_priors + p] = box_area(q[0], q[1], q[2], q[3]);
    }
    const PriorSoA<scalar_t> pbox{soa.data(), soa.data() + num_priors, soa.data() + 2 * num_priors,
                                  soa.data() + 3 * num_priors, soa.data() + 4 * num_priors};
    const scalar_t* gtb = gt_boxes.data_ptr<scalar_t>();
    const int64_t* gtl = gt_labels.data_ptr<int64_t>();
    const int64_t* counts = gt_counts.data_ptr<int64_t>();
    scalar_t* out_loc = loc.data_ptr<scalar_t>();
    int64_t* out_labels = labels.data_ptr<int64_t>();

    // Images go parallel from two chunks (parallel.h), at the ns per (prior, ground truth) pair
    // measured by python -m benchmarks.grains (vectorised loop, AVX-512).
    constexpr double kNsPerPair = 0.5;
    int64_t total_gt = 0;
    for (int64_t b = 0; b < batch; ++b) total_gt += counts[b];
    const double pairs_per_image =
        static_cast<double>(num_priors) * std::max<double>(1.0, double(total_gt) / double(batch));
    parallel_for(0, batch, grain_for(kNsPerPair * pairs_per_image), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> best_gt_iou(num_priors), gt_area(num_gt), best_prior_iou(num_gt);
      std::vector<int32_t> best_gt(num_priors);
      std::vector<int64_t> best_prior(num_gt);
      for (int64_t b = begin; b < end; ++b) {
        std::fill(out_loc + 4 * b * num_priors, out_loc + 4 * (b + 1) * num_priors, scalar_t(0));
        std::fill(out_labels + b * num_priors, out_labels + (b + 1) * num_priors, int64_t(0));
        const int64_t n = counts[b];
        if (n == 0) continue;
        const scalar_t* gt = gtb + 4 * b * num_gt;
        for (int64_t g = 0; g < n; ++g) {
          const scalar_t* q = gt + 4 * g;
          gt_area[g] = box_area(q[0], q[1], q[2], q[3]);
          best_prior_iou[g] = 0;  // only a positive IoU may force a match
          best_prior[g] = -1;
        }
        best_matches(gt, gt_area.data(), n, pbox, 0, num_priors, best_gt_iou.data(), best_gt.data(),
                     best_prior_iou.data(), best_prior.data());
        // Forced matches in increasing gt order: a later (higher) gt overwrites an earlier one.
        std::vector<char> forced(num_priors, 0);
        for (int64_t g = 0; g < n; ++g) {
          if (best_prior[g] < 0) continue;
          best_gt[best_prior[g]] = static_cast<int32_t>(g);
          forced[best_prior[g]] = 1;
        }
        scalar_t* lb = out_loc + 4 * b * num_priors;
        int64_t* lab = out_labels + b * num_priors;
        for (int64_t p = 0; p < num_priors; ++p) {
          if (!forced[p] && !(best_gt_iou[p] >= threshold)) continue;
          const int64_t g = best_gt[p];
          lab[p] = gtl[b * num_gt + g];
          encode_box(gt + 4 * g, pr + 4 * p, vxy, vwh, lb + 4 * p);
        }
      }
    });
  });
  return {loc, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, CPU, m) {
  m.impl("match_encode", &match_encode_cpu);
}

}  // namespace mdssd
