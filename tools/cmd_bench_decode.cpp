// tools/cmd_bench_decode.cpp: `flashlane bench --preset decode`: the decode grid
// (src/bench/decode.h) through flashlane::forward_kvcache, one proof row per (cell x backend),
// direction "decode".
//
// GPU lane, per (batch, cache length): K and V filled once on the device (seeded normal values,
// bench/device_fill.h) and read by every cell of the group, as a dense cache and as paged pools
// (page sizes 16 and 64, page_table a seeded random permutation of the pages: the same memory,
// gathered). Per cell: the backend under test on poisoned O and LSE, then (once per cell, when a
// backend ran) reference_cuda on the same inputs into separate outputs (a refusal is recorded as
// check "not_run: <tag>"), compared elementwise (decode.h), then timed: warm-up, then per repetition an L2 flush (a
// read of max(256 MiB, 2 x L2), bench/device_fill.h: clean lines, no write-back inside the timed
// call; outside the timed region, it also keeps the GPU busy while the host enqueues the call) and CUDA events around the one call; the median. Calls
// are strict, with check_metadata_values = false (device metadata is trusted, nothing syncs).
// metrics.gbps = bytes moved (K and V of the cached keys, q, o) / median; metrics.copy_gbps =
// cudaMemcpyAsync of a 1 GiB buffer at the start of the run, read + write bytes, median of 10.
// Cells whose K+V exceed the memory budget are written as planner rows saying so.
//
// No GPU: two small cells on reference_cpu with host tensors, checked against reference_cpu on
// float64 upcasts; the output and every row say that the GPU lane did not run (exit 0).
#include "cmd_bench_decode.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench/decode.h"
#include "bench/device_fill.h"
#include "bench/harness.h"
#include "bench/proof.h"
#include "bench/timer.h"
#include "cli_common.h"
#include "core/numeric.h"
#include "dispatch/surfaces.h"
#include "flashlane/flashlane.h"

namespace flashlane::cli {

namespace {

using bench::Buffer;
using bench::DecodeCell;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) parts.push_back(item);
  return parts;
}

Status cuda_check(cudaError_t e, const char* what) {
  return e == cudaSuccess ? Status::Ok()
                          : Status(ErrorCode::kCudaError, std::string(what) + ": " + cudaGetErrorString(e));
}

Status sync_status(bool gpu) {
  return gpu ? cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize") : Status::Ok();
}

/// Fills `count` elements of a buffer with seeded normal values (device kernel or host loop).
Status fill_normal(Buffer* b, DType dtype, size_t count, uint64_t seed, bool gpu) {
  if (gpu) return bench::fill_normal_device(b->data(), dtype, count, seed, nullptr);
  for (size_t i = 0; i < count; ++i)
    numeric::store(b->data(), dtype, static_cast<int64_t>(i), bench::normal_at(seed, i));
  return Status::Ok();
}

/// Host copy of `count` elements of `src` (dtype) converted to `dst_dtype` in a new host buffer.
Status host_convert(const Buffer& src, DType dtype, size_t count, DType dst_dtype, Buffer* dst) {
  Status s = dst->allocate(count * dtype_size(dst_dtype), Device::cpu());
  for (size_t i = 0; s.ok() && i < count; ++i)
    numeric::store(dst->data(), dst_dtype, static_cast<int64_t>(i),
                   numeric::load(src.data(), dtype, static_cast<int64_t>(i)));
  return s;
}

/// Device-to-device copy bandwidth: a 1 GiB buffer copied 3 times untimed, then 10 times timed
/// with CUDA events; read + write bytes over the median time, GB/s.
Status measure_copy_gbps(double* gbps) {
  const size_t bytes = size_t{1} << 30;
  Buffer a, b;
  Status s = a.allocate(bytes, Device::cuda(0));
  if (s.ok()) s = b.allocate(bytes, Device::cuda(0));
  if (s.ok()) s = a.fill_bytes(1);
  if (!s.ok()) return s;
  auto copy = [&]() { return cuda_check(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, nullptr), "cudaMemcpyAsync"); };
  std::vector<double> ms;
  if (!(s = bench::time_region(copy, 3, 10, nullptr, &ms)).ok()) return s;
  *gbps = 2.0 * static_cast<double>(bytes) / (bench::median(ms) * 1e-3) / 1e9;
  return Status::Ok();
}

