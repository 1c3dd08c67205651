// device.cpp: what the rules know about a CUDA device, queried once per ordinal.
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>

#include "flashlane/dispatch.h"

namespace flashlane {

DeviceInfo query_device(int ordinal) {
  static std::mutex mu;
  static std::map<int, DeviceInfo> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(ordinal);
  if (it != cache.end()) return it->second;

  DeviceInfo info;
  info.ordinal = ordinal;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.driver_error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
  } else if (ordinal < 0 || ordinal >= count) {
    info.driver_error = "device ordinal " + std::to_string(ordinal) + " not present (" +
                        std::to_string(count) + " CUDA device(s))";
  } else {
    cudaDeviceProp prop{};
    err = cudaGetDeviceProperties(&prop, ordinal);
    if (err != cudaSuccess) {
      info.driver_error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
      cudaGetLastError();
    } else {
      info.cuda_available = true;
      info.sm = prop.major * 10 + prop.minor;
      info.sm_count = prop.multiProcessorCount;
      info.name = prop.name;
    }
  }
  cache.emplace(ordinal, info);
  return info;
}

}  // namespace flashlane
