// The sm90 forward kernel against the float64 CPU reference, with FlashAttention's rule:
//   max |out - ref64| <= 2 * max |ref_lowp - ref64| + 1e-5   (for O and for LSE)
// ref64 = reference_cpu_forward on float64 copies of the same (low-precision) inputs;
// ref_lowp = reference_cpu_forward on the low-precision inputs (low-precision output).
// Every case: outputs poisoned before the run and checked fully written; padding around every
// buffer holds NaN and must stay untouched; NaN planted in K/V rows beyond seqused_k.
// Every test skips with a message when there is no CUDA device or it is not sm_90.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "dispatch/backends.h"
#if defined(FLASHLANE_TEST_SOFTMAX_VARIANTS)
#include "gpu/sm90_softmax_variants.h"
#include "sm90/common/params_builder.h"
#endif
#include "flashlane/dispatch.h"
#include "flashlane/flashlane.h"
#include "flashlane/receipt.h"
#include "sm90/common/params_builder.h"
#include "support/host_problem.h"
#include "support/sink_logits.h"
#include "gpu/sm90_device.h"

namespace fl = flashlane;
using fl::DType;
using fl::MaskType;
using fl::test_support::HostProblem;
using fl::test_support::HostProblemConfig;
using fl::test_support::HostTensor;

namespace {

/// Device copies of a HostProblem's buffers (padding included) and the problem over them.
class DeviceCopy {
 public:
  explicit DeviceCopy(const HostProblem& hp) : hp_(hp) {
    for (const HostTensor* t : {&hp.q, &hp.k, &hp.v, &hp.o, &hp.lse, &hp.learnable_sink}) {
      ptrs_.push_back(upload(*t));
    }
    const fl::AttentionProblem host = hp.problem();
    problem_ = host;
    const fl::Device dev = fl::Device::cuda(0);
    problem_.q = hp.q.view_at(ptrs_[0], dev);
    problem_.k = hp.k.view_at(ptrs_[1], dev);
    problem_.v = hp.v.view_at(ptrs_[2], dev);
    problem_.o = hp.o.view_at(ptrs_[3], dev);
    problem_.lse = hp.lse.defined() ? hp.lse.view_at(ptrs_[4], dev) : fl::TensorView{};
    problem_.learnable_sink =
        hp.learnable_sink.defined() ? hp.learnable_sink.view_at(ptrs_[5], dev) : fl::TensorView{};
    problem_.dout = problem_.dq = problem_.dk = problem_.dv = fl::TensorView{};
    problem_.cu_seqlens_q = int_view(host.cu_seqlens_q);
    problem_.cu_seqlens_k = int_view(host.cu_seqlens_k);
    problem_.seqused_k = int_view(host.seqused_k);
  }
  ~DeviceCopy() {
    for (void* p : ptrs_) cudaFree(p);
  }
  const fl::AttentionProblem& problem() const { return problem_; }
  /// Copies o and lse (whole buffers) back into `dst`.
  void download(HostProblem& dst) const {
    EXPECT_EQ(cudaMemcpy(dst.o.bytes.data(), ptrs_[3], dst.o.bytes.size(), cudaMemcpyDeviceToHost),
              cudaSuccess);
    if (dst.lse.defined()) {
      EXPECT_EQ(cudaMemcpy(dst.lse.bytes.data(), ptrs_[4], dst.lse.bytes.size(),
                           cudaMemcpyDeviceToHost),
                cudaSuccess);
    }
  }

