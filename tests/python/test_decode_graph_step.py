"""bench/decode_graph_step.py without a GPU: its options, the rows it plans per cell, the byte and
GB/s arithmetic (the same bytes as the decode rows of bench/results), the rows it writes
(schema, counts_for_status derived, SDPA rows never counting, strict JSON), FlashAttention's
rule and the replay-vs-call figure, the peers of each flashlane row, the human table, and the
"skipped: needs a CUDA device" exit. No torch needed, except where a test says so: the problem
object against bench/peers/torch_sdpa_decode.py (marker torch); the gate test needs the built
tool (build/tools/flashlane or $FLASHLANE_TOOL)."""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import decode_graph_step as gs  # noqa: E402  (torch is imported by main() only)

DECODE_RECEIPTS = os.path.join(ROOT, "bench", "results", "2026-12-02-h200-decode-with-peers.jsonl")


# ---- options

def test_defaults_are_the_documented_cells():
    a = gs.parse_args([])
    assert a.batches == [1, 16, 64] and a.cache_lens == [4096, 32768]
    assert (a.heads_q, a.heads_kv, a.head_dim) == (32, 8, 128)
    assert a.layouts == [("dense", 0)] and a.variants == ["plain", "append"]
    assert a.lengths == ["fixed", "advancing"] and a.sdpa == ["cudnn", "flash2", "efficient"]
    assert a.steps == 32 and a.reps == 20 and a.warmup == 3 and a.capture_error_mode == "global"
    assert a.sdpa_kv == "view" and a.out == "out/decode-graph-step.jsonl"
    assert gs.replays_total(a) == 24


def test_options_parse_sizes_layouts_and_lists():
    a = gs.parse_args(["--batches", "2,4", "--cache-lens", "1k,8192,1m", "--gqa", "64/8",
                       "--layouts", "dense,paged16,paged64", "--variants", "append",
                       "--lengths", "advancing", "--sdpa", "none", "--capture-error-mode", "global"])
    assert a.batches == [2, 4] and a.cache_lens == [1024, 8192, 1024 * 1024]
    assert (a.heads_q, a.heads_kv) == (64, 8)
    assert a.layouts == [("dense", 0), ("paged16", 16), ("paged64", 64)]
    assert a.variants == ["append"] and a.lengths == ["advancing"] and a.sdpa == []
    assert a.capture_error_mode == "global"


@pytest.mark.parametrize("argv, message", [
    (["--cache-lens", "4q"], "not a size"),
    (["--layouts", "pages16"], "dense or pagedN"),
    (["--layouts", "paged7", "--cache-lens", "4096"], "not a multiple of the page size"),
    (["--gqa", "32/6"], "multiple of heads_kv"),
    (["--variants", "plain,rotary"], "rotary not in"),
    (["--sdpa", "cudnn,math"], "math not in"),
    (["--lengths", "growing"], "growing not in"),
    (["--cache-lens", "32"], "at least 2 x (warmup + reps + 3)"),
    (["--steps", "0"], "must be > 0"),
    (["--capture-error-mode", "loose"], "invalid choice"),
])
def test_bad_options_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gs.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_plan_puts_sdpa_beside_the_fixed_rows_and_advancing_last():
    plan = gs.plan_rows(gs.parse_args([]))
    assert plan == [
        ("sm90", "dense", 0, "plain", "fixed"), ("torch_sdpa_cudnn", "dense", 0, "plain", "fixed"),
        ("torch_sdpa_flash2", "dense", 0, "plain", "fixed"), ("torch_sdpa_efficient", "dense", 0, "plain", "fixed"),
        ("sm90", "dense", 0, "append", "fixed"), ("torch_sdpa_cudnn", "dense", 0, "append", "fixed"),
        ("torch_sdpa_flash2", "dense", 0, "append", "fixed"), ("torch_sdpa_efficient", "dense", 0, "append", "fixed"),
        ("sm90", "dense", 0, "plain", "advancing"), ("sm90", "dense", 0, "append", "advancing"),
    ]
    plan = gs.plan_rows(gs.parse_args(["--layouts", "paged16", "--variants", "plain", "--sdpa", "cudnn"]))
    # SDPA has no paged layout: its rows run on the dense view of the same cell.
    assert plan == [("sm90", "paged16", 16, "plain", "fixed"), ("torch_sdpa_cudnn", "dense", 0, "plain", "fixed"),
                    ("sm90", "paged16", 16, "plain", "advancing")]
    plan = gs.plan_rows(gs.parse_args(["--lengths", "advancing"]))
    assert all(b == "sm90" and lengths == "advancing" for b, _, _, _, lengths in plan)


