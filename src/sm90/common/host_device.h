// host_device.h: FLASHLANE_HOST_DEVICE marks functions compiled for the GPU and the host alike
// (nvcc) and for the host alone (a C++ compiler), so that the CPU tests can call them.
#pragma once

#if defined(__CUDACC__)
#define FLASHLANE_HOST_DEVICE __host__ __device__
#else
#define FLASHLANE_HOST_DEVICE
#endif
