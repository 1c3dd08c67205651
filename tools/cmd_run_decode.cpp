// tools/cmd_run_decode.cpp: `flashlane run --decode`: one KV-cache call (flashlane/kvcache.h)
// from flags, on host (or --device cuda) tensors with seeded uniform inputs: a dense cache (or paged with
// --page-size, pages shuffled), --cache-seqlens keys already cached per sequence, optional
// --seqlen-new keys appended (with --rotary-dim, rotary on q and the new keys), attention sinks
// with --learnable-sink. The requested
// backend runs through flashlane::forward_kvcache (strict: exit 2 with the tag on refusal), then
// reference_cpu repeats the call on float64 copies of the same inputs and O / LSE are compared
// (pass: max|O - O64| <= 1e-5 for fp32/fp64 inputs, 2e-2 for 16-bit; LSE alike).
// --device cuda copies the inputs to CUDA device 0 and runs the call there (device metadata,
// check_metadata_values = false as a serving loop would call it); the outputs are copied back
// and checked the same way.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <limits>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/harness.h"
#include "cli_common.h"
#include "cmd_run_decode.h"
#include "core/numeric.h"
#include "flashlane/flashlane.h"

namespace flashlane::cli {
namespace {

struct Host {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
  Host(DType dt, std::vector<int64_t> s) : dtype(dt), shape(std::move(s)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    bytes.assign(static_cast<size_t>(n * dtype_size(dt)), 0);
  }
  int64_t numel() const { return static_cast<int64_t>(bytes.size()) / dtype_size(dtype); }
  double get(int64_t i) const { return numeric::load(bytes.data(), dtype, i); }
  void set(int64_t i, double v) { numeric::store(bytes.data(), dtype, i, v); }
  TensorView view() { return TensorView::contiguous(bytes.data(), dtype, shape, Device{}); }
  Host as(DType dt) const {
    Host h(dt, shape);
    for (int64_t i = 0; i < numel(); ++i) h.set(i, get(i));
    return h;
  }
};

nlohmann::json status_json(const Status& s) {
  return {{"ok", s.ok()}, {"code_name", error_code_name(s.code())}, {"tag", s.reason_tag()},
          {"message", s.to_string()}};
}

}  // namespace

int run_decode(const DecodeOptions& o) {
  auto usage_error = [&](const std::string& m) {
    std::cerr << "flashlane run --decode: " << m << std::endl;
    return kExitRefused;
  };
  DType dtype;
  if (!parse_dtype(o.dtype, &dtype) || dtype == DType::kInt32)
    return usage_error("unknown --dtype '" + o.dtype + "' (bf16, fp16, fp32, fp64)");
  MaskType mask;
  if (!parse_mask_type(o.mask, &mask)) return usage_error("unknown --mask '" + o.mask + "'");
  Backend backend;
  if (!parse_backend(o.backend, &backend)) return usage_error("unknown --backend '" + o.backend + "'");
  std::vector<int32_t> seqlens;
  if (o.cache_seqlens.empty()) {
    seqlens.assign(static_cast<size_t>(o.batch), static_cast<int32_t>(o.seqlen_cache / 2));
  } else if (!bench::parse_int_list(o.cache_seqlens, &seqlens) ||
             static_cast<int64_t>(seqlens.size()) != o.batch) {
    return usage_error("--cache-seqlens must be --batch comma-separated integers");
  }
  const int64_t b = o.batch, sq = o.seqlen_q, hq = o.heads_q;
  const int64_t hk = o.heads_kv > 0 ? o.heads_kv : o.heads_q;
  const int64_t d = o.head_dim, dv = o.head_dim_v > 0 ? o.head_dim_v : o.head_dim;
  const bool paged = o.page_size > 0;
  const int64_t max_pages = paged ? (o.seqlen_cache + o.page_size - 1) / o.page_size : 0;
  const int64_t num_pages = paged ? b * max_pages + 1 : 0;
  if (b < 1 || sq < 0 || hq < 1 || hk < 1 || d < 1 || dv < 1 || o.seqlen_cache < 0 ||
      o.seqlen_new < 0 || o.page_size < 0 || o.rotary_dim < 0 || o.rotary_dim % 2 != 0)
    return usage_error("sizes must be positive (rotary-dim even)");
  std::vector<float> sinks;
  if (o.has_learnable_sink) {
    std::string bad;
    if (!parse_learnable_sink(o.learnable_sink, hq, o.seed, &sinks, &bad)) return usage_error(bad);
  }

  std::mt19937_64 g(o.seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  auto fill = [&](Host& h) {
    for (int64_t i = 0; i < h.numel(); ++i) h.set(i, u(g));
  };
  Host q(dtype, {b, sq, hq, d});
  Host kc(dtype, paged ? std::vector<int64_t>{num_pages, o.page_size, hk, d}
                       : std::vector<int64_t>{b, o.seqlen_cache, hk, d});
  Host vc(dtype, paged ? std::vector<int64_t>{num_pages, o.page_size, hk, dv}
                       : std::vector<int64_t>{b, o.seqlen_cache, hk, dv});
  fill(q);
  fill(kc);
  fill(vc);
  Host lens(DType::kInt32, {b});
  std::memcpy(lens.bytes.data(), seqlens.data(), seqlens.size() * sizeof(int32_t));
  Host table(DType::kInt32, {b, max_pages});
  if (paged) {  // a shuffled page order; page num_pages - 1 belongs to nobody
    std::vector<int32_t> perm(static_cast<size_t>(b * max_pages));
    for (size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int32_t>(i);
    std::shuffle(perm.begin(), perm.end(), g);
    std::memcpy(table.bytes.data(), perm.data(), perm.size() * sizeof(int32_t));
  }
  Host kn(dtype, {b, o.seqlen_new, hk, d}), vn(dtype, {b, o.seqlen_new, hk, dv});
  fill(kn);
  fill(vn);
  const int64_t ro = o.seqlen_cache + std::max<int64_t>(sq, o.seqlen_new);
  Host cs(DType::kFloat32, {ro, std::max<int64_t>(o.rotary_dim / 2, 1)});
  Host sn(DType::kFloat32, {ro, std::max<int64_t>(o.rotary_dim / 2, 1)});
  for (int64_t t = 0; t < ro && o.rotary_dim > 0; ++t)
    for (int64_t c = 0; c < o.rotary_dim / 2; ++c) {
      const double a = t * std::pow(10000.0, -2.0 * c / o.rotary_dim);
      cs.set(t * (o.rotary_dim / 2) + c, std::cos(a));
      sn.set(t * (o.rotary_dim / 2) + c, std::sin(a));
    }

  Host sink(DType::kFloat32, {hq});
  for (size_t h = 0; h < sinks.size(); ++h) sink.set(static_cast<int64_t>(h), sinks[h]);

  auto make = [&](Host& q_, Host& kc_, Host& vc_, Host& o_, Host& lse_, Host& kn_, Host& vn_) {
    KvCacheProblem p;
    p.q = q_.view();
    p.k_cache = kc_.view();
    p.v_cache = vc_.view();
    p.o = o_.view();
    p.lse = lse_.view();
    p.cache_seqlens = lens.view();
    if (paged) p.page_table = table.view();
    if (o.seqlen_new > 0) {
      p.k_new = kn_.view();
      p.v_new = vn_.view();
    }
    if (o.rotary_dim > 0) {
      p.rotary_cos = cs.view();
      p.rotary_sin = sn.view();
      p.rotary_interleaved = !o.rotary_neox;
    }
    if (!sinks.empty()) p.learnable_sink = sink.view();
    p.mask = mask;
    p.window_left = o.window_left;
    p.window_right = o.window_right;
    p.softcap = o.softcap;
    p.num_splits = o.num_splits;
    return p;
  };
  Host out(dtype, {b, sq, hq, dv}), lse(DType::kFloat32, {b, hq, sq});
  // float64 copies for the reference, taken before the call appends to the cache.
  Host q64 = q.as(DType::kFloat64), kc64 = kc.as(DType::kFloat64), vc64 = vc.as(DType::kFloat64);
  Host kn64 = kn.as(DType::kFloat64), vn64 = vn.as(DType::kFloat64);
  Host out64(DType::kFloat64, {b, sq, hq, dv}), lse64(DType::kFloat32, {b, hq, sq});

  if (o.device != "cpu" && o.device != "cuda") return usage_error("unknown --device '" + o.device + "' (cpu, cuda)");
  const bool on_cuda = o.device == "cuda";
  KvCacheProblem problem = make(q, kc, vc, out, lse, kn, vn);
  // --device cuda: every tensor of the call copied to device 0, the same views over them.
  std::vector<bench::Buffer> device_buffers;
  Status st = Status::Ok();
  auto to_device = [&](TensorView* v, Host& h) {
    if (!st.ok() || v->data == nullptr) return;
    device_buffers.emplace_back();
    bench::Buffer& b = device_buffers.back();
    st = b.allocate(h.bytes.size(), Device::cuda(0));
    if (st.ok()) st = b.upload(h.bytes.data(), h.bytes.size());
    if (st.ok()) *v = TensorView::contiguous(b.data(), h.dtype, h.shape, Device::cuda(0));
  };
  if (on_cuda) {
    device_buffers.reserve(16);
    to_device(&problem.q, q);
    to_device(&problem.k_cache, kc);
    to_device(&problem.v_cache, vc);
    to_device(&problem.o, out);
    to_device(&problem.lse, lse);
    to_device(&problem.cache_seqlens, lens);
    if (paged) to_device(&problem.page_table, table);
    if (o.seqlen_new > 0) {
      to_device(&problem.k_new, kn);
      to_device(&problem.v_new, vn);
    }
    if (o.rotary_dim > 0) {
      to_device(&problem.rotary_cos, cs);
      to_device(&problem.rotary_sin, sn);
    }
    if (!sinks.empty()) to_device(&problem.learnable_sink, sink);
    problem.check_metadata_values = false;
    if (!st.ok()) {
      std::cerr << "flashlane run --decode: copying the inputs to the device failed: " << st.to_string() << std::endl;
      return kExitFailed;
    }
  }
  st = forward_kvcache(problem, Request{backend, o.strict});
  if (st.ok() && on_cuda) {
    cudaError_t e = cudaDeviceSynchronize();
    // The outputs (and the appended cache) back to the host tensors the check reads.
    auto back = [&](const TensorView& v, Host& h) {
      if (e == cudaSuccess && v.data) e = cudaMemcpy(h.bytes.data(), v.data, h.bytes.size(), cudaMemcpyDeviceToHost);
    };
    back(problem.o, out);
    back(problem.lse, lse);
    if (e != cudaSuccess) st = Status(ErrorCode::kCudaError, std::string("after the call: ") + cudaGetErrorString(e));
  }
  const Receipt receipt = last_receipt();
  nlohmann::json j = {{"mode", kvcache_runtime_mode(problem)},
                      {"receipt", nlohmann::json::parse(receipt_to_json(receipt))},
                      {"status", status_json(st)}};
  if (!st.ok()) {
    if (o.json) {
      j["exit_code"] = exit_code_for(st);
      std::cout << j.dump(2) << std::endl;
    } else {
      std::cout << "receipt decode: " << receipt_to_json(receipt) << "\n";
      std::cerr << "flashlane run --decode: " << st.to_string() << std::endl;
    }
    return exit_code_for(st);
  }
  const Status ref = forward_kvcache(make(q64, kc64, vc64, out64, lse64, kn64, vn64),
                                     Request{Backend::kReferenceCpu, true});
  if (!ref.ok()) {
    std::cerr << "flashlane run --decode: reference failed: " << ref.to_string() << std::endl;
    return kExitFailed;
  }
  double max_o = 0, max_lse = 0;
  int64_t nan = 0;
  for (int64_t i = 0; i < out.numel(); ++i) {
    if (std::isnan(out.get(i))) ++nan;
    max_o = std::max(max_o, std::fabs(out.get(i) - out64.get(i)));
  }
  for (int64_t i = 0; i < lse.numel(); ++i) {
    const double a = lse.get(i), r = lse64.get(i);
    if (std::isnan(a)) ++nan;
    if (std::isinf(a) && std::isinf(r) && a == r) continue;
    max_lse = std::max(max_lse, std::fabs(a - r));
  }
  const bool lowp = dtype == DType::kBFloat16 || dtype == DType::kFloat16;
  const double tol = lowp ? 2e-2 : 1e-5;
  const bool pass = nan == 0 && max_o <= tol && max_lse <= tol;
  j["check"] = {{"max_abs_diff_o", max_o}, {"max_abs_diff_lse", max_lse}, {"nan_count", nan},
                {"tolerance", tol}, {"pass", pass}};
  j["exit_code"] = pass ? kExitOk : kExitFailed;
  if (o.json) {
    std::cout << j.dump(2) << std::endl;
  } else {
    std::cout << "decode problem: batch " << b << ", seqlen_q " << sq << ", heads " << hq << "/"
              << hk << ", head_dim " << d << "/" << dv << ", "
              << (paged ? "paged cache, page_size " + std::to_string(o.page_size)
                        : std::string("dense cache"))
              << ", capacity " << o.seqlen_cache << ", seqlen_new " << o.seqlen_new
              << ", rotary_dim " << o.rotary_dim << (sinks.empty() ? "" : ", sinks") << " ("
              << (on_cuda ? "CUDA" : "host")
              << " tensors, seed " << o.seed << ")\n";
    std::cout << "receipt decode: " << receipt_to_json(receipt) << "\n";
    std::printf("check vs reference_cpu float64: max|dO| %.4g, max|dLSE| %.4g, nan %lld, "
                "tolerance %.3g\n",
                max_o, max_lse, static_cast<long long>(nan), tol);
    std::cout << "result: " << (pass ? "PASS" : "FAIL") << std::endl;
  }
  return pass ? kExitOk : kExitFailed;
}

}  // namespace flashlane::cli
