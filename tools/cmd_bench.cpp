// tools/cmd_bench.cpp: `flashlane bench`: times a grid of problems on the chosen backends and
// writes one proof row (docs/RECEIPTS.md) per (problem x backend x direction) as JSON lines.
//
// Presets (bench/README.md):
//   default    Hopper GPU: the canonical grid on sm90 with reference_cuda as peer; another GPU:
//              the canonical grid on reference_cuda; no GPU: the cpu grid on reference_cpu, and
//              the output and every row say that the GPU lane did not run and why (exit 0).
//   canonical  the canonical grid (BENCHMARKS.md), backends as for default.
//   smoke      8 canonical cells, backends as for default.
//   varlen     6 packed varlen batches (src/bench/grid.h), backends as for default.
//   cpu        the cpu grid on reference_cpu only.
//   decode     the decode grid through forward_kvcache (cmd_bench_decode.cpp), direction
//              "decode", GB/s against the copy bandwidth measured in the same run.
// Per row: fresh random inputs per problem (shared by all backends of that problem), warm-up,
// CUDA-event median over the repetitions (capped so one row's timed loop takes about 1 s), every
// call's Status checked; forward FLOPs from forward_flops(info, visible_pairs), backward = 2.5 x
// forward with time(fwd + bwd) - time(fwd); peak memory as the cudaMemGetInfo delta plus the pool's
// workspace high-water mark (GPU) or the tensor bytes (host); then one more call on poisoned outputs, checked against ref64 / ref_lowp
// (reference_cuda on the GPU lane above 1e8 score pairs, reference_cpu otherwise; both
// accumulate float64 on float64 inputs; the row says which): every element for problems up to
// --full-validation-max-seqlen (4096), a seeded sample of (batch, head) slices above it
// (src/bench/sampling.h; the row's metrics.validation_scope lists them). Requests are strict,
// so a backend that cannot run is recorded with its tag, never replaced by another. --budget-s
// stops starting new problems after that many seconds (the output says that a subset ran).
#include <cuda_runtime_api.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <chrono>
#include <cmath>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench/grid.h"
#include "bench/harness.h"
#include "bench/proof.h"
#include "bench/sampling.h"
#include "bench/timer.h"
#include "cli_common.h"
#include "cmd_bench_decode.h"
#include "flashlane/flashlane.h"

