#!/usr/bin/env python3
"""Refreshes the per-row baselines of bench/rollout_manifest.json from a receipts file.

Usage: scripts/manifest_baselines.py RECEIPTS.jsonl [--manifest bench/rollout_manifest.json]

For every surface of the manifest, `baselines` becomes one entry per counting microbench row of
RECEIPTS.jsonl on that surface (the row's surface field, else derived as the bench derives it:
varlen or dense, fwd or bwd): a selector of the row's identity (artifact_kind, backend,
runtime_mode, dtype, head_dim, causal, seqlen, batch, heads_q) and the row's tflops and
peak_memory_mib, and `baseline_source` names the file. The gate's throughput and memory stop
rules compare rows with these numbers (src/bench/gate.h). Surfaces without rows keep no
baselines. The file is rewritten with the same layout (2-space JSON, one baseline per line).
"""
import argparse
import json
import sys


def surface_of(row):
    if row.get("surface"):
        return row["surface"]
    varlen = bool(row.get("problem", {}).get("varlen"))
    return ("varlen_" if varlen else "dense_") + ("bwd" if row.get("direction") == "bwd" else "fwd")


def baseline(row):
    p = row["problem"]
    match = {"artifact_kind": row["artifact_kind"], "backend": row["requested_backend"],
             "runtime_mode": row["runtime_mode"], "dtype": p["dtype"], "head_dim": p["head_dim"],
             "causal": p["causal"], "seqlen": p["seqlen_q"], "batch": p["batch"],
             "heads_q": p["heads_q"]}
    m = row["metrics"]
    return {"match": match, "tflops": round(m["tflops"], 3),
            "peak_memory_mib": round(m["peak_memory_mib"], 3)}


def dump(manifest):
    # One baseline (and one selector of rows / required) per line keeps diffs readable.
    text = json.dumps(manifest, indent=2)
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() in ('"baselines": [', '"rows": [', '"required": ['):
            out.append(line)
            indent = line[: len(line) - len(line.lstrip())] + "  "
            i += 1
            items, depth, buf = [], 0, []
            while lines[i].strip() not in ("]", "],"):
                buf.append(lines[i].strip())
                depth += lines[i].count("{") - lines[i].count("}")
                if depth == 0:
                    items.append(" ".join(buf).replace("{ ", "{").replace(" }", "}").replace("[ ", "[").replace(" ]", "]"))
                    buf = []
                i += 1
            for it in items:
                out.append(indent + it)
            out.append(lines[i])
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("receipts")
    ap.add_argument("--manifest", default="bench/rollout_manifest.json")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.receipts, encoding="utf-8") if l.strip()]
    manifest = json.load(open(a.manifest, encoding="utf-8"))
    for s in manifest["surfaces"]:
        entries = [baseline(r) for r in rows
                   if r.get("counts_for_status") and r.get("artifact_kind") == "microbench_case"
                   and surface_of(r) == s["surface"] and r["metrics"].get("tflops")
                   and r["metrics"].get("peak_memory_mib")]
        s["baselines"] = entries
        if entries:
            s["baseline_source"] = a.receipts
        else:
            s.pop("baseline_source", None)
    with open(a.manifest, "w", encoding="utf-8") as f:
        f.write(dump(manifest))
    print(f"{a.manifest}: baselines from {a.receipts}", file=sys.stderr)


if __name__ == "__main__":
    main()
