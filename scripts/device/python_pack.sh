#!/usr/bin/env bash
# Prepares what the Python package needs to build on the GPU machine (it has no nlohmann_json,
# and CUTLASS only if copied there): copies the nlohmann/json and CUTLASS/CuTe headers into
# .gpu_carry/pyheaders (about 28 MB, ignored by git). Copy that folder to the GPU machine with
# the checkout and run scripts/device/python_gpu.sh there. Run scripts/setup.sh first (CUTLASS).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dst="$root/.gpu_carry/pyheaders"
nlohmann="${FLASHLANE_NLOHMANN_SRC:-/usr/include/nlohmann}"
cutlass="${FLASHLANE_CUTLASS_SRC:-$root/.deps/cutlass/include}"
test -f "$nlohmann/json.hpp" || { echo "no nlohmann/json.hpp under $nlohmann" >&2; exit 1; }
test -f "$cutlass/cute/tensor.hpp" || { echo "no CUTLASS headers under $cutlass (scripts/setup.sh)" >&2; exit 1; }
rm -rf "$dst"
mkdir -p "$dst/nlohmann-include" "$dst/cutlass-include"
cp -rL "$nlohmann" "$dst/nlohmann-include/nlohmann"
cp -rL "$cutlass/cute" "$cutlass/cutlass" "$dst/cutlass-include/"
# The commit this tree is (the GPU machine's copy has a stale git HEAD): read by python_install.sh.
( cd "$root" && c="$(git rev-parse --short=12 HEAD)" && \
  { [[ -z "$(git status --porcelain --untracked-files=no)" ]] || c="$c-dirty"; } && echo "$c" ) > "$dst/COMMIT"
du -sh "$dst"
echo "copy with the checkout: .gpu_carry/pyheaders"
