// STUB, replaced by the validation work (issue 2).
#include "flashlane/problem.h"
namespace flashlane {
const char* mask_type_name(MaskType mask) {
  switch (mask) {
    case MaskType::kNoMask: return "no_mask";
    case MaskType::kCausal: return "causal";
    case MaskType::kCausalBottomRight: return "causal_bottom_right";
  }
  return "unknown";
}
bool parse_mask_type(const std::string&, MaskType*) { return false; }
double ProblemInfo::visible_pairs(const int32_t*, const int32_t*, const int32_t*) const { return 0; }
double forward_flops(const ProblemInfo&, double) { return 0; }
}  // namespace flashlane
