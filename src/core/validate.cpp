// validate.cpp: validate(), the one gate every public entry point passes before dispatch.
//
// It turns an AttentionProblem into a ProblemInfo or into a Status with a specific ErrorCode and a
// message naming the argument and its value. Checks run in phases, most basic first, so that a
// problem with several faults reports the one a caller should fix first. Each phase is one
// function check_<phase>(problem, Derived*), run in the order of kPhases below; Derived carries
// what the phases derive (device, dtype, batch, heads, head dims, scale, totals, sequence
// lengths) to the later phases and to fill_info():
//   1. presence     required tensors given, data pointers non-null;      kNullPointer,
//                   dlearnable_sink only with learnable_sink              kInvalidArgument
//   2. devices      every tensor on q's device                            kDeviceMismatch
//   3. dtypes       floating set, all equal to q, lse and sinks float32,  kUnsupportedDType, ...
//                   int32 metadata
//   4. ranks        bshd 4 / varlen 3 (lse 3 / 2, metadata and sinks 1)   kRankMismatch
//   5. shapes       non-negative, every dimension agreeing (sinks         kShapeMismatch
//                   [heads_q])
//   6. heads, head dims                                                   kHeadsNotDivisible, ...
//   7. strides      last dim contiguous (sinks: stride 1); CUDA base      kNotContiguous,
//                   pointers and strides of the data tensors 16-byte      kMisaligned
//                   aligned
//   8. options      mask, window, softmax_scale, softcap, dropout, max_seqlen
//   9. metadata     contents of cu_seqlens / seqused_k (host read or one synchronous cudaMemcpy)
// Only the tensors the direction uses are checked: forward ignores dout, dq, dk, dv and
// dlearnable_sink.
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
#include <exception>
#include <string>
#include <vector>

#include "flashlane/problem.h"
#include "core/validate_shared.h"

