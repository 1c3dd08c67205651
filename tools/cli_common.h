// tools/cli_common.h: what the subcommands of the `flashlane` tool share: their registration
// functions (one per cmd_*.cpp), exit codes and small formatting helpers.
//
// Exit codes (all subcommands): 0 success / pass; 1 a failed check (validation against the
// reference, a gate violation, a CUDA or I/O error); 2 a refusal: validation error (1xx) or a
// strict dispatcher refusal (2xx), printed with its code and reason tag. CLI usage errors exit
// with CLI11's codes (non-zero).
#pragma once

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "flashlane/status.h"

namespace flashlane::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;
inline constexpr int kExitRefused = 2;

/// 2 for validation (1xx) and dispatch (2xx) errors, 1 for everything else that is not ok.
inline int exit_code_for(const Status& s) {
  if (s.ok()) return kExitOk;
  const int code = static_cast<int>(s.code());
  return (code >= 100 && code < 300) ? kExitRefused : kExitFailed;
}

/// "%.3g"-style short number.
inline std::string fmt(double x, const char* format = "%.3g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, x);
  return buf;
}

/// The value of --learnable-sink: a number (every query head's sink logit) or "random" (one
/// logit per head, uniform in [-1, 3), from `seed`; the same on every platform). Returns false
/// with `why` for anything else.
inline bool parse_learnable_sink(const std::string& text, int64_t heads_q, uint64_t seed,
                                 std::vector<float>* out, std::string* why) {
  out->assign(static_cast<size_t>(heads_q > 0 ? heads_q : 0), 0.0f);
  if (text == "random") {
    std::mt19937_64 rng(seed ^ 0x51e4c0ffee5eedull);
    for (float& x : *out) {
      x = static_cast<float>(4.0 * static_cast<double>(rng() >> 11) * 0x1.0p-53 - 1.0);
    }
    return true;
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    used = 0;
  }
  if (text.empty() || used != text.size() || !std::isfinite(v)) {
    *why = "--learnable-sink must be a finite number (every head's sink) or 'random', not '" +
           text + "'";
    return false;
  }
  for (float& x : *out) x = static_cast<float>(v);
  return true;
}

void add_info_command(CLI::App& app, int* exit_code);
void add_matrix_command(CLI::App& app, int* exit_code);
void add_run_command(CLI::App& app, int* exit_code);
void add_bench_command(CLI::App& app, int* exit_code);
void add_gate_command(CLI::App& app, int* exit_code);
void add_status_command(CLI::App& app, int* exit_code);

}  // namespace flashlane::cli
