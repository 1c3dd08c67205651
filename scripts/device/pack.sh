#!/usr/bin/env bash
# Copies the runnable parts of build/ (binaries and ctest files, no object files) into
# .gpu_carry/build, inside .gpu_carry/, the folder copied to the GPU machine with the checkout.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
src="${FLASHLANE_BUILD_DIR:-$root/build}"
dst="$root/.gpu_carry/build"
rm -rf "$dst"; mkdir -p "$dst"
( cd "$src" && find . \( -path ./CMakeFiles -o -path ./venv -o -path './python*' \) -prune -o \
    -type f ! -name '*.o' ! -name '*.a' ! -name '*.ninja*' ! -name '.ninja*' -print ) | while read -r f; do
  mkdir -p "$dst/$(dirname "$f")"; cp -p "$src/$f" "$dst/$f"
done
du -sh "$dst"
