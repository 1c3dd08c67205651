// sm90_device.h: whether the GPU tests of the Hopper kernels can run here, and the skip that
// says why when they cannot (a test that cannot run is reported skipped, never passed).
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <string>

namespace flashlane::test_support {

/// Empty when device 0 is an sm_90 GPU, else the reason to skip.
inline std::string sm90_skip_reason() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    return "no CUDA device";
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "cannot query device 0";
  if (prop.major != 9 || prop.minor != 0) {
    return std::string("device 0 is ") + prop.name + " (sm_" + std::to_string(prop.major) +
           std::to_string(prop.minor) + "), not sm_90";
  }
  return {};
}

}  // namespace flashlane::test_support

/// GTEST_SKIP with the reason unless device 0 is an sm_90 GPU.
#define SKIP_UNLESS_SM90()                                                    \
  do {                                                                        \
    const std::string why_ = ::flashlane::test_support::sm90_skip_reason(); \
    if (!why_.empty()) GTEST_SKIP() << why_;                                  \
  } while (0)
