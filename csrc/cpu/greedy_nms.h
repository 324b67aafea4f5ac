// Greedy NMS over candidates already in rank order, shared by nms, batched_nms and
// ssd_postprocess on CPU. A candidate is dropped when a kept candidate of better rank overlaps
// it with IoU > threshold.
//
// Short lists (a class's top-k in ssd_postprocess) use the plain sweep: O(N * kept) IoUs. Long
// lists use a uniform grid: with a threshold >= 0, suppression needs a positive intersection, so
// two boxes can only interact when they share a grid cell, and each kept box only visits the
// boxes of its own cells. For small objects that is close to linear instead of quadratic; the
// decisions are exactly those of the plain sweep.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "box_math.h"

namespace mdssd {

// Indices 0..n-1 ordered by descending score, ties to the lower index.
template <typename T>
std::vector<int64_t> rank_by_score(const T* scores, int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [scores](int64_t i, int64_t j) { return scores[i] > scores[j]; });
  return order;
}

// GCC vectorises a loop containing a division only when it may assume that floating-point
// operations do not trap; -fno-trapping-math changes no result (IEEE arithmetic is the same, only
// exception flags are not kept), so it is enabled for the sweep alone. Everything the sweep calls
// must then be always_inline (GCC does not inline across differing optimisation attributes).
#if defined(__GNUC__) && !defined(__clang__)
#define MDSSD_NO_TRAPPING_MATH __attribute__((optimize("no-trapping-math")))
#else
#define MDSSD_NO_TRAPPING_MATH
#endif
#define MDSSD_ALWAYS_INLINE inline __attribute__((always_inline))

// box_iou(a, b) > threshold, with the operations of box_iou in box_math.h in the same order (so
// the same IoU, bit for bit) but the division done unconditionally (by 1 where the union is 0),
// so that the compiler can vectorise it. Keep it in step with box_iou.
template <typename T>
MDSSD_ALWAYS_INLINE bool iou_above(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2,
                                   T by2, T area_b, T threshold) {
  const T dw = (ax2 < bx2 ? ax2 : bx2) - (ax1 > bx1 ? ax1 : bx1);
  const T dh = (ay2 < by2 ? ay2 : by2) - (ay1 > by1 ? ay1 : by1);
  const T w = dw > T(0) ? dw : T(0);
  const T h = dh > T(0) ? dh : T(0);
  const T inter = w * h;
  const T uni = (area_a + area_b) - inter;
  const bool positive = uni > T(0);
  const T q = inter / (positive ? uni : T(1));
  return (positive ? q : T(0)) > threshold;
}

// One kept box (a) against candidates j in [first, count): marks those it suppresses.
template <typename T>
MDSSD_NO_TRAPPING_MATH void suppress_by(T ax1, T ay1, T ax2, T ay2, T area, const T* x1,
                                        const T* y1, const T* x2, const T* y2, const T* ar,
                                        unsigned char* suppressed, int64_t first, int64_t count,
                                        T threshold) {
  for (int64_t j = first; j < count; ++j) {
    suppressed[j] |= static_cast<unsigned char>(
        iou_above(ax1, ay1, ax2, ay2, area, x1[j], y1[j], x2[j], y2[j], ar[j], threshold));
  }
}

// The plain sweep. `order` lists box indices (rows of `boxes`, xyxy) in rank order; appends the
// kept ones to `keep` in rank order. `areas` holds box_area of every row.
//
// The candidates are copied in rank order into one array per coordinate, and each kept box
// tests every later candidate without a branch (suppressed ones too): the loop vectorises, which
// makes nms on 1,000 boxes several times faster than testing candidates one by one (see
// benchmarks/results). It runs on the calling thread: one parallel region per kept box (as
// before issue 12) cost more than the sweep, and beside a busy process up to a timeslice each.
template <typename T>
void greedy_nms_sweep(const T* boxes, const T* areas, const int64_t* order, int64_t count,
                      T threshold, std::vector<int64_t>& keep) {
  std::vector<T> x1(count), y1(count), x2(count), y2(count), ar(count);
  for (int64_t k = 0; k < count; ++k) {
    const T* q = boxes + 4 * order[k];
    x1[k] = q[0];
    y1[k] = q[1];
    x2[k] = q[2];
    y2[k] = q[3];
    ar[k] = areas[order[k]];
  }
  std::vector<unsigned char> suppressed(count, 0);
  for (int64_t i = 0; i < count; ++i) {
    if (suppressed[i]) continue;
    keep.push_back(order[i]);
    suppress_by(x1[i], y1[i], x2[i], y2[i], ar[i], x1.data(), y1.data(), x2.data(), y2.data(),
                ar.data(), suppressed.data(), i + 1, count, threshold);
  }
}

