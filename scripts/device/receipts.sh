#!/usr/bin/env bash
# Runs on the GPU machine: measures again the receipts that docs/STATUS.md counts, after a change
# of the sm90 kernels has made the old ones stale (a new kernel fingerprint). Builds the project
# there (scripts/device/build.sh, headers and libraries from .gpu_carry/deps), runs the steps
# named in RECEIPT_STEPS and prints a summary last. Each step writes one receipts file to $OUT,
# named as in bench/results (prefix it with the date and device there):
#   training  `flashlane bench` on its default preset (the canonical grid, forward and backward,
#             sm90 with reference_cuda as peer, every row validated): training-default-preset.jsonl
#   peers     the PyTorch SDPA peers (cuDNN, FlashAttention-2) of both directions, timed after
#             the training step in the same call and appended to its file
#   varlen    `flashlane bench --preset varlen` (packed varlen batches, forward and backward, sm90
#             with reference_cuda as peer): varlen.jsonl
#   decode    `flashlane bench --preset decode` (budget DECODE_BUDGET_S, default 150 s), then
#             bench/peers/torch_sdpa_decode.py appending to the same file: decode-with-peers.jsonl
#   sinks     `flashlane bench --preset SINKS_PRESET (default canonical) --backends SINKS_BACKENDS
#             (default sm90,reference_cuda: the peer the rung above R2 asks for) --dirs fwd,bwd
#             --learnable-sink random` (budget SINKS_BUDGET_S, default 150 s): sinks-<preset>.jsonl
#   graph     the Python package (scripts/device/python_install.sh, head dims PY_HEAD_DIMS,
#             default "64;128", headers from .gpu_carry/deps), then bench/decode_graph_step.py
#             with GRAPH_ARGS: decode-graph-step.jsonl
# Default RECEIPT_STEPS: "training varlen decode sinks graph".
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/out}"; mkdir -p "$out"
steps="${RECEIPT_STEPS:-training varlen decode sinks graph}"
build="$root/build-device"
tool="$build/tools/flashlane"
summary=()
has() { [[ " $steps " == *" $1 "* ]]; }
took() { echo "$(( $(date +%s) - $1 )) s"; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
t0=$(date +%s)
FLASHLANE_BUILD_DIR="$build" "$root/scripts/device/build.sh" -DFLASHLANE_SM90_HEAD_DIMS="64;128;256" || exit 1
summary+=("build: $(took "$t0")")
if has training; then
  t0=$(date +%s); f="$out/training-default-preset.jsonl"
  ( cd "$root" && "$tool" bench --budget-s 0 --out "$f" --overwrite > "$out/training.log" 2>&1 )
  summary+=("training: rc=$? $(grep -cE '"requested_backend": *"sm90"' "$f") sm90 rows, $(took "$t0")")
  tail -2 "$out/training.log"
  if has peers; then
    t0=$(date +%s)
    python3 "$root/bench/peers/torch_sdpa.py" --out "$out/peer-sdpa.jsonl" --dirs fwd,bwd \
      --flashlane "$f" > "$out/peers.log" 2>&1
    summary+=("peers: rc=$? $(wc -l < "$out/peer-sdpa.jsonl") rows, $(took "$t0")")
    cat "$out/peer-sdpa.jsonl" >> "$f" && rm -f "$out/peer-sdpa.jsonl"
  fi
fi
if has varlen; then
  t0=$(date +%s); f="$out/varlen.jsonl"
  ( cd "$root" && "$tool" bench --preset varlen --budget-s 0 --out "$f" --overwrite \
      > "$out/varlen.log" 2>&1 )
  summary+=("varlen: rc=$? $(grep -cE '"requested_backend": *"sm90"' "$f") sm90 rows, $(took "$t0")")
  tail -2 "$out/varlen.log"
fi
if has decode; then
  t0=$(date +%s); f="$out/decode-with-peers.jsonl"
  ( cd "$root" && timeout 420 "$tool" bench --preset decode --budget-s "${DECODE_BUDGET_S:-150}" \
      --out "$f" --overwrite > "$out/decode.log" 2>&1 )
  summary+=("decode: rc=$? $(grep -cE '"requested_backend": *"sm90"' "$f") sm90 rows, $(took "$t0")")
  timeout 300 python3 "$root/bench/peers/torch_sdpa_decode.py" --out "$f" > "$out/decode-peers.log" 2>&1
  summary+=("decode peers: rc=$? $(grep -cE 'torch_sdpa_' "$f") rows, $(took "$t0")")
  python3 "$root/bench/decode_table.py" "$f" > "$out/decode-table.txt" 2>&1
  grep -E "^bar " "$out/decode-table.txt"
fi
if has sinks; then
  t0=$(date +%s); f="$out/sinks-${SINKS_PRESET:-canonical}.jsonl"
  ( cd "$root" && "$tool" bench --preset "${SINKS_PRESET:-canonical}" \
      --backends "${SINKS_BACKENDS:-sm90,reference_cuda}" --dirs fwd,bwd \
      --learnable-sink random --budget-s "${SINKS_BUDGET_S:-150}" --out "$f" --overwrite \
      > "$out/sinks.log" 2>&1 )
  summary+=("sinks: rc=$? $(grep -cE '"surface": *"attention_sinks"' "$f") rows, $(took "$t0")")
  tail -2 "$out/sinks.log"
fi
if has graph; then
  t0=$(date +%s)
  # The package needs the nlohmann and CUTLASS headers, which .gpu_carry/deps/include holds.
  hdr="$root/build/pyheaders-from-deps"; mkdir -p "$hdr"
  ln -sfn "$root/.gpu_carry/deps/include" "$hdr/nlohmann-include"
  ln -sfn "$root/.gpu_carry/deps/include" "$hdr/cutlass-include"
  [[ -s "$root/.gpu_carry/deps/COMMIT" ]] && cp "$root/.gpu_carry/deps/COMMIT" "$hdr/COMMIT"
  # shellcheck source=scripts/device/python_install.sh
  source "$root/scripts/device/python_install.sh"
  if flashlane_python_install "$root" "$out" "$hdr" "${PY_HEAD_DIMS:-64;128}" ON "$(nproc)" python3; then
    summary+=("python package: $FL_INSTALLED, $(took "$t0")")
    t0=$(date +%s); f="$out/decode-graph-step.jsonl"
    # shellcheck disable=SC2086
    ( cd "$root" && timeout 300 "$FL_PY" bench/decode_graph_step.py --out "$f" ${GRAPH_ARGS:-} \
        > "$out/graph.log" 2>&1 )
    summary+=("graph step: rc=$? $(wc -l < "$f") rows, $(took "$t0")")
    tail -3 "$out/graph.log"
  else
    summary+=("python package: failed (python-build.log)")
  fi
fi
echo "=== summary"; printf '%s\n' "${summary[@]}"