namespace flashlane {
namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kHeadDimMultiple = 8;
constexpr int64_t kAlignBytes = 16;  // TMA / vectorized loads need 16-byte aligned rows

/// One tensor argument as validation sees it.
enum class Kind { kFloating, kLse, kCuSeqlens, kSeqused, kSink };
struct Arg {
  const char* name;
  const TensorView* t;
  bool required;
  Kind kind;
};

using detail::device_str;
using detail::dtype_str;
using detail::fail;
using detail::is_floating;
using detail::shape_str;
using detail::str;
using detail::str_double;

const char* direction_str(Direction d) { return d == Direction::kForward ? "forward" : "backward"; }

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

/// Sizes the host copy of a metadata tensor. Its shape is the caller's claim, so a copy too large
/// for the host is an error Status, never an exception out of validate().
Status allocate_host_copy(const char* name, int64_t n, std::vector<int32_t>* out) {
  try {
    out->assign(static_cast<size_t>(n), 0);
  } catch (const std::exception&) {  // std::bad_alloc, std::length_error
    return fail(ErrorCode::kInvalidArgument,
                std::string(name) + ".shape[0] = " + str(n) +
                    ": cannot allocate a host copy of that many int32 values to check them");
  }
  return Status::Ok();
}

/// Copies the int32 values of a rank-1 contiguous metadata tensor to the host. Host tensors are
/// read directly; CUDA tensors with one synchronous cudaMemcpy after checking that the pointer
/// really is memory the runtime can copy from (a host pointer labelled CUDA must not be read as
/// device memory, and vice versa). The host copy is allocated only after that check, so a CUDA
/// label on a pointer that is not CUDA memory costs no allocation of the size its shape claims.
Status read_int32(const char* name, const TensorView& t, std::vector<int32_t>* out) {
  const int64_t n = t.shape[0];
  out->clear();
  if (n == 0) return Status::Ok();
  const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
  if (t.device.kind == DeviceKind::kCPU) {
    if (Status st = allocate_host_copy(name, n, out); !st.ok()) return st;
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
  if (Status st = allocate_host_copy(name, n, out); !st.ok()) return st;
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

/// What the phases derive, in phase order. Each phase reads what the earlier ones set and adds
/// its own part; fill_info() copies the result into ProblemInfo.
struct Derived {
  Direction direction = Direction::kForward;
  bool backward = false;
  bool varlen = false;    // cu_seqlens_q given
  std::vector<Arg> args;  // the tensors this direction uses, in checking order
  // 2. devices, 3. dtypes
  Device device{};
  DType dtype = DType::kFloat16;
  // 5. shapes: dimension indices of the data tensors in this layout, and the batch
  int s_dim = 1;  // seqlen (bshd) or total (varlen)
  int h_dim = 2;  // heads
  int d_dim = 3;  // head dim
  int64_t batch = 0;
  // 6. heads and head dims
  int64_t heads_q = 0, heads_kv = 0, head_dim = 0, head_dim_v = 0;
  // 8. options
  bool causal = false;
  double scale = 0.0;  // resolved softmax_scale
  // 9. metadata
  int64_t total_q = 0, total_k = 0;
  int64_t seqlen_q = 0, seqlen_k = 0;
  std::vector<int32_t> cu_k;  // host copy of cu_seqlens_k when its values were read
};

/// The tensor arguments of `d.direction`, in the order every phase checks them.
std::vector<Arg> collect_args(const AttentionProblem& p, const Derived& d) {
  std::vector<Arg> args = {
      {"q", &p.q, true, Kind::kFloating},
      {"k", &p.k, true, Kind::kFloating},
      {"v", &p.v, true, Kind::kFloating},
      {"o", &p.o, true, Kind::kFloating},
      {"lse", &p.lse, d.backward, Kind::kLse},
  };
  if (d.backward) {
    args.push_back({"dout", &p.dout, true, Kind::kFloating});
    args.push_back({"dq", &p.dq, true, Kind::kFloating});
    args.push_back({"dk", &p.dk, true, Kind::kFloating});
    args.push_back({"dv", &p.dv, true, Kind::kFloating});
  }
  args.push_back({"learnable_sink", &p.learnable_sink, false, Kind::kSink});
  if (d.backward) args.push_back({"dlearnable_sink", &p.dlearnable_sink, false, Kind::kSink});
  args.push_back({"cu_seqlens_q", &p.cu_seqlens_q, false, Kind::kCuSeqlens});
  args.push_back({"cu_seqlens_k", &p.cu_seqlens_k, d.varlen, Kind::kCuSeqlens});
  args.push_back({"seqused_k", &p.seqused_k, false, Kind::kSeqused});
  return args;
}

// ---- 1. presence: required tensors given, no null data pointers.
Status check_presence(const AttentionProblem& p, Derived* d) {
  if (!d->varlen && p.cu_seqlens_k.defined()) {
    return fail(ErrorCode::kInvalidArgument,
                "cu_seqlens_k is given but cu_seqlens_q is not: the varlen layout needs both, the "
                "bshd layout neither");
  }
  if (d->backward && p.dlearnable_sink.defined() && !p.learnable_sink.defined()) {
    return fail(ErrorCode::kInvalidArgument,
                "dlearnable_sink is given but learnable_sink is not: the sink gradient needs the "
                "sinks of the forward");
  }
  for (const Arg& a : d->args) {
    if (!a.t->defined()) {
      if (!a.required) continue;
      if (a.kind == Kind::kCuSeqlens) {
        return fail(ErrorCode::kNullPointer,
                    std::string(a.name) +
                        ": not given, but required when cu_seqlens_q is given (varlen layout)");
      }
      return fail(ErrorCode::kNullPointer, std::string(a.name) + ": not given, but required for " +
                                               direction_str(d->direction));
    }
    if (a.t->data == nullptr) {
      return fail(ErrorCode::kNullPointer, std::string(a.name) + ": data pointer is null");
    }
  }
  // From here on, a tensor is "present" iff defined() (and then its data pointer is non-null).
  return Status::Ok();
}

// ---- 2. devices: q's device is a real one, and every tensor is on it.
Status check_devices(const AttentionProblem& p, Derived* d) {
  return detail::check_tensors_on_q_device(p.q, d->args, &d->device);
}

// ---- 3. dtypes: unsupported dtypes first, then disagreement with q.
Status check_dtypes(const AttentionProblem& p, Derived* d) {
  for (const Arg& a : d->args) {
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
      case Kind::kSink:
        if (a.t->dtype != DType::kFloat32) {
          return fail(ErrorCode::kUnsupportedDType,
                      got + " is not supported (" + a.name + " is float32 [heads_q])");
        }
        break;
    }
  }
  const DType dtype = p.q.dtype;
  for (const Arg& a : d->args) {  // every floating argument is required, hence present
    if (a.kind == Kind::kFloating && a.t->dtype != dtype) {
      return fail(ErrorCode::kDTypeMismatch, std::string(a.name) + ".dtype = " +
                                                 dtype_str(a.t->dtype) +
                                                 " does not match q.dtype = " + dtype_str(dtype));
    }
  }
  d->dtype = dtype;
  return Status::Ok();
}

// ---- 4. ranks: bshd 4 / varlen 3; lse 3 / 2; metadata 1.
Status check_ranks(const AttentionProblem&, Derived* d) {
  const bool varlen = d->varlen;
  for (const Arg& a : d->args) {
    if (!a.t->defined()) continue;
    int want = 1;
    std::string layout;
    switch (a.kind) {
      case Kind::kFloating:
        want = varlen ? 3 : 4;
        layout = varlen ? "varlen layout [total, heads, head_dim]"
                        : "bshd layout [batch, seqlen, heads, head_dim]";
        break;
      case Kind::kLse:
        want = varlen ? 2 : 3;
        layout = varlen ? "varlen lse [heads_q, total_q]" : "bshd lse [batch, heads_q, seqlen_q]";
        break;
      case Kind::kCuSeqlens: layout = "[batch + 1]"; break;
      case Kind::kSeqused: layout = "[batch]"; break;
      case Kind::kSink: layout = "sinks [heads_q]"; break;
    }
    if (a.t->rank != want) {
      const ErrorCode code =
          a.kind == Kind::kSeqused ? ErrorCode::kSequsedInvalid : ErrorCode::kRankMismatch;
      return fail(code, std::string(a.name) + ".rank = " + str(a.t->rank) + " (shape " +
                            shape_str(*a.t) + "), expected " + str(want) + " for the " + layout);
    }
  }
  return Status::Ok();
}

/// Part of phase 5: every dimension of k, v, o, lse and the sinks agrees with q (or k), and each
/// gradient has the shape of what it differentiates. Rows are checked in order; the first
/// mismatch wins.
Status check_dims_agree(const AttentionProblem& p, const Derived& d) {
  struct Row {
    bool check;
    const char* name;
    const TensorView* t;
    int dim;
    const char* ref_name;
    const TensorView* ref;
    int ref_dim;
    const char* meaning;
  };
  const bool bshd = !d.varlen, varlen = d.varlen, lse = p.lse.defined();
  const bool sink = p.learnable_sink.defined();
  const bool dsink = d.backward && p.dlearnable_sink.defined();
  const int s = d.s_dim, h = d.h_dim, hd = d.d_dim;
  const char* seq_q = varlen ? "total_q" : "seqlen_q";
  const char* seq_k = varlen ? "total_k" : "seqlen_k";
  const Row rows[] = {
      {bshd, "k", &p.k, 0, "q", &p.q, 0, "batch"},
      {true, "k", &p.k, hd, "q", &p.q, hd, "head_dim"},
      {bshd, "v", &p.v, 0, "k", &p.k, 0, "batch"},
      {true, "v", &p.v, s, "k", &p.k, s, seq_k},
      {true, "v", &p.v, h, "k", &p.k, h, "heads_kv"},
      {bshd, "o", &p.o, 0, "q", &p.q, 0, "batch"},
      {true, "o", &p.o, s, "q", &p.q, s, seq_q},
      {true, "o", &p.o, h, "q", &p.q, h, "heads_q"},
      {true, "o", &p.o, hd, "v", &p.v, hd, "head_dim_v"},
      {lse && varlen, "lse", &p.lse, 0, "q", &p.q, 1, "heads_q"},  // [heads_q, total_q]
      {lse && varlen, "lse", &p.lse, 1, "q", &p.q, 0, "total_q"},
      {lse && bshd, "lse", &p.lse, 0, "q", &p.q, 0, "batch"},  // [batch, heads_q, seqlen_q]
      {lse && bshd, "lse", &p.lse, 1, "q", &p.q, 2, "heads_q"},
      {lse && bshd, "lse", &p.lse, 2, "q", &p.q, 1, "seqlen_q"},
      {sink, "learnable_sink", &p.learnable_sink, 0, "q", &p.q, h, "heads_q"},
      {dsink, "dlearnable_sink", &p.dlearnable_sink, 0, "q", &p.q, h, "heads_q"},
  };
  for (const Row& r : rows) {
    if (!r.check) continue;
    Status st = expect_dim(r.name, *r.t, r.dim, r.ref_name, *r.ref, r.ref_dim, r.meaning);
    if (!st.ok()) return st;
  }
  if (!d.backward) return Status::Ok();
  struct Same {
    const char* name;
    const TensorView* t;
    const char* ref_name;
    const TensorView* ref;
  };
  const Same grads[] = {
      {"dout", &p.dout, "o", &p.o}, {"dq", &p.dq, "q", &p.q},
      {"dk", &p.dk, "k", &p.k},     {"dv", &p.dv, "v", &p.v},
  };
  for (const Same& g : grads) {
    Status st = expect_same_shape(g.name, *g.t, g.ref_name, *g.ref);
    if (!st.ok()) return st;
  }
  return Status::Ok();
}

// ---- 5. shapes: non-negative, every dimension agreeing, batch from q or cu_seqlens.
Status check_shapes(const AttentionProblem& p, Derived* d) {
  for (const Arg& a : d->args) {
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
  d->s_dim = d->varlen ? 0 : 1;
  d->h_dim = d->varlen ? 1 : 2;
  d->d_dim = d->varlen ? 2 : 3;
  if (Status st = check_dims_agree(p, *d); !st.ok()) return st;
  if (d->varlen) {
    if (p.cu_seqlens_q.shape[0] < 1) {
      return fail(ErrorCode::kShapeMismatch,
                  "cu_seqlens_q.shape[0] = 0, expected batch + 1 >= 1 entries");
    }
    Status st = expect_dim("cu_seqlens_k", p.cu_seqlens_k, 0, "cu_seqlens_q", p.cu_seqlens_q, 0,
                           "batch + 1");
    if (!st.ok()) return st;
    d->batch = p.cu_seqlens_q.shape[0] - 1;
  } else {
    d->batch = p.q.shape[0];
  }
  if (p.seqused_k.defined() && p.seqused_k.shape[0] != d->batch) {
    return fail(ErrorCode::kSequsedInvalid,
                "seqused_k.shape[0] = " + str(p.seqused_k.shape[0]) + " does not match batch = " +
                    str(d->batch) + (d->varlen ? " (cu_seqlens_q.shape[0] - 1)" : " (q.shape[0])"));
  }
  return Status::Ok();
}

// ---- 6. heads and head dims: heads_q a multiple of heads_kv > 0; head dims in 8..256 by 8.
Status check_heads(const AttentionProblem& p, Derived* d) {
  const int h_dim = d->h_dim, d_dim = d->d_dim;
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
  d->heads_q = heads_q;
  d->heads_kv = heads_kv;
  d->head_dim = head_dim;
  d->head_dim_v = head_dim_v;
  return Status::Ok();
}

/// Part of phase 7: a floating tensor on a CUDA device has a 16-byte aligned base pointer and
/// strides (all but the last) that are multiples of 16 bytes.
Status check_alignment(const Arg& a, const Device& device) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(a.t->data);
  if (addr % kAlignBytes != 0) {
    char hex[32];
    std::snprintf(hex, sizeof(hex), "%#llx", static_cast<unsigned long long>(addr));
    return fail(ErrorCode::kMisaligned, std::string(a.name) + ": data pointer " + hex + " on " +
                                            device_str(device) + " is not 16-byte aligned");
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
                      " elements = " + bytes_str + " bytes (" + dtype_str(a.t->dtype) + ") on " +
                      device_str(device) + " is not a multiple of 16 bytes");
    }
  }
  return Status::Ok();
}

