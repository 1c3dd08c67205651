// test_reference_cuda.cpp: reference_cuda (GPU, float32 accumulation) against reference_cpu
// (float64 accumulation) on identical inputs, forward and backward, for every feature:
// dtypes (bf16, fp16, fp32, fp64), masks x windows, seqlen_q != seqlen_k, MHA/GQA/MQA, softcap,
// attention sinks (learnable_sink, dlearnable_sink),
// varlen, seqused_k (with NaN planted in the unused K/V rows), head dims 8..256 and
// head_dim != head_dim_v, padded and heads-major strides, 64-bit offsets; plus determinism,
// CUDA-graph capture and an informational throughput report (TFLOP/s with spot checks against
// an independent float64 row computation written in this file).
//
// Every test starts with GTEST_SKIP when there is no CUDA device, so ctest reports "skipped".
//
// How outputs are checked (per case, per tensor o, lse, dq, dk, dv):
//   * poisoned before the run: every output element and every padding element starts as NaN on
//     the device (HostProblem's poison and pad values are uploaded); after the run no element of
//     the view may still hold the poison bits (never written), none may be NaN, and no padding
//     element may have changed (written out of bounds);
//   * fully masked query rows (no visible key, from MaskRule): O == 0 and LSE == -inf exactly
//     (with sinks: LSE == learnable_sink[h] exactly), dQ == 0 exactly; keys beyond seqused_k:
//     dK == dV == 0 exactly;
//   * values against reference_cpu with the tolerance of tolerance_for() below.
// A failure prints the case (dtype, shapes, mask, window, softcap, varlen lengths, strides),
// the tensor, the worst element's index, both values, max|ref| and the tolerance.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/attention_rules.h"
#include "core/numeric.h"
#include "dispatch/backends.h"
#include "flashlane/problem.h"
#include "support/host_problem.h"

namespace fl = flashlane;
using fl::DType;
using fl::MaskType;
using fl::test_support::HostProblem;
using fl::test_support::HostProblemConfig;
using fl::test_support::HostTensor;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// ------------------------------------------------------------------------------------------
// Device availability (every test starts with REQUIRE_CUDA()).

bool cuda_device_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *why = cudaGetErrorString(e);
    (void)cudaGetLastError();
    return false;
  }
  if (n == 0) {
    *why = "cudaGetDeviceCount returned 0";
    return false;
  }
  return true;
}

#define REQUIRE_CUDA()                                                        \
  do {                                                                        \
    std::string why_;                                                         \
    if (!cuda_device_available(&why_)) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

#define CUDA_OK(expr)                                                                    \
  do {                                                                                   \
    const cudaError_t e_ = (expr);                                                       \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(e_);               \
  } while (0)

// ------------------------------------------------------------------------------------------
// Case description.

std::string describe(const HostProblemConfig& c) {
  std::ostringstream s;
  s << fl::dtype_name(c.dtype) << " ";
  if (!c.seqlens_q.empty()) {
    s << "varlen q=[";
    for (size_t i = 0; i < c.seqlens_q.size(); ++i) s << (i ? "," : "") << c.seqlens_q[i];
    s << "] k=[";
    for (size_t i = 0; i < c.seqlens_k.size(); ++i) s << (i ? "," : "") << c.seqlens_k[i];
    s << "]";
  } else {
    s << "bshd b=" << c.batch << " sq=" << c.seqlen_q << " sk=" << c.seqlen_k;
  }
  if (!c.seqused_k.empty()) {
    s << " seqused_k=[";
    for (size_t i = 0; i < c.seqused_k.size(); ++i) s << (i ? "," : "") << c.seqused_k[i];
    s << "]" << (c.nan_unused_kv ? "(NaN planted beyond)" : "");
  }
  s << " heads=" << c.heads_q << "/" << c.heads_kv << " d=" << c.head_dim << "/"
    << (c.head_dim_v ? c.head_dim_v : c.head_dim) << " mask=" << fl::mask_type_name(c.mask)
    << " window=(" << c.window_left << "," << c.window_right << ") softcap=" << c.softcap;
  if (c.softmax_scale) s << " scale=" << *c.softmax_scale;
  if (c.pad_dim || c.pad_heads || c.pad_tokens) {
    s << " pad(dim=" << c.pad_dim << ",heads=" << c.pad_heads << ",tokens=" << c.pad_tokens << ")";
  }
  if (c.heads_major) s << " heads_major";
  if (!c.learnable_sink.empty()) {
    s << " learnable_sink=[";
    for (size_t i = 0; i < c.learnable_sink.size(); ++i) s << (i ? "," : "") << c.learnable_sink[i];
    s << "]";
  }
  s << " seed=" << c.seed;
  return s.str();
}

// ------------------------------------------------------------------------------------------
// Tolerances.
//
// Both backends see bit-identical inputs (and, for the backward, the same o and lse), so the
// only differences are (a) the accumulation precision: float32 (reference_cuda) vs float64
// (reference_cpu), and (b) the final rounding of each backend's output to the output dtype.
//   (a) With fp32 accumulation over <= 300 keys and head dims <= 256 the error is ~1e-6 of the
//       tensor's magnitude (FlashAttention's own fp32-accumulation error level); we allow
//       `slack` * max(max|ref|, kMagnitudeFloor) with slack = 1e-3 for 16-bit outputs, 1e-4 for
//       fp32 and 1e-9 for fp64 outputs. The floor exists because a tensor can be exactly zero by
//       cancellation while its terms are not (window (0,0): one visible key, P = 1 and
//       dS = P (dP - D) = 0 up to rounding): inputs are O(1) (uniform in [-1, 1)), so 1e-2 is a
//       safe lower bound of the magnitude of the terms.
//   (b) Two values within (a) of each other round to 16-bit values at most one ulp apart (two
//       ulps of the smaller one at a power-of-two boundary): we allow 2 ulp(|ref|) per element.
//   LSE is float32 for every dtype and computed from the same inputs: 1e-4 * (1 + |ref|).
// What this still catches: one key too many or too few changes LSE by about 1/(visible keys)
// >= 3e-3 (>> 1e-4) and O by a comparable fraction on the short rows of the grid; a wrong
// softmax scale or softcap changes every row by percents; a wrong GQA head or a wrong varlen
// offset gives unrelated values.
struct Tolerance {
  double slack;  // times max(max|ref|, kMagnitudeFloor)
  double ulps;   // times ulp(|ref_i|) of the output dtype
};

Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
    case DType::kFloat16: return {1e-3, 2.0};
    case DType::kFloat32: return {1e-4, 2.0};
    default: return {1e-9, 2.0};
  }
}

constexpr double kMagnitudeFloor = 1e-2;

double ulp_of(DType dtype, double v) {
  v = std::fabs(v);
  int e = 0;
  if (v > 0) {
    std::frexp(v, &e);  // v = m * 2^e, m in [0.5, 1): floor(log2 v) = e - 1
    e -= 1;
  }
  switch (dtype) {
    case DType::kBFloat16: return std::ldexp(1.0, std::max(e, -126) - 7);
    case DType::kFloat16: return std::ldexp(1.0, std::max(e, -14) - 10);
    case DType::kFloat32: return std::ldexp(1.0, std::max(e, -126) - 23);
    default: return std::ldexp(1.0, std::max(e, -1022) - 52);
  }
}

// ------------------------------------------------------------------------------------------
// Element iteration with indices (for messages).

template <class Fn>
void for_each_index(const fl::TensorView& v, Fn&& fn) {
  if (!v.defined() || v.numel() == 0) return;
  std::array<int64_t, fl::TensorView::kMaxRank> idx{};
  while (true) {
    int64_t off = 0;
    for (int d = 0; d < v.rank; ++d) off += idx[d] * v.stride[d];
    fn(idx, off);
    int d = v.rank - 1;
    for (; d >= 0; --d) {
      if (++idx[d] < v.shape[d]) break;
      idx[d] = 0;
    }
    if (d < 0) return;
  }
}

