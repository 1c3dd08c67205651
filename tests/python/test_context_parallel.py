"""examples/context_parallel/train_step.py on the CPU (docs/CONTEXT_PARALLEL.md): its argument
parsing, the head-tail sharding against torch's own load balancer, the ring schedule, the check
arithmetic and the receipt summary; and a 2-process gloo run of PyTorch's context parallelism
whose ring calls flashlane's kernels (reference_cpu, through aten's flash op on CPU tensors).
The GPU run (torchrun on N CUDA devices, sm90) is skipped here with its reason."""

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="needs torch: torch is not installed")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "context_parallel" / "train_step.py"
spec = importlib.util.spec_from_file_location("cp_train_step", SCRIPT)
cp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cp)

needs_cp = pytest.mark.skipif(
    importlib.util.find_spec("torch.distributed.tensor.experimental._context_parallel") is None,
    reason="needs torch >= 2.11 (torch.distributed.tensor.experimental._context_parallel)")


def test_parse_defaults_are_the_long_context_problem():
    a = cp.parse_args([])
    assert (a.seqlen, a.heads_q, a.heads_kv, a.head_dim, a.dtype) == (131072, 32, 8, 128, "bf16")
    assert a.causal and a.load_balance and a.device == "cuda"
    assert not cp.parse_args(["--no-causal"]).load_balance  # torch balances causal calls only
    with pytest.raises(SystemExit):
        cp.parse_args(["--heads-q", "6", "--heads-kv", "4"])


def test_multicast_forced_off():
    env = {"NCCL_NVLS_ENABLE": "1"}
    assert cp.multicast_off(env) == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                     "NVSHMEM_DISABLE_NVLS": "1"}
    assert env["NCCL_NVLS_ENABLE"] == "0"


@needs_cp
@pytest.mark.parametrize("seqlen,world", [(8, 2), (64, 4), (96, 3), (128, 8)])
def test_head_tail_order_is_torchs(seqlen, world):
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import (
        _HeadTailLoadBalancer)
    want = _HeadTailLoadBalancer(seqlen, world, "cpu")._generate_indices()[0].tolist()
    assert cp.head_tail_order(seqlen, world) == want
    assert cp.head_tail_order(8, 2) == [0, 1, 6, 7, 2, 3, 4, 5]


@pytest.mark.parametrize("lb", [True, False])
def test_shard_unshard_round_trip(lb):
    x = torch.arange(2 * 3 * 48).reshape(2, 3, 48).float()
    parts = [cp.shard(x, 2, 4, r, lb) for r in range(4)]
    assert all(p.shape == (2, 3, 12) for p in parts)
    assert torch.equal(cp.unshard(parts, 2, lb), x)
    assert cp.shard_positions(16, 2, 1, True) == [4, 5, 6, 7, 8, 9, 10, 11]
    with pytest.raises(ValueError):
        cp.head_tail_order(10, 3)


def test_ring_schedule_balances_causal_work():
    for world in (2, 4, 8):
        for rank in range(world):
            s = cp.ring_schedule(world, rank, causal=True, load_balance=True)
            assert len(s) == world and s[0]["is_causal"] and not any(x["is_causal"] for x in s[1:])
            # every step but the first uses half of Q or half of the KV shard: equal work per rank
            assert all((x["q"] == "all") != (x["kv"] == "all") for x in s[1:])
            assert [x["kv_from"] for x in s] == [(rank - i) % world for i in range(world)]
    # without balancing, rank r computes r + 1 steps (the later KV shards are masked out)
    assert [len(cp.ring_schedule(4, r, True, False)) for r in range(4)] == [1, 2, 3, 4]