// ---- 7. strides: last dimension contiguous everywhere; CUDA data tensors 16-byte aligned.
Status check_strides(const AttentionProblem&, Derived* d) {
  for (const Arg& a : d->args) {
    if (!a.t->defined()) continue;
    const int last = a.t->rank - 1;
    if (a.t->stride[last] != 1) {
      return fail(ErrorCode::kNotContiguous,
                  std::string(a.name) + ".stride[" + str(last) + "] = " + str(a.t->stride[last]) +
                      ": the last dimension must be contiguous (stride 1)");
    }
  }
  if (d->device.kind != DeviceKind::kCUDA) return Status::Ok();
  for (const Arg& a : d->args) {
    if (a.kind != Kind::kFloating) continue;  // lse and metadata need no 16-byte alignment
    if (Status st = check_alignment(a, d->device); !st.ok()) return st;
  }
  return Status::Ok();
}

// ---- 8. scalar options: mask, window, softmax_scale, softcap, dropout, max_seqlen.
Status check_options(const AttentionProblem& p, Derived* d) {
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
  double scale = 1.0 / std::sqrt(static_cast<double>(d->head_dim));
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
  d->causal = causal;
  d->scale = scale;
  return Status::Ok();
}

/// Part of phase 9 (varlen): reads and checks cu_seqlens_q / cu_seqlens_k when values are
/// checked (else requires both max_seqlen bounds) and resolves seqlen_q / seqlen_k.
Status check_cu_seqlens_values(const AttentionProblem& p, Derived* d) {
  if (!p.check_metadata_values) {
    if (p.max_seqlen_q <= 0 || p.max_seqlen_k <= 0) {
      return fail(ErrorCode::kInvalidArgument,
                  "max_seqlen_q = " + str(p.max_seqlen_q) + ", max_seqlen_k = " +
                      str(p.max_seqlen_k) +
                      ": both must be > 0 for a varlen problem when check_metadata_values is "
                      "false (they cannot be computed without reading cu_seqlens)");
    }
    return Status::Ok();
  }
  std::vector<int32_t> cu_q;
  int64_t longest_q = 0, longest_k = 0;
  Status st = read_int32("cu_seqlens_q", p.cu_seqlens_q, &cu_q);
  if (st.ok()) {
    st = check_cu_seqlens("cu_seqlens_q", cu_q, d->total_q, "total_q (q.shape[0])", &longest_q);
  }
  if (st.ok()) st = read_int32("cu_seqlens_k", p.cu_seqlens_k, &d->cu_k);
  if (st.ok()) {
    st = check_cu_seqlens("cu_seqlens_k", d->cu_k, d->total_k, "total_k (k.shape[0])", &longest_k);
  }
  if (!st.ok()) return st;
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
  if (d->seqlen_q == 0) d->seqlen_q = longest_q;
  if (d->seqlen_k == 0) d->seqlen_k = longest_k;
  return Status::Ok();
}

