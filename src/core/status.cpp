#include "flashlane/status.h"

namespace flashlane {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kNullPointer: return "null_pointer";
    case ErrorCode::kUnsupportedDType: return "unsupported_dtype";
    case ErrorCode::kDTypeMismatch: return "dtype_mismatch";
    case ErrorCode::kRankMismatch: return "rank_mismatch";
    case ErrorCode::kShapeMismatch: return "shape_mismatch";
    case ErrorCode::kHeadsNotDivisible: return "heads_not_divisible";
    case ErrorCode::kHeadDimInvalid: return "head_dim_invalid";
    case ErrorCode::kNotContiguous: return "not_contiguous";
    case ErrorCode::kMisaligned: return "misaligned";
    case ErrorCode::kCuSeqlensInvalid: return "cu_seqlens_invalid";
    case ErrorCode::kSequsedInvalid: return "seqused_invalid";
    case ErrorCode::kWindowInvalid: return "window_invalid";
    case ErrorCode::kSoftmaxScaleInvalid: return "softmax_scale_invalid";
    case ErrorCode::kSoftcapInvalid: return "softcap_invalid";
    case ErrorCode::kDeviceMismatch: return "device_mismatch";
    case ErrorCode::kDropoutUnsupported: return "dropout_unsupported";
    case ErrorCode::kInvalidArgument: return "invalid_argument";
    case ErrorCode::kCacheSeqlensInvalid: return "cache_seqlens_invalid";
    case ErrorCode::kCacheOverflow: return "cache_overflow";
    case ErrorCode::kPageTableInvalid: return "page_table_invalid";
    case ErrorCode::kCacheBatchIdxInvalid: return "cache_batch_idx_invalid";
    case ErrorCode::kRotaryInvalid: return "rotary_invalid";
    case ErrorCode::kBackendInapplicable: return "backend_inapplicable";
    case ErrorCode::kNoApplicableBackend: return "no_applicable_backend";
    case ErrorCode::kCudaError: return "cuda_error";
    case ErrorCode::kCudaErrorPending: return "cuda_error_pending";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

std::string Status::to_string() const {
  std::string s = error_code_name(code_);
  if (!message_.empty()) s += ": " + message_;
  if (!reason_tag_.empty()) s += " [" + reason_tag_ + "]";
  return s;
}

}  // namespace flashlane
