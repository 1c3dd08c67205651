// Random validation fuzz test: a million random problems, each a small valid bshd or varlen
// problem (with or without attention sinks) over real host buffers with 0..3 random fields
// mutated (ranks, shapes, strides,
// dtypes, data pointers, devices, metadata contents, windows, masks, scalars, flags,
// direction). For every problem validate() must not throw and must return Ok or a declared
// ErrorCode with a message, leaving `info` untouched on error; it must return Ok exactly when
// the problem keeps the rules of include/flashlane/problem.h (spec_violation(), an independent
// statement of them; left open only where the CUDA runtime decides), and on Ok ProblemInfo must
// be consistent with the problem (check_ok_info()). A subset (every kDispatchEvery-th problem)
// also goes through the public flashlane::forward / backward on strict reference_cpu with every
// buffer filled with a canary byte: on error nothing may change and the Status is validate()'s;
// on Ok the call runs (host) or is refused with its tag (CUDA) and never writes an input.
//
// Memory rules the generator keeps (validation never reads q/k/v/o/lse/gradient data, only
// cu_seqlens / seqused_k, and only when check_metadata_values is set and they are host tensors):
//   - a host metadata tensor that validation may read points into a real host buffer that holds
//     at least shape[0] int32 values (legalize_metadata());
//   - data tensors point into real buffers sized for what their shape and strides claim when
//     that fits in kMaxBackedBytes; otherwise (or by mutation) to a null or fake address, and
//     such a problem is never handed to the reference, which would read it (not_runnable()).
// The seed is fixed (kSeed) and printed; a failure prints the problem and its mutations.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "flashlane/flashlane.h"

namespace fl = flashlane;
using fl::AttentionProblem;
using fl::Device;
using fl::DeviceKind;
using fl::Direction;
using fl::DType;
using fl::ErrorCode;
using fl::MaskType;
using fl::ProblemInfo;
using fl::Status;
using fl::TensorView;

namespace {

constexpr uint64_t kSeed = 0x5EEDF1A5C0DE2024ull;
constexpr int64_t kProblems = 1'000'000;
constexpr int64_t kDispatchEvery = 50;             // 20,000 forward / backward calls
constexpr int64_t kMaxBackedBytes = int64_t{1} << 18;  // larger claimed extents get fake pointers
constexpr int64_t kMaxMetaEntries = int64_t{1} << 16;  // host metadata beyond this is legalized
constexpr int64_t kSlackBytes = 64;                // after every buffer (odd pointer offsets)
constexpr uintptr_t kBufferAlign = 64;
constexpr unsigned char kCanary = 0xA5;
constexpr int kMaxReportedFailures = 20;

constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// Every code declared in include/flashlane/status.h.
constexpr ErrorCode kDeclaredCodes[] = {
    ErrorCode::kOk,
    ErrorCode::kNullPointer,
    ErrorCode::kUnsupportedDType,
    ErrorCode::kDTypeMismatch,
    ErrorCode::kRankMismatch,
    ErrorCode::kShapeMismatch,
    ErrorCode::kHeadsNotDivisible,
    ErrorCode::kHeadDimInvalid,
    ErrorCode::kNotContiguous,
    ErrorCode::kMisaligned,
    ErrorCode::kCuSeqlensInvalid,
    ErrorCode::kSequsedInvalid,
    ErrorCode::kWindowInvalid,
    ErrorCode::kSoftmaxScaleInvalid,
    ErrorCode::kSoftcapInvalid,
    ErrorCode::kDeviceMismatch,
    ErrorCode::kDropoutUnsupported,
    ErrorCode::kInvalidArgument,
    ErrorCode::kCacheSeqlensInvalid,
    ErrorCode::kCacheOverflow,
    ErrorCode::kPageTableInvalid,
    ErrorCode::kCacheBatchIdxInvalid,
    ErrorCode::kRotaryInvalid,
    ErrorCode::kBackendInapplicable,
    ErrorCode::kNoApplicableBackend,
    ErrorCode::kCudaError,
    ErrorCode::kCudaErrorPending,
    ErrorCode::kInternal,
};

bool is_declared(ErrorCode code) {
  return std::find(std::begin(kDeclaredCodes), std::end(kDeclaredCodes), code) !=
         std::end(kDeclaredCodes);
}

/// What validate() itself may return: argument validation (1xx), or kCudaError when reading
/// CUDA metadata fails (the status.h sections).
bool is_validation_code(ErrorCode code) {
  const int c = static_cast<int>(code);
  return (c >= 100 && c <= 121) || code == ErrorCode::kCudaError;
}

// ------------------------------------------------------------------------------------------------
// Randomness (integer arithmetic on mt19937_64 output: the same stream with every std library).

using Rng = std::mt19937_64;

int64_t rnd(Rng& r, int64_t lo, int64_t hi) {  // uniform in [lo, hi]
  return lo + static_cast<int64_t>(r() % static_cast<uint64_t>(hi - lo + 1));
}
/// Wrapping (two's complement) arithmetic, so that mutating extreme values is defined.
int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
int64_t wrap_neg(int64_t a) { return static_cast<int64_t>(uint64_t{0} - static_cast<uint64_t>(a)); }
int32_t clamp32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, kI32Min, kI32Max));
}
bool chance(Rng& r, int percent) { return static_cast<int>(r() % 100) < percent; }
template <class T>
T pick(Rng& r, std::initializer_list<T> values) {
  return *(values.begin() + r() % values.size());
}

// ------------------------------------------------------------------------------------------------
// One random problem and the memory behind it.

enum Tensor : int {
  kQ, kK, kV, kO, kLse, kDout, kDq, kDk, kDv, kSink, kDsink, kCuQ, kCuK, kUsed, kNumTensors
};
constexpr const char* kTensorNames[kNumTensors] = {
    "q",  "k",  "v",  "o",  "lse", "dout", "dq", "dk", "dv", "learnable_sink", "dlearnable_sink",
    "cu_seqlens_q", "cu_seqlens_k", "seqused_k"};
bool is_meta(int i) { return i >= kCuQ; }
bool is_sink(int i) { return i == kSink || i == kDsink; }

TensorView& view(AttentionProblem& p, int i) {
  TensorView* const views[kNumTensors] = {
      &p.q,  &p.k,  &p.v,  &p.o,  &p.lse, &p.dout, &p.dq, &p.dk, &p.dv, &p.learnable_sink,
      &p.dlearnable_sink, &p.cu_seqlens_q, &p.cu_seqlens_k, &p.seqused_k};
  return *views[i];
}
const TensorView& view(const AttentionProblem& p, int i) {
  return view(const_cast<AttentionProblem&>(p), i);
}

/// Where a tensor's data pointer goes when the problem is materialized.
enum class Ptr { kReal, kNull, kFake };

enum Mutation : int {
  kMutRank, kMutShape, kMutStride, kMutDType, kMutDevice, kMutAllDevices, kMutPointer,
  kMutRemove, kMutGive, kMutCuSeqlens, kMutSequsedValues, kMutWindow, kMutMask, kMutScale,
  kMutSoftcap, kMutDropout, kMutMaxSeqlen, kMutCheckValues, kMutDeterministic, kMutDirection,
  kMutCoherentDim, kNumMutations
};
constexpr const char* kMutationNames[kNumMutations] = {
    "rank",          "shape",         "stride",      "dtype",      "device",         "all_devices",
    "pointer",       "remove",        "give",        "cu_seqlens", "seqused_values", "window",
    "mask",          "softmax_scale", "softcap",     "dropout",    "max_seqlen",     "check_values",
    "deterministic", "direction",     "coherent_dim"};