/// Part of phase 9: every seqused_k[b] lies in [0, key length of sequence b] (values checked).
Status check_seqused_values(const AttentionProblem& p, const Derived& d) {
  std::vector<int32_t> used;
  if (Status st = read_int32("seqused_k", p.seqused_k, &used); !st.ok()) return st;
  for (int64_t b = 0; b < d.batch; ++b) {
    const int64_t len = d.varlen ? static_cast<int64_t>(d.cu_k[b + 1]) - d.cu_k[b] : p.k.shape[1];
    const int32_t u = used[static_cast<size_t>(b)];
    if (u < 0 || u > len) {
      return fail(ErrorCode::kSequsedInvalid,
                  "seqused_k[" + str(b) + "] = " + str(u) + " is outside [0, " + str(len) +
                      "], the key length of sequence " + str(b) +
                      (d.varlen ? " (cu_seqlens_k[b + 1] - cu_seqlens_k[b])" : " (k.shape[1])"));
    }
  }
  return Status::Ok();
}

// ---- 9. metadata: totals and sequence lengths; contents of cu_seqlens / seqused_k.
Status check_metadata(const AttentionProblem& p, Derived* d) {
  d->total_q = d->varlen ? p.q.shape[0] : d->batch * p.q.shape[1];
  d->total_k = d->varlen ? p.k.shape[0] : d->batch * p.k.shape[1];
  d->seqlen_q = d->varlen ? p.max_seqlen_q : p.q.shape[1];
  d->seqlen_k = d->varlen ? p.max_seqlen_k : p.k.shape[1];
  if (d->varlen) {
    if (Status st = check_cu_seqlens_values(p, d); !st.ok()) return st;
  }
  if (p.seqused_k.defined() && p.check_metadata_values) return check_seqused_values(p, *d);
  return Status::Ok();
}

