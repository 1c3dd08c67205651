#!/usr/bin/env python3
"""Side-by-side decode table and the decode bars (../shared/BENCHMARKS.md "The bars"), judged on
the rows of ONE receipts file: `flashlane bench --preset decode` and
bench/peers/torch_sdpa_decode.py appended to the same file in one device call.

    python3 bench/decode_table.py RECEIPTS.jsonl [--backend sm90] [--plot OUT.png]
                                               [--allow-unchecked] [--markdown]

Table, one line per flashlane cell (layout, batch, cache length, GQA): the backend's GB/s,
its % of the copy bandwidth measured in the same run (metrics.copy_gbps of its row), cuDNN's
and FlashAttention-2's GB/s (the peers run the dense layout; a paged cell is set beside the dense
peer of the same batch, cache length and heads) and backend / cuDNN. GB/s is the same formula
for every column: (K and V of heads_kv heads for the cached keys + q + o) / median time.

Bars (PASS/FAIL each, with the failing cells):
  (a) >= 90% of copy bandwidth at batch >= 16;
  (b) >= 75% of copy bandwidth at batch 1 with a 32k cache;
  (c) >= 1.2x cuDNN at batch 1 with 8k and 32k caches;
  (d) >= 1.0x cuDNN on every cell where both ran.
A cell counts toward a bar only with a number whose check passed (metrics.check "pass");
a refused, failed or unchecked cell fails the bar it belongs to, saying why (--allow-unchecked
judges the numbers of unchecked rows, saying so). Cells skipped for memory are listed, not
judged. Exit 0 when every bar passes, 1 otherwise, 2 on an unreadable file.
"""
import argparse
import json
import statistics
import sys

PEERS = {"torch_sdpa_cudnn": "cudnn", "torch_sdpa_flash2": "flash2"}
BARS = [
    ("a", ">= 90% of copy bandwidth at batch >= 16"),
    ("b", ">= 75% of copy bandwidth at batch 1, 32k cache"),
    ("c", ">= 1.2x cuDNN at batch 1, 8k and 32k caches"),
    ("d", ">= 1.0x cuDNN on every cell where both ran"),
]


def cell_key(p):
    return (int(p["batch"]), int(p.get("cache_len", p.get("seqlen_k"))), int(p["heads_q"]),
            int(p["heads_kv"]), int(p["head_dim"]))


def cell_name(key, layout):
    b, s, hq, hkv, d = key
    return f"{layout} b{b} kv{s} {hq}/{hkv} d{d}"