struct Case {
  AttentionProblem p;
  Direction dir = Direction::kForward;
  std::array<TensorView, kNumTensors> tmpl;  // the valid view of every tensor, given or not
  std::array<Ptr, kNumTensors> ptr{};
  std::array<int64_t, kNumTensors> ptr_offset{};  // bytes added to a real or fake pointer
  std::array<std::vector<unsigned char>, kNumTensors> storage;
  std::array<unsigned char*, kNumTensors> start{};  // kBufferAlign-aligned start in storage
  std::array<int64_t, kNumTensors> start_bytes{};   // usable bytes from start
  std::array<bool, kNumTensors> backed{};  // the buffer holds everything the view claims
  std::array<std::vector<int32_t>, 3> meta;  // contents of cu_seqlens_q, cu_seqlens_k, seqused_k
  int num_mutations = 0;
  std::array<int, 8> mutations{};  // the first num_mutations were applied
};

std::vector<int32_t>& meta_of(Case& c, int i) { return c.meta[i - kCuQ]; }

DType random_floating(Rng& r) {
  return pick(r, {DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kFloat64});
}

/// A view of `shape` with random valid strides: row-major, or (data tensors) heads before tokens
/// in memory (torch's transpose), with optional padding after each level: 8 elements for data
/// tensors (keeps every stride a multiple of 16 bytes, as CUDA tensors need), 1..3 for lse.
TensorView strided_view(Rng& r, DType dtype, std::initializer_list<int64_t> shape, bool data) {
  TensorView t = TensorView::contiguous(nullptr, dtype, shape, Device::cpu());
  const int n = t.rank;
  std::array<int, TensorView::kMaxRank> order{};  // memory order, outermost first
  for (int i = 0; i < n; ++i) order[i] = i;
  if (data && n >= 3 && chance(r, 25)) std::swap(order[n - 3], order[n - 2]);  // tokens <-> heads
  int64_t stride = 1;
  for (int k = n - 1; k >= 0; --k) {
    const int d = order[k];
    t.stride[d] = stride;
    const int64_t pad = chance(r, 20) ? (data ? 8 : rnd(r, 1, 3)) : 0;  // after each level
    stride = stride * std::max<int64_t>(t.shape[d], 1) + pad;
  }
  return t;
}

void make_base(Case& c, Rng& r) {
  c.p = AttentionProblem{};
  c.dir = chance(r, 50) ? Direction::kForward : Direction::kBackward;
  const bool varlen = chance(r, 45);
  const DType dt = random_floating(r);
  const int64_t batch = rnd(r, 1, 3);
  const int64_t heads_kv = rnd(r, 1, 3), heads_q = heads_kv * rnd(r, 1, 3);
  const int64_t d = pick<int64_t>(r, {8, 16, 24, 32});
  const int64_t dv = chance(r, 70) ? d : pick<int64_t>(r, {8, 16, 32});
  std::vector<int32_t>& cu_q = c.meta[0];
  std::vector<int32_t>& cu_k = c.meta[1];
  std::vector<int32_t>& used = c.meta[2];
  cu_q.assign(1, 0);
  cu_k.assign(1, 0);
  used.clear();
  int64_t sq = rnd(r, 0, 6), sk = rnd(r, 0, 6), longest_q = 0, longest_k = 0;
  if (chance(r, 90)) sq = std::max<int64_t>(sq, 1);
  if (chance(r, 90)) sk = std::max<int64_t>(sk, 1);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t lq = varlen ? rnd(r, 0, 5) : sq, lk = varlen ? rnd(r, 0, 5) : sk;
    cu_q.push_back(static_cast<int32_t>(cu_q.back() + lq));
    cu_k.push_back(static_cast<int32_t>(cu_k.back() + lk));
    used.push_back(static_cast<int32_t>(rnd(r, 0, lk)));
    longest_q = std::max(longest_q, lq);
    longest_k = std::max(longest_k, lk);
  }
  const int64_t tq = cu_q.back(), tk = cu_k.back();
  auto& t = c.tmpl;
  if (varlen) {
    t[kQ] = strided_view(r, dt, {tq, heads_q, d}, true);
    t[kK] = strided_view(r, dt, {tk, heads_kv, d}, true);
    t[kV] = strided_view(r, dt, {tk, heads_kv, dv}, true);
    t[kO] = strided_view(r, dt, {tq, heads_q, dv}, true);
    t[kLse] = strided_view(r, DType::kFloat32, {heads_q, tq}, false);
    t[kDout] = strided_view(r, dt, {tq, heads_q, dv}, true);
    t[kDq] = strided_view(r, dt, {tq, heads_q, d}, true);
    t[kDk] = strided_view(r, dt, {tk, heads_kv, d}, true);
    t[kDv] = strided_view(r, dt, {tk, heads_kv, dv}, true);
  } else {
    t[kQ] = strided_view(r, dt, {batch, sq, heads_q, d}, true);
    t[kK] = strided_view(r, dt, {batch, sk, heads_kv, d}, true);
    t[kV] = strided_view(r, dt, {batch, sk, heads_kv, dv}, true);
    t[kO] = strided_view(r, dt, {batch, sq, heads_q, dv}, true);
    t[kLse] = strided_view(r, DType::kFloat32, {batch, heads_q, sq}, false);
    t[kDout] = strided_view(r, dt, {batch, sq, heads_q, dv}, true);
    t[kDq] = strided_view(r, dt, {batch, sq, heads_q, d}, true);
    t[kDk] = strided_view(r, dt, {batch, sk, heads_kv, d}, true);
    t[kDv] = strided_view(r, dt, {batch, sk, heads_kv, dv}, true);
  }
  t[kSink] = TensorView::contiguous(nullptr, DType::kFloat32, {heads_q}, Device::cpu());
  t[kDsink] = t[kSink];
  t[kCuQ] = TensorView::contiguous(nullptr, DType::kInt32, {batch + 1}, Device::cpu());
  t[kCuK] = t[kCuQ];
  t[kUsed] = TensorView::contiguous(nullptr, DType::kInt32, {batch}, Device::cpu());

  const bool backward = c.dir == Direction::kBackward;
  std::array<bool, kNumTensors> given{};
  for (int i : {kQ, kK, kV, kO}) given[i] = true;
  given[kLse] = backward || chance(r, 50);
  for (int i : {kDout, kDq, kDk, kDv}) given[i] = backward;
  given[kCuQ] = given[kCuK] = varlen;
  given[kUsed] = chance(r, 30);
  given[kSink] = chance(r, 30);
  given[kDsink] = backward && given[kSink] && chance(r, 70);
  for (int i = 0; i < kNumTensors; ++i) {
    view(c.p, i) = given[i] ? t[i] : TensorView{};
    c.ptr[i] = given[i] ? Ptr::kReal : Ptr::kNull;
    c.ptr_offset[i] = 0;
  }

  AttentionProblem& p = c.p;
  p.mask = pick(r, {MaskType::kNoMask, MaskType::kCausal, MaskType::kCausalBottomRight});
  p.window_left = chance(r, 50) ? -1 : rnd(r, 0, 6);
  p.window_right = p.mask != MaskType::kNoMask ? pick<int64_t>(r, {-1, 0})
                                               : (chance(r, 50) ? -1 : rnd(r, 0, 6));
  if (chance(r, 50)) p.softmax_scale = 0.01 + static_cast<double>(rnd(r, 0, 1000)) / 500.0;
  p.softcap = chance(r, 70) ? 0.0 : 0.5 + static_cast<double>(rnd(r, 0, 100)) / 2.0;
  p.deterministic = chance(r, 50);
  p.check_metadata_values = chance(r, 85);
  if (varlen) {
    const bool need = !p.check_metadata_values;
    p.max_seqlen_q = (need || chance(r, 50)) ? std::max<int64_t>(longest_q, 1) + rnd(r, 0, 3) : 0;
    p.max_seqlen_k = (need || chance(r, 50)) ? std::max<int64_t>(longest_k, 1) + rnd(r, 0, 3) : 0;
  } else if (chance(r, 20)) {
    p.max_seqlen_q = rnd(r, 0, 10);
    p.max_seqlen_k = rnd(r, 0, 10);
  }
  c.num_mutations = 0;
}

