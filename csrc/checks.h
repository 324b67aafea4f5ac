// Argument checks shared by the CPU kernels and the CUDA glue: shapes, dtypes, devices and
// scalar arguments. They look only at metadata, never at tensor values, so they cost no
// device synchronisation. Value checks (non-finite boxes, counts out of range) are done by
// the CPU kernels only; docs/ops in mdssd/ops.py say what CUDA does with such values.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <string>

namespace mdssd {

inline std::string shape_str(const at::Tensor& t) {
  return c10::str(t.sizes());
}

// Scalar arguments arrive as double but the kernels compute with them in their own type: float32
// for float32 data (and for the float32 accumulation of float16/bfloat16), float64 for float64.
// Range checks test that value, the one the kernel uses: 1e-50 is positive as a double but 0 as
// a float32.
inline double kernel_scalar(double v, at::ScalarType compute) {
  if (compute == at::kDouble || !std::isfinite(v)) return v;
  if (std::fabs(v) > std::numeric_limits<float>::max()) {
    return std::copysign(std::numeric_limits<double>::infinity(), v);  // the cast would be UB
  }
  return static_cast<double>(static_cast<float>(v));
}

// `v` for an error message, with the kernel's value when rounding changed it.
inline std::string scalar_str(double v, at::ScalarType compute) {
  const double used = kernel_scalar(v, compute);
  if (used == v || (std::isnan(used) && std::isnan(v))) return c10::str(v);
  return c10::str(v, " (", used, " in float32)");
}

// The compute type of l2norm_sum for data of type t.
inline at::ScalarType l2norm_compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_variances(const char* op, double variance_xy, double variance_wh,
                            at::ScalarType compute) {
  const double vxy = kernel_scalar(variance_xy, compute), vwh = kernel_scalar(variance_wh, compute);
  TORCH_CHECK(vxy > 0 && vwh > 0 && std::isfinite(vxy) && std::isfinite(vwh), op,
              ": variances must be positive and finite, got ", scalar_str(variance_xy, compute),
              " and ", scalar_str(variance_wh, compute));
}

inline void check_float_boxes(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* name_a, const at::Tensor& a,
                              const char* name_b, const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ", name_b,
              " is on ", b.device());
}

inline void check_same_dtype(const char* op, const char* name_a, const at::Tensor& a,
                             const char* name_b, const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " is ", a.scalar_type(),
              " but ", name_b, " is ", b.scalar_type());
}

inline void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const char* op = "box_iou";
  TORCH_CHECK((boxes1.dim() == 2 || boxes1.dim() == 3) && boxes1.size(-1) == 4, op,
              ": boxes1 must be [N,4] or [B,N,4], got ", shape_str(boxes1));
  TORCH_CHECK(boxes2.dim() == boxes1.dim() && boxes2.size(-1) == 4, op, ": boxes2 must be ",
              boxes1.dim() == 2 ? "[M,4]" : "[B,M,4]", " like boxes1 ", shape_str(boxes1),
              ", got ", shape_str(boxes2));
  TORCH_CHECK(boxes1.dim() == 2 || boxes1.size(0) == boxes2.size(0), op,
              ": batch sizes differ: boxes1 ", shape_str(boxes1), ", boxes2 ", shape_str(boxes2));
  check_float_boxes(op, "boxes1", boxes1);
  check_same_dtype(op, "boxes1", boxes1, "boxes2", boxes2);
  check_same_device(op, "boxes1", boxes1, "boxes2", boxes2);
}

