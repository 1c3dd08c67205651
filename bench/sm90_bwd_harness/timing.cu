// Timing of the sm90 backward through the public API (flashlane::backward, sm90, strict):
// random bf16 inputs, O and LSE from the sm90 forward, CUDA events around `reps` backward calls
// after one warm-up call, the median of FLASHLANE_TIMING_REPS calls (default 3) reported. FLOPs:
// 2.5 x the forward's 4 * pairs * head_dim.
//   timing [batch seqlen heads head_dim causal deterministic]...  (default: four fixed cells)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "flashlane/flashlane.h"

namespace fl = flashlane;

#define CUDA_OK(x)                                                                   \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "CUDA error %s at line %d\n", cudaGetErrorString(e_), __LINE__); \
      std::exit(2);                                                                  \
    }                                                                                \
  } while (0)

namespace {

void* random_bf16(int64_t n, uint64_t seed) {
  std::vector<uint16_t> h(static_cast<size_t>(n));
  std::mt19937_64 rng(seed);
  for (auto& x : h) {
    const float f = float(int64_t(rng() % 2001) - 1000) / 1000.f;
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    x = uint16_t(bits >> 16);
  }
  void* d = nullptr;
  CUDA_OK(cudaMalloc(&d, size_t(n) * 2));
  CUDA_OK(cudaMemcpy(d, h.data(), size_t(n) * 2, cudaMemcpyHostToDevice));
  return d;
}

void run_cell(int b, int s, int h, int d, bool causal, bool det, int reps) {
  const int64_t n = int64_t(b) * s * h * d;
  const fl::Device dev = fl::Device::cuda(0);
  void* q = random_bf16(n, 1);
  void* k = random_bf16(n, 2);
  void* v = random_bf16(n, 3);
  void* dout = random_bf16(n, 4);
  void *o, *dq, *dk, *dv, *lse;
  for (void** p : {&o, &dq, &dk, &dv}) CUDA_OK(cudaMalloc(p, size_t(n) * 2));
  CUDA_OK(cudaMalloc(&lse, size_t(b) * h * s * 4));
  fl::AttentionProblem pb;
  auto view = [&](void* p) {
    return fl::TensorView::contiguous(p, fl::DType::kBFloat16, {b, s, h, d}, dev);
  };
  pb.q = view(q);
  pb.k = view(k);
  pb.v = view(v);
  pb.o = view(o);
  pb.dout = view(dout);
  pb.dq = view(dq);
  pb.dk = view(dk);
  pb.dv = view(dv);
  pb.lse = fl::TensorView::contiguous(lse, fl::DType::kFloat32, {b, h, s}, dev);
  pb.mask = causal ? fl::MaskType::kCausal : fl::MaskType::kNoMask;
  pb.deterministic = det;
  fl::Request req;
  req.backend = fl::Backend::kSm90;
  req.strict = true;
  fl::Status st = fl::forward(pb, req);
  if (!st.ok()) {
    std::printf("forward failed: %s\n", st.to_string().c_str());
    std::exit(3);
  }
  size_t free0 = 0, total = 0;
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemGetInfo(&free0, &total));
  std::vector<float> ms;
  cudaEvent_t e0, e1;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  constexpr int kWarmup = 1;
  for (int r = 0; r < reps + kWarmup; ++r) {
    CUDA_OK(cudaEventRecord(e0));
    st = fl::backward(pb, req);
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    if (!st.ok()) {
      std::printf("backward failed: %s\n", st.to_string().c_str());
      std::exit(3);
    }
    float t = 0;
    CUDA_OK(cudaEventElapsedTime(&t, e0, e1));
    if (r >= kWarmup) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  const double pairs = causal ? double(s) * (s + 1) / 2 : double(s) * s;
  const double flops = 2.5 * 4.0 * pairs * d * b * h;
  std::printf("bwd b=%d s=%d h=%d d=%d causal=%d det=%d: %.3f ms  %.1f TFLOP/s  variant=%s\n", b,
              s, h, d, int(causal), int(det), med, flops / (med * 1e-3) / 1e12,
              fl::last_receipt().variant.c_str());
  for (void* p : {q, k, v, dout, o, dq, dk, dv, lse}) cudaFree(p);
}

}  // namespace

int main(int argc, char** argv) {
  const char* reps_env = std::getenv("FLASHLANE_TIMING_REPS");
  const int reps = reps_env ? std::max(1, std::atoi(reps_env)) : 3;
  if (argc > 1 && (argc - 1) % 6 == 0) {
    for (int i = 1; i < argc; i += 6) {
      run_cell(std::atoi(argv[i]), std::atoi(argv[i + 1]), std::atoi(argv[i + 2]),
               std::atoi(argv[i + 3]), std::atoi(argv[i + 4]) != 0, std::atoi(argv[i + 5]) != 0,
               reps);
    }
    return 0;
  }
  run_cell(2, 8192, 16, 128, false, false, 3);
  run_cell(1, 16384, 16, 128, false, false, 3);
  run_cell(2, 8192, 16, 128, false, true, 3);
  run_cell(2, 8192, 16, 128, true, false, 3);
  return 0;
}
