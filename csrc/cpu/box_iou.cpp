// box_iou on CPU: [N,4] x [M,4] -> [N,M] (or batched). Parallel over rows of the output when
// that pays (parallel.h); the areas of boxes2 are computed once per batch element. Reads 16 B
// per box, writes 4/8 B per pair.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "box_math.h"
#include "checks.h"
#include "cpu/cpu_utils.h"
#include "cpu/parallel.h"

namespace mdssd {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);
  const bool batched = boxes1.dim() == 3;
  const auto a = (batched ? boxes1 : boxes1.unsqueeze(0)).contiguous();
  const auto b = (batched ? boxes2 : boxes2.unsqueeze(0)).contiguous();
  check_all_finite("box_iou", "boxes1", a);
  check_all_finite("box_iou", "boxes2", b);
  const int64_t batch = a.size(0), n = a.size(1), m = b.size(1);
  auto out = at::empty({batch, n, m}, a.options());
  if (out.numel() == 0) return batched ? out : out.squeeze(0);

  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "box_iou_cpu", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    std::vector<scalar_t> area_b(batch * m);
    for (int64_t j = 0; j < batch * m; ++j) {
      const scalar_t* q = pb + 4 * j;
      area_b[j] = box_area(q[0], q[1], q[2], q[3]);
    }
    // Rows go parallel from two chunks (parallel.h): ns per pair measured by
    // python -m benchmarks.grains, i.e. from about 200k pairs.
    constexpr double kNsPerPair = 4.9;
    const int64_t grain = grain_for(kNsPerPair * static_cast<double>(std::max<int64_t>(m, 1)));
    parallel_for(0, batch * n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bi = row / n;
        const scalar_t* p = pa + 4 * row;
        const scalar_t area = box_area(p[0], p[1], p[2], p[3]);
        const scalar_t* q = pb + 4 * bi * m;
        const scalar_t* aq = area_b.data() + bi * m;
        scalar_t* o = po + row * m;
        for (int64_t j = 0; j < m; ++j) o[j] = box_iou(p, area, q + 4 * j, aq[j]);
      }
    });
  });
  return batched ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace mdssd