 private:
  void* upload(const HostTensor& t) {
    if (!t.defined() || t.bytes.empty()) return nullptr;
    void* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, t.bytes.size()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice), cudaSuccess);
    return d;
  }
  fl::TensorView int_view(const fl::TensorView& host) {
    if (!host.defined()) return {};
    const size_t bytes = size_t(host.numel()) * sizeof(int32_t);
    void* d = nullptr;
    EXPECT_EQ(cudaMalloc(&d, std::max<size_t>(bytes, 4)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(d, host.data, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    ptrs_.push_back(d);
    fl::TensorView v = host;
    v.data = d;
    v.device = fl::Device::cuda(0);
    return v;
  }
  const HostProblem& hp_;
  std::vector<void*> ptrs_;
  fl::AttentionProblem problem_;
};

/// Copies the input values of `src` (low precision) into `dst` (float64, same config).
void copy_inputs(const HostProblem& src, HostProblem& dst) {
  for (auto [s, d] : {std::pair{&src.q, &dst.q}, {&src.k, &dst.k}, {&src.v, &dst.v}}) {
    s->for_each_offset([&](int64_t off) { d->set(off, s->get(off)); });
  }
}

struct Errors {
  double o = 0, o_ref = 0, lse = 0, lse_ref = 0;
  double lse_magnitude = 0;  // max |LSE| of the float64 reference over finite rows
  int64_t lse_inf_mismatch = 0, nonfinite = 0;
};

/// Max errors of `got` and `low` against `ref` over every valid (b, token, head) row.
void compare(const HostProblem& got, const HostProblem& low, const HostProblem& ref, Errors* e) {
  const HostProblemConfig& c = ref.config();
  const int64_t dv = ref.head_dim_v();
  for (int64_t b = 0; b < ref.batch(); ++b) {
    for (int64_t i = 0; i < ref.seqlen_q(b); ++i) {
      for (int64_t h = 0; h < c.heads_q; ++h) {
        const int64_t off = ref.row_offset(ref.o, b, i, h, false);
        for (int64_t x = 0; x < dv; ++x) {
          const double r = ref.o.get(off + x), g = got.o.get(off + x), l = low.o.get(off + x);
          if (!std::isfinite(g)) {
            ++e->nonfinite;
            continue;
          }
          e->o = std::max(e->o, std::fabs(g - r));
          e->o_ref = std::max(e->o_ref, std::fabs(l - r));
        }
        if (!ref.lse.defined()) continue;
        const int64_t lo = ref.lse_offset(b, i, h);
        const double r = ref.lse.get(lo), g = got.lse.get(lo), l = low.lse.get(lo);
        if (std::isinf(r) || std::isinf(g)) {
          if (!(std::isinf(r) && std::isinf(g) && r < 0 && g < 0)) ++e->lse_inf_mismatch;
          continue;
        }
        if (!std::isfinite(g)) {
          ++e->nonfinite;
          continue;
        }
        e->lse = std::max(e->lse, std::fabs(g - r));
        e->lse_ref = std::max(e->lse_ref, std::fabs(l - r));
        e->lse_magnitude = std::max(e->lse_magnitude, std::fabs(r));
      }
    }
  }
}

std::string describe(const HostProblemConfig& c) {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "%s d=%lld/%lld batch=%lld hq=%lld hkv=%lld sq=%lld sk=%lld varlen=%zu "
                "mask=%s window=(%lld,%lld) softcap=%g seqused=%zu pad_dim=%lld heads_major=%d "
                "seed=%llu",
                fl::dtype_name(c.dtype), (long long)c.head_dim,
                (long long)(c.head_dim_v ? c.head_dim_v : c.head_dim), (long long)c.batch,
                (long long)c.heads_q, (long long)c.heads_kv, (long long)c.seqlen_q,
                (long long)c.seqlen_k, c.seqlens_q.size(), fl::mask_type_name(c.mask),
                (long long)c.window_left, (long long)c.window_right, c.softcap,
                c.seqused_k.size(), (long long)c.pad_dim, int(c.heads_major),
                (unsigned long long)c.seed);
  return buf;
}

// kSoftmaxVariant: the kernel of sm90_softmax_variants.cu (emulated exp2 and conditional rescaling
// at head_dim 64 and 128, bf16), launched on the same parameters as the library's.
enum class Path { kDirect, kDispatcherStrict, kSoftmaxVariant };

/// Rewrites the random inputs of a problem (the same way for every copy of it).
using InputShaper = std::function<void(HostProblem&)>;

/// Runs one problem on the sm90 kernel and checks it against the references.
/// lse_ulps: extra LSE tolerance in units of 2^-24 |LSE|, for inputs whose scores are large: the
/// kernel accumulates S = Q K^T in fp32 (the float64 references do not), and a dot product of
/// head_dim terms accumulated in fp32 is within head_dim * 2^-24 * sum |q_i k_i| of the exact
/// one (the standard bound for recursive summation, Higham, "Accuracy and Stability of Numerical
/// Algorithms", sec. 3.1). LSE inherits that error of the row's largest scores; with |LSE| ~ 300
/// it is 1e-4 and more, beyond the rule's absolute 1e-5. 0 elsewhere.
/// Attention sinks: cfg.learnable_sink, given to the references and the kernel alike.
void check_case(HostProblemConfig cfg, Path path = Path::kDirect,
                fl::sm90::ScheduleOverride schedule = fl::sm90::ScheduleOverride::kAuto,
                const InputShaper& shape_inputs = {}, double lse_ulps = 0.0) {
  const bool sinks = !cfg.learnable_sink.empty();
  SCOPED_TRACE(describe(cfg));
  cfg.with_grads = false;
  cfg.nan_unused_kv = true;
  HostProblem low(cfg);  // low-precision inputs; ref_lowp output
  HostProblem got(cfg);  // same inputs; receives the kernel's output
  if (shape_inputs) {
    shape_inputs(low);
    shape_inputs(got);
  }
  HostProblemConfig cfg64 = cfg;
  cfg64.dtype = DType::kFloat64;
  HostProblem ref(cfg64);
  copy_inputs(low, ref);

  fl::ProblemInfo info64, info_low;
  ASSERT_TRUE(fl::validate(ref.problem(), fl::Direction::kForward, &info64).ok());
  ASSERT_TRUE(fl::validate(low.problem(), fl::Direction::kForward, &info_low).ok());
  ASSERT_EQ(info64.has_sink, sinks);
  ASSERT_TRUE(fl::detail::reference_cpu_forward(ref.problem(), info64).ok());
  ASSERT_TRUE(fl::detail::reference_cpu_forward(low.problem(), info_low).ok());

  DeviceCopy dev(got);
  fl::ProblemInfo info;
  const fl::Status vs = fl::validate(dev.problem(), fl::Direction::kForward, &info);
  ASSERT_TRUE(vs.ok()) << vs.to_string();
  std::string variant;
  fl::sm90::set_schedule_override(schedule);
  if (path == Path::kDirect) {
    const fl::Status st = fl::detail::sm90_forward(dev.problem(), info, nullptr, &variant);
    ASSERT_TRUE(st.ok()) << st.to_string();
  } else if (path == Path::kSoftmaxVariant) {
#if defined(FLASHLANE_TEST_SOFTMAX_VARIANTS)
    fl::sm90::FwdParams params;
    fl::Status st = fl::sm90::build_fwd_params(dev.problem(), info, &params);
    ASSERT_TRUE(st.ok()) << st.to_string();
    st = fl::test_support::launch_fwd_softmax_variant(int(cfg.head_dim), params, nullptr);
    ASSERT_TRUE(st.ok()) << st.to_string();
    variant = "fwd_m128_softmax_variant";
#else
    FAIL() << "built without the softmax variants";
#endif
  } else {
    fl::Request req;
    req.backend = fl::Backend::kSm90;
    req.strict = true;
    const fl::Status st = fl::forward(dev.problem(), req);
    ASSERT_TRUE(st.ok()) << st.to_string();
    const fl::Receipt& r = fl::last_receipt();
    EXPECT_EQ(r.actual_backend, "sm90");
    const std::string mode = cfg.seqlens_q.empty() ? "fwd" : "varlen_fwd";
    EXPECT_EQ(r.runtime_mode, sinks ? "sinks_" + mode : mode);
    variant = r.variant;
  }
  fl::sm90::set_schedule_override(fl::sm90::ScheduleOverride::kAuto);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(variant.rfind("fwd_m128_", 0), 0u) << variant;
  dev.download(got);

  EXPECT_EQ(got.o.count_poisoned(), 0) << "O not fully written";
  EXPECT_EQ(got.o.count_padding_changed(), 0) << "O written out of bounds";
  if (got.lse.defined()) {
    EXPECT_EQ(got.lse.count_poisoned(), 0) << "LSE not fully written";
    EXPECT_EQ(got.lse.count_padding_changed(), 0) << "LSE written out of bounds";
  }
  Errors e;
  compare(got, low, ref, &e);
  EXPECT_EQ(e.nonfinite, 0);
  EXPECT_EQ(e.lse_inf_mismatch, 0);
  EXPECT_LE(e.o, 2 * e.o_ref + 1e-5) << "O error " << e.o << " vs low-precision reference " << e.o_ref
                                     << " (" << variant << ")";
  EXPECT_LE(e.lse, 2 * e.lse_ref + 1e-5 + lse_ulps * 0x1p-24 * e.lse_magnitude)
      << "LSE error " << e.lse << " vs " << e.lse_ref << ", |LSE| up to " << e.lse_magnitude
      << " (" << variant << ")";
}

HostProblemConfig base(DType dt, int64_t d, int64_t dv, uint64_t seed) {
  HostProblemConfig c;
  c.dtype = dt;
  c.head_dim = d;
  c.head_dim_v = dv;
  c.seed = seed;
  return c;
}

uint64_t fresh_seed() {
  static std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

constexpr int64_t kDims[][2] = {{64, 64}, {96, 96}, {128, 128}, {192, 192}, {192, 128}, {256, 256}};

}  // namespace

TEST(Sm90Forward, EveryHeadDimAndDtype) {
  SKIP_UNLESS_SM90();
  for (auto& dd : kDims) {
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      if (!fl::detail::sm90_forward_supports(dd[0], dd[1])) continue;  // build-limited
      HostProblemConfig c = base(dt, dd[0], dd[1], fresh_seed());
      c.batch = 2;
      c.heads_q = 4;
      c.heads_kv = 2;
      c.seqlen_q = 300;
      c.seqlen_k = 517;
      c.mask = MaskType::kCausalBottomRight;
      check_case(c);
      c.mask = MaskType::kNoMask;
      c.seqlen_q = c.seqlen_k = 256;
      c.batch = 1;
      check_case(c);
    }
  }
}

