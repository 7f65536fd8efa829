// Types shared by every kernel family: plain C++, no ATen, usable from host and device code.
#pragma once
#include <cstdint>

namespace lumina {

// Element types a kernel can be instantiated for. Host code picks one from the tensor's
// dtype; each CUDA instance file compiles exactly one of them.
enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace lumina
