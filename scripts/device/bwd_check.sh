#!/usr/bin/env bash
# Runs on the GPU machine: the backward's checks in one call. Builds the project there
# (scripts/device/build.sh, headers and libraries from .gpu_carry/deps), runs the steps named in
# BWD_STEPS and prints a summary last. Logs and JSON lines go to $OUT.
#   BWD_HEAD_DIMS  head dims of the library build (default "64;128;256")
#   BWD_STEPS      any of:
#                  tests     the gpu test binary (gtest filter BWD_TEST_FILTER, default all)
#                  det       deterministic against atomic dQ, each cell of the canonical grid
#                            from 1k timed in both modes back to back (build/bench/
#                            flashlane_bwd_timing, FLASHLANE_TIMING_REPS=BWD_TIMING_REPS, default
#                            10; head dims BWD_DET_HEAD_DIMS, default "64;128;256"): det.txt
#                            and the ratio table det-summary.txt. Every other source tree in
#                            .gpu_carry/ab/<label>/ (the sources before a change, or variants of
#                            it) is built too (its timing program only, head dims
#                            BWD_OLD_HEAD_DIMS, default 128), and its timing program runs each of
#                            its cells right after this tree's, so the table also gives this
#                            tree ("new") against each of them in both modes.
#                  sanitize  compute-sanitizer memcheck and racecheck on small backward tests
#                  default "tests det sanitize"
# The receipts of the canonical grid come from scripts/device/receipts.sh.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out}"; mkdir -p "$out"
steps="${BWD_STEPS:-tests det sanitize}"
build="$root/build-device"
summary=()
has() { [[ " $steps " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
FLASHLANE_BUILD_DIR="$build" "$root/scripts/device/build.sh" \
  -DFLASHLANE_SM90_HEAD_DIMS="${BWD_HEAD_DIMS:-64;128;256}" || exit 1
grep -E "Registers are spilled" "$build.build.log" | sed -E "s/.*function '(_Z[^']*)', (.*)/\2  \1/" \
  | sort -u > "$out/spills.txt"
summary+=("build: ok; $(wc -l < "$out/spills.txt") kernels with spills (spills.txt)")
alt_labels=()
if has det && [[ -d "$root/.gpu_carry/ab" ]]; then
  for tree in "$root"/.gpu_carry/ab/*/; do
    [[ -f "$tree/CMakeLists.txt" ]] || continue
    label="$(basename "$tree")"
    if FLASHLANE_SOURCE_DIR="$tree" FLASHLANE_BUILD_DIR="$root/build-device-$label" \
        FLASHLANE_BUILD_TARGET=flashlane_bwd_timing "$root/scripts/device/build.sh" \
        -DFLASHLANE_SM90_HEAD_DIMS="${BWD_OLD_HEAD_DIMS:-128}"; then
      alt_labels+=("$label")
      grep -E "Registers are spilled" "$root/build-device-$label.build.log" \
        | sed -E "s/.*function '(_Z[^']*)', (.*)/\2  \1/" | sort -u > "$out/spills-$label.txt"
    fi
    summary+=("build of .gpu_carry/ab/$label: $([[ " ${alt_labels[*]} " == *" $label "* ]] && echo ok || echo failed)")
  done
fi
if has tests; then
  # gtest directly: the GPU machine's CMake reads this build's discovered-test files poorly.
  timeout 420 "$build/tests/flashlane_gpu_tests" --gtest_brief=1 \
    --gtest_filter="${BWD_TEST_FILTER:-*}" > "$out/gpu-tests.log" 2>&1
  summary+=("gpu tests: rc=$? $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/gpu-tests.log" | tr '\n' ' ')")
  grep -E "Failure|FAILED|error" "$out/gpu-tests.log" | head -30
fi
if has det; then
  cells=()
  IFS=';' read -r -a dims <<< "${BWD_DET_HEAD_DIMS:-64;128;256}"
  for d in "${dims[@]}"; do
    for causal in 0 1; do
      for s in 1024 2048 4096 8192 16384; do
        cells+=("$(( 16384 / s )) $s $(( 2048 / d )) $d $causal 0" "$(( 16384 / s )) $s $(( 2048 / d )) $d $causal 1")
      done
    done
  done
  IFS=';' read -r -a old_dims <<< "${BWD_OLD_HEAD_DIMS:-128}"
  : > "$out/det.txt"
  for cell in "${cells[@]}"; do
    read -r _ _ _ d _ _ <<< "$cell"
    # shellcheck disable=SC2086
    FLASHLANE_TIMING_REPS="${BWD_TIMING_REPS:-10}" timeout 60 "$build/bench/flashlane_bwd_timing" \
      $cell | sed 's/^bwd /bwd new /' >> "$out/det.txt" 2>&1
    if [[ " ${old_dims[*]} " == *" $d "* ]]; then
      for label in "${alt_labels[@]}"; do
        # shellcheck disable=SC2086
        FLASHLANE_TIMING_REPS="${BWD_TIMING_REPS:-10}" timeout 60 \
          "$root/build-device-$label/bench/flashlane_bwd_timing" $cell \
          | sed "s/^bwd /bwd $label /" >> "$out/det.txt" 2>&1
      done
    fi
  done
  summary+=("det: $(grep -c '^bwd ' "$out/det.txt") timed cells (det.txt)")
  python3 - "$out/det.txt" "${alt_labels[@]}" > "$out/det-summary.txt" <<'EOF'
import re, sys
labels = sys.argv[2:]
t = {}
for line in open(sys.argv[1]):
    m = re.match(r"bwd (\S+) b=\d+ s=(\d+) h=\d+ d=(\d+) causal=(\d) det=(\d): "
                 r"[\d.]+ ms\s+([\d.]+) TFLOP/s", line)
    if m:
        side, s, d, c, det, tf = m.groups()
        t[(side, int(d), int(c), int(s), int(det))] = float(tf)
def ratio(a, b):
    return f"{t[a] / t[b]:.3f}" if a in t and b in t else "-"
print("TFLOP/s of the backward, bf16, canonical grid (batch 16k/seqlen, heads 2048/head_dim)")
head = "head_dim causal seqlen  atomic    det det/atomic"
for l in labels:
    head += f" | {l}: atomic    det det/atomic new/{l}(atomic) new/{l}(det)"
print(head)
worst = {}
for (side, d, c, s, det) in sorted(k for k in t if k[0] == "new" and k[4] == 0):
    a, x = ("new", d, c, s, 0), ("new", d, c, s, 1)
    row = f"{d:8d} {c:6d} {s:6d} {t[a]:7.1f} {t.get(x, 0):6.1f} {ratio(x, a):>10}"
    for l in labels:
        la, lx = (l, d, c, s, 0), (l, d, c, s, 1)
        row += (f" | {t.get(la, 0):{len(l) + 8}.1f} {t.get(lx, 0):6.1f} {ratio(lx, la):>10}"
                f" {ratio(a, la):>{len(l) + 13}} {ratio(x, lx):>{len(l) + 9}}")
    print(row)
    for l in ["new"] + labels:
        la, lx = (l, d, c, s, 0), (l, d, c, s, 1)
        if s >= 4096 and la in t and lx in t:
            worst[(l, d, c)] = min(worst.get((l, d, c), 9), t[lx] / t[la])
for l in ["new"] + labels:
    print(f"worst det/atomic from 4k per (head_dim, causal), {l}:",
          {f"{d}/{c}": round(r, 3) for (k, d, c), r in sorted(worst.items()) if k == l})
EOF
  cat "$out/det-summary.txt"
fi
if has sanitize; then
  for tool in memcheck racecheck; do
    timeout "${SANITIZE_TIMEOUT_S:-150}" compute-sanitizer --tool "$tool" --error-exitcode 9 "$build/tests/flashlane_gpu_tests" \
      --gtest_filter="Sm90Backward.EveryHeadDimAndDtype:Sm90Backward.RowsWithoutKeysIgnoreTheirO" \
      > "$out/$tool.log" 2>&1
    summary+=("$tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.log" | tr '\n' ' ')")
  done
fi
echo "=== summary"; printf '%s\n' "${summary[@]}"
