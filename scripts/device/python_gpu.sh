#!/usr/bin/env bash
# Runs on the GPU machine (no internet; python3 with torch, transformers, nanobind,
# scikit-build-core, numpy, pytest already installed): builds the Python package from this
# checkout with the sm90 kernels, installs it, and runs the gpu-marked pytest suite
# (FLASHLANE_PY_CPU_TESTS=1: then the other tests too).
# Headers come from .gpu_carry/pyheaders (made by scripts/device/python_pack.sh on the build
# machine, copied to the GPU machine with the checkout). Logs go to $OUT (or out/); a short
# summary is printed last.
#   FLASHLANE_SM90_HEAD_DIMS="64;128"   head dims compiled (the tests use 64 and 128)
#   FLASHLANE_BUILD_SM90=ON             OFF builds the reference backends only (fast)
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out}"; mkdir -p "$out"
hdr="${FLASHLANE_PYHEADERS:-$root/.gpu_carry/pyheaders}"
jobs="${FLASHLANE_JOBS:-$(nproc)}"
head_dims="${FLASHLANE_SM90_HEAD_DIMS:-64;128}"
sm90="${FLASHLANE_BUILD_SM90:-ON}"
py="${PYTHON:-python3}"
summary=()
cd "$root"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
"$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"

start=$(date +%s)
source "$root/scripts/device/python_install.sh"
installed=""
if flashlane_python_install "$root" "$out" "$hdr" "$head_dims" "$sm90" "$jobs" "$py"; then
  py="$FL_PY"; installed="$FL_INSTALLED"
fi
if [[ -z "$installed" ]]; then
  tail -40 "$out/python-build.log"
  echo "=== summary"; echo "build: FAILED after $(( $(date +%s) - start )) s (see $out/python-build.log)"
  exit 1
fi
summary+=("build: ok via $installed in $(( $(date +%s) - start )) s (sm90=$sm90, head dims $head_dims)")
if ! "$py" -X faulthandler -c "import flashlane, json, torch; print(flashlane.__file__, flashlane.compiled_architectures(), 'torch', torch.__version__); print(json.dumps(flashlane.device_info()))" > "$out/python-import.log" 2>&1; then
  cat "$out/python-import.log"
  # Narrow the failure down, one step per process.
  for step in "import flashlane._C as C; print('C ok', C.version())" \
              "import flashlane._C as C; print(dict(C.device_info(0)))" \
              "import torch; import flashlane._C as C; print('torch then C ok')" \
              "import flashlane._C as C; import torch; print('C then torch ok'); torch.zeros(1, device='cuda')" \
              "import torch; torch.zeros(1, device='cuda'); import flashlane; print('flashlane after torch cuda ok')"; do
    echo "--- $step"; "$py" -X faulthandler -c "$step" 2>&1 | tail -25; echo "rc=${PIPESTATUS[0]}"
  done
  echo "=== summary"; printf '%s\n' "${summary[@]}" "import: FAILED"; exit 1
fi
cat "$out/python-import.log"

cd "$root"
"$py" -m pytest -m gpu tests/python -rs -q -p no:cacheprovider --junitxml="$out/pytest-gpu.xml" > "$out/pytest-gpu.log" 2>&1
rc_gpu=$?
summary+=("pytest -m gpu: rc=$rc_gpu $(tail -1 "$out/pytest-gpu.log")")
rc_cpu=0
if [[ "${FLASHLANE_PY_CPU_TESTS:-0}" == 1 ]]; then
  "$py" -m pytest -m "not gpu" tests/python -rs -q -p no:cacheprovider > "$out/pytest-cpu.log" 2>&1
  rc_cpu=$?
  summary+=("pytest -m 'not gpu': rc=$rc_cpu $(tail -1 "$out/pytest-cpu.log")")
fi
grep -E "^(FAILED|ERROR)|^E  " "$out/pytest-gpu.log" | head -40
FLASHLANE_RECEIPTS="$out/python-receipts.jsonl" "$py" - <<'PY' 2>&1 | tail -5
import torch, flashlane
q = torch.randn(2, 512, 8, 128, device="cuda", dtype=torch.bfloat16)
flashlane.flash_attn_func(q, q, q, causal=True)
print("receipt:", flashlane.last_receipt())
PY
echo "=== summary"; printf '%s\n' "${summary[@]}"
[[ $rc_gpu == 0 && $rc_cpu == 0 ]]