# ---- arithmetic

def test_step_bytes_are_the_decode_rows_bytes():
    # b16 x 8k, GQA 32/8, head_dim 128: K and V of 16 x 8192 keys x 8 heads x (128 + 128) x 2 B,
    # q and o of 16 x 32 heads x (128 + 128) x 2 B.
    kv, moved = gs.step_bytes([8192] * 16, 32, 8, 128)
    assert kv == 16 * 8192 * 8 * 256 * 2 == 536870912.0
    assert moved == kv + 16 * 32 * 256 * 2
    # Ragged lengths count each sequence's own keys.
    kv, moved = gs.step_bytes([100, 300], 32, 8, 128)
    assert kv == 400 * 8 * 256 * 2 and moved == kv + 2 * 32 * 256 * 2


def test_problem_matches_the_checked_in_decode_rows():
    """The problem object's counts equal those of the rows of the 2026-12-02 decode receipts
    (flashlane bench --preset decode and its SDPA peers) for every dense 32/8 cell there."""
    seen = 0
    with open(DECODE_RECEIPTS) as f:
        for line in f:
            r = json.loads(line)
            p = r["problem"]
            if p.get("layout") != "dense" or (p["heads_q"], p["heads_kv"]) != (32, 8):
                continue
            mine = gs.decode_problem(p["batch"], p["cache_len"], 32, 8, p["head_dim"], causal=False)
            for k in ("batch", "seqlen_q", "seqlen_k", "cache_len", "heads_q", "heads_kv", "head_dim",
                      "head_dim_v", "dtype", "mask", "causal", "varlen", "layout", "page_size",
                      "cache_seqlens", "bytes_kv", "bytes_moved", "flops_fwd"):
                assert mine[k] == p[k], (k, mine[k], p[k])
            seen += 1
    assert seen >= 50


def test_problem_of_each_variant():
    p = gs.decode_problem(4, 4096, 32, 8, 128)
    assert p["mask"] == "causal_bottom_right" and p["causal"] and p["seqlen_new"] == 0
    assert p["cache_seqlens"] == "full" and p["num_pages"] == 0
    p = gs.decode_problem(4, 4096, 32, 8, 128, layout="paged16", page_size=16, variant="append")
    assert p["num_pages"] == 4 * 4096 // 16 and p["seqlen_new"] == 1
    assert p["cache_seqlens"] == "cache_len - 1, + 1 appended"
    assert p["bytes_kv"] == gs.step_bytes([4096] * 4, 32, 8, 128)[0]  # the appended key is attended
    p = gs.decode_problem(2, 4096, 32, 8, 128, lengths="advancing", keys_per_seq=[3000.5, 2500.5])
    assert p["cache_seqlens"].startswith("advancing") and p["bytes_kv"] == 5501 * 8 * 256 * 2
    assert p["flops_fwd"] == 4.0 * 32 * 5501 * 128


def test_timing_metrics_gbps_and_us_per_step():
    nbytes = gs.step_bytes([4096] * 16, 32, 8, 128)[1]
    # 32 steps per replay, replays of 3.2, 3.0 and 3.6 ms: the median step takes 100 us.
    m = gs.timing_metrics([3.2, 3.0, 3.6], 32, [nbytes] * 3, 4200.0, 16, 3, 1)
    assert m["median_ms"] == pytest.approx(0.1) and m["us_per_step"] == pytest.approx(100.0)
    assert m["gbps"] == pytest.approx(nbytes / 1e-4 / 1e9)
    assert m["median_tok_per_sec"] == pytest.approx(16 / 1e-4)
    assert m["replay_ms"] == {"median": 3.2, "min": 3.0, "max": 3.6}
    assert (m["steps_per_replay"], m["reps"], m["warmup"], m["copy_gbps"]) == (32, 3, 1, 4200.0)
    # Advancing lengths: each replay's own bytes over its own time, the median of the rates.
    m = gs.timing_metrics([1.0, 2.0, 4.0], 10, [1e6, 3e6, 2e6], None, 1, 3, 0)
    assert m["gbps"] == pytest.approx(statistics.median([1e6 / 1e-4, 3e6 / 2e-4, 2e6 / 4e-4]) / 1e9)
    assert gs.gbps(1e9, 0) is None and gs.gbps(2e9, 1.0) == 2.0


