// tools/cli_common.h: what the subcommands of the `flashlane` tool share: their registration
// functions (one per cmd_*.cpp), exit codes and small formatting helpers.
//
// Exit codes (all subcommands): 0 success / pass; 1 a failed check (validation against the
// reference, a gate violation, a CUDA or I/O error); 2 a refusal: validation error (1xx) or a
// strict dispatcher refusal (2xx), printed with its code and reason tag. CLI usage errors exit
// with CLI11's codes (non-zero).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

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

void add_info_command(CLI::App& app, int* exit_code);
void add_matrix_command(CLI::App& app, int* exit_code);
void add_run_command(CLI::App& app, int* exit_code);
void add_bench_command(CLI::App& app, int* exit_code);
void add_gate_command(CLI::App& app, int* exit_code);
void add_status_command(CLI::App& app, int* exit_code);

}  // namespace flashlane::cli
