"""The real-work validation (bench/real_work, docs/VALIDATION.md) on the CPU.

Without torch: the byte-level loader (its own small files, and real license texts when
/usr/share/common-licenses exists), the proof rows and their counts_for_status, and the gate
(build/tools/flashlane gate, when built) with bench/gate_real_work.json: it passes on a complete
set of counting rows and fails when a required row is missing or did not execute.
The printed summary (decode divergences and their logit gaps) and the hd64 diagnosis' plan, receipt
check and table, on made-up data (no torch).
With torch + transformers (marker torch): a tiny end-to-end smoke run of realwork_run.py on the
CPU (reference_cpu), with a 3-step diagnosis; its rows are observational and must not count, and
the diagnosis writes none.
"""

import copy
import functools
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bench", "real_work"))

import realwork_data as rd  # noqa: E402
import realwork_rows as rr  # noqa: E402
import realwork_run as rw  # noqa: E402  (torch is imported by main() only)

LICENSES = "/usr/share/common-licenses"


def write_tree(base, files):
    for rel, data in files.items():
        p = os.path.join(base, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)


@pytest.fixture
def small_tree(tmp_path):
    files = {f"a/file{i:02d}.txt": (f"text file {i}\n" * (20 + 7 * i)).encode() for i in range(30)}
    files["b/binary.bin"] = b"\x00\x01\x02" * 100
    files["b/empty.txt"] = b""
    files["b/utf8.txt"] = "h\u00e9llo w\u00f6rld \u2603\n".encode() * 40
    write_tree(str(tmp_path), files)
    os.symlink(os.path.join(str(tmp_path), "a", "file00.txt"), os.path.join(str(tmp_path), "b", "link.txt"))
    return str(tmp_path)


def test_list_files_is_sorted_and_skips_binary_empty_and_links(small_tree):
    files = rd.list_files([small_tree, os.path.join(small_tree, "missing")])
    rels = [r for _, r, _ in files]
    assert rels == sorted(rels)
    assert "b/binary.bin" not in rels and "b/empty.txt" not in rels and "b/link.txt" not in rels
    assert len(rels) == 31


def test_encode_decode_and_vocab():
    toks = rd.encode("a\u00e9".encode())
    assert list(toks) == [rd.BOS, 97, 0xC3, 0xA9, rd.EOS]
    assert rd.decode(toks) == "a\u00e9"
    assert max(rd.BOS, rd.EOS, rd.PAD) < rd.VOCAB_SIZE and rd.VOCAB_SIZE % 8 == 0


def test_split_is_by_content_hash():
    assert rd.split_of("00000000" + "f" * 56, 0.05) == "heldout"
    assert rd.split_of("ffffffff" + "0" * 56, 0.05) == "train"
    h = rd.content_hash(b"same bytes")
    assert rd.split_of(h, 0.3) == rd.split_of(rd.content_hash(b"same bytes"), 0.3)


def test_corpus_is_deterministic_and_fixed_length(small_tree):
    a = rd.ByteCorpus([small_tree], seq_len=32, seed=7, heldout_fraction=0.3)
    b = rd.ByteCorpus([small_tree], seq_len=32, seed=7, heldout_fraction=0.3)
    assert a.stats.fingerprint == b.stats.fingerprint
    assert a.sequences("train") == b.sequences("train")
    assert a.num_sequences("train") > 4 and a.num_sequences("heldout") > 0
    for s in a.sequences("train") + a.sequences("heldout"):
        assert len(s) == 32 and all(0 <= t < rd.VOCAB_SIZE for t in s)
    # Every token of a split comes from its split's files, whatever the seed: the split is by hash.
    c = rd.ByteCorpus([small_tree], seq_len=32, seed=8, heldout_fraction=0.3)
    assert c.stats.files_used == a.stats.files_used
    assert c.stats.fingerprint != a.stats.fingerprint  # other file order
    assert [list(x) for x in a.batches("train", 2, 0)] == [list(x) for x in b.batches("train", 2, 0)]
    assert list(a.batches("train", 2, 0)) != list(a.batches("train", 2, 1))
    steps = a.take_batches("train", 2, 3 * a.num_sequences("train"))  # cycles through epochs
    assert len(steps) == 3 * a.num_sequences("train") and all(len(x) == 2 for x in steps)


