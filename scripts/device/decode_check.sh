#!/usr/bin/env bash
# Runs on the GPU machine: the decode checks in one call. Builds the project there
# (scripts/device/build.sh, headers and libraries from .gpu_carry/deps) unless a build
# exists, runs the steps named in DECODE_STEPS and prints a summary last. $OUT keeps a few files:
# device.txt, build.log (on failure), gpu-tests.log, decode.jsonl (flashlane's and the peers'
# rows, one receipts file), bench.log, peers.log, decode-table.txt, sanitize.log.
#   DECODE_STEPS   any of: build, smoke (`flashlane run --decode --device cuda --backend sm90`
#                  over a table of layouts, page sizes, masks, splits, append and rotary, each
#                  checked against reference_cpu in float64), tests (the gpu gtest binary
#                  filtered to the decode tests),
#                  bench (`flashlane bench --preset decode`, then bench/peers/torch_sdpa_decode.py
#                  appending to the same file, then bench/decode_table.py on it), sanitize
#                  (compute-sanitizer memcheck and racecheck on `flashlane run --decode --device
#                  cuda`, dense and paged), ab (ncu kernel times, attention + combine, of the
#                  heuristic's split count and of forced counts, GQA 32/8, head_dim 128, at
#                  batch 1, 4 and 16: ab.txt); default "build smoke tests bench sanitize"
#   DECODE_BENCH_ARGS  more arguments of `flashlane bench --preset decode` (e.g. "--num-splits 4")
#   DECODE_BUDGET_S    the bench's --budget-s (default 300: no new cell group starts after it)
#   DECODE_HEAD_DIMS   head dims of the library build (default 128: the grid's; "" for all)
#   FLASHLANE_BUILD_DIR  an existing build to use (default build-device; built when absent)
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out}"; mkdir -p "$out"
steps="${DECODE_STEPS:-build smoke tests bench sanitize}"
build="${FLASHLANE_BUILD_DIR:-$root/build-device}"
tool="$build/tools/flashlane"
summary=()
has() { [[ " $steps " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader | tee "$out/device.txt"
if has build && [[ ! -x "$tool" ]]; then
  cmake_args=()
  hd="${DECODE_HEAD_DIMS-128}"
  [[ -n "$hd" ]] && cmake_args+=(-DFLASHLANE_SM90_HEAD_DIMS="$hd")
  if FLASHLANE_BUILD_DIR="$build" "$root/scripts/device/build.sh" "${cmake_args[@]}"; then
    summary+=("build: ok ($build)")
  else
    cp "$build.build.log" "$out/build.log" 2>/dev/null
    summary+=("build: FAILED (build.log)")
    echo "=== summary"; printf '%s\n' "${summary[@]}"; exit 1
  fi
elif [[ -x "$tool" ]]; then
  summary+=("build: existing $build")
fi
[[ -x "$tool" ]] || { echo "no $tool (add build to DECODE_STEPS)"; exit 1; }
if has smoke; then
  : > "$out/smoke.log"
  pass=0; fail=0; failed=()
  base="--device cuda --backend sm90 --strict --batch 3 --heads-q 32 --heads-kv 8 --seqlen-cache 3000 --cache-seqlens 1,777,2999"
  while IFS= read -r args; do
    [[ -z "$args" ]] && continue
    # shellcheck disable=SC2086
    if timeout 60 "$tool" run --decode $base $args >> "$out/smoke.log" 2>&1; then
      pass=$((pass + 1))
    else
      fail=$((fail + 1)); failed+=("$args")
    fi
  done <<'CASES'
--head-dim 128
--head-dim 128 --dtype fp16
--head-dim 64
--head-dim 256
--head-dim 128 --page-size 1
--head-dim 128 --page-size 7
--head-dim 128 --page-size 16
--head-dim 128 --page-size 64
--head-dim 256 --page-size 256
--head-dim 128 --num-splits 1
--head-dim 128 --num-splits 3
--head-dim 128 --num-splits 64
--head-dim 128 --num-splits 16
--head-dim 256 --num-splits 16 --page-size 16
--head-dim 128 --seqlen-q 4 --mask causal_bottom_right
--head-dim 128 --seqlen-q 7 --mask causal_bottom_right --heads-q 64
--head-dim 64 --seqlen-q 33 --mask causal_bottom_right --page-size 16
--head-dim 128 --window-left 100 --window-right 0
--head-dim 128 --seqlen-q 5 --window-left 37 --window-right 5
--head-dim 128 --softcap 30
--head-dim 128 --heads-q 8 --heads-kv 1
--head-dim 128 --heads-q 4 --heads-kv 4
--head-dim 128 --seqlen-new 1 --cache-seqlens 0,776,2998
--head-dim 128 --seqlen-new 3 --rotary-dim 64 --cache-seqlens 0,700,2900 --mask causal_bottom_right
--head-dim 128 --seqlen-new 2 --rotary-dim 128 --rotary-neox --page-size 16 --cache-seqlens 5,700,2900
--head-dim 64 --seqlen-new 1 --rotary-dim 24 --seqlen-q 2 --cache-seqlens 3,10,2000
--head-dim 128 --cache-seqlens 0,0,0
--head-dim 128 --learnable-sink random
--head-dim 128 --learnable-sink random --num-splits 1 --cache-seqlens 0,777,2999
--head-dim 256 --learnable-sink 2.5 --page-size 16 --seqlen-new 2 --rotary-dim 64
CASES
  summary+=("smoke (run --decode vs reference_cpu float64): $pass passed, $fail failed")
  for a in "${failed[@]}"; do summary+=("  FAILED: $a"); done
  grep -E "^check vs|^result" "$out/smoke.log" | paste - - | head -40
fi
if has tests; then
  timeout 300 "$build/tests/flashlane_gpu_tests" --gtest_brief=1 --gtest_filter='*Decode*:*KvCache*' \
    > "$out/gpu-tests.log" 2>&1
  summary+=("gpu decode tests: rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/gpu-tests.log" | tr '\n' ' ')")
  grep -E "Failure|FAILED" "$out/gpu-tests.log" | head -20
fi
if has bench; then
  receipts="$out/decode.jsonl"
  # shellcheck disable=SC2086
  ( cd "$root" && timeout 420 "$tool" bench --preset decode --budget-s "${DECODE_BUDGET_S:-300}" \
      --out "$receipts" --overwrite \
      ${DECODE_BENCH_ARGS:-} > "$out/bench.log" 2>&1 )
  rc=$?
  summary+=("bench: rc=$rc $(grep -cE '"requested_backend": *"sm90"' "$receipts" 2>/dev/null) sm90 rows; $(tail -4 "$out/bench.log" | grep -E 'rows written' | cut -c1-200)")
  grep -E "^copy bandwidth|^memory budget|^skip|FAILED|SUBSET" "$out/bench.log" | head -20
  timeout 300 python3 "$root/bench/peers/torch_sdpa_decode.py" --out "$receipts" > "$out/peers.log" 2>&1
  summary+=("peers: rc=$? $(grep -cE 'torch_sdpa_' "$receipts" 2>/dev/null) peer rows; $(tail -1 "$out/peers.log" | cut -c1-120)")
  python3 "$root/bench/decode_table.py" "$receipts" > "$out/decode-table.txt" 2>&1
  summary+=("decode_table: rc=$? $(grep -cE '^bar .*: PASS' "$out/decode-table.txt") of 4 bars pass")
  grep -E "^bar " "$out/decode-table.txt"
fi
if has ab; then
  : > "$out/ab.txt"
  while read -r batch cache splits; do
    [[ -z "$batch" ]] && continue
    lens=$(printf "%s," $(seq 1 "$batch" | sed "s/.*/$cache/")); lens=${lens%,}
    timeout 120 ncu --metrics gpu__time_duration.sum --kernel-name regex:decode "$tool" run --decode \
      --device cuda --backend sm90 --strict --batch "$batch" --heads-q 32 --heads-kv 8 --head-dim 128 \
      --seqlen-cache "$cache" --cache-seqlens "$lens" --num-splits "$splits" > "$out/ab-run.log" 2>&1
    t=$(grep -E "gpu__time_duration" "$out/ab-run.log" | awk '{print $NF}' | paste -sd+)
    sum=$(grep -E "gpu__time_duration" "$out/ab-run.log" | awk '{s += $NF} END {print s}')
    v=$(grep -oE '"variant": *"[^"]*"' "$out/ab-run.log" | head -1 | sed 's/"variant": *//')
    echo "batch $batch cache $cache splits $splits: us ${t:-none} = ${sum:-none} $v $(grep -oE 'result: [A-Z]+' "$out/ab-run.log" | head -1)" | tee -a "$out/ab.txt"
  done <<'AB'
1 8192 0
1 8192 32
1 32768 0
1 32768 32
4 8192 0
16 8192 0
AB
  summary+=("ab: $(wc -l < "$out/ab.txt") rows (ab.txt)")
fi
if has sanitize; then
  : > "$out/sanitize.log"
  for tool_name in memcheck racecheck; do
    rcs=""
    for args in "--page-size 0" "--page-size 16" "--page-size 64 --num-splits 4"; do
      # shellcheck disable=SC2086
      timeout 200 compute-sanitizer --tool "$tool_name" --error-exitcode 9 "$tool" run --decode \
        --device cuda --backend sm90 --strict --batch 2 --heads-q 16 --heads-kv 4 --head-dim 128 \
        --seqlen-cache 1000 --cache-seqlens 1000,517 $args >> "$out/sanitize.log" 2>&1
      rcs+="$? "
    done
    summary+=("$tool_name (dense, paged16, paged64 splits4): rc=$rcs$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitize.log" | tail -3 | tr '\n' ' ')")
  done
fi
echo "=== summary"; printf '%s\n' "${summary[@]}"
