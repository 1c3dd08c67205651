// backends/reference_cuda.cpp: plain CUDA, fp32 accumulation, every feature, any sm >= 80
// (src/reference/reference_cuda.cu; KV-cache calls: src/reference/reference_cuda_kvcache.cu).
// Auto's choice on a GPU that sm90 does not serve.
#include "dispatch/backend_registry.h"
#include "dispatch/backends.h"

namespace flashlane::detail {
namespace {

bool sm80_or_newer(const RuleContext& c) { return c.device.sm >= 80; }

Status run_forward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t stream,
                   std::string* variant) {
  *variant = "reference_cuda_f32acc";
  return reference_cuda_forward(p, info, stream);
}

Status run_backward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t stream,
                    std::string* variant) {
  *variant = "reference_cuda_f32acc";
  return reference_cuda_backward(p, info, stream);
}

Status run_decode(const KvCacheProblem& p, const ProblemInfo& info, cudaStream_t stream,
                  std::string* variant) {
  *variant = "reference_cuda_f32acc";
  return reference_cuda_kvcache(p, info, stream);
}

}  // namespace

const BackendDef& reference_cuda_backend() {
  static const BackendDef def = define_backend({
      .id = Backend::kReferenceCuda,
      .name = "reference_cuda",
      .priority = 20,
      .tensors = DeviceKind::kCUDA,
      .rules =
          {
              selection_rule("reference_cuda.no_cuda_device",
                             "a CUDA device and driver are present", rules::has_device),
              selection_rule("reference_cuda.requires_sm80", "the device is sm_80 or newer",
                             sm80_or_newer),
              selection_rule("reference_cuda.requires_cuda_tensors",
                             "all tensors are CUDA device tensors", rules::on_cuda),
          },
      .forward = run_forward,
      .backward = run_backward,
      .decode = run_decode,
  });
  return def;
}

}  // namespace flashlane::detail