std::string index_string(const std::array<int64_t, fl::TensorView::kMaxRank>& idx, int rank) {
  std::ostringstream s;
  s << "[";
  for (int d = 0; d < rank; ++d) s << (d ? "," : "") << idx[d];
  s << "]";
  return s.str();
}

/// Compares `got` (reference_cuda) with `ref` (reference_cpu); both views have the same layout.
/// Adds a failure with the worst element on mismatch. Returns true when it passed.
bool compare_tensor(const char* name, const HostTensor& ref, const HostTensor& got, DType out_dtype,
                    bool is_lse, const std::string& what) {
  const Tolerance tol = tolerance_for(out_dtype);
  double max_ref = 0;
  int64_t ref_nan = 0, got_nan = 0;
  for_each_index(ref.view, [&](const auto&, int64_t off) {
    const double r = ref.get(off);
    if (std::isnan(r)) ++ref_nan;
    else if (std::isfinite(r)) max_ref = std::max(max_ref, std::fabs(r));
    if (std::isnan(got.get(off))) ++got_nan;
  });
  const int64_t poisoned = got.count_poisoned();
  const int64_t pad_changed = got.count_padding_changed();
  bool ok = true;
  if (ref_nan) {
    ADD_FAILURE() << what << "\n  " << name << ": reference_cpu produced " << ref_nan
                  << " NaN (the reference is broken, not reference_cuda)";
    ok = false;
  }
  if (poisoned) {
    ADD_FAILURE() << what << "\n  " << name << ": " << poisoned
                  << " elements still hold the poison bits (never written by reference_cuda)";
    ok = false;
  } else if (got_nan) {
    ADD_FAILURE() << what << "\n  " << name << ": reference_cuda wrote " << got_nan << " NaN";
    ok = false;
  }
  if (pad_changed) {
    ADD_FAILURE() << what << "\n  " << name << ": " << pad_changed
                  << " padding elements changed (reference_cuda wrote out of bounds)";
    ok = false;
  }
  double worst_excess = -kInf, worst_err = 0, worst_tol = 0, worst_ref = 0, worst_got = 0;
  double max_err = 0;
  std::string worst_idx;
  int64_t bad = 0, count = 0;
  for_each_index(ref.view, [&](const auto& idx, int64_t off) {
    const double r = ref.get(off), g = got.get(off);
    ++count;
    if (std::isnan(r) || std::isnan(g)) return;  // reported above
    double err, t;
    if (std::isinf(r) || std::isinf(g)) {
      err = (r == g) ? 0.0 : kInf;
      t = 0;
    } else {
      err = std::fabs(g - r);
      t = is_lse ? 1e-4 * (1.0 + std::fabs(r))
                 : tol.slack * std::max(max_ref, kMagnitudeFloor) + tol.ulps * ulp_of(out_dtype, r);
    }
    max_err = std::max(max_err, err);
    if (err > t) ++bad;
    if (err - t > worst_excess) {
      worst_excess = err - t;
      worst_err = err;
      worst_tol = t;
      worst_ref = r;
      worst_got = g;
      worst_idx = index_string(idx, ref.view.rank);
    }
  });
  if (bad) {
    ADD_FAILURE() << what << "\n  " << name << ": " << bad << " of " << count
                  << " elements out of tolerance; max_abs_err=" << max_err
                  << " max|ref|=" << max_ref << "; worst at " << worst_idx << ": cuda=" << worst_got
                  << " cpu=" << worst_ref << " |err|=" << worst_err << " tol=" << worst_tol;
    ok = false;
  }
  return ok;
}

// ------------------------------------------------------------------------------------------
// Device copies of a HostProblem.

class DeviceProblem {
 public:
  /// Uploads every buffer of `h` (inputs, poisoned outputs, padding) and the int32 metadata.
  explicit DeviceProblem(HostProblem& h) : h_(h) {
    const fl::AttentionProblem hp = h.problem();
    p_ = hp;
    const fl::Device dev = fl::Device::cuda(0);
    fl::TensorView* views[] = {&p_.q,  &p_.k,  &p_.v,  &p_.o,  &p_.lse, &p_.dout,
                               &p_.dq, &p_.dk, &p_.dv, &p_.learnable_sink, &p_.dlearnable_sink};
    HostTensor* tensors[] = {&h.q,  &h.k,  &h.v,  &h.o,  &h.lse, &h.dout,
                             &h.dq, &h.dk, &h.dv, &h.learnable_sink, &h.dlearnable_sink};
    for (int t = 0; t < kTensors; ++t) {
      dev_[t] = nullptr;
      if (!tensors[t]->defined()) continue;
      dev_[t] = upload(tensors[t]->bytes.data(), tensors[t]->bytes.size());
      *views[t] = tensors[t]->view_at(dev_[t], dev);
    }
    fl::TensorView* metas[] = {&p_.cu_seqlens_q, &p_.cu_seqlens_k, &p_.seqused_k};
    for (fl::TensorView* m : metas) {
      if (!m->defined()) continue;
      void* d = upload(m->data, static_cast<size_t>(m->numel()) * 4);
      m->data = d;
      m->device = dev;
    }
  }
  ~DeviceProblem() {
    for (void* ptr : allocs_) cudaFree(ptr);
  }
  DeviceProblem(const DeviceProblem&) = delete;
  DeviceProblem& operator=(const DeviceProblem&) = delete;

  const fl::AttentionProblem& problem() const { return p_; }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

  enum Which { kQ = 0, kK, kV, kO, kLse, kDout, kDq, kDk, kDv, kSink, kDsink, kTensors };
  HostTensor& host(Which w) {
    HostTensor* tensors[] = {&h_.q,  &h_.k,  &h_.v,  &h_.o,  &h_.lse, &h_.dout,
                             &h_.dq, &h_.dk, &h_.dv, &h_.learnable_sink, &h_.dlearnable_sink};
    return *tensors[w];
  }
  /// Copies the device buffer of `w` (whole, padding included) back into the host tensor.
  cudaError_t download(Which w) {
    HostTensor& t = host(w);
    return cudaMemcpy(t.bytes.data(), dev_[w], t.bytes.size(), cudaMemcpyDeviceToHost);
  }
  /// Overwrites the device buffer of `w` with the bytes of `src` (same layout).
  cudaError_t upload_from(Which w, const HostTensor& src) {
    return cudaMemcpy(dev_[w], src.bytes.data(), src.bytes.size(), cudaMemcpyHostToDevice);
  }
  /// Re-poisons device outputs from the host copy's poison (host tensors are re-poisoned first).
  cudaError_t repoison(std::initializer_list<Which> ws) {
    for (Which w : ws) {
      HostTensor& t = host(w);
      const int64_t es = t.element_size();
      t.for_each_offset([&](int64_t off) { std::memcpy(t.bytes.data() + off * es, t.poison_bits.data(), es); });
      const cudaError_t e = cudaMemcpy(dev_[w], t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice);
      if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
  }

 private:
  void* upload(const void* src, size_t bytes) {
    void* d = nullptr;
    cudaError_t e = cudaMalloc(&d, std::max<size_t>(bytes, 16));
    if (e != cudaSuccess) {
      error_ += std::string("cudaMalloc: ") + cudaGetErrorString(e) + "; ";
      return nullptr;
    }
    allocs_.push_back(d);
    e = cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) error_ += std::string("cudaMemcpy: ") + cudaGetErrorString(e) + "; ";
    return d;
  }

  HostProblem& h_;
  fl::AttentionProblem p_;
  void* dev_[kTensors] = {};
  std::vector<void*> allocs_;
  std::string error_;
};

/// The normalized mask of a validated problem.
fl::MaskRule rule_of(const fl::ProblemInfo& info) {
  fl::MaskRule r;
  r.window_left = info.window_left;
  r.window_right = info.is_causal() ? 0 : info.window_right;
  r.bottom_right = info.mask != MaskType::kCausal;
  return r;
}