TEST(Sm90Forward, SequenceLengthEdges) {
  SKIP_UNLESS_SM90();
  const int64_t lens[] = {1, 17, 113, 1000, 4097};
  for (int64_t sq : lens) {
    for (int64_t sk : lens) {
      if (sq * sk > 1000 * 4097) continue;  // keeps the CPU reference bounded
      HostProblemConfig c = base(DType::kBFloat16, 128, 128, fresh_seed());
      c.heads_q = 2;
      c.heads_kv = 1;
      c.seqlen_q = sq;
      c.seqlen_k = sk;
      c.mask = (sq + sk) % 2 ? MaskType::kCausal : MaskType::kNoMask;
      check_case(c);
    }
  }
  HostProblemConfig c = base(DType::kFloat16, 64, 64, fresh_seed());
  c.seqlen_q = c.seqlen_k = 4097;
  c.mask = MaskType::kCausal;
  check_case(c);
}

TEST(Sm90Forward, MasksAndWindows) {
  SKIP_UNLESS_SM90();
  struct M { MaskType mask; int64_t wl, wr; };
  const M masks[] = {{MaskType::kNoMask, -1, -1},    {MaskType::kCausal, -1, -1},
                     {MaskType::kCausalBottomRight, -1, -1}, {MaskType::kNoMask, 64, 0},
                     {MaskType::kNoMask, 0, 0},      {MaskType::kNoMask, 100, 37},
                     {MaskType::kNoMask, -1, 5},     {MaskType::kNoMask, 200, -1},
                     {MaskType::kCausal, 50, -1},    {MaskType::kCausalBottomRight, 129, -1}};
  for (const M& m : masks) {
    for (auto [sq, sk] : {std::pair<int64_t, int64_t>{300, 300}, {113, 1000}, {1000, 113}}) {
      HostProblemConfig c = base(DType::kBFloat16, 64, 64, fresh_seed());
      c.batch = 2;
      c.heads_q = 2;
      c.heads_kv = 1;
      c.seqlen_q = sq;
      c.seqlen_k = sk;
      c.mask = m.mask;
      c.window_left = m.wl;
      c.window_right = m.mask == MaskType::kNoMask ? m.wr : -1;
      check_case(c);
    }
  }
}

