// Box arithmetic shared by the CPU kernels (C++) and the CUDA kernels (plain CUDA), so that both
// backends evaluate IoU, encoding and decoding with exactly the same operations in the same order
// as mdssd/reference.py. Only standard headers: this file must compile with and without nvcc.
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define MDSSD_HD __host__ __device__ __forceinline__
#else
#define MDSSD_HD inline
#endif

namespace mdssd {

// Products written with explicit rounding so that nvcc cannot contract `s - w * h` into an FMA:
// an FMA rounds once where the reference rounds twice, which would change IoUs in the last bit
// and with them tie-breaks and threshold decisions.
MDSSD_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
MDSSD_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
MDSSD_HD T max0(T x) {
  return x > T(0) ? x : T(0);
}

// max(x, 0) that keeps a NaN (like torch's clamp(min=0), which the reference uses for areas).
template <typename T>
MDSSD_HD T max0_keep_nan(T x) {
  return x > T(0) || x != x ? x : T(0);
}

// Area of an xyxy box; an inverted box (x2 < x1 or y2 < y1) has area 0. A box with a NaN
// coordinate has a NaN area, as in the reference: box_iou then returns 0 for every pair it is
// in (its union is NaN), so such a box (ssd_postprocess decodes one from a zero-size prior and
// an overflowing offset) neither suppresses nor is suppressed by anything.
template <typename T>
MDSSD_HD T box_area(T x1, T y1, T x2, T y2) {
  return mul_rn(max0_keep_nan(x2 - x1), max0_keep_nan(y2 - y1));
}

// IoU of two xyxy boxes given their areas: inter / ((area_a + area_b) - inter), 0 when the union
// is 0 or NaN (never NaN). A NaN area (box_area of a box with a NaN coordinate) makes the union
// NaN; without that, the comparisons below would take the other box's coordinates for the NaN
// ones and give an IoU that can exceed 1.
template <typename T>
MDSSD_HD T box_iou(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  const T w = max0((ax2 < bx2 ? ax2 : bx2) - (ax1 > bx1 ? ax1 : bx1));
  const T h = max0((ay2 < by2 ? ay2 : by2) - (ay1 > by1 ? ay1 : by1));
  const T inter = mul_rn(w, h);
  const T uni = (area_a + area_b) - inter;
  return uni > T(0) ? inter / uni : T(0);
}

// Pointer form: boxes stored as 4 consecutive values.
template <typename T>
MDSSD_HD T box_iou(const T* a, T area_a, const T* b, T area_b) {
  return box_iou(a[0], a[1], a[2], a[3], area_a, b[0], b[1], b[2], b[3], area_b);
}

// (cx, cy, w, h) prior to (x1, y1, x2, y2): c -/+ size * 0.5.
template <typename T>
MDSSD_HD void prior_to_xyxy(const T* prior, T* box) {
  const T hw = mul_rn(prior[2], T(0.5));
  const T hh = mul_rn(prior[3], T(0.5));
  box[0] = prior[0] - hw;
  box[1] = prior[1] - hh;
  box[2] = prior[0] + hw;
  box[3] = prior[1] + hh;
}

// log evaluated in float64 and rounded to T, for the reason given at exp_rounded below: float32
// log differs between libraries in the last bit (torch's vectorised log in ~8% of values).
template <typename T>
MDSSD_HD T log_rounded(T x) {
  return static_cast<T>(::log(static_cast<double>(x)));
}

// SSD offsets of xyxy box `gt` relative to cxcywh `prior` (see mdssd/reference.py: encode).
template <typename T>
MDSSD_HD void encode_box(const T* gt, const T* prior, T variance_xy, T variance_wh, T* out) {
  const T gcx = mul_rn(gt[0] + gt[2], T(0.5));
  const T gcy = mul_rn(gt[1] + gt[3], T(0.5));
  const T gw = gt[2] - gt[0];
  const T gh = gt[3] - gt[1];
  out[0] = (gcx - prior[0]) / mul_rn(variance_xy, prior[2]);
  out[1] = (gcy - prior[1]) / mul_rn(variance_xy, prior[3]);
  out[2] = log_rounded(gw / prior[2]) / variance_wh;
  out[3] = log_rounded(gh / prior[3]) / variance_wh;
}

template <typename T>
MDSSD_HD T clamp01(T x) {
  return x < T(0) ? T(0) : (x > T(1) ? T(1) : x);
}

// exp evaluated in float64 and rounded to T. exp is the one operation whose float32 result
// differs between libraries (glibc, SLEEF in torch, CUDA's expf) in the last bit; through float64
// (each library within 1 ulp of float64) every backend gets the same float32, so scores and
// boxes, and with them every tie-break and threshold decision, agree bit for bit. The exception
// is a float64 value within 1 ulp of a float32 rounding boundary (about 1 in 10^8 to 10^9 values): the
// tests compare large outputs as sets for that reason. For T = double the result itself may
// differ in the last bit between backends.
template <typename T>
MDSSD_HD T exp_rounded(T x) {
  return static_cast<T>(::exp(static_cast<double>(x)));
}

// Inverse of encode_box, clipped to [0, 1] (see mdssd/reference.py: decode).
template <typename T>
MDSSD_HD void decode_box(const T* loc, const T* prior, T variance_xy, T variance_wh, T* box) {
  const T cx = prior[0] + mul_rn(mul_rn(loc[0], variance_xy), prior[2]);
  const T cy = prior[1] + mul_rn(mul_rn(loc[1], variance_xy), prior[3]);
  const T hw = mul_rn(mul_rn(prior[2], exp_rounded(mul_rn(loc[2], variance_wh))), T(0.5));
  const T hh = mul_rn(mul_rn(prior[3], exp_rounded(mul_rn(loc[3], variance_wh))), T(0.5));
  box[0] = clamp01(cx - hw);
  box[1] = clamp01(cy - hh);
  box[2] = clamp01(cx + hw);
  box[3] = clamp01(cy + hh);
}

}  // namespace mdssd