// ------------------------------------------------------------------------------------------------
// Mutations.

Device random_device(Rng& r) {
  switch (rnd(r, 0, 7)) {
    case 0: return Device::cpu();
    case 1: return Device::cuda(0);
    case 2: return Device::cuda(1);
    case 3: return Device::cuda(-1);
    case 4: return Device{DeviceKind::kCPU, 1};
    case 5: return Device{static_cast<DeviceKind>(2), 0};
    case 6: return Device{static_cast<DeviceKind>(-1), 0};
    default: return Device{static_cast<DeviceKind>(pick<int>(r, {7, 255, kI32Max})), -3};
  }
}

/// The tensors of a problem that carry a dimension, as (tensor, dim) pairs.
struct DimRef {
  int tensor;
  int dim;
};

/// The dimension of every data tensor that means `what` in this layout (0 batch or total_q
/// rows, 1 seqlen_q, 2 seqlen_k, 3 heads_q, 4 heads_kv, 5 head_dim, 6 head_dim_v).
std::vector<DimRef> dims_meaning(bool varlen, int what) {
  if (varlen) {
    switch (what) {
      case 0: case 1: return {{kQ, 0}, {kO, 0}, {kLse, 1}, {kDout, 0}, {kDq, 0}};
      case 2: return {{kK, 0}, {kV, 0}, {kDk, 0}, {kDv, 0}};
      case 3: return {{kQ, 1}, {kO, 1}, {kLse, 0}, {kDout, 1}, {kDq, 1}, {kSink, 0}, {kDsink, 0}};
      case 4: return {{kK, 1}, {kV, 1}, {kDk, 1}, {kDv, 1}};
      case 5: return {{kQ, 2}, {kK, 2}, {kDq, 2}, {kDk, 2}};
      default: return {{kV, 2}, {kO, 2}, {kDout, 2}, {kDv, 2}};
    }
  }
  switch (what) {
    case 0: return {{kQ, 0}, {kK, 0}, {kV, 0}, {kO, 0}, {kLse, 0}, {kDout, 0}, {kDq, 0},
                    {kDk, 0}, {kDv, 0}, {kUsed, 0}};
    case 1: return {{kQ, 1}, {kO, 1}, {kLse, 2}, {kDout, 1}, {kDq, 1}};
    case 2: return {{kK, 1}, {kV, 1}, {kDk, 1}, {kDv, 1}};
    case 3: return {{kQ, 2}, {kO, 2}, {kLse, 1}, {kDout, 2}, {kDq, 2}, {kSink, 0}, {kDsink, 0}};
    case 4: return {{kK, 2}, {kV, 2}, {kDk, 2}, {kDv, 2}};
    case 5: return {{kQ, 3}, {kK, 3}, {kDq, 3}, {kDk, 3}};
    default: return {{kV, 3}, {kO, 3}, {kDout, 3}, {kDv, 3}};
  }
}

int64_t random_extent(Rng& r, int64_t old) {
  return pick<int64_t>(r, {-1, -(int64_t{1} << 40), kI64Min, 0, 1, 2, 3, 7, 8, 9, 16, 64, 255,
                           256, 264, wrap_add(old, -1), wrap_add(old, 1), wrap_add(old, old),
                           int64_t{1} << 31,
                           int64_t{1} << 40, kI64Max});
}

void mutate(Case& c, Rng& r) {
  AttentionProblem& p = c.p;
  const int m = static_cast<int>(rnd(r, 0, kNumMutations - 1));
  if (c.num_mutations < static_cast<int>(c.mutations.size())) c.mutations[c.num_mutations++] = m;
  const int i = static_cast<int>(rnd(r, 0, kNumTensors - 1));
  TensorView& t = view(p, i);
  const bool varlen = p.cu_seqlens_q.defined();
  switch (m) {
    case kMutRank:
      t.rank = pick<int>(r, {-1, 0, 1, 2, 3, 4, 5, 8, kI32Min, kI32Max});
      break;
    case kMutShape: {
      const int d = static_cast<int>(rnd(r, 0, TensorView::kMaxRank - 1));
      t.shape[d] = random_extent(r, t.shape[d]);
      break;
    }
    case kMutStride: {
      const int d = static_cast<int>(rnd(r, 0, TensorView::kMaxRank - 1));
      const int64_t old = t.stride[d];
      t.stride[d] = pick<int64_t>(r, {0, -1, 1, 2, 3, 7, 8, 16, wrap_add(old, 1),
                                      wrap_add(old, old), wrap_neg(old),
                                      int64_t{1} << 40, -(int64_t{1} << 40), kI64Min, kI64Max});
      break;
    }
    case kMutDType:
      t.dtype = static_cast<DType>(pick<int>(r, {0, 1, 2, 3, 4, -1, 5, 6, 42, kI32Min, kI32Max}));
      break;
    case kMutDevice:
      t.device = random_device(r);
      break;
    case kMutAllDevices: {
      const Device dev = chance(r, 60) ? Device::cuda(0) : random_device(r);
      for (int j = 0; j < kNumTensors; ++j) view(p, j).device = dev;
      for (TensorView& tm : c.tmpl) tm.device = dev;
      break;
    }
    case kMutPointer:
      switch (rnd(r, 0, 3)) {
        case 0: c.ptr[i] = Ptr::kNull; break;
        case 1:
          c.ptr[i] = Ptr::kFake;
          c.ptr_offset[i] = pick<int64_t>(r, {0, 1, 2, 8, 16, 4096});
          break;
        default:
          c.ptr[i] = Ptr::kReal;
          c.ptr_offset[i] = pick<int64_t>(r, {1, 2, 3, 4, 6, 8, 12, 16, 32});
      }
      break;
    case kMutRemove:
      t = TensorView{};
      c.ptr[i] = Ptr::kNull;
      break;
    case kMutGive:
      t = c.tmpl[i];
      if (chance(r, 25)) t.shape[rnd(r, 0, std::max(t.rank, 1) - 1)] += rnd(r, -2, 2);
      c.ptr[i] = Ptr::kReal;
      c.ptr_offset[i] = 0;
      break;
    case kMutCuSeqlens: {
      std::vector<int32_t>& cu = c.meta[chance(r, 50) ? 0 : 1];
      const size_t n = cu.size();
      const size_t j = static_cast<size_t>(rnd(r, 0, static_cast<int64_t>(n) - 1));
      switch (rnd(r, 0, 5)) {
        case 0: cu[0] = pick<int32_t>(r, {1, -1, kI32Min, kI32Max}); break;  // not starting at 0
        case 1: cu[n - 1] = clamp32(int64_t{cu[n - 1]} + pick<int>(r, {-1, 1, 7})); break;  // end
        case 2:  // decreasing
          if (j > 0) cu[j] = clamp32(int64_t{cu[j - 1]} - rnd(r, 1, 3));
          else cu[n - 1] = -1;
          break;
        case 3: cu[j] = pick<int32_t>(r, {kI32Min, kI32Max, -1}); break;
        case 4: std::swap(cu[j], cu[n - 1 - j]); break;  // reversed pair (often decreasing)
        default: cu[j] = clamp32(int64_t{cu[j]} + pick<int>(r, {-1, 1})); break;
      }
      break;
    }
    case kMutSequsedValues: {
      std::vector<int32_t>& used = c.meta[2];
      if (used.empty()) break;
      const size_t b = static_cast<size_t>(rnd(r, 0, static_cast<int64_t>(used.size()) - 1));
      const int64_t len = int64_t{c.meta[1][b + 1]} - c.meta[1][b];
      const int64_t lk = c.tmpl[kK].shape[varlen ? 0 : 1];
      used[b] = clamp32(
          pick<int64_t>(r, {-1, 0, len, len + 1, lk, wrap_add(lk, 1), kI32Max, kI32Min}));
      break;
    }
    case kMutWindow: {
      const int64_t w = pick<int64_t>(r, {-5, -2, -1, 0, 1, 2, 7, 1000, int64_t{1} << 40, kI64Min,
                                          kI64Max});
      (chance(r, 50) ? p.window_left : p.window_right) = w;
      break;
    }
    case kMutMask:
      p.mask = static_cast<MaskType>(pick<int>(r, {0, 1, 2, 3, -1, 100}));
      break;
    case kMutScale: {
      const int k = static_cast<int>(rnd(r, 0, 11));
      if (k == 0) {
        p.softmax_scale.reset();
      } else {
        p.softmax_scale = pick<double>(r, {0.0, -0.0, -1.0, kNaN, kInf, -kInf, 0.125, 1e-300,
                                           std::numeric_limits<double>::denorm_min(), 1e308,
                                           std::numeric_limits<double>::max()});
      }
      break;
    }
    case kMutSoftcap:
      p.softcap = pick<double>(r, {0.0, -0.0, -1.0, kNaN, kInf, -kInf, 0.5, 30.0, 1e-300,
                                   std::numeric_limits<double>::max()});
      break;
    case kMutDropout:
      p.dropout_p = pick<double>(r, {0.0, -0.0, 0.1, 1.0, -1.0, kNaN, kInf});
      break;
    case kMutMaxSeqlen: {
      int64_t& ms = chance(r, 50) ? p.max_seqlen_q : p.max_seqlen_k;
      ms = pick<int64_t>(r, {-1, 0, 1, wrap_add(ms, -1), wrap_add(ms, 1), int64_t{1} << 40,
                             kI64Min, kI64Max});
      break;
    }
    case kMutCheckValues:
      p.check_metadata_values = !p.check_metadata_values;
      break;
    case kMutDeterministic:
      p.deterministic = !p.deterministic;
      break;
    case kMutDirection:
      if (chance(r, 90)) {
        c.dir = c.dir == Direction::kForward ? Direction::kBackward : Direction::kForward;
      } else {
        c.dir = static_cast<Direction>(pick<int>(r, {2, -1, 7}));
      }
      break;
    case kMutCoherentDim: {  // change one meaning (batch, seqlen, heads, head dim) everywhere
      const int what = static_cast<int>(rnd(r, 0, 6));
      const int64_t value = pick<int64_t>(r, {0, 1, 2, 4, 12, 16, 40, 256, 264, 512,
                                              int64_t{1} << 31, int64_t{1} << 40});
      for (const DimRef& ref : dims_meaning(varlen, what)) {
        view(p, ref.tensor).shape[ref.dim] = value;
        c.tmpl[ref.tensor].shape[ref.dim] = value;
      }
      break;
    }
    default:
      break;
  }
}

