#!/usr/bin/env bash
# The README's test command: set-up, build, then every ctest suite. Label cpu runs anywhere;
# label gpu runs on a CUDA machine and reports "skipped" (never "passed") without one. Then the
# Python package (scripts/python_package.sh: venv under build/, pip install, pytest).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FLASHLANE_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh"
( cd "$build" && ctest --output-on-failure -j "${FLASHLANE_JOBS:-$(nproc)}" "$@" )
# The Python package, built from the same build folder, and its pytest suite.
"$root/scripts/python_package.sh"