namespace flashlane::cli {

namespace {

struct BenchOptions {
  std::string preset = "default";
  std::string backends;
  std::string out = "out/bench-receipts.jsonl";
  std::string dirs = "fwd,bwd";
  int reps = 0;     // 0: preset default
  int warmup = -1;  // -1: preset default
  double budget_s = 480;
  double target_s = 1.0;
  int64_t full_validation_max_seqlen = bench::kDefaultFullValidationMaxSeqlen;
  bool overwrite = false;
  double decode_mem_gib = 48;  // preset decode: K+V memory budget
  int64_t num_splits = 0;      // preset decode: split-KV hint of every call
  std::string learnable_sink;  // fwd/bwd presets: attention sinks on every problem (empty: none)
};

/// Problems above this many score pairs are checked against reference_cuda (GPU lane).
constexpr double kGpuReferencePairs = 1e8;

struct Lane {
  bool gpu = false;
  std::string gpu_reason;  // why the GPU lane did not run
  std::string grid_name;
  std::vector<bench::ProblemSpec> grid;
  std::vector<Backend> backends;
  std::vector<std::string> notes;
};

struct References {
  Status status;
  bool on_gpu = false;
  bench::ValidationPlan plan;  // full, or the sampled (batch, head) slices
  bench::Outputs ref64, ref_lowp;  // full tensors, or the plan's slices (gather_slices order)
};

/// FLOPs the two references (ref64, ref_lowp) spend on a problem under `plan`: forward
/// 4 x visible pairs x (head_dim + head_dim_v) / 2, backward 2.5 x that (FlashAttention's
/// count), on the checked share of the (batch, head) slices.
double reference_flops(const bench::ProblemSpec& spec, const bench::ValidationPlan& plan, bool bwd) {
  const double fwd = 2.0 * spec.visible_pairs() * static_cast<double>(spec.head_dim + spec.dv());
  const double share = plan.sampled ? static_cast<double>(plan.slices().size()) /
                                          static_cast<double>(plan.total_slices)
                                    : 1.0;
  return 2.0 * fwd * share * (bwd ? 3.5 : 1.0);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep))
    if (!item.empty()) parts.push_back(item);
  return parts;
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

struct Measure {
  const BenchOptions* opts;
  const Lane* lane;
  const bench::Environment* env;
  std::string preset_label;
};

/// One row: time, validate, fill metrics. `fwd_ms` caches the forward median of this backend
/// on this problem for the backward row (time(fwd + bwd) - time(fwd)).
bench::ProofRow measure_row(const Measure& m, const bench::ProblemSpec& spec,
                            const bench::HostInputs& inputs, const References& refs,
                            Backend backend, Direction dir, std::optional<double>* fwd_ms) {
  bench::ProofRow row;
  row.preset = m.preset_label;
  row.timestamp = bench::utc_timestamp();
  row.requested_backend = backend_name(backend);
  row.direction = dir == Direction::kForward ? "fwd" : "bwd";
  row.runtime_mode = row.direction;
  row.environment = *m.env;
  row.environment.kernel_fingerprint =
      kernel_fingerprint(row.requested_backend.c_str(), row.runtime_mode.c_str());
  row.surface = bench::bench_surface(row.direction, spec.varlen(), !spec.learnable_sink.empty());
  row.gpu_lane.ran = m.lane->gpu;
  row.gpu_lane.reason = m.lane->gpu_reason;
  row.problem = bench::spec_to_json(spec);
  row.problem["score_pairs"] = spec.score_pairs();
  row.problem["visible_pairs_tool"] = spec.visible_pairs();

  const bool on_gpu = backend != Backend::kReferenceCpu && m.lane->gpu;
  const Device device = on_gpu ? Device::cuda(0) : Device::cpu();
  const bool bwd = dir == Direction::kBackward;
  const Request request{backend, /*strict=*/true};
  int warmup = m.opts->warmup >= 0 ? m.opts->warmup : (on_gpu ? 3 : 1);
  int reps = m.opts->reps > 0 ? m.opts->reps : (on_gpu ? 20 : 3);

  size_t free0 = 0, free1 = 0, total = 0;
  if (on_gpu) {
    cudaDeviceSynchronize();
    cudaMemGetInfo(&free0, &total);
  }
  bench::ProblemTensors t;
  Status s = bench::build_tensors(spec, inputs, spec.dtype, device, bwd, &t);
  auto fail_row = [&](const Status& st, bool executed) {
    row.status = st.to_string();
    const Receipt& r = last_receipt();
    if (!r.requested_backend.empty()) {
      row.has_receipt = true;
      row.receipt = r;
      // The failing call may be the forward that a backward row needs: keep the row's direction.
      if (r.runtime_mode.find(row.direction) != std::string::npos) row.runtime_mode = r.runtime_mode;
    }
    row.proof_class = executed ? (on_gpu ? "execute" : "observational") : "planner";
    bench::compute_counts_for_status(&row);
    return row;
  };
  if (!s.ok()) {
    row.status = s.to_string();
    row.proof_class = "planner";
    bench::compute_counts_for_status(&row);
    return row;
  }
  ProblemInfo info;
  if ((s = validate(t.problem, Direction::kForward, &info)).ok()) {
    std::vector<int32_t> cq, ck;
    if (spec.varlen()) {
      cq.assign(1, 0);
      ck.assign(1, 0);
      for (size_t b = 0; b < spec.seqlens_q.size(); ++b) {
        cq.push_back(cq.back() + spec.seqlens_q[b]);
        ck.push_back(ck.back() + spec.seqlens_k[b]);
      }
    }
    const double vp = info.visible_pairs(spec.varlen() ? cq.data() : nullptr,
                                         spec.varlen() ? ck.data() : nullptr,
                                         spec.seqused_k.empty() ? nullptr : spec.seqused_k.data());
    row.problem["visible_pairs"] = vp;
    row.problem["flops_fwd"] = forward_flops(info, vp);
  }

  auto sync = [&](Status st) {
    if (st.ok() && on_gpu) {
      cudaError_t e = cudaStreamSynchronize(nullptr);
      if (e != cudaSuccess) st = Status(ErrorCode::kCudaError, cudaGetErrorString(e));
    }
    return st;
  };
  auto time_it = [&](const std::function<Status()>& region, std::vector<double>* ms) {
    // One probe call sets the repetition count so a row's loop takes about target_s.
    const auto t0 = std::chrono::steady_clock::now();
    Status st = sync(region());
    if (!st.ok()) return st;
    const double probe = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int n = reps;
    if (probe > 0 && m.opts->reps <= 0)
      n = std::max(3, std::min(reps, static_cast<int>(m.opts->target_s / probe)));
    const int w = std::max(0, warmup - 1);
    st = on_gpu ? bench::time_region(region, w, n, nullptr, ms)
                : bench::time_region_host(region, w, n, ms);
    return st;
  };
  auto fwd_region = [&]() { return forward(t.problem, request, nullptr); };
  auto pair_region = [&]() {
    Status st = forward(t.problem, request, nullptr);
    return st.ok() ? backward(t.problem, request, nullptr) : st;
  };

  std::vector<double> ms;
  double median_ms = 0;
  if (!bwd) {
    if (!(s = time_it(fwd_region, &ms)).ok()) return fail_row(s, exit_code_for(s) != kExitRefused);
    median_ms = bench::median(ms);
    *fwd_ms = median_ms;
  } else {
    // A backend that cannot run the backward is recorded at once: select() refuses without
    // launching, and the refused backward() call writes the receipt (nothing runs either).
    Plan plan;
    if (!(s = select(t.problem, Direction::kBackward, request, &plan)).ok())
    {
      const Status refused = backward(t.problem, request, nullptr);
      return fail_row(refused.ok() ? s : refused, false);
    }
    if (!(s = sync(fwd_region())).ok()) {
      return fail_row(Status(s.code(), "forward (needed for backward) failed: " + s.message(),
                             s.reason_tag()),
                      exit_code_for(s) != kExitRefused);
    }
    if (!(s = sync(backward(t.problem, request, nullptr))).ok())
      return fail_row(s, exit_code_for(s) != kExitRefused);
    if (!fwd_ms->has_value()) {
      if (!(s = time_it(fwd_region, &ms)).ok()) return fail_row(s, true);
      *fwd_ms = bench::median(ms);
    }
    if (!(s = time_it(pair_region, &ms)).ok()) return fail_row(s, true);
    median_ms = bench::median(ms) - **fwd_ms;
  }
  row.metrics.reps = static_cast<int>(ms.size());
  row.metrics.warmup = warmup;

  // Validation: poisoned outputs, one more call, the check against the references. The call's
  // stream-ordered workspace (cudaMallocAsync from the device's default pool, as the sm90
  // backward allocates it) is seen through the pool's high-water mark, reset just before.
  bench::Outputs got;
  if (!(s = bench::poison_outputs(&t, dir)).ok()) return fail_row(s, true);
  cudaMemPool_t pool = nullptr;
  const bool pool_ok = on_gpu && cudaDeviceGetDefaultMemPool(&pool, 0) == cudaSuccess;
  if (pool_ok) {
    uint64_t zero = 0;  // the attribute is a 64-bit value (cuuint64_t)
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero);
  }
  s = sync(bwd ? backward(t.problem, request, nullptr) : forward(t.problem, request, nullptr));
  uint64_t pool_high = 0;
  if (pool_ok) cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &pool_high);
  cudaGetLastError();  // a pool query failing must not leak into the next row's checks
  row.has_receipt = true;
  row.receipt = last_receipt();
  row.runtime_mode = row.receipt.runtime_mode.empty() ? row.direction : row.receipt.runtime_mode;
  if (!s.ok()) return fail_row(s, true);
  if (on_gpu) {
    cudaMemGetInfo(&free1, &total);
    const double delta = free0 > free1 ? static_cast<double>(free0 - free1) : 0.0;
    row.metrics.peak_memory_mib =
        mib(std::max(delta, static_cast<double>(t.bytes_allocated)) + double(pool_high));
    row.metrics.memory_method =
        "cudaMemGetInfo delta over the row (its tensors, " + fmt(mib(t.bytes_allocated), "%.1f") +
        " MiB, plus memory the backend still holds after the calls) + the default memory pool's "
        "high-water mark during the validation call (stream-ordered workspace, " +
        fmt(mib(double(pool_high)), "%.1f") + " MiB)";
  } else {
    row.metrics.peak_memory_mib = mib(static_cast<double>(t.bytes_allocated));
    row.metrics.memory_method = "host tensor bytes (inputs + outputs)";
  }
  if ((s = bench::fetch_outputs(t, dir, &got)).ok() && refs.status.ok()) {
    if (refs.plan.sampled) got = bench::gather_slices(spec, refs.plan, dir, got);
    bench::CheckResult c = bench::check_outputs(dir, got, refs.ref64, refs.ref_lowp);
    const std::string ref_name = refs.on_gpu ? "reference_cuda" : "reference_cpu";
    c.ref64_method = ref_name + " on float64 upcasts of the same inputs (float64 accumulation)";
    c.ref_lowp_method = ref_name + " on the " + std::string(dtype_name(spec.dtype)) + " inputs";
    row.metrics.validation_ran = true;
    row.metrics.validation_passed = c.pass;
    row.metrics.nan_count = c.nan_count();
    if (const bench::ErrorFigure* w = c.worst()) {
      row.metrics.max_abs_diff = w->max_abs_diff;
      row.metrics.ref_max_abs_diff = w->ref_max_abs_diff;
      row.metrics.checked_tensor = w->tensor;
    }
    row.metrics.errors = bench::check_to_json(c)["tensors"];
    row.metrics.validation_scope = refs.plan.scope();
    row.metrics.validation_method = refs.plan.describe(dir) + " against ref64 = " + c.ref64_method +
                                    "; ref_lowp = " + c.ref_lowp_method +
                                    (refs.plan.sampled ? " (the same slices)" : "");
  } else {
    row.metrics.validation_method =
        "not validated: " + (s.ok() ? "reference failed: " + refs.status.to_string() : s.to_string());
  }

  const double flops = row.problem.value("flops_fwd", 0.0) * (bwd ? 2.5 : 1.0);
  if (median_ms > 0) {
    row.metrics.median_ms = median_ms;
    row.metrics.tflops = flops / (median_ms * 1e-3) / 1e12;
    row.metrics.median_tok_per_sec = static_cast<double>(spec.total_q()) / (median_ms * 1e-3);
  } else {
    row.metrics.validation_method += "; backward time not positive (time(fwd+bwd) <= time(fwd))";
  }
  row.proof_class = on_gpu ? "execute" : "observational";
  bench::compute_counts_for_status(&row);
  return row;
}

