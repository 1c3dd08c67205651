// tests/cpu/test_cli.cpp: the built `flashlane` tool (FLASHLANE_TOOL_PATH), run as a user would:
// info, matrix --json, run on reference_cpu (masks, GQA, varlen, backward) passing with exit 0,
// strict refusals and validation errors exiting 2 with their tag, bench's default preset on a
// machine without a GPU (exit 0, rows say the GPU lane did not run) and gate failing on those
// rows. Tests that describe the GPU-less machine skip where a GPU is present.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "bench/harness.h"

namespace {

struct Result {
  int code = -1;
  std::string out;  // stdout and stderr together
};

Result run_tool(const std::string& args, const std::string& cwd = "") {
  Result r;
  if (!std::filesystem::exists(FLASHLANE_TOOL_PATH)) {
    // Fail, never skip: the tests describe the tool, and a missing tool is not a pass.
    r.out = std::string("the flashlane tool is not built: ") + FLASHLANE_TOOL_PATH +
            " (build the flashlane_cli target first)";
    return r;
  }
  std::string cmd;
  if (!cwd.empty()) cmd = "cd '" + cwd + "' && ";
  cmd += std::string("'") + FLASHLANE_TOOL_PATH + "' " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

bool has_gpu() { return flashlane::bench::cuda_present(); }

std::string temp_dir(const std::string& name) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("flashlane_test_cli_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

}  // namespace

TEST(CliTest, Info) {
  const Result r = run_tool("info");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("compiled architectures"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("reference_cpu: available"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sm90:"), std::string::npos) << r.out;
  const Result j = run_tool("info --json");
  ASSERT_EQ(j.code, 0) << j.out;
  const nlohmann::json info = nlohmann::json::parse(j.out);
  ASSERT_TRUE(info["backends"].is_array());
  for (const auto& b : info["backends"]) {
    if (!b["available"].get<bool>()) {
      const std::string tag = b["tag"].get<std::string>();
      EXPECT_EQ(tag.rfind(b["backend"].get<std::string>() + ".", 0), 0u) << b.dump();
    }
  }
  if (!has_gpu()) {
    for (const auto& b : info["backends"])
      if (b["backend"] == "sm90") {
        EXPECT_FALSE(b["available"].get<bool>());
      }
  }
}

TEST(CliTest, MatrixJsonParses) {
  const Result r = run_tool("matrix --json");
  ASSERT_EQ(r.code, 0) << r.out;
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(r.out)) << r.out;
  EXPECT_NE(r.out.find("sm90."), std::string::npos);
  const Result md = run_tool("matrix");
  EXPECT_EQ(md.code, 0);
  EXPECT_NE(md.out.find("sm90."), std::string::npos) << md.out;
}

TEST(CliTest, RunReferenceCpuPasses) {
  const char* cases[] = {
      "--mask no_mask",
      "--mask causal --seqlen-q 96 --seqlen-k 160",
      "--mask causal_bottom_right --seqlen-q 64 --seqlen-k 160",
      "--mask no_mask --window-left 16 --window-right 8",
      "--mask causal --window-left 32 --softcap 30",
      "--heads-q 8 --heads-kv 2 --mask causal",               // GQA
      "--heads-q 4 --heads-kv 1 --dtype fp16",                // MQA, fp16
      "--varlen-lengths \"17,64,3;40,64,9\" --mask causal_bottom_right",
      "--seqlens-q 33,70 --seqlens-k 50,90 --seqused-k 41,90 --heads-q 4 --heads-kv 2",
      "--dtype fp32 --head-dim 32 --head-dim-v 64",
      "--dtype fp64 --mask causal",
      "--mask causal --heads-q 4 --heads-kv 2 --bwd",
      "--varlen-lengths \"20,45;30,45\" --mask causal --bwd",
      "--mask causal_bottom_right --seqlen-q 96 --seqlen-k 40 --bwd",  // fully masked rows
      "--varlen-lengths \"0,30;5,20\" --mask causal --bwd",            // an empty sequence
  };
  for (const char* c : cases) {
    const Result r = run_tool(std::string("run --backend reference_cpu --seqlen-q 64 --seed 7 ") + c);
    EXPECT_EQ(r.code, 0) << c << "\n" << r.out;
    EXPECT_NE(r.out.find("result: PASS"), std::string::npos) << c << "\n" << r.out;
    EXPECT_NE(r.out.find("\"actual_backend\":\"reference_cpu\""), std::string::npos) << r.out;
  }
}

TEST(CliTest, RunJsonReportsFiguresAndReceipt) {
  const Result r = run_tool("run --backend reference_cpu --mask causal --bwd --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["pass"].get<bool>());
  EXPECT_EQ(j["receipts"]["fwd"]["actual_backend"], "reference_cpu");
  EXPECT_EQ(j["receipts"]["bwd"]["runtime_mode"], "bwd");
  EXPECT_EQ(j["receipts"]["bwd"]["surface"], "dense_bwd");
  EXPECT_EQ(j["check"]["fwd"]["tensors"].size(), 2u);
  EXPECT_EQ(j["check"]["bwd"]["tensors"].size(), 3u);
  for (const auto& f : j["check"]["fwd"]["tensors"]) {
    EXPECT_TRUE(f["pass"].get<bool>());
    EXPECT_EQ(f["nan_count"], 0);
  }
}

TEST(CliTest, StrictSm90RefusalExitsTwoWithTag) {
  // fp32 is refused by sm90 on every machine (no GPU, not Hopper, or the dtype rule).
  Result r = run_tool("run --backend sm90 --strict --dtype fp32");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("tag: sm90."), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("200"), std::string::npos) << r.out;
  if (has_gpu()) GTEST_SKIP() << "the bf16 refusal below describes a machine without a GPU";
  r = run_tool("run --backend sm90 --strict");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("tag: sm90."), std::string::npos) << r.out;
  // Without --strict the call falls back, and the receipt says so.
  r = run_tool("run --backend sm90");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"requested_backend\":\"sm90\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"actual_backend\":\"reference_cpu\""), std::string::npos) << r.out;
}

