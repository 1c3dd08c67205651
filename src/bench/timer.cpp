// bench/timer.cpp: CUDA-event timing and medians (timer.h).
#include "bench/timer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

namespace flashlane::bench {

namespace {
Status cuda_status(cudaError_t e, const char* what) {
  return Status(ErrorCode::kCudaError, std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

GpuTimer::~GpuTimer() {
  if (start_) cudaEventDestroy(start_);
  if (stop_) cudaEventDestroy(stop_);
}

Status GpuTimer::init() {
  cudaError_t e = cudaEventCreate(&start_);
  if (e != cudaSuccess) return cuda_status(e, "cudaEventCreate");
  e = cudaEventCreate(&stop_);
  if (e != cudaSuccess) return cuda_status(e, "cudaEventCreate");
  return Status::Ok();
}

Status GpuTimer::start(cudaStream_t stream) {
  cudaError_t e = cudaEventRecord(start_, stream);
  return e == cudaSuccess ? Status::Ok() : cuda_status(e, "cudaEventRecord");
}

Status GpuTimer::stop(cudaStream_t stream, double* ms) {
  cudaError_t e = cudaEventRecord(stop_, stream);
  if (e != cudaSuccess) return cuda_status(e, "cudaEventRecord");
  e = cudaEventSynchronize(stop_);
  if (e != cudaSuccess) return cuda_status(e, "cudaEventSynchronize");
  float elapsed = 0;
  e = cudaEventElapsedTime(&elapsed, start_, stop_);
  if (e != cudaSuccess) return cuda_status(e, "cudaEventElapsedTime");
  *ms = elapsed;
  return Status::Ok();
}

Status time_region(const std::function<Status()>& region, int warmup, int reps,
                   cudaStream_t stream, std::vector<double>* ms) {
  ms->clear();
  GpuTimer timer;
  Status s = timer.init();
  if (!s.ok()) return s;
  for (int i = 0; i < warmup; ++i) {
    if (!(s = region()).ok()) return s;
  }
  cudaError_t e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return cuda_status(e, "warm-up");
  for (int i = 0; i < reps; ++i) {
    if (!(s = timer.start(stream)).ok()) return s;
    if (!(s = region()).ok()) return s;
    double t = 0;
    if (!(s = timer.stop(stream, &t)).ok()) return s;
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_status(e, "timed region");
    ms->push_back(t);
  }
  return Status::Ok();
}

Status time_region_host(const std::function<Status()>& region, int warmup, int reps,
                        std::vector<double>* ms) {
  ms->clear();
  Status s;
  for (int i = 0; i < warmup; ++i) {
    if (!(s = region()).ok()) return s;
  }
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!(s = region()).ok()) return s;
    const auto t1 = std::chrono::steady_clock::now();
    ms->push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return Status::Ok();
}

}  // namespace flashlane::bench
