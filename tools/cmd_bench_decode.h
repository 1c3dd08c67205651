// tools/cmd_bench_decode.h: `flashlane bench --preset decode` (cmd_bench_decode.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace flashlane::cli {

struct DecodeBenchOptions {
  std::string out = "out/bench-receipts.jsonl";
  std::string backends;    // comma-separated; default sm90 (GPU) / reference_cpu (host lane)
  int reps = 0;            // 0: 20 GPU / 3 host, capped so one row's loop takes about target_s
  int warmup = -1;         // -1: 3 GPU / 1 host
  double budget_s = 480;   // no new (batch, cache length) group starts after this; 0: none
  double target_s = 1.0;
  double mem_budget_gib = 48;  // cells whose K+V exceed min(this, free memory - reserve) are skipped
  int64_t num_splits = 0;      // KvCacheProblem::num_splits of every call (0: heuristic)
  bool overwrite = false;
};

/// Runs the decode preset (bench/README.md, "The decode preset"); exit code as `bench`.
int run_bench_decode(const DecodeBenchOptions& o);

}  // namespace flashlane::cli
