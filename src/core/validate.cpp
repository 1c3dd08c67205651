// validate.cpp: validate(), the one gate every public entry point passes before dispatch.
//
// It turns an AttentionProblem into a ProblemInfo or into a Status with a specific ErrorCode and a
// message naming the argument and its value. Checks run in phases, most basic first, so that a
// problem with several faults reports the one a caller should fix first:
//   1. presence     required tensors given, data pointers non-null       kNullPointer
//   2. devices      every tensor on q's device                            kDeviceMismatch
//   3. dtypes       floating set, all equal to q, lse float32, int32 meta kUnsupportedDType, ...
//   4. ranks        bshd 4 / varlen 3 (lse 3 / 2, metadata 1)             kRankMismatch
//   5. shapes       non-negative, every dimension agreeing                kShapeMismatch
//   6. heads, head dims                                                   kHeadsNotDivisible, ...
//   7. strides      last dim contiguous; CUDA base pointers and strides   kNotContiguous,
//                   16-byte aligned                                       kMisaligned
//   8. options      mask, window, softmax_scale, softcap, dropout, max_seqlen
//   9. metadata     contents of cu_seqlens / seqused_k (host read or one synchronous cudaMemcpy)
// Only the tensors the direction uses are checked: forward ignores dout, dq, dk and dv.
// Varlen seqlen_q / seqlen_k in ProblemInfo are max_seqlen_q / max_seqlen_k when given (> 0; a
// given bound below the real maximum is an error when values are checked), else the maxima read
// from cu_seqlens.
// Nothing is ever written to a tensor, and `info` is written only on success. Every size is
// int64_t and no check limits numel, so tensors beyond 2^31 elements are described exactly.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "flashlane/problem.h"

namespace flashlane {
namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kHeadDimMultiple = 8;
constexpr int64_t kAlignBytes = 16;  // TMA / vectorized loads need 16-byte aligned rows

/// One tensor argument as validation sees it.
enum class Kind { kFloating, kLse, kCuSeqlens, kSeqused };
struct Arg {
  const char* name;
  const TensorView* t;
  bool required;
  Kind kind;
};

Status fail(ErrorCode code, std::string message) { return Status(code, std::move(message)); }

std::string str(int64_t v) { return std::to_string(v); }

/// Shortest of %.15g / %.17g that reads back as `v` (0.1 prints as "0.1", not 0.1000...01).
std::string str_double(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.15g", v);
  if (std::isfinite(v) && std::strtod(buf, nullptr) != v) {
    std::snprintf(buf, sizeof(buf), "%.17g", v);
  }
  return buf;
}

std::string device_str(const Device& d) {
  switch (d.kind) {
    case DeviceKind::kCPU: return d.index == 0 ? "cpu" : "cpu:" + str(d.index);
    case DeviceKind::kCUDA: return "cuda:" + str(d.index);
  }
  return "unknown_device(" + str(static_cast<int>(d.kind)) + ")";
}

std::string dtype_str(DType dtype) {
  const char* name = dtype_name(dtype);
  if (std::strcmp(name, "unknown") == 0) return "unknown(" + str(static_cast<int>(dtype)) + ")";
  return name;
}

std::string shape_str(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.rank && i < TensorView::kMaxRank; ++i) {
    if (i) s += ", ";
    s += str(t.shape[i]);
  }
  return s + "]";
}

const char* direction_str(Direction d) { return d == Direction::kForward ? "forward" : "backward"; }

bool is_floating(DType dtype) {
  return dtype == DType::kFloat16 || dtype == DType::kBFloat16 || dtype == DType::kFloat32 ||
         dtype == DType::kFloat64;
}

bool valid_head_dim(int64_t d) {
  return d > 0 && d <= kMaxHeadDim && d % kHeadDimMultiple == 0;
}

/// "k.shape[0] = 3 does not match q.shape[0] = 2 (batch)".
Status dim_mismatch(const char* name, const TensorView& t, int dim, const char* ref_name,
                    const TensorView& ref, int ref_dim, const char* meaning) {
  return fail(ErrorCode::kShapeMismatch,
              std::string(name) + ".shape[" + str(dim) + "] = " + str(t.shape[dim]) +
                  " does not match " + ref_name + ".shape[" + str(ref_dim) +
                  "] = " + str(ref.shape[ref_dim]) + " (" + meaning + "); " + name + " is " +
                  shape_str(t) + ", " + ref_name + " is " + shape_str(ref));
}

