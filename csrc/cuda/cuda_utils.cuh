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

#define MDSSD_RETURN_IF_ERROR(expr)          \
  do {                                       \
    const cudaError_t err_ = (expr);         \
    if (err_ != cudaSuccess) return err_;    \
  } while (0)

// Unsigned key whose ascending order is the score order, for radix sorts and selections; -0 and
// +0 get the same key (they compare equal on CPU, so their order must come from the index, as
// for any tie). Every NaN gets the largest key, whatever its sign and payload: NaNs rank first,
// tied among themselves, as in the reference's sort.
__device__ __forceinline__ uint32_t score_key(float s) {
  if (s != s) return 0xFFFFFFFFu;
  uint32_t u = __float_as_uint(s);
  if (u == 0x80000000u) u = 0u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint64_t score_key(double s) {
  if (s != s) return ~0ull;
  uint64_t u = static_cast<uint64_t>(__double_as_longlong(s));
  const uint64_t sign = 0x8000000000000000ull;
  if (u == sign) u = 0u;
  return (u & sign) ? ~u : (u | sign);
}

// Greedy NMS inside one 64-box tile of a suppression bit mask, shared by nms and ssd_postprocess.
// `gone` holds the tile's boxes already removed by kept boxes of earlier tiles; `row(bit)` returns
// box `bit`'s suppression word for this tile (only the bits of later boxes matter). Walks the
// boxes in rank order and returns the bits of the kept ones.
template <typename RowWord>
__device__ __forceinline__ unsigned long long greedy_tile(unsigned long long gone, int rows,
                                                          RowWord row) {
  const unsigned long long valid = rows == 64 ? ~0ull : ((1ull << rows) - 1);
  unsigned long long kept = 0;
  unsigned long long open = ~gone & valid;
  while (open != 0) {
    const int bit = __ffsll(static_cast<long long>(open)) - 1;
    kept |= 1ull << bit;
    gone |= row(bit);
    open = ~gone & valid & (bit == 63 ? 0ull : (~0ull << (bit + 1)));
  }
  return kept;
}

// out[i] = in[order[i]]: gathers by rank order (group keys, flags).
template <typename T>
__global__ void gather_kernel(const T* __restrict__ in, const int64_t* __restrict__ order, int64_t n,
                              T* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  out[i] = in[order[i]];
}

}  // namespace cuda
}  // namespace mdssd
