// Entry points of the sm90 backend in builds without the Hopper kernels
// (FLASHLANE_BUILD_SM90=OFF). The applicability table refuses sm90 with "sm90.not_compiled"
// first, so these are never reached through the dispatcher.
#include "dispatch/backends.h"

#if !FLASHLANE_HAS_SM90
namespace flashlane::detail {
Status sm90_forward(const AttentionProblem&, const ProblemInfo&, cudaStream_t, std::string*) {
  return Status(ErrorCode::kInternal, "sm90 kernels not compiled into this build", "sm90.not_compiled");
}
Status sm90_backward(const AttentionProblem&, const ProblemInfo&, cudaStream_t, std::string*) {
  return Status(ErrorCode::kInternal, "sm90 kernels not compiled into this build", "sm90.not_compiled");
}
bool sm90_forward_supports(int64_t, int64_t) { return false; }
bool sm90_backward_supports(int64_t, int64_t) { return false; }
std::string sm90_head_dims_text() { return "none: this build has no sm90 kernels"; }
bool sm90_forward_grid_fits(const ProblemInfo&) { return false; }
Status sm90_decode(const KvCacheProblem&, const ProblemInfo&, cudaStream_t, std::string*) {
  return Status(ErrorCode::kInternal, "sm90 kernels not compiled into this build", "sm90.not_compiled");
}
bool sm90_decode_supports(int64_t, int64_t) { return false; }
bool sm90_decode_grid_fits(const ProblemInfo&) { return false; }
}  // namespace flashlane::detail
#endif
