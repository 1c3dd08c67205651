#!/usr/bin/env python3
"""Summarizes flashlane_softmax_sweep output (JSON lines): per (head_dim, causal, seqlen), each
variant's median time over passes relative to the baseline variant (no emulated exp2, rescale on
every growth, tile group 1 or as the schedule sets it (0), schedule BASELINE), the spread between
passes, and the consistency check against the (0, 0) variant with the builder's schedule.

    summarize.py sweep.jsonl [BASELINE]      BASELINE: a schedule name (default auto)

Ratios are new time / baseline time: below 1 is faster. Per head dim, the geometric mean over
cells; a variant is a candidate for the kernel table when its geomean and its worst cell beat
the baseline by more than the spread."""
import collections
import json
import math
import statistics
import sys


def main(path, baseline_schedule="auto"):
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    cells = collections.defaultdict(lambda: collections.defaultdict(list))
    tflops = collections.defaultdict(list)
    diffs = {}
    for r in rows:
        cell = (r["hdim"], r["causal"], r["seqlen"])
        var = (r["exp2_emulated_per16"], r["rescale_threshold"], r.get("tile_group", 1),
               r.get("schedule", "auto"))
        cells[cell][var].append(r["median_ms"])
        tflops[cell + var].append(r["tflops"])
        diffs[cell + var] = tuple(float("nan") if r[k] is None else r[k]
                                  for k in ("max_abs_diff_o", "max_abs_diff_lse"))
    by_hd = collections.defaultdict(lambda: collections.defaultdict(list))
    worst_diff = collections.defaultdict(lambda: [0.0, 0.0])
    print("hdim causal seqlen  variant(per16,thr,group,schedule)  ratio  spread  tflops")
    for cell in sorted(cells):
        variants = cells[cell]
        # The (0, 0) softmax variant with the baseline schedule; a head dim swept with one
        # softmax variant only (e.g. its table row) is its own baseline.
        with_schedule = [v for v in sorted(variants) if v[3] == baseline_schedule]
        base_key = next((v for v in with_schedule if v[0] == 0 and v[1] == 0),
                        with_schedule[0] if len({v[:2] for v in variants}) == 1 and with_schedule
                        else None)
        if base_key is None:
            continue
        base = variants[base_key]
        base_med = statistics.median(base)
        for var in sorted(variants):
            ts = variants[var]
            med = statistics.median(ts)
            spread = (max(ts) - min(ts)) / med if len(ts) > 1 else 0.0
            ratio = med / base_med
            by_hd[cell[0]][var].append(ratio)
            d = diffs[cell + var]
            w = worst_diff[(cell[0],) + var]
            w[0] = max(w[0], d[0]) if not math.isnan(d[0]) else float("nan")
            w[1] = max(w[1], d[1]) if not math.isnan(d[1]) else float("nan")
            if var != base_key:
                print(f"{cell[0]:4d} {str(cell[1]):6s} {cell[2]:6d}  {str(var):30s}  {ratio:.3f}  "
                      f"{spread:.3f}  {statistics.median(tflops[cell + var]):.0f}")
    print(f"\nper head dim: geomean ratio, worst cell, best cell, max |dO|, max |dLSE| vs schedule "
          f"{baseline_schedule}")
    for hd in sorted(by_hd):
        for var in sorted(by_hd[hd]):
            rs = by_hd[hd][var]
            g = math.exp(sum(math.log(x) for x in rs) / len(rs))
            w = worst_diff[(hd,) + var]
            print(f"  hdim {hd:3d} {str(var):30s}  geomean {g:.3f}  worst {max(rs):.3f}  best {min(rs):.3f}"
                  f"  dO {w[0]:.3g}  dLSE {w[1]:.3g}")


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]))