TEST(Sm90Forward, SoftcapGqaMqaAndStrides) {
  SKIP_UNLESS_SM90();
  for (int64_t hkv : {8, 2, 1}) {  // MHA, GQA, MQA
    HostProblemConfig c = base(DType::kFloat16, 128, 128, fresh_seed());
    c.batch = 3;
    c.heads_q = 8;
    c.heads_kv = hkv;
    c.seqlen_q = 200;
    c.seqlen_k = 333;
    c.softcap = hkv == 2 ? 0.0 : 30.0;
    c.mask = hkv == 1 ? MaskType::kCausal : MaskType::kNoMask;
    c.pad_dim = 8;  // 16 bytes: head rows not packed
    c.pad_heads = 8;
    c.pad_tokens = 3;
    c.heads_major = hkv == 8;
    check_case(c);
  }
}

TEST(Sm90Forward, VarlenSequsedAndNaNPadding) {
  SKIP_UNLESS_SM90();
  std::mt19937 rng{unsigned(fresh_seed())};
  for (int round = 0; round < 4; ++round) {
    HostProblemConfig c = base(round % 2 ? DType::kFloat16 : DType::kBFloat16,
                               round < 2 ? 128 : 64, round < 2 ? 128 : 64, fresh_seed());
    const int n = round == 3 ? 40 : 5;
    std::uniform_int_distribution<int> len(0, round == 3 ? 150 : 700);
    for (int b = 0; b < n; ++b) {
      c.seqlens_q.push_back(len(rng));
      c.seqlens_k.push_back(len(rng));
    }
    c.seqlens_q[0] = 1;
    if (round != 1) {
      for (int b = 0; b < n; ++b) {
        c.seqused_k.push_back(std::uniform_int_distribution<int>(0, c.seqlens_k[b])(rng));
      }
    }
    c.heads_q = 4;
    c.heads_kv = round == 2 ? 1 : 2;
    c.mask = round == 0 ? MaskType::kCausalBottomRight : round == 2 ? MaskType::kCausal
                                                                     : MaskType::kNoMask;
    if (round == 3) c.window_left = 20, c.window_right = 10;
    c.pad_tokens = 5;  // NaN rows after the packed tokens
    check_case(c);
  }
  // bshd with seqused_k: NaN keys beyond it in every sequence.
  HostProblemConfig c = base(DType::kBFloat16, 256, 256, fresh_seed());
  c.batch = 3;
  c.heads_q = 2;
  c.heads_kv = 2;
  c.seqlen_q = 190;
  c.seqlen_k = 400;
  c.seqused_k = {400, 129, 1};
  check_case(c);
}

