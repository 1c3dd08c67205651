// sink_util.h: attention sinks (flashlane/problem.h, learnable_sink) for the GPU tests: one
// float32 logit per query head, on the host (for the references) and on the device (for the
// kernels), with values chosen to matter.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "flashlane/tensor.h"

namespace flashlane::test_support {

/// Sink logits for `heads` query heads. Head 0 gets `dominant` (far above every score, so its
/// rows' O is close to 0 and their LSE close to the sink) when there are at least 3 heads, head 1
/// gets -30 (no effect), the others uniform in [lo, hi], around a row's LSE for random inputs.
class SinkBuffers {
 public:
  SinkBuffers(int64_t heads, uint64_t seed, float lo = -1.f, float hi = 8.f,
              float dominant = 40.f)
      : host_(size_t(heads)) {
    std::mt19937_64 rng(seed ^ 0x5157u);
    std::uniform_real_distribution<float> u(lo, hi);
    for (float& s : host_) s = u(rng);
    if (heads >= 3) {
      host_[0] = dominant;
      host_[1] = -30.f;
    }
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&device_), host_.size() * sizeof(float)),
              cudaSuccess);
    EXPECT_EQ(cudaMemcpy(device_, host_.data(), host_.size() * sizeof(float),
                         cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  ~SinkBuffers() { cudaFree(device_); }
  SinkBuffers(const SinkBuffers&) = delete;
  SinkBuffers& operator=(const SinkBuffers&) = delete;

  const std::vector<float>& values() const { return host_; }
  TensorView host_view() {
    return TensorView::contiguous(host_.data(), DType::kFloat32, {int64_t(host_.size())},
                                  Device::cpu());
  }
  TensorView device_view() {
    return TensorView::contiguous(device_, DType::kFloat32, {int64_t(host_.size())},
                                  Device::cuda(0));
  }

 private:
  std::vector<float> host_;
  float* device_ = nullptr;
};

}  // namespace flashlane::test_support
