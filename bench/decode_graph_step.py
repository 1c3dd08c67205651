#!/usr/bin/env python3
"""Times one decode step of attention inside a CUDA-graph-replayed loop, the way serving engines
(vLLM, SGLang) run decode: flashlane's flash_attn_with_kvcache on sm90 beside PyTorch SDPA, on
the same KV cache, in the same process, appending one row per (cell x backend x variant) to a
receipts file (bench/README.md, "One decode step in a CUDA graph").

    python3 bench/decode_graph_step.py --out out/decode-graph-step.jsonl
        [--batches 1,16,64] [--cache-lens 4k,32k] [--layouts dense,paged16]
        [--variants plain,append] [--lengths fixed,advancing] [--sdpa cudnn,flash2,efficient]
        [--steps 32] [--reps 20] [--warmup 3] [--sdpa-kv view|contiguous]

Cells: batch x cache length, GQA 32/8, head_dim 128, bf16, one query token. Per cell the caches
are allocated once, k_cache / v_cache [batch, cache_len, heads_kv, head_dim] (flashlane's
layout); a paged layout (`pagedN`) views the same memory as [num_pages, N, heads_kv, head_dim]
pages with a seeded random permutation as page_table, so the paged rows really gather.

The graph. One torch.cuda.CUDAGraph holds `--steps` decode steps; step j reads layer
j % layers, where `layers` caches are allocated so that together they hold at least
max(--rotate-mib, 2 x L2) bytes (a model's layers: no step finds its K and V in the L2 from the
step before; one layer when a cache alone is that large). q, and for the append variant the
token's k and v, are per step. cache_seqlens is one int32 device tensor shared by every step of
the graph (all layers of a decode step attend the same lengths) and is written between replays
by copy_ from a pinned host tensor prepared before the loop, outside the graph.

  flashlane: flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens,
             causal=True, backend="sm90", strict=True) [+ page_table] [+ k=, v= (variant append:
             one new token per sequence, written into the cache at cache_seqlens[b])].
  SDPA:      F.scaled_dot_product_attention(q [b, 32, 1, 128], k, v [b, 8, L, 128],
             enable_gqa=True) under sdpa_kernel([backend]) for each of cuDNN, flash and
             efficient (PyTorch raises instead of falling back; a backend that raises is written
             as a refused row with its error and warnings, no number). k, v: the cache viewed as
             [b, 8, L, 128] (transpose(1, 2), the same memory; --sdpa-kv contiguous gives SDPA its
             own contiguous copy, the layout of bench/peers/torch_sdpa_decode.py). The append
             variant writes the token with copy_ into position L - 1 before SDPA.

The asymmetry. SDPA's sequence length is the tensor's shape: it attends all L keys of every
sequence, and a graph of it replays with that length only. flashlane reads cache_seqlens on the
device. For equal work the rows compared with SDPA (lengths `fixed`) give flashlane
cache_seqlens = L (append: L - 1, plus the appended token), so both attend L keys. flashlane's
causal=True is bottom-right aligned: with one query row it sees every key, as SDPA without a
mask (SDPA's is_causal is top-left and would leave one key). The rows with lengths `advancing`
(flashlane only) are the serving loop itself: cache_seqlens starts at a seeded random length per
sequence in [L/2, L - replays - 1] and grows by one every replay, and the last replay is checked
against a call made outside the graph with the same lengths; those rows have no SDPA peer.

Capture mode. torch's default ("global"): flash_attn_with_kvcache does not read its CUDA
metadata back to the host while the current stream is capturing (check_metadata_values=None
means False there), so the captured call is pure device work. --capture-error-mode names another
mode; the mode is written into every row, and a capture that fails is a row that says so.

Correctness before timing: after capture the graph's outputs are poisoned (NaN); after the timed
replays they are poisoned again and one more replay is made. Its outputs of the first and last
step (every step with --check-all-steps) are compared, every element, with SDPA's math backend
on float32 upcasts of the keys and values the step attended (ref), under FlashAttention's rule
max|out - ref| <= 2 max|ref_lowp - ref| + 1e-5, where ref_lowp is the same attention in bf16
torch ops (bf16 matmuls, softmax rounded to bf16: FlashAttention's attention_ref with
upcast=False); per sequence, the query heads of a kv head taken as rows of one head (the same
attention, no expanded K and V). flashlane rows also compare the graph's output with a call
outside the graph (same arguments, the last replay's cache_seqlens): it must be bitwise equal
(the sm90 decode kernels are deterministic and choose their splits from shapes only). A row that
fails is written with validation_passed false, never dropped.

Timing: CUDA events around each graph replay (warm-up replays first), the median over the
replays divided by the steps: metrics.us_per_step and metrics.median_ms (one step). GB/s as the
decode rows define it (bench/README.md, "The decode preset"): K and V of the keys attended
(heads_kv heads) plus q and o, over the step's time; `advancing` rows take each replay's own
bytes and report the median GB/s. metrics.copy_gbps: a 1 GiB device-to-device copy_ measured in
the same run (bench/peers/torch_sdpa_decode.py). No L2 flush between replays: the rotating
layers keep the L2 from serving a step's cache.

Rows: schema flashlane.proof_row/1 as the decode rows, direction "decode", preset
"decode_graph_step", timing_mode "cuda_graph_step", and a `graph` object (steps, layers,
cache_seqlens mode, capture mode, variant). flashlane rows carry the receipt of the captured call
(the replays run no dispatcher) and counts_for_status derived by the rule of src/bench/proof.cpp;
SDPA rows (torch_sdpa_cudnn, torch_sdpa_flash2, torch_sdpa_efficient) never count. Write them
to their own file: bench/decode_table.py does not tell these rows from `flashlane bench --preset
decode` rows. Without CUDA the script prints "skipped: needs a CUDA device" and exits 0. Exit 1
when a measured row failed validation, 2 on bad options or a missing flashlane package.
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "real_work"))
from realwork_rows import compute_counts_for_status, json_safe  # noqa: E402  (pure Python)

BATCHES = [1, 16, 64]
CACHE_LENS = [4096, 32768]
GQA = (32, 8)
HEAD_DIM = 128
STEPS = 32
BACKEND = "sm90"
DEVICE = "cuda"
#: SDPA backends by row name (requested_backend torch_sdpa_<name>) and SDPBackend member.
SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash2": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION"}
VARIANTS = ("plain", "append")
LENGTHS = ("fixed", "advancing")
CAPTURE_MODES = ("relaxed", "thread_local", "global")
PRESET = "decode_graph_step"
TIMING_MODE = "cuda_graph_step"
PEER_REASON = "peer: timed beside flashlane, never counts"
ABS_TOLERANCE = 1e-5  # FlashAttention's rule: max|out - ref| <= 2 max|ref_lowp - ref| + 1e-5
BF16_BYTES = 2
MIB = 1024 ** 2
GIB = 1024 ** 3


# ---- options (no torch needed)

def parse_size(text):
    """A token count: "4096", "4k" (x 1024) or "1m" (x 1024^2)."""
    t = text.strip().lower()
    scale = 1
    if t.endswith("k"):
        t, scale = t[:-1], 1024
    elif t.endswith("m"):
        t, scale = t[:-1], 1024 * 1024
    try:
        n = int(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096 or 4k)")
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
    return n


def parse_list(text, item=str):
    return [item(x) for x in text.split(",") if x.strip()]


def parse_layout(text):
    """("dense", 0) or ("pagedN", N) for "pagedN" (page_size N)."""
    t = text.strip()
    if t == "dense":
        return t, 0
    if t.startswith("paged") and t[5:].isdigit() and int(t[5:]) > 0:
        return t, int(t[5:])
    raise argparse.ArgumentTypeError(f"layout {text!r}: dense or pagedN (e.g. paged16)")


def parse_gqa(text):
    try:
        hq, hkv = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gqa {text!r}: heads_q/heads_kv, e.g. 32/8")
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise argparse.ArgumentTypeError(f"--gqa {text!r}: heads_q must be a multiple of heads_kv")
    return hq, hkv


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/decode-graph-step.jsonl", help="receipts file to append to")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--cache-lens", default="4k,32k", help="cache lengths, e.g. 4k,32k")
    ap.add_argument("--gqa", default=f"{GQA[0]}/{GQA[1]}", help="heads_q/heads_kv")
    ap.add_argument("--head-dim", type=int, default=HEAD_DIM)
    ap.add_argument("--layouts", default="dense",
                    help="flashlane cache layouts: dense, pagedN (e.g. dense,paged16)")
    ap.add_argument("--variants", default="plain,append",
                    help="plain (attention), append (one new token written first)")
    ap.add_argument("--lengths", default="fixed,advancing",
                    help="fixed (cache_seqlens = L, beside SDPA), advancing (flashlane: +1 per replay)")
    ap.add_argument("--sdpa", default=",".join(SDPA_BACKENDS), help="SDPA backends, or none")
    ap.add_argument("--sdpa-kv", choices=("view", "contiguous"), default="view",
                    help="SDPA's k/v: the cache viewed as [b, hkv, L, d], or a contiguous copy")
    ap.add_argument("--steps", type=int, default=STEPS, help="decode steps captured in one graph")
    ap.add_argument("--reps", type=int, default=20, help="timed graph replays")
    ap.add_argument("--warmup", type=int, default=3, help="untimed graph replays first")
    ap.add_argument("--rotate-mib", type=float, default=256.0,
                    help="the layers' caches hold at least max(this, 2 x L2) MiB")
    ap.add_argument("--mem-gib", type=float, default=48.0, help="skip cells whose caches exceed this")
    ap.add_argument("--capture-error-mode", choices=CAPTURE_MODES, default="global")
    ap.add_argument("--check-all-steps", action="store_true",
                    help="check every step's output (default: the first and the last)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def parse_args(argv=None):
    """The options, with lists parsed and checked (argparse errors exit 2)."""
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        a.batches = parse_list(a.batches, int)
        a.cache_lens = parse_list(a.cache_lens, parse_size)
        a.heads_q, a.heads_kv = parse_gqa(a.gqa)
        a.layouts = parse_list(a.layouts, parse_layout)
    except (ValueError, argparse.ArgumentTypeError) as e:
        ap.error(str(e))
    a.variants = parse_list(a.variants)
    a.lengths = parse_list(a.lengths)
    a.sdpa = [] if a.sdpa.strip() == "none" else parse_list(a.sdpa)
    for name, values, allowed in (("--variants", a.variants, VARIANTS), ("--lengths", a.lengths, LENGTHS),
                                  ("--sdpa", a.sdpa, tuple(SDPA_BACKENDS))):
        bad = [v for v in values if v not in allowed]
        if bad:
            ap.error(f"{name}: {', '.join(bad)} not in {', '.join(allowed)}")
    if not a.batches or not a.cache_lens or not a.layouts or not a.variants or not a.lengths:
        ap.error("--batches, --cache-lens, --layouts, --variants and --lengths need at least one value")
    if any(b <= 0 for b in a.batches):
        ap.error("--batches: every batch must be > 0")
    if a.head_dim <= 0 or a.steps <= 0 or a.reps <= 0 or a.warmup < 0:
        ap.error("--head-dim, --steps and --reps must be > 0, --warmup >= 0")
    for L in a.cache_lens:
        if L < 2 * (replays_total(a) + 2):
            ap.error(f"--cache-lens {L}: at least 2 x (warmup + reps + 3) = {2 * (replays_total(a) + 2)} "
                     "keys (the advancing lengths grow by one per replay)")
        for layout, ps in a.layouts:
            if ps and L % ps:
                ap.error(f"--cache-lens {L} is not a multiple of the page size of {layout}")
    return a


def replays_total(a):
    """Graph replays per row: warm-up, timed, and the checked one."""
    return a.warmup + a.reps + 1


def plan_rows(a):
    """The rows of one cell, in the order they run: (requested_backend, layout, page_size,
    variant, lengths). Per variant the fixed-length flashlane rows sit beside the SDPA rows
    (dense cache: SDPA has no paged layout; fixed lengths only: its length is the shape); the
    advancing rows, which write the cache at many positions (append), come last."""
    rows = []
    for variant in a.variants:
        if "fixed" in a.lengths:
            for layout, ps in a.layouts:
                rows.append((BACKEND, layout, ps, variant, "fixed"))
                if layout == "dense":
                    rows += [(f"torch_sdpa_{s}", "dense", 0, variant, "fixed") for s in a.sdpa]
            if not any(layout == "dense" for layout, _ in a.layouts):
                rows += [(f"torch_sdpa_{s}", "dense", 0, variant, "fixed") for s in a.sdpa]
    if "advancing" in a.lengths:
        for variant in a.variants:
            for layout, ps in a.layouts:
                rows.append((BACKEND, layout, ps, variant, "advancing"))
    return rows


# ---- rows and arithmetic (no torch needed)

def step_bytes(keys_per_seq, heads_q, heads_kv, head_dim, head_dim_v=None):
    """Bytes one decode step moves, as the decode rows count them: K and V of the keys attended
    (sum over sequences x heads_kv x (head_dim + head_dim_v) x 2) plus q and o (batch x heads_q x
    (head_dim + head_dim_v) x 2); the page table and LSE are left out. keys_per_seq: a list."""
    dv = head_dim if head_dim_v is None else head_dim_v
    kv = sum(keys_per_seq) * heads_kv * (head_dim + dv) * BF16_BYTES
    qo = len(keys_per_seq) * heads_q * (head_dim + dv) * BF16_BYTES
    return float(kv), float(kv + qo)


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds and seconds > 0 else None


def runtime_mode_of(layout, variant):
    """The receipt runtime_mode a flashlane call of this kind gets (kvcache_runtime_mode)."""
    if variant == "append":
        return "append_decode"
    return "paged_decode" if layout != "dense" else "decode"


def cache_seqlens_text(lengths, variant):
    if lengths == "advancing":
        return "advancing: +1 per replay from a seeded random start in [cache_len/2, cache_len - replays - 1]"
    return "full" if variant == "plain" else "cache_len - 1, + 1 appended"


def decode_problem(batch, cache_len, heads_q, heads_kv, head_dim, *, layout="dense", page_size=0,
                   variant="plain", lengths="fixed", causal=True, keys_per_seq=None):
    """The problem object of a decode cell, with the keys and byte counts of the decode rows
    (bench/peers/torch_sdpa_decode.py decode_problem): the keys each sequence attends are
    cache_len (fixed lengths), or keys_per_seq (advancing: the mean over the timed replays)."""
    keys = keys_per_seq if keys_per_seq is not None else [cache_len] * batch
    bytes_kv, bytes_moved = step_bytes(keys, heads_q, heads_kv, head_dim)
    p = {"batch": batch, "seqlen_q": 1, "seqlen_k": cache_len, "cache_len": cache_len,
         "heads_q": heads_q, "heads_kv": heads_kv, "head_dim": head_dim, "head_dim_v": head_dim,
         "dtype": "bfloat16", "mask": "causal_bottom_right" if causal else "no_mask",
         "causal": causal, "window_left": -1, "window_right": -1, "softcap": 0.0,
         "softmax_scale": None, "varlen": False, "layout": layout, "page_size": page_size,
         "num_pages": batch * cache_len // page_size if page_size else 0,
         "seqlen_new": 1 if variant == "append" else 0,
         "cache_seqlens": cache_seqlens_text(lengths, variant),
         "bytes_kv": bytes_kv, "bytes_moved": bytes_moved,
         "flops_fwd": 4.0 * heads_q * sum(keys) * head_dim}
    return p


def fa_rule_figure(tensor, max_abs_diff, ref_max_abs_diff, nan_count, count):
    """One entry of metrics.errors under FlashAttention's rule (the forward rows' fields)."""
    tol = 2.0 * ref_max_abs_diff + ABS_TOLERANCE
    ok = nan_count == 0 and math.isfinite(max_abs_diff) and max_abs_diff <= tol
    return {"tensor": tensor, "max_abs_diff": max_abs_diff, "ref_max_abs_diff": ref_max_abs_diff,
            "tolerance": tol, "nan_count": int(nan_count), "count": int(count), "pass": bool(ok)}


def eager_figure(max_abs_diff, nan_count, count):
    """The graph's output against the same call made outside the graph: must be bitwise equal."""
    return {"tensor": "o_replay_vs_call", "max_abs_diff": max_abs_diff, "nan_count": int(nan_count),
            "count": int(count), "bound": "bitwise equal to the call outside the graph",
            "pass": bool(nan_count == 0 and max_abs_diff == 0.0)}


