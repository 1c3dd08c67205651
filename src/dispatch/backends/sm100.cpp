// backends/sm100.cpp: Blackwell. Reserved so that requests can name it; it fails closed (its
// only rule never holds, and it has no run functions) until the kernels exist.
#include "dispatch/backend_registry.h"

namespace flashlane::detail {

const BackendDef& sm100_backend() {
  static const BackendDef def = define_backend({
      .id = Backend::kSm100,
      .name = "sm100",
      .priority = kNeverAuto,
      .tensors = DeviceKind::kCUDA,
      .rules = {selection_rule("sm100.not_implemented", "Blackwell kernels exist (not yet)",
                               rules::never)},
  });
  return def;
}

}  // namespace flashlane::detail
