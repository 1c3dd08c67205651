"""bench/decode_table.py on a small synthetic receipts file (no torch, no GPU): the join of
flashlane's decode rows with the SDPA peer rows, the table, and each bar's PASS/FAIL with the
failing cells; refused, unchecked and skipped cells; the plot when matplotlib is present."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import decode_table  # noqa: E402

COPY = 4000.0


def problem(batch, cache, hq=32, hkv=8, layout="dense"):
    return {"batch": batch, "seqlen_q": 1, "seqlen_k": cache, "cache_len": cache, "heads_q": hq,
            "heads_kv": hkv, "head_dim": 128, "layout": layout,
            "page_size": 0 if layout == "dense" else int(layout[5:])}


def ours(batch, cache, gbps, layout="dense", check="pass", status="ok", hq=32):
    return {"schema": "flashlane.proof_row/1", "direction": "decode", "requested_backend": "sm90",
            "runtime_mode": "decode" if layout == "dense" else "paged_decode", "status": status,
            "problem": problem(batch, cache, hq=hq, layout=layout),
            "receipt": {"variant": "decode"},
            "metrics": {"gbps": gbps if status == "ok" else None, "copy_gbps": COPY, "check": check}}


def peer(name, batch, cache, gbps, status="ok", hq=32):
    return {"schema": "flashlane.proof_row/1", "direction": "decode",
            "requested_backend": f"torch_sdpa_{name}", "status": status, "counts_for_status": False,
            "peer_call": "sdpa enable_gqa", "problem": problem(batch, cache, hq=hq),
            "metrics": {"gbps": gbps if status == "ok" else None, "copy_gbps": COPY}}


def write(tmp_path, rows):
    p = tmp_path / "receipts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def passing_rows():
    return [
        ours(16, 8192, 3800), ours(16, 8192, 3700, layout="paged16"), peer("cudnn", 16, 8192, 3600),
        peer("flash2", 16, 8192, 3400),
        ours(1, 32768, 3200), peer("cudnn", 1, 32768, 2600), peer("flash2", 1, 32768, 2300),
        ours(1, 8192, 2000), peer("cudnn", 1, 8192, 1500), peer("flash2", 1, 8192, 1200),
        # A row of another direction is ignored.
        {"direction": "fwd", "requested_backend": "sm90", "problem": {}, "metrics": {}},
    ]


def test_every_bar_passes(tmp_path, capsys):
    assert decode_table.main([write(tmp_path, passing_rows())]) == 0
    out = capsys.readouterr().out
    for bar in "abcd":
        assert f"bar ({bar})" in out and "FAIL" not in out, out
    # The table: % of copy and the ratio to cuDNN, the paged cell beside the dense peer.
    line = next(l for l in out.splitlines() if l.startswith("dense b16 kv8192"))
    assert "95.0" in line and "1.06" in line, line
    line = next(l for l in out.splitlines() if l.startswith("paged16 b16 kv8192"))
    assert "3600" in line and "1.03" in line, line


def test_failing_cells_are_named(tmp_path, capsys):
    rows = passing_rows()
    rows[0] = ours(16, 8192, 3000)       # 75% of copy: bar (a) fails; 0.83x cuDNN: bar (d) fails
    rows[7] = ours(1, 8192, 1700)        # 1.13x cuDNN: bar (c) fails
    assert decode_table.main([write(tmp_path, rows)]) == 1
    out = capsys.readouterr().out
    assert "bar (a) >= 90% of copy bandwidth at batch >= 16: FAIL" in out, out
    assert "dense b16 kv8192 32/8 d128: 75.0% of copy" in out, out
    assert "bar (b) >= 75% of copy bandwidth at batch 1, 32k cache: PASS" in out, out
    assert "bar (c) >= 1.2x cuDNN at batch 1, 8k and 32k caches: FAIL" in out, out
    assert "dense b1 kv8192 32/8 d128: 1.13x cuDNN" in out, out
    assert "bar (d) >= 1.0x cuDNN on every cell where both ran: FAIL" in out, out
    assert "dense b16 kv8192 32/8 d128: 0.83x cuDNN" in out, out


def test_refused_unchecked_and_skipped_cells(tmp_path, capsys):
    rows = passing_rows()
    rows[0] = ours(16, 8192, None, status="strict refusal [sm90.decode_not_implemented]",
                   check="not_run: sm90.decode_not_implemented")
    rows[4] = ours(1, 32768, 3200, check="not_run: reference_cuda.decode_not_implemented")
    rows.append(ours(256, 131072, None, status="skipped: K+V 128.0 GiB exceed the memory budget 48.0 GiB",
                     check="not_run: memory budget"))
    path = write(tmp_path, rows)
    assert decode_table.main([path]) == 1
    out = capsys.readouterr().out
    assert "dense b16 kv8192 32/8 d128: strict refusal [sm90.decode_not_implemented]" in out, out
    assert "dense b1 kv32768 32/8 d128: check not_run: reference_cuda.decode_not_implemented" in out, out
    assert "skipped (memory budget, not judged): dense b256 kv131072 32/8 d128" in out, out
    # --allow-unchecked judges the unchecked number, and says so.
    decode_table.main([path, "--allow-unchecked"])
    out = capsys.readouterr().out
    assert "bar (b) >= 75% of copy bandwidth at batch 1, 32k cache: PASS" in out, out
    assert "judged unchecked (check not_run: reference_cuda.decode_not_implemented)" in out, out


def test_bar_without_cells_fails(tmp_path, capsys):
    assert decode_table.main([write(tmp_path, [ours(4, 1024, 3000), peer("cudnn", 4, 1024, 2000)])]) == 1
    out = capsys.readouterr().out
    assert "bar (a) >= 90% of copy bandwidth at batch >= 16: FAIL (no cells in the file)" in out, out
    assert "bar (d) >= 1.0x cuDNN on every cell where both ran: PASS (1 cells)" in out, out


def test_refused_peer_fails_bar_c(tmp_path, capsys):
    rows = [r for r in passing_rows() if not (r["requested_backend"] == "torch_sdpa_cudnn"
                                              and r["problem"].get("cache_len") == 8192
                                              and r["problem"]["batch"] == 1)]
    rows.append(peer("cudnn", 1, 8192, None, status="refused"))
    assert decode_table.main([write(tmp_path, rows)]) == 1
    out = capsys.readouterr().out
    assert "dense b1 kv8192 32/8 d128: no cuDNN number: refused" in out, out


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_plot(tmp_path):
    png = tmp_path / "decode.png"
    assert decode_table.main([write(tmp_path, passing_rows()), "--plot", str(png)]) == 0
    assert png.stat().st_size > 0
