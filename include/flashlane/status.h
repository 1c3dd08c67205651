// flashlane/status.h: stable error codes and the Status object every public call returns.
//
// Codes are part of the public contract: their numeric values and their names
// (error_code_name) never change once released. A Status that is not ok() carries a message
// naming the argument and its offending value, and, for dispatcher refusals, the reason tag of
// the applicability rule that refused (for example "sm90.requires_sm90").
#pragma once

#include <string>
#include <utility>

namespace flashlane {

enum class ErrorCode : int {
  kOk = 0,
  // --- argument validation (1xx): nothing was launched, no output byte changed.
  kNullPointer = 100,          // a required tensor has a null data pointer
  kUnsupportedDType = 101,     // dtype not supported for this tensor
  kDTypeMismatch = 102,        // q, k, v, o, gradients disagree on dtype
  kRankMismatch = 103,         // tensor rank does not match the layout (bshd: 4, varlen: 3)
  kShapeMismatch = 104,        // a dimension disagrees with the other tensors
  kHeadsNotDivisible = 105,    // heads_q % heads_kv != 0
  kHeadDimInvalid = 106,       // head_dim 0, above 256 or not a multiple of 8
  kNotContiguous = 107,        // last dimension stride != 1
  kMisaligned = 108,           // base pointer or stride not 16-byte aligned
  kCuSeqlensInvalid = 109,     // cu_seqlens not int32, not starting at 0, decreasing, inconsistent
  kSequsedInvalid = 110,       // seqused_k larger than its sequence, negative, or bad dtype/shape
  kWindowInvalid = 111,        // window size below -1, or inconsistent with the mask type
  kSoftmaxScaleInvalid = 112,  // softmax_scale not finite or not positive
  kSoftcapInvalid = 113,       // softcap < 0 or not finite
  kDeviceMismatch = 114,       // tensors on different devices
  kDropoutUnsupported = 115,   // dropout_p != 0 (not supported yet)
  kInvalidArgument = 116,      // any other malformed argument (named in the message)
  // --- KV-cache calls (flashlane/kvcache.h), still argument validation.
  kCacheSeqlensInvalid = 117,  // cache_seqlens bad dtype/shape, a value < 0 or above capacity
  kCacheOverflow = 118,        // cache_seqlens[b] + seqlen_new exceeds the cache capacity
  kPageTableInvalid = 119,     // page_table bad dtype/shape, a used entry out of range, a
                               // page written by the append that another entry also names
  kCacheBatchIdxInvalid = 120, // cache_batch_idx out of range, or repeated while appending
  kRotaryInvalid = 121,        // rotary_cos/sin shapes, rotary_dim, or seqlen_ro too short
  // --- dispatch (2xx): nothing was launched.
  kBackendInapplicable = 200,  // strict request for a backend whose rule refused; see reason_tag
  kNoApplicableBackend = 201,  // auto request and no backend applies
  // --- execution (3xx).
  kCudaError = 300,            // a CUDA runtime call or a kernel launch failed
  kCudaErrorPending = 301,     // a CUDA error from the caller's earlier work was pending when the
                               // call began (CUDA-tensor problems; cudaPeekAtLastError): nothing
                               // was launched; the error is left pending for the caller
  kInternal = 400,             // a bug in flashlane
};

/// Stable snake_case name of a code, e.g. "null_pointer". Never changes once released.
const char* error_code_name(ErrorCode code);

/// Result of every public call. Cheap to copy on success (empty strings).
class Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message, std::string reason_tag = {})
      : code_(code), message_(std::move(message)), reason_tag_(std::move(reason_tag)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  /// Human-readable message naming the argument and its value.
  const std::string& message() const { return message_; }
  /// Applicability-rule tag for dispatcher refusals ("sm90.requires_sm90"); empty otherwise.
  const std::string& reason_tag() const { return reason_tag_; }
  /// "<code name>: <message>" (plus " [tag]" when a reason tag is set).
  std::string to_string() const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
  std::string reason_tag_;
};

}  // namespace flashlane