def test_train_and_heldout_files_are_disjoint(small_tree):
    corpus = rd.ByteCorpus([small_tree], seq_len=16, seed=0, heldout_fraction=0.3)
    split = {}
    for _, rel, path in rd.list_files([small_tree]):
        with open(path, "rb") as f:
            split[rel] = rd.split_of(rd.content_hash(f.read()), 0.3)
    assert corpus.stats.files_used["heldout"] == sum(1 for s in split.values() if s == "heldout")
    assert corpus.stats.files_used["train"] == sum(1 for s in split.values() if s == "train")
    for p in corpus.stats.first_files["heldout"]:
        with open(p, "rb") as f:
            assert rd.split_of(rd.content_hash(f.read()), 0.3) == "heldout"


def test_token_caps_and_prompts(small_tree):
    corpus = rd.ByteCorpus([small_tree], seq_len=16, seed=0, heldout_fraction=0.3,
                           max_tokens={"train": 100, "heldout": 40})
    assert corpus.stats.tokens["train"] <= 100 and corpus.stats.tokens["heldout"] <= 40
    prompts = corpus.prompts(2, 10)
    assert [len(p) for p in prompts] == [10, 10]
    with pytest.raises(ValueError):
        corpus.prompts(2, 17)


@pytest.mark.skipif(not os.path.isdir(LICENSES), reason=f"{LICENSES} is not present on this machine")
def test_real_license_texts():
    corpus = rd.ByteCorpus([LICENSES], seq_len=256, seed=0, heldout_fraction=0.2)
    assert corpus.stats.files_used["train"] + corpus.stats.files_used["heldout"] >= 3
    text = rd.decode(corpus.sequences("train")[0])
    assert sum(c.isalpha() for c in text) > 100  # real prose, not noise
    seqs = corpus.sequences("train")
    assert rd.BOS in [t for s in seqs for t in s]
    assert corpus.stats.missing_roots == []


# ------------------------------------------------------------------------------------------------
# Proof rows and the gate.

@functools.lru_cache(maxsize=None)
def tool_fingerprint(backend="sm90"):
    """The kernel fingerprint of the built tool (`flashlane info --json`), "" without the tool:
    the gate counts only rows of its own build's kernels."""
    tool = gate_tool()
    if tool is None:
        return ""
    p = subprocess.run([tool, "info", "--json"], capture_output=True, text=True, timeout=60)
    return json.loads(p.stdout)["library"]["kernel_fingerprints"][backend]


def env(gpu=True, fingerprint=None):
    return {"device": "NVIDIA H200" if gpu else "cpu", "sm": 90 if gpu else 0, "driver": "x",
            "cuda_runtime": "13.0", "library_version": "0.1.0", "git_commit": "abc",
            "compiled_archs": "sm_90a",
            "kernel_fingerprint": tool_fingerprint() if fingerprint is None else fingerprint}


def receipt(backend="sm90", mode="fwd", sm=90):
    return {"requested_backend": "sm90", "actual_backend": backend, "runtime_mode": mode,
            "strict": False, "fallback_reason": "" if backend == "sm90" else "x",
            "skipped": [], "variant": "v", "device": {"name": "NVIDIA H200", "sm": sm},
            "deterministic": False, "status": "ok", "error_reason": ""}


PROBLEM = {"batch": 4, "seqlen_q": 2048, "seqlen_k": 2048, "heads_q": 8, "heads_kv": 2,
           "head_dim": 64, "head_dim_v": 64, "dtype": "bfloat16", "mask": "causal_bottom_right",
           "causal": True, "window_left": -1, "window_right": -1, "softcap": 0.0, "varlen": False}


def row(kind="short_train", preset="real_work.steps100", head_dim=64, receipts=None, gpu=True,
        passed=True):
    p = dict(PROBLEM, head_dim=head_dim, head_dim_v=head_dim)
    return rr.make_row(artifact_kind=kind, requested_backend="sm90", environment=env(gpu),
                       gpu_lane={"ran": gpu, "reason": "" if gpu else "no CUDA device"}, problem=p,
                       receipts=receipts if receipts is not None else [receipt(), receipt(mode="bwd")],
                       criteria=[rr.criterion("final_loss_ratio", passed, 1.01, 1.05)], nan_count=0,
                       preset=preset, median_ms=float("nan") if not passed else 50.0,
                       details={"loss_curve": {"sdpa": [5.5, float("inf")]}})


