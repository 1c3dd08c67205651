"""Times PyTorch SDPA backends (cuDNN, FlashAttention-2) on the canonical grid, forward and
backward, in the same run as `flashlane bench`, so docs/PERF.md can put a measured peer beside each
sm90 row.

    python3 bench/peers/torch_sdpa.py --out out/peer-sdpa.jsonl [--dirs fwd,bwd]
                                      [--flashlane out/bench-receipts.jsonl]

Backward follows BENCHMARKS.md: time(fwd + bwd) - time(fwd), FLOPs = 2.5 x forward FLOPs.

Each backend is forced with torch.nn.attention.sdpa_kernel([backend]) (PyTorch raises instead of
falling back when it cannot run), timed with CUDA events (median after warm-up, fresh normal(0,1)
inputs), and written as one JSON line per cell (schema: docs/RECEIPTS.md, proof_class execute,
counts_for_status false: peers never count for flashlane's status). With --flashlane, prints the
side-by-side table with the sm90 rows of that receipts file.
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION}
SEQLENS = [512, 1024, 2048, 4096, 8192, 16384]


def time_ms(fn, reps, flush=None, warmup=3):
    """Median CUDA-event time of fn() in ms after `warmup` calls. With `flush` (a CUDA tensor
    larger than the L2), the tensor is read (a max reduction) before every repetition, outside
    the timed region: the L2 holds none of fn's inputs and no dirty lines whose write-back would
    run inside the timed call, and the GPU is busy while the host enqueues the call."""
    for _ in range(warmup):
        fn()
    times = []
    for i in range(reps):
        if flush is not None:
            flush.max()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peer_environment():
    """The environment object of a peer row: device, sm, torch and cuDNN versions."""
    dev = torch.cuda.get_device_properties(0)
    cc = torch.cuda.get_device_capability()
    return {"device": dev.name, "sm": cc[0] * 10 + cc[1], "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version()}


def peer_row(name, direction, problem, runtime_mode=None):
    """The fields every peer row shares (docs/RECEIPTS.md): an execute row of a PyTorch SDPA
    backend that never counts for flashlane's status, with no flashlane receipt."""
    return {"schema": "flashlane.proof_row/1", "proof_class": "execute",
            "artifact_kind": "microbench_case", "counts_for_status": False,
            "not_counted_reason": "peer: timed beside flashlane, never counts",
            "requested_backend": f"torch_sdpa_{name}", "direction": direction,
            "runtime_mode": runtime_mode or direction, "receipt": None,
            "gpu_lane": {"ran": True, "reason": ""},
            "environment": peer_environment(), "problem": problem}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/peer-sdpa.jsonl")
    ap.add_argument("--flashlane", default=None, help="flashlane bench receipts to compare with")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dirs", default="fwd", help="fwd, bwd or fwd,bwd")
    args = ap.parse_args()
    dirs = [d for d in args.dirs.split(",") if d]
    rows = []
    for hd in (64, 128, 256):
        heads = 2048 // hd
        for causal in (False, True):
            for s in SEQLENS:
                batch = 16384 // s
                q, k, v = (torch.randn(batch, heads, s, hd, device="cuda", dtype=torch.bfloat16,
                                       requires_grad="bwd" in dirs) for _ in range(3))
                dout = torch.randn(batch, heads, s, hd, device="cuda", dtype=torch.bfloat16)
                pairs = batch * heads * (s * (s + 1) / 2 if causal else s * s)
                flops = 4 * pairs * hd
                for name, backend in BACKENDS.items():
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                    def fwd_bwd():
                        q.grad = k.grad = v.grad = None
                        fwd().backward(dout)

                    for direction in dirs:
                        row = peer_row(name, direction,
                                       {"batch": batch, "heads_q": heads, "heads_kv": heads,
                                        "seqlen_q": s, "seqlen_k": s, "head_dim": hd,
                                        "dtype": "bfloat16", "causal": causal})
                        try:
                            with sdpa_kernel([backend]):
                                if direction == "fwd":
                                    with torch.no_grad():
                                        ms = time_ms(fwd, args.reps)
                                    row["metrics"] = {"median_ms": ms, "tflops": flops / ms / 1e9}
                                else:
                                    with torch.no_grad():
                                        t_fwd = time_ms(fwd, args.reps)
                                    t_both = time_ms(fwd_bwd, args.reps)
                                    ms = t_both - t_fwd
                                    row["metrics"] = {"median_ms": ms, "fwd_ms": t_fwd,
                                                      "fwd_bwd_ms": t_both,
                                                      "tflops": 2.5 * flops / ms / 1e9}
                            row["status"] = "ok"
                        except RuntimeError as e:  # the backend refused this shape: say so
                            row["status"] = "refused"
                            row["error"] = str(e).splitlines()[0][:200]
                            row["metrics"] = {"median_ms": None, "tflops": None}  # no number
                        rows.append(row)
                del q, k, v, dout
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    peer = {(r["requested_backend"], r["direction"], r["problem"]["head_dim"],
             r["problem"]["causal"], r["problem"]["seqlen_q"]): r.get("metrics", {}).get("tflops")
            for r in rows}
    ours = {}
    if args.flashlane:
        for line in open(args.flashlane):
            r = json.loads(line)
            if r.get("receipt", {}).get("actual_backend") == "sm90" and r.get("direction") in dirs:
                p = r["problem"]
                ours[(r["direction"], p["head_dim"], bool(p["causal"]), p["seqlen_q"])] = \
                    r["metrics"]["tflops"]
    fmt = lambda x: f"{x:6.0f}" if x else "     -"
    for direction in dirs:
        print(f"{direction}: hdim causal seqlen   sm90  cudnn flash2  sm90/cudnn")
        for hd in (64, 128, 256):
            for causal in (False, True):
                for s in SEQLENS:
                    o = ours.get((direction, hd, causal, s))
                    c = peer[("torch_sdpa_cudnn", direction, hd, causal, s)]
                    f2 = peer[("torch_sdpa_flash2", direction, hd, causal, s)]
                    ratio = f"{o / c:6.2f}" if (o and c) else "     -"
                    print(f"{direction}: {hd:4d} {int(causal):6d} {s:6d} {fmt(o)} {fmt(c)} {fmt(f2)} {ratio}")

if __name__ == "__main__":
    main()
