#!/usr/bin/env bash
# Builds the standalone sm90 forward harness into $OUT_DIR (default gpu_carry/): one nvcc at a
# time (the dev machine has 2 cores). HEAD_DIMS limits the instantiations (default: all).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR=${OUT_DIR:-gpu_carry}
HEAD_DIMS=${HEAD_DIMS:-"64 96 128 192 256"}
mkdir -p "$OUT_DIR/obj"
NVCC=${NVCC:-nvcc}
FLAGS=(-std=c++17 -O3 -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
       --use_fast_math -DNDEBUG -Iinclude -Isrc -isystem .deps/cutlass/include
       -Xcompiler -fPIC -Xptxas=--warn-on-spills -Xptxas -v)
defs=()
for hd in $HEAD_DIMS; do defs+=(-DFLASHLANE_SM90_HDIM_$hd=1); done
objs=()
for hd in $HEAD_DIMS; do
  for f in src/sm90/fwd/instantiations/fwd_hdim${hd}_*.cu; do
    o="$OUT_DIR/obj/$(basename "${f%.cu}").o"
    if [[ ! -f "$o" || "$f" -nt "$o" || -n "$(find src/sm90/fwd -name '*.h' -newer "$o")" ]]; then
      echo "nvcc $f"
      "$NVCC" "${FLAGS[@]}" -c "$f" -o "$o" 2>"$o.log" || { cat "$o.log"; exit 1; }
      grep -E "registers|spill" "$o.log" | grep -v "^$" | sed 's/^/  /' | tail -2
    fi
    objs+=("$o")
  done
done
# Tuning experiments (other tile shapes), used by the harness's "variants" mode.
o="$OUT_DIR/obj/variants.o"
if [[ ! -f "$o" || bench/sm90_fwd_harness/variants.cu -nt "$o" || -n "$(find src/sm90/fwd -name '*.h' -newer "$o")" ]]; then
  echo "nvcc variants.cu"
  "$NVCC" "${FLAGS[@]}" -c bench/sm90_fwd_harness/variants.cu -o "$o" 2>"$o.log" || { cat "$o.log"; exit 1; }
  grep -E "spill" "$o.log" | sed 's/^/  /'
fi
objs+=("$o")
"$NVCC" "${FLAGS[@]}" "${defs[@]}" -c src/sm90/sm90_forward.cu -o "$OUT_DIR/obj/sm90_forward.o"
"$NVCC" -std=c++17 -O2 -Iinclude -Isrc -c bench/sm90_fwd_harness/harness.cu -o "$OUT_DIR/obj/harness.o"
"$NVCC" -std=c++17 -O2 -Iinclude -Isrc -x c++ -c src/core/status.cpp -o "$OUT_DIR/obj/status.o"
"$NVCC" -std=c++17 -O2 -Iinclude -Isrc -x c++ -c src/core/tensor.cpp -o "$OUT_DIR/obj/tensor.o"
"$NVCC" -gencode arch=compute_90a,code=sm_90a -o "$OUT_DIR/sm90_fwd_harness" "${objs[@]}" \
  "$OUT_DIR/obj/sm90_forward.o" "$OUT_DIR/obj/harness.o" "$OUT_DIR/obj/status.o" \
  "$OUT_DIR/obj/tensor.o" -lpthread
echo "built $OUT_DIR/sm90_fwd_harness"
