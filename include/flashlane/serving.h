// flashlane/serving.h: a serving plan: the backends a server will call for prefill (forward)
// and for decode (KV-cache calls, flashlane/kvcache.h), with the one attention configuration it
// serves (KV layout and page size, dtype, head dims, GQA ratio, mask, window, softcap, rotary,
// attention sinks).
//
// ServingPlan::create asks the applicability table (the same rows select() evaluates; see
// dispatch.h) whether each named backend executes that exact combination, and refuses, with
// the tag of the first rule that fails, a combination no kernel executes: a server that would
// otherwise fall back (or fail) on its first decode step fails at start-up instead. For example
// sm90 as decode backend over a paged cache of page_size 8 is refused with
// sm90.decode_page_size_unsupported, and any sm90 decode plan (until its kernels exist) with
// sm90.decode_not_implemented.
//
// The rows that look at the machine or at the tensors' place (a CUDA device, its sm, host or
// CUDA tensors: Rule::device_dependent) are skipped unless check_device is set: a plan can be
// checked on a machine without the GPU it will run on. The tensors are taken to live where the
// named backend keeps them (reference_cpu: host, the others: CUDA).
#pragma once

#include <cstdint>
#include <string>

#include "flashlane/dispatch.h"
#include "flashlane/problem.h"
#include "flashlane/status.h"
#include "flashlane/tensor.h"

namespace flashlane {

struct ServingConfig {
  Backend prefill_backend = Backend::kSm90;  // a concrete backend (kAuto is refused)
  Backend decode_backend = Backend::kSm90;   // a concrete backend (kAuto is refused)
  bool prefill_varlen = true;                // prefill over packed varlen tokens (else dense)
  KvLayout kv_layout = KvLayout::kPaged;     // the decode cache: kDense or kPaged
  int64_t page_size = 256;                   // kPaged: >= 1; ignored for kDense
  DType dtype = DType::kBFloat16;
  int64_t head_dim = 128;
  int64_t head_dim_v = 0;  // 0: head_dim
  int64_t heads_q = 32, heads_kv = 8;  // GQA ratio heads_q / heads_kv (MQA: heads_kv = 1)
  bool causal = true;                  // causal_bottom_right (FlashAttention's causal=True)
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  bool append = true;      // decode steps append their new k/v to the cache in the call
  int64_t rotary_dim = 0;  // rotary applied by the decode call (needs append); 0: none
  /// The model has attention sinks (gpt-oss: one learned logit per query head, passed to every
  /// call as learnable_sink, flashlane/problem.h). The table is asked about calls with sinks
  /// (ProblemInfo::has_sink), and the prefill calls' receipts say sinks_fwd / sinks_varlen_fwd;
  /// a KV-cache call's runtime_mode does not change with sinks.
  bool learnable_sink = false;
  bool check_device = false;  // also evaluate the device rows against CUDA device device_ordinal
  int device_ordinal = 0;
};

class ServingPlan {
 public:
  /// Checks `config` (kInvalidArgument, kHeadDimInvalid, kHeadsNotDivisible, kWindowInvalid,
  /// kSoftcapInvalid, kRotaryInvalid, kUnsupportedDType, kPageTableInvalid for page_size < 1),
  /// then asks the table about prefill and decode: kBackendInapplicable with the reason tag
  /// when a backend's rule refuses. Writes *out only on success.
  static Status create(const ServingConfig& config, ServingPlan* out);

  const ServingConfig& config() const { return config_; }
  /// Receipt runtime_mode of the prefill calls ("fwd", "varlen_fwd"; with learnable_sink
  /// "sinks_fwd", "sinks_varlen_fwd") and of the decode calls ("decode", "paged_decode",
  /// "append_decode", with or without sinks): what the receipts of such calls say.
  const std::string& prefill_mode() const { return prefill_mode_; }
  const std::string& decode_mode() const { return decode_mode_; }
  /// One-line JSON: the configuration (learnable_sink among it), the backends and the modes.
  std::string to_json() const;

 private:
  ServingConfig config_;
  std::string prefill_mode_, decode_mode_;
};

}  // namespace flashlane
