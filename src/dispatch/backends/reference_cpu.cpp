// backends/reference_cpu.cpp: float64 accumulation on the host, every feature: the ground truth
// (src/reference/reference_cpu.cpp). Runs on the calling thread; the stream is not used.
#include "dispatch/backend_registry.h"
#include "dispatch/backends.h"

namespace flashlane::detail {
namespace {

Status run_forward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t,
                   std::string* variant) {
  *variant = "reference_cpu_f64acc";
  return reference_cpu_forward(p, info);
}

Status run_backward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t,
                    std::string* variant) {
  *variant = "reference_cpu_f64acc";
  return reference_cpu_backward(p, info);
}

Status run_decode(const KvCacheProblem& p, const ProblemInfo& info, cudaStream_t,
                  std::string* variant) {
  *variant = "reference_cpu_f64acc";
  return reference_cpu_kvcache(p, info);
}

}  // namespace

const BackendDef& reference_cpu_backend() {
  static const BackendDef def = define_backend({
      .id = Backend::kReferenceCpu,
      .name = "reference_cpu",
      .priority = 30,
      .tensors = DeviceKind::kCPU,
      .rules =
          {
              selection_rule("reference_cpu.requires_host_tensors",
                             "all tensors are host (CPU) tensors", rules::on_host),
          },
      .forward = run_forward,
      .backward = run_backward,
      .decode = run_decode,
  });
  return def;
}

}  // namespace flashlane::detail
