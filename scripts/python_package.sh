#!/usr/bin/env bash
# Builds and installs the Python package `flashlane` into a venv under the build folder, reusing
# the CMake build of scripts/build.sh (scikit-build-core's build-dir is that same folder: the
# kernels, the tool, the tests and the package come from one build), then runs pytest.
# Tests that need torch or a GPU report "skipped" with their reason. Called by scripts/test.sh.
#   scripts/python_package.sh [pytest args...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FLASHLANE_BUILD_DIR:-$root/build}"
venv="$build/venv"
# Build requirements as pinned in pyproject.toml (tests/python/test_numpy.py checks they agree).
pins=("scikit-build-core==1.1.2" "nanobind==3.1.0" "numpy==2.4.6" "pytest==9.2.0")

start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" - "${pins[@]}" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  "${pip[@]}" install "${pins[@]}"
fi
# --no-build-isolation: use the pinned build requirements of the venv (no download per build).
CMAKE_BUILD_PARALLEL_LEVEL="${FLASHLANE_JOBS:-$(nproc)}" \
  "${pip[@]}" install --no-build-isolation --no-deps -C build-dir="$build" "$root"
# scikit-build-core leaves SKBUILD* in the shared cache; drop them so that plain builds of this
# folder (scripts/build.sh) are not taken for pip builds (python/CMakeLists.txt).
cmake -U 'SKBUILD*' "$build" > /dev/null
echo "python: package built and installed into $venv in $(( $(date +%s) - start )) s"
cd "$root"
"$venv/bin/python" -m pytest tests/python -rs -q "$@"
