// Helpers for the CPU kernels: value checks that would cost a device sync on CUDA.
#pragma once

#include <ATen/ATen.h>

namespace mdssd {

inline void check_all_finite(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.numel() == 0 || at::isfinite(t).all().item<bool>(), op, ": ", name,
              " contains NaN or infinite values");
}

}  // namespace mdssd