def timing_metrics(replay_ms, steps, bytes_per_replay_step, copy_gbps, batch, reps, warmup):
    """The timing figures of a row from the replay times (ms) and the bytes one step of each
    replay moved (a list as long as replay_ms): median_ms and us_per_step (one step), gbps (the
    median of each replay's rate), tokens per second (batch / step time), the replays' spread."""
    per_step_ms = [t / steps for t in replay_ms]
    med = statistics.median(per_step_ms)
    rates = [gbps(b, t * 1e-3) for b, t in zip(bytes_per_replay_step, per_step_ms)]
    return {"median_ms": med, "us_per_step": med * 1e3,
            "gbps": statistics.median(rates), "copy_gbps": copy_gbps,
            "median_tok_per_sec": batch / (med * 1e-3),
            "replay_ms": {"median": statistics.median(replay_ms), "min": min(replay_ms),
                          "max": max(replay_ms)},
            "steps_per_replay": steps, "reps": reps, "warmup": warmup}


def build_row(requested_backend, problem, environment, *, status, metrics, graph, receipt=None,
              sdpa=None, proof_class="execute", timestamp=None):
    """One proof row (docs/RECEIPTS.md) of a graph-replayed decode step. counts_for_status is
    derived from the row's fields (src/bench/proof.cpp's rule); SDPA rows never count."""
    m = {"median_ms": None, "us_per_step": None, "gbps": None, "copy_gbps": None, "tflops": None,
         "check": "not_run", "checked_tensor": "o", "max_abs_diff": None, "ref_max_abs_diff": None,
         "nan_count": 0, "validation_ran": False, "validation_passed": False,
         "validation_scope": {"kind": "none"}, "errors": []}
    m.update(metrics)
    if m["median_ms"] and problem.get("flops_fwd") and m.get("tflops") is None:
        m["tflops"] = problem["flops_fwd"] / (m["median_ms"] * 1e-3) / 1e12
    layout = problem.get("layout", "dense")
    variant = graph.get("variant", "plain")
    row = {"schema": "flashlane.proof_row/1", "proof_class": proof_class,
           "artifact_kind": "microbench_case", "counts_for_status": False, "not_counted_reason": "",
           "preset": PRESET, "timing_mode": TIMING_MODE,
           "timestamp": timestamp or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "requested_backend": requested_backend,
           "runtime_mode": (receipt or {}).get("runtime_mode") or runtime_mode_of(layout, variant),
           "direction": "decode", "status": status, "environment": environment,
           "gpu_lane": {"ran": True, "reason": ""}, "problem": problem,
           "graph": graph, "receipt": receipt, "metrics": m, "peer": []}
    if receipt and receipt.get("surface"):
        row["surface"] = receipt["surface"]
    if sdpa is not None:
        row["sdpa"] = sdpa
        row["peer_call"] = "sdpa enable_gqa" if status == "ok" else None
    compute_counts_for_status(row)
    if sdpa is not None:
        row["counts_for_status"], row["not_counted_reason"] = False, PEER_REASON
    return row


