// STUB, replaced by the reference_cuda work (issue 2).
#include "dispatch/backends.h"
namespace flashlane::detail {
Status reference_cuda_forward(const AttentionProblem&, const ProblemInfo&, cudaStream_t) {
  return Status(ErrorCode::kInternal, "reference_cuda forward not implemented yet");
}
Status reference_cuda_backward(const AttentionProblem&, const ProblemInfo&, cudaStream_t) {
  return Status(ErrorCode::kInternal, "reference_cuda backward not implemented yet");
}
}  // namespace flashlane::detail