// ------------------------------------------------------------------------------------------------
// Materializing: buffers for what each view claims, and the legalizing of metadata reads.

/// The element offsets [lo, hi] a view can address (rank clamped to kMaxRank; a dimension of
/// extent <= 0 addresses nothing). False if the span does not fit in `limit` elements.
bool claimed_range(const TensorView& t, int64_t limit, int64_t* lo, int64_t* hi) {
  const int rank = std::clamp(t.rank, 0, TensorView::kMaxRank);
  __int128 l = 0, h = 0;
  for (int d = 0; d < rank; ++d) {
    if (t.shape[d] <= 0) {  // empty (or invalid): nothing to read
      *lo = *hi = 0;
      return true;
    }
  }
  for (int d = 0; d < rank; ++d) {
    const __int128 span = static_cast<__int128>(t.shape[d] - 1) * t.stride[d];
    (span < 0 ? l : h) += span;
    if (h - l > limit) return false;
  }
  *lo = static_cast<int64_t>(l);
  *hi = static_cast<int64_t>(h);
  return true;
}

/// True if validation may read this metadata tensor's values on the host (then its pointer must
/// be real memory holding shape[0] int32s).
bool host_read_possible(const Case& c, int i) {
  const TensorView& t = view(c.p, i);
  return c.p.check_metadata_values && t.device.kind == DeviceKind::kCPU && c.ptr[i] != Ptr::kNull;
}

void legalize_metadata(Case& c, Rng& r) {
  for (int i = kCuQ; i < kNumTensors; ++i) {
    if (!host_read_possible(c, i)) continue;
    TensorView& t = view(c.p, i);
    if (c.ptr[i] == Ptr::kFake) {
      c.ptr[i] = Ptr::kReal;  // a host pointer validation reads must be real
    }
    if (t.rank >= 1 && t.shape[0] > kMaxMetaEntries) {
      if (chance(r, 50)) {
        t.device = Device::cuda(0);  // keep the huge shape; validation asks the CUDA runtime
      } else {
        t.shape[0] = static_cast<int64_t>(meta_of(c, i).size());
      }
    }
  }
}

void* fake_address(int i, int64_t offset) {
  return reinterpret_cast<void*>((uintptr_t{1} << 44) + static_cast<uintptr_t>(i) * 0x1000000 +
                                 static_cast<uintptr_t>(offset));
}

/// One shared host buffer behind the data tensors of the problems that are only validated
/// (validation never reads or writes q/k/v/o/lse/gradient data; nothing else sees them).
unsigned char* shared_arena() {
  static std::vector<unsigned char> arena(
      static_cast<size_t>(kMaxBackedBytes + 2 * kSlackBytes) + kBufferAlign, kCanary);
  const uintptr_t raw = reinterpret_cast<uintptr_t>(arena.data());
  return reinterpret_cast<unsigned char*>((raw + kBufferAlign - 1) & ~(kBufferAlign - 1));
}

/// Gives every view its data pointer. Metadata always gets its own buffer (its contents, then
/// zeros). Data tensors get their own buffers filled with kCanary when `own_buffers` (problems
/// run through forward / backward), else a place in shared_arena().
void materialize(Case& c, bool own_buffers) {
  for (int i = 0; i < kNumTensors; ++i) {
    TensorView& t = view(c.p, i);
    c.backed[i] = false;
    if (c.ptr[i] == Ptr::kNull) {
      t.data = nullptr;
      continue;
    }
    if (c.ptr[i] == Ptr::kFake) {
      t.data = fake_address(i, c.ptr_offset[i]);
      continue;
    }
    const int elem = std::max(fl::dtype_size(t.dtype), 1);
    int64_t lo = 0, hi = 0, bytes = 0;
    bool fits = true;
    if (is_meta(i)) {
      // Read (by validation or the reference) only as rank 1, stride 1: shape[0] int32s.
      const int64_t entries = t.rank >= 1 ? std::max<int64_t>(t.shape[0], 0) : 0;
      fits = entries <= kMaxMetaEntries;
      bytes = 4 * std::max<int64_t>(entries, static_cast<int64_t>(meta_of(c, i).size()));
    } else {
      fits = claimed_range(t, kMaxBackedBytes / 8, &lo, &hi);
      bytes = (hi - lo + 1) * 8;  // 8: the widest element, whatever the dtype says
    }
    if (!fits) {  // never read by validation (legalized), never run (not backed)
      t.data = fake_address(i, c.ptr_offset[i]);
      continue;
    }
    const int64_t total = bytes + c.ptr_offset[i] + kSlackBytes;
    c.backed[i] = true;
    if (!is_meta(i) && !own_buffers) {
      c.start[i] = shared_arena();
      c.start_bytes[i] = 0;
      t.data = c.start[i] + (-lo) * elem + c.ptr_offset[i];
      continue;
    }
    c.storage[i].assign(static_cast<size_t>(total) + kBufferAlign, kCanary);
    const uintptr_t raw = reinterpret_cast<uintptr_t>(c.storage[i].data());
    c.start[i] = reinterpret_cast<unsigned char*>((raw + kBufferAlign - 1) & ~(kBufferAlign - 1));
    c.start_bytes[i] = total;
    if (is_meta(i)) {
      std::memset(c.start[i], 0, static_cast<size_t>(total));
      const std::vector<int32_t>& m = meta_of(c, i);
      std::memcpy(c.start[i] + c.ptr_offset[i], m.data(), m.size() * sizeof(int32_t));
      t.data = c.start[i] + c.ptr_offset[i];
    } else {
      t.data = c.start[i] + (-lo) * elem + c.ptr_offset[i];
    }
  }
}

