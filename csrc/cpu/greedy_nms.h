// Greedy NMS over candidates already in rank order, shared by nms, batched_nms and
// ssd_postprocess on CPU. A candidate is dropped when a kept candidate of better rank overlaps
// it with IoU > threshold. O(N * kept) IoUs; long suppression sweeps run in parallel.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
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

// `order` lists box indices (rows of `boxes`, xyxy) in rank order; appends the kept ones to
// `keep` in rank order. `areas` holds box_area of every row.
template <typename T>
void greedy_nms(const T* boxes, const T* areas, const int64_t* order, int64_t count, T threshold,
                std::vector<int64_t>& keep) {
  constexpr int64_t kParallelSweep = 16384;  // below this a sweep is cheaper serially
  std::vector<char> suppressed(count, 0);
  for (int64_t i = 0; i < count; ++i) {
    if (suppressed[i]) continue;
    const int64_t bi = order[i];
    keep.push_back(bi);
    const T* box = boxes + 4 * bi;
    const T area = areas[bi];
    auto sweep = [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        if (suppressed[j]) continue;
        const int64_t bj = order[j];
        if (box_iou(box, area, boxes + 4 * bj, areas[bj]) > threshold) suppressed[j] = 1;
      }
    };
    if (count - i - 1 >= kParallelSweep) {
      at::parallel_for(i + 1, count, kParallelSweep / 4, sweep);
    } else {
      sweep(i + 1, count);
    }
  }
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
