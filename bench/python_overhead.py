"""Per-call CPU overhead of flashlane's Python layer (no GPU needed).

A training step of a small model is CPU-bound when each attention call costs more host time than
its kernels take on the GPU. This benchmark isolates that host time: tiny tensors on the CPU
(backend reference_cpu; default b=1, s=16, h=1, d=64, float32), so the attention arithmetic itself
is a few microseconds and what is timed is the Python path and the binding around it. Each case
is timed as the best (lowest) mean over --rounds rounds of --calls calls, in microseconds per call.

Cases (each a full call as its users make it):
  raw_fwd_numpy / raw_bwd_numpy    flashlane._C.forward / backward on NumPy views of the tensors:
                                   the floor (binding, validation, selection, the tiny kernel).
  raw_fwd_dlpack / raw_bwd_dlpack  the same with DLPack capsules of the torch tensors made per
                                   call (torch.utils.dlpack.to_dlpack), as the torch ops do.
  raw_fwd_torch / raw_bwd_torch    the same with the torch tensors handed over as they are
                                   (nanobind then calls Tensor.__dlpack__, a Python method).
  op_fwd / op_bwd                  torch.ops.flashlane.fwd / bwd on tensors without grad.
  func_fwd_nograd                  flash_attn_func(q, k, v, causal=True) on tensors that do not
                                   require grad (inference, decoding).
  func_fwd                         the same on tensors that require grad (records the autograd
                                   node).
  func_fwd_bwd                     func_fwd, then torch.autograd.backward(out, dout).
  sdpa_fwd_bwd                     the same with torch's scaled_dot_product_attention (is_causal):
                                   what the framework itself costs, for comparison.
  hf_fwd_bwd                       the transformers integration as a Llama layer calls it:
                                   flashlane_attention_forward(module, q [b, h, s, d], k, v,
                                   FlashlaneMask for the causal mask, dropout=0.0, scaling=...,
                                   position_ids=...) in training, then the backward.
  hf_sdpa_fwd_bwd                  transformers' own sdpa_attention_forward on the same call.
  hf_mask                          flashlane_mask(...) as create_causal_mask calls it (once per
                                   model forward, not per layer).

With --receipt-log every case runs inside flashlane.receipt_log() (each call's receipt becomes a
dict in the log, as in bench/real_work's training loop).

Needs torch (CPU is enough); the hf_* cases need transformers (skipped without it).

    python3 bench/python_overhead.py [--seqlen 16] [--calls 2000] [--rounds 5]
                                     [--only op_fwd,op_bwd] [--receipt-log] [--json out.json]
    python3 bench/python_overhead.py --profile op_fwd [--profile-top 25]   # cProfile of one case

The numbers depend on the host CPU; compare runs made on the same machine.
"""
import argparse
import cProfile
import json
import math
import pstats
import sys
import time


