// tools/cmd_matrix.cpp: `flashlane matrix [--json]`: the applicability matrix, printed from the
// dispatcher's one table of rules (src/dispatch/applicability.h: the rows of the registered
// backends, selection and execution); nothing here decides anything.
#include <iostream>
#include <memory>

#include "cli_common.h"
#include "dispatch/applicability.h"

namespace flashlane::cli {

void add_matrix_command(CLI::App& app, int* exit_code) {
  auto json = std::make_shared<bool>(false);
  CLI::App* sub = app.add_subcommand("matrix", "The applicability matrix (backend, kind, tag, "
                                               "rule), from the dispatcher's table");
  sub->add_flag("--json", *json, "Print the table as JSON");
  sub->callback([json, exit_code] {
    if (*json) {
      std::cout << detail::applicability_json().dump(2) << std::endl;
    } else {
      std::cout << detail::applicability_markdown();
      std::cout.flush();
    }
    *exit_code = kExitOk;
  });
}

}  // namespace flashlane::cli
