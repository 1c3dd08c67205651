#!/usr/bin/env bash
# Runs on the GPU machine: configures and builds the whole project (library, kernels, tool,
# tests, timing programs) into build-device/ with every core, from the headers and libraries of
# .gpu_carry/deps (scripts/device/pack_deps.sh on the build machine). Extra arguments go to
# CMake, e.g. -DFLASHLANE_SM90_HEAD_DIMS="64;128". Prints the build time last.
#   FLASHLANE_SOURCE_DIR   another source tree to build (default: this checkout), with this
#                          checkout's .gpu_carry/deps
#   FLASHLANE_BUILD_TARGET one target instead of all (e.g. flashlane_bwd_timing)
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
root="${FLASHLANE_SOURCE_DIR:-$here}"
deps="$here/.gpu_carry/deps"
build="${FLASHLANE_BUILD_DIR:-$here/build-device}"
test -d "$deps/include/cute" || { echo "no $deps (scripts/device/pack_deps.sh)" >&2; exit 1; }
start=$(date +%s)
if [[ -s "$deps/COMMIT" && -z "${FLASHLANE_GIT_COMMIT:-}" ]]; then
  export FLASHLANE_GIT_COMMIT="$(cat "$deps/COMMIT")"  # written by pack_deps.sh
fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$deps" \
  -DFLASHLANE_NLOHMANN_INCLUDE="$deps/include" -DFLASHLANE_CUTLASS_INCLUDE="$deps/include" \
  "$@" > "$build.configure.log" 2>&1 || { tail -30 "$build.configure.log"; exit 1; }
cmake --build "$build" -j "${FLASHLANE_JOBS:-$(nproc)}" ${FLASHLANE_BUILD_TARGET:+--target "$FLASHLANE_BUILD_TARGET"} > "$build.build.log" 2>&1 \
  || { grep -E "error|Error" -A3 "$build.build.log" | head -60; exit 1; }
echo "device build: $build in $(( $(date +%s) - start )) s"