void attach_peers(std::vector<bench::ProofRow>* rows) {
  for (auto& r : *rows) {
    for (const auto& p : *rows) {
      if (&p == &r || p.direction != r.direction || p.requested_backend == r.requested_backend)
        continue;
      bench::Peer peer;
      peer.backend = p.requested_backend;
      peer.median_ms = p.metrics.median_ms;
      peer.tflops = p.metrics.tflops;
      if (p.metrics.median_ms && r.metrics.median_ms && *r.metrics.median_ms > 0)
        peer.speedup = *p.metrics.median_ms / *r.metrics.median_ms;
      peer.counted = p.counts_for_status;
      r.peers.push_back(peer);
    }
  }
}

std::string opt_str(const std::optional<double>& x, const char* f = "%.3g") {
  return x ? fmt(*x, f) : std::string("-");
}

void print_header() {
  std::printf("%-4s %-15s %4s %-8s %6s %5s %5s %10s %9s %9s %9s %10s %10s %-5s %-7s %-6s %s\n", "dir",
              "backend", "hdim", "mask", "seqlen", "batch", "heads", "median_ms", "TFLOP/s",
              "peer", "mem_MiB", "max_diff", "tolerance", "valid", "checked", "counts", "note");
}

/// "full", "8/32" (sampled slices of all), "-" (not validated).
std::string scope_cell(const bench::ValidationScope& v) {
  if (v.kind == "full") return "full";
  if (v.kind == "sampled") return std::to_string(v.slices.size()) + "/" + std::to_string(v.total_slices);
  return "-";
}

