# Sourced by scripts/device/python_gpu.sh and real_work.sh on the GPU machine: builds the Python
# package from this checkout and makes it importable.
#   flashlane_python_install ROOT OUT HEADERS HEAD_DIMS SM90 JOBS PY
# pip-installs into PY's own venv when it is one, else into build/venv-gpu (a venv that sees the
# machine's torch, nanobind and scikit-build-core); if neither works, a plain CMake build of the
# same project whose extension is staged on PYTHONPATH. Headers (nlohmann, CUTLASS) come from
# HEADERS (scripts/device/python_pack.sh). Logs go to OUT/python-venv.log and python-build.log.
# Sets FL_PY (the python to use afterwards) and FL_INSTALLED (how); returns 1 on failure.
flashlane_python_install() {
  local root="$1" out="$2" hdr="$3" head_dims="$4" sm90="$5" jobs="$6" py="$7"
  local build="$root/build/python-gpu" stage="$root/build/python-gpu-stage"
  local defines=(
    "FLASHLANE_NLOHMANN_INCLUDE=$hdr/nlohmann-include"
    "FLASHLANE_CUTLASS_INCLUDE=$hdr/cutlass-include"
    "FLASHLANE_SM90_HEAD_DIMS=$head_dims"
    "FLASHLANE_BUILD_SM90=$sm90"
    "FLASHLANE_BUILD_TESTS=OFF"
    "FLASHLANE_BUILD_TOOLS=OFF"
  )
  FL_PY="$py"; FL_INSTALLED=""
  # Receipts name the commit recorded with the headers (this copy's git HEAD may be stale).
  if [[ -s "$hdr/COMMIT" ]]; then export FLASHLANE_GIT_COMMIT="$(cat "$hdr/COMMIT")"; fi
  local pip_py=""
  if "$py" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)'; then
    pip_py="$py"
  elif "$py" -m venv --system-site-packages "$root/build/venv-gpu" > "$out/python-venv.log" 2>&1 &&
       "$root/build/venv-gpu/bin/python" -c "import torch, nanobind, scikit_build_core" >> "$out/python-venv.log" 2>&1; then
    pip_py="$root/build/venv-gpu/bin/python"
  fi
  if [[ -n "$pip_py" ]]; then
    local args=() d
    for d in "${defines[@]}"; do args+=(-C "cmake.define.$d"); done
    if CMAKE_BUILD_PARALLEL_LEVEL="$jobs" "$pip_py" -m pip install --no-build-isolation --no-deps \
         --no-index -C build-dir="$build" "${args[@]}" "$root" > "$out/python-build.log" 2>&1; then
      FL_PY="$pip_py"; FL_INSTALLED="pip install into $("$pip_py" -c 'import sys; print(sys.prefix)')"
      return 0
    fi
  fi
  echo "pip install failed or venv unavailable (see python-venv.log / python-build.log): plain CMake build" | tee -a "$out/python-build.log"
  local cargs=() d
  for d in "${defines[@]}"; do cargs+=("-D$d"); done
  local pyexe; pyexe="$("$py" -c 'import sys; print(sys.executable)')"
  if cmake -S "$root" -B "$build-cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHLANE_BUILD_PYTHON=ON \
       -DPython_EXECUTABLE="$pyexe" "${cargs[@]}" >> "$out/python-build.log" 2>&1 &&
     cmake --build "$build-cmake" -j "$jobs" >> "$out/python-build.log" 2>&1; then
    rm -rf "$stage"; mkdir -p "$stage"
    cp -r "$root/python/flashlane" "$stage/"
    cp "$build-cmake"/python/_C*.so "$stage/flashlane/"
    export PYTHONPATH="$stage${PYTHONPATH:+:$PYTHONPATH}"
    FL_INSTALLED="cmake (staged at build/python-gpu-stage)"
    return 0
  fi
  return 1
}