def test_flashattention_rule_and_replay_figures():
    f = gs.fa_rule_figure("o", 0.003, 0.002, 0, 4096)
    assert f["pass"] and f["tolerance"] == pytest.approx(0.004 + 1e-5) and f["count"] == 4096
    assert not gs.fa_rule_figure("o", 0.00402, 0.002, 0, 4096)["pass"]
    assert not gs.fa_rule_figure("o", 0.0, 0.002, 3, 4096)["pass"]       # NaN left by the poison
    assert not gs.fa_rule_figure("o", math.inf, 0.002, 0, 4096)["pass"]
    assert gs.eager_figure(0.0, 0, 10)["pass"] and not gs.eager_figure(2 ** -10, 0, 10)["pass"]
    assert "ref_max_abs_diff" not in gs.eager_figure(0.0, 0, 10)  # the gate's FA check skips it


# ---- rows

ENV = {"device": "NVIDIA H200", "sm": 90, "torch": "2.11.0+cu130", "cudnn": 91900, "cuda_runtime": "13.0",
       "library_version": "0.1.0", "git_commit": "abc", "compiled_archs": "sm_80,sm_90a",
       "kernel_fingerprint": "0123456789abcdef"}


def receipt(mode="decode", backend="sm90", fingerprint="0123456789abcdef"):
    return {"requested_backend": "sm90", "actual_backend": backend, "runtime_mode": mode, "strict": True,
            "fallback_reason": "", "skipped": [], "variant": "sm90_decode_hdim128_bf16_bn64_packgqa4_splits8",
            "device": {"name": "NVIDIA H200", "sm": 90}, "deterministic": False, "status": "ok",
            "error_reason": "", "surface": mode, "kernel_fingerprint": fingerprint}


def graph(variant="plain", lengths="fixed", sdpa_kv=None):
    return {"steps": 32, "layers": 16, "cache_seqlens": lengths, "variant": variant,
            "capture_error_mode": "relaxed", "replays": 24, "sdpa_kv": sdpa_kv}


def measured(us, batch=16, cache=4096, err=0.002, base=0.003, nan=0, eager=0.0):
    nbytes = gs.step_bytes([cache] * batch, 32, 8, 128)[1]
    m = gs.timing_metrics([us * 32e-3] * 5, 32, [nbytes] * 5, 4200.0, batch, 5, 3)
    figures = [gs.fa_rule_figure("o", err, base, nan, batch * 32 * 128 * 2),
               gs.eager_figure(eager, 0, batch * 32 * 128 * 2)]
    passed = all(f["pass"] for f in figures)
    m.update({"check": "pass" if passed else "fail", "max_abs_diff": err, "ref_max_abs_diff": base,
              "nan_count": nan, "validation_ran": True, "validation_passed": passed,
              "validation_scope": {"kind": "full", "steps": [0, 31], "steps_total": 32}, "errors": figures})
    return m


def sm90_row(us=20.0, batch=16, cache=4096, variant="plain", lengths="fixed", layout="dense", **kw):
    p = gs.decode_problem(batch, cache, 32, 8, 128, layout=layout, page_size=16 if layout != "dense" else 0,
                          variant=variant, lengths=lengths)
    mode = gs.runtime_mode_of(layout, variant)
    return gs.build_row("sm90", p, ENV, status="ok", metrics=measured(us, batch, cache, **kw),
                        graph=graph(variant, lengths), receipt=receipt(mode))


def sdpa_row(name, us=25.0, batch=16, cache=4096, variant="plain", status="ok"):
    p = gs.decode_problem(batch, cache, 32, 8, 128, variant=variant, causal=False)
    sd = {"backend": gs.SDPA_BACKENDS[name], "actual_backend": gs.SDPA_BACKENDS[name] if status == "ok" else None}
    if status != "ok":
        return gs.build_row(f"torch_sdpa_{name}", p, ENV, status=status, metrics={"check": "not_run: refused"},
                            graph=graph(variant, sdpa_kv="view"), sdpa=sd, proof_class="planner")
    return gs.build_row(f"torch_sdpa_{name}", p, ENV, status="ok", metrics=measured(us, batch, cache),
                        graph=graph(variant, sdpa_kv="view"), sdpa=sd)


