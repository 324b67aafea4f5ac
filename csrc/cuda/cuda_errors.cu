// cudaGetErrorString behind an int, for the C++ glue (see launch.h).
#include <cuda_runtime.h>

namespace mdssd {
namespace cuda {

const char* error_string(int error) { return cudaGetErrorString(static_cast<cudaError_t>(error)); }

}  // namespace cuda
}  // namespace mdssd
