// bench/device_fill.h: seeded random fills of large device buffers, for benchmark inputs too big
// to generate on the host (a decode cell's KV cache reaches tens of GiB).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "flashlane/status.h"
#include "flashlane/tensor.h"

namespace flashlane::bench {

/// Fills `count` elements of `dtype` (bfloat16, float16 or float32) at device pointer `data` with
/// normal(0, 1) values derived from (seed, element index) by a counter-based hash: every element
/// differs, the same seed gives the same values on every device and launch configuration.
/// Asynchronous on `stream`; launch errors come back as kCudaError.
Status fill_normal_device(void* data, DType dtype, size_t count, uint64_t seed, cudaStream_t stream);

/// Evicts the L2 without dirtying it: reads every byte of a device buffer larger than the L2
/// (16-byte words, cache-global loads) and writes nothing. A memset flush would leave the L2
/// full of dirty lines whose write-back then runs inside the next timed kernel and costs it
/// bandwidth; clean lines are evicted for free. Asynchronous on `stream`.
Status flush_l2_by_reading(const void* data, size_t bytes, cudaStream_t stream);

/// The value fill_normal_device writes at `index` for `seed`, as float (before rounding to the
/// dtype): lets host code and tests check a fill.
float normal_at(uint64_t seed, uint64_t index);

}  // namespace flashlane::bench
