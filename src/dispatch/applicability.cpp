// applicability.cpp: the applicability table (see applicability.h): the rows of the registered
// backends (backend_registry.cpp), concatenated, and the Markdown and JSON forms of it.
#include "dispatch/applicability.h"

#include <sstream>

#include "dispatch/backend_registry.h"

namespace flashlane::detail {

const char* rule_kind_name(RuleKind kind) {
  switch (kind) {
    case RuleKind::kSelection: return "selection";
    case RuleKind::kExecution: return "execution";
  }
  return "unknown";
}

const std::vector<Rule>& applicability_rules() {
  static const std::vector<Rule> kRules = [] {
    std::vector<Rule> all;
    for (const BackendDef* d : backend_registry()) {
      all.insert(all.end(), d->rules.begin(), d->rules.end());
    }
    return all;
  }();
  return kRules;
}

const Rule* first_failing_rule(Backend backend, const RuleContext& ctx, bool skip_device_rules) {
  const BackendDef* def = find_backend(backend);
  if (def == nullptr) return nullptr;
  for (const Rule& r : def->rules) {
    if (r.kind != RuleKind::kSelection || (skip_device_rules && r.device_dependent)) continue;
    if (!r.holds(ctx)) return &r;
  }
  return nullptr;
}

std::string applicability_markdown() {
  std::ostringstream md;
  md << "# Applicability matrix\n\n"
     << "Generated from the applicability table (the rows of the backends registered in "
        "src/dispatch/backend_registry.cpp, one file each under src/dispatch/backends/) by "
        "`flashlane matrix`; do not edit by hand.\n\n"
     << "A backend runs a call only when every selection rule of its rows holds; the first rule "
        "that fails gives the reason tag, which strict requests return and auto requests record "
        "in the receipt's `skipped` list. Execution rows are never evaluated by selection: they "
        "name the tags a backend can return after it was selected. Descriptions that name what "
        "a build compiled are those of the build that printed the table.\n\n"
     << "Auto priority: ";
  const auto& prio = backend_priority();
  for (size_t i = 0; i < prio.size(); ++i) md << (i ? ", " : "") << backend_name(prio[i]);
  md << ".\n\n| backend | kind | reason tag | selection: must hold; execution: returned when |\n"
     << "|---|---|---|---|\n";
  for (const Rule& r : applicability_rules()) {
    md << "| " << backend_name(r.backend) << " | " << rule_kind_name(r.kind) << " | `" << r.tag
       << "` | " << r.description << " |\n";
  }
  return md.str();
}

nlohmann::json applicability_json() {
  nlohmann::json rules = nlohmann::json::array();
  for (const Rule& r : applicability_rules()) {
    rules.push_back({{"backend", backend_name(r.backend)},
                     {"kind", rule_kind_name(r.kind)},
                     {"tag", r.tag},
                     {"description", r.description},
                     {"build_dependent", r.build_dependent},
                     {"device_dependent", r.device_dependent}});
  }
  nlohmann::json prio = nlohmann::json::array();
  for (Backend b : backend_priority()) prio.push_back(backend_name(b));
  nlohmann::json backends = nlohmann::json::array();
  for (const BackendDef* d : backend_registry()) {
    backends.push_back({{"name", d->name},
                        {"priority", d->priority},
                        {"tensors", d->tensors == DeviceKind::kCPU ? "host" : "cuda"},
                        {"auto", d->priority >= 0}});
  }
  return {{"priority", prio}, {"backends", backends}, {"rules", rules}};
}

}  // namespace flashlane::detail
