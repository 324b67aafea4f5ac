// Plain-CUDA helpers for the kernel files (no torch headers: every .cu here must compile with
// nvcc alone, so CI can compile-check the kernels on machines whose torch is a CPU build).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "box_math.h"

namespace mdssd {
namespace cuda {

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Returns the error of the last launch (and clears it) as an int, the type the C++ glue sees.
inline int last_launch_error() { return static_cast<int>(cudaGetLastError()); }

}  // namespace cuda
}  // namespace mdssd
