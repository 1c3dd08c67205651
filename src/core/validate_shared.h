// validate_shared.h: pieces of validate.cpp that the KV-cache validation (validate_kvcache.cpp)
// reuses, so that both read metadata and judge alignment the same way.
#pragma once

#include <cstdint>
#include <vector>

#include "flashlane/status.h"
#include "flashlane/tensor.h"

namespace flashlane::detail {

/// Host copy of the int32 values of a rank-1 tensor with unit stride (host tensors read
/// directly, CUDA tensors with one synchronous cudaMemcpy after checking the pointer's kind).
Status read_int32_metadata(const char* name, const TensorView& t, std::vector<int32_t>* out);

/// kMisaligned unless a floating tensor on a CUDA device has a 16-byte aligned base pointer and
/// strides (all but the last) that are multiples of 16 bytes.
Status check_cuda_alignment(const char* name, const TensorView& t, const Device& device);

}  // namespace flashlane::detail