void print_row(const bench::ProofRow& r) {
  const auto& p = r.problem;
  std::string peer = "-";
  if (!r.peers.empty() && r.peers[0].tflops) peer = fmt(*r.peers[0].tflops, "%.4g");
  std::string tol = "-";
  if (r.metrics.ref_max_abs_diff) tol = fmt(2 * *r.metrics.ref_max_abs_diff + bench::kAbsTolerance);
  std::string note = r.status != "ok" ? r.status : r.not_counted_reason;
  if (note.size() > 70) note = note.substr(0, 67) + "...";
  std::printf("%-4s %-15s %4lld %-8s %6lld %5lld %5lld %10s %9s %9s %9s %10s %10s %-5s %-7s %-6s %s\n",
              r.direction.c_str(), r.requested_backend.c_str(),
              static_cast<long long>(p.value("head_dim", 0)), p.value("mask", std::string()).c_str(),
              static_cast<long long>(p.value("seqlen_q", 0)),
              static_cast<long long>(p.value("batch", 0)),
              static_cast<long long>(p.value("heads_q", 0)), opt_str(r.metrics.median_ms, "%.3f").c_str(),
              opt_str(r.metrics.tflops, "%.4g").c_str(), peer.c_str(),
              opt_str(r.metrics.peak_memory_mib, "%.1f").c_str(), opt_str(r.metrics.max_abs_diff).c_str(),
              tol.c_str(), r.metrics.validation_ran ? (r.metrics.validation_passed ? "pass" : "FAIL") : "-",
              scope_cell(r.metrics.validation_scope).c_str(), r.counts_for_status ? "yes" : "no",
              note.c_str());
  std::fflush(stdout);
}