TEST(CliTest, ValidationErrorExitsTwo) {
  Result r = run_tool("run --backend reference_cpu --head-dim 12");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("head_dim"), std::string::npos) << r.out;
  r = run_tool("run --backend reference_cpu --heads-q 6 --heads-kv 4");
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_tool("run --backend reference_cpu --softmax-scale -1");
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_tool("run --backend reference_cpu --varlen-lengths 1,2");
  EXPECT_EQ(r.code, 2) << r.out;
  r = run_tool("run --dtype int8");
  EXPECT_EQ(r.code, 2) << r.out;
}

TEST(CliTest, BenchDecodeWithoutGpuSaysSo) {
  if (has_gpu()) GTEST_SKIP() << "describes a machine without a GPU";
  const std::string dir = temp_dir("bench_decode");
  const Result r = run_tool("bench --preset decode --out receipts.jsonl", dir);
  ASSERT_EQ(r.code, 0) << r.out;
  // Said at the start and at the end.
  const size_t first = r.out.find("GPU LANE DID NOT RUN");
  ASSERT_NE(first, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("GPU LANE DID NOT RUN", first + 1), std::string::npos) << r.out;
  std::ifstream f(dir + "/receipts.jsonl");
  ASSERT_TRUE(f.good());
  std::string line;
  int rows = 0;
  std::set<std::string> modes;
  while (std::getline(f, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    ++rows;
    EXPECT_EQ(j["direction"], "decode") << line;
    EXPECT_EQ(j["preset"], "decode") << line;
    EXPECT_FALSE(j["gpu_lane"]["ran"].get<bool>()) << line;
    EXPECT_FALSE(j["counts_for_status"].get<bool>()) << line;
    EXPECT_EQ(j["proof_class"], "observational") << line;
    EXPECT_EQ(j["receipt"]["actual_backend"], "reference_cpu") << line;
    EXPECT_EQ(j["metrics"]["check"], "pass") << line;
    EXPECT_TRUE(j["metrics"]["gbps"].is_number()) << line;
    EXPECT_EQ(j["surface"], j["runtime_mode"]) << line;
    modes.insert(j["runtime_mode"].get<std::string>());
  }
  EXPECT_EQ(rows, 2);  // dense and paged 16
  EXPECT_EQ(modes, (std::set<std::string>{"decode", "paged_decode"}));
  // The gate reads them (and fails: nothing counts).
  const Result g = run_tool("gate receipts.jsonl", dir);
  EXPECT_EQ(g.code, 1) << g.out;
  EXPECT_NE(g.out.find("no_counting_row"), std::string::npos) << g.out;
  EXPECT_EQ(g.out.find("input"), std::string::npos) << g.out;
}

TEST(CliTest, RunDecodeOnCudaWithoutGpuFailsPlainly) {
  if (has_gpu()) GTEST_SKIP() << "describes a machine without a GPU";
  const Result r = run_tool("run --decode --backend reference_cpu --strict --device cuda");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("device"), std::string::npos) << r.out;
  const Result bad = run_tool("run --decode --device tpu");
  EXPECT_EQ(bad.code, 2) << bad.out;
}