void generate(Case& c, Rng& r, bool own_buffers) {
  make_base(c, r);
  const int n = static_cast<int>(rnd(r, 0, 3));
  for (int k = 0; k < n; ++k) mutate(c, r);
  legalize_metadata(c, r);
  materialize(c, own_buffers);
}

// ------------------------------------------------------------------------------------------------
// Descriptions for failure messages.

std::string device_text(const Device& d) {
  return std::to_string(static_cast<int>(d.kind)) + ":" + std::to_string(d.index);
}

std::string describe(const Case& c) {
  std::string s = "direction " + std::to_string(static_cast<int>(c.dir)) + ", mutations [";
  for (int k = 0; k < c.num_mutations; ++k) {
    s += (k ? ", " : "") + std::string(kMutationNames[c.mutations[k]]);
  }
  s += "]\n";
  for (int i = 0; i < kNumTensors; ++i) {
    const TensorView& t = view(c.p, i);
    if (!t.defined()) continue;
    char buf[96];
    std::snprintf(buf, sizeof(buf), "  %-13s rank %d dtype %d device %s data %p%s shape [",
                  kTensorNames[i], t.rank, static_cast<int>(t.dtype), device_text(t.device).c_str(),
                  t.data, c.backed[i] ? "" : " (unbacked)");
    s += buf;
    for (int d = 0; d < TensorView::kMaxRank; ++d) {
      s += (d ? "," : "") + std::to_string(t.shape[d]);
    }
    s += "] stride [";
    for (int d = 0; d < TensorView::kMaxRank; ++d) {
      s += (d ? "," : "") + std::to_string(t.stride[d]);
    }
    s += "]";
    if (is_meta(i)) {
      s += " values [";
      const std::vector<int32_t>& m = c.meta[i - kCuQ];
      for (size_t j = 0; j < m.size(); ++j) s += (j ? "," : "") + std::to_string(m[j]);
      s += "]";
    }
    s += "\n";
  }
  const AttentionProblem& p = c.p;
  char buf[320];
  std::snprintf(buf, sizeof(buf),
                "  mask %d window %lld/%lld scale %s softcap %g dropout %g max_seqlen %lld/%lld "
                "check_values %d deterministic %d",
                static_cast<int>(p.mask), static_cast<long long>(p.window_left),
                static_cast<long long>(p.window_right),
                p.softmax_scale ? std::to_string(*p.softmax_scale).c_str() : "none", p.softcap,
                p.dropout_p, static_cast<long long>(p.max_seqlen_q),
                static_cast<long long>(p.max_seqlen_k), p.check_metadata_values ? 1 : 0,
                p.deterministic ? 1 : 0);
  return s + buf;
}

// ------------------------------------------------------------------------------------------------
// Oracles.

ProblemInfo sentinel_info() {
  ProblemInfo s;
  s.direction = static_cast<Direction>(77);
  s.dtype = static_cast<DType>(77);
  s.device = Device{static_cast<DeviceKind>(77), 77};
  s.varlen = true;
  s.kv_layout = fl::KvLayout::kPaged;
  s.batch = -777;
  s.seqlen_q = -701;
  s.seqlen_k = -702;
  s.total_q = -703;
  s.total_k = -704;
  s.heads_q = -705;
  s.heads_kv = -706;
  s.head_dim = -707;
  s.head_dim_v = -708;
  s.has_lse = true;
  s.has_seqused_k = true;
  s.softmax_scale = -123.25;
  s.softcap = -456.5;
  s.mask = static_cast<MaskType>(77);
  s.bottom_right = true;
  s.window_left = -709;
  s.window_right = -710;
  s.deterministic = true;
  s.has_sink = true;
  s.has_dsink = true;
  return s;
}

bool same_info(const ProblemInfo& a, const ProblemInfo& b) {
  return a.direction == b.direction && a.dtype == b.dtype && a.device == b.device &&
         a.varlen == b.varlen && a.kv_layout == b.kv_layout && a.batch == b.batch &&
         a.seqlen_q == b.seqlen_q && a.seqlen_k == b.seqlen_k && a.total_q == b.total_q &&
         a.total_k == b.total_k && a.heads_q == b.heads_q && a.heads_kv == b.heads_kv &&
         a.head_dim == b.head_dim && a.head_dim_v == b.head_dim_v && a.has_lse == b.has_lse &&
         a.has_seqused_k == b.has_seqused_k &&
         std::memcmp(&a.softmax_scale, &b.softmax_scale, sizeof(double)) == 0 &&
         std::memcmp(&a.softcap, &b.softcap, sizeof(double)) == 0 && a.mask == b.mask &&
         a.bottom_right == b.bottom_right && a.window_left == b.window_left &&
         a.window_right == b.window_right && a.deterministic == b.deterministic &&
         a.has_sink == b.has_sink && a.has_dsink == b.has_dsink;
}

bool valid_head_dim(int64_t d) { return d >= 8 && d <= 256 && d % 8 == 0; }