def full_set():
    rows = []
    for d in (64, 128):
        rows.append(row("short_train", "real_work.steps2", d))
        rows.append(row("short_train", "real_work.steps100", d))
        rows.append(row("prefill", "real_work", d, receipts=[receipt()]))
        rows.append(row("decode", "real_work", d, receipts=[receipt()]))
    return rows


def test_counts_for_status_rule():
    assert row()["counts_for_status"] and row()["not_counted_reason"] == ""
    r = row(gpu=False)
    assert r["proof_class"] == "observational" and not r["counts_for_status"]
    r = row(receipts=[receipt(), receipt("torch_sdpa")])
    assert not r["counts_for_status"] and r["receipt"]["actual_backend"] == "torch_sdpa"
    assert "requested sm90 but torch_sdpa ran" in r["not_counted_reason"]
    r = row(receipts=[])
    assert r["receipt"] is None and r["not_counted_reason"] == "no per-call receipt"
    r = row(passed=False)
    assert r["not_counted_reason"] == "validation failed"
    assert r["runtime_mode"] == "bwd"  # the representative receipt: the last one when all ran sm90
    with pytest.raises(ValueError):
        row(kind="microbench_case")


def test_rows_are_strict_json(tmp_path):
    path = str(tmp_path / "rows.jsonl")
    rr.write_rows(path, [row(passed=False)])
    line = open(path).read().strip()
    j = json.loads(line)  # no NaN literals
    assert j["metrics"]["median_ms"] == "nan" and j["details"]["loss_curve"]["sdpa"][1] == "inf"
    assert j["schema"] == "flashlane.proof_row/1"


def gate_tool():
    for p in (os.environ.get("FLASHLANE_TOOL", ""), os.path.join(ROOT, "build", "tools", "flashlane")):
        if p and os.access(p, os.X_OK):
            return p
    return None


def run_gate(tmp_path, rows):
    tool = gate_tool()
    if tool is None:
        pytest.skip("needs the flashlane tool (build/tools/flashlane or $FLASHLANE_TOOL): not built")
    path = str(tmp_path / "rows.jsonl")
    rr.write_rows(path, rows)
    p = subprocess.run([tool, "gate", path, "--config", os.path.join(ROOT, "bench", "gate_real_work.json"),
                        "--json"], capture_output=True, text=True, timeout=60)
    out = json.loads(p.stdout)
    return p.returncode, out, {v["rule"] for v in out["violations"]}


def test_gate_passes_on_the_complete_set(tmp_path):
    rc, out, rules = run_gate(tmp_path, full_set())
    assert rc == 0 and out["pass"] and out["counting_rows"] == 8, out


def test_gate_fails_on_rows_of_other_kernels(tmp_path):
    rows = full_set()
    for r in rows[:2]:
        r["environment"]["kernel_fingerprint"] = "0123456789abcdef"
    rows[2]["environment"].pop("kernel_fingerprint")  # written before fingerprints
    rc, out, rules = run_gate(tmp_path, rows)
    assert rc == 1 and "stale_fingerprint" in rules and "required_not_counted" in rules, out
    assert out["stale_rows"] == 3 and out["counting_rows"] == 5, out


def test_gate_fails_when_a_required_row_is_missing(tmp_path):
    rows = full_set()
    del rows[3]  # decode, head_dim 64
    rc, out, rules = run_gate(tmp_path, rows)
    assert rc != 0 and "required_missing" in rules, out


def test_gate_fails_when_a_row_did_not_execute(tmp_path):
    rows = full_set()
    rows[1] = row("short_train", "real_work.steps100", 64, gpu=False)  # CPU: observational
    rc, out, rules = run_gate(tmp_path, rows)
    assert rc != 0 and "required_missing" in rules, out  # selectors require proof_class execute
    rows = full_set()
    rows[2] = row("prefill", "real_work", 64, receipts=[receipt("torch_sdpa")])  # fell back
    rc, out, rules = run_gate(tmp_path, rows)
    assert rc != 0 and "required_not_counted" in rules, out


def test_gate_fails_on_a_forged_row(tmp_path):
    rows = full_set()
    forged = copy.deepcopy(row(passed=False))
    forged["counts_for_status"] = True
    forged["not_counted_reason"] = ""
    rows[1] = forged
    rc, out, rules = run_gate(tmp_path, rows)
    assert rc != 0 and "counts_mismatch" in rules, out


