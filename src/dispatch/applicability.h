// applicability.h: THE applicability table. One row per rule: (backend, tag, description,
// predicate). A backend applies to a call when every one of its rules holds; the first rule that
// fails names the reason (its tag). Selection (dispatch.cpp), `flashlane info`, `flashlane
// matrix` and docs/applicability.md read only this table: no backend decision lives elsewhere.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "flashlane/dispatch.h"
#include "flashlane/problem.h"

namespace flashlane::detail {

/// What a rule may look at: the validated problem and the device its tensors live on.
struct RuleContext {
  const ProblemInfo& info;
  const DeviceInfo& device;
};

struct Rule {
  Backend backend;
  const char* tag;          // stable, namespaced by backend: "sm90.requires_sm90"
  const char* description;  // what must hold, in words: "the device is sm_90 (Hopper)"
  bool (*holds)(const RuleContext&);
};

/// Every rule of every backend, in evaluation order within a backend.
const std::vector<Rule>& applicability_rules();

/// The first rule of `backend` that does not hold, or nullptr when the backend applies.
const Rule* first_failing_rule(Backend backend, const RuleContext& ctx);

/// The table as Markdown (docs/applicability.md is this text) and as JSON (`matrix --json`).
std::string applicability_markdown();
nlohmann::json applicability_json();

}  // namespace flashlane::detail