TEST(Sm90Forward, SchedulesAgree) {
  SKIP_UNLESS_SM90();
  for (auto sched : {fl::sm90::ScheduleOverride::kOneTilePerCta,
                     fl::sm90::ScheduleOverride::kPersistent}) {
    HostProblemConfig c = base(DType::kBFloat16, 128, 128, fresh_seed());
    c.batch = 4;
    c.heads_q = 16;
    c.heads_kv = 4;
    c.seqlen_q = 777;
    c.seqlen_k = 901;
    c.mask = MaskType::kCausalBottomRight;
    check_case(c, Path::kDirect, sched);
    c.mask = MaskType::kNoMask;
    check_case(c, Path::kDirect, sched);
  }
}

TEST(Sm90Forward, BatchTimesHeadsBeyondOneGridDimension) {
  SKIP_UNLESS_SM90();
  HostProblemConfig c = base(DType::kBFloat16, 64, 64, fresh_seed());
  c.batch = 1100;
  c.heads_q = 64;  // 70400 (batch, head) tiles > 65535
  c.heads_kv = 8;
  c.seqlen_q = 3;
  c.seqlen_k = 5;
  check_case(c);
}

TEST(Sm90Forward, ThroughTheDispatcherInStrictMode) {
  SKIP_UNLESS_SM90();
  HostProblemConfig c = base(DType::kBFloat16, 128, 128, fresh_seed());
  c.batch = 2;
  c.heads_q = 4;
  c.heads_kv = 4;
  c.seqlen_q = c.seqlen_k = 257;
  c.mask = MaskType::kCausal;
  check_case(c, Path::kDispatcherStrict);
}

