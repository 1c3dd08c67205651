#!/usr/bin/env bash
# The README's main job: set-up, build, then `flashlane bench` on its default preset. Receipts go
# to out/bench-receipts.jsonl. Without a GPU the bench says so and runs a reduced CPU problem.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FLASHLANE_BUILD_DIR:-$root/build}"
"$root/scripts/build.sh"
mkdir -p "$root/out"
cd "$root"
"$build/tools/flashlane" bench --out "$root/out/bench-receipts.jsonl" "$@"
