// Shadows CUDA's cuda_runtime.h in the emulated-CUDA build (csrc/cuda_emu/include is searched
// before the toolkit's headers): the emulator replaces the runtime.
#pragma once
#include "../cuda_emu.h"