/// What a successful validate() must have derived; returns "" or what disagrees.
std::string check_ok_info(const Case& c, const ProblemInfo& info, int64_t* overflows) {
  const AttentionProblem& p = c.p;
  const bool varlen = p.cu_seqlens_q.defined();
  const int h = varlen ? 1 : 2, hd = varlen ? 2 : 3;
  if (info.direction != c.dir) return "direction";
  if (info.varlen != varlen) return "varlen";
  if (info.kv_layout != (varlen ? fl::KvLayout::kVarlenPacked : fl::KvLayout::kDense)) {
    return "kv_layout";
  }
  if (info.device != p.q.device || info.dtype != p.q.dtype) return "device/dtype";
  if (info.heads_q != p.q.shape[h] || info.heads_kv != p.k.shape[h]) return "heads";
  if (info.heads_kv <= 0 || info.heads_q % info.heads_kv != 0) return "heads not divisible";
  if (info.head_dim != p.q.shape[hd] || info.head_dim_v != p.v.shape[hd]) return "head dims";
  if (!valid_head_dim(info.head_dim) || !valid_head_dim(info.head_dim_v)) return "head dim range";
  const double want_scale =
      p.softmax_scale ? *p.softmax_scale : 1.0 / std::sqrt(static_cast<double>(info.head_dim));
  if (!(info.softmax_scale == want_scale) || !std::isfinite(info.softmax_scale) ||
      info.softmax_scale <= 0.0) {
    return "softmax_scale";
  }
  if (!(info.softcap == p.softcap) || info.softcap < 0.0) return "softcap";
  if (p.dropout_p != 0.0) return "dropout accepted";
  if (info.mask != p.mask || info.bottom_right != (p.mask != MaskType::kCausal)) return "mask";
  if (info.window_left != p.window_left || info.window_left < -1) return "window_left";
  if (info.window_right != (info.is_causal() ? 0 : p.window_right)) return "window_right";
  if (info.has_lse != p.lse.defined() || info.has_seqused_k != p.seqused_k.defined()) {
    return "has_lse/has_seqused_k";
  }
  if (info.deterministic != p.deterministic) return "deterministic";
  if (info.has_sink != p.learnable_sink.defined()) return "has_sink";
  if (info.has_dsink != (c.dir == Direction::kBackward && p.dlearnable_sink.defined())) {
    return "has_dsink";
  }
  if (varlen) {
    if (info.batch != p.cu_seqlens_q.shape[0] - 1 || info.batch < 0) return "varlen batch";
    if (info.total_q != p.q.shape[0] || info.total_k != p.k.shape[0]) return "varlen totals";
    if (p.max_seqlen_q > 0 && info.seqlen_q != p.max_seqlen_q) return "varlen seqlen_q";
    if (p.max_seqlen_k > 0 && info.seqlen_k != p.max_seqlen_k) return "varlen seqlen_k";
    if (info.seqlen_q < 0 || info.seqlen_k < 0) return "varlen seqlens negative";
  } else {
    if (info.batch != p.q.shape[0] || info.seqlen_q != p.q.shape[1] ||
        info.seqlen_k != p.k.shape[1]) {
      return "bshd sizes";
    }
    int64_t tq = 0, tk = 0;
    if (__builtin_mul_overflow(info.batch, info.seqlen_q, &tq) ||
        __builtin_mul_overflow(info.batch, info.seqlen_k, &tk)) {
      ++*overflows;  // batch * seqlen beyond int64: validate() cannot describe it exactly
    } else if (info.total_q != tq || info.total_k != tk) {
      return "bshd totals";
    }
  }
  return "";
}

bool is_floating(DType t) {
  return t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat32 ||
         t == DType::kFloat64;
}

/// The cu_seqlens rule: starts at 0, non-decreasing, ends at `total`; `longest` its longest step.
bool cu_valid(const std::vector<int32_t>& cu, int64_t total, int64_t* longest = nullptr) {
  if (cu.empty() || cu[0] != 0 || cu.back() != total) return false;
  int64_t most = 0;
  for (size_t j = 1; j < cu.size(); ++j) {
    if (cu[j] < cu[j - 1]) return false;
    most = std::max<int64_t>(most, int64_t{cu[j]} - cu[j - 1]);
  }
  if (longest != nullptr) *longest = most;
  return true;
}

/// Reads `n` int32 values at t.data (a host buffer that holds them).
std::vector<int32_t> host_values(const TensorView& t, int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (!v.empty()) std::memcpy(v.data(), t.data, v.size() * sizeof(int32_t));
  return v;
}

/// An independent statement of the rules of include/flashlane/problem.h (validate()'s
/// documentation), written as the shapes a valid problem has rather than as validate()'s phases:
/// returns "" if the problem is valid, else the first rule it breaks. Sets *undetermined when
/// the answer depends on the CUDA runtime (metadata values to read from a CUDA tensor).
std::string spec_violation(const Case& c, bool* undetermined) {
  *undetermined = false;
  const AttentionProblem& p = c.p;
  if (c.dir != Direction::kForward && c.dir != Direction::kBackward) return "direction";
  const bool bwd = c.dir == Direction::kBackward, varlen = p.cu_seqlens_q.defined();
  if (!varlen && p.cu_seqlens_k.defined()) return "cu_seqlens_k without cu_seqlens_q";
  struct Use {
    int tensor;
    bool required;
  };
  std::vector<Use> uses = {{kQ, true}, {kK, true}, {kV, true}, {kO, true}, {kLse, bwd}};
  if (bwd) {
    for (int i : {kDout, kDq, kDk, kDv}) uses.push_back({i, true});
  }
  uses.push_back({kSink, false});
  if (bwd) uses.push_back({kDsink, false});
  uses.push_back({kCuQ, false});
  uses.push_back({kCuK, varlen});
  uses.push_back({kUsed, false});
  const Device dev = p.q.device;
  if (!p.q.defined()) return "q missing";
  for (const Use& u : uses) {  // presence, then each tensor's own properties
    const TensorView& t = view(p, u.tensor);
    if (!t.defined()) {
      if (u.required) return std::string(kTensorNames[u.tensor]) + " missing";
      continue;
    }
    if (t.data == nullptr) return std::string(kTensorNames[u.tensor]) + " null";
  }
  if (bwd && p.dlearnable_sink.defined() && !p.learnable_sink.defined()) {
    return "dlearnable_sink without learnable_sink";
  }
  if (dev.kind != DeviceKind::kCPU && dev.kind != DeviceKind::kCUDA) return "q device unknown";
  if (dev.kind == DeviceKind::kCUDA && dev.index < 0) return "negative CUDA ordinal";
  for (const Use& u : uses) {
    const TensorView& t = view(p, u.tensor);
    if (!t.defined()) continue;
    const std::string name = kTensorNames[u.tensor];
    if (t.device != dev) return name + " device";
    const bool floating =
        u.tensor < kLse || (u.tensor > kLse && !is_meta(u.tensor) && !is_sink(u.tensor));
    if (floating && (!is_floating(t.dtype) || t.dtype != p.q.dtype)) return name + " dtype";
    if ((u.tensor == kLse || is_sink(u.tensor)) && t.dtype != DType::kFloat32) return name + " dtype";
    if (is_meta(u.tensor) && t.dtype != DType::kInt32) return name + " dtype";
  }
  // The shape of every tensor, from q (batch, seqlen_q or total_q, heads_q, head_dim), k
  // (seqlen_k or total_k, heads_kv), v (head_dim_v) and cu_seqlens_q (varlen batch).
  const int data_rank = varlen ? 3 : 4;
  if (p.q.rank != data_rank || p.k.rank != data_rank || p.v.rank != data_rank) return "rank";
  const int h = varlen ? 1 : 2, hd = varlen ? 2 : 3, sd = varlen ? 0 : 1;
  const int64_t hq = p.q.shape[h], hkv = p.k.shape[h], d = p.q.shape[hd], dv = p.v.shape[hd];
  const int64_t sq = p.q.shape[sd], sk = p.k.shape[sd];
  if (varlen && p.cu_seqlens_q.rank != 1) return "cu_seqlens_q rank";
  const int64_t batch = varlen ? wrap_add(p.cu_seqlens_q.shape[0], -1) : p.q.shape[0];
  using Shape = std::vector<int64_t>;
  auto data_shape = [&](int64_t s, int64_t heads, int64_t dim) {
    return varlen ? Shape{s, heads, dim} : Shape{batch, s, heads, dim};
  };
  std::array<Shape, kNumTensors> want;
  want[kQ] = want[kDq] = data_shape(sq, hq, d);
  want[kK] = want[kDk] = data_shape(sk, hkv, d);
  want[kV] = want[kDv] = data_shape(sk, hkv, dv);
  want[kO] = want[kDout] = data_shape(sq, hq, dv);
  want[kLse] = varlen ? Shape{hq, sq} : Shape{batch, hq, sq};
  want[kSink] = want[kDsink] = Shape{hq};
  want[kCuQ] = want[kCuK] = Shape{wrap_add(batch, 1)};
  want[kUsed] = Shape{batch};
  for (const Use& u : uses) {
    const TensorView& t = view(p, u.tensor);
    if (!t.defined()) continue;
    const Shape& w = want[u.tensor];
    const std::string name = kTensorNames[u.tensor];
    if (t.rank != static_cast<int>(w.size())) return name + " rank";
    for (int k = 0; k < t.rank; ++k) {
      if (t.shape[k] < 0) return name + " negative extent";
      if (t.shape[k] != w[k]) return name + " shape";
    }
  }
  if (varlen && batch < 0) return "cu_seqlens_q empty";
  if (hkv <= 0 || hq % hkv != 0) return "heads";
  if (!valid_head_dim(d) || !valid_head_dim(dv)) return "head dim";
  for (const Use& u : uses) {  // strides: last dimension 1; CUDA data tensors 16-byte aligned
    const TensorView& t = view(p, u.tensor);
    if (!t.defined()) continue;
    if (t.stride[t.rank - 1] != 1) return std::string(kTensorNames[u.tensor]) + " last stride";
    if (dev.kind != DeviceKind::kCUDA || u.tensor == kLse || is_meta(u.tensor) || is_sink(u.tensor)) {
      continue;
    }
    const int64_t elem = fl::dtype_size(t.dtype);
    if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return "misaligned pointer";
    for (int k = 0; k + 1 < t.rank; ++k) {
      if ((static_cast<__int128>(t.stride[k]) * elem) % 16 != 0) return "misaligned stride";
    }
  }
  const bool causal = p.mask == MaskType::kCausal || p.mask == MaskType::kCausalBottomRight;
  if (!causal && p.mask != MaskType::kNoMask) return "mask";
  if (p.window_left < -1 || p.window_right < -1) return "window";
  if (causal && p.window_right > 0) return "causal window_right";
  if (p.softmax_scale && !(std::isfinite(*p.softmax_scale) && *p.softmax_scale > 0)) {
    return "softmax_scale";
  }
  if (!(std::isfinite(p.softcap) && p.softcap >= 0)) return "softcap";
  if (p.dropout_p != 0.0) return "dropout";
  if (p.max_seqlen_q < 0 || p.max_seqlen_k < 0) return "max_seqlen negative";
  // Metadata values, read only when check_metadata_values (from the host here; from a CUDA
  // tensor the CUDA runtime decides).
  std::vector<int32_t> cu_k;
  if (varlen && !p.check_metadata_values && (p.max_seqlen_q <= 0 || p.max_seqlen_k <= 0)) {
    return "unchecked varlen without max_seqlen";
  }
  const bool read_used = p.seqused_k.defined() && p.check_metadata_values && batch > 0;
  if (p.check_metadata_values && dev.kind != DeviceKind::kCPU && (varlen || read_used)) {
    *undetermined = true;
    return "";
  }
  if (varlen && p.check_metadata_values) {
    int64_t longest_q = 0, longest_k = 0;
    if (!cu_valid(host_values(p.cu_seqlens_q, batch + 1), sq, &longest_q)) return "cu_seqlens_q";
    cu_k = host_values(p.cu_seqlens_k, batch + 1);
    if (!cu_valid(cu_k, sk, &longest_k)) return "cu_seqlens_k";
    if (p.max_seqlen_q > 0 && p.max_seqlen_q < longest_q) return "max_seqlen_q too small";
    if (p.max_seqlen_k > 0 && p.max_seqlen_k < longest_k) return "max_seqlen_k too small";
  }
  if (read_used) {
    const std::vector<int32_t> used = host_values(p.seqused_k, batch);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t len = varlen ? int64_t{cu_k[b + 1]} - cu_k[b] : sk;
      if (used[b] < 0 || used[b] > len) return "seqused_k value";
    }
  }
  return "";
}

