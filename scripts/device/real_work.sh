#!/usr/bin/env bash
# The real-work validation (docs/VALIDATION.md), one command on the GPU machine:
#   1. builds and installs the Python package with the sm90 kernels (as scripts/device/python_gpu.sh:
#      pip into a venv that sees the machine's torch/transformers, else a plain CMake build staged
#      on PYTHONPATH), headers from .gpu_carry/pyheaders (scripts/device/python_pack.sh);
#   2. pytest tests/python/test_real_work.py (loader, rows, the gate's pass/fail cases, a tiny CPU
#      run of the whole pipeline);
#   3. bench/real_work/realwork_run.py: byte-level Llama (8 layers, GQA 8/2, head_dim 64 and 128),
#      2 and 100 steps at seq 2048 with lane_attention (flashlane, sm90) and sdpa, prefill, greedy
#      decode; rows, curves (CSV + PNG) and results under $OUT;
#      with DIAGNOSE_HD64_STEPS=N (> 0) it then trains the hd64 model N steps under each attention
#      variant (sdpa, sdpa math, lane_attention on sm90, on reference_cuda, and split: one direction
#      on each) and prints their loss table (diagnostics: no proof rows, no effect on the exit code);
#   4. `flashlane gate $OUT/real_work_rows.jsonl --config bench/gate_real_work.json`;
# and prints a short summary last. Exit 0 only when the run's rows all count and the gate passes.
# The logs are bundled into $OUT/logs.tar.gz at the end, so that $OUT holds at most 8 files.
#
# The gate needs the flashlane tool, which needs CLI11 (absent on the GPU machine): build it on
# the build machine and copy it there (it links the CUDA runtime statically):
#   ninja -C build flashlane_cli && mkdir -p .gpu_carry/tool && cp build/tools/flashlane .gpu_carry/tool/
#   then copy the checkout with .gpu_carry/pyheaders and .gpu_carry/tool to the GPU machine and
#   run scripts/device/real_work.sh there
# Environment: FLASHLANE_TOOL (the tool), FLASHLANE_SM90_HEAD_DIMS (default "64;128"),
# REAL_WORK_ARGS (extra arguments for realwork_run.py), REAL_WORK_BUDGET_S (default 570: the
# training run is given what is left of it after the build), DIAGNOSE_HD64_STEPS (default 0: off;
# about 40 for the diagnosis, see docs/VALIDATION.md).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out/real_work}"; mkdir -p "$out"
hdr="${FLASHLANE_PYHEADERS:-$root/.gpu_carry/pyheaders}"
jobs="${FLASHLANE_JOBS:-$(nproc)}"
head_dims="${FLASHLANE_SM90_HEAD_DIMS:-64;128}"
budget="${REAL_WORK_BUDGET_S:-570}"
diag_steps="${DIAGNOSE_HD64_STEPS:-0}"
py="${PYTHON:-python3}"
t0=$(date +%s)
summary=()
cd "$root"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
"$py" -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" 2>&1 | tee -a "$out/device.txt"
{ cat "${FLASHLANE_PYHEADERS:-$root/.gpu_carry/pyheaders}/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null; } | sed 's/^/commit /' | tee -a "$out/device.txt"

# ---- 1. build + install (same recipe as scripts/device/python_gpu.sh)
source "$root/scripts/device/python_install.sh"
installed=""
if flashlane_python_install "$root" "$out" "$hdr" "$head_dims" ON "$jobs" "$py"; then
  py="$FL_PY"; installed="$FL_INSTALLED"
fi
if [[ -z "$installed" ]]; then
  tail -40 "$out/python-build.log"
  echo "=== summary"; echo "build: FAILED after $(( $(date +%s) - t0 )) s (see $out/python-build.log)"
  exit 1
fi
t_build=$(( $(date +%s) - t0 ))
summary+=("build: ok via $installed in $t_build s (sm90 head dims $head_dims)")
if ! "$py" -c "import flashlane, torch; print(flashlane.__file__, flashlane.compiled_architectures(), flashlane.device_info())" > "$out/python-import.log" 2>&1; then
  cat "$out/python-import.log"
  echo "=== summary"; printf '%s\n' "${summary[@]}" "import flashlane: FAILED"; exit 1
fi

# ---- the gate tool (copied in .gpu_carry/tool; see the header)
tool=""
for t in "${FLASHLANE_TOOL:-}" "$root/.gpu_carry/tool/flashlane" "$root/build/tools/flashlane"; do
  if [[ -n "$t" && -x "$t" ]] && "$t" gate --help > /dev/null 2>&1; then tool="$t"; break; fi
done
if [[ -n "$tool" ]]; then summary+=("gate tool: $tool"); else summary+=("gate tool: NOT FOUND (copy it to .gpu_carry/tool, see the header): the gate did not run"); fi

# ---- 2. CPU tests of the validation code (and the gate's fail cases with the copied tool)
FLASHLANE_TOOL="$tool" timeout 180 "$py" -m pytest tests/python/test_real_work.py -rs -q -p no:cacheprovider \
  --junitxml="$out/pytest-real-work.xml" > "$out/pytest-real-work.log" 2>&1
rc_test=$?
summary+=("pytest tests/python/test_real_work.py: rc=$rc_test $(tail -1 "$out/pytest-real-work.log")")

# ---- 3. the run
left=$(( budget - ($(date +%s) - t0) ))
(( left < 60 )) && left=60
# The diagnosis (if any) stops itself 25 s before the timeout, keeping what it trained.
# shellcheck disable=SC2086
timeout "$left" "$py" -u bench/real_work/realwork_run.py --out "$out" --diagnose-hd64-steps "$diag_steps" \
  --diagnose-deadline-s $(( left - 25 )) ${REAL_WORK_ARGS:-} 2>&1 | tee "$out/real_work.log" | grep -v "^\s*$" | tail -60 > "$out/real_work.tail"
rc_run=${PIPESTATUS[0]}
summary+=("realwork_run.py: rc=$rc_run in $(( $(date +%s) - t0 - t_build )) s (timeout ${left} s; 124 = cut short; diagnose hd64 steps $diag_steps)")

# ---- 4. the gate
rc_gate=1
if [[ -n "$tool" && -s "$out/real_work_rows.jsonl" ]]; then
  "$tool" gate "$out/real_work_rows.jsonl" --config bench/gate_real_work.json > "$out/gate.txt" 2>&1
  rc_gate=$?
  summary+=("gate (bench/gate_real_work.json): $(tail -1 "$out/gate.txt") rc=$rc_gate")
else
  summary+=("gate: not run (tool or rows missing)")
fi

grep -E "Error|Traceback|FAILED" "$out/real_work.log" | head -10
sed -n '/=== real work summary/,/^rows: /p' "$out/real_work.log"
if (( diag_steps > 0 )); then
  # From the results file, so that a run cut short in the diagnosis still shows the variants it finished.
  grep -E "^diagnose hd64 " "$out/real_work.log" | head -12
  "$py" bench/real_work/realwork_run.py --print-diagnose "$out/real_work_results.json" 2>&1 | head -60
fi
[[ -f "$out/gate.txt" ]] && grep -v "^PASS$\|^FAIL$" "$out/gate.txt" | head -20
# Bundle the logs, so that $OUT holds at most 8 files.
logs=()
for f in python-venv.log python-build.log python-import.log pytest-real-work.log pytest-real-work.xml real_work.log real_work.tail; do
  [[ -f "$out/$f" ]] && logs+=("$f")
done
if (( ${#logs[@]} )) && tar -czf "$out/logs.tar.gz" -C "$out" "${logs[@]}"; then
  ( cd "$out" && rm -f "${logs[@]}" )
fi
echo "=== summary (total $(( $(date +%s) - t0 )) s; files under $out: $(find "$out" -maxdepth 1 -type f -printf '%f\n' | sort | tr '\n' ' '))"
printf '%s\n' "${summary[@]}"
[[ $rc_run == 0 && $rc_gate == 0 ]]