def test_flashlane_row_schema_and_counts():
    r = sm90_row()
    for k in ("schema", "proof_class", "artifact_kind", "counts_for_status", "not_counted_reason", "preset",
              "timestamp", "requested_backend", "runtime_mode", "direction", "surface", "status",
              "environment", "gpu_lane", "problem", "receipt", "metrics", "peer", "timing_mode", "graph"):
        assert k in r, k
    assert r["schema"] == "flashlane.proof_row/1" and r["direction"] == "decode"
    assert r["timing_mode"] == "cuda_graph_step" and r["preset"] == "decode_graph_step"
    assert r["runtime_mode"] == "decode" and r["surface"] == "decode"
    assert r["receipt"]["actual_backend"] == "sm90" and r["environment"]["kernel_fingerprint"]
    m = r["metrics"]
    assert m["us_per_step"] == pytest.approx(20.0) and m["median_ms"] == pytest.approx(0.02)
    assert m["gbps"] == pytest.approx(r["problem"]["bytes_moved"] / 20e-6 / 1e9)
    assert m["tflops"] == pytest.approx(r["problem"]["flops_fwd"] / 20e-6 / 1e12)
    assert r["counts_for_status"] and r["not_counted_reason"] == ""
    assert sm90_row(variant="append")["runtime_mode"] == "append_decode"
    assert sm90_row(layout="paged16")["runtime_mode"] == "paged_decode"


def test_a_failed_check_is_written_and_does_not_count():
    for r in (sm90_row(err=0.01), sm90_row(nan=5), sm90_row(eager=2 ** -8, lengths="advancing")):
        assert r["status"] == "ok" and r["metrics"]["check"] == "fail"
        assert not r["metrics"]["validation_passed"] and not r["counts_for_status"]
        assert r["not_counted_reason"] in ("validation failed", "non-finite outputs")
    r = sm90_row()
    r["receipt"]["actual_backend"] = "reference_cuda"
    gs.compute_counts_for_status(r)
    assert not r["counts_for_status"] and "but reference_cuda ran" in r["not_counted_reason"]


def test_sdpa_rows_never_count():
    r = sdpa_row("cudnn")
    assert r["receipt"] is None and not r["counts_for_status"] and r["not_counted_reason"] == gs.PEER_REASON
    assert r["peer_call"] == "sdpa enable_gqa" and r["sdpa"]["actual_backend"] == "CUDNN_ATTENTION"
    assert r["problem"]["mask"] == "no_mask" and not r["problem"]["causal"]
    r = sdpa_row("efficient", status="refused: No available kernel. Aborting execution.")
    assert r["proof_class"] == "planner" and r["metrics"]["gbps"] is None and r["peer_call"] is None
    assert not r["metrics"]["validation_ran"] and not r["counts_for_status"]


def test_rows_are_strict_json():
    r = sm90_row(err=math.inf)
    text = json.dumps(gs.json_safe(r), allow_nan=False)
    j = json.loads(text)
    assert j["metrics"]["max_abs_diff"] == "inf" and j["metrics"]["errors"][0]["max_abs_diff"] == "inf"


def test_peers_and_table():
    rows = [sm90_row(20.0), sdpa_row("cudnn", 25.0), sdpa_row("flash2", 40.0),
            sdpa_row("efficient", status="refused: No available kernel. Aborting execution."),
            sm90_row(22.0, layout="paged16"), sm90_row(18.0, lengths="advancing"),
            sm90_row(30.0, variant="append"), sdpa_row("cudnn", 33.0, variant="append")]
    gs.attach_peers(rows)
    peer = {p["backend"]: p for p in rows[0]["peer"]}
    assert set(peer) == {"torch_sdpa_cudnn", "torch_sdpa_flash2"}  # the refused one has no number
    assert peer["torch_sdpa_cudnn"]["speedup"] == pytest.approx(1.25) and not peer["torch_sdpa_cudnn"]["counted"]
    assert {p["backend"] for p in rows[4]["peer"]} == {"torch_sdpa_cudnn", "torch_sdpa_flash2"}  # paged: dense peers
    assert rows[5]["peer"] == []                                              # advancing: no peer
    assert [p["backend"] for p in rows[6]["peer"]] == ["torch_sdpa_cudnn"]    # append beside append
    lines = gs.table_lines(rows)
    assert "cudnn GB/s" in lines[0] and "efficient GB/s" in lines[0]
    body = lines[1:]
    assert len(body) == 4  # one line per flashlane row
    dense = next(l for l in body if l.startswith("dense b16 kv4096 32/8 d128") and " plain " in l and "fixed" in l)
    assert "1.25x" in dense and "2.00x" in dense and "refused" in dense and dense.endswith("pass"), dense
    paged = next(l for l in body if l.startswith("paged16"))
    assert "1.14x" in paged, paged
    adv = next(l for l in body if "advancing" in l)
    assert "x " not in adv.split("advancing")[1], adv
    app = next(l for l in body if " append " in l)
    assert "1.10x" in app, app