// The grid: cells about the median box size (at most kMaxCells per axis); every box with a
// positive area is listed, in rank order, in each cell it touches. Returns false (having done
// nothing) when the lists would be too long, e.g. many boxes spanning the whole image.
template <typename T>
bool greedy_nms_grid(const T* boxes, const T* areas, const int64_t* order, int64_t count,
                     T threshold, std::vector<int64_t>& keep) {
  constexpr int64_t kMaxCells = 256;
  constexpr int64_t kMaxEntriesPerBox = 16;
  double min_x = INFINITY, min_y = INFINITY, max_x = -INFINITY, max_y = -INFINITY;
  std::vector<double> widths, heights;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t b = order[k];
    if (!(areas[b] > T(0))) continue;  // area 0: IoU 0 with everything, never interacts
    const T* q = boxes + 4 * b;
    min_x = std::min<double>(min_x, q[0]);
    min_y = std::min<double>(min_y, q[1]);
    max_x = std::max<double>(max_x, q[2]);
    max_y = std::max<double>(max_y, q[3]);
    widths.push_back(double(q[2]) - double(q[0]));
    heights.push_back(double(q[3]) - double(q[1]));
  }
  if (widths.empty()) {  // nothing can suppress anything
    for (int64_t k = 0; k < count; ++k) keep.push_back(order[k]);
    return true;
  }
  auto median = [](std::vector<double>& v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  auto cells_along = [&](double extent, double typical) {
    const double n = std::floor(extent / std::max(typical, extent / kMaxCells));
    return std::clamp<int64_t>(static_cast<int64_t>(n), 1, kMaxCells);
  };
  const int64_t nx = cells_along(max_x - min_x, median(widths));
  const int64_t ny = cells_along(max_y - min_y, median(heights));
  const double sx = nx / (max_x - min_x), sy = ny / (max_y - min_y);
  // Monotone in the coordinate, which is all the correctness argument needs: two boxes with a
  // positive intersection both touch the cell of the intersection's corner (max x1, max y1).
  auto cell_x = [&](T x) { return std::clamp<int64_t>(int64_t((double(x) - min_x) * sx), 0, nx - 1); };
  auto cell_y = [&](T y) { return std::clamp<int64_t>(int64_t((double(y) - min_y) * sy), 0, ny - 1); };
  auto for_each_cell = [&](const T* q, auto&& visit) {
    const int64_t x0 = cell_x(q[0]), x1 = cell_x(q[2]), y1 = cell_y(q[3]);
    for (int64_t y = cell_y(q[1]); y <= y1; ++y) {
      for (int64_t x = x0; x <= x1; ++x) visit(y * nx + x);
    }
  };

  // Cell lists in CSR form: count, prefix-sum, fill in rank order.
  std::vector<int64_t> start(nx * ny + 1, 0);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t b = order[k];
    if (areas[b] > T(0)) for_each_cell(boxes + 4 * b, [&](int64_t c) { ++start[c + 1]; });
  }
  for (int64_t c = 0; c < nx * ny; ++c) start[c + 1] += start[c];
  if (start[nx * ny] > kMaxEntriesPerBox * count) return false;
  std::vector<int64_t> entries(start[nx * ny]);
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t b = order[k];
    if (areas[b] > T(0)) for_each_cell(boxes + 4 * b, [&](int64_t c) { entries[next[c]++] = k; });
  }

  std::vector<char> suppressed(count, 0);
  for (int64_t k = 0; k < count; ++k) {
    if (suppressed[k]) continue;
    const int64_t bk = order[k];
    keep.push_back(bk);
    if (!(areas[bk] > T(0))) continue;
    const T* box = boxes + 4 * bk;
    const T area = areas[bk];
    for_each_cell(box, [&](int64_t c) {
      // Lists are in rank order: only the entries after k can be suppressed by k.
      const int64_t* first = std::upper_bound(entries.data() + start[c], entries.data() + start[c + 1], k);
      for (const int64_t* e = first; e != entries.data() + start[c + 1]; ++e) {
        if (suppressed[*e]) continue;
        const int64_t bj = order[*e];
        if (box_iou(box, area, boxes + 4 * bj, areas[bj]) > threshold) suppressed[*e] = 1;
      }
    });
  }
  return true;
}

// Greedy NMS, choosing the grid for long candidate lists.
constexpr int64_t kGridFrom = 2048;

template <typename T>
void greedy_nms(const T* boxes, const T* areas, const int64_t* order, int64_t count, T threshold,
                std::vector<int64_t>& keep) {
  if (count >= kGridFrom && threshold >= T(0) &&
      greedy_nms_grid(boxes, areas, order, count, threshold, keep)) {
    return;
  }
  greedy_nms_sweep(boxes, areas, order, count, threshold, keep);
}

// Estimated single-thread time of greedy_nms on `count` candidates of the benchmark's kind
// (small objects, ~8 candidates each), measured by `python -m benchmarks.grains`: the sweep
// costs ~count^2, the grid ~count. Only used to decide whether a loop over groups is worth a
// second thread.
inline double greedy_nms_cost_ns(int64_t count) {
  constexpr double kSweepNsPerN2 = 0.09, kGridNsPerBox = 300;
  const double n = static_cast<double>(count);
  return count >= kGridFrom ? kGridNsPerBox * n : kSweepNsPerN2 * n * n;
}

template <typename T>
std::vector<T> box_areas(const T* boxes, int64_t n) {
  std::vector<T> areas(n);
  for (int64_t i = 0; i < n; ++i) {
    const T* b = boxes + 4 * i;
    areas[i] = box_area(b[0], b[1], b[2], b[3]);
  }
  return areas;
}

}  // namespace mdssd