/// Requires t.shape[dim] == ref.shape[ref_dim].
Status expect_dim(const char* name, const TensorView& t, int dim, const char* ref_name,
                  const TensorView& ref, int ref_dim, const char* meaning) {
  if (t.shape[dim] == ref.shape[ref_dim]) return Status::Ok();
  return dim_mismatch(name, t, dim, ref_name, ref, ref_dim, meaning);
}

/// Requires `t` (a gradient) to have exactly the shape of `ref`; ranks already agree.
Status expect_same_shape(const char* name, const TensorView& t, const char* ref_name,
                         const TensorView& ref) {
  for (int i = 0; i < t.rank; ++i) {
    if (t.shape[i] != ref.shape[i]) {
      const std::string meaning = std::string(name) + " must have the shape of " + ref_name;
      return dim_mismatch(name, t, i, ref_name, ref, i, meaning.c_str());
    }
  }
  return Status::Ok();
}

/// Copies the int32 values of a rank-1 contiguous metadata tensor to the host. Host tensors are
/// read directly; CUDA tensors with one synchronous cudaMemcpy after checking that the pointer
/// really is memory the runtime can copy from (a host pointer labelled CUDA must not be read as
/// device memory, and vice versa).
Status read_int32(const char* name, const TensorView& t, std::vector<int32_t>* out) {
  const int64_t n = t.shape[0];
  out->assign(static_cast<size_t>(n), 0);
  if (n == 0) return Status::Ok();
  const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
  if (t.device.kind == DeviceKind::kCPU) {
    std::memcpy(out->data(), t.data, bytes);
    return Status::Ok();
  }
  cudaPointerAttributes attr{};
  cudaError_t err = cudaPointerGetAttributes(&attr, t.data);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error so later calls do not see it
    return fail(ErrorCode::kCudaError, std::string("reading ") + name + " from " +
                                           device_str(t.device) + " (to check its values): " +
                                           "cudaPointerGetAttributes failed: " +
                                           cudaGetErrorString(err));
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged &&
      attr.type != cudaMemoryTypeHost) {
    return fail(ErrorCode::kDeviceMismatch,
                std::string(name) + ".device = " + device_str(t.device) +
                    " but its data pointer is not CUDA memory");
  }
  if (attr.type == cudaMemoryTypeDevice && attr.device != t.device.index) {
    return fail(ErrorCode::kDeviceMismatch,
                std::string(name) + ".device = " + device_str(t.device) +
                    " but its data pointer belongs to cuda:" + str(attr.device));
  }
  err = cudaMemcpy(out->data(), t.data, bytes, cudaMemcpyDefault);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return fail(ErrorCode::kCudaError, std::string("reading ") + name + " from " +
                                           device_str(t.device) +
                                           " (to check its values): cudaMemcpy failed: " +
                                           cudaGetErrorString(err));
  }
  return Status::Ok();
}

/// Checks cu_seqlens values: first 0, non-decreasing, last == total. Returns the longest sequence.
Status check_cu_seqlens(const char* name, const std::vector<int32_t>& cu, int64_t total,
                        const char* total_source, int64_t* max_len) {
  // cu.size() >= 1 was checked with the shapes.
  if (cu[0] != 0) {
    return fail(ErrorCode::kCuSeqlensInvalid,
                std::string(name) + "[0] = " + str(cu[0]) + " (must be 0)");
  }
  int64_t longest = 0;
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1]) {
      return fail(ErrorCode::kCuSeqlensInvalid,
                  std::string(name) + "[" + str(static_cast<int64_t>(i)) + "] = " + str(cu[i]) +
                      " < " + name + "[" + str(static_cast<int64_t>(i - 1)) + "] = " +
                      str(cu[i - 1]) + " (must be non-decreasing)");
    }
    const int64_t len = static_cast<int64_t>(cu[i]) - cu[i - 1];
    if (len > longest) longest = len;
  }
  const int64_t last = cu.back();
  if (last != total) {
    return fail(ErrorCode::kCuSeqlensInvalid,
                std::string(name) + "[" + str(static_cast<int64_t>(cu.size() - 1)) + "] = " +
                    str(last) + " does not match the packed length " + total_source + " = " +
                    str(total) + " (must end at the total number of tokens)");
  }
  *max_len = longest;
  return Status::Ok();
}

}  // namespace

