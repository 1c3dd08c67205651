#!/usr/bin/env bash
# Runs on the GPU machine with binaries built on another machine and copied there in
# .gpu_carry/build (scripts/device/pack.sh): makes the build's absolute paths resolve, then runs
# the gpu-labelled tests, the CLI checks and the benchmark.
# Logs and receipts go to $OUT. Usage: scripts/device/run_gpu_checks.sh [tests|cli|bench|all]...
# BENCH_ARGS (environment) adds flags to `flashlane bench`, e.g. "--dirs fwd --budget-s 200".
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out}"; mkdir -p "$out"
build_path="/work/main/build"
if [[ "$root" != /work/main ]]; then
  mkdir -p /work && rm -rf /work/main && ln -sfn "$root" /work/main
fi
[[ -e "$root/build" ]] || ln -sfn "$root/.gpu_carry/build" "$root/build"
tool="$build_path/tools/flashlane"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/device.txt"
steps=("$@"); [[ ${#steps[@]} -eq 0 ]] && steps=(all)
summary=()
want() { for s in "${steps[@]}"; do [[ "$s" == "$1" || "$s" == all ]] && return 0; done; return 1; }

if want tests; then
  ( cd "$build_path" && ctest -L gpu --output-on-failure -j 4 --timeout 900 ) > "$out/ctest-gpu.log" 2>&1
  summary+=("ctest gpu: rc=$? $(grep -E 'tests passed|tests failed' "$out/ctest-gpu.log" | tail -1)")
  grep -E "Failed|\*\*\*|Not Run|Skipped" "$out/ctest-gpu.log" | head -40
fi
if want cli; then
  {
    "$tool" info
    "$tool" run --backend reference_cuda --strict --batch 2 --seqlen-q 300 --seqlen-k 517 --heads-q 8 --heads-kv 2 --head-dim 128 --dtype bf16 --mask causal_bottom_right; echo "rc=$?"
    "$tool" run --backend reference_cuda --strict --batch 1 --seqlen-q 113 --seqlen-k 113 --heads-q 4 --heads-kv 4 --head-dim 64 --dtype fp16 --window-left 17 --window-right 5 --softcap 20 --bwd; echo "rc=$?"
    "$tool" run --backend sm90 --strict --batch 2 --seqlen-q 1000 --seqlen-k 1000 --heads-q 8 --heads-kv 8 --head-dim 128 --dtype bf16; echo "rc=$?"
    "$tool" run --backend sm90 --strict --batch 3 --seqlen-q 4097 --seqlen-k 777 --heads-q 16 --heads-kv 2 --head-dim 192 --head-dim-v 128 --dtype fp16 --mask causal_bottom_right --softcap 30; echo "rc=$?"
    "$tool" run --backend sm90 --strict --varlen-lengths "1,17,1000;113,4097,600" --seqused-k 100,4000,599 --heads-q 8 --heads-kv 1 --head-dim 64 --dtype bf16 --window-left 256 --window-right 32; echo "rc=$?"
    "$tool" run --backend sm90 --strict --batch 1 --seqlen-q 128 --seqlen-k 128 --heads-q 4 --heads-kv 4 --head-dim 128 --dtype fp32; echo "rc(expect 2)=$?"
  } > "$out/cli.log" 2>&1
  summary+=("cli: $(grep -c '^rc=0' "$out/cli.log") of 5 run commands rc=0; fp32 strict refusal: $(grep 'rc(expect 2)' "$out/cli.log")")
fi
if want bench; then
  # shellcheck disable=SC2086
  "$tool" bench --out "$out/bench-receipts.jsonl" ${BENCH_ARGS:-} > "$out/bench.log" 2>&1
  summary+=("bench: rc=$?")
  tail -45 "$out/bench.log"
fi
echo "=== summary"; printf '%s\n' "${summary[@]}"