def build_cases(args):
    import torch
    import torch.nn.functional as F

    import flashlane
    from flashlane import _C

    torch.manual_seed(0)
    b, s, h, d = args.batch, args.seqlen, args.heads, args.head_dim
    dtype = getattr(torch, args.dtype)
    backend = args.backend
    scale = 1.0 / math.sqrt(d)
    mask = "causal_bottom_right"

    q, k, v = (torch.randn(b, s, h, d, dtype=dtype) for _ in range(3))
    out = torch.empty(b, s, h, d, dtype=dtype)
    lse = torch.empty(b, h, s, dtype=torch.float32)
    dout = torch.randn(b, s, h, d, dtype=dtype)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # A valid out/lse for the backward.
    out_ref, lse_ref = torch.ops.flashlane.fwd(q, k, v, None, None, None, 0, 0, scale, mask, -1,
                                               -1, 0.0, False, backend, False)

    cases = {}

    def raw_fwd(tq, tk, tv, to, tl):
        def call():
            r = _C.forward(tq, tk, tv, to, tl, None, None, None, None, 0, 0, scale, mask, -1, -1,
                           0.0, backend, False, 0, True)
            if r is not None:
                raise RuntimeError(r)
        return call

    def raw_bwd(tq, tk, tv, to, tl, tdo, tdq, tdk, tdv):
        def call():
            r = _C.backward(tq, tk, tv, to, tl, tdo, tdq, tdk, tdv, None, None, None, None, None,
                            0, 0, scale, mask, -1, -1, 0.0, False, backend, False, 0, True)
            if r is not None:
                raise RuntimeError(r)
        return call

    if dtype in (torch.float32, torch.float64, torch.float16):
        np_views = [t.numpy() for t in (q, k, v, out, lse, out_ref, lse_ref, dout, dq, dk, dv)]
        cases["raw_fwd_numpy"] = raw_fwd(*np_views[:5])
        cases["raw_bwd_numpy"] = raw_bwd(*np_views[:3], *np_views[5:])
    to_dl = torch.utils.dlpack.to_dlpack

    def raw_fwd_dlpack():
        r = _C.forward(to_dl(q), to_dl(k), to_dl(v), to_dl(out), to_dl(lse), None, None, None,
                       None, 0, 0, scale, mask, -1, -1, 0.0, backend, False, 0, True)
        if r is not None:
            raise RuntimeError(r)

    def raw_bwd_dlpack():
        r = _C.backward(to_dl(q), to_dl(k), to_dl(v), to_dl(out_ref), to_dl(lse_ref), to_dl(dout),
                        to_dl(dq), to_dl(dk), to_dl(dv), None, None, None, None, None, 0, 0,
                        scale, mask, -1, -1, 0.0, False, backend, False, 0, True)
        if r is not None:
            raise RuntimeError(r)

    cases["raw_fwd_dlpack"] = raw_fwd_dlpack
    cases["raw_bwd_dlpack"] = raw_bwd_dlpack
    cases["raw_fwd_torch"] = raw_fwd(q, k, v, out, lse)
    cases["raw_bwd_torch"] = raw_bwd(q, k, v, out_ref, lse_ref, dout, dq, dk, dv)

    fwd_op, bwd_op = torch.ops.flashlane.fwd, torch.ops.flashlane.bwd
    cases["op_fwd"] = lambda: fwd_op(q, k, v, None, None, None, 0, 0, scale, mask, -1, -1, 0.0,
                                     False, backend, False)
    cases["op_bwd"] = lambda: bwd_op(dout, q, k, v, out_ref, lse_ref, None, None, None, 0, 0,
                                     scale, mask, -1, -1, 0.0, False, backend, False)

    gq, gk, gv = (t.clone().requires_grad_() for t in (q, k, v))
    attn = flashlane.flash_attn_func
    cases["func_fwd_nograd"] = lambda: attn(q, k, v, causal=True, backend=backend)

    def func_fwd():
        return attn(gq, gk, gv, causal=True, backend=backend)

    def func_fwd_bwd():
        o = attn(gq, gk, gv, causal=True, backend=backend)
        torch.autograd.backward(o, dout)

    cases["func_fwd"] = func_fwd
    cases["func_fwd_bwd"] = func_fwd_bwd

    # SDPA on [b, h, s, d] views of the same data: torch's own per-call cost.
    sq, sk, sv = (t.transpose(1, 2).detach().clone().requires_grad_() for t in (q, k, v))
    sdout = dout.transpose(1, 2)

    def sdpa_fwd_bwd():
        o = F.scaled_dot_product_attention(sq, sk, sv, is_causal=True)
        torch.autograd.backward(o, sdout)

    cases["sdpa_fwd_bwd"] = sdpa_fwd_bwd

    try:
        import transformers  # noqa: F401
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import causal_mask_function, sdpa_mask
    except ImportError as e:
        print(f"# hf_* cases skipped: transformers is not importable ({e})", file=sys.stderr)
        return cases

    import flashlane.integrations.transformers as fl_hf

    fl_hf.register(backend=backend)

    class Module(torch.nn.Module):  # what the attention function reads of LlamaAttention
        is_causal = True

        def __init__(self):
            super().__init__()
            self.training = True

    module = Module()
    position_ids = torch.arange(s)[None]
    mask_kwargs = dict(batch_size=b, q_length=s, kv_length=s, q_offset=0, kv_offset=0,
                       mask_function=causal_mask_function, attention_mask=None,
                       allow_is_causal_skip=True, dtype=dtype, config=None, use_vmap=False,
                       device=q.device)
    fl_mask = fl_hf.flashlane_mask(**mask_kwargs)
    sdpa_m = sdpa_mask(**{k_: v_ for k_, v_ in mask_kwargs.items()
                          if k_ not in ("dtype", "config")})
    hq, hk, hv = sq, sk, sv  # [b, h, s, d], requiring grad, like LlamaAttention's states
    hdout = dout  # the integration returns [b, s, h, d]

    def hf_fwd_bwd():
        o, _ = fl_hf.flashlane_attention_forward(module, hq, hk, hv, fl_mask, dropout=0.0,
                                                 scaling=scale, position_ids=position_ids)
        torch.autograd.backward(o, hdout)

    def hf_sdpa_fwd_bwd():
        o, _ = sdpa_attention_forward(module, hq, hk, hv, sdpa_m, dropout=0.0, scaling=scale,
                                      position_ids=position_ids)
        torch.autograd.backward(o, hdout)

    cases["hf_fwd_bwd"] = hf_fwd_bwd
    cases["hf_sdpa_fwd_bwd"] = hf_sdpa_fwd_bwd
    cases["hf_mask"] = lambda: fl_hf.flashlane_mask(**mask_kwargs)
    return cases