/// The tensors of one cell; K and V belong to the group and are borrowed.
struct CellTensors {
  Buffer q, o, lse, seqlens, table;
  Buffer o_ref, lse_ref;  // the check's reference outputs
  // Host lane: float64 copies for the reference.
  Buffer q64, k64, v64;
  KvCacheProblem problem, ref_problem;
  size_t bytes = 0;
};

Status build_cell(const DecodeCell& c, const Buffer& k, const Buffer& v, const Buffer* k64,
                  const Buffer* v64, bool gpu, int64_t num_splits, CellTensors* t) {
  const Device dev = gpu ? Device::cuda(0) : Device::cpu();
  const int64_t b = c.batch, hq = c.heads_q, hk = c.heads_kv, d = c.head_dim;
  const size_t elt = static_cast<size_t>(dtype_size(c.dtype));
  const size_t nq = static_cast<size_t>(b * c.seqlen_q * hq * d);
  const size_t nlse = static_cast<size_t>(b * hq * c.seqlen_q);
  Status s;
  if (!(s = t->q.allocate(nq * elt, dev)).ok()) return s;
  if (!(s = fill_normal(&t->q, c.dtype, nq, c.seed, gpu)).ok()) return s;
  const DType ref_dtype = gpu ? c.dtype : DType::kFloat64;
  if (!(s = t->o.allocate(nq * elt, dev)).ok()) return s;
  if (!(s = t->lse.allocate(nlse * 4, dev)).ok()) return s;
  if (!(s = t->o_ref.allocate(nq * dtype_size(ref_dtype), dev)).ok()) return s;
  if (!(s = t->lse_ref.allocate(nlse * 4, dev)).ok()) return s;
  std::vector<int32_t> lens(static_cast<size_t>(b), static_cast<int32_t>(c.cache_len));
  if (!(s = t->seqlens.allocate(lens.size() * 4, dev)).ok()) return s;
  if (!(s = t->seqlens.upload(lens.data(), lens.size() * 4)).ok()) return s;
  std::vector<int32_t> table;
  if (c.paged()) {
    table = bench::page_permutation(c.num_pages(), c.seed ^ 0x9a6e5ull);
    if (!(s = t->table.allocate(table.size() * 4, dev)).ok()) return s;
    if (!(s = t->table.upload(table.data(), table.size() * 4)).ok()) return s;
  }
  t->bytes = t->q.bytes() + t->o.bytes() + t->lse.bytes() + t->seqlens.bytes() + t->table.bytes();

  auto cache_view = [&](void* data, DType dt) {
    return c.paged() ? TensorView::contiguous(data, dt, {c.num_pages(), c.page_size, hk, d}, dev)
                     : TensorView::contiguous(data, dt, {b, c.cache_len, hk, d}, dev);
  };
  auto fill_problem = [&](KvCacheProblem* p, void* q, void* kc, void* vc, void* o, void* lse, DType dt) {
    p->q = TensorView::contiguous(q, dt, {b, c.seqlen_q, hq, d}, dev);
    p->k_cache = cache_view(kc, dt);
    p->v_cache = cache_view(vc, dt);
    p->o = TensorView::contiguous(o, dt, {b, c.seqlen_q, hq, d}, dev);
    p->lse = TensorView::contiguous(lse, DType::kFloat32, {b, hq, c.seqlen_q}, dev);
    p->cache_seqlens = TensorView::contiguous(t->seqlens.data(), DType::kInt32, {b}, dev);
    if (c.paged())
      p->page_table = TensorView::contiguous(t->table.data(), DType::kInt32, {b, c.pages_per_seq()}, dev);
    p->num_splits = num_splits;
    p->check_metadata_values = !gpu;  // device metadata: trusted, no synchronous reads
  };
  fill_problem(&t->problem, t->q.data(), k.data(), v.data(), t->o.data(), t->lse.data(), c.dtype);
  if (gpu) {
    fill_problem(&t->ref_problem, t->q.data(), k.data(), v.data(), t->o_ref.data(), t->lse_ref.data(), c.dtype);
  } else {
    if (!(s = host_convert(t->q, c.dtype, nq, DType::kFloat64, &t->q64)).ok()) return s;
    fill_problem(&t->ref_problem, t->q64.data(), k64->data(), v64->data(), t->o_ref.data(),
                 t->lse_ref.data(), DType::kFloat64);
  }
  return Status::Ok();
}