def test_rows_ref64_matches_sdpa_and_autograd():
    g = torch.Generator().manual_seed(1)
    q, do = (torch.randn(1, 4, 12, 8, generator=g, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(1, 2, 12, 8, generator=g, dtype=torch.float64) for _ in range(2))
    qg = q.clone().requires_grad_(True)
    out = torch.nn.functional.scaled_dot_product_attention(
        qg, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    out.backward(do)
    rows = [0, 5, 11]
    o, dq = cp.rows_ref64(q, k, v, do, rows, True, 8 ** -0.5)
    torch.testing.assert_close(o, out.detach()[:, :, rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(dq, qg.grad[:, :, rows], rtol=0, atol=1e-12)


def test_check_arithmetic():
    r = cp.fa_rule(0.002, 0.001)
    assert r["pass"] and r["plain_pass"] and r["tolerance"] == pytest.approx(0.00201)
    assert not cp.fa_rule(0.0021, 0.001)["pass"]
    assert not cp.fa_rule(float("nan"), 0.001)["pass"]
    a = cp.ring_allowance(4, "bf16", 4.0)
    assert a == pytest.approx(4 * 2 ** -9 * 4.0)
    r = cp.fa_rule(0.01, 0.001, a)
    assert r["pass"] and not r["plain_pass"]
    assert cp.sanity_bound(0.01, 1.0)["pass"] and not cp.sanity_bound(0.02, 1.0)["pass"]
    assert cp.sampled_rows(100, 5, 0)[0] == 0 and cp.sampled_rows(100, 5, 0)[-1] == 99
    assert len(cp.sampled_rows(100, 5, 0)) == 5 and cp.sampled_rows(3, 10, 0) == [0, 1, 2]


def _receipt(mode, backend="sm90", status="ok"):
    return {"runtime_mode": mode, "actual_backend": backend, "status": status}


def test_receipt_summary():
    world = 2
    rows = []
    for rank in range(world):
        sched = cp.ring_schedule(world, rank, True, True)
        rows += cp.annotate_receipts([_receipt("fwd")], rank, "single", None)
        rows += cp.annotate_receipts([_receipt("fwd"), _receipt("fwd"), _receipt("bwd"),
                                      _receipt("bwd")], rank, "cp", sched)
    s = cp.summarize_receipts(rows, world)
    assert s["all_ok"] and s["ring_calls_match_schedule"] and s["ranks"] == [0, 1]
    assert s["per_rank"]["rank1.cp"]["calls"] == {"fwd:sm90": 2, "bwd:sm90": 2}
    assert rows[2]["ring_step"]["step"] == 1 and rows[2]["ring_step"]["kv_from"] == 1
    # a missing rank, an extra call beyond the schedule and a failed call are all seen
    assert not cp.summarize_receipts([r for r in rows if r["rank"] == 0], world)["ring_calls_match_schedule"]
    extra = cp.annotate_receipts([_receipt("fwd")] * 3, 0, "cp", cp.ring_schedule(2, 0, True, True))
    assert not cp.summarize_receipts(extra + rows[4:], world)["ring_calls_match_schedule"]
    bad = rows + cp.annotate_receipts([_receipt("fwd", status="invalid_argument")], 0, "single", None)
    assert not cp.summarize_receipts(bad, world)["all_ok"]


def test_script_skips_without_gpus():
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 CUDA devices: the skip path does not apply")
    out = subprocess.run([sys.executable, str(SCRIPT), "--gpus", "2"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("skipped: needs 2 CUDA devices"), out


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_cp
@pytest.mark.parametrize("world,rotate", [(2, "alltoall"), (2, "allgather")])
def test_gloo_ring_runs_flashlane_reference_cpu(tmp_path, world, rotate):
    """torch's ring attention on gloo, 2 processes, each ring step an aten flash call served by
    flashlane's reference_cpu kernel (not sm90: that needs N GPUs)."""
    import json
    pytest.importorskip("flashlane")
    receipts, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world}",
           f"--master-port={_free_port()}", str(SCRIPT), "--device", "cpu", "--seqlen", "64",
           "--heads-q", "4", "--heads-kv", "2", "--head-dim", "16", "--warmup", "0", "--iters", "1",
           "--rotate", rotate, "--receipts", str(receipts), "--summary", str(summary)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    s = json.loads(summary.read_text())
    assert s["pass"] and s["checks_pass"] and s["receipts"]["ring_calls_match_schedule"]
    rows = [json.loads(l) for l in receipts.read_text().splitlines()]
    ring = [r for r in rows if r["phase"] == "cp"]
    assert {r["actual_backend"] for r in rows} == {"reference_cpu"}
    for rank in range(world):
        mine = [r for r in ring if r["rank"] == rank]
        assert sorted(r["runtime_mode"] for r in mine) == ["bwd"] * world + ["fwd"] * world
        assert [r["ring_step"]["is_causal"] for r in mine if r["runtime_mode"] == "fwd"] == [True] + [False] * (world - 1)


def test_gpu_run_needs_gpus():
    n = int(os.environ.get("FLASHLANE_CP_GPUS", "2"))
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} CUDA devices (sm90): torchrun --nproc-per-node {n} {SCRIPT.relative_to(ROOT)}")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}",
                          f"--master-port={_free_port()}", str(SCRIPT), "--seqlen", "16384"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0 and "PASS" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
