// tools/cmd_run.cpp: `flashlane run`: one problem from flags, random normal(0, 1) inputs from a
// seeded generator, poisoned outputs, the requested backend through flashlane::forward/backward
// (CUDA tensors for CUDA backends when a device exists, host tensors otherwise), then
// FlashAttention's check for O, LSE (and dQ, dK, dV with --bwd; dsink too with --learnable-sink):
//   max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5
// ref64: reference_cpu on float64 upcasts of the same inputs; ref_lowp: reference_cpu on the
// low-precision inputs writing low-precision outputs, emulating a fused kernel's roundings
// (ReferenceNumerics::kLowPrecision: P, and in the backward dS, rounded to the input dtype
// before the products that read them). Above 2e8 score pairs both references run on
// reference_cuda when a GPU is present (it accumulates float64 on float64 inputs; printed).
// Prints the per-call receipt(s) and the error figures. Exit: 0 pass, 1 failed check or
// execution error, 2 validation error or strict refusal (Status with code and tag printed).
#include <cuda_runtime_api.h>

#include <iostream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench/harness.h"
#include "cli_common.h"
#include "cmd_run_decode.h"
#include "dispatch/backend_registry.h"
#include "flashlane/flashlane.h"

namespace flashlane::cli {

namespace {

struct RunOptions {
  int64_t batch = 1, seqlen_q = 128, seqlen_k = 0, heads_q = 4, heads_kv = 0, head_dim = 64,
          head_dim_v = 0;
  std::string dtype = "bf16", mask = "no_mask", backend = "auto";
  int64_t window_left = -1, window_right = -1;
  double softcap = 0, softmax_scale = 0;
  std::string varlen_lengths, seqlens_q, seqlens_k, seqused_k;
  std::string learnable_sink;  // a number or "random" (when given)
  bool has_learnable_sink = false;
  bool strict = false, bwd = false, json = false;
  uint64_t seed = 0;
};

/// Above this many score pairs the references run on reference_cuda when a GPU is present
/// (reference_cpu does roughly 1e7-1e8 pairs/s depending on the cores).
constexpr double kGpuReferencePairs = 2e8;

/// "auto, sm90, sm100, cudnn, reference_cuda, reference_cpu": the registered backends.
std::string backend_names() {
  std::string names = "auto";
  for (Backend b : registered_backends()) names += std::string(", ") + backend_name(b);
  return names;
}

nlohmann::json status_json(const Status& s) {
  return {{"ok", s.ok()},
          {"code", static_cast<int>(s.code())},
          {"code_name", error_code_name(s.code())},
          {"tag", s.reason_tag()},
          {"message", s.to_string()}};
}

void print_figures(const bench::CheckResult& c, const char* label) {
  std::cout << label << " check (ref64: " << c.ref64_method << "; ref_lowp: " << c.ref_lowp_method
            << ")\n";
  std::printf("  %-4s %14s %16s %12s %6s %s\n", "", "max_abs_diff", "ref_max_abs_diff",
              "tolerance", "nan", "result");
  for (const auto& f : c.figures)
    std::printf("  %-4s %14.4g %16.4g %12.4g %6lld %s\n", f.tensor.c_str(), f.max_abs_diff,
                f.ref_max_abs_diff, f.tolerance, static_cast<long long>(f.nan_count),
                f.pass ? "pass" : "FAIL");
  std::fflush(stdout);
}

int run_problem(const RunOptions& o) {
  bench::ProblemSpec spec;
  nlohmann::json out;
  auto usage_error = [&](const std::string& m) {
    if (o.json) {
      std::cout << nlohmann::json{{"error", m}, {"exit_code", kExitRefused}}.dump(2) << std::endl;
    } else {
      std::cerr << "flashlane run: " << m << std::endl;
    }
    return kExitRefused;
  };
  spec.batch = o.batch;
  spec.seqlen_q = o.seqlen_q;
  spec.seqlen_k = o.seqlen_k > 0 ? o.seqlen_k : o.seqlen_q;
  spec.heads_q = o.heads_q;
  spec.heads_kv = o.heads_kv > 0 ? o.heads_kv : o.heads_q;
  spec.head_dim = o.head_dim;
  spec.head_dim_v = o.head_dim_v;
  if (!parse_dtype(o.dtype, &spec.dtype) || spec.dtype == DType::kInt32)
    return usage_error("unknown --dtype '" + o.dtype + "' (bf16, fp16, fp32, fp64)");
  if (!parse_mask_type(o.mask, &spec.mask)) {
    if (o.mask == "no_mask") spec.mask = MaskType::kNoMask;
    else if (o.mask == "causal") spec.mask = MaskType::kCausal;
    else if (o.mask == "causal_bottom_right") spec.mask = MaskType::kCausalBottomRight;
    else return usage_error("unknown --mask '" + o.mask + "' (no_mask, causal, causal_bottom_right)");
  }
  spec.window_left = o.window_left;
  spec.window_right = o.window_right;
  spec.softcap = o.softcap;
  if (o.softmax_scale != 0) spec.softmax_scale = o.softmax_scale;
  spec.seed = o.seed;
  if (!o.varlen_lengths.empty()) {
    if (!bench::parse_varlen_lengths(o.varlen_lengths, &spec.seqlens_q, &spec.seqlens_k))
      return usage_error("--varlen-lengths must look like \"q1,q2;k1,k2\" with as many k as q");
  } else if (!o.seqlens_q.empty() || !o.seqlens_k.empty()) {
    if (!bench::parse_int_list(o.seqlens_q, &spec.seqlens_q) ||
        !bench::parse_int_list(o.seqlens_k.empty() ? o.seqlens_q : o.seqlens_k, &spec.seqlens_k))
      return usage_error("--seqlens-q / --seqlens-k must be comma-separated integers");
  }
  if (!o.seqused_k.empty() && !bench::parse_int_list(o.seqused_k, &spec.seqused_k))
    return usage_error("--seqused-k must be comma-separated integers");
  if (o.has_learnable_sink) {
    std::string bad;
    if (!parse_learnable_sink(o.learnable_sink, spec.heads_q, spec.seed, &spec.learnable_sink, &bad))
      return usage_error(bad);
  }
  std::string why;
  if (!spec.check(&why)) return usage_error(why);
  Backend backend;
  if (!parse_backend(o.backend, &backend))
    return usage_error("unknown --backend '" + o.backend + "' (" + backend_names() + ")");

  // A backend of host tensors (reference_cpu) gets host tensors; auto and the CUDA backends get
  // CUDA tensors when a device exists.
  const detail::BackendDef* def = detail::find_backend(backend);
  const bool host_backend = def != nullptr && def->tensors == DeviceKind::kCPU;
  std::string no_gpu;
  const bool cuda = bench::cuda_present(&no_gpu);
  const bool use_gpu = !host_backend && cuda;
  const Device device = use_gpu ? Device::cuda(0) : Device::cpu();
  std::vector<std::string> notes;
  if (!host_backend && !cuda)
    notes.push_back("no CUDA device (" + no_gpu + "): tensors are on the host");

  const Request request{backend, o.strict};
  const bench::HostInputs inputs = bench::make_inputs(spec, o.bwd);
  bench::ProblemTensors t;
  Status s = bench::build_tensors(spec, inputs, spec.dtype, device, o.bwd, &t);
  out["problem"] = bench::spec_to_json(spec);
  out["problem"]["description"] = spec.describe();
  out["request"] = {{"backend", backend_name(backend)}, {"strict", o.strict}};
  out["tensors_on"] = use_gpu ? "cuda:0" : "cpu";
  if (!s.ok()) {
    out["status"] = status_json(s);
    out["exit_code"] = kExitFailed;
    if (o.json) std::cout << out.dump(2) << std::endl;
    else std::cerr << "flashlane run: allocating the problem failed: " << s.to_string() << std::endl;
    return kExitFailed;
  }

  auto finish_call = [&](Status st) {
    if (st.ok() && use_gpu) {
      cudaError_t e = cudaDeviceSynchronize();
      if (e != cudaSuccess) st = Status(ErrorCode::kCudaError, cudaGetErrorString(e));
    }
    return st;
  };
  auto refused = [&](const Status& st, const Receipt& r, const char* what) {
    const int code = exit_code_for(st);
    out["status"] = status_json(st);
    out["receipts"][what] = nlohmann::json::parse(receipt_to_json(r));
    out["notes"] = notes;
    out["exit_code"] = code;
    if (o.json) {
      std::cout << out.dump(2) << std::endl;
    } else {
      std::cout << "problem: " << spec.describe() << "\n";
      for (const auto& n : notes) std::cout << "note: " << n << "\n";
      std::cout << (code == kExitRefused ? "refused" : "failed") << " (" << what
                << "): " << st.to_string() << "\n"
                << "  code: " << static_cast<int>(st.code()) << " " << error_code_name(st.code())
                << "\n  tag: " << (st.reason_tag().empty() ? "(none)" : st.reason_tag()) << "\n"
                << "receipt: " << receipt_to_json(r) << std::endl;
    }
    return code;
  };

  // Forward.
  s = finish_call(forward(t.problem, request, nullptr));
  const Receipt fwd_receipt = last_receipt();
  if (!s.ok()) return refused(s, fwd_receipt, "fwd");
  bench::Outputs got;
  if (!(s = bench::fetch_outputs(t, Direction::kForward, &got)).ok())
    return refused(s, fwd_receipt, "fwd");
  out["receipts"]["fwd"] = nlohmann::json::parse(receipt_to_json(fwd_receipt));
  Receipt bwd_receipt;
  if (o.bwd) {
    s = finish_call(backward(t.problem, request, nullptr));
    bwd_receipt = last_receipt();
    if (!s.ok()) return refused(s, bwd_receipt, "bwd");
    if (!(s = bench::fetch_outputs(t, Direction::kBackward, &got)).ok())
      return refused(s, bwd_receipt, "bwd");
    out["receipts"]["bwd"] = nlohmann::json::parse(receipt_to_json(bwd_receipt));
  }

  // References on the same inputs.
  const bool ref_gpu = cuda && spec.score_pairs() > kGpuReferencePairs;
  if (ref_gpu)
    notes.push_back("more than 2e8 score pairs: references run on reference_cuda (ref64: float64 "
                    "inputs, float64 accumulation; ref_lowp: fp32 accumulation, backward P and dS "
                    "rounded to the input dtype)");
  else if (spec.score_pairs() > kGpuReferencePairs)
    notes.push_back("more than 2e8 score pairs and no GPU: the CPU references will be slow");
  bench::Outputs ref64, ref_lowp;
  const std::string ref_name = ref_gpu ? "reference_cuda" : "reference_cpu";
  s = bench::reference_outputs(spec, inputs, DType::kFloat64, o.bwd, ref_gpu, &ref64);
  if (s.ok()) s = bench::reference_outputs(spec, inputs, spec.dtype, o.bwd, ref_gpu, &ref_lowp);
  if (!s.ok()) {
    out["status"] = status_json(s);
    out["notes"] = notes;
    out["exit_code"] = kExitFailed;
    if (o.json) std::cout << out.dump(2) << std::endl;
    else std::cout << "problem: " << spec.describe() << "\nreceipt fwd: "
                   << receipt_to_json(fwd_receipt) << "\nreference failed, nothing checked: "
                   << s.to_string() << "\nresult: FAIL" << std::endl;
    return kExitFailed;
  }
  std::vector<std::pair<const char*, bench::CheckResult>> checks;
  checks.emplace_back("fwd", bench::check_outputs(Direction::kForward, got, ref64, ref_lowp));
  if (o.bwd) checks.emplace_back("bwd", bench::check_outputs(Direction::kBackward, got, ref64, ref_lowp));
  bool pass = true;
  // ref_lowp's numerics (bench::reference_outputs: ReferenceNumerics::kLowPrecision on 16-bit).
  const bool lowp16 = spec.dtype == DType::kBFloat16 || spec.dtype == DType::kFloat16;
  for (auto& [name, c] : checks) {
    const bool bwd = std::string(name) == "bwd";
    const char* how;
    if (ref_gpu) how = !lowp16 ? " (fp32 accumulation)"
                       : bwd ? " (fp32 accumulation, P and dS rounded to the input dtype)"
                             : " (fp32 accumulation, P rounded to the input dtype)";
    else if (!lowp16) how = " (float64 accumulation)";
    else if (bwd) how = " (fp32 scores, P, dP and dS; P and dS rounded to the input dtype)";
    else how = " (fp32 scores/softmax, P rounded to the input dtype)";
    c.ref64_method = ref_name + " on float64 upcasts of the inputs";
    c.ref_lowp_method = ref_name + " on the " + std::string(dtype_name(spec.dtype)) + " inputs" + how;
    pass = pass && c.pass;
    out["check"][name] = bench::check_to_json(c);
  }
  const int code = pass ? kExitOk : kExitFailed;
  out["status"] = status_json(Status::Ok());
  out["pass"] = pass;
  out["notes"] = notes;
  out["exit_code"] = code;
  if (o.json) {
    std::cout << out.dump(2) << std::endl;
    return code;
  }
  std::cout << "problem: " << spec.describe() << "  (seed " << spec.seed << ", tensors on "
            << (use_gpu ? "cuda:0" : "cpu") << ")\n";
  for (const auto& n : notes) std::cout << "note: " << n << "\n";
  std::cout << "receipt fwd: " << receipt_to_json(fwd_receipt) << "\n";
  if (o.bwd) std::cout << "receipt bwd: " << receipt_to_json(bwd_receipt) << "\n";
  std::cout.flush();
  for (const auto& [name, c] : checks) print_figures(c, name);
  std::cout << "result: " << (pass ? "PASS" : "FAIL") << std::endl;
  return code;
}

}  // namespace

void add_run_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* sub = app.add_subcommand(
      "run", "Run one problem on random inputs and check it against the float64 reference");
  sub->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // last flag wins
  sub->add_option("--batch", o->batch, "Batch size (bshd)")->capture_default_str();
  CLI::Option* seqlen_q_opt =
      sub->add_option("--seqlen-q", o->seqlen_q, "Query length (bshd; --decode: default 1)")
          ->capture_default_str();
  sub->add_option("--seqlen-k", o->seqlen_k, "Key length (bshd; default: seqlen-q)");
  sub->add_option("--heads-q", o->heads_q, "Query heads")->capture_default_str();
  sub->add_option("--heads-kv", o->heads_kv, "Key/value heads (default: heads-q)");
  sub->add_option("--head-dim", o->head_dim, "Head dim of q and k")->capture_default_str();
  sub->add_option("--head-dim-v", o->head_dim_v, "Head dim of v and o (default: head-dim)");
  sub->add_option("--dtype", o->dtype, "bf16, fp16, fp32 or fp64")->capture_default_str();
  sub->add_option("--mask", o->mask, "no_mask, causal or causal_bottom_right")->capture_default_str();
  sub->add_option("--window-left", o->window_left, "Sliding window, left (-1 unbounded)")->capture_default_str();
  sub->add_option("--window-right", o->window_right, "Sliding window, right (-1 unbounded)")->capture_default_str();
  sub->add_option("--softcap", o->softcap, "Softcap (0 disables)")->capture_default_str();
  sub->add_option("--softmax-scale", o->softmax_scale, "Softmax scale (default 1/sqrt(head_dim))");
  sub->add_option("--varlen-lengths", o->varlen_lengths, "Varlen lengths \"q1,q2;k1,k2\"");
  sub->add_option("--seqlens-q", o->seqlens_q, "Varlen query lengths \"q1,q2\"");
  sub->add_option("--seqlens-k", o->seqlens_k, "Varlen key lengths \"k1,k2\" (default: seqlens-q)");
  sub->add_option("--seqused-k", o->seqused_k, "Used keys per sequence \"u1,u2\"");
  CLI::Option* sink_opt = sub->add_option("--learnable-sink", o->learnable_sink,
                  "Attention sinks: one logit for every query head (e.g. 0.5), or 'random' "
                  "(seeded, uniform in [-1, 3)); the backward also checks dlearnable_sink");
  sub->add_option("--backend", o->backend, backend_names())->capture_default_str();
  sub->add_flag("--strict", o->strict, "Fail instead of falling back (exit 2 with the tag)");
  sub->add_option("--seed", o->seed, "Seed of the random inputs")->capture_default_str();
  sub->add_flag("--bwd", o->bwd, "Also run and check the backward pass");
  sub->add_flag("--json", o->json, "Print one JSON object");
  // KV-cache calls (flashlane/kvcache.h).
  auto dec = std::make_shared<DecodeOptions>();
  auto decode = std::make_shared<bool>(false);
  sub->add_flag("--decode", *decode,
                "Run one KV-cache call (flash_attn_with_kvcache) instead (host tensors, or --device cuda)");
  sub->add_option("--seqlen-cache", dec->seqlen_cache,
                  "--decode: keys one sequence's cache holds (dense seqlen_cache; paged: rounded "
                  "up to whole pages)")
      ->capture_default_str();
  sub->add_option("--page-size", dec->page_size, "--decode: paged cache of this page size (0: dense)")
      ->capture_default_str();
  sub->add_option("--cache-seqlens", dec->cache_seqlens,
                  "--decode: keys already cached per sequence \"a,b\" (default: seqlen-cache / 2)");
  sub->add_option("--seqlen-new", dec->seqlen_new, "--decode: new keys appended per sequence")
      ->capture_default_str();
  sub->add_option("--rotary-dim", dec->rotary_dim, "--decode: rotary on q and new keys (0: none)")
      ->capture_default_str();
  sub->add_flag("--rotary-neox", dec->rotary_neox,
                "--decode: GPT-NeoX rotary pairs (default: interleaved GPT-J pairs)");
  sub->add_option("--num-splits", dec->num_splits, "--decode: split-KV hint (0: heuristic)")
      ->capture_default_str();
  sub->add_option("--device", dec->device,
                  "--decode: cpu (host tensors) or cuda (the call on CUDA device 0 tensors)")
      ->capture_default_str();
  sub->callback([o, dec, decode, seqlen_q_opt, sink_opt, exit_code] {
    o->has_learnable_sink = sink_opt->count() > 0;
    if (!*decode) {
      *exit_code = run_problem(*o);
      return;
    }
    DecodeOptions d = *dec;
    d.batch = o->batch;
    d.seqlen_q = seqlen_q_opt->count() > 0 ? o->seqlen_q : 1;
    d.heads_q = o->heads_q;
    d.heads_kv = o->heads_kv;
    d.head_dim = o->head_dim;
    d.head_dim_v = o->head_dim_v;
    d.dtype = o->dtype;
    d.mask = o->mask;
    d.window_left = o->window_left;
    d.window_right = o->window_right;
    d.softcap = o->softcap;
    d.learnable_sink = o->learnable_sink;
    d.has_learnable_sink = o->has_learnable_sink;
    d.backend = o->backend;
    d.strict = o->strict;
    d.json = o->json;
    d.seed = o->seed;
    *exit_code = run_decode(d);
  });
}

}  // namespace flashlane::cli
