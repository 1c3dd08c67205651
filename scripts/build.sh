#!/usr/bin/env bash
# Sets up dependencies (scripts/setup.sh) and builds flashlane into build/ (or $FLASHLANE_BUILD_DIR).
# Extra CMake arguments are passed through, e.g. scripts/build.sh -DFLASHLANE_SM90_HEAD_DIMS=128
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FLASHLANE_BUILD_DIR:-$root/build}"
"$root/scripts/setup.sh"
# ccache (when installed) keys on paths relative to the checkout, so another clone of the same
# sources reuses the cache.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
jobs="${FLASHLANE_JOBS:-$(nproc)}"
cmake --build "$build" -j "$jobs"