/// Checks the exact-zero rules: fully masked query rows have O == 0 and LSE == -inf (the sink
/// with sinks) (forward) or dQ == 0 (backward); keys beyond seqused_k have dK == dV == 0
/// (backward).
void check_exact_zeros(const HostProblem& h, const fl::ProblemInfo& info, bool backward,
                       const HostTensor& o, const HostTensor& lse, const HostTensor& dq,
                       const HostTensor& dk, const HostTensor& dv, const std::string& what) {
  const fl::MaskRule rule = rule_of(info);
  const int64_t dv_ = h.head_dim_v(), d = info.head_dim;
  int64_t masked_rows = 0, bad_rows = 0;
  std::string first_bad;
  for (int64_t b = 0; b < h.batch(); ++b) {
    const int64_t sq = h.seqlen_q(b), used = h.used_k(b);
    for (int64_t i = 0; i < sq; ++i) {
      int64_t first = 0, last = 0;
      rule.key_range(i, sq, used, &first, &last);
      if (last > first) continue;
      ++masked_rows;
      for (int64_t hh = 0; hh < info.heads_q; ++hh) {
        bool good = true;
        if (!backward) {
          for (int64_t c = 0; c < dv_; ++c) good &= o.get(h.row_offset(o, b, i, hh, false) + c) == 0.0;
          const double l = lse.get(h.lse_offset(b, i, hh));
          if (h.learnable_sink.defined()) good &= l == h.learnable_sink.get(hh);
          else good &= std::isinf(l) && l < 0;
        } else {
          for (int64_t c = 0; c < d; ++c) good &= dq.get(h.row_offset(dq, b, i, hh, false) + c) == 0.0;
        }
        if (!good && bad_rows++ == 0) {
          first_bad = "b=" + std::to_string(b) + " i=" + std::to_string(i) + " h=" + std::to_string(hh);
        }
      }
    }
  }
  if (bad_rows) {
    ADD_FAILURE() << what << "\n  " << bad_rows << " fully masked (row, head) pairs of " << masked_rows
                  << " rows do not have "
                  << (backward ? "dQ == 0" : h.learnable_sink.defined() ? "O == 0 and LSE == sink"
                                                                          : "O == 0 and LSE == -inf")
                  << "; first: " << first_bad;
  }
  if (!backward) return;
  int64_t bad_keys = 0;
  for (int64_t b = 0; b < h.batch(); ++b) {
    for (int64_t j = h.used_k(b); j < h.seqlen_k(b); ++j) {
      for (int64_t hh = 0; hh < info.heads_kv; ++hh) {
        bool good = true;
        for (int64_t c = 0; c < d; ++c) good &= dk.get(h.row_offset(dk, b, j, hh, true) + c) == 0.0;
        for (int64_t c = 0; c < dv_; ++c) good &= dv.get(h.row_offset(dv, b, j, hh, true) + c) == 0.0;
        bad_keys += !good;
      }
    }
  }
  if (bad_keys) {
    ADD_FAILURE() << what << "\n  " << bad_keys
                  << " (key, kv head) rows beyond seqused_k do not have dK == dV == 0";
  }
}

/// Runs one case: forward and backward of reference_cuda vs reference_cpu.
void run_case(const HostProblemConfig& cfg, bool with_backward = true) {
  const std::string what = "case: " + describe(cfg);
  SCOPED_TRACE(what);
  HostProblem cpu(cfg);  // reference_cpu works in these buffers
  HostProblem gpu(cfg);  // same inputs (same seed); receives reference_cuda's outputs
  DeviceProblem dev(gpu);
  ASSERT_TRUE(dev.ok()) << dev.error();

  // ---- forward
  fl::ProblemInfo info_cpu, info_gpu;
  {
    const fl::Status st = fl::validate(cpu.problem(), fl::Direction::kForward, &info_cpu);
    ASSERT_TRUE(st.ok()) << "validate (host problem): " << st.to_string();
    const fl::Status st2 = fl::validate(dev.problem(), fl::Direction::kForward, &info_gpu);
    ASSERT_TRUE(st2.ok()) << "validate (device problem): " << st2.to_string();
  }
  {
    const fl::Status st = fl::detail::reference_cpu_forward(cpu.problem(), info_cpu);
    ASSERT_TRUE(st.ok()) << "reference_cpu_forward: " << st.to_string();
    const fl::Status st2 = fl::detail::reference_cuda_forward(dev.problem(), info_gpu, nullptr);
    ASSERT_TRUE(st2.ok()) << "reference_cuda_forward: " << st2.to_string();
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(dev.download(DeviceProblem::kO));
    CUDA_OK(dev.download(DeviceProblem::kLse));
  }
  compare_tensor("O", cpu.o, gpu.o, cfg.dtype, false, what + " [forward]");
  compare_tensor("LSE", cpu.lse, gpu.lse, DType::kFloat32, true, what + " [forward]");
  check_exact_zeros(gpu, info_gpu, false, gpu.o, gpu.lse, gpu.dq, gpu.dk, gpu.dv, what + " [forward]");
  if (!with_backward) return;

  // ---- backward: both backends get reference_cpu's o and lse as inputs.
  {
    const fl::Status st = fl::validate(cpu.problem(), fl::Direction::kBackward, &info_cpu);
    ASSERT_TRUE(st.ok()) << "validate backward (host problem): " << st.to_string();
    CUDA_OK(dev.upload_from(DeviceProblem::kO, cpu.o));
    CUDA_OK(dev.upload_from(DeviceProblem::kLse, cpu.lse));
    const fl::Status st2 = fl::validate(dev.problem(), fl::Direction::kBackward, &info_gpu);
    ASSERT_TRUE(st2.ok()) << "validate backward (device problem): " << st2.to_string();
  }
  {
    const fl::Status st = fl::detail::reference_cpu_backward(cpu.problem(), info_cpu);
    ASSERT_TRUE(st.ok()) << "reference_cpu_backward: " << st.to_string();
    const fl::Status st2 = fl::detail::reference_cuda_backward(dev.problem(), info_gpu, nullptr);
    ASSERT_TRUE(st2.ok()) << "reference_cuda_backward: " << st2.to_string();
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(dev.download(DeviceProblem::kDq));
    CUDA_OK(dev.download(DeviceProblem::kDk));
    CUDA_OK(dev.download(DeviceProblem::kDv));
    if (gpu.dlearnable_sink.defined()) CUDA_OK(dev.download(DeviceProblem::kDsink));
  }
  compare_tensor("dQ", cpu.dq, gpu.dq, cfg.dtype, false, what + " [backward]");
  compare_tensor("dK", cpu.dk, gpu.dk, cfg.dtype, false, what + " [backward]");
  compare_tensor("dV", cpu.dv, gpu.dv, cfg.dtype, false, what + " [backward]");
  if (cpu.dlearnable_sink.defined()) {
    // float32 output: fp32 accumulation of D and of the sum over rows vs float64.
    compare_tensor("dsink", cpu.dlearnable_sink, gpu.dlearnable_sink, DType::kFloat32, false,
                   what + " [backward]");
  }
  check_exact_zeros(gpu, info_gpu, true, gpu.o, gpu.lse, gpu.dq, gpu.dk, gpu.dv, what + " [backward]");
}

// ------------------------------------------------------------------------------------------
// The grid.

struct MaskCfg {
  MaskType mask;
  int64_t left, right;
  const char* name;
};

const MaskCfg kMasks[] = {
    {MaskType::kNoMask, -1, -1, "no_mask"},
    {MaskType::kCausal, -1, -1, "causal"},
    {MaskType::kCausalBottomRight, -1, -1, "causal_br"},
    {MaskType::kNoMask, 8, 4, "window_8_4"},
    {MaskType::kNoMask, 0, 0, "window_0_0"},
    {MaskType::kNoMask, -1, 3, "window_inf_3"},
    {MaskType::kCausal, 5, -1, "causal_window_5"},
    {MaskType::kCausalBottomRight, 16, -1, "causal_br_window_16"},
};

const DType kDTypes[] = {DType::kBFloat16, DType::kFloat16, DType::kFloat32};