struct Run {
  const DecodeBenchOptions* opts;
  bool gpu = false;
  std::string gpu_reason;
  bench::Environment env;
  std::optional<double> copy_gbps;
  Buffer flush;  // L2 flush buffer (GPU lane)
};

bench::ProofRow base_row(const Run& run, const DecodeCell& c, const std::string& backend,
                         const KvCacheProblem* problem) {
  bench::ProofRow row;
  row.preset = "decode";
  row.timestamp = bench::utc_timestamp();
  row.requested_backend = backend;
  row.direction = "decode";
  row.runtime_mode = problem ? kvcache_runtime_mode(*problem) : (c.paged() ? "paged_decode" : "decode");
  row.surface = detail::surface_for_mode(row.runtime_mode);
  row.environment = run.env;
  row.environment.kernel_fingerprint = kernel_fingerprint(backend.c_str(), row.runtime_mode.c_str());
  row.gpu_lane.ran = run.gpu;
  row.gpu_lane.reason = run.gpu_reason;
  row.problem = bench::decode_problem_json(c);
  row.metrics.copy_gbps = run.copy_gbps;
  return row;
}

/// The reference outputs of a cell, or why there are none.
struct Reference {
  Status status;
  std::vector<double> o, lse;
  std::string name;
};

Reference run_reference(const Run& run, CellTensors* t) {
  Reference r;
  r.name = run.gpu ? "reference_cuda" : "reference_cpu";
  Status s = t->o_ref.fill_bytes(0xff);
  if (s.ok()) s = t->lse_ref.fill_bytes(0xff);
  if (s.ok())
    s = forward_kvcache(t->ref_problem,
                        Request{run.gpu ? Backend::kReferenceCuda : Backend::kReferenceCpu, true}, nullptr);
  if (s.ok()) s = sync_status(run.gpu);
  if (s.ok()) s = bench::fetch_tensor(t->o_ref, t->ref_problem.o, &r.o);
  if (s.ok()) s = bench::fetch_tensor(t->lse_ref, t->ref_problem.lse, &r.lse);
  r.status = s;
  return r;
}

/// Times one call: warm-up, then (GPU) per repetition an L2 flush outside the events and the
/// call between them; host: wall clock.
Status time_call(Run& run, const std::function<Status()>& call, std::vector<double>* ms, int* warmup_out) {
  const DecodeBenchOptions& o = *run.opts;
  const int warmup = o.warmup >= 0 ? o.warmup : (run.gpu ? 3 : 1);
  int reps = o.reps > 0 ? o.reps : (run.gpu ? 20 : 3);
  *warmup_out = warmup;
  const auto t0 = std::chrono::steady_clock::now();
  Status s = call();
  if (s.ok()) s = sync_status(run.gpu);
  if (!s.ok()) return s;
  const double probe = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (probe > 0 && o.reps <= 0) reps = std::max(3, std::min(reps, static_cast<int>(o.target_s / probe)));
  if (!run.gpu) return bench::time_region_host(call, std::max(0, warmup - 1), reps, ms);
  for (int i = 1; i < warmup; ++i)
    if (!(s = call()).ok()) return s;
  if (!(s = sync_status(true)).ok()) return s;
  bench::GpuTimer timer;
  if (!(s = timer.init()).ok()) return s;
  ms->clear();
  for (int i = 0; i < reps; ++i) {
    if (!(s = bench::flush_l2_by_reading(run.flush.data(), run.flush.bytes(), nullptr)).ok()) return s;
    if (!(s = timer.start(nullptr)).ok()) return s;
    if (!(s = call()).ok()) return s;
    double t = 0;
    if (!(s = timer.stop(nullptr, &t)).ok()) return s;
    if (!(s = cuda_check(cudaGetLastError(), "timed call")).ok()) return s;
    ms->push_back(t);
  }
  return Status::Ok();
}