/// The ProblemInfo of a problem that passed every phase.
ProblemInfo fill_info(const AttentionProblem& p, const Derived& d) {
  ProblemInfo info;
  info.direction = d.direction;
  info.dtype = d.dtype;
  info.device = d.device;
  info.varlen = d.varlen;
  info.kv_layout = d.varlen ? KvLayout::kVarlenPacked : KvLayout::kDense;
  info.batch = d.batch;
  info.seqlen_q = d.seqlen_q;
  info.seqlen_k = d.seqlen_k;
  info.total_q = d.total_q;
  info.total_k = d.total_k;
  info.heads_q = d.heads_q;
  info.heads_kv = d.heads_kv;
  info.head_dim = d.head_dim;
  info.head_dim_v = d.head_dim_v;
  info.has_lse = p.lse.defined();
  info.has_seqused_k = p.seqused_k.defined();
  info.softmax_scale = d.scale;
  info.softcap = p.softcap;
  info.mask = p.mask;
  info.bottom_right = p.mask != MaskType::kCausal;
  info.window_left = p.window_left;
  info.window_right = d.causal ? 0 : p.window_right;
  info.deterministic = p.deterministic;
  info.has_sink = p.learnable_sink.defined();
  info.has_dsink = d.backward && p.dlearnable_sink.defined();
  return info;
}

