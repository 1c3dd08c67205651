"""Proof rows (docs/RECEIPTS.md, schema flashlane.proof_row/1) for the real-work validation.

Pure Python (no torch). counts_for_status is derived here with the same rule, in the same order,
as src/bench/proof.cpp compute_counts_for_status(): `flashlane gate` recomputes it from the row's
own fields and fails on any disagreement (counts_mismatch).

artifact_kind: short_train, prefill, decode (proof_class execute when the run was on a CUDA
device, observational otherwise). The row's `receipt` is one per-call receipt chosen from the
receipts the run left (representative_receipt): the first one that failed or ran another backend
than the requested one, else the last one. All of them are summarized in `receipts_summary`
(counts per runtime_mode / actual_backend, fallback reasons). Pass criteria are entries of
metrics.errors: {"criterion", "value", "limit", "pass", "detail"}; validation_passed is true only
when every criterion passed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from typing import Any, Dict, Iterable, List, Optional

SCHEMA = "flashlane.proof_row/1"
REAL_WORK_KINDS = ("short_train", "prefill", "decode")


def utc_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def representative_receipt(receipts: List[Dict[str, Any]], requested: str) -> Optional[Dict[str, Any]]:
    """The first receipt that failed or ran another backend than `requested`, else the last one;
    None when there is none (nothing of flashlane ran)."""
    for r in receipts:
        if r.get("status") != "ok" or r.get("actual_backend") != requested:
            return r
    return receipts[-1] if receipts else None


def receipts_summary(receipts: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    by = Counter()
    reasons = Counter()
    variants = Counter()
    n = 0
    for r in receipts:
        n += 1
        by[f"{r.get('runtime_mode', '?')}/{r.get('actual_backend') or '(nothing)'}"] += 1
        if r.get("fallback_reason"):
            reasons[r["fallback_reason"]] += 1
        if r.get("status") != "ok":
            reasons[f"status:{r.get('status')}:{r.get('error_reason', '')}"] += 1
        variants[r.get("variant", "")] += 1
    return {"count": n, "by_mode_backend": dict(sorted(by.items())),
            "fallback_reasons": dict(sorted(reasons.items())),
            "variants": dict(sorted(variants.items())[:20])}


def criterion(name: str, passed: bool, value: Any = None, limit: Any = None, detail: str = "") -> Dict[str, Any]:
    return {"criterion": name, "value": value, "limit": limit, "pass": bool(passed), "detail": detail}


def compute_counts_for_status(row: Dict[str, Any]) -> None:
    """Sets counts_for_status and not_counted_reason (src/bench/proof.cpp, same rule and order)."""
    why = ""
    lane = row["gpu_lane"]
    rc = row.get("receipt")
    m = row["metrics"]
    if not lane["ran"]:
        why = "GPU lane did not run" + (": " + lane["reason"] if lane.get("reason") else "")
    elif row["proof_class"] != "execute":
        why = f"proof_class is {row['proof_class']}, not execute"
    elif row["environment"]["sm"] <= 0:
        why = "the environment has no GPU"
    elif rc is None:
        why = "no per-call receipt"
    elif rc["status"] != "ok" or row["status"] != "ok":
        why = "the call failed: " + row["status"]
    elif rc["actual_backend"] != row["requested_backend"]:
        why = (f"requested {row['requested_backend']} but "
               f"{rc['actual_backend'] or 'nothing'} ran")
    elif rc["device"]["sm"] <= 0:
        why = "the receipt's device is not a GPU"
    elif not m["validation_ran"]:
        why = "not validated"
    elif not m["validation_passed"]:
        why = "validation failed"
    elif m["nan_count"] > 0:
        why = "non-finite outputs"
    row["counts_for_status"] = not why
    row["not_counted_reason"] = why


def make_row(*, artifact_kind: str, requested_backend: str, environment: Dict[str, Any],
             gpu_lane: Dict[str, Any], problem: Dict[str, Any], receipts: List[Dict[str, Any]],
             criteria: List[Dict[str, Any]], nan_count: int, preset: str, direction: str = "fwd",
             status: str = "ok", median_ms: Optional[float] = None,
             tok_per_sec: Optional[float] = None, peak_memory_mib: Optional[float] = None,
             memory_method: str = "", reps: int = 0, warmup: int = 0,
             max_abs_diff: Optional[float] = None, ref_max_abs_diff: Optional[float] = None,
             checked_tensor: str = "", validation_scope: str = "",
             peers: Optional[List[Dict[str, Any]]] = None,
             details: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    if artifact_kind not in REAL_WORK_KINDS:
        raise ValueError(f"artifact_kind {artifact_kind!r} is not one of {REAL_WORK_KINDS}")
    rc = representative_receipt(receipts, requested_backend)
    proof_class = "execute" if gpu_lane["ran"] else "observational"
    row = {
        "schema": SCHEMA, "proof_class": proof_class, "artifact_kind": artifact_kind,
        "counts_for_status": False, "not_counted_reason": "", "preset": preset,
        "timestamp": utc_timestamp(), "requested_backend": requested_backend,
        "runtime_mode": rc["runtime_mode"] if rc else direction, "direction": direction,
        "status": status, "environment": environment, "gpu_lane": gpu_lane, "problem": problem,
        "receipt": rc,
        "receipts_summary": receipts_summary(receipts),
        "metrics": {
            "median_ms": median_ms, "tflops": None, "median_tok_per_sec": tok_per_sec,
            "peak_memory_mib": peak_memory_mib, "memory_method": memory_method, "reps": reps,
            "warmup": warmup, "max_abs_diff": max_abs_diff, "ref_max_abs_diff": ref_max_abs_diff,
            "checked_tensor": checked_tensor, "nan_count": int(nan_count),
            "validation_ran": bool(criteria),
            "validation_passed": bool(criteria) and all(c["pass"] for c in criteria),
            "validation_scope": validation_scope, "errors": criteria,
        },
        "peer": peers or [],
        "details": details or {},
    }
    compute_counts_for_status(row)
    return row


def json_safe(x: Any) -> Any:
    """Non-finite floats become "nan" / "inf" / "-inf" (docs/RECEIPTS.md: JSON has none)."""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_rows(path: str, rows: List[Dict[str, Any]], truncate: bool = True) -> None:
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w" if truncate else "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(json_safe(r), allow_nan=False, sort_keys=False) + "\n")