def attach_peers(rows):
    """Fills `peer` of each flashlane row with fixed lengths from the SDPA rows of the same shape
    and variant that ran (docs/RECEIPTS.md "peer": backend, median_ms, tflops, speedup = the
    peer's median_ms / this row's, counted). Returns rows."""
    def shape(r):
        p = r["problem"]
        return (p["batch"], p["cache_len"], p["heads_q"], p["heads_kv"], p["head_dim"], r["graph"]["variant"])

    sdpa = [r for r in rows if r["requested_backend"].startswith("torch_sdpa_") and r["status"] == "ok"]
    for r in rows:
        if r["requested_backend"].startswith("torch_sdpa_") or r["graph"]["cache_seqlens"] != "fixed":
            continue
        mine = r["metrics"].get("median_ms") if r["status"] == "ok" else None
        r["peer"] = [{"backend": p["requested_backend"], "median_ms": p["metrics"]["median_ms"],
                      "tflops": p["metrics"].get("tflops"),
                      "speedup": p["metrics"]["median_ms"] / mine if mine else None,
                      "counted": p["counts_for_status"]}
                     for p in sdpa if shape(p) == shape(r)]
    return rows


def cell_name(p):
    return f"{p['layout']} b{p['batch']} kv{p['cache_len']} {p['heads_q']}/{p['heads_kv']} d{p['head_dim']}"


