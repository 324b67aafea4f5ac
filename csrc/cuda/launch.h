// The boundary between the torch glue (C++, csrc/cuda/*_glue.cpp) and the kernels (plain CUDA,
// csrc/cuda/*.cu). Only standard types cross it: raw pointers, sizes, a stream as void*
// (cudaStream_t) and a cudaError_t as int, so that neither side needs the other's headers.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

// The dispatch key the glue registers its kernels under: CUDA, or in the emulated-CUDA build
// (MDSSD_CUDA_EMU=1, csrc/cuda_emu/) PrivateUse1, the torch device "cuda_emu" whose kernels are
// these same CUDA sources executed on the CPU.
#ifdef MDSSD_CUDA_EMU
#define MDSSD_CUDA_DISPATCH_KEY PrivateUse1
#else
#define MDSSD_CUDA_DISPATCH_KEY CUDA
#endif

namespace mdssd {
namespace cuda {

// The current CUDA stream of the current device (csrc/cuda/cuda_stream.cpp, the only glue file
// that includes CUDA/ATen-CUDA headers).
void* current_stream();

// cudaGetErrorString for an int cudaError_t (csrc/cuda/cuda_errors.cu).
const char* error_string(int error);

inline void check_launch(int error, const char* op) {
  TORCH_CHECK(error == 0, op, ": CUDA kernel launch failed: ", error_string(error));
}

}  // namespace cuda
}  // namespace mdssd
