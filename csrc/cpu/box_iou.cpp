// box_iou on CPU: [N,4] x [M,4] -> [N,M] (or batched). Parallel over rows of the output when
// that pays (parallel.h). boxes2 is copied once into a structure of arrays with its areas, so
// that each output row is a vectorised loop (box_iou_kernels.inc), compiled for SSE2, AVX2 and
// AVX-512 like l2norm_sum (cpu/isa.h): the scalar loop over [M][4] boxes ran at ~3 ns per pair,
// behind torch.compile of the reference at 31,232 x 50. Reads 16 B per box, writes 4/8 B per pair.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "box_math.h"
#include "checks.h"
#include "cpu/cpu_utils.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"

namespace mdssd {
namespace {

// boxes2 of every batch element as arrays (xyxy and area), batch-major.
template <typename T>
struct BoxesSoA {
  const T *x1, *y1, *x2, *y2, *area;
};

namespace sse2 {
#include "cpu/box_iou_kernels.inc"
}  // namespace sse2

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "cpu/box_iou_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")
namespace avx512 {
#include "cpu/box_iou_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#define MDSSD_BOX_IOU_WIDE 1
#endif

template <typename T>
void iou_rows(const T* a, int64_t n, int64_t m, const BoxesSoA<T>& b, int64_t begin, int64_t end, T* out) {
#ifdef MDSSD_BOX_IOU_WIDE
  switch (cpu_isa()) {
    case Isa::kAvx512: return avx512::iou_rows(a, n, m, b, begin, end, out);
    case Isa::kAvx2: return avx2::iou_rows(a, n, m, b, begin, end, out);
    default: break;
  }
#endif
  sse2::iou_rows(a, n, m, b, begin, end, out);
}

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
    // [5][batch * m]: x1, y1, x2, y2, area.
    const int64_t count = batch * m;
    std::vector<scalar_t> soa(5 * count);
    for (int64_t j = 0; j < count; ++j) {
      const scalar_t* q = pb + 4 * j;
      for (int k = 0; k < 4; ++k) soa[k * count + j] = q[k];
      soa[4 * count + j] = box_area(q[0], q[1], q[2], q[3]);
    }
    const BoxesSoA<scalar_t> boxes2{soa.data(), soa.data() + count, soa.data() + 2 * count,
                                    soa.data() + 3 * count, soa.data() + 4 * count};
    // Rows go parallel from two chunks (parallel.h). ns per pair of the vectorised rows, one
    // thread, 31,232 x 50 on the Xeon (python -m benchmarks.grains for AVX-512; MDSSD_CPU_ISA
    // capped runs, under load, for the other two).
    const Isa isa = cpu_isa();
    const double ns_per_pair = isa == Isa::kAvx512 ? 0.5 : isa == Isa::kAvx2 ? 2.1 : 4.2;
    const int64_t grain = grain_for(ns_per_pair * static_cast<double>(std::max<int64_t>(m, 1)));
    parallel_for(0, batch * n, grain, [&](int64_t begin, int64_t end) {
      iou_rows(pa, n, m, boxes2, begin, end, po);
    });
  });
  return batched ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(mdssd, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace mdssd