bench::ProofRow measure(Run& run, const DecodeCell& c, CellTensors* t,
                        const std::function<const Reference&()>& reference, Backend backend) {
  bench::ProofRow row = base_row(run, c, backend_name(backend), &t->problem);
  const Request request{backend, /*strict=*/true};
  auto refused_row = [&](const Status& st, bool executed) {
    row.status = st.to_string();
    const Receipt& r = last_receipt();
    if (!r.requested_backend.empty()) {
      row.has_receipt = true;
      row.receipt = r;
      if (!r.runtime_mode.empty()) row.runtime_mode = r.runtime_mode;
    }
    row.metrics.check = "not_run: " + (st.reason_tag().empty() ? std::string(error_code_name(st.code()))
                                                               : st.reason_tag());
    row.metrics.validation_method = "not validated: the call failed (" + row.metrics.check.substr(9) + ")";
    row.proof_class = executed ? (run.gpu ? "execute" : "observational") : "planner";
    bench::compute_counts_for_status(&row);
    return row;
  };
  // The checked call, on poisoned outputs.
  Status s = t->o.fill_bytes(0xff);
  if (s.ok()) s = t->lse.fill_bytes(0xff);
  if (!s.ok()) return refused_row(s, false);
  s = forward_kvcache(t->problem, request, nullptr);
  if (s.ok()) s = sync_status(run.gpu);
  if (!s.ok()) return refused_row(s, exit_code_for(s) != kExitRefused);
  row.has_receipt = true;
  row.receipt = last_receipt();
  row.runtime_mode = row.receipt.runtime_mode;
  std::vector<double> o_out, lse_out;
  if ((s = bench::fetch_tensor(t->o, t->problem.o, &o_out)).ok())
    s = bench::fetch_tensor(t->lse, t->problem.lse, &lse_out);
  if (!s.ok()) return refused_row(s, true);
  const Reference& ref = reference();  // run once per cell, only when a backend ran
  if (ref.status.ok()) {
    const bench::BoundFigure fo = bench::compare_decode_o(o_out, ref.o);
    const bench::BoundFigure fl = bench::compare_decode_lse(lse_out, ref.lse);
    row.metrics.errors = nlohmann::json::array({bench::bound_figure_to_json(fo), bench::bound_figure_to_json(fl)});
    row.metrics.validation_ran = true;
    row.metrics.validation_passed = fo.pass && fl.pass;
    row.metrics.nan_count = fo.nan_count + fl.nan_count;
    const bench::BoundFigure& w = fo.max_ratio >= fl.max_ratio ? fo : fl;
    row.metrics.max_abs_diff = w.max_abs_diff;
    row.metrics.checked_tensor = w.tensor;
    row.metrics.validation_scope.kind = "full";
    row.metrics.validation_method =
        "every element of o and lse against " + ref.name +
        (run.gpu ? " on the same inputs (fp32 accumulation)" : " on float64 upcasts of the same inputs") +
        ": " + fo.bound + "; " + fl.bound;
    row.metrics.check = row.metrics.validation_passed ? "pass" : "fail";
  } else {
    int64_t nan = 0;
    for (double x : o_out) nan += std::isfinite(x) ? 0 : 1;
    row.metrics.nan_count = nan;
    const std::string why = ref.status.reason_tag().empty() ? ref.status.to_string() : ref.status.reason_tag();
    row.metrics.check = "not_run: " + why;
    row.metrics.validation_method = "not validated: " + ref.name + " did not run: " + ref.status.to_string();
  }
  // Timing.
  std::vector<double> ms;
  int warmup = 0;
  auto call = [&]() { return forward_kvcache(t->problem, request, nullptr); };
  if (!(s = time_call(run, call, &ms, &warmup)).ok()) {
    row.status = "timing failed: " + s.to_string();
    row.proof_class = run.gpu ? "execute" : "observational";
    bench::compute_counts_for_status(&row);
    return row;
  }
  const double med = bench::median(ms);
  row.metrics.reps = static_cast<int>(ms.size());
  row.metrics.warmup = warmup;
  if (med > 0) {
    row.metrics.median_ms = med;
    row.metrics.gbps = c.bytes_moved() / (med * 1e-3) / 1e9;
    row.metrics.tflops = c.flops() / (med * 1e-3) / 1e12;
    row.metrics.median_tok_per_sec = static_cast<double>(c.batch * c.seqlen_q) / (med * 1e-3);
  }
  row.metrics.peak_memory_mib = (c.kv_alloc_bytes() + static_cast<double>(t->bytes)) / (1024.0 * 1024.0);
  row.metrics.memory_method =
      "tensor bytes of the cell: K and V (shared by the cells of one batch and cache length), q, o, lse, "
      "cache_seqlens, page_table";
  row.proof_class = run.gpu ? "execute" : "observational";
  bench::compute_counts_for_status(&row);
  return row;
}

