#!/usr/bin/env bash
# One device call: SASS sanity, correctness sweep, benchmark, memcheck; logs under $OUT.
# Usage (on the GPU machine, repo root): bench/sm90_fwd_harness/device_run.sh [check|bench|san|all]
set -uo pipefail
B=gpu_carry/sm90_fwd_harness
OUT=${OUT:-/tmp/out}
what=${1:-all}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
if [[ $what == all || $what == sass ]]; then
  for o in gpu_carry/obj/fwd_hdim*_bf16.o; do
    echo "$(basename $o): $(cuobjdump --dump-sass $o | grep -c HGMMA) HGMMA, $(cuobjdump --dump-sass $o | grep -cE '\bHMMA') HMMA, $(cuobjdump --dump-sass $o | grep -cE '\b(LDL|STL)') LDL/STL"
  done | tee "$OUT/sass.txt"
fi
rc=0
if [[ $what == all || $what == check ]]; then
  timeout 150 $B check ${SEED:-1} ${COUNT:-60} > "$OUT/check.log" 2>&1; rc=$?
  grep -E "FAIL|FATAL" "$OUT/check.log" | head -20
  echo "check rc=$rc"
fi
if [[ $what == all || $what == bench ]]; then
  timeout 120 $B bench > "$OUT/bench.log" 2>&1; echo "bench rc=$?"
fi
if [[ $what == all || $what == san ]]; then
  timeout 60 compute-sanitizer --tool memcheck $B one 128 128 2 2 1 200 333 2 -1 -1 0 1 1 bf16 > "$OUT/memcheck.log" 2>&1
  echo "memcheck rc=$? $(grep -E 'ERROR SUMMARY' $OUT/memcheck.log)"
fi
echo "==== summary"
cat "$OUT/gpu.txt"
[[ -f $OUT/sass.txt ]] && cat "$OUT/sass.txt"
[[ -f $OUT/check.log ]] && tail -1 "$OUT/check.log"
[[ -f $OUT/bench.log ]] && cat "$OUT/bench.log"
exit $rc
