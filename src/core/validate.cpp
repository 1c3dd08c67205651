// STUB, replaced by the validation work (issue 2).
#include "flashlane/problem.h"
namespace flashlane {
Status validate(const AttentionProblem&, Direction, ProblemInfo*) {
  return Status(ErrorCode::kInternal, "validate() not implemented yet");
}
}  // namespace flashlane