std::string opt_cell(const std::optional<double>& x, const char* f) { return x ? fmt(*x, f) : std::string("-"); }

void print_header() {
  std::printf("%-8s %5s %7s %7s %-15s %-28s %9s %8s %6s %-10s %-6s %s\n", "layout", "batch", "cache",
              "hq/hkv", "backend", "variant", "median_ms", "GB/s", "%copy", "check", "counts", "note");
}

void print_row(const bench::ProofRow& r) {
  const auto& p = r.problem;
  std::string pct = "-";
  if (r.metrics.gbps && r.metrics.copy_gbps && *r.metrics.copy_gbps > 0)
    pct = fmt(100.0 * *r.metrics.gbps / *r.metrics.copy_gbps, "%.1f");
  std::string note = r.status != "ok" ? r.status : r.not_counted_reason;
  if (note.size() > 70) note = note.substr(0, 67) + "...";
  std::string check = r.metrics.check.size() > 10 ? r.metrics.check.substr(0, 10) : r.metrics.check;
  const std::string gqa = std::to_string(p.value("heads_q", 0)) + "/" + std::to_string(p.value("heads_kv", 0));
  std::printf("%-8s %5lld %7lld %7s %-15s %-28s %9s %8s %6s %-10s %-6s %s\n",
              p.value("layout", std::string()).c_str(), static_cast<long long>(p.value("batch", 0)),
              static_cast<long long>(p.value("cache_len", 0)), gqa.c_str(), r.requested_backend.c_str(),
              (r.has_receipt ? r.receipt.variant : std::string("-")).substr(0, 28).c_str(),
              opt_cell(r.metrics.median_ms, "%.4f").c_str(), opt_cell(r.metrics.gbps, "%.0f").c_str(),
              pct.c_str(), check.c_str(), r.counts_for_status ? "yes" : "no", note.c_str());
  std::fflush(stdout);
}

}  // namespace