const char* short_dtype(DType d) {
  switch (d) {
    case DType::kBFloat16: return "bf16";
    case DType::kFloat16: return "fp16";
    case DType::kFloat32: return "fp32";
    case DType::kFloat64: return "fp64";
    default: return "int32";
  }
}

HostProblemConfig base_config(DType dtype, const MaskCfg& m, uint64_t seed) {
  HostProblemConfig c;
  c.dtype = dtype;
  c.mask = m.mask;
  c.window_left = m.left;
  c.window_right = m.right;
  c.seed = seed;
  return c;
}

class ReferenceCudaGrid : public ::testing::TestWithParam<std::tuple<DType, int>> {};

// bshd: seqlens {1, 17, 113, 300} in pairs with seqlen_q != seqlen_k both ways; the other
// features cycle over the pairs so every mask meets MHA/GQA/MQA, softcap, head dims and strides.
TEST_P(ReferenceCudaGrid, BshdForwardBackward) {
  REQUIRE_CUDA();
  const DType dtype = std::get<0>(GetParam());
  const MaskCfg& m = kMasks[std::get<1>(GetParam())];
  const std::array<std::pair<int64_t, int64_t>, 8> seqs = {
      {{1, 1}, {1, 113}, {17, 17}, {17, 113}, {113, 17}, {300, 300}, {300, 113}, {113, 300}}};
  const std::array<std::pair<int64_t, int64_t>, 3> heads = {{{4, 4}, {4, 2}, {6, 1}}};
  const std::array<std::pair<int64_t, int64_t>, 5> dims = {{{64, 64}, {128, 128}, {32, 32}, {96, 64}, {40, 80}}};
  for (size_t s = 0; s < seqs.size(); ++s) {
    HostProblemConfig c = base_config(dtype, m, 1000 + s);
    c.batch = 2;
    c.seqlen_q = seqs[s].first;
    c.seqlen_k = seqs[s].second;
    c.heads_q = heads[s % heads.size()].first;
    c.heads_kv = heads[s % heads.size()].second;
    c.head_dim = dims[s % dims.size()].first;
    c.head_dim_v = dims[s % dims.size()].second;
    c.softcap = (s % 3 == 1) ? 0.5 : 0.0;
    if (s % 4 == 1) { c.pad_dim = 8; c.pad_tokens = 3; }
    if (s % 4 == 2) c.heads_major = true;
    if (s % 4 == 3) c.pad_heads = 16;
    run_case(c);
  }
}

// varlen (with empty q and k sequences), varlen + seqused_k and bshd + seqused_k, NaN planted
// in the K/V rows beyond seqused_k.
TEST_P(ReferenceCudaGrid, VarlenAndSequsedForwardBackward) {
  REQUIRE_CUDA();
  const DType dtype = std::get<0>(GetParam());
  const MaskCfg& m = kMasks[std::get<1>(GetParam())];
  {
    HostProblemConfig c = base_config(dtype, m, 2001);
    c.seqlens_q = {17, 1, 300, 0, 113, 5};
    c.seqlens_k = {113, 17, 300, 7, 0, 5};
    c.heads_q = 4;
    c.heads_kv = 2;
    c.head_dim = 64;
    run_case(c);
  }
  {
    HostProblemConfig c = base_config(dtype, m, 2002);
    c.seqlens_q = {17, 1, 300, 113, 40};
    c.seqlens_k = {113, 17, 300, 17, 64};
    c.seqused_k = {100, 0, 257, 17, 31};
    c.nan_unused_kv = true;
    c.heads_q = 6;
    c.heads_kv = 1;
    c.head_dim = 128;
    c.softcap = 0.5;
    c.pad_dim = 8;
    c.pad_tokens = 2;
    run_case(c);
  }
  {
    HostProblemConfig c = base_config(dtype, m, 2003);
    c.batch = 3;
    c.seqlen_q = 113;
    c.seqlen_k = 300;
    c.seqused_k = {300, 17, 0};
    c.nan_unused_kv = true;
    c.heads_q = 4;
    c.heads_kv = 4;
    c.head_dim = 32;
    c.head_dim_v = 64;
    c.heads_major = true;
    run_case(c);
  }
}

/// heads_q sink logits in [-2, 4), multiples of 2^-8, from `seed` (some above the softcap 0.5).
std::vector<float> random_sinks(int64_t heads_q, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + 17);
  std::vector<float> v(static_cast<size_t>(heads_q));
  for (float& x : v) x = static_cast<float>(static_cast<int64_t>(rng() % 1536) - 512) / 256.0f;
  return v;
}

// Attention sinks: bshd with seqlen_q > seqlen_k (rows without visible keys under the
// bottom-right masks and windows), and varlen with empty sequences and seqused_k (NaN beyond);
// GQA and MQA, softcap on half the masks. O, LSE, dQ, dK, dV and dlearnable_sink.
TEST_P(ReferenceCudaGrid, SinksForwardBackward) {
  REQUIRE_CUDA();
  const DType dtype = std::get<0>(GetParam());
  const int mi = std::get<1>(GetParam());
  const MaskCfg& m = kMasks[mi];
  {
    HostProblemConfig c = base_config(dtype, m, 2500 + mi);
    c.batch = 2;
    c.seqlen_q = 113;
    c.seqlen_k = 47;
    c.heads_q = 6;
    c.heads_kv = 2;
    c.head_dim = 64;
    c.softcap = mi % 2 ? 0.5 : 0.0;
    c.learnable_sink = random_sinks(c.heads_q, c.seed);
    run_case(c);
  }
  {
    HostProblemConfig c = base_config(dtype, m, 2600 + mi);
    c.seqlens_q = {17, 0, 300, 5, 40};
    c.seqlens_k = {113, 5, 0, 300, 64};
    c.seqused_k = {100, 5, 0, 17, 64};
    c.nan_unused_kv = true;
    c.heads_q = 4;
    c.heads_kv = 1;
    c.head_dim = 128;
    c.head_dim_v = 64;
    c.pad_dim = 8;
    c.learnable_sink = random_sinks(c.heads_q, c.seed);
    run_case(c);
  }
}

std::string grid_name(const ::testing::TestParamInfo<std::tuple<DType, int>>& info) {
  return std::string(short_dtype(std::get<0>(info.param))) + "_" + kMasks[std::get<1>(info.param)].name;
}

INSTANTIATE_TEST_SUITE_P(All, ReferenceCudaGrid,
                         ::testing::Combine(::testing::ValuesIn(kDTypes),
                                            ::testing::Range(0, static_cast<int>(std::size(kMasks)))),
                         grid_name);

// Every head dim class (8..256, multiples of 8; each kernel pad 64/128/256) and d != d_v.
TEST(ReferenceCuda, HeadDims) {
  REQUIRE_CUDA();
  const std::array<std::pair<int64_t, int64_t>, 12> dims = {
      {{8, 8}, {16, 16}, {40, 40}, {64, 64}, {72, 72}, {96, 96}, {128, 128}, {160, 160},
       {192, 128}, {256, 256}, {128, 256}, {256, 8}}};
  for (DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    for (size_t i = 0; i < dims.size(); ++i) {
      HostProblemConfig c = base_config(dtype, kMasks[i % 2], 3000 + i);
      c.batch = 2;
      c.seqlen_q = 47;
      c.seqlen_k = 70;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.head_dim = dims[i].first;
      c.head_dim_v = dims[i].second;
      c.softcap = i % 3 == 2 ? 0.5 : 0.0;
      run_case(c);
    }
  }
}

// float64 tensors accumulate in double: agreement to ~1e-9 of the magnitude.
TEST(ReferenceCuda, Float64) {
  REQUIRE_CUDA();
  for (int i = 0; i < 4; ++i) {
    HostProblemConfig c = base_config(DType::kFloat64, kMasks[i * 2], 4000 + i);
    c.batch = 2;
    c.seqlen_q = i % 2 ? 113 : 17;
    c.seqlen_k = i % 2 ? 17 : 113;
    c.heads_q = 4;
    c.heads_kv = i % 2 ? 1 : 2;
    c.head_dim = i < 2 ? 64 : 256;
    c.softcap = i == 1 ? 0.5 : 0.0;
    run_case(c);
  }
  HostProblemConfig c = base_config(DType::kFloat64, kMasks[2], 4010);
  c.seqlens_q = {17, 0, 300};
  c.seqlens_k = {113, 5, 300};
  c.seqused_k = {50, 5, 200};
  c.nan_unused_kv = true;
  c.heads_q = 2;
  c.heads_kv = 1;
  c.head_dim = 128;
  run_case(c);
}

