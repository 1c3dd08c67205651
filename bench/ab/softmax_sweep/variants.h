// variants.h: the registry of softmax-sweep variants. Each variant translation unit
// (variant.cu, compiled once per (head_dim, emulated exp2 fraction, rescaling threshold))
// instantiates the sm90 forward with those softmax choices and the kernel table's tile, and
// registers its launch function here; main.cpp times them side by side.
#pragma once

#include <cuda_runtime_api.h>

#include <vector>

#include "flashlane/status.h"
#include "sm90/common/params.h"

namespace flashlane::softmax_sweep {

struct Variant {
  int head_dim;
  int exp2_emulated_per16;  // common/exp2_fma.h; fwd/softmax.h
  int rescale_threshold;    // 0 = rescale on every growth of the maximum
  Status (*launch)(sm90::FwdParams, cudaStream_t);
};

inline std::vector<Variant>& variants() {
  static std::vector<Variant> v;
  return v;
}

struct Register {
  explicit Register(const Variant& v) { variants().push_back(v); }
};

}  // namespace flashlane::softmax_sweep