int run_bench_decode(const DecodeBenchOptions& o) {
  Run run;
  run.opts = &o;
  std::string no_gpu;
  run.gpu = bench::cuda_present(&no_gpu);
  if (!run.gpu) run.gpu_reason = "no CUDA device: " + no_gpu;
  std::vector<Backend> backends;
  for (const auto& name : split_list(o.backends)) {
    Backend b;
    if (!parse_backend(name, &b) || b == Backend::kAuto) {
      std::cerr << "flashlane bench: unknown backend '" << name << "'" << std::endl;
      return kExitRefused;
    }
    backends.push_back(b);
  }
  std::vector<std::string> notes;
  if (!run.gpu) {
    for (Backend b : backends)
      if (b != Backend::kReferenceCpu)
        notes.push_back(std::string("backend ") + backend_name(b) + " not run: " + run.gpu_reason);
    backends = {Backend::kReferenceCpu};
  } else if (backends.empty()) {
    backends = {Backend::kSm90};
  }
  const std::vector<DecodeCell> grid = run.gpu ? bench::decode_grid() : bench::decode_cpu_grid();
  run.env = bench::capture_environment();

  std::cout << "flashlane bench: preset decode -> " << (run.gpu ? "decode grid" : "decode cpu grid")
            << " (" << grid.size() << " cells), backends";
  for (Backend b : backends) std::cout << " " << backend_name(b);
  std::cout << "\ndevice: " << (run.gpu ? run.env.device + " (sm_" + std::to_string(run.env.sm) + ")" : std::string("cpu"))
            << ", driver " << run.env.driver << ", runtime " << run.env.cuda_runtime << ", flashlane "
            << run.env.library_version << " (" << run.env.git_commit << ")\n";
  if (!run.gpu)
    std::cout << "GPU LANE DID NOT RUN: " << run.gpu_reason << "\n"
              << "  running the decode cpu grid on reference_cpu (host tensors) instead; its rows are "
                 "observational and do not count for status (gpu_lane.ran = false)\n";
  for (const auto& n : notes) std::cout << "note: " << n << "\n";

  double budget_bytes = o.mem_budget_gib * kGiB;
  if (run.gpu) {
    double copy = 0;
    Status s = measure_copy_gbps(&copy);
    if (s.ok()) {
      run.copy_gbps = copy;
      std::cout << "copy bandwidth: " << fmt(copy, "%.0f")
                << " GB/s (cudaMemcpyAsync device to device, 1 GiB, read + write bytes, median of 10)\n";
    } else {
      std::cout << "copy bandwidth: not measured: " << s.to_string() << "\n";
    }
    int l2 = 0;
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0);
    const size_t flush = std::max<size_t>(size_t{256} << 20, 2 * static_cast<size_t>(std::max(l2, 0)));
    if (!(s = run.flush.allocate(flush, Device::cuda(0))).ok()) {
      std::cerr << "flashlane bench: " << s.to_string() << std::endl;
      return kExitFailed;
    }
    std::cout << "timing: CUDA events around each call, median over the repetitions after "
              << (o.warmup >= 0 ? o.warmup : 3) << " warm-up calls; before each repetition the L2 ("
              << fmt(l2 / 1048576.0, "%.0f") << " MiB) is flushed by reading "
              << fmt(flush / 1048576.0, "%.0f") << " MiB outside the timed region\n";
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    // Reserve: the cell's small tensors, the backend's workspace and the allocator's slack.
    const double usable = static_cast<double>(free_b) - 2.0 * kGiB;
    budget_bytes = std::min(budget_bytes, usable);
    std::cout << "memory budget for K+V: " << fmt(budget_bytes / kGiB, "%.1f") << " GiB (min of --decode-mem-gib "
              << fmt(o.mem_budget_gib, "%.0f") << " and free memory " << fmt(free_b / kGiB, "%.1f")
              << " GiB less 2 GiB); cells above it are skipped\n";
  }
  std::cout << "check: " << (run.gpu ? "reference_cuda on the same inputs" : "reference_cpu on float64 upcasts")
            << ", |o - o_ref| <= 2^-7 max(1, |o_ref|) + 1e-3 and |lse - lse_ref| <= 1e-3 elementwise\n"
            << "receipts: " << o.out << (o.overwrite ? " (overwritten)" : " (appended)") << "\n";
  std::cout.flush();

  std::string why;
  if (o.overwrite && !bench::append_proof_rows(o.out, {}, /*truncate=*/true, &why)) {
    std::cerr << "flashlane bench: " << why << std::endl;
    return kExitFailed;
  }
  const auto start = std::chrono::steady_clock::now();
  int written = 0, counting = 0, failed = 0, skipped = 0, refused = 0, not_checked = 0;
  size_t done = 0;
  print_header();
  for (size_t i = 0; i < grid.size();) {
    // One group: the cells of one (batch, cache length), which share K and V.
    size_t j = i;
    while (j < grid.size() && grid[j].batch == grid[i].batch && grid[j].cache_len == grid[i].cache_len) ++j;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (o.budget_s > 0 && elapsed > o.budget_s && done > 0) break;
    std::vector<bench::ProofRow> rows;
    double kv_bytes = 0;
    int64_t rows_kv = 0;
    for (size_t c = i; c < j; ++c) {
      kv_bytes = std::max(kv_bytes, grid[c].kv_alloc_bytes());
      rows_kv = std::max(rows_kv, grid[c].cache_rows());
    }
    const DecodeCell& first = grid[i];
    if (kv_bytes > budget_bytes) {
      for (size_t c = i; c < j; ++c)
        for (Backend b : backends) {
          bench::ProofRow row = base_row(run, grid[c], backend_name(b), nullptr);
          row.status = "skipped: K+V " + fmt(kv_bytes / kGiB, "%.1f") + " GiB exceed the memory budget " +
                       fmt(budget_bytes / kGiB, "%.1f") + " GiB";
          row.metrics.check = "not_run: memory budget";
          row.metrics.validation_method = "not validated: the cell was skipped (memory budget)";
          row.proof_class = "planner";
          bench::compute_counts_for_status(&row);
          rows.push_back(row);
        }
      skipped += static_cast<int>(j - i);
      std::cout << "skip b" << first.batch << " kv" << first.cache_len << " (" << (j - i)
                << " cells): K+V " << fmt(kv_bytes / kGiB, "%.1f") << " GiB > budget "
                << fmt(budget_bytes / kGiB, "%.1f") << " GiB\n";
    } else {
      const Device dev = run.gpu ? Device::cuda(0) : Device::cpu();
      const size_t n = static_cast<size_t>(rows_kv * first.heads_kv * first.head_dim);
      Buffer k, v, k64, v64;
      Status s = k.allocate(n * dtype_size(first.dtype), dev);
      if (s.ok()) s = v.allocate(n * dtype_size(first.dtype), dev);
      if (s.ok()) s = fill_normal(&k, first.dtype, n, first.kv_seed(), run.gpu);
      if (s.ok()) s = fill_normal(&v, first.dtype, n, first.kv_seed() + 1, run.gpu);
      if (s.ok() && !run.gpu) s = host_convert(k, first.dtype, n, DType::kFloat64, &k64);
      if (s.ok() && !run.gpu) s = host_convert(v, first.dtype, n, DType::kFloat64, &v64);
      if (s.ok()) s = sync_status(run.gpu);
      for (size_t c = i; c < j; ++c) {
        CellTensors t;
        Status cs = s.ok() ? build_cell(grid[c], k, v, &k64, &v64, run.gpu, o.num_splits, &t) : s;
        if (!cs.ok()) {
          for (Backend b : backends) {
            bench::ProofRow row = base_row(run, grid[c], backend_name(b), nullptr);
            row.status = "allocation failed: " + cs.to_string();
            row.metrics.check = "not_run: allocation failed";
            row.proof_class = "planner";
            bench::compute_counts_for_status(&row);
            rows.push_back(row);
          }
          continue;
        }
        std::optional<Reference> ref;
        auto reference = [&]() -> const Reference& {
          if (!ref) ref = run_reference(run, &t);
          return *ref;
        };
        for (Backend b : backends) rows.push_back(measure(run, grid[c], &t, reference, b));
      }
    }
    if (!bench::append_proof_rows(o.out, rows, false, &why)) {
      std::cerr << "flashlane bench: " << why << std::endl;
      return kExitFailed;
    }
    for (const auto& r : rows) {
      print_row(r);
      ++written;
      counting += r.counts_for_status ? 1 : 0;
      if (r.metrics.check == "fail") ++failed;
      if (r.proof_class == "planner" && r.status.rfind("skipped", 0) != 0) ++refused;
      if (r.metrics.check.rfind("not_run", 0) == 0 && r.proof_class != "planner") ++not_checked;
    }
    done += j - i;
    i = j;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "\n" << written << " rows written to " << o.out << "; " << counting << " count for status; "
            << refused << " refused; " << not_checked << " ran unchecked (reference did not run); " << skipped
            << " cells skipped (memory budget); " << fmt(elapsed, "%.1f") << " s\n";
  if (done < grid.size())
    std::cout << "SUBSET: " << done << " of " << grid.size() << " cells ran (--budget-s " << o.budget_s
              << " reached; rerun with --budget-s 0 for the whole grid)\n";
  if (!run.gpu)
    std::cout << "GPU LANE DID NOT RUN: " << run.gpu_reason
              << " -- nothing here counts for status; run on a GPU machine for proof.\n";
  if (failed) std::cout << failed << " rows FAILED the check\n";
  std::cout.flush();
  return failed ? kExitFailed : kExitOk;
}

}  // namespace flashlane::cli