// A non-default softmax scale and a strong softcap (scores well into tanh's saturation).
TEST(ReferenceCuda, ScaleAndSoftcap) {
  REQUIRE_CUDA();
  for (DType dtype : {DType::kBFloat16, DType::kFloat32}) {
    HostProblemConfig c = base_config(dtype, kMasks[2], 5000);
    c.batch = 2;
    c.seqlen_q = 113;
    c.seqlen_k = 300;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.head_dim = 64;
    c.softmax_scale = 0.37;
    c.value_scale = 2.0;
    c.softcap = 0.8;
    run_case(c);
  }
}

// ------------------------------------------------------------------------------------------
// Determinism and CUDA-graph capture.

std::vector<unsigned char> device_bytes(const void* ptr, size_t n) {
  std::vector<unsigned char> out(n);
  if (cudaMemcpy(out.data(), ptr, n, cudaMemcpyDeviceToHost) != cudaSuccess) out.clear();
  return out;
}

HostProblemConfig determinism_config() {
  HostProblemConfig c = base_config(DType::kBFloat16, kMasks[2], 6000);
  c.seqlens_q = {300, 17, 113};
  c.seqlens_k = {300, 113, 40};
  c.seqused_k = {290, 100, 40};
  c.nan_unused_kv = true;
  c.heads_q = 8;
  c.heads_kv = 2;
  c.head_dim = 128;
  c.softcap = 0.5;
  return c;
}

// The backward is deterministic by construction (no atomics): two runs are bitwise equal.
TEST(ReferenceCuda, BackwardIsBitwiseDeterministic) {
  REQUIRE_CUDA();
  const HostProblemConfig c = determinism_config();
  SCOPED_TRACE("case: " + describe(c));
  HostProblem h(c);
  DeviceProblem dev(h);
  ASSERT_TRUE(dev.ok()) << dev.error();
  fl::ProblemInfo info;
  fl::Status st = fl::validate(dev.problem(), fl::Direction::kBackward, &info);
  ASSERT_TRUE(st.ok()) << st.to_string();
  st = fl::detail::reference_cuda_forward(dev.problem(), info, nullptr);
  ASSERT_TRUE(st.ok()) << st.to_string();
  std::vector<unsigned char> first[3];
  for (int run = 0; run < 2; ++run) {
    CUDA_OK(dev.repoison({DeviceProblem::kDq, DeviceProblem::kDk, DeviceProblem::kDv}));
    st = fl::detail::reference_cuda_backward(dev.problem(), info, nullptr);
    ASSERT_TRUE(st.ok()) << st.to_string();
    CUDA_OK(cudaDeviceSynchronize());
    const fl::TensorView* outs[] = {&dev.problem().dq, &dev.problem().dk, &dev.problem().dv};
    const HostTensor* hosts[] = {&h.dq, &h.dk, &h.dv};
    const char* names[] = {"dQ", "dK", "dV"};
    for (int t = 0; t < 3; ++t) {
      std::vector<unsigned char> bytes = device_bytes(outs[t]->data, hosts[t]->bytes.size());
      ASSERT_FALSE(bytes.empty());
      if (run == 0) first[t] = std::move(bytes);
      else EXPECT_TRUE(bytes == first[t]) << names[t] << " differs between two identical backward runs";
    }
  }
}