inline void check_match_encode_args(const at::Tensor& priors, const at::Tensor& gt_boxes,
                                    const at::Tensor& gt_labels, const at::Tensor& gt_counts,
                                    double iou_threshold, double variance_xy, double variance_wh) {
  const char* op = "match_encode";
  TORCH_CHECK(priors.dim() == 2 && priors.size(1) == 4, op, ": priors must be [P,4] (cx,cy,w,h), got ",
              shape_str(priors));
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4, op, ": gt_boxes must be [B,G,4], got ",
              shape_str(gt_boxes));
  TORCH_CHECK(gt_labels.dim() == 2 && gt_labels.size(0) == gt_boxes.size(0) &&
                  gt_labels.size(1) == gt_boxes.size(1),
              op, ": gt_labels must be [B,G] = [", gt_boxes.size(0), ",", gt_boxes.size(1),
              "] to match gt_boxes, got ", shape_str(gt_labels));
  TORCH_CHECK(gt_counts.dim() == 1 && gt_counts.size(0) == gt_boxes.size(0), op,
              ": gt_counts must be [B] = [", gt_boxes.size(0), "], got ", shape_str(gt_counts));
  check_float_boxes(op, "priors", priors);
  check_same_dtype(op, "priors", priors, "gt_boxes", gt_boxes);
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong, op, ": gt_labels must be int64, got ",
              gt_labels.scalar_type());
  TORCH_CHECK(gt_counts.scalar_type() == at::kLong, op, ": gt_counts must be int64, got ",
              gt_counts.scalar_type());
  check_same_device(op, "priors", priors, "gt_boxes", gt_boxes);
  check_same_device(op, "priors", priors, "gt_labels", gt_labels);
  check_same_device(op, "priors", priors, "gt_counts", gt_counts);
  const auto compute = priors.scalar_type();
  const double thr = kernel_scalar(iou_threshold, compute);
  TORCH_CHECK(thr > 0 && thr <= 1, op, ": iou_threshold must be in (0, 1], got ",
              scalar_str(iou_threshold, compute));
  check_variances(op, variance_xy, variance_wh, compute);
}

inline void check_l2norm_sum_args(const char* op, const at::Tensor& a, const at::Tensor& b,
                                  const at::Tensor& scale_a, const at::Tensor& scale_b, double eps) {
  TORCH_CHECK(a.dim() == 4, op, ": a must be [B,C,H,W], got ", shape_str(a));
  TORCH_CHECK(b.sizes() == a.sizes(), op, ": b must have a's shape ", shape_str(a), ", got ",
              shape_str(b));
  const auto channels = a.size(1);
  TORCH_CHECK(scale_a.dim() == 1 && scale_a.size(0) == channels, op, ": scale_a must be [C] = [",
              channels, "], got ", shape_str(scale_a));
  TORCH_CHECK(scale_b.dim() == 1 && scale_b.size(0) == channels, op, ": scale_b must be [C] = [",
              channels, "], got ", shape_str(scale_b));
  TORCH_CHECK(at::isFloatingType(a.scalar_type()) && a.scalar_type() != at::kFloat8_e4m3fn &&
                  a.scalar_type() != at::kFloat8_e5m2,
              op, ": a must be float16, bfloat16, float32 or float64, got ", a.scalar_type());
  check_same_dtype(op, "a", a, "b", b);
  TORCH_CHECK(scale_a.scalar_type() == scale_b.scalar_type(), op, ": scale_a is ",
              scale_a.scalar_type(), " but scale_b is ", scale_b.scalar_type());
  TORCH_CHECK(scale_a.scalar_type() == at::kFloat || scale_a.scalar_type() == a.scalar_type(), op,
              ": scales must be float32 or a's dtype (", a.scalar_type(), "), got ",
              scale_a.scalar_type());
  check_same_device(op, "a", a, "b", b);
  check_same_device(op, "a", a, "scale_a", scale_a);
  check_same_device(op, "a", a, "scale_b", scale_b);
  const auto compute = l2norm_compute_type(a.scalar_type());
  TORCH_CHECK(kernel_scalar(eps, compute) > 0, op, ": eps must be positive, got ",
              scalar_str(eps, compute));
}

inline void check_l2norm_sum_backward_args(const at::Tensor& grad_out, const at::Tensor& a,
                                           const at::Tensor& b, const at::Tensor& scale_a,
                                           const at::Tensor& scale_b, double eps) {
  const char* op = "l2norm_sum_backward";
  check_l2norm_sum_args(op, a, b, scale_a, scale_b, eps);
  TORCH_CHECK(grad_out.sizes() == a.sizes(), op, ": grad_out must have a's shape ", shape_str(a),
              ", got ", shape_str(grad_out));
  check_same_dtype(op, "grad_out", grad_out, "a", a);
  check_same_device(op, "grad_out", grad_out, "a", a);
}

