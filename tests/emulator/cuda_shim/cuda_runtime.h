// Stand-in for the CUDA header <cuda_runtime.h> under the warp emulator (tests/emulator): see csrc/cuda_emulate.h.
#pragma once
#include "../../../csrc/cuda_emulate.h"