// Scores built against the conditional rescaling and the emulated exp2 (fwd/softmax.h): the kernel
// visits key blocks from the last to the first, so keys whose score grows towards key 0 raise the
// running maximum on every block, by less than the rescaling threshold (8 in log2 units) on some
// problems and by more on others; one huge logit (its neighbours' exp2 arguments fall below the
// emulated exp2's clamp); rows that see no key at all (bottom-right causal with more queries than
// keys); and softcap on top of growing scores.
namespace {
// Score of (query i, key j) = softmax_scale * q_i . k_j with component 0 of every q_i set to 1 and
// component 0 of k_j to ramp(j) (in log2 units, divided by the log2-domain scale): every query sees
// the same profile on top of the random rest.
InputShaper growing_scores(double growth_log2, int64_t huge_key, double huge_log2) {
  return [=](HostProblem& hp) {
    const HostProblemConfig& c = hp.config();
    const double to_log2 = 1.4426950408889634 / std::sqrt(double(c.head_dim));
    for (int64_t b = 0; b < hp.batch(); ++b) {
      for (int64_t h = 0; h < c.heads_q; ++h) {
        for (int64_t i = 0; i < hp.seqlen_q(b); ++i) hp.q.set(hp.row_offset(hp.q, b, i, h, false), 1.0);
      }
      const int64_t n = hp.seqlen_k(b);
      for (int64_t h = 0; h < c.heads_kv; ++h) {
        for (int64_t j = 0; j < n; ++j) {
          // Growing towards key 0 by growth_log2 over the sequence.
          double s_log2 = growth_log2 * double(n - j) / double(std::max<int64_t>(n, 1));
          if (j == huge_key) s_log2 += huge_log2;
          hp.k.set(hp.row_offset(hp.k, b, j, h, true), s_log2 / to_log2);
        }
      }
    }
  };
}

struct AdversarialShape {
  int64_t sq, sk;
  MaskType mask;
  double growth, huge;
  int64_t huge_key;
  double softcap;
};
// The kernel visits key blocks from the last to the first, so these maxima grow on every block.
constexpr AdversarialShape kAdversarialShapes[] = {
    {256, 1000, MaskType::kNoMask, 40.0, 0.0, -1, 0.0},    // ~8 per 192-key block: around it
    {256, 4097, MaskType::kNoMask, 30.0, 0.0, -1, 0.0},    // ~1 per block: stays stale long
    {200, 1536, MaskType::kNoMask, 400.0, 0.0, -1, 0.0},   // ~50 per block: always rescales
    {256, 700, MaskType::kNoMask, 0.0, 200.0, 0, 0.0},     // one huge logit, visited last
    {256, 700, MaskType::kNoMask, 0.0, 200.0, 650, 0.0},   // one huge logit, visited first
    {300, 200, MaskType::kCausalBottomRight, 40.0, 60.0, 0, 0.0},  // 100 rows see no key
    {256, 1000, MaskType::kCausal, 60.0, 0.0, -1, 30.0},   // softcap on growing scores
};

void check_adversarial(DType dt, int64_t d, int64_t dv, Path path) {
  for (const AdversarialShape& sh : kAdversarialShapes) {
    HostProblemConfig c = base(dt, d, dv, fresh_seed());
    c.seqlen_q = sh.sq;
    c.seqlen_k = sh.sk;
    c.heads_q = 2;
    c.heads_kv = 1;
    c.mask = sh.mask;
    c.softcap = sh.softcap;
    SCOPED_TRACE("growth " + std::to_string(sh.growth) + " huge " + std::to_string(sh.huge) +
                 " at key " + std::to_string(sh.huge_key));
    // Scores up to ~400 in log2 units, LSE up to ~280, and one term of each score dominates
    // (sum |q_i k_i| ~ |s|): the fp32 accumulation bound is head_dim ulps of |LSE|.
    check_case(c, path, fl::sm90::ScheduleOverride::kAuto,
               growing_scores(sh.growth, sh.huge_key, sh.huge), /*lse_ulps=*/double(d));
    if (::testing::Test::HasFatalFailure()) return;
  }
}
}  // namespace

