// main.cpp: times the softmax-sweep variants (variants.h) side by side on BENCHMARKS.md's
// canonical forward cells, in one process: per cell, every variant of that head dim in turn,
// for several passes, so that clock and thermal drift hit all variants alike. It also checks
// each variant's O and LSE against the (0, 0) variant of the same head dim (no emulated exp2,
// rescale on every growth): a consistency check only; correctness against float64 is the
// business of the gpu tests and `flashlane bench`, run with the chosen table rows.
//
//   flashlane_softmax_sweep [--passes P] [--reps R] [--seqlens 512,...] [--hdims 64,...]
//                           [--tile-groups 1,4,...] [--schedules auto,...] [--causal-only]
//
// --tile-groups also times each variant with other tile orders (FwdParams::tile_group,
// common/tile_order.h: (batch, head) pairs whose M-blocks are interleaved, longest first);
// 0 keeps the builder's group.
// --schedules also times each variant with other tile schedules (fwd/tile_scheduler.h):
//   auto      the parameters as build_fwd_params sets them
//   onetile   one tile per CTA, with the tile group build_fwd_params picks for that schedule
//   static    persistent CTAs with a fixed stride, tile group 1
//
// Inputs: uniform random bf16 in [-1, 1) with a fixed seed (as bench/ab/kernel_timing.cpp);
// 16384 tokens, model dim 2048, causal and not. Output: one JSON line per (cell, variant, pass):
//   {"hdim", "causal", "seqlen", "batch", "heads", "exp2_emulated_per16", "rescale_threshold",
//    "tile_group", "schedule", "pass", "median_ms", "tflops", "max_abs_diff_o",
//    "max_abs_diff_lse"}; the diffs are against the (0, 0) variant (or the head dim's only
//    variant) with the schedule "auto".
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "bench/ab/softmax_sweep/variants.h"
#include "bench/ab/timing_common.h"
#include "flashlane/flashlane.h"
#include "sm90/common/params_builder.h"

namespace fl = flashlane;
namespace sweep = flashlane::softmax_sweep;

using flashlane::ab::check;
using flashlane::ab::die;
using flashlane::ab::from_bf16;
using flashlane::ab::ints;
using flashlane::ab::to_bf16;

namespace {
// A JSON number, or null for NaN (no (0, 0) variant to compare with, or a NaN difference).
std::string json_number(double x) {
  if (std::isnan(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}
}  // namespace

int main(int argc, char** argv) {
  flashlane::ab::g_program = "softmax_sweep";
  int passes = 3, reps = 20;
  std::string seqlens = "512,1024,2048,4096,8192,16384", hdims, tile_groups = "1",
              schedules = "auto";
  bool causal_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--passes") passes = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--seqlens") seqlens = next();
    else if (a == "--hdims") hdims = next();
    else if (a == "--tile-groups") tile_groups = next();
    else if (a == "--schedules") schedules = next();
    else if (a == "--causal-only") causal_only = true;
    else die("unknown argument " + a);
  }
  std::vector<std::string> schedule_names;
  for (std::stringstream ss(schedules); ss.good();) {
    std::string name;
    std::getline(ss, name, ',');
    if (name != "auto" && name != "onetile" && name != "static") die("unknown schedule " + name);
    schedule_names.push_back(name);
  }
  std::set<int> want_hdims;
  for (int d : ints(hdims)) want_hdims.insert(d);
  std::set<int> registered;
  for (const auto& v : sweep::variants()) registered.insert(v.head_dim);