def load(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON: {e}")
    return [r for r in rows if r.get("direction") == "decode"]


def collect(rows, backend):
    """(ours, peers, copy): ours[(key, layout)] = row of `backend`; peers[(key, peer)] = row."""
    ours, peers, copies = {}, {}, []
    for r in rows:
        p, m = r.get("problem", {}), r.get("metrics") or {}
        if m.get("copy_gbps"):
            copies.append(m["copy_gbps"])
        be = r.get("requested_backend")
        if be in PEERS:
            peers[(cell_key(p), PEERS[be])] = r
        elif be == backend:
            ours[(cell_key(p), p.get("layout", "dense"))] = r
    copy = statistics.median(copies) if copies else None
    return ours, peers, copy


def number(r):
    """GB/s of a row, or None when it has none (refused, skipped, failed)."""
    if r is None or r.get("status") != "ok":
        return None
    return (r.get("metrics") or {}).get("gbps")


def why_not(r):
    if r is None:
        return "no row"
    st = r.get("status", "")
    if st != "ok":
        return st[:80]
    check = (r.get("metrics") or {}).get("check", "")
    if check != "pass":
        return f"check {check or 'missing'}"
    return ""


def judge(ours, peers, copy_default, allow_unchecked):
    """Per bar: (applicable cells, failures [(cell, reason)], notes)."""
    results = {b: {"cells": 0, "fail": [], "notes": []} for b, _ in BARS}
    for (key, layout), r in sorted(ours.items()):
        b, s = key[0], key[1]
        name = cell_name(key, layout)
        if r.get("status", "").startswith("skipped"):
            continue
        m = r.get("metrics") or {}
        copy = m.get("copy_gbps") or copy_default
        g = number(r)
        problem = why_not(r)
        usable = g is not None and (problem == "" or (allow_unchecked and problem.startswith("check not_run")))
        cudnn = number(peers.get((key, "cudnn")))

        def check(bar, ok, detail):
            results[bar]["cells"] += 1
            if not usable:
                results[bar]["fail"].append((name, problem or "no number"))
            elif not ok:
                results[bar]["fail"].append((name, detail))
            elif problem:
                results[bar]["notes"].append(f"{name}: judged unchecked ({problem})")

        if b >= 16:
            ok = bool(g and copy and g >= 0.90 * copy)
            check("a", ok, f"{100 * g / copy:.1f}% of copy" if g and copy else "no copy bandwidth")
        if b == 1 and s == 32768:
            ok = bool(g and copy and g >= 0.75 * copy)
            check("b", ok, f"{100 * g / copy:.1f}% of copy" if g and copy else "no copy bandwidth")
        if b == 1 and s in (8192, 32768):
            if cudnn is None:
                results["c"]["cells"] += 1
                results["c"]["fail"].append((name, "no cuDNN number: " + why_not(peers.get((key, "cudnn")))))
            else:
                check("c", bool(g and g >= 1.2 * cudnn), f"{g / cudnn:.2f}x cuDNN" if g else "")
        if cudnn is not None and g is not None:
            check("d", g >= 1.0 * cudnn, f"{g / cudnn:.2f}x cuDNN")
    return results


def fmt(x, f="{:7.0f}"):
    return f.format(x) if x is not None else "      -"


def print_table(ours, peers, copy_default, backend):
    print(f"{'cell':34s} {backend + ' GB/s':>10s} {'%copy':>6s} {'cuDNN':>7s} {'FA2':>7s} "
          f"{backend + '/cuDNN':>11s}  check / status")
    for (key, layout), r in sorted(ours.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m = r.get("metrics") or {}
        g = number(r)
        copy = m.get("copy_gbps") or copy_default
        c, f2 = number(peers.get((key, "cudnn"))), number(peers.get((key, "flash2")))
        pct = f"{100 * g / copy:6.1f}" if g and copy else "     -"
        ratio = f"{g / c:11.2f}" if g and c else "          -"
        status = r.get("status", "")
        note = m.get("check", "") if status == "ok" else status[:60]
        calls = {(peers.get((key, p)) or {}).get("peer_call") for p in ("cudnn", "flash2")} - {None, "sdpa enable_gqa"}
        if calls:
            note += "  (peer: " + ", ".join(sorted(calls)) + ")"
        print(f"{cell_name(key, layout):34s} {fmt(g):>10s} {pct} {fmt(c)} {fmt(f2)} {ratio}  {note}")


def markdown(ours, peers, backend):
    """One Markdown table per (layout, GQA): rows batch, columns cache length, each cell
    "backend / cuDNN / FA2 GB/s (backend / cuDNN)"; '-' where a number is missing."""
    groups = sorted({(layout, k[2], k[3], k[4]) for k, layout in ours})
    for layout, hq, hkv, d in groups:
        keys = [k for k, l in ours if l == layout and (k[2], k[3], k[4]) == (hq, hkv, d)]
        batches = sorted({k[0] for k in keys})
        lens = sorted({k[1] for k in keys})
        print(f"\n{layout}, GQA {hq}/{hkv}, head_dim {d}: {backend} / cuDNN / FA2 GB/s "
              f"({backend} / cuDNN)\n")
        print("| batch | " + " | ".join(f"{s // 1024}k" for s in lens) + " |")
        print("|---|" + "---|" * len(lens))
        for b in batches:
            cells = []
            for s in lens:
                key = (b, s, hq, hkv, d)
                g = number(ours.get((key, layout)))
                c = number(peers.get((key, "cudnn")))
                f2 = number(peers.get((key, "flash2")))
                if g is None:
                    cells.append("-")
                    continue
                txt = f"**{g:.0f}** / {fmt(c, '{:.0f}').strip()} / {fmt(f2, '{:.0f}').strip()}"
                cells.append(txt + (f" ({g / c:.2f}x)" if c else ""))
            print(f"| {b} | " + " | ".join(cells) + " |")


def plot(ours, peers, path, backend):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gqas = sorted({(k[2], k[3]) for k, _ in ours})
    batches = sorted({k[0] for k, _ in ours})
    fig, axes = plt.subplots(len(gqas), len(batches), figsize=(3.2 * len(batches), 3 * len(gqas)),
                             squeeze=False)
    for i, (hq, hkv) in enumerate(gqas):
        for j, b in enumerate(batches):
            ax = axes[i][j]
            series = {}
            for (key, layout), r in ours.items():
                if key[0] == b and (key[2], key[3]) == (hq, hkv) and number(r):
                    series.setdefault(f"{backend} {layout}", []).append((key[1], number(r)))
            for (key, peer), r in peers.items():
                if key[0] == b and (key[2], key[3]) == (hq, hkv) and number(r):
                    series.setdefault(peer, []).append((key[1], number(r)))
            for label, pts in sorted(series.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_title(f"batch {b}, GQA {hq}/{hkv}", fontsize=9)
            ax.set_xlabel("cache length")
            ax.set_ylabel("GB/s")
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("receipts")
    ap.add_argument("--backend", default="sm90")
    ap.add_argument("--plot", default=None, help="write a matplotlib plot here")
    ap.add_argument("--markdown", action="store_true",
                    help="also print batch x cache-length Markdown tables per layout and GQA")
    ap.add_argument("--allow-unchecked", action="store_true",
                    help="judge numbers of rows whose check did not run (said per cell)")
    a = ap.parse_args(argv)
    try:
        rows = load(a.receipts)
    except OSError as e:
        print(f"decode_table: {e}", file=sys.stderr)
        return 2
    ours, peers, copy = collect(rows, a.backend)
    print(f"{len(ours)} {a.backend} decode cells, {len(peers)} peer rows; copy bandwidth "
          f"{copy:.0f} GB/s (median of the rows' copy_gbps)" if copy else
          f"{len(ours)} {a.backend} decode cells, {len(peers)} peer rows; no copy bandwidth in the file")
    print_table(ours, peers, copy, a.backend)
    if a.markdown:
        markdown(ours, peers, a.backend)
    skipped = [cell_name(k, l) for (k, l), r in sorted(ours.items()) if r.get("status", "").startswith("skipped")]
    if skipped:
        print(f"skipped (memory budget, not judged): {', '.join(skipped)}")
    results = judge(ours, peers, copy, a.allow_unchecked)
    all_pass = True
    for bar, text in BARS:
        res = results[bar]
        ok = res["cells"] > 0 and not res["fail"]
        all_pass = all_pass and ok
        detail = f"{res['cells']} cells" if res["cells"] else "no cells in the file"
        print(f"bar ({bar}) {text}: {'PASS' if ok else 'FAIL'} ({detail}"
              f"{', ' + str(len(res['fail'])) + ' failing' if res['fail'] else ''})")
        for name, why in res["fail"]:
            print(f"    {name}: {why}")
        for n in res["notes"]:
            print(f"    note: {n}")
    if a.plot:
        plot(ours, peers, a.plot, a.backend)
        print(f"plot: {a.plot}")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