// Scores built against the conditional rescaling and the emulated exp2 (fwd/softmax.h): maxima
// that grow by less than the rescaling threshold (8 in log2 units) per block and by more; one huge
// logit (its neighbours' exp2 arguments fall below the emulated exp2's clamp); rows that see no
// key at all (bottom-right causal with more queries than keys); softcap on growing scores.
TEST(Sm90Forward, AdversarialScoresForTheRescaling) {
  SKIP_UNLESS_SM90();
  for (auto& dd : kDims) {
    if (!fl::detail::sm90_forward_supports(dd[0], dd[1])) continue;
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      check_adversarial(dt, dd[0], dd[1], Path::kDirect);
      if (HasFatalFailure()) return;
    }
  }
}

// The emulated exp2 (4 of 16 columns) with conditional rescaling, which no table row ships:
// random problems (masks, GQA, varlen, seqused_k) and the adversarial scores above.
TEST(Sm90Forward, EmulatedExp2Variant) {
  SKIP_UNLESS_SM90();
#if !defined(FLASHLANE_TEST_SOFTMAX_VARIANTS)
  GTEST_SKIP() << "this build has no softmax variants (needs head dims 64 and 128)";
#else
  for (int64_t d : {64, 128}) {
    HostProblemConfig c = base(DType::kBFloat16, d, d, fresh_seed());
    c.batch = 2;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.seqlen_q = 300;
    c.seqlen_k = 517;
    for (MaskType m : {MaskType::kCausalBottomRight, MaskType::kNoMask, MaskType::kCausal}) {
      c.mask = m;
      check_case(c, Path::kSoftmaxVariant);
    }
    c.mask = MaskType::kNoMask;
    c.window_left = 100;
    c.window_right = 30;
    check_case(c, Path::kSoftmaxVariant);
    HostProblemConfig v = base(DType::kBFloat16, d, d, fresh_seed());
    v.seqlens_q = {0, 130, 7, 400};
    v.seqlens_k = {5, 300, 0, 700};
    v.seqused_k = {5, 250, 0, 333};
    v.heads_q = 2;
    v.mask = MaskType::kCausalBottomRight;
    check_case(v, Path::kSoftmaxVariant);
    check_adversarial(DType::kBFloat16, d, d, Path::kSoftmaxVariant);
    if (HasFatalFailure()) return;
  }
#endif
}

