// validate_shared.h: pieces of validate.cpp that the KV-cache validation (validate_kvcache.cpp)
// reuses, so that both read metadata, judge alignment and devices, and word their messages the
// same way.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "flashlane/status.h"
#include "flashlane/tensor.h"

namespace flashlane::detail {

// ---- Message pieces.
inline Status fail(ErrorCode code, std::string message) { return Status(code, std::move(message)); }

inline std::string str(int64_t v) { return std::to_string(v); }

/// Shortest of %.15g / %.17g that reads back as `v` (0.1 prints as "0.1", not 0.1000...01).
inline std::string str_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.15g", v);
  if (std::isfinite(v) && std::strtod(buf, nullptr) != v) {
    std::snprintf(buf, sizeof(buf), "%.17g", v);
  }
  return buf;
}

inline std::string device_str(const Device& d) {
  switch (d.kind) {
    case DeviceKind::kCPU: return d.index == 0 ? "cpu" : "cpu:" + str(d.index);
    case DeviceKind::kCUDA: return "cuda:" + str(d.index);
  }
  return "unknown_device(" + str(static_cast<int>(d.kind)) + ")";
}

inline std::string dtype_str(DType dtype) {
  const char* name = dtype_name(dtype);
  if (std::strcmp(name, "unknown") == 0) return "unknown(" + str(static_cast<int>(dtype)) + ")";
  return name;
}

inline std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.rank && i < TensorView::kMaxRank; ++i) {
    if (i) s += ", ";
    s += str(t.shape[i]);
  }
  return s + "]";
}

inline bool is_floating(DType dtype) {
  return dtype == DType::kFloat16 || dtype == DType::kBFloat16 || dtype == DType::kFloat32 ||
         dtype == DType::kFloat64;
}

/// The devices phase of both validations: q's device is a real one (CPU, or CUDA with an ordinal
/// >= 0) and every given tensor of `args` (elements with `name` and a TensorView pointer `t`) is
/// on it. Sets *device to q's on success.
template <class Args>
Status check_tensors_on_q_device(const TensorView& q, const Args& args, Device* device) {
  const Device dev = q.device;
  if (dev.kind != DeviceKind::kCPU && dev.kind != DeviceKind::kCUDA) {
    return fail(ErrorCode::kInvalidArgument, "q.device = " + device_str(dev) + " is unknown");
  }
  if (dev.kind == DeviceKind::kCUDA && dev.index < 0) {
    return fail(ErrorCode::kInvalidArgument,
                "q.device = " + device_str(dev) + " has a negative CUDA ordinal");
  }
  for (const auto& a : args) {
    if (a.t->defined() && a.t->device != dev) {
      return fail(ErrorCode::kDeviceMismatch, std::string(a.name) + ".device = " +
                                                  device_str(a.t->device) +
                                                  " does not match q.device = " + device_str(dev));
    }
  }
  *device = dev;
  return Status::Ok();
}

/// Host copy of the int32 values of a rank-1 tensor with unit stride (host tensors read
/// directly, CUDA tensors with one synchronous cudaMemcpy after checking the pointer's kind).
Status read_int32_metadata(const char* name, const TensorView& t, std::vector<int32_t>* out);

/// kMisaligned unless a floating tensor on a CUDA device has a 16-byte aligned base pointer and
/// strides (all but the last) that are multiples of 16 bytes.
Status check_cuda_alignment(const char* name, const TensorView& t, const Device& device);

}  // namespace flashlane::detail
