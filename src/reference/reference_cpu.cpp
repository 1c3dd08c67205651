// STUB, replaced by the reference_cpu work (issue 2).
#include "dispatch/backends.h"
namespace flashlane::detail {
Status reference_cpu_forward(const AttentionProblem&, const ProblemInfo&) {
  return Status(ErrorCode::kInternal, "reference_cpu forward not implemented yet");
}
Status reference_cpu_backward(const AttentionProblem&, const ProblemInfo&) {
  return Status(ErrorCode::kInternal, "reference_cpu backward not implemented yet");
}
}  // namespace flashlane::detail
