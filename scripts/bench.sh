#!/usr/bin/env bash
# The README's main job: set-up, build, then `flashlane bench` on its default preset. Receipts go
# to out/bench-receipts.jsonl. Without a GPU the bench says so and runs a reduced CPU problem.
#
# Arguments: those starting with -D are CMake options for the build (scripts/build.sh, e.g.
# -DFLASHLANE_BUILD_SM90=OFF); every other argument goes to `flashlane bench` (e.g. --preset
# smoke, --dirs fwd, --budget-s 0; bench/README.md). FLASHLANE_BUILD_DIR picks the build folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FLASHLANE_BUILD_DIR:-$root/build}"
cmake_args=()
bench_args=()
for a in "$@"; do
  if [[ "$a" == -D* ]]; then cmake_args+=("$a"); else bench_args+=("$a"); fi
done
"$root/scripts/build.sh" ${cmake_args[@]+"${cmake_args[@]}"}
mkdir -p "$root/out"
cd "$root"
"$build/tools/flashlane" bench --out "$root/out/bench-receipts.jsonl" ${bench_args[@]+"${bench_args[@]}"}
