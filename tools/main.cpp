// tools/main.cpp: the `flashlane` command-line tool: info, matrix, run, bench, gate, status.
// Each subcommand lives in its own cmd_*.cpp and registers itself through cli_common.h.
#include <cstdio>

#include "cli_common.h"
#include "flashlane/version.h"

int main(int argc, char** argv) {
  CLI::App app{"flashlane: FlashAttention-class attention for Hopper, behind a dispatcher that "
               "never lies about which kernel ran"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(flashlane::version()) + " (" +
                                        flashlane::git_commit() + ")");
  int exit_code = 0;
  flashlane::cli::add_info_command(app, &exit_code);
  flashlane::cli::add_matrix_command(app, &exit_code);
  flashlane::cli::add_run_command(app, &exit_code);
  flashlane::cli::add_bench_command(app, &exit_code);
  flashlane::cli::add_gate_command(app, &exit_code);
  flashlane::cli::add_status_command(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  std::fflush(stdout);
  return exit_code;
}