// The memory format l2norm_sum works in (and returns): channels_last only when `a` is laid out
// that way and not also plain contiguous (a tensor with C == 1 or H == W == 1 is both); any other
// layout is made contiguous first. mdssd/ops.py's fake kernel applies the same rule.
inline at::MemoryFormat l2norm_sum_memory_format(const at::Tensor& a) {
  return a.is_contiguous(at::MemoryFormat::ChannelsLast) && !a.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

inline void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                           double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must be [N,4], got ",
              shape_str(boxes));
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, ": scores must be [N] = [",
              boxes.size(0), "], got ", shape_str(scores));
  check_float_boxes(op, "boxes", boxes);
  check_same_dtype(op, "boxes", boxes, "scores", scores);
  check_same_device(op, "boxes", boxes, "scores", scores);
  const double thr = kernel_scalar(iou_threshold, boxes.scalar_type());
  TORCH_CHECK(thr >= 0 && thr <= 1, op, ": iou_threshold must be in [0, 1], got ",
              scalar_str(iou_threshold, boxes.scalar_type()));
}

inline void check_batched_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                                   const at::Tensor& idxs, double iou_threshold) {
  const char* op = "batched_nms";
  check_nms_args(op, boxes, scores, iou_threshold);
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op, ": idxs must be [N] = [",
              boxes.size(0), "], got ", shape_str(idxs));
  TORCH_CHECK(idxs.scalar_type() == at::kLong, op, ": idxs must be int64, got ", idxs.scalar_type());
  check_same_device(op, "boxes", boxes, "idxs", idxs);
}

inline void check_ssd_postprocess_args(const at::Tensor& loc, const at::Tensor& conf,
                                       const at::Tensor& priors, double variance_xy,
                                       double variance_wh, double score_threshold,
                                       double iou_threshold, int64_t top_k_per_class,
                                       int64_t keep_top_k) {
  const char* op = "ssd_postprocess";
  TORCH_CHECK(loc.dim() == 3 && loc.size(2) == 4, op, ": loc must be [B,P,4], got ", shape_str(loc));
  TORCH_CHECK(conf.dim() == 3 && conf.size(0) == loc.size(0) && conf.size(1) == loc.size(1), op,
              ": conf must be [B,P,K] with B,P = ", loc.size(0), ",", loc.size(1),
              " as in loc, got ", shape_str(conf));
  TORCH_CHECK(conf.size(2) >= 1, op, ": conf needs at least one class (background), got ",
              shape_str(conf));
  TORCH_CHECK(priors.dim() == 2 && priors.size(0) == loc.size(1) && priors.size(1) == 4, op,
              ": priors must be [P,4] = [", loc.size(1), ",4], got ", shape_str(priors));
  check_float_boxes(op, "loc", loc);
  check_same_dtype(op, "loc", loc, "conf", conf);
  check_same_dtype(op, "loc", loc, "priors", priors);
  check_same_device(op, "loc", loc, "conf", conf);
  check_same_device(op, "loc", loc, "priors", priors);
  const auto compute = loc.scalar_type();
  check_variances(op, variance_xy, variance_wh, compute);
  const double score_thr = kernel_scalar(score_threshold, compute);
  TORCH_CHECK(score_thr >= 0 && score_thr < 1, op, ": score_threshold must be in [0, 1), got ",
              scalar_str(score_threshold, compute));
  const double iou_thr = kernel_scalar(iou_threshold, compute);
  TORCH_CHECK(iou_thr >= 0 && iou_thr <= 1, op, ": iou_threshold must be in [0, 1], got ",
              scalar_str(iou_threshold, compute));
  TORCH_CHECK(top_k_per_class >= 1, op, ": top_k_per_class must be >= 1, got ", top_k_per_class);
  TORCH_CHECK(keep_top_k >= 1, op, ": keep_top_k must be >= 1, got ", keep_top_k);
}

}  // namespace mdssd