TEST(CliTest, BenchWithoutGpuSaysSoAndGateFails) {
  if (has_gpu()) GTEST_SKIP() << "describes a machine without a GPU";
  const std::string dir = temp_dir("bench");
  const Result r = run_tool("bench --out receipts.jsonl", dir);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("GPU LANE DID NOT RUN"), std::string::npos) << r.out;
  std::ifstream f(dir + "/receipts.jsonl");
  ASSERT_TRUE(f.good());
  std::string line;
  int rows = 0;
  while (std::getline(f, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    ++rows;
    EXPECT_FALSE(j["gpu_lane"]["ran"].get<bool>()) << line;
    EXPECT_EQ(j["gpu_lane"]["reason"].get<std::string>().rfind("no CUDA device", 0), 0u) << line;
    EXPECT_FALSE(j["counts_for_status"].get<bool>()) << line;
    EXPECT_EQ(j["proof_class"], "observational") << line;
    EXPECT_EQ(j["receipt"]["actual_backend"], "reference_cpu") << line;
    EXPECT_TRUE(j["metrics"]["validation_passed"].get<bool>()) << line;
  }
  EXPECT_EQ(rows, 4);  // [1, 256, 4, 64] bf16 no_mask and causal, fwd and bwd

  // The gate fails on them, with the default config (required sm90 rows) and without it.
  Result g = run_tool("gate receipts.jsonl --config '" + std::string(FLASHLANE_SOURCE_DIR) +
                          "/bench/gate_default.json'",
                      dir);
  EXPECT_EQ(g.code, 1) << g.out;
  EXPECT_NE(g.out.find("FAIL"), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("required_missing"), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("no_counting_row"), std::string::npos) << g.out;
  g = run_tool("gate receipts.jsonl", dir);
  EXPECT_EQ(g.code, 1) << g.out;
  std::filesystem::remove_all(dir);
}