def table_lines(rows):
    """The human table: one line per flashlane row, its us/step and GB/s, and beside it each SDPA
    backend's GB/s on the dense cell of the same shape and variant with flashlane / SDPA (GB/s
    ratio = SDPA time / flashlane time: > 1 means flashlane is faster)."""
    def key(r, layout=None):
        p = r["problem"]
        return (p["batch"], p["cache_len"], p["heads_q"], p["heads_kv"], p["head_dim"],
                layout or p["layout"], r["graph"]["variant"], r["graph"]["cache_seqlens"])

    def number(r):
        return r["metrics"].get("gbps") if r and r.get("status") == "ok" else None

    names = [n for n in SDPA_BACKENDS if any(r["requested_backend"] == f"torch_sdpa_{n}" for r in rows)]
    peers = {(key(r), r["requested_backend"][len("torch_sdpa_"):]): r
             for r in rows if r["requested_backend"].startswith("torch_sdpa_")}
    head = f"{'cell':30s} {'variant':7s} {'lengths':9s} {'us/step':>8s} {'GB/s':>6s} {'%copy':>5s}"
    for n in names:
        head += f" {n + ' GB/s':>15s} {'ratio':>6s}"
    lines = [head + "  check"]
    for r in rows:
        if r["requested_backend"].startswith("torch_sdpa_"):
            continue
        m = r["metrics"]
        g = number(r)
        us = f"{m['us_per_step']:8.1f}" if g else "       -"
        pct = f"{100 * g / m['copy_gbps']:5.1f}" if g and m.get("copy_gbps") else "    -"
        line = (f"{cell_name(r['problem']):30s} {r['graph']['variant']:7s} {r['graph']['cache_seqlens']:9s} "
                f"{us} {(f'{g:6.0f}' if g else '     -')} {pct}")
        for n in names:
            peer = peers.get((key(r, "dense"), n))
            pg = number(peer) if r["graph"]["cache_seqlens"] == "fixed" else None
            ratio = f"{g / pg:5.2f}x" if g and pg else "     -"
            why = (peer or {}).get("status", "-").split(":")[0][:15]  # refused, skipped, ...
            line += f" {(f'{pg:15.0f}' if pg else why.rjust(15))} {ratio}"
        note = m.get("check", "") if r["status"] == "ok" else r["status"][:60]
        lines.append(line + "  " + note)
    return lines