/// Copies of the metadata buffers' bytes, to show that nothing changed them.
bool unchanged_meta(const Case& c, const std::array<std::vector<unsigned char>, 3>& before) {
  for (int i = kCuQ; i < kNumTensors; ++i) {
    if (!c.backed[i]) continue;
    const std::vector<unsigned char>& b = before[i - kCuQ];
    if (std::memcmp(c.start[i], b.data(), b.size()) != 0) return false;
  }
  return true;
}

/// True if every byte of the data tensors in `which` is still kCanary.
bool canary_intact(const Case& c, std::initializer_list<int> which) {
  for (int i : which) {
    if (!c.backed[i]) continue;
    const unsigned char* b = c.start[i];
    for (int64_t j = 0; j < c.start_bytes[i]; ++j) {
      if (b[j] != kCanary) return false;
    }
  }
  return true;
}

bool aligned_for(const TensorView& t, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(t.data) % static_cast<uintptr_t>(bytes) == 0;
}

/// Why a host problem that validate() accepted cannot be handed to the reference (which reads
/// every tensor it uses), or "" if it can: a tensor not backed by a buffer covering its claimed
/// extent, a pointer not aligned to its element, or unchecked cu_seqlens that would send the
/// reference outside the tensors (check_metadata_values false is the caller's promise).
std::string not_runnable(const Case& c, const ProblemInfo& info) {
  const AttentionProblem& p = c.p;
  const bool backward = info.direction == Direction::kBackward;
  for (int i = 0; i < kNumTensors; ++i) {
    const TensorView& t = view(p, i);
    if (!t.defined()) continue;
    if (!backward && (i == kDout || i == kDq || i == kDk || i == kDv || i == kDsink)) continue;
    if (!c.backed[i]) return "unbacked";
    if (!aligned_for(t, std::max(fl::dtype_size(t.dtype), 1))) return "misaligned";
  }
  if (info.varlen && !p.check_metadata_values) {
    if (!cu_valid(host_values(p.cu_seqlens_q, p.cu_seqlens_q.shape[0]), p.q.shape[0]) ||
        !cu_valid(host_values(p.cu_seqlens_k, p.cu_seqlens_k.shape[0]), p.k.shape[0])) {
      return "unchecked_cu_seqlens";
    }
  }
  return "";
}

/// validate() ignores dout, dq, dk, dv and dlearnable_sink in the forward direction whatever their device
/// (tests/cpu/test_validation.cpp, ForwardIgnoresGradientTensors), and so does reference_cpu's
/// forward (check_host in src/reference/reference_cpu.cpp checks the direction's tensors only).
/// Set to true only to tolerate (count, not fail) a reference that refuses such a problem.
constexpr bool kTolerateForwardUnusedTensorNotHost = false;

bool forward_unused_tensor_not_host(const Case& c) {
  if (c.dir != Direction::kForward) return false;
  for (int i : {kDout, kDq, kDk, kDv, kDsink}) {
    const TensorView& t = view(c.p, i);
    if (t.defined() && t.device.kind != DeviceKind::kCPU) return true;
  }
  return false;
}

struct Stats {
  int64_t problems = 0, valid = 0, exceptions = 0, failures = 0, int64_overflows = 0;
  int64_t spec_undetermined = 0;  // validity left to the CUDA runtime
  std::map<int, int64_t> validate_codes;
  int64_t dispatched = 0;
  std::map<std::string, int64_t> dispatch_outcomes;  // "<code>" or "skipped:<why>"
};

}  // namespace

