#!/usr/bin/env bash
# Installs everything flashlane needs to build and test on a fresh Debian 12 machine with the
# CUDA 13.0 toolkit. Pinned versions; only Debian's packages and PyPI are used.
#   scripts/setup.sh            -> system packages + CUTLASS/CuTe headers under .deps/
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
deps="$root/.deps"

apt_pkgs=(
  cmake
  ninja-build
  ccache
  "libgtest-dev=1.12.1-0.2"
  "googletest=1.12.1-0.2"
  "nlohmann-json3-dev=3.11.2-2"
  "libcli11-dev=2.1.2+ds-1"
  python3-venv  # scripts/python_package.sh: the venv the Python package is built and tested in
  python3-dev   # Python.h for the extension flashlane._C
)
need_apt=0
for p in "${apt_pkgs[@]}"; do
  name="${p%%=*}"
  want="${p#*=}"
  have="$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)"
  if [[ -z "$have" || ( "$p" == *=* && "$have" != "$want" ) ]]; then need_apt=1; fi
done
if [[ $need_apt == 1 ]]; then
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"
fi

# CUTLASS / CuTe C++ headers, from the nvidia-cutlass wheel (headers only are used).
CUTLASS_VERSION=4.2.0.0
stamp="$deps/cutlass-$CUTLASS_VERSION.stamp"
if [[ ! -f "$stamp" ]]; then
  rm -rf "$deps/cutlass"
  mkdir -p "$deps/cutlass"
  python3 -m pip install -q --no-deps --disable-pip-version-check --target "$deps/cutlass/py" \
    "nvidia-cutlass==$CUTLASS_VERSION"
  ln -sfn "$deps/cutlass/py/cutlass_library/source/include" "$deps/cutlass/include"
  touch "$stamp"
fi
test -f "$deps/cutlass/include/cute/tensor.hpp"
echo "setup: dependencies ready (CUTLASS headers at $deps/cutlass/include)"