# ---- the GPU part (torch, flashlane)

def environment(torch, flashlane, backend):
    """The environment object: device, sm, torch, cuDNN and CUDA versions; for flashlane rows the
    library version, commit, compiled architectures and kernel fingerprint of the backend."""
    dev = torch.cuda.get_device_properties(0)
    cc = torch.cuda.get_device_capability()
    env = {"device": dev.name, "sm": cc[0] * 10 + cc[1], "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "cuda_runtime": torch.version.cuda,
           "library_version": flashlane.version(), "git_commit": flashlane.git_commit(),
           "compiled_archs": flashlane.compiled_architectures()}
    if backend == BACKEND:
        # Every flashlane row here is a decode mode: the decode family's fingerprint.
        env["kernel_fingerprint"] = flashlane.kernel_fingerprint(backend, "decode")
    return env


class Cell:
    """The tensors of one (batch, cache length) cell: `layers` caches K and V [batch, L, hkv, d]
    (normal(0, 1) bf16, seeded), per step q [batch, 1, hq, d] and the appended token's k and v
    [batch, 1, hkv, d], and per page size a page table per layer (a seeded permutation of the
    pages of that layer's buffer, int32 [batch, L / page_size])."""

    def __init__(self, torch, a, batch, cache_len, layers, seed):
        self.torch, self.batch, self.L, self.layers = torch, batch, cache_len, layers
        self.hq, self.hkv, self.d, self.steps = a.heads_q, a.heads_kv, a.head_dim, a.steps
        gen = torch.Generator(device=DEVICE).manual_seed(seed)
        bf16 = dict(device=DEVICE, dtype=torch.bfloat16, generator=gen)
        self.k = [torch.randn(batch, cache_len, self.hkv, self.d, **bf16) for _ in range(layers)]
        self.v = [torch.randn(batch, cache_len, self.hkv, self.d, **bf16) for _ in range(layers)]
        self.q = torch.randn(a.steps, batch, 1, self.hq, self.d, **bf16)
        self.k_new = torch.randn(a.steps, batch, 1, self.hkv, self.d, **bf16)
        self.v_new = torch.randn(a.steps, batch, 1, self.hkv, self.d, **bf16)
        self.page_tables = {}
        for _, ps in a.layouts:
            if ps:
                n = batch * cache_len // ps
                self.page_tables[ps] = [torch.randperm(n, device=DEVICE, generator=gen)
                                        .to(torch.int32).view(batch, cache_len // ps) for _ in range(layers)]

    def pool(self, layer, ps):
        """K and V of `layer` as pages [num_pages, ps, hkv, d] (the dense buffer's memory)."""
        shape = (self.batch * self.L // ps, ps, self.hkv, self.d)
        return self.k[layer].view(shape), self.v[layer].view(shape)

    def flashlane_kv(self, ps):
        """kv_of(layer, b, n) -> K, V [n, hkv, d] of sequence b as flashlane reads them."""
        def kv_of(layer, b, n):
            if not ps:
                return self.k[layer][b, :n], self.v[layer][b, :n]
            pages = self.page_tables[ps][layer][b, : -(-n // ps)].long()
            kp, vp = self.pool(layer, ps)
            return (kp[pages].reshape(-1, self.hkv, self.d)[:n], vp[pages].reshape(-1, self.hkv, self.d)[:n])
        return kv_of


def check_outputs(torch, F, sdpa_kernel, SDPBackend, cell, outs, steps, keys, append, kv_of, heads_first):
    """FlashAttention's rule on the outputs of `steps` (outs[j]: [b, 1, hq, d], or [b, hq, 1, d]
    when heads_first) against SDPA's math backend on float32 upcasts (ref) and the bf16 torch-op
    attention (ref_lowp), per sequence b over its first keys[b] keys; with append, key
    keys[b] - 1 is the token step j wrote. Returns the errors[] figure of o."""
    err = base = 0.0
    nan = count = 0
    g = cell.hq // cell.hkv
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for j in steps:
            layer = j % cell.layers
            o = outs[j].transpose(1, 2) if heads_first else outs[j]
            for b in range(cell.batch):
                n = keys[b]
                K, V = kv_of(layer, b, n)
                if append:
                    K, V = K.clone(), V.clone()
                    K[n - 1], V[n - 1] = cell.k_new[j, b, 0], cell.v_new[j, b, 0]
                qg = cell.q[j, b, 0].view(cell.hkv, g, cell.d)        # kv head x its query heads
                kt, vt = K.transpose(0, 1), V.transpose(0, 1)        # [hkv, n, d]
                with sdpa_kernel([SDPBackend.MATH]):
                    ref = F.scaled_dot_product_attention(qg.float()[None], kt.float()[None],
                                                         vt.float()[None])[0].reshape(cell.hq, cell.d)
                s = (qg / math.sqrt(cell.d)) @ kt.transpose(-1, -2)   # bf16 scores
                lowp = (torch.softmax(s, dim=-1) @ vt).reshape(cell.hq, cell.d)
                ob = o[b, 0].double()
                nan += int((~torch.isfinite(ob)).sum().item())
                diff = torch.nan_to_num((ob - ref.double()).abs(), nan=math.inf)
                err = max(err, float(diff.max().item()))
                base = max(base, float((lowp.double() - ref.double()).abs().max().item()))
                count += ob.numel()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return fa_rule_figure("o", err, base, nan, count)


def warm_up(torch, step, steps):
    """Every step once outside the graph, on a side stream (as torch.cuda.graph's docs ask):
    lazy set-up (cuDNN plans, workspaces) happens here, and a backend that refuses raises here."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for j in range(steps):
            step(j)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def capture(torch, step, steps, mode):
    """(graph, outputs): the `steps` calls captured into one CUDAGraph; outputs[j] is step j's
    output tensor, rewritten by every replay."""
    graph = torch.cuda.CUDAGraph()
    outs = [None] * steps
    with torch.cuda.graph(graph, capture_error_mode=mode):
        for j in range(steps):
            outs[j] = step(j)
    torch.cuda.synchronize()
    return graph, outs


def replay_ms(torch, graph, prepare, first, count):
    """CUDA-event time (ms) of `count` replays, each after prepare(r) (the cache_seqlens copy_,
    outside the graph and outside the events), r = first, first + 1, ..."""
    events = []
    for i in range(count):
        prepare(first + i)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def first_line(e):
    return (str(e).splitlines() or [type(e).__name__])[0][:300]


def lengths_schedule(torch, a, batch, cache_len, variant, lengths):
    """cache_seqlens of every replay, int32 [replays, batch] in pinned host memory, made before
    the loop: fixed, cache_len (append: cache_len - 1, the token makes it cache_len); advancing,
    a seeded random start per sequence in [cache_len / 2, cache_len - replays - 1], + 1 per replay."""
    R = replays_total(a)
    host = torch.empty(R, batch, dtype=torch.int32).pin_memory()
    if lengths == "fixed":
        host.fill_(cache_len - 1 if variant == "append" else cache_len)
    else:
        gen = torch.Generator().manual_seed(a.seed * 1000003 + batch * 131 + cache_len)
        start = torch.randint(cache_len // 2, cache_len - R, (batch,), generator=gen, dtype=torch.int32)
        host.copy_(start[None, :] + torch.arange(R, dtype=torch.int32)[:, None])
    return host


def flashlane_step(flashlane, cell, ps, append, seqlens):
    """step(j): flash_attn_with_kvcache of step j on layer j % layers (sm90, strict)."""
    def step(j):
        layer = j % cell.layers
        kw = dict(cache_seqlens=seqlens, causal=True, backend=BACKEND, strict=True)
        if ps:
            kc, vc = cell.pool(layer, ps)
            kw["page_table"] = cell.page_tables[ps][layer]
        else:
            kc, vc = cell.k[layer], cell.v[layer]
        if append:
            kw["k"], kw["v"] = cell.k_new[j], cell.v_new[j]
        return flashlane.flash_attn_with_kvcache(cell.q[j], kc, vc, **kw)
    return step


def sdpa_step(F, cell, kv, append):
    """step(j): SDPA of step j against layer j % layers' k, v [b, hkv, L, d] (kv[layer]); with
    append, the token is first copied into position L - 1 (SDPA's length is the shape)."""
    last = cell.L - 1

    def step(j):
        ks, vs = kv[j % cell.layers]
        if append:
            ks[:, :, last].copy_(cell.k_new[j, :, 0])
            vs[:, :, last].copy_(cell.v_new[j, :, 0])
        return F.scaled_dot_product_attention(cell.q[j].transpose(1, 2), ks, vs, enable_gqa=True)
    return step


def sdpa_kv_of(kv):
    def kv_of(layer, b, n):
        ks, vs = kv[layer]
        return ks[b, :, :n].transpose(0, 1), vs[b, :, :n].transpose(0, 1)
    return kv_of


def replay_vs_call(torch, step, outs, steps):
    """The graph's outputs of `steps` against the same calls made now, outside the graph (with
    append the call writes the same token into the same position again)."""
    worst, nan, count = 0.0, 0, 0
    for j in steps:
        direct = step(j)
        nan += int((~torch.isfinite(direct)).sum().item())
        diff = torch.nan_to_num((direct.double() - outs[j].double()).abs(), nan=math.inf)
        worst = max(worst, float(diff.max().item()))
        count += direct.numel()
    return eager_figure(worst, nan, count)


VALIDATION_METHOD = (
    "the last replay's outputs of the checked steps, poisoned (NaN) before it, every element against "
    "SDPA's math backend on float32 upcasts of the keys and values each step attended (ref) under "
    "FlashAttention's rule max|o - ref| <= 2 max|ref_lowp - ref| + 1e-5, ref_lowp = the attention in "
    "bf16 torch ops (attention_ref upcast=False)")


def run_row(ctx, cell, spec):
    """Measures one planned row of a cell and returns it (never raises for a backend's refusal,
    a failed capture or a failed check: the row says so)."""
    torch, F, flashlane, a = ctx["torch"], ctx["F"], ctx["flashlane"], ctx["args"]
    sdpa_kernel, SDPBackend = ctx["sdpa_kernel"], ctx["SDPBackend"]
    backend, layout, ps, variant, lengths = spec
    is_sdpa = backend.startswith("torch_sdpa_")
    append = variant == "append"
    steps, R = a.steps, replays_total(a)
    host = lengths_schedule(torch, a, cell.batch, cell.L, variant, lengths)
    seqlens = torch.empty(cell.batch, dtype=torch.int32, device=DEVICE)
    seqlens.copy_(host[0])  # the values the capture's validation reads

    def prepare(r):
        seqlens.copy_(host[r], non_blocking=True)

    def keys_of(r):
        return [int(x) + (1 if append else 0) for x in host[r].tolist()]

    graph_info = {"steps": steps, "layers": cell.layers, "cache_seqlens": lengths, "variant": variant,
                  "capture_error_mode": a.capture_error_mode, "replays": R,
                  "sdpa_kv": a.sdpa_kv if is_sdpa else None}
    problem = decode_problem(cell.batch, cell.L, cell.hq, cell.hkv, cell.d, layout=layout, page_size=ps,
                             variant=variant, lengths=lengths, causal=not is_sdpa)
    env = ctx["env_sdpa"] if is_sdpa else ctx["env_flashlane"]
    checked = list(range(steps)) if a.check_all_steps else sorted({0, steps - 1})
    sdpa_info = None
    if is_sdpa:
        member = SDPA_BACKENDS[backend[len("torch_sdpa_"):]]
        sdpa_info = {"backend": member, "pinned_with": f"sdpa_kernel([SDPBackend.{member}])",
                     "actual_backend": None, "call": "enable_gqa=True, no mask",
                     "kv": ("the cache viewed as [b, hkv, L, d] (transpose(1, 2))" if a.sdpa_kv == "view"
                            else "a contiguous [b, hkv, L, d] copy of the cache")}
        step, kv_of = sdpa_step(F, cell, ctx["sdpa_kv"], append), sdpa_kv_of(ctx["sdpa_kv"])

        def pinned():
            return sdpa_kernel([getattr(SDPBackend, member)])
    else:
        step, kv_of = flashlane_step(flashlane, cell, ps, append, seqlens), cell.flashlane_kv(ps)
        pinned = contextlib.nullcontext

    def refused(status, error, errors_seen=None):
        # A FlashlaneError left this call's receipt; any other error may have stopped before it.
        receipt = flashlane.last_receipt() if isinstance(error, flashlane.FlashlaneError) else None
        row = build_row(backend, problem, env, status=status,
                        metrics={"check": f"not_run: {status[:120]}", "copy_gbps": ctx["copy"]},
                        graph=graph_info, receipt=receipt, sdpa=sdpa_info, proof_class="planner")
        if errors_seen is not None:
            row["errors_seen"] = errors_seen  # PyTorch's warnings: why each SDPA backend declined
        return row

    # 1. Outside the graph: a refusal shows here, before any capture.
    with torch.no_grad(), pinned(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            warm_up(torch, step, steps)
        except (RuntimeError, ValueError) as e:
            why = [first_line(w.message) for w in seen][:8]
            return refused(("refused: " if is_sdpa else "") + first_line(e), e, why if is_sdpa else None)
    # 2. Capture; the receipt is the captured call's (replays run no dispatcher).
    try:
        with torch.no_grad(), pinned():
            graph, outs = capture(torch, step, steps, a.capture_error_mode)
    except Exception as e:  # noqa: BLE001  (any failure of the capture is the row's status)
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        return refused(f"capture failed ({a.capture_error_mode}): {first_line(e)}", e)
    receipt = None if is_sdpa else flashlane.last_receipt()
    if is_sdpa:
        sdpa_info["actual_backend"] = member  # pinned: PyTorch raises rather than fall back
    for o in outs:
        o.fill_(float("nan"))
    # 3. Timed replays.
    timed = range(a.warmup, a.warmup + a.reps)
    times = replay_ms(torch, graph, prepare, 0, a.warmup + a.reps)[a.warmup:]
    metrics = timing_metrics(times, steps, [step_bytes(keys_of(r), cell.hq, cell.hkv, cell.d)[1] for r in timed],
                             ctx["copy"], cell.batch, a.reps, a.warmup)
    if lengths == "advancing":
        mean_keys = [statistics.mean(keys_of(r)[i] for r in timed) for i in range(cell.batch)]
        problem = decode_problem(cell.batch, cell.L, cell.hq, cell.hkv, cell.d, layout=layout, page_size=ps,
                                 variant=variant, lengths=lengths, causal=True, keys_per_seq=mean_keys)
    # 4. The checked replay: poisoned outputs, the last lengths, every element of the checked steps.
    for o in outs:
        o.fill_(float("nan"))
    prepare(R - 1)
    graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        figures = [check_outputs(torch, F, sdpa_kernel, SDPBackend, cell, outs, checked, keys_of(R - 1),
                                 append, kv_of, heads_first=is_sdpa)]
        if not is_sdpa:
            figures.append(replay_vs_call(torch, step, outs, checked))
    del graph, outs
    passed = all(f["pass"] for f in figures)
    metrics.update({
        "check": "pass" if passed else "fail", "checked_tensor": "o",
        "max_abs_diff": figures[0]["max_abs_diff"], "ref_max_abs_diff": figures[0]["ref_max_abs_diff"],
        "nan_count": sum(f["nan_count"] for f in figures), "validation_ran": True,
        "validation_passed": passed,
        "validation_scope": {"kind": "full", "steps": checked, "steps_total": steps},
        "validation_method": VALIDATION_METHOD + (
            "" if is_sdpa else "; and bitwise equal to the same call made outside the graph"),
        "errors": figures})
    return build_row(backend, problem, env, status="ok", metrics=metrics, graph=graph_info,
                     receipt=receipt, sdpa=sdpa_info)


def skipped_rows(ctx, a, batch, L, why):
    rows = []
    for backend, layout, ps, variant, lengths in plan_rows(a):
        is_sdpa = backend.startswith("torch_sdpa_")
        problem = decode_problem(batch, L, a.heads_q, a.heads_kv, a.head_dim, layout=layout,
                                 page_size=ps, variant=variant, lengths=lengths, causal=not is_sdpa)
        graph = {"steps": a.steps, "layers": 0, "cache_seqlens": lengths, "variant": variant,
                 "capture_error_mode": a.capture_error_mode, "replays": replays_total(a),
                 "sdpa_kv": a.sdpa_kv if is_sdpa else None}
        sdpa = {"backend": SDPA_BACKENDS[backend[len("torch_sdpa_"):]], "actual_backend": None} if is_sdpa else None
        rows.append(build_row(backend, problem, ctx["env_sdpa"] if is_sdpa else ctx["env_flashlane"],
                              status=f"skipped: {why}", metrics={"check": "not_run: memory budget",
                                                                 "copy_gbps": ctx["copy"]},
                              graph=graph, sdpa=sdpa, proof_class="planner"))
    return rows


def main(argv=None):
    a = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("skipped: needs a CUDA device (torch is not installed)")
        return 0
    if not torch.cuda.is_available():
        print("skipped: needs a CUDA device (torch.cuda.is_available() is False)")
        return 0
    try:
        import flashlane
    except ImportError as e:
        print(f"decode_graph_step: flashlane is not importable ({e}); install the package first "
              "(scripts/device/python_gpu.sh)", file=sys.stderr)
        return 2
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, os.path.join(HERE, "peers"))
    from torch_sdpa_decode import copy_gbps  # noqa: E402

    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * MIB)
    rotate = max(a.rotate_mib * MIB, 2 * l2)
    copy = copy_gbps()
    ctx = {"torch": torch, "F": F, "flashlane": flashlane, "sdpa_kernel": sdpa_kernel,
           "SDPBackend": SDPBackend, "args": a, "copy": copy,
           "env_flashlane": environment(torch, flashlane, BACKEND),
           "env_sdpa": environment(torch, flashlane, None)}
    print(f"{props.name}: copy bandwidth {copy:.0f} GB/s; L2 {l2 / MIB:.0f} MiB; each graph "
          f"{a.steps} steps over layers holding >= {rotate / MIB:.0f} MiB; capture mode "
          f"{a.capture_error_mode}; torch {torch.__version__}, flashlane {flashlane.version()} "
          f"(sm90 kernels {ctx['env_flashlane'].get('kernel_fingerprint') or '-'})", flush=True)
    out_dir = os.path.dirname(a.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    rows = []

    def show(row):
        m = row["metrics"]
        shown = (f"{m['us_per_step']:9.1f} us/step {m['gbps']:6.0f} GB/s  {m['check']}"
                 if row["status"] == "ok" else row["status"][:90])
        print(f"{row['requested_backend']:20s} {cell_name(row['problem']):28s} "
              f"{row['graph']['variant']:6s} {row['graph']['cache_seqlens']:9s} {shown}", flush=True)
        return row

    with open(a.out, "a") as out:
        for batch in a.batches:
            for L in a.cache_lens:
                layer_bytes = 2 * batch * L * a.heads_kv * a.head_dim * BF16_BYTES
                sdpa_copy = 2 if (a.sdpa_kv == "contiguous" and a.sdpa) else 1
                free, _ = torch.cuda.mem_get_info()
                budget = min(a.mem_gib * GIB, free - 4 * GIB)
                layers = min(a.steps, max(1, math.ceil(rotate / layer_bytes)))
                layers = min(layers, max(1, int(budget // (layer_bytes * sdpa_copy))))
                if layers * layer_bytes * sdpa_copy > budget:
                    why = (f"K+V {layer_bytes * sdpa_copy / GIB:.1f} GiB exceed the memory budget "
                           f"{budget / GIB:.1f} GiB")
                    cell_rows = [show(r) for r in skipped_rows(ctx, a, batch, L, why)]
                else:
                    cell = Cell(torch, a, batch, L, layers, seed=a.seed * 7919 + batch * 131 + L)
                    ctx["sdpa_kv"] = [(k.transpose(1, 2), v.transpose(1, 2)) if a.sdpa_kv == "view" else
                                      (k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous())
                                      for k, v in zip(cell.k, cell.v)]
                    cell_rows = [show(run_row(ctx, cell, spec)) for spec in plan_rows(a)]
                    ctx["sdpa_kv"] = None
                    del cell
                    torch.cuda.empty_cache()
                # The cell's rows are written together, each flashlane row with its SDPA peers.
                for row in attach_peers(cell_rows):
                    out.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
                out.flush()
                rows += cell_rows
    print()
    for line in table_lines(rows):
        print(line)
    failed = [r for r in rows if r["status"] == "ok" and not r["metrics"]["validation_passed"]]
    print(f"{len(rows)} rows appended to {a.out}"
          + (f"; {len(failed)} FAILED validation" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
