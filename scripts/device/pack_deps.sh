#!/usr/bin/env bash
# Prepares a full C++ build on the GPU machine (it has CMake, ninja and nvcc, but no GoogleTest,
# CLI11 or nlohmann/json, and no package registry): copies those headers and libraries and the
# CUTLASS/CuTe headers into .gpu_carry/deps, laid out as an install prefix (about 30 MB, ignored
# by git). Copy that folder to the GPU machine with the checkout and run scripts/device/build.sh there.
# Run scripts/setup.sh first (system packages, CUTLASS).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dst="$root/.gpu_carry/deps"
cutlass="${FLASHLANE_CUTLASS_SRC:-$root/.deps/cutlass/include}"
multiarch=lib/x86_64-linux-gnu
test -f "$cutlass/cute/tensor.hpp" || { echo "no CUTLASS headers under $cutlass (scripts/setup.sh)" >&2; exit 1; }
rm -rf "$dst"
mkdir -p "$dst/include" "$dst/$multiarch/cmake" "$dst/share/cmake"
cp -rL /usr/include/nlohmann /usr/include/CLI /usr/include/gtest /usr/include/gmock "$dst/include/"
cp -rL "$cutlass/cute" "$cutlass/cutlass" "$dst/include/"
cp -L /usr/$multiarch/libgtest.a /usr/$multiarch/libgtest_main.a /usr/$multiarch/libgmock.a \
      /usr/$multiarch/libgmock_main.a "$dst/$multiarch/"
cp -rL /usr/$multiarch/cmake/GTest "$dst/$multiarch/cmake/"
cp -rL /usr/share/cmake/CLI11 "$dst/share/cmake/"
# The commit this tree is (the GPU machine's copy may have a stale git HEAD): build.sh there
# passes it to the build info, so receipts name it.
( cd "$root" && c="$(git rev-parse --short=12 HEAD)" && \
  { [[ -z "$(git status --porcelain --untracked-files=no)" ]] || c="$c-dirty"; } && echo "$c" ) > "$dst/COMMIT"
du -sh "$dst"
echo "copy with the checkout: .gpu_carry/deps"
