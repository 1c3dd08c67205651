// bench/harness.h: building, running and checking one attention problem, shared by the
// `flashlane` tool (run, bench) and the tests.
//
//  - ProblemSpec: the sizes and options of one problem (bshd or varlen), as the CLI takes them.
//  - make_inputs(): seeded normal(0, 1) random q, k, v (and dout), rounded to the problem's dtype
//    and kept as double, so the low-precision tensors and their float64 upcasts hold exactly the
//    same values.
//  - ProblemTensors: owning host or CUDA buffers of every tensor of a problem in one dtype, with
//    outputs poisoned (all bytes 0xff = NaN in every float format) and the AttentionProblem views.
//  - reference_outputs(): reference_cpu (host) or reference_cuda (device) run directly through the
//    backend entry points (no dispatcher: no receipt is written, FLASHLANE_RECEIPTS stays clean).
//  - check_outputs(): FlashAttention's rule per tensor,
//      max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5,
//    where ref64 is the reference on float64 upcasts and ref_lowp the reference on the same
//    low-precision inputs writing low-precision outputs, emulating a fused kernel's roundings
//    (detail::ReferenceNumerics::kLowPrecision).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flashlane/dispatch.h"
#include "flashlane/problem.h"
#include "flashlane/status.h"
#include "flashlane/tensor.h"

namespace flashlane::bench {

/// Sizes and options of one problem. Varlen when seqlens_q is non-empty (then batch =
/// seqlens_q.size() and seqlens_k must have the same length).
struct ProblemSpec {
  int64_t batch = 1;
  int64_t seqlen_q = 128, seqlen_k = 128;
  int64_t heads_q = 4, heads_kv = 4;
  int64_t head_dim = 64, head_dim_v = 0;  // 0: same as head_dim
  DType dtype = DType::kBFloat16;
  MaskType mask = MaskType::kNoMask;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  std::optional<double> softmax_scale;
  std::vector<int32_t> seqlens_q, seqlens_k;  // varlen lengths (empty: bshd)
  std::vector<int32_t> seqused_k;             // optional, [batch]
  std::vector<float> learnable_sink;          // attention sinks, [heads_q] (empty: none)
  uint64_t seed = 0;

  bool varlen() const { return !seqlens_q.empty(); }
  int64_t dv() const { return head_dim_v > 0 ? head_dim_v : head_dim; }
  int64_t num_batches() const { return varlen() ? static_cast<int64_t>(seqlens_q.size()) : batch; }
  int64_t total_q() const;
  int64_t total_k() const;
  int64_t max_seqlen_q() const;
  int64_t max_seqlen_k() const;
  /// Number of (query, key) score pairs before masking, summed over batch and query heads.
  double score_pairs() const;
  /// Visible pairs after the mask, window and seqused_k (computed here, independently).
  double visible_pairs() const;
  /// Checks the spec itself (lengths, list sizes); the library validates the rest.
  bool check(std::string* why) const;
  /// "b2 sq128 sk128 hq4 hkv4 d64 bfloat16 causal".
  std::string describe() const;
};

nlohmann::json spec_to_json(const ProblemSpec& spec);
bool spec_from_json(const nlohmann::json& j, ProblemSpec* out, std::string* why);

/// Parses "1,2,3" into integers; false on a malformed list.
bool parse_int_list(const std::string& text, std::vector<int32_t>* out);
/// Parses varlen lengths "q1,q2;k1,k2".
bool parse_varlen_lengths(const std::string& text, std::vector<int32_t>* q, std::vector<int32_t>* k);

/// The random inputs of a problem, already rounded to spec.dtype, as double.
struct HostInputs {
  std::vector<double> q, k, v, dout;
};
/// normal(0, 1) values from a generator seeded with spec.seed (dout only when `with_dout`).
/// Deterministic for a given seed whatever the number of threads used.
HostInputs make_inputs(const ProblemSpec& spec, bool with_dout);

/// Owning buffer on the host or one CUDA device. Move-only.
class Buffer {
 public:
  Buffer() = default;
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  /// Allocates `bytes` (at least 16) on `device`; CUDA errors come back as kCudaError.
  Status allocate(size_t bytes, Device device);
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Status fill_bytes(int value);
  Status upload(const void* host, size_t bytes);
  Status download(void* host, size_t bytes) const;