Status validate(const AttentionProblem& p, Direction direction, ProblemInfo* info_out) {
  if (direction != Direction::kForward && direction != Direction::kBackward) {
    return fail(ErrorCode::kInvalidArgument,
                "direction = " + str(static_cast<int>(direction)) + " is not forward or backward");
  }
  const bool backward = direction == Direction::kBackward;
  const bool varlen = p.cu_seqlens_q.defined();

  // ---- 1. presence: required tensors given, no null data pointers.
  std::vector<Arg> args = {
      {"q", &p.q, true, Kind::kFloating},
      {"k", &p.k, true, Kind::kFloating},
      {"v", &p.v, true, Kind::kFloating},
      {"o", &p.o, true, Kind::kFloating},
      {"lse", &p.lse, backward, Kind::kLse},
  };
  if (backward) {
    args.push_back({"dout", &p.dout, true, Kind::kFloating});
    args.push_back({"dq", &p.dq, true, Kind::kFloating});
    args.push_back({"dk", &p.dk, true, Kind::kFloating});
    args.push_back({"dv", &p.dv, true, Kind::kFloating});
  }
  args.push_back({"cu_seqlens_q", &p.cu_seqlens_q, false, Kind::kCuSeqlens});
  args.push_back({"cu_seqlens_k", &p.cu_seqlens_k, varlen, Kind::kCuSeqlens});
  args.push_back({"seqused_k", &p.seqused_k, false, Kind::kSeqused});

  if (!varlen && p.cu_seqlens_k.defined()) {
    return fail(ErrorCode::kInvalidArgument,
                "cu_seqlens_k is given but cu_seqlens_q is not: the varlen layout needs both, the "
                "bshd layout neither");
  }
  for (const Arg& a : args) {
    if (!a.t->defined()) {
      if (!a.required) continue;
      if (a.kind == Kind::kCuSeqlens) {
        return fail(ErrorCode::kNullPointer,
                    std::string(a.name) +
                        ": not given, but required when cu_seqlens_q is given (varlen layout)");
      }
      return fail(ErrorCode::kNullPointer, std::string(a.name) + ": not given, but required for " +
                                               direction_str(direction));
    }
    if (a.t->data == nullptr) {
      return fail(ErrorCode::kNullPointer, std::string(a.name) + ": data pointer is null");
    }
  }
  // From here on, a tensor is "present" iff defined() (and then its data pointer is non-null).

  // ---- 2. devices.
  const Device device = p.q.device;
  if (device.kind != DeviceKind::kCPU && device.kind != DeviceKind::kCUDA) {
    return fail(ErrorCode::kInvalidArgument, "q.device = " + device_str(device) + " is unknown");
  }
  if (device.kind == DeviceKind::kCUDA && device.index < 0) {
    return fail(ErrorCode::kInvalidArgument,
                "q.device = " + device_str(device) + " has a negative CUDA ordinal");
  }
  for (const Arg& a : args) {
    if (a.t->defined() && a.t->device != device) {
      return fail(ErrorCode::kDeviceMismatch, std::string(a.name) + ".device = " +
                                                  device_str(a.t->device) +
                                                  " does not match q.device = " +
                                                  device_str(device));
    }
  }

  // ---- 3. dtypes.
  const DType dtype = p.q.dtype;
  for (const Arg& a : args) {  // unsupported dtypes first, then disagreement with q
    if (!a.t->defined()) continue;
    const std::string got = std::string(a.name) + ".dtype = " + dtype_str(a.t->dtype);
    switch (a.kind) {
      case Kind::kFloating:
        if (!is_floating(a.t->dtype)) {
          return fail(ErrorCode::kUnsupportedDType,
                      got + " is not supported (float16, bfloat16, float32 or float64)");
        }
        break;
      case Kind::kLse:
        if (a.t->dtype != DType::kFloat32) {
          return fail(ErrorCode::kUnsupportedDType, got + " is not supported (lse is float32)");
        }
        break;
      case Kind::kCuSeqlens:
        if (a.t->dtype != DType::kInt32) {
          return fail(ErrorCode::kCuSeqlensInvalid, got + " is not supported (must be int32)");
        }
        break;
      case Kind::kSeqused:
        if (a.t->dtype != DType::kInt32) {
          return fail(ErrorCode::kSequsedInvalid, got + " is not supported (must be int32)");
        }
        break;
    }
  }
  for (const Arg& a : args) {
    if (a.kind == Kind::kFloating && a.t->dtype != dtype) {
      return fail(ErrorCode::kDTypeMismatch, std::string(a.name) + ".dtype = " +
                                                 dtype_str(a.t->dtype) +
                                                 " does not match q.dtype = " + dtype_str(dtype));
    }
  }

  // ---- 4. ranks.
  const int data_rank = varlen ? 3 : 4;
  for (const Arg& a : args) {
    if (!a.t->defined()) continue;
    int want = 1;
    std::string layout;
    switch (a.kind) {
      case Kind::kFloating:
        want = data_rank;
        layout = varlen ? "varlen layout [total, heads, head_dim]"
                        : "bshd layout [batch, seqlen, heads, head_dim]";
        break;
      case Kind::kLse:
        want = varlen ? 2 : 3;
        layout = varlen ? "varlen lse [heads_q, total_q]" : "bshd lse [batch, heads_q, seqlen_q]";
        break;
      case Kind::kCuSeqlens: layout = "[batch + 1]"; break;
      case Kind::kSeqused: layout = "[batch]"; break;
    }
    if (a.t->rank != want) {
      const ErrorCode code =
          a.kind == Kind::kSeqused ? ErrorCode::kSequsedInvalid : ErrorCode::kRankMismatch;
      return fail(code, std::string(a.name) + ".rank = " + str(a.t->rank) + " (shape " +
                            shape_str(*a.t) + "), expected " + str(want) + " for the " + layout);
    }
  }

  // ---- 5. shapes.
  for (const Arg& a : args) {
    if (!a.t->defined()) continue;
    for (int i = 0; i < a.t->rank; ++i) {
      if (a.t->shape[i] < 0) {
        const ErrorCode code =
            a.kind == Kind::kSeqused ? ErrorCode::kSequsedInvalid : ErrorCode::kShapeMismatch;
        return fail(code, std::string(a.name) + ".shape[" + str(i) + "] = " + str(a.t->shape[i]) +
                              " is negative");
      }
    }
  }
  // Dimension indices of the data tensors in this layout.
  const int s_dim = varlen ? 0 : 1;  // seqlen (bshd) or total (varlen)
  const int h_dim = varlen ? 1 : 2;  // heads
  const int d_dim = varlen ? 2 : 3;  // head dim
  const char* seq_q = varlen ? "total_q" : "seqlen_q";
  const char* seq_k = varlen ? "total_k" : "seqlen_k";
  Status st;
#define FL_RETURN_IF_ERROR(expr) \
  do {                           \
    st = (expr);                 \
    if (!st.ok()) return st;     \
  } while (0)
  if (!varlen) FL_RETURN_IF_ERROR(expect_dim("k", p.k, 0, "q", p.q, 0, "batch"));
  FL_RETURN_IF_ERROR(expect_dim("k", p.k, d_dim, "q", p.q, d_dim, "head_dim"));
  if (!varlen) FL_RETURN_IF_ERROR(expect_dim("v", p.v, 0, "k", p.k, 0, "batch"));
  FL_RETURN_IF_ERROR(expect_dim("v", p.v, s_dim, "k", p.k, s_dim, seq_k));
  FL_RETURN_IF_ERROR(expect_dim("v", p.v, h_dim, "k", p.k, h_dim, "heads_kv"));
  if (!varlen) FL_RETURN_IF_ERROR(expect_dim("o", p.o, 0, "q", p.q, 0, "batch"));
  FL_RETURN_IF_ERROR(expect_dim("o", p.o, s_dim, "q", p.q, s_dim, seq_q));
  FL_RETURN_IF_ERROR(expect_dim("o", p.o, h_dim, "q", p.q, h_dim, "heads_q"));
  FL_RETURN_IF_ERROR(expect_dim("o", p.o, d_dim, "v", p.v, d_dim, "head_dim_v"));
  if (p.lse.defined()) {
    if (varlen) {  // [heads_q, total_q]
      FL_RETURN_IF_ERROR(expect_dim("lse", p.lse, 0, "q", p.q, 1, "heads_q"));
      FL_RETURN_IF_ERROR(expect_dim("lse", p.lse, 1, "q", p.q, 0, "total_q"));
    } else {  // [batch, heads_q, seqlen_q]
      FL_RETURN_IF_ERROR(expect_dim("lse", p.lse, 0, "q", p.q, 0, "batch"));
      FL_RETURN_IF_ERROR(expect_dim("lse", p.lse, 1, "q", p.q, 2, "heads_q"));
      FL_RETURN_IF_ERROR(expect_dim("lse", p.lse, 2, "q", p.q, 1, "seqlen_q"));
    }
  }
  if (backward) {
    FL_RETURN_IF_ERROR(expect_same_shape("dout", p.dout, "o", p.o));
    FL_RETURN_IF_ERROR(expect_same_shape("dq", p.dq, "q", p.q));
    FL_RETURN_IF_ERROR(expect_same_shape("dk", p.dk, "k", p.k));
    FL_RETURN_IF_ERROR(expect_same_shape("dv", p.dv, "v", p.v));
  }
  int64_t batch = 0;
  if (varlen) {
    if (p.cu_seqlens_q.shape[0] < 1) {
      return fail(ErrorCode::kShapeMismatch,
                  "cu_seqlens_q.shape[0] = 0, expected batch + 1 >= 1 entries");
    }
    FL_RETURN_IF_ERROR(expect_dim("cu_seqlens_k", p.cu_seqlens_k, 0, "cu_seqlens_q",
                                  p.cu_seqlens_q, 0, "batch + 1"));
    batch = p.cu_seqlens_q.shape[0] - 1;
  } else {
    batch = p.q.shape[0];
  }
  if (p.seqused_k.defined() && p.seqused_k.shape[0] != batch) {
    return fail(ErrorCode::kSequsedInvalid,
                "seqused_k.shape[0] = " + str(p.seqused_k.shape[0]) + " does not match batch = " +
                    str(batch) + (varlen ? " (cu_seqlens_q.shape[0] - 1)" : " (q.shape[0])"));
  }

  // ---- 6. heads and head dims.
  const int64_t heads_q = p.q.shape[h_dim];
  const int64_t heads_kv = p.k.shape[h_dim];
  const std::string hq_src = "q.shape[" + str(h_dim) + "]";
  const std::string hkv_src = "k.shape[" + str(h_dim) + "]";
  if (heads_kv == 0) {
    return fail(ErrorCode::kHeadsNotDivisible,
                "heads_kv = 0 (" + hkv_src + "): at least one key/value head is needed");
  }
  if (heads_q % heads_kv != 0) {
    return fail(ErrorCode::kHeadsNotDivisible,
                "heads_q = " + str(heads_q) + " (" + hq_src + ") is not a multiple of heads_kv = " +
                    str(heads_kv) + " (" + hkv_src + ")");
  }
  const int64_t head_dim = p.q.shape[d_dim];
  const int64_t head_dim_v = p.v.shape[d_dim];
  if (!valid_head_dim(head_dim)) {
    return fail(ErrorCode::kHeadDimInvalid,
                "head_dim = " + str(head_dim) + " (q.shape[" + str(d_dim) +
                    "]) is invalid: must be a multiple of 8 in [8, 256]");
  }
  if (!valid_head_dim(head_dim_v)) {
    return fail(ErrorCode::kHeadDimInvalid,
                "head_dim_v = " + str(head_dim_v) + " (v.shape[" + str(d_dim) +
                    "]) is invalid: must be a multiple of 8 in [8, 256]");
  }

  // ---- 7. strides and alignment.
  for (const Arg& a : args) {
    if (!a.t->defined()) continue;
    const int last = a.t->rank - 1;
    if (a.t->stride[last] != 1) {
      return fail(ErrorCode::kNotContiguous,
                  std::string(a.name) + ".stride[" + str(last) + "] = " + str(a.t->stride[last]) +
                      ": the last dimension must be contiguous (stride 1)");
    }
  }
  if (device.kind == DeviceKind::kCUDA) {
    for (const Arg& a : args) {
      if (a.kind != Kind::kFloating) continue;  // lse and metadata need no 16-byte alignment
      const uintptr_t addr = reinterpret_cast<uintptr_t>(a.t->data);
      if (addr % kAlignBytes != 0) {
        char hex[32];
        std::snprintf(hex, sizeof(hex), "%#llx", static_cast<unsigned long long>(addr));
        return fail(ErrorCode::kMisaligned, std::string(a.name) + ": data pointer " + hex +
                                                " on " + device_str(device) +
                                                " is not 16-byte aligned");
      }
      const int64_t elem = dtype_size(a.t->dtype);
      const int64_t elems_per_align = kAlignBytes / elem;  // elem divides 16 for every float type
      for (int i = 0; i + 1 < a.t->rank; ++i) {
        if (a.t->stride[i] % elems_per_align != 0) {
          int64_t bytes = 0;
          const std::string bytes_str = __builtin_mul_overflow(a.t->stride[i], elem, &bytes)
                                            ? std::string("more than 2^63")
                                            : str(bytes);
          return fail(ErrorCode::kMisaligned,
                      std::string(a.name) + ".stride[" + str(i) + "] = " + str(a.t->stride[i]) +
                          " elements = " + bytes_str + " bytes (" + dtype_str(a.t->dtype) +
                          ") on " + device_str(device) + " is not a multiple of 16 bytes");
        }
      }
    }
  }

  // ---- 8. scalar options.
  if (p.mask != MaskType::kNoMask && p.mask != MaskType::kCausal &&
      p.mask != MaskType::kCausalBottomRight) {
    return fail(ErrorCode::kInvalidArgument,
                "mask = " + str(static_cast<int>(p.mask)) + " is not a known MaskType");
  }
  const bool causal = p.mask != MaskType::kNoMask;
  if (p.window_left < -1) {
    return fail(ErrorCode::kWindowInvalid,
                "window_left = " + str(p.window_left) + " (must be -1 for unbounded, or >= 0)");
  }
  if (p.window_right < -1) {
    return fail(ErrorCode::kWindowInvalid,
                "window_right = " + str(p.window_right) + " (must be -1 for unbounded, or >= 0)");
  }
  if (causal && p.window_right != -1 && p.window_right != 0) {
    return fail(ErrorCode::kWindowInvalid,
                "window_right = " + str(p.window_right) + " with mask = " +
                    mask_type_name(p.mask) + " (a causal mask allows only -1 or 0)");
  }
  double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  if (p.softmax_scale.has_value()) {
    scale = *p.softmax_scale;
    if (!std::isfinite(scale) || scale <= 0.0) {
      return fail(ErrorCode::kSoftmaxScaleInvalid,
                  "softmax_scale = " + str_double(scale) + " (must be finite and > 0)");
    }
  }
  if (!std::isfinite(p.softcap) || p.softcap < 0.0) {
    return fail(ErrorCode::kSoftcapInvalid,
                "softcap = " + str_double(p.softcap) + " (must be finite and >= 0; 0 disables)");
  }
  if (!(p.dropout_p == 0.0)) {  // also catches NaN
    return fail(ErrorCode::kDropoutUnsupported,
                "dropout_p = " + str_double(p.dropout_p) + " (dropout is not supported; must be 0)");
  }
  if (p.max_seqlen_q < 0) {
    return fail(ErrorCode::kInvalidArgument,
                "max_seqlen_q = " + str(p.max_seqlen_q) + " (must be >= 0; 0 = compute it)");
  }
  if (p.max_seqlen_k < 0) {
    return fail(ErrorCode::kInvalidArgument,
                "max_seqlen_k = " + str(p.max_seqlen_k) + " (must be >= 0; 0 = compute it)");
  }

  // ---- 9. metadata contents.
  const int64_t total_q = varlen ? p.q.shape[0] : batch * p.q.shape[1];
  const int64_t total_k = varlen ? p.k.shape[0] : batch * p.k.shape[1];
  int64_t seqlen_q = varlen ? p.max_seqlen_q : p.q.shape[1];
  int64_t seqlen_k = varlen ? p.max_seqlen_k : p.k.shape[1];
  std::vector<int32_t> cu_k;  // host copy of cu_seqlens_k when read
  if (varlen && p.check_metadata_values) {
    std::vector<int32_t> cu_q;
    int64_t longest_q = 0, longest_k = 0;
    FL_RETURN_IF_ERROR(read_int32("cu_seqlens_q", p.cu_seqlens_q, &cu_q));
    FL_RETURN_IF_ERROR(
        check_cu_seqlens("cu_seqlens_q", cu_q, total_q, "total_q (q.shape[0])", &longest_q));
    FL_RETURN_IF_ERROR(read_int32("cu_seqlens_k", p.cu_seqlens_k, &cu_k));
    FL_RETURN_IF_ERROR(
        check_cu_seqlens("cu_seqlens_k", cu_k, total_k, "total_k (k.shape[0])", &longest_k));
    if (p.max_seqlen_q > 0 && p.max_seqlen_q < longest_q) {
      return fail(ErrorCode::kCuSeqlensInvalid,
                  "max_seqlen_q = " + str(p.max_seqlen_q) +
                      " is smaller than the longest query sequence in cu_seqlens_q (" +
                      str(longest_q) + ")");
    }
    if (p.max_seqlen_k > 0 && p.max_seqlen_k < longest_k) {
      return fail(ErrorCode::kCuSeqlensInvalid,
                  "max_seqlen_k = " + str(p.max_seqlen_k) +
                      " is smaller than the longest key sequence in cu_seqlens_k (" +
                      str(longest_k) + ")");
    }
    if (seqlen_q == 0) seqlen_q = longest_q;
    if (seqlen_k == 0) seqlen_k = longest_k;
  } else if (varlen) {
    if (p.max_seqlen_q <= 0 || p.max_seqlen_k <= 0) {
      return fail(ErrorCode::kInvalidArgument,
                  "max_seqlen_q = " + str(p.max_seqlen_q) + ", max_seqlen_k = " +
                      str(p.max_seqlen_k) +
                      ": both must be > 0 for a varlen problem when check_metadata_values is "
                      "false (they cannot be computed without reading cu_seqlens)");
    }
  }
  if (p.seqused_k.defined() && p.check_metadata_values) {
    std::vector<int32_t> used;
    FL_RETURN_IF_ERROR(read_int32("seqused_k", p.seqused_k, &used));
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t len = varlen ? static_cast<int64_t>(cu_k[b + 1]) - cu_k[b] : p.k.shape[1];
      const int32_t u = used[static_cast<size_t>(b)];
      if (u < 0 || u > len) {
        return fail(ErrorCode::kSequsedInvalid,
                    "seqused_k[" + str(b) + "] = " + str(u) + " is outside [0, " + str(len) +
                        "], the key length of sequence " + str(b) +
                        (varlen ? " (cu_seqlens_k[b + 1] - cu_seqlens_k[b])" : " (k.shape[1])"));
      }
    }
  }
#undef FL_RETURN_IF_ERROR

  if (info_out != nullptr) {
    ProblemInfo info;
    info.direction = direction;
    info.dtype = dtype;
    info.device = device;
    info.varlen = varlen;
    info.batch = batch;
    info.seqlen_q = seqlen_q;
    info.seqlen_k = seqlen_k;
    info.total_q = total_q;
    info.total_k = total_k;
    info.heads_q = heads_q;
    info.heads_kv = heads_kv;
    info.head_dim = head_dim;
    info.head_dim_v = head_dim_v;
    info.has_lse = p.lse.defined();
    info.has_seqused_k = p.seqused_k.defined();
    info.softmax_scale = scale;
    info.softcap = p.softcap;
    info.mask = p.mask;
    info.bottom_right = p.mask != MaskType::kCausal;
    info.window_left = p.window_left;
    info.window_right = causal ? 0 : p.window_right;
    info.deterministic = p.deterministic;
    *info_out = info;
  }
  return Status::Ok();
}

}  // namespace flashlane
