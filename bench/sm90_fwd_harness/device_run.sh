#!/usr/bin/env bash
# One device call: SASS sanity, correctness sweep, benchmark, memcheck; logs under $OUT.
# Usage (on the GPU machine, repo root): bench/sm90_fwd_harness/device_run.sh [step ...|all]
set -uo pipefail
B=gpu_carry/sm90_fwd_harness
OUT=${OUT:-/tmp/out}
what=" ${*:-all} "   # steps: sass check bench big variants gtest san race, or all
want() { [[ $what == *" all "* || $what == *" $1 "* ]]; }
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
if want sass; then
  for o in gpu_carry/obj/fwd_hdim*_bf16.o; do
    echo "$(basename $o): $(cuobjdump --dump-sass $o | grep -c HGMMA) HGMMA, $(cuobjdump --dump-sass $o | grep -cE '\bHMMA') HMMA, $(cuobjdump --dump-sass $o | grep -cE '\b(LDL|STL)') LDL/STL"
  done | tee "$OUT/sass.txt"
fi
rc=0
if want sass; then
  cuobjdump --dump-sass gpu_carry/obj/fwd_hdim256_bf16.o > "$OUT/sass_hdim256.txt" 2>&1
fi
if want check; then
  timeout 100 $B check ${SEED:-1} ${COUNT:-60} > "$OUT/check.log" 2>&1; rc=$?
  grep -E "FAIL|FATAL" "$OUT/check.log" | head -20
  echo "check rc=$rc"
fi
if want bench; then
  timeout 120 $B bench > "$OUT/bench.log" 2>&1; echo "bench rc=$?"
fi
if want big; then
  timeout 60 $B big > "$OUT/big.log" 2>&1; echo "big rc=$?"; cat "$OUT/big.log" | tail -3
fi
if want variants; then
  timeout 90 $B variants > "$OUT/variants.log" 2>&1; echo "variants rc=$?"
fi
if want gtest; then
  timeout ${GTEST_TIMEOUT:-200} gpu_carry/flashlane_gpu_tests --gtest_filter='Sm90Forward.*' > "$OUT/gtest.log" 2>&1
  echo "gtest rc=$? $(grep -E '^\[  (PASSED|FAILED) ' $OUT/gtest.log | tr '\n' ' ')"
  grep -E "^\[       OK|^\[  FAILED|^\[  SKIPPED" "$OUT/gtest.log" | head -20
fi
if want ncu; then
  for d in 256; do
    timeout 60 ncu --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
      --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis -k regex:fwd_kernel -c 1 \
      $B prof $d 8192 0 > "$OUT/ncu_hdim$d.txt" 2>&1
    echo "ncu hdim$d rc=$?"
  done
fi
if want san; then
  timeout 30 compute-sanitizer --tool memcheck $B one 128 128 2 2 1 200 333 2 -1 -1 0 1 1 bf16 > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? $(grep -E 'ERROR SUMMARY' $OUT/memcheck.log)"
fi
if want race; then
  timeout 40 compute-sanitizer --tool racecheck $B one 128 128 1 2 1 200 333 2 -1 -1 0 0 1 bf16 > "$OUT/racecheck.log" 2>&1
  echo "racecheck rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' $OUT/racecheck.log)"
fi
echo "==== summary"
cat "$OUT/gpu.txt"
[[ -f $OUT/sass.txt ]] && cat "$OUT/sass.txt"
[[ -f $OUT/check.log ]] && tail -1 "$OUT/check.log"
[[ -f $OUT/variants.log ]] && grep -vE "^PASS|^device" "$OUT/variants.log"
[[ -f $OUT/bench.log ]] && cat "$OUT/bench.log"
[[ -f $OUT/gtest.log ]] && grep -E "^\[  (PASSED|FAILED)|tests ran" "$OUT/gtest.log"
exit $rc
