// ssd_postprocess on CPU: softmax, decode + clip, per-class threshold / top-k / NMS, keep-top-k
// per image, fixed-shape outputs. Three stages, each parallel when it pays (parallel.h):
//   1. per (image, prior): softmax over K classes and decode (one read of loc and conf);
//   2. per (image, class): candidates above the threshold, the best top_k_per_class, greedy NMS;
//   3. per image: merge the classes' kept lists, best keep_top_k, write the padded outputs.
// Order and tie-breaks: mdssd/reference.py (ssd_postprocess).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "cpu/cpu_utils.h"
#include "cpu/greedy_nms.h"
#include "cpu/parallel.h"

namespace mdssd {
namespace {

template <typename T>
struct Detection {
  T score;
  int64_t label;
  int64_t prior;
};

// Descending score; ties to the lower class, then the lower prior.
template <typename T>
bool better(const Detection<T>& x, const Detection<T>& y) {
  if (x.score != y.score) return x.score > y.score;
  if (x.label != y.label) return x.label < y.label;
  return x.prior < y.prior;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssd_postprocess_cpu(
    const at::Tensor& loc_in, const at::Tensor& conf_in, const at::Tensor& priors_in,
    double variance_xy, double variance_wh, double score_threshold, double iou_threshold,
    int64_t top_k_per_class, int64_t keep_top_k) {
  const char* op = "ssd_postprocess";
  check_ssd_postprocess_args(loc_in, conf_in, priors_in, variance_xy, variance_wh, score_threshold,
                             iou_threshold, top_k_per_class, keep_top_k);
  const auto loc = loc_in.contiguous(), conf = conf_in.contiguous(), priors = priors_in.contiguous();
  check_all_finite(op, "loc", loc);
  check_all_finite(op, "conf", conf);
  check_all_finite(op, "priors", priors);
  const int64_t batch = conf.size(0), num_priors = conf.size(1), num_classes = conf.size(2);

  auto out_boxes = at::zeros({batch, keep_top_k, 4}, loc.options());
  auto out_scores = at::zeros({batch, keep_top_k}, conf.options());
  auto out_labels = at::full({batch, keep_top_k}, -1, loc.options().dtype(at::kLong));
  auto out_counts = at::zeros({batch}, loc.options().dtype(at::kLong));
  if (batch == 0) return {out_boxes, out_scores, out_labels, out_counts};

  AT_DISPATCH_FLOATING_TYPES(loc.scalar_type(), "ssd_postprocess_cpu", [&] {
    using T = scalar_t;
    const T vxy = static_cast<T>(variance_xy), vwh = static_cast<T>(variance_wh);
    const T score_thr = static_cast<T>(score_threshold), iou_thr = static_cast<T>(iou_threshold);
    const T* pl = loc.data_ptr<T>();
    const T* pc = conf.data_ptr<T>();
    const T* pp = priors.data_ptr<T>();

    // Stage 1: scores [B, K, P] (class-major so stage 2 scans one class contiguously), boxes.
    std::vector<T> scores(batch * num_classes * num_priors), boxes(batch * num_priors * 4);
    std::vector<T> areas(batch * num_priors);
    // Each stage goes parallel from two chunks of work (parallel.h); costs measured by
    // python -m benchmarks.grains. Stage 1: ns per (prior, class).
    constexpr double kStage1NsPerScore = 29.5;
    const int64_t stage1_grain = grain_for(kStage1NsPerScore * static_cast<double>(num_classes));
    parallel_for(0, batch * num_priors, stage1_grain, [&](int64_t begin, int64_t end) {
      std::vector<double> e(num_classes);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / num_priors, p = row % num_priors;
        // Softmax in float64, rounded to T: the correctly rounded probability, identical on
        // every backend (see exp_rounded in box_math.h).
        const T* logits = pc + row * num_classes;
        double max_logit = logits[0];
        for (int64_t k = 1; k < num_classes; ++k) max_logit = std::max<double>(max_logit, logits[k]);
        double sum = 0;
        for (int64_t k = 0; k < num_classes; ++k) {
          e[k] = std::exp(double(logits[k]) - max_logit);
          sum += e[k];
        }
        T* s = scores.data() + b * num_classes * num_priors + p;
        for (int64_t k = 0; k < num_classes; ++k) s[k * num_priors] = static_cast<T>(e[k] / sum);
        T* box = boxes.data() + 4 * row;
        decode_box(pl + 4 * row, pp + 4 * p, vxy, vwh, box);
        areas[row] = box_area(box[0], box[1], box[2], box[3]);
      }
    });

    // Stage 2: per (image, foreground class).
    const int64_t num_fg = num_classes - 1;
    std::vector<std::vector<Detection<T>>> kept(batch * num_fg);
    // Stage 2: a (image, class) task scans every prior, sorts and suppresses its candidates:
    // ns per prior, measured with the benchmark's ~4% candidates per class.
    constexpr double kStage2NsPerPrior = 43.0;
    const int64_t stage2_grain = grain_for(kStage2NsPerPrior * static_cast<double>(num_priors));
    parallel_for(0, batch * num_fg, stage2_grain, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> candidates, keep;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / num_fg, c = task % num_fg + 1;
        const T* s = scores.data() + (b * num_classes + c) * num_priors;
        candidates.clear();
        for (int64_t p = 0; p < num_priors; ++p) {
          if (s[p] > score_thr) candidates.push_back(p);
        }
        auto by_rank = [s](int64_t i, int64_t j) { return s[i] > s[j] || (s[i] == s[j] && i < j); };
        const int64_t top = std::min<int64_t>(top_k_per_class, candidates.size());
        std::partial_sort(candidates.begin(), candidates.begin() + top, candidates.end(), by_rank);
        keep.clear();
        greedy_nms(boxes.data() + 4 * b * num_priors, areas.data() + b * num_priors,
                   candidates.data(), top, iou_thr, keep);
        auto& out = kept[task];
        out.clear();
        for (int64_t p : keep) out.push_back({s[p], c, p});
      }
    });

    // Stage 3: per image, the best keep_top_k over all classes.
    T* ob = out_boxes.data_ptr<T>();
    T* os = out_scores.data_ptr<T>();
    int64_t* olab = out_labels.data_ptr<int64_t>();
    int64_t* ocount = out_counts.data_ptr<int64_t>();
    // Stage 3: merging and partially sorting the kept detections, whose counts are known here.
    // ~20 ns per detection is an estimate (benchmarks.grains does not isolate this stage); at
    // the benchmark's sizes an image holds ~5k detections, a chunk of its own either way.
    constexpr double kStage3NsPerDetection = 20.0;
    int64_t detections = 0;
    for (const auto& k : kept) detections += static_cast<int64_t>(k.size());
    const int64_t stage3_grain =
        grain_for(kStage3NsPerDetection * std::max<double>(1.0, double(detections) / double(batch)));
    parallel_for(0, batch, stage3_grain, [&](int64_t begin, int64_t end) {
      std::vector<Detection<T>> all;
      for (int64_t b = begin; b < end; ++b) {
        all.clear();
        for (int64_t c = 0; c < num_fg; ++c) {
          const auto& k = kept[b * num_fg + c];
          all.insert(all.end(), k.begin(), k.end());
        }
        const int64_t count = std::min<int64_t>(keep_top_k, all.size());
        std::partial_sort(all.begin(), all.begin() + count, all.end(), better<T>);
        for (int64_t i = 0; i < count; ++i) {
          const T* box = boxes.data() + 4 * (b * num_priors + all[i].prior);
          std::copy(box, box + 4, ob + 4 * (b * keep_top_k + i));
          os[b * keep_top_k + i] = all[i].score;
          olab[b * keep_top_k + i] = all[i].label;
        }
        ocount[b] = count;
      }
    });
  });
  return {out_boxes, out_scores, out_labels, out_counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, CPU, m) {
  m.impl("ssd_postprocess", &ssd_postprocess_cpu);
}

}  // namespace mdssd
