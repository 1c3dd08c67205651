// tools/cmd_status.cpp: `flashlane status [--receipts DIR] [--manifest FILE] [--json|--markdown]`:
// the stoplight matrix surface x backend, computed from the surface catalog of this build and
// the receipts in DIR (src/bench/status.h), with the rung each surface stands on and what the
// next rung still needs. Defaults: bench/results and bench/rollout_manifest.json (relative to
// the working directory). --markdown prints docs/STATUS.md (without fingerprint values; the
// receipts are still judged against this build's fingerprints). Exit 0 when the status could be
// computed (whatever the lights), 1 when the manifest or the folder cannot be read.
#include <iostream>
#include <memory>

#include "bench/status.h"
#include "cli_common.h"

namespace flashlane::cli {

namespace {

struct StatusOptions {
  std::string receipts = "bench/results";
  std::string manifest = "bench/rollout_manifest.json";
  bool json = false;
  bool markdown = false;
};

int run_status_command(const StatusOptions& o) {
  bench::Manifest manifest;
  std::string why;
  if (!bench::load_manifest(o.manifest, &manifest, &why)) {
    std::cerr << "status: " << why << "\n";
    return kExitFailed;
  }
  std::vector<bench::SourcedRow> rows;
  std::vector<bench::ReceiptFile> files;
  if (!bench::read_receipts_dir(o.receipts, &rows, &files, &why)) {
    std::cerr << "status: " << why << "\n";
    return kExitFailed;
  }
  const bench::StatusReport rep =
      bench::compute_status(manifest, rows, files, bench::build_kernel_fingerprints());
  if (o.json) std::cout << bench::status_to_json(rep, /*with_fingerprints=*/true).dump(2) << std::endl;
  else if (o.markdown) std::cout << bench::status_to_markdown(rep, o.manifest, o.receipts) << std::flush;
  else std::cout << bench::status_to_text(rep) << std::flush;
  return kExitOk;
}

}  // namespace

void add_status_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<StatusOptions>();
  CLI::App* sub = app.add_subcommand(
      "status", "Stoplight matrix surface x backend from code and receipts (rungs, what is owed)");
  sub->add_option("--receipts", o->receipts, "Folder of proof-row files (*.jsonl; subfolders ignored)");
  sub->add_option("--manifest", o->manifest, "Rollout manifest (JSON)");
  auto* j = sub->add_flag("--json", o->json, "Print the status as JSON (schema flashlane.status/1)");
  sub->add_flag("--markdown", o->markdown, "Print docs/STATUS.md")->excludes(j);
  sub->callback([o, exit_code] { *exit_code = run_status_command(*o); });
}

}  // namespace flashlane::cli
