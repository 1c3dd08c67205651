#!/usr/bin/env python3
"""Plots the canonical forward grid from one receipts file that holds flashlane's rows and the
peers' rows of the same run (`flashlane bench --preset canonical` followed by
bench/peers/torch_sdpa.py, both appended to one file): TFLOP/s per seqlen, one panel per
(head_dim, causal), one line per backend, and each sm90 point's ratio to cuDNN.

    python3 bench/plot_canonical.py RECEIPTS.jsonl OUT.png [--dir fwd]

Only sm90 rows that count for status (executed and validated) are plotted; peer rows never
count and are plotted as measured. Needs matplotlib."""
import argparse
import collections
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"sm90": "flashlane sm90", "torch_sdpa_cudnn": "cuDNN (SDPA)",
          "torch_sdpa_flash2": "FlashAttention-2 (SDPA)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("receipts")
    ap.add_argument("out")
    ap.add_argument("--dir", default="fwd")
    a = ap.parse_args()
    points = collections.defaultdict(dict)  # (hdim, causal, backend) -> seqlen -> tflops
    for line in open(a.receipts):
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("direction") != a.dir or r.get("status", "ok") != "ok":
            continue
        backend = r["requested_backend"]
        if backend == "sm90" and not r.get("counts_for_status"):
            continue
        p = r["problem"]
        causal = bool(p.get("causal")) or p.get("mask", "no_mask") != "no_mask"
        tf = r["metrics"].get("tflops")
        if tf is None:
            continue
        points[(p["head_dim"], causal, backend)][p["seqlen_q"]] = tf
    hdims = sorted({k[0] for k in points})
    fig, axes = plt.subplots(2, len(hdims), figsize=(4.2 * len(hdims), 7), squeeze=False)
    for col, hd in enumerate(hdims):
        for row, causal in enumerate((False, True)):
            ax = axes[row][col]
            for backend in ("sm90", "torch_sdpa_cudnn", "torch_sdpa_flash2"):
                pts = points.get((hd, causal, backend))
                if not pts:
                    continue
                xs = sorted(pts)
                ax.plot(xs, [pts[x] for x in xs], marker="o", label=LABELS.get(backend, backend))
            sm, cu = points.get((hd, causal, "sm90"), {}), points.get((hd, causal, "torch_sdpa_cudnn"), {})
            for x in sorted(sm):
                if x in cu:
                    ax.annotate(f"{sm[x] / cu[x]:.2f}x", (x, sm[x]), textcoords="offset points",
                                xytext=(0, 6), ha="center", fontsize=7)
            ax.set_xscale("log", base=2)
            ax.set_title(f"head_dim {hd}, {'causal' if causal else 'non-causal'}")
            ax.set_xlabel("seqlen (16k tokens per batch)")
            ax.set_ylabel("TFLOP/s")
            ax.grid(True, alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"{a.dir}, bf16, canonical grid; labels: sm90 / cuDNN ({a.receipts.split('/')[-1]})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
