// gate_checks.h: reading a gate verdict in tests (header-only).
#pragma once

#include <string>

#include "bench/gate.h"

namespace flashlane::test_support {

/// True when the verdict has a violation of `rule` whose detail contains `detail_part`
/// ("" matches any detail).
inline bool has_rule(const bench::GateResult& g, const std::string& rule,
                     const std::string& detail_part = "") {
  for (const auto& v : g.violations)
    if (v.rule == rule && v.detail.find(detail_part) != std::string::npos) return true;
  return false;
}

/// Every violation, one per line, for a failure message.
inline std::string dump(const bench::GateResult& g) {
  std::string s;
  for (const auto& v : g.violations) s += v.to_string() + "\n";
  return s;
}

}  // namespace flashlane::test_support
