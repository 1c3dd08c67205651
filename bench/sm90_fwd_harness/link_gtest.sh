#!/usr/bin/env bash
# Relinks build-sm90's flashlane_gpu_tests (a CMake build with -DFLASHLANE_SM90_HEAD_DIMS=128) with
# the all-head-dim sm90 objects of gpu_carry/obj, so the GoogleTest suite covers every
# instantiation. Our objects come first: the archive's sm90 members are then never pulled in.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=build-sm90
T=$B/tests/CMakeFiles/flashlane_gpu_tests.dir/gpu
c++ -O3 $T/test_dispatch_gpu.cpp.o $T/test_reference_cuda.cpp.o $T/test_sm90_forward.cpp.o \
  gpu_carry/obj/fwd_hdim*.o gpu_carry/obj/sm90_forward.o \
  -o gpu_carry/flashlane_gpu_tests -L/usr/local/cuda/targets/x86_64-linux/lib $B/libflashlane.a \
  /usr/lib/x86_64-linux-gnu/libgtest.a /usr/lib/x86_64-linux-gnu/libgtest_main.a \
  /usr/local/cuda/lib/libcudart_static.a -ldl -lrt -lpthread
echo "linked gpu_carry/flashlane_gpu_tests"