# ------------------------------------------------------------------------------------------------
# The printed summary and the hd64 diagnosis, on made-up data.

DIVERGENCE = [
    {"prompt": 0, "first_divergence": None, "max_abs_logit_diff": 0.25},
    {"prompt": 1, "first_divergence": 8, "lane_attention_token": 101, "sdpa_token": 32,
     "logit_gap_lane_attention": 0.0625, "logit_gap_sdpa": 0.125,
     "max_abs_logit_diff_at_divergence": 0.3125, "max_abs_logit_diff_before": 0.1875},
    {"prompt": 2, "first_divergence": 15, "lane_attention_token": 10, "sdpa_token": 46,
     "logit_gap_lane_attention": 0.5, "logit_gap_sdpa": 0.03125,
     "max_abs_logit_diff_at_divergence": 0.75, "max_abs_logit_diff_before": 0.25},
]


def test_summary_line_prints_the_decode_divergences_and_logit_gaps():
    r = row("decode", "real_work", receipts=[receipt()])
    r["details"] = {"variant": "hd64", "decode_backend": "sm90", "divergence": DIVERGENCE,
                    "token_agreement_vs_sdpa": 0.78125}
    line = rw.summary_line(r)
    assert "decode_backend=sm90 first divergence [None, 8, 15] agreement 0.781" in line, line
    # per diverging prompt: position, both tokens, each backend's margin, the logit gap there
    assert ("p1@8 tok sdpa 32 lane 101 margin sdpa 0.1250 lane 0.0625 max|dlogit| 0.3125 "
            "(before 0.1875)") in line, line
    assert "p2@15 tok sdpa 46 lane 10 margin sdpa 0.0312 lane 0.5000 max|dlogit| 0.7500" in line, line
    assert "p0@" not in line
    assert rw.divergence_text(DIVERGENCE[:1]) == ""
    r["details"]["divergence"] = DIVERGENCE[:1]
    assert "|" not in rw.summary_line(r).split("agreement")[1]  # nothing diverged: no gap text
    t = row("short_train", "real_work.steps100")
    t["details"].update(variant="hd64", final_loss={"lane_attention": 2.4843, "sdpa": 2.3762},
                        tok_per_sec={"lane_attention": 195979.4, "sdpa": None})
    line = rw.summary_line(t)
    assert "loss 2.4843 vs 2.3762 ratio 1.0100 tok/s 195979 vs None" in line, line


def test_diagnose_plan_adapts_to_the_device():
    gpu, skipped = rw.diagnose_plan("cuda", "sm90")
    assert [v["name"] for v in gpu] == ["sdpa", "lane_sm90", "lane_reference_cuda", "sdpa_math",
                                        "lane_fwd_sm90_bwd_reference_cuda", "lane_fwd_reference_cuda_bwd_sm90"]
    assert skipped == []
    split = {v["name"]: (v["forward"], v["backward"]) for v in gpu if v["impl"] == "lane"}
    assert split["lane_fwd_sm90_bwd_reference_cuda"] == ("sm90", "reference_cuda")
    assert split["lane_fwd_reference_cuda_bwd_sm90"] == ("reference_cuda", "sm90")
    assert len({v["label"] for v in gpu}) == len(gpu) and all(len(v["label"]) <= 12 for v in gpu)
    cpu, skipped = rw.diagnose_plan("cpu", "reference_cpu")
    assert [v["name"] for v in cpu] == ["sdpa", "lane_reference_cpu", "sdpa_math"]
    assert all("cuda" not in str(v.get("forward")) + str(v.get("backward")) for v in cpu)
    assert [s["name"] for s in skipped] == ["lane_sm90", "lane_reference_cuda", "lane_fwd_sm90_bwd_reference_cuda",
                                            "lane_fwd_reference_cuda_bwd_sm90"]
    assert all("this run is on cpu" in s["reason"] for s in skipped)
    cpu, skipped = rw.diagnose_plan("cpu", "reference_cpu", False, "no sdpa_kernel")
    assert "sdpa_math" not in [v["name"] for v in cpu] and {"name": "sdpa_math", "reason": "no sdpa_kernel"} in skipped


