// kernel_timing.cpp: timing-only pass over the canonical grid through the public API, for A/B
// comparisons of two builds of the library in one device call (the same source linked against
// each build's libflashlane.a; bench/ab/README.md). Correctness is the business of the gpu tests
// and of `flashlane bench`, which validate every row; this program only times, so that both
// builds can be measured side by side, alternately, within one call.
//
//   flashlane_kernel_timing --label NAME [--pass N] [--reps R] [--dirs fwd,bwd] [--hdims 64,128,256]
//
// Grid: BENCHMARKS.md's canonical cells (bf16, 16384 tokens, model dim 2048, seqlen 512..16k,
// causal or not). Inputs: uniform random bf16 in [-1, 1), generated once on the host with a fixed
// seed and shared by every cell (every cell has the same element counts). Per cell and
// direction: 3 warm-up calls, then R timed calls between CUDA events, median reported.
// Forward: o, lse from q, k, v. Backward: dq, dk, dv from the o, lse of one forward.
// Output: one JSON line per (cell, direction) on stdout:
//   {"label", "pass", "dir", "hdim", "causal", "seqlen", "batch", "heads", "median_ms",
//    "tflops", "variant"}; TFLOP/s as BENCHMARKS.md counts them (backward = 2.5 x forward).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "flashlane/flashlane.h"
#include "timing_common.h"

namespace fl = flashlane;

using flashlane::ab::check;
using flashlane::ab::die;
using flashlane::ab::fill_bf16;
using flashlane::ab::ints;

int main(int argc, char** argv) {
  flashlane::ab::g_program = "kernel_timing";
  std::string label = "build", dirs = "fwd,bwd", hdims = "64,128,256";
  int pass = 0, reps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value after " + a);
      return argv[++i];
    };
    if (a == "--label") label = next();
    else if (a == "--pass") pass = std::stoi(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--dirs") dirs = next();
    else if (a == "--hdims") hdims = next();
    else die("unknown argument " + a);
  }
  const bool do_fwd = dirs.find("fwd") != std::string::npos;
  const bool do_bwd = dirs.find("bwd") != std::string::npos;

  constexpr int64_t kTokens = 16384, kModelDim = 2048;
  const size_t elems = size_t(kTokens * kModelDim);
  std::vector<uint16_t> host(elems);
  void *q, *k, *v, *o, *dout, *dq, *dk, *dv, *lse;
  for (void** p : {&q, &k, &v, &o, &dout, &dq, &dk, &dv}) check(cudaMalloc(p, elems * 2), "cudaMalloc");
  check(cudaMalloc(&lse, size_t(kTokens) * (kModelDim / 64) * sizeof(float)), "cudaMalloc lse");
  uint64_t seed = 1;
  for (void* p : {q, k, v, dout}) {
    fill_bf16(host, seed++);
    check(cudaMemcpy(p, host.data(), elems * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  const fl::Request strict{fl::Backend::kSm90, true};

  for (int hd : ints(hdims)) {
    for (int causal = 0; causal <= 1; ++causal) {
      for (int64_t seqlen : {512, 1024, 2048, 4096, 8192, 16384}) {
        const int64_t batch = kTokens / seqlen, heads = kModelDim / hd;
        const auto bf = fl::DType::kBFloat16;
        const fl::Device dev = fl::Device::cuda(0);
        fl::AttentionProblem p = fl::ab::canonical_cell(q, k, v, o, lse, hd, seqlen, causal);
        const double fwd_flops = fl::ab::forward_flops(p);
        for (int d = 0; d < 2; ++d) {
          const bool bwd = d == 1;
          if ((bwd && !do_bwd) || (!bwd && !do_fwd)) continue;
          if (bwd) {
            check(fl::forward(p, strict, stream), "forward for the backward's o/lse");
            p.dout = fl::TensorView::contiguous(dout, bf, {batch, seqlen, heads, hd}, dev);
            p.dq = fl::TensorView::contiguous(dq, bf, {batch, seqlen, heads, hd}, dev);
            p.dk = fl::TensorView::contiguous(dk, bf, {batch, seqlen, heads, hd}, dev);
            p.dv = fl::TensorView::contiguous(dv, bf, {batch, seqlen, heads, hd}, dev);
          }
          auto call = [&] {
            check(bwd ? fl::backward(p, strict, stream) : fl::forward(p, strict, stream),
                  bwd ? "backward" : "forward");
          };
          for (int w = 0; w < 3; ++w) call();
          std::vector<float> ms;
          for (int r = 0; r < reps; ++r) {
            check(cudaEventRecord(start, stream), "record");
            call();
            check(cudaEventRecord(stop, stream), "record");
            check(cudaEventSynchronize(stop), "sync");
            float t = 0.f;
            check(cudaEventElapsedTime(&t, start, stop), "elapsed");
            ms.push_back(t);
          }
          check(cudaGetLastError(), "after the timed calls");
          std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
          const double median = ms[ms.size() / 2];
          const double flops = fwd_flops * (bwd ? 2.5 : 1.0);
          std::printf(
              "{\"label\":\"%s\",\"pass\":%d,\"dir\":\"%s\",\"hdim\":%d,\"causal\":%d,"
              "\"seqlen\":%lld,\"batch\":%lld,\"heads\":%lld,\"median_ms\":%.5f,"
              "\"tflops\":%.2f,\"variant\":\"%s\"}\n",
              label.c_str(), pass, bwd ? "bwd" : "fwd", hd, causal, (long long)seqlen,
              (long long)batch, (long long)heads, median, flops / (median * 1e-3) / 1e12,
              fl::last_receipt().variant.c_str());
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}
