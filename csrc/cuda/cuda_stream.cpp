// The one glue file that needs torch's CUDA headers (absent from CPU builds of torch), kept
// tiny so that every other glue file compiles against a CPU torch too.
#include <ATen/cuda/CUDAContext.h>

#include "cuda/launch.h"

namespace mdssd {
namespace cuda {

void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

}  // namespace cuda
}  // namespace mdssd
