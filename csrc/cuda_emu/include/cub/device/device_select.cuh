// Shadows CUB's header in the emulated-CUDA build: host versions with CUB's semantics.
#pragma once
#include "../../../cub_host.h"
