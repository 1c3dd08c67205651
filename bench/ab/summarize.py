#!/usr/bin/env python3
"""Summarizes an A/B timing file of bench/ab/kernel_timing (JSON lines, labels "old" and "new").

    bench/ab/summarize.py ab.jsonl [--threshold 0.02]

Per (direction, head_dim, causal, seqlen): the median over passes of each side's median_ms,
new/old time ratio, and the spread between passes of the same side (max/min - 1), so that a
difference can be read against the noise. Cells where new is slower by more than the threshold
and by more than the spread are flagged. The last line is a one-line summary.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--threshold", type=float, default=0.02)
    args = ap.parse_args()
    times = defaultdict(lambda: defaultdict(list))
    for line in open(args.path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        key = (r["dir"], r["hdim"], r["causal"], r["seqlen"])
        times[key][r["label"]].append(r["median_ms"])
    print(f"{'dir':4} {'hdim':>4} {'causal':>6} {'seqlen':>6} {'old_ms':>9} {'new_ms':>9} "
          f"{'new/old':>8} {'spread':>7}  flag")
    ratios, flagged = [], []
    for key in sorted(times):
        side = times[key]
        if not side.get("old") or not side.get("new"):
            continue
        old, new = statistics.median(side["old"]), statistics.median(side["new"])
        spread = max(max(v) / min(v) - 1 for v in (side["old"], side["new"]))
        ratio = new / old
        ratios.append(ratio)
        flag = ""
        if ratio > 1 + args.threshold and ratio - 1 > spread:
            flag = "SLOWER"
            flagged.append(key)
        d, h, c, s = key
        print(f"{d:4} {h:>4} {c:>6} {s:>6} {old:9.4f} {new:9.4f} {ratio:8.4f} {spread:7.4f}  {flag}")
    if not ratios:
        print("no cells with both sides")
        return 1
    gm = statistics.geometric_mean(ratios)
    print(f"{len(ratios)} cells, new/old time: geomean {gm:.4f}, min {min(ratios):.4f}, "
          f"max {max(ratios):.4f}; {len(flagged)} slower by > {args.threshold:.0%} beyond the spread"
          + (": " + ", ".join(f"{d}/{h}/{'c' if c else 'nc'}/{s}" for d, h, c, s in flagged)
             if flagged else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
