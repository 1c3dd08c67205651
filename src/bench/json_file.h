// json_file.h: reading one JSON document from a file with the error wording the bench's loaders
// share (the gate config, the rollout manifest).
#pragma once

#include <nlohmann/json.hpp>

#include <exception>
#include <fstream>
#include <string>

namespace flashlane::bench {

/// Parses the file at `path` into *out. On failure returns false with *why (when non-null) set
/// to "cannot open <what> <path>" or "<path>: not JSON: <parser message>".
inline bool read_json_file(const std::string& path, const char* what, nlohmann::json* out,
                           std::string* why) {
  std::ifstream f(path);
  if (!f) {
    if (why) *why = std::string("cannot open ") + what + " " + path;
    return false;
  }
  try {
    *out = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    if (why) *why = path + ": not JSON: " + e.what();
    return false;
  }
  return true;
}

}  // namespace flashlane::bench