/// Every canonical cell allocates and frees several GiB of host buffers (inputs, their dtype
/// copies, fetched outputs). By default glibc serves such blocks with fresh mmaps, so each
/// problem page-faults all of them again; kept in the heap (no mmap, no trim), later problems
/// reuse pages already mapped. Measured on a 2-core machine: the host part of a canonical cell's
/// two reference runs (build, fetch) from 5-6 s to 1.1-1.6 s. The process keeps its peak host
/// memory until it exits.
void keep_freed_host_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, -1);
#endif
}

int run_bench(const BenchOptions& o) {
  keep_freed_host_memory();
  if (o.preset == "decode") {
    if (!o.learnable_sink.empty()) {
      std::cerr << "flashlane bench: --learnable-sink applies to the forward/backward presets, "
                   "not to --preset decode" << std::endl;
      return kExitRefused;
    }
    DecodeBenchOptions d;
    d.out = o.out;
    d.backends = o.backends;
    d.reps = o.reps;
    d.warmup = o.warmup;
    d.budget_s = o.budget_s;
    d.target_s = o.target_s;
    d.mem_budget_gib = o.decode_mem_gib;
    d.num_splits = o.num_splits;
    d.overwrite = o.overwrite;
    if (d.num_splits < 0 || d.mem_budget_gib <= 0) {
      std::cerr << "flashlane bench: --num-splits must be >= 0 and --decode-mem-gib > 0" << std::endl;
      return kExitRefused;
    }
    return run_bench_decode(d);
  }
  std::string no_gpu;
  const bool cuda = bench::cuda_present(&no_gpu);
  const DeviceInfo d0 = query_device(0);
  Lane lane;
  if (o.preset != "default" && o.preset != "canonical" && o.preset != "smoke" &&
      o.preset != "varlen" && o.preset != "cpu") {
    std::cerr << "flashlane bench: unknown --preset '" << o.preset
              << "' (default, canonical, smoke, varlen, cpu, decode)" << std::endl;
    return kExitRefused;
  }
  std::vector<Backend> asked;
  for (const auto& name : split(o.backends, ',')) {
    Backend b;
    if (!parse_backend(name, &b) || b == Backend::kAuto) {
      std::cerr << "flashlane bench: unknown backend '" << name << "'" << std::endl;
      return kExitRefused;
    }
    asked.push_back(b);
  }
  std::vector<Direction> dirs;
  for (const auto& name : split(o.dirs, ',')) {
    if (name == "fwd") dirs.push_back(Direction::kForward);
    else if (name == "bwd") dirs.push_back(Direction::kBackward);
    else {
      std::cerr << "flashlane bench: unknown direction '" << name << "' (fwd, bwd)" << std::endl;
      return kExitRefused;
    }
  }
  if (dirs.empty()) {
    std::cerr << "flashlane bench: --dirs is empty" << std::endl;
    return kExitRefused;
  }
  if (o.full_validation_max_seqlen < 0) {
    std::cerr << "flashlane bench: --full-validation-max-seqlen must be >= 0 (0: every problem in full)"
              << std::endl;
    return kExitRefused;
  }
  bool want_bwd = false;
  for (Direction d : dirs) want_bwd = want_bwd || d == Direction::kBackward;

  if (o.preset == "cpu" || !cuda) {
    lane.gpu = false;
    lane.gpu_reason = !cuda ? "no CUDA device: " + no_gpu : "preset cpu: host lane only";
    lane.grid_name = "cpu";
    lane.grid = bench::cpu_grid();
    lane.backends = {Backend::kReferenceCpu};
    for (Backend b : asked)
      if (b != Backend::kReferenceCpu)
        lane.notes.push_back(std::string("backend ") + backend_name(b) + " not run: " + lane.gpu_reason);
    if (o.preset != "default" && o.preset != "cpu")
      lane.notes.push_back("preset " + o.preset + " needs a GPU; ran the cpu grid instead");
  } else {
    lane.gpu = true;
    lane.grid_name = o.preset == "smoke" || o.preset == "varlen" ? o.preset : "canonical";
    bench::grid_for_preset(lane.grid_name, &lane.grid);
    if (!asked.empty()) lane.backends = asked;
    else if (d0.sm == 90) lane.backends = {Backend::kSm90, Backend::kReferenceCuda};
    else {
      lane.backends = {Backend::kReferenceCuda};
      lane.notes.push_back("device is sm_" + std::to_string(d0.sm) +
                           ", not Hopper (sm_90): sm90 not benchmarked, reference_cuda only");
    }
  }

  if (!o.learnable_sink.empty()) {
    for (bench::ProblemSpec& spec : lane.grid) {
      std::string why;
      if (!parse_learnable_sink(o.learnable_sink, spec.heads_q, spec.seed, &spec.learnable_sink,
                                &why)) {
        std::cerr << "flashlane bench: " << why << std::endl;
        return kExitRefused;
      }
    }
    lane.notes.push_back("attention sinks (--learnable-sink " + o.learnable_sink +
                         ") on every problem");
  }

  const bench::Environment env = bench::capture_environment();
  std::cout << "flashlane bench: preset " << o.preset << " -> grid " << lane.grid_name << " ("
            << lane.grid.size() << " problems), backends";
  for (Backend b : lane.backends) std::cout << " " << backend_name(b);
  std::cout << ", dirs " << o.dirs << "\n"
            << "device: " << (lane.gpu ? env.device + " (sm_" + std::to_string(env.sm) + ")" : std::string("cpu"))
            << ", driver " << env.driver << ", runtime " << env.cuda_runtime << ", flashlane "
            << env.library_version << " (" << env.git_commit << ")\n";
  if (!lane.gpu) {
    std::cout << "GPU LANE DID NOT RUN: " << lane.gpu_reason << "\n"
              << "  running the reduced cpu grid on reference_cpu instead; its rows are "
                 "observational and do not count for status (gpu_lane.ran = false)\n";
  }
  for (const auto& n : lane.notes) std::cout << "note: " << n << "\n";
  {
    // What validation will cost: the references' FLOPs with the plan, and with every problem
    // checked in full (bench/README.md, "Time of the default preset", turns these into seconds).
    size_t sampled = 0;
    double work = 0, work_full = 0;
    for (const auto& spec : lane.grid) {
      const bench::ValidationPlan plan = bench::plan_validation(spec, o.full_validation_max_seqlen);
      sampled += plan.sampled ? 1 : 0;
      work += reference_flops(spec, plan, want_bwd);
      work_full += reference_flops(spec, bench::ValidationPlan{}, want_bwd);
    }
    std::cout << "validation: every element up to seqlen "
              << (o.full_validation_max_seqlen > 0 ? std::to_string(o.full_validation_max_seqlen)
                                                   : std::string("(any: sampling off)"))
              << ", seeded (batch, head) slices above it (" << sampled << " of " << lane.grid.size()
              << " problems sampled); reference work " << fmt(work / 1e12, "%.3g") << " TFLOP ("
              << fmt(work_full / 1e12, "%.3g") << " with every element)\n";
  }
  std::cout << "receipts: " << o.out << (o.overwrite ? " (overwritten)" : " (appended)") << "\n";
  std::cout.flush();

  std::string why;
  if (o.overwrite && !bench::append_proof_rows(o.out, {}, /*truncate=*/true, &why)) {
    std::cerr << "flashlane bench: " << why << std::endl;
    return kExitFailed;
  }
  Measure m{&o, &lane, &env, lane.grid_name};
  const auto start = std::chrono::steady_clock::now();
  int written = 0, counting = 0, failed_validation = 0, ref_failures = 0, sampled_rows = 0;
  double inputs_s = 0, reference_s = 0, rows_s = 0, reference_work = 0;
  auto seconds_since = [](std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  size_t done = 0;
  print_header();
  for (const auto& spec : lane.grid) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (o.budget_s > 0 && elapsed > o.budget_s && done > 0) break;
    const auto inputs_start = std::chrono::steady_clock::now();
    const bench::HostInputs inputs = bench::make_inputs(spec, want_bwd);
    inputs_s += seconds_since(inputs_start);
    References refs;
    refs.on_gpu = lane.gpu && spec.score_pairs() > kGpuReferencePairs;
    refs.plan = bench::plan_validation(spec, o.full_validation_max_seqlen);
    const auto ref_start = std::chrono::steady_clock::now();
    refs.status = bench::sampled_reference_outputs(spec, inputs, DType::kFloat64, want_bwd,
                                                   refs.on_gpu, refs.plan, &refs.ref64);
    if (refs.status.ok())
      refs.status = bench::sampled_reference_outputs(spec, inputs, spec.dtype, want_bwd, refs.on_gpu,
                                                     refs.plan, &refs.ref_lowp);
    reference_s += seconds_since(ref_start);
    reference_work += reference_flops(spec, refs.plan, want_bwd);
    if (!refs.status.ok()) {
      ++ref_failures;
      std::cout << "reference failed for " << spec.describe() << ": " << refs.status.to_string() << "\n";
    }
    std::vector<bench::ProofRow> rows;
    const auto rows_start = std::chrono::steady_clock::now();
    for (Backend b : lane.backends) {
      std::optional<double> fwd_ms;
      for (Direction d : dirs) rows.push_back(measure_row(m, spec, inputs, refs, b, d, &fwd_ms));
    }
    rows_s += seconds_since(rows_start);
    attach_peers(&rows);
    if (!bench::append_proof_rows(o.out, rows, false, &why)) {
      std::cerr << "flashlane bench: " << why << std::endl;
      return kExitFailed;
    }
    for (const auto& r : rows) {
      print_row(r);
      ++written;
      counting += r.counts_for_status ? 1 : 0;
      sampled_rows += r.metrics.validation_scope.kind == "sampled" ? 1 : 0;
      if (r.metrics.validation_ran && !r.metrics.validation_passed) ++failed_validation;
    }
    ++done;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "\n" << written << " rows written to " << o.out << "; " << counting
            << " count for status; " << sampled_rows << " validated on sampled slices; "
            << fmt(elapsed, "%.1f") << " s (budget "
            << (o.budget_s > 0 ? fmt(o.budget_s, "%.0f") + " s" : std::string("none")) << "): inputs "
            << fmt(inputs_s, "%.1f") << " s, references " << fmt(reference_s, "%.1f") << " s ("
            << fmt(reference_work / 1e12, "%.3g") << " TFLOP), rows (timing + validation) "
            << fmt(rows_s, "%.1f") << " s\n";
  if (done < lane.grid.size())
    std::cout << "SUBSET: " << done << " of " << lane.grid.size() << " problems ran (--budget-s "
              << o.budget_s << " reached; rerun with --budget-s 0 for the whole grid)\n";
  if (!lane.gpu)
    std::cout << "GPU LANE DID NOT RUN: " << lane.gpu_reason
              << " -- nothing here counts for status; run on a GPU machine for proof.\n";
  if (failed_validation) std::cout << failed_validation << " rows FAILED validation\n";
  std::cout.flush();
  return (failed_validation || ref_failures) ? kExitFailed : kExitOk;
}

}  // namespace

