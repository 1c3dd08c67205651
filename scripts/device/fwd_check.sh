#!/usr/bin/env bash
# Runs on the GPU machine: the forward's checks in one call. Builds the project there
# (scripts/device/build.sh, headers and libraries from .gpu_carry/deps), optionally with the
# softmax sweep variants, runs the steps named in SWEEP_STEPS and prints a summary last. Logs and
# JSON lines go to $OUT.
#   SWEEP_VARIANTS   head_dim:exp2_emulated_per16:rescale_threshold list (CMake list; needed by
#                    the sweep and ncu steps)
#   SWEEP_HEAD_DIMS  head dims of the library build (default: every row of the kernel table)
#   SWEEP_STEPS      any of: tests (the whole gpu test binary), sweep (bench/ab/softmax_sweep),
#                    ncu (pipe utilization of chosen variants, NCU_VARIANTS), sanitize
#                    (compute-sanitizer memcheck and racecheck on small forward tests), bench
#                    (`flashlane bench --preset canonical --dirs fwd` on sm90 with every row
#                    validated, then the PyTorch SDPA peers, cuDNN and FlashAttention-2, timed in
#                    the same call and appended to the same receipts file), sinks (`flashlane
#                    bench --preset canonical --backends sm90 --dirs fwd,bwd --learnable-sink
#                    random`: the attention_sinks surface's rows, SINKS_BUDGET_S, default 240)
#                    default "tests sweep"
#   SWEEP_PASSES, SWEEP_REPS   passes over the grid and timed calls per cell (3, 15)
#   SWEEP_ARGS       more arguments of flashlane_softmax_sweep (e.g. --tile-groups 1,4,16,
#                    --schedules auto,onetile,static)
#   SWEEP_BASELINE   the schedule the sweep summary divides by (default auto)
#   NCU_VARIANTS     "hdim:per16:threshold ..." profiled at seqlen NCU_SEQLEN (16384), non-causal
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out}"; mkdir -p "$out"
variants="${SWEEP_VARIANTS:-}"
steps="${SWEEP_STEPS:-tests sweep}"
build="$root/build-device"
summary=()
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
cmake_args=(-DFLASHLANE_SOFTMAX_SWEEP_VARIANTS="$variants")
[[ -n "${SWEEP_HEAD_DIMS:-}" ]] && cmake_args+=(-DFLASHLANE_SM90_HEAD_DIMS="$SWEEP_HEAD_DIMS")
FLASHLANE_BUILD_DIR="$build" "$root/scripts/device/build.sh" "${cmake_args[@]}" || exit 1
cp "$build.build.log" "$out/build.log"
grep -E "Registers are spilled" "$out/build.log" | sed -E "s/.*function '(_Z[^']*)', (.*)/\2  \1/" \
  | sort -u > "$out/spills.txt"
summary+=("build: ok; $(wc -l < "$out/spills.txt") kernels with spills (spills.txt)")
has() { [[ " $steps " == *" $1 "* ]]; }
if has tests; then
  # gtest directly: the GPU machine's CMake reads this build's discovered-test files poorly.
  timeout 420 "$build/tests/flashlane_gpu_tests" --gtest_brief=1 > "$out/gpu-tests.log" 2>&1
  summary+=("gpu tests: rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/gpu-tests.log" | tr '\n' ' ')")
  grep -E "Failure|FAILED|error" "$out/gpu-tests.log" | head -30
fi
if has sweep; then
  # shellcheck disable=SC2086
  "$build/bench/flashlane_softmax_sweep" --passes "${SWEEP_PASSES:-3}" --reps "${SWEEP_REPS:-15}" \
    ${SWEEP_ARGS:-} > "$out/sweep.jsonl" 2> "$out/sweep.err" || tail -5 "$out/sweep.err"
  python3 "$root/bench/ab/softmax_sweep/summarize.py" "$out/sweep.jsonl" "${SWEEP_BASELINE:-auto}" \
    > "$out/sweep-summary.txt"
  sed -n '/per head dim/,$p' "$out/sweep-summary.txt"
fi
if has ncu; then
  metrics=sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active
  metrics+=,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active
  metrics+=,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
  metrics+=,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active
  metrics+=,sm__inst_issued.avg.pct_of_peak_sustained_active
  metrics+=,smsp__inst_executed.sum,sm__cycles_elapsed.avg,gpu__time_duration.sum
  metrics+=,smsp__average_warp_latency_issue_stalled_barrier,smsp__average_warp_latency_issue_stalled_math_pipe_throttle
  for v in ${NCU_VARIANTS:-}; do
    IFS=: read -r hd e r <<< "$v"
    name="FwdTraitsILi${hd}ELi${hd}E.*ELi${e}ELi${r}EEE"
    timeout 120 ncu --kernel-name-base mangled -k "regex:$name" -c 1 --metrics "$metrics" --csv \
      "$build/bench/flashlane_softmax_sweep" --hdims "$hd" --seqlens "${NCU_SEQLEN:-16384}" \
      --passes 1 --reps 1 > "$out/ncu-$hd-$e-$r.csv" 2> "$out/ncu-$hd-$e-$r.err"
    echo "--- ncu hdim $hd per16 $e threshold $r"
    grep -E '"(sm__|smsp__|gpu__)' "$out/ncu-$hd-$e-$r.csv" | awk -F'","' '{print $(NF-2), $NF}' | tr -d '"'
  done
fi
if has bench; then
  receipts="$out/fwd-canonical-with-peers.jsonl"
  ( cd "$root" && "$build/tools/flashlane" bench --preset canonical --backends sm90 --dirs fwd \
      --budget-s 0 --out "$out/fwd-canonical.jsonl" --overwrite > "$out/bench.log" 2>&1 )
  summary+=("bench: rc=$? $(grep -cE '"requested_backend": *"sm90"' "$out/fwd-canonical.jsonl") sm90 rows")
  tail -3 "$out/bench.log"
  python3 "$root/bench/peers/torch_sdpa.py" --out "$out/peer-sdpa.jsonl" --dirs fwd \
    --flashlane "$out/fwd-canonical.jsonl" > "$out/peer.log" 2>&1
  summary+=("peers: rc=$? $(wc -l < "$out/peer-sdpa.jsonl") rows")
  cat "$out/fwd-canonical.jsonl" "$out/peer-sdpa.jsonl" > "$receipts"
  tail -45 "$out/peer.log"
fi
if has sinks; then
  ( cd "$root" && "$build/tools/flashlane" bench --preset canonical --backends sm90 --dirs fwd,bwd \
      --learnable-sink random --budget-s "${SINKS_BUDGET_S:-240}" --out "$out/sinks-canonical.jsonl" \
      --overwrite > "$out/sinks-bench.log" 2>&1 )
  summary+=("sinks bench: rc=$? $(grep -cE '"surface": *"attention_sinks"' "$out/sinks-canonical.jsonl") attention_sinks rows")
  tail -3 "$out/sinks-bench.log"
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    timeout 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$build/tests/flashlane_gpu_tests" \
      --gtest_filter="Sm90Forward.EveryHeadDimAndDtype:Sm90Forward.AdversarialScoresForTheRescaling" \
      > "$out/$tool.log" 2>&1
    summary+=("$tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.log" | tr '\n' ' ')")
  done
fi
echo "=== summary"; printf '%s\n' "${summary[@]}"