// --learnable-sink puts attention sinks on every problem of the grid: the rows are the
// attention_sinks surface's (runtime modes sinks_fwd / sinks_bwd from the receipts), dsink is
// validated in the backward rows, and bad values or the decode preset are refused.
TEST(CliTest, BenchWithSinksWritesAttentionSinkRows) {
  const std::string dir = temp_dir("bench_sinks");
  const Result r = run_tool("bench --preset cpu --learnable-sink random --out receipts.jsonl", dir);
  ASSERT_EQ(r.code, 0) << r.out;
  std::ifstream f(dir + "/receipts.jsonl");
  ASSERT_TRUE(f.good());
  std::string line;
  int rows = 0, dsink_checked = 0;
  while (std::getline(f, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    ++rows;
    EXPECT_EQ(j["surface"], "attention_sinks") << line;
    const std::string dir_name = j["direction"].get<std::string>();
    EXPECT_EQ(j["receipt"]["runtime_mode"], "sinks_" + dir_name) << line;
    EXPECT_EQ(j["problem"]["learnable_sink"].size(), j["problem"]["heads_q"].get<size_t>()) << line;
    EXPECT_TRUE(j["metrics"]["validation_passed"].get<bool>()) << line;
    for (const auto& e : j["metrics"]["errors"]) dsink_checked += e["tensor"] == "dsink";
  }
  EXPECT_GT(rows, 0);
  EXPECT_GT(dsink_checked, 0) << "no backward row checked dlearnable_sink";
  EXPECT_EQ(run_tool("bench --preset cpu --learnable-sink nope --out x.jsonl", dir).code, 2);
  EXPECT_EQ(run_tool("bench --preset decode --learnable-sink 1 --out x.jsonl", dir).code, 2);
  std::filesystem::remove_all(dir);
}

TEST(CliTest, GateFailsOnMalformedOrEmptyInput) {
  const std::string dir = temp_dir("gate");
  {
    std::ofstream(dir + "/bad.jsonl") << "{\"schema\": 1}\n";
    std::ofstream(dir + "/empty.jsonl");
  }
  Result g = run_tool("gate bad.jsonl", dir);
  EXPECT_EQ(g.code, 1) << g.out;
  EXPECT_NE(g.out.find("malformed"), std::string::npos) << g.out;
  g = run_tool("gate empty.jsonl", dir);
  EXPECT_EQ(g.code, 1) << g.out;
  EXPECT_NE(g.out.find("no_rows"), std::string::npos) << g.out;
  g = run_tool("gate missing.jsonl", dir);
  EXPECT_EQ(g.code, 1) << g.out;
  std::filesystem::remove_all(dir);
}

TEST(CliTest, RunDecodeOnReferenceCpuPassesWithEveryFeature) {
  const Result r = run_tool(
      "run --decode --backend reference_cpu --strict --batch 3 --seqlen-q 2 --heads-q 8 "
      "--heads-kv 2 --head-dim 64 --seqlen-cache 40 --page-size 8 --cache-seqlens 0,17,30 "
      "--seqlen-new 3 --rotary-dim 32 --mask causal_bottom_right --window-left 16 --softcap 20 "
      "--dtype fp32 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["mode"], "append_decode");
  EXPECT_EQ(j["receipt"]["actual_backend"], "reference_cpu");
  EXPECT_EQ(j["receipt"]["runtime_mode"], "append_decode");
  EXPECT_TRUE(j["check"]["pass"].get<bool>());
  const Result dense = run_tool("run --decode --backend reference_cpu --dtype bf16");
  EXPECT_EQ(dense.code, 0) << dense.out;
  EXPECT_NE(dense.out.find("\"runtime_mode\":\"decode\""), std::string::npos) << dense.out;
}

TEST(CliTest, RunDecodeStrictRefusalsExitTwoWithTags) {
  for (const char* b : {"sm90", "reference_cuda", "sm100"}) {
    const Result r = run_tool(std::string("run --decode --strict --page-size 8 --backend ") + b);
    EXPECT_EQ(r.code, 2) << b << ": " << r.out;
    EXPECT_NE(r.out.find(std::string("[") + b + "."), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\"runtime_mode\":\"paged_decode\""), std::string::npos) << r.out;
  }
  // A validation error (cache_seqlens above the capacity) exits 2 with its code.
  const Result bad = run_tool("run --decode --backend reference_cpu --seqlen-cache 16 --cache-seqlens 17");
  EXPECT_EQ(bad.code, 2) << bad.out;
  EXPECT_NE(bad.out.find("cache_seqlens_invalid"), std::string::npos) << bad.out;
}

// --learnable-sink: a constant sink for every head or seeded random ones, forward, backward (the
// dsink figure joins the check) and decode; a malformed value exits 2.
TEST(CliTest, RunWithLearnableSinkPasses) {
  const char* cases[] = {
      "--learnable-sink 0.5 --mask causal_bottom_right --seqlen-q 96 --seqlen-k 40 --bwd",
      "--learnable-sink random --heads-q 8 --heads-kv 2 --mask causal --bwd",
      "--learnable-sink -1.5 --varlen-lengths \"0,30;5,20\" --mask causal --bwd --dtype fp16",
      "--learnable-sink 2 --dtype fp32 --softcap 1.5",
  };
  for (const char* c : cases) {
    const Result r = run_tool(std::string("run --backend reference_cpu --seqlen-q 64 --seed 3 ") + c);
    EXPECT_EQ(r.code, 0) << c << "\n" << r.out;
    EXPECT_NE(r.out.find("result: PASS"), std::string::npos) << c << "\n" << r.out;
    EXPECT_NE(r.out.find(" sinks"), std::string::npos) << c << "\n" << r.out;  // the description
  }
  const Result j = run_tool("run --backend reference_cpu --heads-q 4 --learnable-sink 0.5 --bwd --json");
  ASSERT_EQ(j.code, 0) << j.out;
  const nlohmann::json out = nlohmann::json::parse(j.out);
  ASSERT_EQ(out["problem"]["learnable_sink"].size(), 4u) << j.out;
  for (const auto& s : out["problem"]["learnable_sink"]) EXPECT_EQ(s.get<double>(), 0.5);
  ASSERT_EQ(out["check"]["bwd"]["tensors"].size(), 4u) << j.out;
  EXPECT_EQ(out["check"]["bwd"]["tensors"][3]["tensor"], "dsink");
  EXPECT_TRUE(out["check"]["bwd"]["tensors"][3]["pass"].get<bool>());
  EXPECT_EQ(out["check"]["bwd"]["tensors"][3]["count"], 4);
  // Random sinks: one per head, in [-1, 3), the same for the same seed.
  const Result r1 = run_tool("run --backend reference_cpu --heads-q 6 --learnable-sink random --seed 9 --json");
  const Result r2 = run_tool("run --backend reference_cpu --heads-q 6 --learnable-sink random --seed 9 --json");
  ASSERT_EQ(r1.code, 0) << r1.out;
  const nlohmann::json s1 = nlohmann::json::parse(r1.out)["problem"]["learnable_sink"];
  ASSERT_EQ(s1.size(), 6u);
  EXPECT_EQ(s1, nlohmann::json::parse(r2.out)["problem"]["learnable_sink"]);
  std::set<double> distinct;
  for (const auto& s : s1) {
    EXPECT_GE(s.get<double>(), -1.0);
    EXPECT_LT(s.get<double>(), 3.0);
    distinct.insert(s.get<double>());
  }
  EXPECT_GT(distinct.size(), 1u);

  const Result dec = run_tool(
      "run --decode --backend reference_cpu --strict --batch 2 --seqlen-q 3 --heads-q 8 --heads-kv 2 "
      "--seqlen-cache 40 --page-size 8 --cache-seqlens 0,17 --seqlen-new 2 --mask causal_bottom_right "
      "--learnable-sink random --dtype fp32");
  EXPECT_EQ(dec.code, 0) << dec.out;
  EXPECT_NE(dec.out.find("result: PASS"), std::string::npos) << dec.out;
  EXPECT_NE(dec.out.find(", sinks"), std::string::npos) << dec.out;

  for (const char* bad : {"abc", "0.5x", "inf", ""}) {
    const Result r = run_tool(std::string("run --backend reference_cpu --learnable-sink '") + bad + "'");
    EXPECT_EQ(r.code, 2) << bad << ": " << r.out;
    EXPECT_NE(r.out.find("--learnable-sink"), std::string::npos) << bad << ": " << r.out;
  }
  const Result bad_decode = run_tool("run --decode --backend reference_cpu --learnable-sink nope");
  EXPECT_EQ(bad_decode.code, 2) << bad_decode.out;
}