TEST(ValidationFuzzTest, RandomProblemsGetDeclaredCodesAndNothingIsWrittenOnError) {
  const auto t0 = std::chrono::steady_clock::now();
  std::printf("[fuzz] seed 0x%016llx, %lld problems, forward/backward on every %lld-th\n",
              static_cast<unsigned long long>(kSeed), static_cast<long long>(kProblems),
              static_cast<long long>(kDispatchEvery));
  Rng rng(kSeed);
  Stats stats;
  Case c;
  const ProblemInfo sentinel = sentinel_info();
  auto report = [&](int64_t n, const std::string& what) {
    ++stats.failures;
    if (stats.failures <= kMaxReportedFailures) {
      ADD_FAILURE() << "problem #" << n << ": " << what << "\n" << describe(c);
    }
  };

  for (int64_t n = 0; n < kProblems; ++n) {
    const bool dispatch = n % kDispatchEvery == 0;
    generate(c, rng, dispatch);
    ++stats.problems;

    // ---- validate(): Ok or a declared code with a message; info untouched on error.
    ProblemInfo info = sentinel;
    Status st;
    try {
      st = fl::validate(c.p, c.dir, &info);
    } catch (const std::exception& e) {
      ++stats.exceptions;
      report(n, std::string("validate threw: ") + e.what());
      continue;
    } catch (...) {
      ++stats.exceptions;
      report(n, "validate threw a non-std exception");
      continue;
    }
    ++stats.validate_codes[static_cast<int>(st.code())];
    bool undetermined = false;
    const std::string rule = spec_violation(c, &undetermined);
    if (undetermined) {
      ++stats.spec_undetermined;
    } else if (st.ok() != rule.empty()) {
      report(n, st.ok() ? "validate Ok, but the problem breaks the rule: " + rule
                        : "validate returned " + st.to_string() + " for a problem within the rules");
    }
    if (st.ok()) {
      ++stats.valid;
      const std::string bad = check_ok_info(c, info, &stats.int64_overflows);
      if (!bad.empty()) report(n, "Ok but ProblemInfo disagrees: " + bad);
    } else {
      const char* name = fl::error_code_name(st.code());
      if (!is_declared(st.code()) || name == nullptr || *name == '\0' ||
          std::strcmp(name, "unknown") == 0) {
        report(n, "undeclared code " + std::to_string(static_cast<int>(st.code())));
      } else if (!is_validation_code(st.code())) {
        report(n, std::string("validate returned a non-validation code: ") + st.to_string());
      }
      if (st.message().empty()) report(n, "empty message for " + std::string(name));
      if (!same_info(info, sentinel)) report(n, "info written on error: " + st.to_string());
    }

    // ---- forward / backward on strict reference_cpu over canary-filled buffers.
    if (!dispatch) continue;
    if (c.dir != Direction::kForward && c.dir != Direction::kBackward) {
      ++stats.dispatch_outcomes["skipped:invalid_direction"];
      continue;
    }
    const bool host = st.ok() && info.device.kind == DeviceKind::kCPU;
    if (host) {
      const std::string why = not_runnable(c, info);
      if (!why.empty()) {
        ++stats.dispatch_outcomes["skipped:" + why];
        continue;
      }
    }
    std::array<std::vector<unsigned char>, 3> meta_before;
    for (int i = kCuQ; i < kNumTensors; ++i) {
      if (c.backed[i]) meta_before[i - kCuQ].assign(c.start[i], c.start[i] + c.start_bytes[i]);
    }
    const fl::Request request{fl::Backend::kReferenceCpu, true};
    Status run;
    try {
      run = c.dir == Direction::kForward ? fl::forward(c.p, request) : fl::backward(c.p, request);
    } catch (...) {
      ++stats.exceptions;
      report(n, "forward/backward threw");
      continue;
    }
    ++stats.dispatched;
    ++stats.dispatch_outcomes[fl::error_code_name(run.code())];
    const std::string run_text = run.to_string();
    if (!unchanged_meta(c, meta_before)) report(n, "metadata buffers changed: " + run_text);
    if (!st.ok()) {  // validation error: the same Status, and not a byte written
      if (run.code() != st.code() || run.message() != st.message()) {
        report(n, "dispatch returned " + run_text + ", validate " + st.to_string());
      }
      if (!canary_intact(c, {kQ, kK, kV, kO, kLse, kDout, kDq, kDk, kDv, kSink, kDsink})) {
        report(n, "output bytes written on error: " + run_text);
      }
    } else if (!host) {  // valid, not on the host: strict reference_cpu refuses, writes nothing
      if (run.code() != ErrorCode::kBackendInapplicable ||
          run.reason_tag() != "reference_cpu.requires_host_tensors") {
        report(n, "valid CUDA problem on strict reference_cpu: " + run_text);
      }
      if (!canary_intact(c, {kQ, kK, kV, kO, kLse, kDout, kDq, kDk, kDv, kSink, kDsink})) {
        report(n, "bytes written on refusal: " + run_text);
      }
    } else {  // valid host problem: reference_cpu runs it and never writes its inputs
      if (!run.ok()) {
        if (kTolerateForwardUnusedTensorNotHost && run.code() == ErrorCode::kInternal &&
            forward_unused_tensor_not_host(c)) {
          ++stats.dispatch_outcomes["(of internal) known issue: forward, unused not host"];
        } else {
          report(n, "validate Ok but dispatch failed: " + run_text);
        }
      }
      if (run.ok() && fl::last_receipt().actual_backend != "reference_cpu") {
        report(n, "receipt actual_backend " + fl::last_receipt().actual_backend);
      }
      const bool inputs_intact = c.dir == Direction::kForward
                                     ? canary_intact(c, {kQ, kK, kV, kSink})
                                     : canary_intact(c, {kQ, kK, kV, kO, kLse, kDout, kSink});
      if (!inputs_intact) report(n, "input bytes written: " + run_text);
      if (c.dir == Direction::kForward && !canary_intact(c, {kDsink})) {
        report(n, "a forward wrote dlearnable_sink: " + run_text);
      }
      if (!run.ok() && !canary_intact(c, {kO, kLse, kDq, kDk, kDv, kDsink})) {
        report(n, "output bytes written on error: " + run_text);
      }
    }
  }

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[fuzz] %lld problems in %.1f s: %lld valid (%.1f%%), %lld exceptions, "
              "%lld failures, %lld with batch * seqlen beyond int64\n",
              static_cast<long long>(stats.problems), seconds, static_cast<long long>(stats.valid),
              100.0 * static_cast<double>(stats.valid) / static_cast<double>(stats.problems),
              static_cast<long long>(stats.exceptions), static_cast<long long>(stats.failures),
              static_cast<long long>(stats.int64_overflows));
  std::printf("[fuzz] %lld problems checked against the rules; %lld left to the CUDA runtime "
              "(metadata values on a CUDA tensor)\n",
              static_cast<long long>(stats.problems - stats.spec_undetermined),
              static_cast<long long>(stats.spec_undetermined));
  for (const auto& [code, count] : stats.validate_codes) {
    std::printf("[fuzz] validate %-22s (%3d) %8lld\n",
                fl::error_code_name(static_cast<ErrorCode>(code)), code,
                static_cast<long long>(count));
  }
  std::printf("[fuzz] forward/backward on strict reference_cpu: %lld calls\n",
              static_cast<long long>(stats.dispatched));
  for (const auto& [outcome, count] : stats.dispatch_outcomes) {
    std::printf("[fuzz] dispatch %-34s %8lld\n", outcome.c_str(), static_cast<long long>(count));
  }
  std::fflush(stdout);

  EXPECT_GE(stats.problems, 1'000'000);
  EXPECT_EQ(stats.exceptions, 0);
  EXPECT_EQ(stats.failures, 0) << "first " << kMaxReportedFailures << " reported above";
  EXPECT_GE(static_cast<double>(stats.valid), 0.10 * static_cast<double>(stats.problems));
  EXPECT_GE(stats.dispatched, kProblems / kDispatchEvery * 9 / 10);
  // Every argument-validation code is reached (the generator covers each phase).
  for (int code = 100; code <= 116; ++code) {
    EXPECT_GT(stats.validate_codes[code], 0)
        << "no problem got " << fl::error_code_name(static_cast<ErrorCode>(code));
  }
}