// Forward + backward captured into a CUDA graph (the backward allocates its D buffer with
// cudaMallocAsync on the stream) replay to the same bits as eager launches on a stream.
TEST(ReferenceCuda, GraphCaptureMatchesEager) {
  REQUIRE_CUDA();
  const HostProblemConfig c = determinism_config();
  SCOPED_TRACE("case: " + describe(c));
  HostProblem h(c);
  DeviceProblem dev(h);
  ASSERT_TRUE(dev.ok()) << dev.error();
  fl::ProblemInfo info;
  fl::Status st = fl::validate(dev.problem(), fl::Direction::kBackward, &info);
  ASSERT_TRUE(st.ok()) << st.to_string();
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const fl::AttentionProblem& p = dev.problem();
  const fl::TensorView* outs[] = {&p.o, &p.lse, &p.dq, &p.dk, &p.dv};
  const HostTensor* hosts[] = {&h.o, &h.lse, &h.dq, &h.dk, &h.dv};
  const char* names[] = {"O", "LSE", "dQ", "dK", "dV"};

  st = fl::detail::reference_cuda_forward(p, info, stream);
  ASSERT_TRUE(st.ok()) << st.to_string();
  st = fl::detail::reference_cuda_backward(p, info, stream);
  ASSERT_TRUE(st.ok()) << st.to_string();
  CUDA_OK(cudaStreamSynchronize(stream));
  std::vector<unsigned char> eager[5];
  for (int t = 0; t < 5; ++t) eager[t] = device_bytes(outs[t]->data, hosts[t]->bytes.size());

  CUDA_OK(dev.repoison({DeviceProblem::kO, DeviceProblem::kLse, DeviceProblem::kDq,
                        DeviceProblem::kDk, DeviceProblem::kDv}));
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const fl::Status f = fl::detail::reference_cuda_forward(p, info, stream);
  const fl::Status b = fl::detail::reference_cuda_backward(p, info, stream);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  ASSERT_TRUE(f.ok()) << "forward under capture: " << f.to_string();
  ASSERT_TRUE(b.ok()) << "backward under capture: " << b.to_string();
  ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end);
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  for (int t = 0; t < 5; ++t) {
    EXPECT_TRUE(device_bytes(outs[t]->data, hosts[t]->bytes.size()) == eager[t])
        << names[t] << ": graph replay differs from eager launches";
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Sinks with float64 tensors (double accumulation: ~1e-9 agreement) and at the head dim bounds.
TEST(ReferenceCuda, SinksFloat64AndHeadDims) {
  REQUIRE_CUDA();
  {
    HostProblemConfig c = base_config(DType::kFloat64, kMasks[2], 4500);
    c.seqlens_q = {17, 0, 300};
    c.seqlens_k = {113, 5, 300};
    c.seqused_k = {50, 5, 200};
    c.nan_unused_kv = true;
    c.heads_q = 2;
    c.heads_kv = 1;
    c.head_dim = 128;
    c.softcap = 0.5;
    c.learnable_sink = random_sinks(c.heads_q, c.seed);
    run_case(c);
  }
  const std::array<std::pair<int64_t, int64_t>, 3> dims = {{{8, 8}, {256, 256}, {256, 8}}};
  for (size_t i = 0; i < dims.size(); ++i) {
    HostProblemConfig c = base_config(DType::kBFloat16, kMasks[i], 4510 + i);
    c.batch = 2;
    c.seqlen_q = 47;
    c.seqlen_k = 70;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.head_dim = dims[i].first;
    c.head_dim_v = dims[i].second;
    c.learnable_sink = random_sinks(c.heads_q, c.seed);
    run_case(c);
  }
}

// dlearnable_sink is reduced in a fixed order: two backward runs and a CUDA-graph replay give the
// same bits (and the sink problem's dQ, dK, dV too).
TEST(ReferenceCuda, SinkGradientIsBitwiseDeterministicAndCapturable) {
  REQUIRE_CUDA();
  HostProblemConfig c = determinism_config();
  c.learnable_sink = random_sinks(c.heads_q, 6100);
  SCOPED_TRACE("case: " + describe(c));
  HostProblem h(c);
  DeviceProblem dev(h);
  ASSERT_TRUE(dev.ok()) << dev.error();
  fl::ProblemInfo info;
  fl::Status st = fl::validate(dev.problem(), fl::Direction::kBackward, &info);
  ASSERT_TRUE(st.ok()) << st.to_string();
  ASSERT_TRUE(info.has_sink && info.has_dsink);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const fl::AttentionProblem& p = dev.problem();
  st = fl::detail::reference_cuda_forward(p, info, stream);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const fl::TensorView* outs[] = {&p.dq, &p.dk, &p.dv, &p.dlearnable_sink};
  const HostTensor* hosts[] = {&h.dq, &h.dk, &h.dv, &h.dlearnable_sink};
  const char* names[] = {"dQ", "dK", "dV", "dsink"};
  std::vector<unsigned char> first[4];
  for (int run = 0; run < 2; ++run) {
    CUDA_OK(dev.repoison({DeviceProblem::kDq, DeviceProblem::kDk, DeviceProblem::kDv, DeviceProblem::kDsink}));
    st = fl::detail::reference_cuda_backward(p, info, stream);
    ASSERT_TRUE(st.ok()) << st.to_string();
    CUDA_OK(cudaStreamSynchronize(stream));
    for (int t = 0; t < 4; ++t) {
      std::vector<unsigned char> bytes = device_bytes(outs[t]->data, hosts[t]->bytes.size());
      ASSERT_FALSE(bytes.empty());
      if (run == 0) first[t] = std::move(bytes);
      else EXPECT_TRUE(bytes == first[t]) << names[t] << " differs between two identical backward runs";
    }
  }
  CUDA_OK(dev.repoison({DeviceProblem::kDq, DeviceProblem::kDk, DeviceProblem::kDv, DeviceProblem::kDsink}));
  cudaGraph_t graph = nullptr;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const fl::Status b = fl::detail::reference_cuda_backward(p, info, stream);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  ASSERT_TRUE(b.ok()) << "backward under capture: " << b.to_string();
  ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end);
  cudaGraphExec_t exec = nullptr;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  for (int t = 0; t < 4; ++t) {
    EXPECT_TRUE(device_bytes(outs[t]->data, hosts[t]->bytes.size()) == first[t])
        << names[t] << ": graph replay differs from eager launches";
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// ------------------------------------------------------------------------------------------
// Low-precision backward (ReferenceNumerics::kLowPrecision): P and dS rounded to the input dtype
// before the dV, dK and dQ sums, against reference_cpu's emulation of the same roundings.
//
// Tolerance: compare_tensor's (1e-3 * max(max|ref|, 1e-2) + 2 ulp(|ref_i|) for bf16). Both
// round P and dS once, so what differs is (a) fp32 accumulation (reference_cuda) vs double
// (reference_cpu), covered as in the float64-path comparison above, and (b) ties in the
// roundings: the fp32 P and dS of the two backends differ in their last bits (exp2f of a
// log2-domain fp32 score vs exp of a double difference rounded once; fp32 dP - D), so now and
// then one of them lands on the other side of a bf16 rounding boundary and one term of a
// gradient sum changes by one bf16 ulp of that term (2^-8 |P dO| or 2^-8 |dS q|): a few such
// terms per tensor, far below (a)'s allowance. A host emulation of these kernels' fp32
// arithmetic on the shapes below (5 seeds each) reached 0.4 of the tolerance, with at most 0.3%
// of the elements not bitwise equal to reference_cpu's; the float64 path's gradients differ
// from the low-precision ones in 13-42% of the elements. So the test also asks that at most 2%
// of the elements differ from reference_cpu kLowPrecision and at least 5 times as many (and 5%)
// from reference_cpu kFloat64: a reference_cuda that ignored the option would fail there.
void run_lowp_backward_case(const HostProblemConfig& cfg) {
  const std::string what = "case: " + describe(cfg) + " [backward kLowPrecision]";
  SCOPED_TRACE(what);
  HostProblem cpu(cfg);  // reference_cpu kLowPrecision
  HostProblem f64(cfg);  // reference_cpu kFloat64 (the rounding must show against it)
  HostProblem gpu(cfg);  // reference_cuda kLowPrecision
  fl::ProblemInfo fwd, info_cpu, info_gpu;
  ASSERT_TRUE(fl::validate(cpu.problem(), fl::Direction::kForward, &fwd).ok());
  ASSERT_TRUE(fl::detail::reference_cpu_forward(cpu.problem(), fwd).ok());
  ASSERT_TRUE(fl::validate(cpu.problem(), fl::Direction::kBackward, &info_cpu).ok());
  for (HostProblem* h : {&f64, &gpu}) {  // the same o and lse for every backward
    h->o.bytes = cpu.o.bytes;
    h->lse.bytes = cpu.lse.bytes;
  }
  DeviceProblem dev(gpu);
  ASSERT_TRUE(dev.ok()) << dev.error();
  ASSERT_TRUE(fl::validate(dev.problem(), fl::Direction::kBackward, &info_gpu).ok());
  const auto lowp = fl::detail::ReferenceNumerics::kLowPrecision;
  fl::Status st = fl::detail::reference_cpu_backward(cpu.problem(), info_cpu, lowp);
  ASSERT_TRUE(st.ok()) << "reference_cpu_backward: " << st.to_string();
  st = fl::detail::reference_cpu_backward(f64.problem(), info_cpu, fl::detail::ReferenceNumerics::kFloat64);
  ASSERT_TRUE(st.ok()) << "reference_cpu_backward: " << st.to_string();
  st = fl::detail::reference_cuda_backward(dev.problem(), info_gpu, nullptr, lowp);
  ASSERT_TRUE(st.ok()) << "reference_cuda_backward: " << st.to_string();
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(dev.download(DeviceProblem::kDq));
  CUDA_OK(dev.download(DeviceProblem::kDk));
  CUDA_OK(dev.download(DeviceProblem::kDv));
  compare_tensor("dQ", cpu.dq, gpu.dq, cfg.dtype, false, what);
  compare_tensor("dK", cpu.dk, gpu.dk, cfg.dtype, false, what);
  compare_tensor("dV", cpu.dv, gpu.dv, cfg.dtype, false, what);
  check_exact_zeros(gpu, info_gpu, true, gpu.o, gpu.lse, gpu.dq, gpu.dk, gpu.dv, what);

  int64_t total = 0, differ_lowp = 0, differ_f64 = 0;
  for (auto [g, c, f] : {std::tuple{&gpu.dq, &cpu.dq, &f64.dq}, std::tuple{&gpu.dk, &cpu.dk, &f64.dk},
                         std::tuple{&gpu.dv, &cpu.dv, &f64.dv}}) {
    g->for_each_offset([&](int64_t off) {
      ++total;
      differ_lowp += g->get(off) != c->get(off);
      differ_f64 += g->get(off) != f->get(off);
    });
  }
  std::printf("[ lowp bwd ] %s: elements %lld, not bitwise equal to reference_cpu kLowPrecision "
              "%lld, to kFloat64 %lld\n",
              describe(cfg).c_str(), static_cast<long long>(total),
              static_cast<long long>(differ_lowp), static_cast<long long>(differ_f64));
  EXPECT_LE(differ_lowp * 50, total) << "more than 2% of the gradients differ from reference_cpu's";
  EXPECT_GE(differ_f64, 5 * differ_lowp) << "P and dS do not look rounded";
  EXPECT_GE(differ_f64 * 20, total) << "P and dS do not look rounded";
}

// Two small bf16 problems: causal bottom-right GQA (bshd), and varlen with seqused_k (an empty
// sequence, NaN beyond seqused_k), a window, softcap and head_dim 128. Then float32 inputs,
// where kLowPrecision has nothing to round and must give the bits of the default call.
TEST(ReferenceCuda, BackwardLowPrecisionMatchesCpu) {
  REQUIRE_CUDA();
  HostProblemConfig a = base_config(DType::kBFloat16, kMasks[2], 7000);
  a.batch = 2;
  a.seqlen_q = 113;
  a.seqlen_k = 77;
  a.heads_q = 4;
  a.heads_kv = 2;
  a.head_dim = 64;
  run_lowp_backward_case(a);

  HostProblemConfig b = base_config(DType::kBFloat16, kMasks[3], 7001);  // window (8, 4)
  b.seqlens_q = {37, 0, 90};
  b.seqlens_k = {50, 12, 64};
  b.seqused_k = {41, 0, 60};
  b.nan_unused_kv = true;
  b.heads_q = 6;
  b.heads_kv = 2;
  b.head_dim = 128;
  b.softcap = 5.0;
  run_lowp_backward_case(b);

  HostProblemConfig c = a;
  c.dtype = DType::kFloat32;
  SCOPED_TRACE("case: " + describe(c) + " [float32: kLowPrecision == default]");
  HostProblem h(c);
  DeviceProblem dev(h);
  ASSERT_TRUE(dev.ok()) << dev.error();
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate(dev.problem(), fl::Direction::kBackward, &info).ok());
  ASSERT_TRUE(fl::detail::reference_cuda_forward(dev.problem(), info, nullptr).ok());
  std::vector<unsigned char> bytes[2][3];
  for (int run = 0; run < 2; ++run) {
    const fl::Status st =
        run == 0 ? fl::detail::reference_cuda_backward(dev.problem(), info, nullptr)
                 : fl::detail::reference_cuda_backward(dev.problem(), info, nullptr,
                                                       fl::detail::ReferenceNumerics::kLowPrecision);
    ASSERT_TRUE(st.ok()) << st.to_string();
    CUDA_OK(cudaDeviceSynchronize());
    const fl::TensorView* outs[] = {&dev.problem().dq, &dev.problem().dk, &dev.problem().dv};
    const HostTensor* hosts[] = {&h.dq, &h.dk, &h.dv};
    for (int t = 0; t < 3; ++t) bytes[run][t] = device_bytes(outs[t]->data, hosts[t]->bytes.size());
  }
  for (int t = 0; t < 3; ++t) {
    EXPECT_FALSE(bytes[0][t].empty());
    EXPECT_TRUE(bytes[0][t] == bytes[1][t]) << "gradient " << t;
  }
}

// ------------------------------------------------------------------------------------------
// 64-bit offsets: batch strides above 2^31 elements for every q/k/v/o-shaped tensor.

TEST(ReferenceCuda, OffsetsBeyond2Pow31Elements) {
  REQUIRE_CUDA();
  HostProblemConfig c = base_config(DType::kBFloat16, kMasks[2], 7000);
  c.batch = 2;
  c.seqlen_q = 40;
  c.seqlen_k = 72;
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim = 64;
  const int64_t big = (int64_t{1} << 31) + 64;  // batch stride in elements (16-byte multiple)
  const int kTensors = 8;                        // q k v o dout dq dk dv
  const size_t need = static_cast<size_t>(kTensors) * (big + 72 * 4 * 64) * 2 + (size_t{1} << 30);
  size_t free_b = 0, total_b = 0;
  CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
  if (free_b < need) {
    GTEST_SKIP() << "needs " << (need >> 30) << " GiB of free device memory, " << (free_b >> 30)
                 << " GiB free";
  }
  const std::string what = "case: " + describe(c) + " batch stride 2^31+64 elements";
  SCOPED_TRACE(what);
  HostProblem cpu(c);
  HostProblem got(c);  // compact host layout; receives the device results
  fl::ProblemInfo info_cpu;
  ASSERT_TRUE(fl::validate(cpu.problem(), fl::Direction::kForward, &info_cpu).ok());
  ASSERT_TRUE(fl::detail::reference_cpu_forward(cpu.problem(), info_cpu).ok());
  ASSERT_TRUE(fl::validate(cpu.problem(), fl::Direction::kBackward, &info_cpu).ok());
  ASSERT_TRUE(fl::detail::reference_cpu_backward(cpu.problem(), info_cpu).ok());

  // Device tensors: batch b of a compact host tensor [b, s, h, d] goes to offset b * big.
  std::vector<void*> allocs;
  auto big_copy = [&](const HostTensor& t, bool poison) -> fl::TensorView {
    const int64_t per_batch = t.view.stride[0];  // compact: s * h * d
    const size_t bytes = static_cast<size_t>(big + per_batch) * 2;
    void* d = nullptr;
    if (cudaMalloc(&d, bytes) != cudaSuccess) return {};
    allocs.push_back(d);
    for (int64_t b = 0; b < t.view.shape[0]; ++b) {
      unsigned char* dst = static_cast<unsigned char*>(d) + static_cast<size_t>(b * big) * 2;
      if (poison) cudaMemset(dst, 0xFF, static_cast<size_t>(per_batch) * 2);
      else cudaMemcpy(dst, t.bytes.data() + static_cast<size_t>(b * per_batch) * 2,
                      static_cast<size_t>(per_batch) * 2, cudaMemcpyHostToDevice);
    }
    fl::TensorView v = t.view;
    v.data = d;
    v.device = fl::Device::cuda(0);
    v.stride[0] = big;
    return v;
  };
  auto fetch = [&](const fl::TensorView& v, HostTensor& t) {
    const int64_t per_batch = t.view.stride[0];
    for (int64_t b = 0; b < t.view.shape[0]; ++b) {
      cudaMemcpy(t.bytes.data() + static_cast<size_t>(b * per_batch) * 2,
                 static_cast<const unsigned char*>(v.data) + static_cast<size_t>(b * big) * 2,
                 static_cast<size_t>(per_batch) * 2, cudaMemcpyDeviceToHost);
    }
  };
  fl::AttentionProblem p;
  p.q = big_copy(cpu.q, false);
  p.k = big_copy(cpu.k, false);
  p.v = big_copy(cpu.v, false);
  p.o = big_copy(cpu.o, true);
  p.dout = big_copy(cpu.dout, false);
  p.dq = big_copy(cpu.dq, true);
  p.dk = big_copy(cpu.dk, true);
  p.dv = big_copy(cpu.dv, true);
  void* lse_d = nullptr;
  CUDA_OK(cudaMalloc(&lse_d, got.lse.bytes.size()));
  allocs.push_back(lse_d);
  CUDA_OK(cudaMemset(lse_d, 0xFF, got.lse.bytes.size()));
  p.lse = got.lse.view_at(lse_d, fl::Device::cuda(0));
  p.mask = c.mask;
  bool all_allocated = allocs.size() == 9;
  for (const fl::TensorView* v : {&p.q, &p.k, &p.v, &p.o, &p.dout, &p.dq, &p.dk, &p.dv}) all_allocated &= v->data != nullptr;
  if (!all_allocated) {
    for (void* a : allocs) cudaFree(a);
    FAIL() << "cudaMalloc of the 2^31-strided tensors failed";
  }
  fl::ProblemInfo info;
  fl::Status st = fl::validate(p, fl::Direction::kForward, &info);
  EXPECT_TRUE(st.ok()) << st.to_string();
  if (st.ok()) st = fl::detail::reference_cuda_forward(p, info, nullptr);
  EXPECT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  fetch(p.o, got.o);
  cudaMemcpy(got.lse.bytes.data(), lse_d, got.lse.bytes.size(), cudaMemcpyDeviceToHost);
  // The backward runs on reference_cpu's o / lse, like run_case.
  for (int64_t b = 0; b < 2; ++b) {
    cudaMemcpy(static_cast<unsigned char*>(p.o.data) + static_cast<size_t>(b * big) * 2,
               cpu.o.bytes.data() + static_cast<size_t>(b * cpu.o.view.stride[0]) * 2,
               static_cast<size_t>(cpu.o.view.stride[0]) * 2, cudaMemcpyHostToDevice);
  }
  cudaMemcpy(lse_d, cpu.lse.bytes.data(), cpu.lse.bytes.size(), cudaMemcpyHostToDevice);
  if (st.ok()) st = fl::validate(p, fl::Direction::kBackward, &info);
  if (st.ok()) st = fl::detail::reference_cuda_backward(p, info, nullptr);
  EXPECT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  fetch(p.dq, got.dq);
  fetch(p.dk, got.dk);
  fetch(p.dv, got.dv);
  for (void* a : allocs) cudaFree(a);
  // Poison here is 0xFFFF (a NaN): the NaN count of compare_tensor reports unwritten elements.
  compare_tensor("O", cpu.o, got.o, c.dtype, false, what);
  compare_tensor("LSE", cpu.lse, got.lse, DType::kFloat32, true, what);
  compare_tensor("dQ", cpu.dq, got.dq, c.dtype, false, what);
  compare_tensor("dK", cpu.dk, got.dk, c.dtype, false, what);
  compare_tensor("dV", cpu.dv, got.dv, c.dtype, false, what);
}

// ------------------------------------------------------------------------------------------
// Throughput (informational) with spot checks of a few rows against a float64 computation.

/// O row and LSE of query (b, i, h) in float64, from the host inputs of `h` (bshd only).
void row_reference(const HostProblem& h, const fl::ProblemInfo& info, int64_t b, int64_t i,
                   int64_t hh, std::vector<double>* o, double* lse) {
  const fl::MaskRule rule = rule_of(info);
  const int64_t kvh = hh / (info.heads_q / info.heads_kv);
  const int64_t sq = h.seqlen_q(b), sk = h.used_k(b);
  int64_t first = 0, last = 0;
  rule.key_range(i, sq, sk, &first, &last);
  o->assign(static_cast<size_t>(info.head_dim_v), 0.0);
  if (last <= first) {
    *lse = -kInf;
    return;
  }
  std::vector<double> s(static_cast<size_t>(last - first));
  double m = -kInf;
  for (int64_t j = first; j < last; ++j) {
    double dot = 0;
    for (int64_t c = 0; c < info.head_dim; ++c) {
      dot += h.q.get(h.row_offset(h.q, b, i, hh, false) + c) * h.k.get(h.row_offset(h.k, b, j, kvh, true) + c);
    }
    double x = info.softmax_scale * dot;
    if (info.softcap > 0) x = info.softcap * std::tanh(x / info.softcap);
    s[j - first] = x;
    m = std::max(m, x);
  }
  double l = 0;
  for (int64_t j = first; j < last; ++j) {
    const double p = std::exp(s[j - first] - m);
    l += p;
    for (int64_t c = 0; c < info.head_dim_v; ++c) (*o)[c] += p * h.v.get(h.row_offset(h.v, b, j, kvh, true) + c);
  }
  for (double& x : *o) x /= l;
  *lse = m + std::log(l);
}

struct Timing {
  double fwd_ms = 0, bwd_ms = 0;
};

float median_ms(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.f : v[v.size() / 2];
}

void throughput_case(const HostProblemConfig& c, int fwd_reps, int bwd_reps) {
  const std::string what = "case: " + describe(c);
  SCOPED_TRACE(what);
  HostProblem h(c);
  DeviceProblem dev(h);
  ASSERT_TRUE(dev.ok()) << dev.error();
  fl::ProblemInfo info;
  fl::Status st = fl::validate(dev.problem(), bwd_reps > 0 ? fl::Direction::kBackward : fl::Direction::kForward, &info);
  ASSERT_TRUE(st.ok()) << st.to_string();
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreate(&stream));
  cudaEvent_t e0, e1;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  const double fwd_flops = fl::forward_flops(info, info.visible_pairs(nullptr, nullptr, nullptr));

  std::vector<float> fwd, bwd;
  for (int r = 0; r <= fwd_reps; ++r) {  // r == 0: warm-up
    CUDA_OK(cudaEventRecord(e0, stream));
    st = fl::detail::reference_cuda_forward(dev.problem(), info, stream);
    ASSERT_TRUE(st.ok()) << st.to_string();
    CUDA_OK(cudaEventRecord(e1, stream));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    if (r > 0) fwd.push_back(ms);
  }
  for (int r = 0; r <= bwd_reps && bwd_reps > 0; ++r) {
    CUDA_OK(cudaEventRecord(e0, stream));
    st = fl::detail::reference_cuda_backward(dev.problem(), info, stream);
    ASSERT_TRUE(st.ok()) << st.to_string();
    CUDA_OK(cudaEventRecord(e1, stream));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    if (r > 0) bwd.push_back(ms);
  }
  CUDA_OK(cudaGetLastError());
  const double f_ms = median_ms(fwd), b_ms = median_ms(bwd);
  std::printf("[reference_cuda] %s\n  forward  %.3f ms  %.2f TFLOP/s (%.3g FLOP)\n", describe(c).c_str(),
              f_ms, fwd_flops / (f_ms * 1e-3) / 1e12, fwd_flops);
  if (bwd_reps > 0) {
    std::printf("  backward %.3f ms  %.2f TFLOP/s (2.5x forward FLOP)\n", b_ms,
                2.5 * fwd_flops / (b_ms * 1e-3) / 1e12);
  }
  ::testing::Test::RecordProperty("forward_ms", std::to_string(f_ms));
  if (bwd_reps > 0) ::testing::Test::RecordProperty("backward_ms", std::to_string(b_ms));

  // Spot checks: a few rows of O and LSE against float64.
  CUDA_OK(dev.download(DeviceProblem::kO));
  CUDA_OK(dev.download(DeviceProblem::kLse));
  EXPECT_EQ(h.o.count_poisoned(), 0) << "O not fully written";
  EXPECT_EQ(h.lse.count_poisoned(), 0) << "LSE not fully written";
  const Tolerance tol = tolerance_for(c.dtype);
  const int64_t rows[] = {0, 1, c.seqlen_q / 2, c.seqlen_q - 1};
  for (int64_t b : {int64_t{0}, c.batch - 1}) {
    for (int64_t hh : {int64_t{0}, c.heads_q - 1}) {
      for (int64_t i : rows) {
        std::vector<double> o;
        double lse;
        row_reference(h, info, b, i, hh, &o, &lse);
        double max_ref = 0;
        for (double x : o) max_ref = std::max(max_ref, std::fabs(x));
        const double got_lse = h.lse.get(h.lse_offset(b, i, hh));
        EXPECT_NEAR(got_lse, lse, 1e-4 * (1 + std::fabs(lse))) << "LSE of b=" << b << " i=" << i << " h=" << hh;
        for (int64_t cc = 0; cc < info.head_dim_v; ++cc) {
          const double g = h.o.get(h.row_offset(h.o, b, i, hh, false) + cc);
          const double t = tol.slack * std::max(max_ref, kMagnitudeFloor) + tol.ulps * ulp_of(c.dtype, o[cc]);
          if (!(std::fabs(g - o[cc]) <= t)) {
            ADD_FAILURE() << "O of b=" << b << " i=" << i << " h=" << hh << " col " << cc << ": cuda=" << g
                          << " float64=" << o[cc] << " tol=" << t;
            break;
          }
        }
      }
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);
}

TEST(ReferenceCudaPerf, Bf16Causal2x2048x16x128) {
  REQUIRE_CUDA();
  HostProblemConfig c;
  c.dtype = DType::kBFloat16;
  c.batch = 2;
  c.seqlen_q = c.seqlen_k = 2048;
  c.heads_q = c.heads_kv = 16;
  c.head_dim = 128;
  c.mask = MaskType::kCausal;
  c.seed = 8000;
  throughput_case(c, 5, 3);
}

// The largest cell of the canonical grid (BENCHMARKS.md): 16384 tokens, seqlen 16k, 16 heads,
// head dim 128, no mask: ~2.2 TFLOP forward.
TEST(ReferenceCudaPerf, Bf16CanonicalLargest1x16384x16x128) {
  REQUIRE_CUDA();
  HostProblemConfig c;
  c.dtype = DType::kBFloat16;
  c.batch = 1;
  c.seqlen_q = c.seqlen_k = 16384;
  c.heads_q = c.heads_kv = 16;
  c.head_dim = 128;
  c.mask = MaskType::kNoMask;
  c.seed = 8001;
  throughput_case(c, 2, 1);
}

}  // namespace