 private:
  void release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_{};
};

/// Every tensor of a problem, in one dtype, on one device, with the views filled in.
/// With sinks: learnable_sink (sink), and dlearnable_sink (dsink) when backward.
struct ProblemTensors {
  ProblemSpec spec;
  DType dtype = DType::kBFloat16;
  Device device{};
  bool backward = false;
  Buffer q, k, v, o, lse, dout, dq, dk, dv, cu_q, cu_k, seqused, sink, dsink;
  AttentionProblem problem;
  size_t bytes_allocated = 0;  // sum of the buffers above
};

/// Allocates and fills the inputs (values of `inputs` stored as `dtype`; the sinks of the spec
/// as float32), poisons the outputs (o, lse, and dq, dk, dv, dlearnable_sink when `backward`).
/// dout is filled when `backward`.
Status build_tensors(const ProblemSpec& spec, const HostInputs& inputs, DType dtype, Device device,
                     bool backward, ProblemTensors* out);
/// Poisons the outputs again (NaN everywhere): forward o and lse, backward dq, dk, dv (and
/// dlearnable_sink).
Status poison_outputs(ProblemTensors* t, Direction direction);

/// Host copies (double) of the outputs of one run (dsink: empty without sinks).
struct Outputs {
  std::vector<double> o, lse, dq, dk, dv, dsink;
};
/// Copies the outputs of `direction` (forward: o, lse; backward: dq, dk, dv, and
/// dlearnable_sink with sinks) to the host.
Status fetch_outputs(const ProblemTensors& t, Direction direction, Outputs* out);

/// Copies one tensor held in `buffer` (viewed as `view`, contiguous from the buffer's start) to
/// the host as double.
Status fetch_tensor(const Buffer& buffer, const TensorView& view, std::vector<double>* out);

/// Runs a reference backend directly (no dispatcher, no receipt) on `problem`, whose tensors
/// live on CUDA device 0 (on_gpu: reference_cuda) or the host (reference_cpu): the forward,
/// then, when `backward`, the backward on the o and lse the forward wrote. Numerics as for
/// reference_outputs() below (`dtype`: the problem's dtype). Synchronizes the device.
Status run_reference(const AttentionProblem& problem, DType dtype, bool backward, bool on_gpu);

/// Runs a reference backend directly (no dispatcher, no receipt) on a problem built from
/// `inputs` in `dtype`: forward, then (when `backward`) the backward pass on its own o and lse.
/// on_gpu: reference_cuda on CUDA device 0; otherwise reference_cpu. 16-bit `dtype` (ref_lowp):
/// ReferenceNumerics::kLowPrecision for both references, forward and backward (P, and dS,
/// rounded to `dtype` before the products that read them).
Status reference_outputs(const ProblemSpec& spec, const HostInputs& inputs, DType dtype,
                         bool backward, bool on_gpu, Outputs* out);

/// Error figures of one output tensor.
struct ErrorFigure {
  std::string tensor;             // "o", "lse", "dq", "dk", "dv", "dsink"
  double max_abs_diff = 0.0;      // max |out - ref64|
  double ref_max_abs_diff = 0.0;  // max |ref_lowp - ref64|
  double tolerance = 0.0;         // 2 * ref_max_abs_diff + 1e-5
  int64_t nan_count = 0;          // non-finite entries of out (LSE: NaN and +inf; -inf is legal)
  int64_t count = 0;              // entries compared
  bool pass = false;
};
/// The rule's absolute slack.
constexpr double kAbsTolerance = 1e-5;
/// Compares one tensor. LSE entries that are -inf in both out and ref64 count as equal.
ErrorFigure compare_tensor(const std::string& name, const std::vector<double>& out,
                           const std::vector<double>& ref64, const std::vector<double>& ref_lowp);

struct CheckResult {
  std::vector<ErrorFigure> figures;
  bool pass = false;
  std::string ref64_method;     // how ref64 was computed
  std::string ref_lowp_method;  // how ref_lowp was computed
  /// The figure with the largest max_abs_diff / tolerance (non-finite first): what a proof row
  /// reports as max_abs_diff / ref_max_abs_diff.
  const ErrorFigure* worst() const;
  int64_t nan_count() const;
};
/// Compares the outputs of `direction` (forward: o, lse; backward: dq, dk, dv, and dsink when
/// the references have it).
CheckResult check_outputs(Direction direction, const Outputs& got, const Outputs& ref64,
                          const Outputs& ref_lowp);

nlohmann::json figure_to_json(const ErrorFigure& f);
nlohmann::json check_to_json(const CheckResult& c);

/// True when CUDA device 0 exists (query_device(0).cuda_available).
bool cuda_present(std::string* why_not = nullptr);

}  // namespace flashlane::bench
