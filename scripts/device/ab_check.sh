#!/usr/bin/env bash
# Runs on the GPU machine: the checks that decide whether a change to the sm90 kernels may land.
# In .gpu_carry/, the folder copied to the GPU machine with the checkout (scripts/device/pack.sh,
# FLASHLANE_BUILD_DIR=<new build>): .gpu_carry/build, plus .gpu_carry/ab/kernel_timing_{old,new}
# (bench/ab/kernel_timing.cpp linked against the build before the change and the build after it,
# bench/ab/README.md).
#   1. gpu ctest of the new build
#   2. A/B timing of the canonical grid, old and new alternately (AB_PASSES passes of each)
#   3. compute-sanitizer memcheck and racecheck on a small sweep of both directions
# Usage: scripts/device/ab_check.sh <build dir the copied build was made in>
# Environment: AB_PASSES (3), AB_REPS (20), SKIP_SANITIZERS (set: skip step 3).
# Logs and JSON lines to $OUT; a summary is printed last.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out}"; mkdir -p "$out"
made_in="${1:?build folder the copied build was configured in}"
# The copied build's ctest files name the folders it was made in.
mkdir -p "$(dirname "$made_in")" /work
[[ -e "$made_in" ]] || ln -sfn "$root/.gpu_carry/build" "$made_in"
[[ "$root" == /work/main ]] || { rm -rf /work/main; ln -sfn "$root" /work/main; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv,noheader | tee "$out/device.txt"
summary=()

( cd "$made_in" && timeout "${CTEST_TIMEOUT:-200}" ctest -L gpu --output-on-failure -j 4 --timeout 600 ) \
  > "$out/ctest-gpu.log" 2>&1
summary+=("ctest gpu: rc=$? $(grep -E 'tests passed|tests failed' "$out/ctest-gpu.log" | tail -1)")

ab="$out/ab.jsonl"; : > "$ab"
for pass in $(seq 1 "${AB_PASSES:-3}"); do
  for side in old new; do
    timeout 120 "$root/.gpu_carry/ab/kernel_timing_$side" --label "$side" --pass "$pass" \
      --reps "${AB_REPS:-20}" >> "$ab" 2>> "$out/ab.err" || echo "ab $side pass $pass: rc=$?" >> "$out/ab.err"
  done
done
python3 "$root/bench/ab/summarize.py" "$ab" > "$out/ab-summary.txt" 2>&1
summary+=("a/b: $(tail -1 "$out/ab-summary.txt")")

san() {  # tool, filter, timeout
  timeout "$3" compute-sanitizer --tool "$1" --error-exitcode 9 \
    "$made_in/tests/flashlane_gpu_tests" --gtest_filter="$2" > "$out/$1.log" 2>&1
  local rc=$?
  summary+=("$1 ($2): rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$out/$1.log" | tr '\n' ' ' | cut -c1-200)")
}
if [[ -z "${SKIP_SANITIZERS:-}" ]]; then
san memcheck "Sm90Forward.EveryHeadDimAndDtype:Sm90Forward.VarlenSequsedAndNaNPadding:Sm90Backward.EveryHeadDimAndDtype:Sm90Backward.VarlenSequsedAndNaNPadding" "${MEMCHECK_TIMEOUT:-150}"
san racecheck "Sm90Forward.EveryHeadDimAndDtype:Sm90Backward.EveryHeadDimAndDtype" "${RACECHECK_TIMEOUT:-120}"
fi

grep -E "Failed|\*\*\*|Not Run" "$out/ctest-gpu.log" | head -20
cat "$out/ab-summary.txt"
echo "=== summary"; printf '%s\n' "${summary[@]}"