# ---- the script without a GPU

def test_without_cuda_it_says_skipped_and_exits_0(tmp_path):
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present: the skip path is not taken (the bench would run)")
    out = tmp_path / "rows.jsonl"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "decode_graph_step.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("skipped: needs a CUDA device"), p.stdout
    assert not out.exists()


def test_bad_option_exits_2_without_cuda():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "decode_graph_step.py"), "--layouts", "x"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "dense or pagedN" in p.stderr


@pytest.mark.torch
def test_problem_matches_the_sdpa_decode_peer():
    """The same keys and counts as bench/peers/torch_sdpa_decode.py decode_problem (imports torch)."""
    sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))
    import torch_sdpa_decode

    for batch, cache in ((1, 4096), (64, 32768)):
        theirs = torch_sdpa_decode.decode_problem(batch, cache, 32, 8, 128)
        mine = gs.decode_problem(batch, cache, 32, 8, 128, causal=False)
        assert {k: mine[k] for k in theirs} == theirs


# ---- the gate reads the rows

def gate_tool():
    for p in (os.environ.get("FLASHLANE_TOOL", ""), os.path.join(ROOT, "build", "tools", "flashlane")):
        if p and os.access(p, os.X_OK):
            return p
    return None


def test_gate_accepts_the_rows(tmp_path):
    tool = gate_tool()
    if tool is None:
        pytest.skip("needs the flashlane tool (build/tools/flashlane or $FLASHLANE_TOOL): not built")
    info = json.loads(subprocess.run([tool, "info", "--json"], capture_output=True, text=True, timeout=60).stdout)
    fp = info["library"]["kernel_fingerprints"]["sm90"]
    rows = [sm90_row(), sdpa_row("cudnn"), sdpa_row("efficient", status="refused: No available kernel."),
            sm90_row(variant="append"), sm90_row(lengths="advancing")]
    for r in rows:
        r["environment"]["kernel_fingerprint"] = fp
        if r["receipt"]:
            r["receipt"]["kernel_fingerprint"] = fp
    gs.attach_peers(rows)
    config = {"description": "decode_graph_step rows", "claims": ["decode"],
              "required": [{"preset": "decode_graph_step", "backend": "sm90", "runtime_mode": "decode",
                            "head_dim": 128},
                           {"preset": "decode_graph_step", "backend": "sm90", "runtime_mode": "append_decode"}]}
    cfg, path = tmp_path / "gate.json", tmp_path / "rows.jsonl"
    cfg.write_text(json.dumps(config))

    def gate(rows):
        path.write_text("".join(json.dumps(gs.json_safe(r), allow_nan=False) + "\n" for r in rows))
        p = subprocess.run([tool, "gate", str(path), "--config", str(cfg), "--json"],
                           capture_output=True, text=True, timeout=60)
        return p.returncode, json.loads(p.stdout)["violations"]

    ours = [r for r in rows if r["requested_backend"] == "sm90"]
    assert gate(ours) == (0, [])
    # The SDPA rows are read as the decode peers' are (execute rows without a flashlane receipt:
    # mode_not_executed, as for bench/results' peer rows); nothing else is said of any row.
    rc, violations = gate(rows)
    assert {v["rule"] for v in violations} == {"mode_not_executed"}
    assert all("torch_sdpa_" in v["key"] for v in violations), violations
    # A failed check: the row is there, does not count, and the gate says so.
    bad = sm90_row(err=0.01)
    bad["environment"]["kernel_fingerprint"] = bad["receipt"]["kernel_fingerprint"] = fp
    rc, violations = gate([bad] + ours[1:])
    assert rc == 1 and {"required_not_counted", "error_bound"} <= {v["rule"] for v in violations}, violations
