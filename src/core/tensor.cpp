#include "flashlane/tensor.h"

namespace flashlane {

int dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kInt32: return 4;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt32: return "int32";
  }
  return "unknown";
}

bool parse_dtype(const std::string& name, DType* out) {
  struct Entry { const char* name; DType dtype; };
  static const Entry kNames[] = {
      {"float16", DType::kFloat16}, {"fp16", DType::kFloat16},   {"bfloat16", DType::kBFloat16},
      {"bf16", DType::kBFloat16},   {"float32", DType::kFloat32}, {"fp32", DType::kFloat32},
      {"float64", DType::kFloat64}, {"fp64", DType::kFloat64},   {"int32", DType::kInt32}};
  for (const auto& e : kNames) {
    if (name == e.name) { *out = e.dtype; return true; }
  }
  return false;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= shape[i];
  return rank > 0 ? n : 0;
}

namespace {
TensorView contiguous_view(void* data, DType dtype, const int64_t* shape, size_t rank,
                           Device device) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.rank = static_cast<int>(rank < size_t(TensorView::kMaxRank) ? rank : TensorView::kMaxRank);
  for (int i = 0; i < t.rank; ++i) t.shape[i] = shape[i];
  int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.stride[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}
}  // namespace

TensorView TensorView::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                  Device device) {
  return contiguous_view(data, dtype, shape.begin(), shape.size(), device);
}

TensorView TensorView::contiguous(void* data, DType dtype, const std::vector<int64_t>& shape,
                                  Device device) {
  return contiguous_view(data, dtype, shape.data(), shape.size(), device);
}

TensorView TensorView::strided(void* data, DType dtype, std::initializer_list<int64_t> shape,
                               std::initializer_list<int64_t> stride, Device device) {
  TensorView t = contiguous(data, dtype, shape, device);
  int i = 0;
  for (int64_t s : stride) { if (i < kMaxRank) t.stride[i++] = s; }
  return t;
}

}  // namespace flashlane