// Attention sinks (problem.h): one logit per query head joins every row's softmax denominator.
// Head 0's sink dominates (O ~ 0, LSE ~ the sink), head 1's has no effect, the others are around
// the rows' LSE. Rows without a visible key (bottom-right causal, more queries than keys) write
// O = 0 and LSE = sink. Masks, GQA, softcap (the sink is not capped), varlen, every head dim.
TEST(Sm90Forward, AttentionSinks) {
  SKIP_UNLESS_SM90();
  for (auto& dd : kDims) {
    if (!fl::detail::sm90_forward_supports(dd[0], dd[1])) continue;
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      HostProblemConfig c = base(dt, dd[0], dd[1], fresh_seed());
      c.batch = 2;
      c.heads_q = 6;
      c.heads_kv = 2;
      c.seqlen_q = 300;
      c.seqlen_k = 200;
      c.mask = MaskType::kCausalBottomRight;
      c.learnable_sink = fl::test_support::sink_logits(c.heads_q, c.seed);
      check_case(c);
      c.mask = MaskType::kNoMask;
      c.seqlen_q = 257;
      c.seqlen_k = 1000;
      c.softcap = 15.0;
      check_case(c);
      c.softcap = 0.0;
      c.mask = MaskType::kCausal;
      c.window_left = 100;
      c.seqlens_q = {130, 7, 400};
      c.seqlens_k = {130, 300, 401};
      check_case(c, Path::kDispatcherStrict);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(Sm90Forward, RandomizedSweep) {
  SKIP_UNLESS_SM90();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("sweep seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto pick = [&](std::initializer_list<int64_t> v) {
    return *(v.begin() + std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng));
  };
  for (int i = 0; i < 40; ++i) {
    const auto& dd = kDims[pick({0, 1, 2, 3, 4, 5})];
    if (!fl::detail::sm90_forward_supports(dd[0], dd[1])) continue;
    HostProblemConfig c = base(pick({0, 1}) ? DType::kBFloat16 : DType::kFloat16, dd[0], dd[1], rng());
    c.heads_kv = pick({1, 2});
    c.heads_q = c.heads_kv * pick({1, 2, 3});
    const bool varlen = pick({0, 1});
    const int64_t sq = pick({1, 17, 113, 128, 300}), sk = pick({1, 17, 113, 256, 600});
    if (varlen) {
      const int64_t n = pick({1, 3, 6});
      for (int64_t b = 0; b < n; ++b) {
        c.seqlens_q.push_back(int32_t(std::uniform_int_distribution<int64_t>(0, sq)(rng)));
        c.seqlens_k.push_back(int32_t(std::uniform_int_distribution<int64_t>(0, sk)(rng)));
      }
    } else {
      c.batch = pick({1, 2, 5});
      c.seqlen_q = sq;
      c.seqlen_k = sk;
    }
    if (pick({0, 1})) {
      const int64_t n = varlen ? int64_t(c.seqlens_k.size()) : c.batch;
      for (int64_t b = 0; b < n; ++b) {
        const int64_t len = varlen ? c.seqlens_k[b] : sk;
        c.seqused_k.push_back(int32_t(std::uniform_int_distribution<int64_t>(0, len)(rng)));
      }
    }
    const int64_t m = pick({0, 1, 2, 3});
    c.mask = m == 1 ? MaskType::kCausal : m == 2 ? MaskType::kCausalBottomRight : MaskType::kNoMask;
    if (m == 3) {
      c.window_left = pick({-1, 0, 16, 150});
      c.window_right = pick({-1, 0, 9, 130});
    }
    c.softcap = pick({0, 0, 1}) ? 15.0 : 0.0;
    c.pad_tokens = pick({0, 2});
    check_case(c, Path::kDirect,
               fl::sm90::ScheduleOverride(pick({0, 1, 2})));
    if (HasFatalFailure()) return;
  }
}