def time_case(fn, calls, rounds, warmup, log=None):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(rounds):
        if log is not None:
            log.clear()
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / calls / 1e3)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seqlen", type=int, default=16)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--backend", default="reference_cpu")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--only", default="", help="comma-separated case names")
    ap.add_argument("--receipt-log", action="store_true",
                    help="time every case inside flashlane.receipt_log()")
    ap.add_argument("--json", default="", help="also write the results to this file")
    ap.add_argument("--profile", default="", help="cProfile this case instead of timing")
    ap.add_argument("--profile-top", type=int, default=30)
    ap.add_argument("--profile-sort", default="tottime")
    args = ap.parse_args()

    import torch

    import flashlane

    cases = build_cases(args)
    if args.profile:
        fn = cases[args.profile]
        for _ in range(args.warmup):
            fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            fn()
        prof.disable()
        print(f"# cProfile of {args.profile}, {args.calls} calls (times are totals)")
        pstats.Stats(prof).strip_dirs().sort_stats(args.profile_sort).print_stats(args.profile_top)
        return

    names = [n for n in args.only.split(",") if n] or list(cases)
    torch.set_num_threads(1)  # tiny tensors: thread pools only add noise
    print(f"# flashlane {flashlane.__version__} ({flashlane.git_commit()}), "
          f"torch {torch.__version__}, backend {args.backend}, b={args.batch} s={args.seqlen} "
          f"h={args.heads} d={args.head_dim} {args.dtype}; "
          f"best of {args.rounds} x {args.calls} calls"
          + ("; inside receipt_log()" if args.receipt_log else ""))
    print(f"{'case':<18} {'us/call':>9}")
    results = {}
    for name in names:
        if name not in cases:
            print(f"{name:<18} {'(n/a)':>9}")
            continue
        if args.receipt_log:
            with flashlane.receipt_log() as log:
                us = time_case(cases[name], args.calls, args.rounds, args.warmup, log)
        else:
            us = time_case(cases[name], args.calls, args.rounds, args.warmup)
        results[name] = round(us, 2)
        print(f"{name:<18} {us:9.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": vars(args), "torch": torch.__version__,
                       "git_commit": flashlane.git_commit(), "us_per_call": results}, f, indent=1)


if __name__ == "__main__":
    main()