void add_bench_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* sub = app.add_subcommand("bench", "Benchmark a grid; write proof rows (JSON lines)");
  sub->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  sub->add_option("--preset", o->preset, "default, canonical, smoke, varlen, cpu or decode")->capture_default_str();
  sub->add_option("--backends", o->backends, "Comma-separated backends (default: by preset and device)");
  sub->add_option("--out", o->out, "Proof rows file (JSON lines, appended)")->capture_default_str();
  sub->add_option("--dirs", o->dirs, "fwd, bwd or fwd,bwd")->capture_default_str();
  sub->add_option("--reps", o->reps, "Timed repetitions (default: 20 GPU / 3 host, capped to ~1 s per row)");
  sub->add_option("--warmup", o->warmup, "Warm-up calls (default: 3 GPU / 1 host)");
  sub->add_option("--budget-s", o->budget_s, "Stop starting problems after this many seconds (0: none)")
      ->capture_default_str();
  sub->add_option("--full-validation-max-seqlen", o->full_validation_max_seqlen,
                  "Validate every element up to this seqlen; above it, seeded (batch, head) slices "
                  "(0: every problem in full)")
      ->capture_default_str();
  sub->add_flag("--overwrite", o->overwrite, "Truncate --out first instead of appending");
  sub->add_option("--decode-mem-gib", o->decode_mem_gib,
                  "--preset decode: skip cells whose K+V exceed this many GiB (or the free memory)")
      ->capture_default_str();
  sub->add_option("--num-splits", o->num_splits, "--preset decode: split-KV hint (0: heuristic)")
      ->capture_default_str();
  sub->add_option("--learnable-sink", o->learnable_sink,
                  "Attention sinks on every problem of a forward/backward preset: one logit for "
                  "every query head (e.g. 0.5) or 'random' (seeded per problem); rows run as "
                  "sinks_fwd / sinks_bwd (surface attention_sinks), dlearnable_sink is validated");
  sub->callback([o, exit_code] { *exit_code = run_bench(*o); });
}

}  // namespace flashlane::cli
