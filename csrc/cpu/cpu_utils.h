// Helpers for the CPU kernels: value checks that would cost a device sync on CUDA.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <atomic>

#include "cpu/parallel.h"

namespace mdssd {

// Finite-value test over n contiguous values, as a plain loop: at::isfinite(t).all() is two
// torch ops, each an OpenMP region above 32k elements (see parallel.h for why we avoid those).
// x - x is 0 for a finite x and NaN for an infinite or NaN one; the loop vectorises. Goes
// parallel from about 2M values (0.5 ns per value measured, float32, cache-cold, one thread).
template <typename T>
bool all_finite(const T* p, int64_t n) {
  std::atomic<bool> ok{true};
  parallel_for(0, n, grain_for(0.5), [&](int64_t begin, int64_t end) {
    bool chunk_ok = true;
    for (int64_t i = begin; i < end; ++i) chunk_ok &= (p[i] - p[i]) == T(0);
    if (!chunk_ok) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

inline void check_all_finite(const char* op, const char* name, const at::Tensor& t) {
  if (t.numel() == 0) return;
  const auto c = t.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "check_all_finite", [&] {
    ok = all_finite(c.data_ptr<scalar_t>(), c.numel());
  });
  TORCH_CHECK(ok, op, ": ", name, " contains NaN or infinite values");
}

}  // namespace mdssd
