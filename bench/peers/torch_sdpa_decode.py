"""Times PyTorch SDPA backends (cuDNN, FlashAttention-2) on the decode grid of
`flashlane bench --preset decode` (bench/README.md, "The decode preset"), in the same device call,
appending one row per (cell x backend) to the same receipts file.

    python3 bench/peers/torch_sdpa_decode.py --out RECEIPTS.jsonl [--reps 20] [--mem-gib 48]

Each backend is forced with torch.nn.attention.sdpa_kernel([backend]) on
F.scaled_dot_product_attention with one query: q [b, hq, 1, d], k and v [b, hkv, s, d] dense
bf16 (contiguous), first with enable_gqa=True (both backends accept GQA in the PyTorch sources
read for this: cuDNN's and flash's dense checks allow heads_q % heads_kv == 0 with enable_gqa).
If that raises, K and V are expanded to hq heads (repeat_interleave) and the call repeated; the
row's "peer_call" says which ("sdpa enable_gqa" or "expanded kv"). metrics.gbps always uses
flashlane's byte formula (K and V of heads_kv heads, plus q and o), whatever the call read.
Timing as flashlane's decode rows: CUDA events around each call, the L2 flushed before each
repetition by reading (a max reduction) a buffer of max(256 MiB, 2 x L2) outside the timed
region, so no dirty lines are written back inside the timed call; the median
after 3 warm-up calls. metrics.copy_gbps: a 1 GiB device-to-device copy_ measured here (read +
write bytes, median of 10). A backend that raises writes a row that says so, with no number.
"""
import argparse
import datetime
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_sdpa import BACKENDS, peer_row, time_ms  # noqa: E402

BATCHES = [1, 4, 16, 64, 256]
CACHE_LENS = [1024, 4096, 8192, 32768, 131072]
GQA = [(32, 8), (64, 8)]
HEAD_DIM = 128
GIB = 1024 ** 3


def decode_problem(batch, cache_len, hq, hkv, d):
    """The problem object of a dense decode cell, with flashlane's keys and byte counts."""
    kv = batch * cache_len * hkv * 2 * d * 2
    qo = batch * 1 * hq * 2 * d * 2
    return {"batch": batch, "seqlen_q": 1, "seqlen_k": cache_len, "cache_len": cache_len,
            "heads_q": hq, "heads_kv": hkv, "head_dim": d, "head_dim_v": d, "dtype": "bfloat16",
            "mask": "no_mask", "causal": False, "varlen": False, "layout": "dense", "page_size": 0,
            "cache_seqlens": "full", "bytes_kv": float(kv), "bytes_moved": float(kv + qo),
            "flops_fwd": 4.0 * batch * hq * cache_len * d}


def copy_gbps():
    """Device-to-device copy bandwidth, GB/s, read + write bytes of a 1 GiB copy_."""
    a = torch.empty(GIB, dtype=torch.uint8, device="cuda").fill_(1)
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), 10)
    del a, b
    return 2.0 * GIB / (ms * 1e-3) / 1e9


def first_line(e):
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="receipts file to append to")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--mem-gib", type=float, default=48.0, help="skip cells whose K+V exceed this")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 1024 * 1024)
    flush = torch.empty(max(256 * 1024 * 1024, 2 * l2), dtype=torch.uint8, device="cuda")
    copy = copy_gbps()
    print(f"copy bandwidth: {copy:.0f} GB/s; L2 {l2 / 2**20:.0f} MiB flushed by {flush.numel() / 2**20:.0f} MiB")
    free, _ = torch.cuda.mem_get_info()
    budget = min(args.mem_gib * GIB, free - 2 * GIB - flush.numel())
    n_rows = 0
    with open(args.out, "a") as out:
        for batch in BATCHES:
            for s in CACHE_LENS:
                kv_bytes = batch * s * 8 * HEAD_DIM * 2 * 2
                k = v = None
                if kv_bytes <= budget:
                    k = torch.randn(batch, 8, s, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
                    v = torch.randn_like(k)
                for hq, hkv in GQA:
                    q = torch.randn(batch, hq, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
                    problem = decode_problem(batch, s, hq, hkv, HEAD_DIM)
                    for name, backend in BACKENDS.items():
                        row = peer_row(name, "decode", problem, runtime_mode="decode")
                        row["preset"] = "decode"
                        row["timestamp"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                        row["metrics"] = {"median_ms": None, "gbps": None, "copy_gbps": copy}
                        if k is None:
                            row["status"] = (f"skipped: K+V {kv_bytes / GIB:.1f} GiB exceed the memory "
                                             f"budget {budget / GIB:.1f} GiB")
                            row["peer_call"] = None
                        else:
                            row["status"], row["peer_call"] = "ok", "sdpa enable_gqa"
                            errors = []
                            ms = None
                            with torch.no_grad(), sdpa_kernel([backend]):
                                try:
                                    fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                                    ms = time_ms(fn, args.reps, flush=flush)
                                except RuntimeError as e:
                                    errors.append("enable_gqa: " + first_line(e))
                                if ms is None:
                                    row["peer_call"] = "expanded kv"
                                    g = hq // hkv
                                    if kv_bytes * (g + 1) > budget:
                                        errors.append("expanded kv: would exceed the memory budget")
                                    else:
                                        try:
                                            ke = k.repeat_interleave(g, dim=1)
                                            ve = v.repeat_interleave(g, dim=1)
                                            fn = lambda: F.scaled_dot_product_attention(q, ke, ve)
                                            ms = time_ms(fn, args.reps, flush=flush)
                                        except RuntimeError as e:
                                            errors.append("expanded kv: " + first_line(e))
                                        finally:
                                            ke = ve = None
                            if errors:
                                row["errors_seen"] = errors
                            if ms is None:
                                row["status"] = "refused"
                                row["error"] = "; ".join(errors)
                                row["peer_call"] = None
                            else:
                                row["metrics"].update({
                                    "median_ms": ms, "gbps": problem["bytes_moved"] / (ms * 1e-3) / 1e9,
                                    "tflops": problem["flops_fwd"] / (ms * 1e-3) / 1e12,
                                    "reps": args.reps, "warmup": 3})
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                        n_rows += 1
                        g = row["metrics"]["gbps"]
                        print(f"{name:7s} b{batch:<4d} kv{s:<7d} {hq}/{hkv} "
                              f"{(f'{g:8.0f} GB/s' if g else row['status'][:60]):>14s} {row.get('peer_call') or ''}",
                              flush=True)
                    del q
                del k, v
                torch.cuda.empty_cache()
    print(f"{n_rows} peer rows appended to {args.out}")


if __name__ == "__main__":
    main()
