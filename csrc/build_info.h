#pragma once
#include <string>

namespace lumina {
// "key=value" lines describing this build: cpu, cuda, cuda_archs, cuda_version, compiler.
std::string build_info();
}  // namespace lumina
