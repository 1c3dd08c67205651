// flashlane/tensor.h: non-owning tensor views (pointer, dtype, shape, strides, device).
//
// flashlane never allocates or frees caller tensors. Shapes and strides are in elements and
// 64-bit, so tensors beyond 2^31 elements are described exactly.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace flashlane {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3, kInt32 = 4 };

/// Size of one element in bytes.
int dtype_size(DType dtype);
/// Stable lower-case name: "float16", "bfloat16", "float32", "float64", "int32".
const char* dtype_name(DType dtype);
/// Parses the names above plus the short forms "fp16", "bf16", "fp32", "fp64". Returns false
/// on an unknown name.
bool parse_dtype(const std::string& name, DType* out);

enum class DeviceKind : int { kCPU = 0, kCUDA = 1 };

struct Device {
  DeviceKind kind = DeviceKind::kCPU;
  int index = 0;  // CUDA ordinal; 0 for the CPU
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  static Device cpu() { return {DeviceKind::kCPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::kCUDA, index}; }
};

/// A non-owning view of a strided tensor of rank 1 to 4.
/// An empty view (data == nullptr and rank == 0) means "not given" for optional tensors.
struct TensorView {
  static constexpr int kMaxRank = 4;

  void* data = nullptr;
  DType dtype = DType::kFloat16;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};
  std::array<int64_t, kMaxRank> stride{};  // in elements
  Device device{};

  /// True when the caller gave this tensor (a non-empty rank or a pointer).
  bool defined() const { return rank > 0 || data != nullptr; }
  int64_t numel() const;
  /// Builds a view with the given shape and row-major contiguous strides.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               Device device);
  /// The same with the shape in a vector (at most kMaxRank entries are used).
  static TensorView contiguous(void* data, DType dtype, const std::vector<int64_t>& shape,
                               Device device);
  /// Builds a view with explicit strides (elements).
  static TensorView strided(void* data, DType dtype, std::initializer_list<int64_t> shape,
                            std::initializer_list<int64_t> stride, Device device);
};

}  // namespace flashlane
