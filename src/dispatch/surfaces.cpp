// surfaces.cpp: the surface catalog (surfaces.h), built from the backend registry.
#include "dispatch/surfaces.h"

#include "flashlane/dispatch.h"

#include "dispatch/backend_registry.h"

namespace flashlane::detail {

namespace {

constexpr bool kSm90Compiled = FLASHLANE_HAS_SM90 != 0;

/// Tag of a variant no backend serves: the library has no fp8 dtype (include/flashlane/tensor.h),
/// and sm90's dtype rule (sm90.dtype_unsupported) admits bfloat16 and float16 only.
constexpr const char* kFp8Unsupported = "surface.dtype_fp8_unsupported";

struct SurfaceSpec {
  const char* id;
  const char* description;
  std::vector<std::string> modes;
  bool has_code;
  bool backward;  // which run function of a backend it needs
  std::vector<std::string> kinds;
  bool decode = false;  // served by a backend's decode function (KV-cache calls)
};

/// The first selection rule of a backend that can never hold (a reserved backend), or nullptr.
const Rule* never_rule(const BackendDef& d) {
  for (const Rule& r : d.rules)
    if (r.kind == RuleKind::kSelection && r.holds == &rules::never) return &r;
  return nullptr;
}

SurfaceBackend judge(const BackendDef& d, const SurfaceSpec& s) {
  SurfaceBackend b;
  b.backend = d.name;
  const bool has_run = s.decode ? d.decode != nullptr
                                 : (s.backward ? d.backward : d.forward) != nullptr;
  if (const Rule* never = never_rule(d); never != nullptr || !has_run) {
    if (never != nullptr) {
      b.reason_tag = never->tag;
    } else {
      // The backend's own row for the missing direction when it has one
      // (<backend>.decode_not_implemented), else the generic tag.
      const std::string specific = std::string(d.name) + ".decode_not_implemented";
      bool has_row = false;
      for (const Rule& r : d.rules) has_row = has_row || (s.decode && r.tag == specific);
      b.reason_tag = has_row ? specific : std::string(d.name) + ".not_implemented";
    }
    return b;
  }
  if (!s.has_code) {
    b.reason_tag = kSurfaceNotImplemented;
    return b;
  }
  if (d.id == Backend::kSm90 && !kSm90Compiled) {
    b.reason_tag = "sm90.not_compiled";
    return b;
  }
  b.applies = true;
  return b;
}

}  // namespace

const std::vector<Surface>& surface_catalog() {
  static const std::vector<Surface> kCatalog = [] {
    const std::vector<SurfaceSpec> specs = {
        {"dense_fwd", "forward over dense [batch, seqlen, heads, head_dim] q, k, v", {"fwd"}, true,
         false, {"contract_test", "microbench_case", "profile", "short_train", "prefill"}},
        {"dense_bwd", "backward (dq, dk, dv) over dense tensors", {"bwd"}, true, true,
         {"contract_test", "microbench_case", "profile", "short_train"}},
        {"varlen_fwd", "forward over packed varlen tokens (cu_seqlens, seqused_k)", {"varlen_fwd"},
         true, false, {"contract_test", "microbench_case", "profile"}},
        {"varlen_bwd", "backward over packed varlen tokens", {"varlen_bwd"}, true, true,
         {"contract_test", "microbench_case", "profile"}},
        {"decode", "KV-cache decode (split-KV + combine) over a dense cache", {"decode"}, true,
         false, {"contract_test", "microbench_case", "profile", "decode"}, true},
        {"paged_decode", "decode over a paged KV cache (page table)", {"paged_decode"}, true,
         false, {"contract_test", "microbench_case", "profile", "decode"}, true},
        {"append_decode", "decode that appends new k/v to the cache in the same call",
         {"append_decode"}, true, false, {"contract_test", "microbench_case", "decode"}, true},
        {"attention_sinks", "forward and backward with learned sink logits per head",
         {"sinks_fwd", "sinks_bwd", "sinks_varlen_fwd", "sinks_varlen_bwd"}, true, false,
         {"contract_test", "microbench_case", "short_train"}},
        {"context_parallel", "attention over a sequence split across devices (ring / all-gather)",
         {"cp_fwd", "cp_bwd"}, false, false, {"contract_test", "microbench_case", "short_train"}},
    };
    std::vector<Surface> out;
    for (const SurfaceSpec& s : specs) {
      Surface f;
      f.id = s.id;
      f.description = s.description;
      f.runtime_modes = s.modes;
      f.has_code = s.has_code;
      f.reason_tag = s.has_code ? "" : kSurfaceNotImplemented;
      for (const BackendDef* d : backend_registry()) f.backends.push_back(judge(*d, s));
      f.artifact_kinds = s.kinds;
      f.exclusions.push_back({"dtype fp8", kFp8Unsupported});
      out.push_back(std::move(f));
    }
    return out;
  }();
  return kCatalog;
}

const Surface* find_surface(std::string_view id) {
  for (const Surface& s : surface_catalog())
    if (s.id == id) return &s;
  return nullptr;
}

const char* attention_runtime_mode(Direction direction, bool varlen, bool sinks) {
  if (sinks) {
    if (direction == Direction::kForward) return varlen ? "sinks_varlen_fwd" : "sinks_fwd";
    return varlen ? "sinks_varlen_bwd" : "sinks_bwd";
  }
  if (direction == Direction::kForward) return varlen ? "varlen_fwd" : "fwd";
  return varlen ? "varlen_bwd" : "bwd";
}

std::string surface_for_mode(std::string_view runtime_mode) {
  for (const Surface& s : surface_catalog())
    for (const std::string& m : s.runtime_modes)
      if (m == runtime_mode) return s.id;
  return "";
}

const SurfaceBackend* surface_backend(const Surface& surface, std::string_view backend) {
  for (const SurfaceBackend& b : surface.backends)
    if (b.backend == backend) return &b;
  return nullptr;
}

nlohmann::json surfaces_json() {
  nlohmann::json list = nlohmann::json::array();
  for (const Surface& s : surface_catalog()) {
    nlohmann::json backends = nlohmann::json::array();
    for (const SurfaceBackend& b : s.backends)
      backends.push_back({{"backend", b.backend}, {"applies", b.applies}, {"reason_tag", b.reason_tag}});
    nlohmann::json excl = nlohmann::json::array();
    for (const SurfaceExclusion& e : s.exclusions)
      excl.push_back({{"what", e.what}, {"reason_tag", e.reason_tag}});
    list.push_back({{"id", s.id},
                    {"description", s.description},
                    {"runtime_modes", s.runtime_modes},
                    {"has_code", s.has_code},
                    {"reason_tag", s.reason_tag},
                    {"backends", backends},
                    {"artifact_kinds", s.artifact_kinds},
                    {"exclusions", excl}});
  }
  return {{"surfaces", list}};
}

}  // namespace flashlane::detail

namespace flashlane {

std::vector<std::string> surface_ids() {
  std::vector<std::string> ids;
  for (const auto& s : detail::surface_catalog()) ids.push_back(s.id);
  return ids;
}

}  // namespace flashlane