def test_ran_as_checks_the_receipts_against_the_label():
    ok = [receipt("sm90", "fwd"), dict(receipt("reference_cuda", "bwd"), requested_backend="reference_cuda")]
    assert rw.ran_as(ok, "sm90", "reference_cuda") == {
        "fwd": {"sm90": 1}, "bwd": {"reference_cuda": 1}, "failed": 0, "as_labelled": True}
    assert not rw.ran_as(ok, "sm90", "sm90")["as_labelled"]  # the backward ran another backend
    fell_back = [receipt("sm90", "fwd"), dict(receipt("reference_cuda", "bwd"), requested_backend="sm90")]
    assert not rw.ran_as(fell_back, "sm90", "reference_cuda")["as_labelled"]  # requested sm90
    assert not rw.ran_as([receipt("sm90", "fwd")], "sm90", "sm90")["as_labelled"]  # no backward at all
    failed = [receipt("sm90", "fwd"), dict(receipt("sm90", "bwd"), status="backend_inapplicable")]
    assert rw.ran_as(failed, "sm90", "sm90")["failed"] == 1


def made_up_diagnosis(steps=40):
    variants, skipped = rw.diagnose_plan("cuda", "sm90")
    out = []
    for i, v in enumerate(variants):
        scale = {"lane_sm90": 1.015, "lane_fwd_reference_cuda_bwd_sm90": 1.015}.get(v["name"], 1.0)
        losses = [(5.0 - 2.5 * s / steps) * (1.0 if s < 10 else scale) for s in range(steps)]
        x = dict(v, losses=losses, error="", heldout_loss=2.5, median_step_ms=30.0 + i)
        if v["impl"] == "lane":
            x["ran_as"] = {"fwd": {v["forward"]: 8 * steps}, "bwd": {v["backward"]: 8 * steps},
                           "failed": 0, "as_labelled": True}
        out.append(x)
    out[2]["losses"] = out[2]["losses"][:25]  # a variant cut short
    out[2]["error"] = "step 25: cut short"
    return {"steps": steps, "schedule_steps": 100, "device": "cuda", "device_name": "NVIDIA H200",
            "variants": out, "skipped": skipped,
            "repro_vs_main_run": {"steps": steps, "variants": {
                "sdpa": {"max_abs_diff": 0.0, "first_diff_step": None, "steps": steps},
                "lane_sm90": {"max_abs_diff": 0.004, "first_diff_step": 3, "steps": steps}}}}


