// current_stream() of the emulated-CUDA build, in place of csrc/cuda/cuda_stream.cpp (which
// needs torch's CUDA headers): the emulator has one stream, the legacy default stream (null),
// and runs every launch to completion before returning (see csrc/cuda_emu/cuda_emu.h).
#include "cuda/launch.h"

namespace mdssd {
namespace cuda {

void* current_stream() { return nullptr; }

}  // namespace cuda
}  // namespace mdssd
