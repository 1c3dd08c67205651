#!/usr/bin/env bash
# The README's test command: set-up, build, then every ctest suite. Label cpu runs anywhere;
# label gpu runs on a CUDA machine and reports "skipped" (never "passed") without one. Then the
# Python package (scripts/python_package.sh: venv under build/, pip install, pytest).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FLASHLANE_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh"
( cd "$build" && ctest --output-on-failure -j "${FLASHLANE_JOBS:-$(nproc)}" "$@" )
# The sm90 head-dim filter, in a build configured with one head dim: the kernel-table tests and
# the symbol check must see only head_dim 128, forward and backward (FLASHLANE_SKIP_FILTER_BUILD=1
# skips this second build).
if [[ "${FLASHLANE_SKIP_FILTER_BUILD:-0}" != 1 ]]; then
  FLASHLANE_BUILD_DIR="$build-hd128" "$root/scripts/build.sh" -DFLASHLANE_SM90_HEAD_DIMS=128
  ( cd "$build-hd128" && ctest --output-on-failure -L cpu \
      -R "Sm90KernelTable|Sm90ParamsBuilder|sm90_build_filter|Dispatch|TagCoverage" )
fi
# The Python package, built from the same build folder, and its pytest suite.
"$root/scripts/python_package.sh"
