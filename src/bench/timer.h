// bench/timer.h: GPU timing with CUDA events (BENCHMARKS.md "How to time"): warm-up calls first,
// then one event pair per repetition around the timed region, every call's Status and every
// CUDA error checked, the median reported.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <vector>

#include "flashlane/status.h"

namespace flashlane::bench {

/// Median of `values` (mean of the two middle values for an even count); NaN when empty.
double median(std::vector<double> values);

/// A pair of CUDA events on one stream.
class GpuTimer {
 public:
  GpuTimer() = default;
  ~GpuTimer();
  GpuTimer(const GpuTimer&) = delete;
  GpuTimer& operator=(const GpuTimer&) = delete;
  Status init();
  Status start(cudaStream_t stream);
  /// Records the stop event, waits for it and returns the elapsed milliseconds.
  Status stop(cudaStream_t stream, double* ms);

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

/// Calls `region` `warmup` times untimed, then `reps` times, each timed with CUDA events on
/// `stream`; per-repetition milliseconds go to *ms. Stops at the first failing call.
Status time_region(const std::function<Status()>& region, int warmup, int reps,
                   cudaStream_t stream, std::vector<double>* ms);

/// Wall-clock timing for host (reference_cpu) regions, same contract.
Status time_region_host(const std::function<Status()>& region, int warmup, int reps,
                        std::vector<double>* ms);

}  // namespace flashlane::bench
