// pending_error.h: a CUDA error the caller left pending is the caller's, never flashlane's.
//
// The CUDA runtime keeps the last error of each host thread until cudaGetLastError() reads it;
// a non-sticky error of the caller's earlier work (a launch with a bad configuration, a failed
// allocation) would otherwise surface in flashlane's own error checks and be reported as
// flashlane's launch failure. The dispatcher therefore peeks (cudaPeekAtLastError, which does
// not clear) before anything of a CUDA-tensor call touches the runtime, and refuses the call
// with kCudaErrorPending, leaving the error pending for the caller.
#pragma once

#include <cuda_runtime_api.h>

#include "flashlane/status.h"

namespace flashlane::detail {

/// The Status for the result of cudaPeekAtLastError() at the start of a call: Ok for
/// cudaSuccess and for the errors that mean the CUDA runtime cannot be used at all (no driver,
/// no device: every runtime call returns them, and the applicability rules refuse the CUDA
/// backends with their *.no_cuda_device tags); kCudaErrorPending naming the error otherwise.
Status pending_cuda_error_status(cudaError_t peeked);

}  // namespace flashlane::detail