  constexpr int64_t kTokens = 16384, kModelDim = 2048;
  const size_t elems = size_t(kTokens * kModelDim);
  const size_t lse_elems = size_t(kTokens) * (kModelDim / 64);
  std::vector<uint16_t> host(elems);
  void *q, *k, *v, *o, *lse;
  for (void** p : {&q, &k, &v, &o}) check(cudaMalloc(p, elems * 2), "cudaMalloc");
  check(cudaMalloc(&lse, lse_elems * sizeof(float)), "cudaMalloc lse");
  uint64_t seed = 1;
  for (void* p : {q, k, v}) {
    std::mt19937_64 gen(seed++);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (auto& x : host) x = to_bf16(dist(gen));
    check(cudaMemcpy(p, host.data(), elems * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");

  for (int hd : registered) {
    if (!want_hdims.empty() && !want_hdims.count(hd)) continue;
    std::vector<const sweep::Variant*> vs;
    const sweep::Variant* baseline = nullptr;
    for (const auto& var : sweep::variants()) {
      if (var.head_dim != hd) continue;
      vs.push_back(&var);
      if (var.exp2_emulated_per16 == 0 && var.rescale_threshold == 0) baseline = &var;
    }
    // A head dim swept with one softmax variant only is its own reference: the check then
    // compares its schedules with each other.
    if (baseline == nullptr && vs.size() == 1) baseline = vs[0];
    for (int causal = causal_only ? 1 : 0; causal <= 1; ++causal) {
      for (int seqlen : ints(seqlens)) {
        const int64_t batch = kTokens / seqlen, heads = kModelDim / hd;
        const fl::AttentionProblem pb = fl::ab::canonical_cell(q, k, v, o, lse, hd, seqlen, causal);
        fl::ProblemInfo info;
        check(fl::validate(pb, fl::Direction::kForward, &info), "validate");
        fl::sm90::FwdParams params;
        check(fl::sm90::build_fwd_params(pb, info, &params), "build_fwd_params");
        const double flops = fl::ab::forward_flops(pb);
        const size_t o_count = size_t(batch * seqlen * heads * hd);
        const size_t lse_count = size_t(batch * heads * seqlen);

        const int pairs = int(batch * heads);
        // The parameters of one schedule name (see the file comment; names checked above).
        auto schedule_params = [&](const std::string& name, fl::sm90::FwdParams* run) {
          if (name == "auto") return;
          run->persistent = name == "static";
          run->tile_group = fl::sm90::fwd_tile_group(info, run->persistent);
        };
        // O and LSE of each (variant, schedule), for the consistency check against the
        // baseline variant with the builder's schedule.
        auto outputs = [&](const sweep::Variant* var, const fl::sm90::FwdParams& run,
                           std::vector<uint16_t>* ho, std::vector<float>* hl) {
          check(cudaMemsetAsync(o, 0xff, o_count * 2, stream), "poison o");  // NaN bf16
          check(cudaMemsetAsync(lse, 0xff, lse_count * 4, stream), "poison lse");
          check(var->launch(run, stream), "launch");
          check(cudaStreamSynchronize(stream), "sync");
          ho->resize(o_count);
          hl->resize(lse_count);
          check(cudaMemcpy(ho->data(), o, o_count * 2, cudaMemcpyDeviceToHost), "copy o");
          check(cudaMemcpy(hl->data(), lse, lse_count * 4, cudaMemcpyDeviceToHost), "copy lse");
        };
        std::vector<uint16_t> base_o, var_o;
        std::vector<float> base_l, var_l;
        if (baseline != nullptr) outputs(baseline, params, &base_o, &base_l);
        const size_t n_sched = schedule_names.size();
        std::vector<double> diff_o(vs.size() * n_sched, NAN), diff_l(vs.size() * n_sched, NAN);
        for (size_t i = 0; i < vs.size() && baseline != nullptr; ++i) {
          for (size_t si = 0; si < n_sched; ++si) {
            fl::sm90::FwdParams run = params;
            schedule_params(schedule_names[si], &run);
            outputs(vs[i], run, &var_o, &var_l);
            double dmax = 0, lmax = 0;
            for (size_t j = 0; j < o_count; ++j) {
              const double d = std::fabs(double(from_bf16(var_o[j])) - from_bf16(base_o[j]));
              dmax = (d > dmax || std::isnan(d)) ? d : dmax;  // a NaN sticks
            }
            for (size_t j = 0; j < lse_count; ++j) {
              const double d = std::fabs(double(var_l[j]) - base_l[j]);
              lmax = (d > lmax || std::isnan(d)) ? d : lmax;
            }
            diff_o[i * n_sched + si] = dmax;
            diff_l[i * n_sched + si] = lmax;
          }
        }

        for (int pass = 0; pass < passes; ++pass) {
          for (size_t i = 0; i < vs.size(); ++i) {
            for (size_t si = 0; si < n_sched; ++si) {
              const std::string& schedule = schedule_names[si];
              for (int group_arg : ints(tile_groups)) {
                const sweep::Variant* var = vs[i];
                fl::sm90::FwdParams run = params;
                schedule_params(schedule, &run);
                if (group_arg > 0) run.tile_group = std::max(1, std::min(group_arg, pairs));
                for (int w = 0; w < 3; ++w) check(var->launch(run, stream), "launch");
                std::vector<float> ms;
                for (int r = 0; r < reps; ++r) {
                  check(cudaEventRecord(start, stream), "record");
                  check(var->launch(run, stream), "launch");
                  check(cudaEventRecord(stop, stream), "record");
                  check(cudaEventSynchronize(stop), "sync");
                  float t = 0.f;
                  check(cudaEventElapsedTime(&t, start, stop), "elapsed");
                  ms.push_back(t);
                }
                std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
                const double median = ms[ms.size() / 2];
                std::printf(
                    "{\"hdim\": %d, \"causal\": %s, \"seqlen\": %d, \"batch\": %lld, \"heads\": %lld, "
                    "\"exp2_emulated_per16\": %d, \"rescale_threshold\": %d, \"tile_group\": %d, "
                    "\"schedule\": \"%s\", \"pass\": %d, \"median_ms\": %.5f, \"tflops\": %.2f, "
                    "\"max_abs_diff_o\": %s, \"max_abs_diff_lse\": %s}\n",
                    hd, causal ? "true" : "false", seqlen, static_cast<long long>(batch),
                    static_cast<long long>(heads), var->exp2_emulated_per16, var->rescale_threshold,
                    group_arg, schedule.c_str(), pass, median, flops / (median * 1e-3) / 1e12,
                    json_number(diff_o[i * n_sched + si]).c_str(),
                    json_number(diff_l[i * n_sched + si]).c_str());
                std::fflush(stdout);
              }
            }
          }
        }
      }
    }
  }
  check(cudaGetLastError(), "end");
  return 0;
}