/// The phases in the order of the header comment: the first failing one gives the Status.
using Phase = Status (*)(const AttentionProblem&, Derived*);
constexpr Phase kPhases[] = {check_presence, check_devices, check_dtypes,
                             check_ranks,    check_shapes,  check_heads,
                             check_strides,  check_options, check_metadata};

}  // namespace

namespace detail {

Status read_int32_metadata(const char* name, const TensorView& t, std::vector<int32_t>* out) {
  return read_int32(name, t, out);
}

Status check_cuda_alignment(const char* name, const TensorView& t, const Device& device) {
  return check_alignment(Arg{name, &t, true, Kind::kFloating}, device);
}

}  // namespace detail

Status validate(const AttentionProblem& p, Direction direction, ProblemInfo* info_out) {
  if (direction != Direction::kForward && direction != Direction::kBackward) {
    return fail(ErrorCode::kInvalidArgument,
                "direction = " + str(static_cast<int>(direction)) +
                    " is not forward or backward (KV-cache calls: validate_kvcache)");
  }
  Derived d;
  d.direction = direction;
  d.backward = direction == Direction::kBackward;
  d.varlen = p.cu_seqlens_q.defined();
  d.args = collect_args(p, d);
  for (const Phase phase : kPhases) {
    if (Status st = phase(p, &d); !st.ok()) return st;
  }
  if (info_out != nullptr) *info_out = fill_info(p, d);
  return Status::Ok();
}

}  // namespace flashlane
