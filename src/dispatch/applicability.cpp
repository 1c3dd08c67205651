// applicability.cpp: the rows of the applicability table (see applicability.h).
#include "dispatch/applicability.h"

#include <sstream>

#include "dispatch/backends.h"

namespace flashlane::detail {
namespace {

bool on_cuda(const RuleContext& c) { return c.info.device.kind == DeviceKind::kCUDA; }
bool on_host(const RuleContext& c) { return c.info.device.kind == DeviceKind::kCPU; }
bool has_device(const RuleContext& c) { return c.device.cuda_available; }
bool half_dtype(const RuleContext& c) {
  return c.info.dtype == DType::kBFloat16 || c.info.dtype == DType::kFloat16;
}

constexpr bool kSm90Compiled = FLASHLANE_HAS_SM90 != 0;

const std::vector<Rule> kRules = {
    // --- sm90: the Hopper kernels.
    {Backend::kSm90, "sm90.not_compiled", "this build contains the sm_90a kernels",
     [](const RuleContext&) { return kSm90Compiled; }},
    {Backend::kSm90, "sm90.no_cuda_device", "a CUDA device and driver are present", has_device},
    {Backend::kSm90, "sm90.requires_sm90", "the device is sm_90 (H100, H200)",
     [](const RuleContext& c) { return c.device.sm == 90; }},
    {Backend::kSm90, "sm90.requires_cuda_tensors", "all tensors are CUDA device tensors", on_cuda},
    {Backend::kSm90, "sm90.dtype_unsupported", "dtype is bfloat16 or float16", half_dtype},
    {Backend::kSm90, "sm90.head_dim_unsupported",
     "forward: (head_dim, head_dim_v) is a pair this build compiled (of 64, 96, 128, 192, 256 "
     "with head_dim_v == head_dim, and (192, 128); FLASHLANE_SM90_HEAD_DIMS)",
     [](const RuleContext& c) {
       return c.info.direction == Direction::kBackward ||
              sm90_forward_supports(c.info.head_dim, c.info.head_dim_v);
     }},
    {Backend::kSm90, "sm90.bwd_head_dim_unsupported",
     "backward: (head_dim, head_dim_v) is 64, 96, 128, 192, 256 with head_dim_v == head_dim, "
     "or (192, 128) (every mask, window, softcap, GQA/MQA, varlen, seqused_k, deterministic)",
     [](const RuleContext& c) {
       return c.info.direction == Direction::kForward ||
              sm90_backward_supports(c.info.head_dim, c.info.head_dim_v);
     }},
    {Backend::kSm90, "sm90.bwd_grid_too_large",
     "backward: batch and heads_q are at most 65535 (they ride grid dimensions y and z)",
     [](const RuleContext& c) {
       return c.info.direction == Direction::kForward ||
              (c.info.batch <= 65535 && c.info.heads_q <= 65535);
     }},

    // --- sm100 and cudnn: rows reserved so that requests name them; they fail closed.
    {Backend::kSm100, "sm100.not_implemented", "Blackwell kernels exist (not yet)",
     [](const RuleContext&) { return false; }},
    {Backend::kCudnn, "cudnn.not_implemented", "the cuDNN backend exists (not yet)",
     [](const RuleContext&) { return false; }},

    // --- reference_cuda: plain CUDA, fp32 accumulation, every feature.
    {Backend::kReferenceCuda, "reference_cuda.no_cuda_device",
     "a CUDA device and driver are present", has_device},
    {Backend::kReferenceCuda, "reference_cuda.requires_sm80", "the device is sm_80 or newer",
     [](const RuleContext& c) { return c.device.sm >= 80; }},
    {Backend::kReferenceCuda, "reference_cuda.requires_cuda_tensors",
     "all tensors are CUDA device tensors", on_cuda},

    // --- reference_cpu: float64 accumulation on the host, every feature.
    {Backend::kReferenceCpu, "reference_cpu.requires_host_tensors",
     "all tensors are host (CPU) tensors", on_host},
};

}  // namespace

const std::vector<Rule>& applicability_rules() { return kRules; }

const Rule* first_failing_rule(Backend backend, const RuleContext& ctx) {
  for (const Rule& r : kRules) {
    if (r.backend == backend && !r.holds(ctx)) return &r;
  }
  return nullptr;
}

std::string applicability_markdown() {
  std::ostringstream md;
  md << "# Applicability matrix\n\n"
     << "Generated from the applicability table (src/dispatch/applicability.cpp) by "
        "`flashlane matrix`; do not edit by hand.\n\n"
     << "A backend runs a call only when every rule of its rows holds; the first rule that "
        "fails gives the reason tag, which strict requests return and auto requests record in "
        "the receipt's `skipped` list.\n\n"
     << "Auto priority: ";
  const auto& prio = backend_priority();
  for (size_t i = 0; i < prio.size(); ++i) md << (i ? ", " : "") << backend_name(prio[i]);
  md << ".\n\n| backend | reason tag | must hold |\n|---|---|---|\n";
  for (const Rule& r : kRules) {
    md << "| " << backend_name(r.backend) << " | `" << r.tag << "` | " << r.description << " |\n";
  }
  return md.str();
}

nlohmann::json applicability_json() {
  nlohmann::json rules = nlohmann::json::array();
  for (const Rule& r : kRules) {
    rules.push_back({{"backend", backend_name(r.backend)}, {"tag", r.tag},
                     {"description", r.description}});
  }
  nlohmann::json prio = nlohmann::json::array();
  for (Backend b : backend_priority()) prio.push_back(backend_name(b));
  return {{"priority", prio}, {"rules", rules}};
}

}  // namespace flashlane::detail
