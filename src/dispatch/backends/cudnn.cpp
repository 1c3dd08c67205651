// backends/cudnn.cpp: cuDNN's fused attention. Reserved so that requests can name it; it fails
// closed (its only rule never holds, and it has no run functions) until it exists.
#include "dispatch/backend_registry.h"

namespace flashlane::detail {

const BackendDef& cudnn_backend() {
  static const BackendDef def = define_backend({
      .id = Backend::kCudnn,
      .name = "cudnn",
      .priority = kNeverAuto,
      .tensors = DeviceKind::kCUDA,
      .rules = {selection_rule("cudnn.not_implemented", "the cuDNN backend exists (not yet)",
                               rules::never)},
  });
  return def;
}

}  // namespace flashlane::detail