def test_diagnose_table_and_summary(tmp_path, capsys):
    diag = rw.diagnose_summary(made_up_diagnosis())
    assert diag["sample_steps"] == [1, 10, 20, 30, 40] and diag["last10_steps"] == [31, 40]
    s = diag["summary"]
    assert s["sdpa"]["mean_ratio_last10"] == 1.0
    assert abs(s["lane_sm90"]["mean_ratio_last10"] - 1.015) < 1e-12
    assert s["lane_sm90"]["ratio_at_step"]["1"] == 1.0
    assert list(s["lane_sm90"]["mean_ratio_windows"]) == ["1-10", "11-20", "21-30"]
    assert s["lane_reference_cuda"]["mean_ratio_last10"] is None  # cut short at step 25
    assert s["lane_reference_cuda"]["ratio_at_step"]["30"] is None
    lines = rw.diagnose_table(diag)
    text = "\n".join(lines)
    assert lines[0].startswith("=== diagnose hd64: 40 steps") and "no proof rows" in lines[0]
    head = [ln for ln in lines if ln.startswith("loss  step")][0].split()
    assert head[2:] == ["sdpa", "sm90", "ref_cuda", "sdpa_math", "f.sm90+b.ref", "f.ref+b.sm90"]
    last = [ln for ln in lines if ln.strip().startswith("mean 31-40")][0].split()
    assert last[2:8] == ["1.0000", "1.0150", "-", "1.0000", "1.0000", "1.0150"], last
    assert "INCOMPLETE (25/40 steps) step 25: cut short" in text
    assert "receipts sm90: fwd sm90 x320 bwd sm90 x320 (as labelled)" in text
    assert "receipts f.sm90+b.ref: fwd sm90 x320 bwd reference_cuda x320 (as labelled)" in text
    assert "sdpa identical; lane_sm90 max|dloss| 0.0040, first differs at step 3" in text
    # The same table from the results file (what real_work.sh prints), NaN included.
    diag["variants"][0]["losses"][39] = float("nan")
    path = tmp_path / "real_work_results.json"
    path.write_text(json.dumps(rr.json_safe({"diagnose_hd64": rw.diagnose_summary(diag)})))
    assert rw.main(["--print-diagnose", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "=== diagnose hd64: 40 steps" in printed and "1.0150" in printed
    assert [ln for ln in printed.splitlines() if ln.strip().startswith("40 ")][0].split()[1] == "nan"
    path.write_text("{}")
    assert rw.main(["--print-diagnose", str(path)]) == 1


# ------------------------------------------------------------------------------------------------
# End to end, tiny, on the CPU.

@pytest.mark.torch
@pytest.mark.transformers
def test_smoke_run_on_cpu(tmp_path, small_tree, capsys):
    pytest.importorskip("torch", reason="needs torch: torch is not installed")
    pytest.importorskip("transformers", reason="needs transformers: not installed")
    import flashlane.integrations.transformers as fl_hf

    out = str(tmp_path / "out")
    rc = rw.main(["--out", out, "--smoke", "--device", "cpu", "--roots", small_tree, LICENSES,
                  "--diagnose-hd64-steps", "3"])
    assert rc == 1  # CPU rows never count
    printed = capsys.readouterr().out
    rows = [json.loads(x) for x in open(os.path.join(out, "real_work_rows.jsonl"))]
    kinds = sorted((r["artifact_kind"], r["preset"], r["problem"]["head_dim"]) for r in rows)
    assert kinds == sorted([(k, p, d) for d in (64, 128) for k, p in
                            (("short_train", "real_work.steps2"), ("short_train", "real_work.steps3"),
                             ("prefill", "real_work"), ("decode", "real_work"))])
    for r in rows:
        assert r["proof_class"] == "observational" and not r["counts_for_status"]
        assert r["receipt"] is not None and r["receipt"]["actual_backend"] == "reference_cpu", r["receipt"]
        crit = {c["criterion"]: c for c in r["metrics"]["errors"] if "criterion" in c}
        assert all(c["pass"] for c in crit.values()), crit
    train = [r for r in rows if r["artifact_kind"] == "short_train"]
    for r in train:
        curves = r["details"]["loss_curve"]
        assert len(curves["lane_attention"]) == len(curves["sdpa"]) == r["details"]["steps"]
    dec = [r for r in rows if r["artifact_kind"] == "decode"]
    assert all(r["details"]["decode_backend"] == "reference_cpu" for r in dec)
    assert os.path.getsize(os.path.join(out, "loss_curves.png")) > 100
    # The diagnosis: the variants this host can run, each as labelled, the others named as not run.
    res = json.load(open(os.path.join(out, "real_work_results.json")))
    diag = res["diagnose_hd64"]
    assert diag["steps"] == 3 and diag["device"] == "cpu" and diag["error"] == ""
    assert [v["name"] for v in diag["variants"]] == ["sdpa", "lane_reference_cpu", "sdpa_math"]
    assert {s["name"] for s in diag["skipped"]} == {
        "lane_sm90", "lane_reference_cuda", "lane_fwd_sm90_bwd_reference_cuda", "lane_fwd_reference_cuda_bwd_sm90"}
    for v in diag["variants"]:
        assert len(v["losses"]) == 3 and v["error"] == "", v
        if v["impl"] == "lane":
            assert v["ran_as"]["as_labelled"] and set(v["ran_as"]["fwd"]) == {"reference_cpu"}, v["ran_as"]
            assert set(v["ran_as"]["bwd"]) == {"reference_cpu"}
        else:
            assert v["flashlane_receipts"] == 0
    # same initial weights, batches and schedule as the main run's hd64 3-step run
    lane_main = next(r for r in rows if r["preset"] == "real_work.steps3" and r["problem"]["head_dim"] == 64)
    main_curve = lane_main["details"]["loss_curve"]
    assert diag["variants"][0]["losses"] == main_curve["sdpa"]
    assert diag["variants"][1]["losses"] == main_curve["lane_attention"]
    assert diag["repro_vs_main_run"]["variants"]["sdpa"]["first_diff_step"] is None
    assert "=== diagnose hd64: 3 steps" in printed and "not run: lane_reference_cuda" in printed
    assert "receipts ref_cpu: fwd reference_cpu x6 bwd reference_cpu x6 (as labelled)" in printed
    assert fl_hf.settings()["backend"] == "reference_cpu" and fl_hf.settings()["strict"] is False  # restored
    assert len(rows) == 8  # the diagnosis wrote no rows
