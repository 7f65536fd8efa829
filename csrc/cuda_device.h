// Queries of the current CUDA device, usable from .cu and host .cpp files alike.
#pragma once
#include <cuda_runtime_api.h>

namespace lumina {

inline int num_sms() {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms > 0 ? sms : 1;
}

}  // namespace lumina
