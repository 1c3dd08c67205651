"""Real-work validation (docs/VALIDATION.md): a byte-level Llama trained and sampled on
real text with flashlane (attn_implementation "lane_attention", backend sm90) beside PyTorch SDPA
("sdpa"), with proof rows for `flashlane gate --config bench/gate_real_work.json`.

    python3 bench/real_work/realwork_run.py --out OUT_DIR            # the GPU run (real_work.sh)
    python3 bench/real_work/realwork_run.py --out /tmp/rw --smoke    # tiny CPU smoke run

For each variant (hd64: hidden 512, hd128: hidden 1024; 8 layers, 8 query / 2 key-value heads):
  1. short-train: the same initial weights (seeded) and the same batches (realwork_data, seed) for
     both backends; 2 steps and 100 steps. Precision: bf16 weights and activations (no autocast)
     with fp32 master weights in AdamW (the bf16 model's gradients are copied to the fp32 master,
     clipped, stepped, and the master is rounded back into the bf16 model). Why not autocast:
     under torch.autocast transformers' Llama computes RoPE against the fp32 residual stream, so
     q and k reach the attention function in fp32 and v in bf16; SDPA casts them itself, the
     flashlane integration passes them as they are. Recorded per step: loss (NaN/Inf checked),
     step time (CUDA-synchronized), tokens/s; after training the held-out loss.
  2. prefill: the 100-step flashlane-trained weights in bf16, held-out prompts, one forward with
     flashlane, with sdpa, and with sdpa in float64 (the reference): FlashAttention's rule on the
     logits, max|flashlane - ref64| <= 2 max|sdpa - ref64| + 1e-5.
  3. decode: generate() greedy on the same prompts with both backends; a forward pre-hook marks
     each model call, so each decode step's receipts (flashlane.receipt_log()) are known: the step's
     decode_backend is the set of actual_backend values they name. Reported: the first position
     where the greedy outputs diverge and the logit gap there.
Proof rows (realwork_rows) go to OUT/real_work_rows.jsonl, the curves to OUT/loss_curves.csv and
OUT/loss_curves.png, everything to OUT/real_work_results.json; a summary is printed last.

--diagnose-hd64-steps N (default 0, off): after the run, trains the hd64 model N more times from
the same initial weights on the same first N batches with the learning-rate schedule of the longest
run (so each curve is comparable step by step with the main run's), under several attention
variants, to tell an integration bug from a numerical difference:
    sdpa        transformers "sdpa", PyTorch's default kernel choice (bf16), as the main run;
    lane_<b>    lane_attention on the flashlane backend of the main run (sm90 on the GPU) (strict);
    lane_reference_cuda   lane_attention on reference_cuda (same semantics, fp32 accumulation);
    sdpa_math   "sdpa" with torch.nn.attention.sdpa_kernel(SDPBackend.MATH) (a second reference);
    lane_fwd_<b>_bwd_reference_cuda, lane_fwd_reference_cuda_bwd_<b>: one direction each
                (flashlane.integrations.transformers.backend_override(..., backward_backend=...)).
The variants adapt to the device (on the CPU the flashlane variant is reference_cpu and the CUDA
variants are listed as not run, with the reason); every flashlane variant runs strict and its
receipts are checked against its label. The curves go to real_work_results.json
("diagnose_hd64"), a table is printed after the summary. Diagnostics only: no proof rows.
    python3 bench/real_work/realwork_run.py --print-diagnose OUT/real_work_results.json
prints that table again from the file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import realwork_data as rd  # noqa: E402
import realwork_rows as rr  # noqa: E402

VARIANTS = {
    # name: hidden, intermediate, head_dim (8 query heads, 2 key-value heads, 8 layers)
    "hd64": dict(hidden_size=512, intermediate_size=1408, head_dim=64),
    "hd128": dict(hidden_size=1024, intermediate_size=2816, head_dim=128),
}
SMOKE_VARIANTS = {
    "hd64": dict(hidden_size=128, intermediate_size=256, head_dim=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1),
    "hd128": dict(hidden_size=256, intermediate_size=256, head_dim=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1),
}
LOSS_RATIO_LIMIT = 1.05


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="output folder (required unless --print-diagnose)")
    p.add_argument("--roots", nargs="+", default=list(rd.DEFAULT_ROOTS))
    p.add_argument("--variants", nargs="+", default=["hd64", "hd128"])
    p.add_argument("--steps", nargs="+", type=int, default=[2, 100])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--heldout-fraction", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--backend", default="sm90", help="flashlane backend requested (register())")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models, seq 64, steps 2 and 3, for a CPU check of the pipeline")
    p.add_argument("--diagnose-hd64-steps", type=int, default=0, metavar="N",
                   help="after the run, train hd64 N steps under each attention variant (module "
                        "docstring); 0 = off. Diagnostics only, no proof rows")
    p.add_argument("--diagnose-deadline-s", type=float, default=0, metavar="S",
                   help="the diagnosis stops (keeping what it trained) S seconds after the script "
                        "started; 0 = no limit. real_work.sh sets it inside its timeout")
    p.add_argument("--print-diagnose", metavar="RESULTS_JSON",
                   help="only print the diagnose table of a real_work_results.json")
    a = p.parse_args(argv)
    if not a.out and not a.print_diagnose:
        p.error("--out is required")
    if a.diagnose_hd64_steps < 0:
        p.error("--diagnose-hd64-steps must be >= 0")
    if a.smoke:
        a.seq_len, a.batch, a.steps = 64, 2, [2, 3]
        a.prompts, a.prompt_len, a.new_tokens, a.warmup_steps = 2, 24, 4, 1
        a.heldout_fraction = max(a.heldout_fraction, 0.3)
    return a


# ------------------------------------------------------------------------------------------------

def environment(torch, flashlane, backend="sm90"):
    env = {"device": "cpu", "sm": 0, "driver": "none",
           "cuda_runtime": str(torch.version.cuda or "none"),
           "library_version": flashlane.version(), "git_commit": flashlane.git_commit(),
           "compiled_archs": flashlane.compiled_architectures(),
           # The kernels of the backend every row requests: the rows are stale when they change.
           "kernel_fingerprint": flashlane.kernel_fingerprint(backend)}
    lane = {"ran": False, "reason": ""}
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        env.update(device=torch.cuda.get_device_name(0), sm=major * 10 + minor)
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            env["driver"] = "unknown"
        lane["ran"] = True
    else:
        lane["reason"] = "no CUDA device (torch.cuda.is_available() is False)"
    return env, lane


def make_config(transformers, variant, seq_len, smoke):
    spec = dict(num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2)
    spec.update((SMOKE_VARIANTS if smoke else VARIANTS)[variant])
    return transformers.LlamaConfig(
        vocab_size=rd.VOCAB_SIZE, max_position_embeddings=max(4096, seq_len),
        rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=False,
        attention_dropout=0.0, bos_token_id=rd.BOS, eos_token_id=rd.EOS, pad_token_id=rd.PAD,
        use_cache=False, **spec)


def build_model(torch, transformers, cfg, impl, dtype, device, state):
    m = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation=impl,
                                                   dtype=dtype)
    m.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return m.to(device)


def sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def train(torch, transformers, flashlane, cfg, impl, init_state, batches, args, device,
          schedule_steps=None, keep_state=True, deadline=None):
    """One run: returns losses, step times, receipts, held-out loss, peak memory.
    schedule_steps: the run length the learning-rate schedule is laid out for (default: the number
    of batches); keep_state: return the trained weights (on the host); deadline: a time.time()
    after which no further step starts (the run is then recorded as stopped, with its error)."""
    torch.manual_seed(args.seed)
    model = build_model(torch, transformers, cfg, impl, torch.bfloat16, device, init_state)
    model.train()
    params = [p for p in model.parameters()]
    master = [init_state[n].detach().to(device=device, dtype=torch.float32).clone()
              for n, _ in model.named_parameters()]
    for m in master:
        m.requires_grad_(True)
    opt = torch.optim.AdamW(master, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    steps = schedule_steps or len(batches)

    def lr_at(step):  # linear warm-up, then cosine to 10%
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        t = (step - args.warmup_steps) / max(1, steps - args.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses, step_ms, grad_norms = [], [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    error = ""
    with flashlane.receipt_log() as log:
        for step, b in enumerate(batches):
            if deadline is not None and time.time() > deadline:
                error = f"step {step}: stopped at the time limit (--diagnose-deadline-s)"
                break
            ids = torch.tensor(b, dtype=torch.long, device=device)
            sync(torch, device)
            t0 = time.perf_counter()
            try:
                out = model(input_ids=ids, labels=ids, use_cache=False)
                loss = out.loss
                loss.backward()
                for m, p in zip(master, params):
                    m.grad = None if p.grad is None else p.grad.detach().float()
                gn = torch.nn.utils.clip_grad_norm_(master, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                model.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for m, p in zip(master, params):
                        p.copy_(m)
                lv = float(loss.detach().float().item())
                gv = float(gn.item())
            except Exception as e:  # noqa: BLE001 - recorded, the row then fails
                error = f"step {step}: {type(e).__name__}: {e}"
                traceback.print_exc()
                break
            sync(torch, device)
            step_ms.append((time.perf_counter() - t0) * 1e3)
            losses.append(lv)
            grad_norms.append(gv)
            if not math.isfinite(lv):
                error = f"step {step}: non-finite loss {lv}"
                break
        train_receipts = list(log)
    # Held-out loss of the trained model, same backend (2 batches, no grad).
    heldout = None
    with flashlane.receipt_log() as elog:
        if not error:
            model.eval()
            with torch.no_grad():
                vals = []
                for b in args._heldout_batches:
                    ids = torch.tensor(b, dtype=torch.long, device=device)
                    vals.append(float(model(input_ids=ids, labels=ids, use_cache=False).loss.float().item()))
                heldout = sum(vals) / len(vals) if vals else None
        eval_receipts = list(elog)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    tokens = len(batches[0]) * len(batches[0][0])
    timed = step_ms[1:] if len(step_ms) > 1 else step_ms  # step 0 includes compilation/warm-up
    med = statistics.median(timed) if timed else None
    state = ({k: v.detach().to("cpu") for k, v in model.state_dict().items()}
             if keep_state and not error else None)
    del model, master, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"impl": impl, "losses": losses, "step_ms": step_ms, "grad_norms": grad_norms,
            "median_step_ms": med, "tok_per_sec": (tokens / (med / 1e3)) if med else None,
            "tok_per_sec_all_steps": (tokens * len(step_ms) / (sum(step_ms) / 1e3)) if step_ms else None,
            "tokens_per_step": tokens, "heldout_loss": heldout, "peak_memory_mib": peak,
            "error": error, "receipts": train_receipts, "eval_receipts": eval_receipts,
            "state": state}


def attention_problem(cfg, batch, seqlen_q, seqlen_k, dtype="bfloat16"):
    hd = cfg.head_dim
    return {"batch": batch, "seqlen_q": seqlen_q, "seqlen_k": seqlen_k,
            "heads_q": cfg.num_attention_heads, "heads_kv": cfg.num_key_value_heads,
            "head_dim": hd, "head_dim_v": hd, "dtype": dtype, "mask": "causal_bottom_right",
            "causal": True, "window_left": -1, "window_right": -1, "softcap": 0.0,
            "softmax_scale": None, "varlen": False,
            "model": {"class": "LlamaForCausalLM", "layers": cfg.num_hidden_layers,
                      "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size,
                      "vocab": cfg.vocab_size}}


def short_train_row(env, lane, cfg, variant, steps, fl, sd, args, corpus_stats):
    losses_ok = (len(fl["losses"]) == steps and len(sd["losses"]) == steps and
                 all(math.isfinite(x) for x in fl["losses"] + sd["losses"]))
    nan = sum(1 for x in fl["losses"] if not math.isfinite(x))
    ratio = (fl["losses"][-1] / sd["losses"][-1]) if (losses_ok and sd["losses"][-1] > 0) else None
    requested = args.backend
    bad = [r for r in fl["receipts"] if r.get("status") != "ok" or r.get("actual_backend") != requested]
    n_layers = cfg.num_hidden_layers
    crit = [
        rr.criterion("steps_completed", len(fl["losses"]) == steps and len(sd["losses"]) == steps,
                     {"lane_attention": len(fl["losses"]), "sdpa": len(sd["losses"])}, steps,
                     fl["error"] or sd["error"]),
        rr.criterion("losses_finite", losses_ok, nan, 0, "every step's loss of both runs"),
        rr.criterion("final_loss_ratio", ratio is not None and ratio <= LOSS_RATIO_LIMIT, ratio,
                     LOSS_RATIO_LIMIT, "loss of the last step, lane_attention / sdpa (same batch)"),
        rr.criterion("receipts_all_requested_backend", bool(fl["receipts"]) and not bad,
                     len(fl["receipts"]) - len(bad), len(fl["receipts"]),
                     f"every attention call (fwd and bwd) ran on {requested}"),
        rr.criterion("receipts_per_step", len(fl["receipts"]) >= 2 * n_layers * len(fl["losses"]),
                     len(fl["receipts"]), 2 * n_layers * len(fl["losses"]),
                     "at least one fwd and one bwd receipt per layer and step"),
    ]
    peer = [{"backend": "torch_sdpa", "median_ms": sd["median_step_ms"], "tflops": None,
             "speedup": (sd["median_step_ms"] / fl["median_step_ms"])
             if (sd["median_step_ms"] and fl["median_step_ms"]) else None, "counted": False}]
    details = {
        "variant": variant, "steps": steps, "seed": args.seed, "lr": args.lr,
        "precision": "bf16 weights and activations, fp32 master weights in AdamW (no autocast)",
        "optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), grad clip 1.0, "
                     f"warm-up {args.warmup_steps} steps then cosine to 10%",
        "tokens_per_step": fl["tokens_per_step"],
        "data": corpus_stats,
        "loss_curve": {"lane_attention": fl["losses"], "sdpa": sd["losses"]},
        "step_ms": {"lane_attention": fl["step_ms"], "sdpa": sd["step_ms"]},
        "tok_per_sec": {"lane_attention": fl["tok_per_sec"], "sdpa": sd["tok_per_sec"]},
        "tok_per_sec_note": "tokens per step / median step time over steps 2.. (step 1 is warm-up); "
                            "CUDA-synchronized wall clock of forward + backward + optimizer",
        "heldout_loss": {"lane_attention": fl["heldout_loss"], "sdpa": sd["heldout_loss"]},
        "final_loss": {"lane_attention": fl["losses"][-1] if fl["losses"] else None,
                       "sdpa": sd["losses"][-1] if sd["losses"] else None},
        "errors": {"lane_attention": fl["error"], "sdpa": sd["error"]},
        "sdpa_flashlane_receipts": len(sd["receipts"]),
        "eval_receipts": rr.receipts_summary(fl["eval_receipts"]),
        "peak_memory_mib": {"lane_attention": fl["peak_memory_mib"], "sdpa": sd["peak_memory_mib"]},
    }
    return rr.make_row(
        artifact_kind="short_train", requested_backend=requested, environment=env, gpu_lane=lane,
        problem=attention_problem(cfg, args.batch, args.seq_len, args.seq_len),
        receipts=fl["receipts"], criteria=crit, nan_count=nan, preset=f"real_work.steps{steps}",
        direction="bwd", status="ok" if not fl["error"] else fl["error"],
        median_ms=fl["median_step_ms"], tok_per_sec=fl["tok_per_sec"],
        peak_memory_mib=fl["peak_memory_mib"],
        memory_method="torch.cuda.max_memory_allocated over the run (model, fp32 master, AdamW state, activations)",
        reps=len(fl["step_ms"]), warmup=1,
        validation_scope="short-train: both runs complete every step with finite losses, final loss "
                         f"ratio lane_attention/sdpa <= {LOSS_RATIO_LIMIT}, every flashlane call "
                         "ran on the requested backend",
        peers=peer, details=details)


def prefill_and_decode(torch, transformers, flashlane, cfg, variant, state, prompts, env, lane,
                       args, device, impl):
    rows = []
    requested = args.backend
    ids = torch.tensor(prompts, dtype=torch.long, device=device)
    cfg_gen = copy.deepcopy(cfg)
    cfg_gen.use_cache = True
    fl = build_model(torch, transformers, cfg_gen, impl, torch.bfloat16, device, state).eval()
    sd = build_model(torch, transformers, cfg_gen, "sdpa", torch.bfloat16, device, state).eval()
    # ---- prefill
    with torch.no_grad():
        with flashlane.receipt_log() as log:
            lf = fl(input_ids=ids, use_cache=False).logits.double()
        pre_receipts = list(log)
        ls = sd(input_ids=ids, use_cache=False).logits.double()
        ref = build_model(torch, transformers, cfg_gen, "sdpa", torch.float64, device, state).eval()
        l64 = ref(input_ids=ids, use_cache=False).logits
        del ref
    nan_pre = int((~torch.isfinite(lf)).sum().item())
    err = float((lf - l64).abs().max().item())
    peer_err = float((ls - l64).abs().max().item())
    tol = 2 * peer_err + 1e-5
    bad = [r for r in pre_receipts if r.get("status") != "ok" or r.get("actual_backend") != requested]
    crit = [
        rr.criterion("receipts_all_requested_backend", bool(pre_receipts) and not bad,
                     len(pre_receipts) - len(bad), len(pre_receipts),
                     f"every attention call of the prefill ran on {requested}"),
        rr.criterion("receipts_per_layer", len(pre_receipts) == cfg.num_hidden_layers,
                     len(pre_receipts), cfg.num_hidden_layers, "one receipt per layer"),
        rr.criterion("logits_finite", nan_pre == 0, nan_pre, 0),
        rr.criterion("flashattention_rule_logits", err <= tol, err, tol,
                     "max|lane_attention_bf16 - ref64| <= 2 max|sdpa_bf16 - ref64| + 1e-5 over every logit"),
    ]
    figure = {"tensor": "logits", "max_abs_diff": err, "ref_max_abs_diff": peer_err,
              "tolerance": tol, "nan_count": nan_pre, "count": int(lf.numel()), "pass": err <= tol}
    rows.append(rr.make_row(
        artifact_kind="prefill", requested_backend=requested, environment=env, gpu_lane=lane,
        problem=attention_problem(cfg, len(prompts), len(prompts[0]), len(prompts[0])),
        receipts=pre_receipts, criteria=crit + [figure], nan_count=nan_pre, preset="real_work",
        max_abs_diff=err, ref_max_abs_diff=peer_err, checked_tensor="logits",
        validation_scope="prefill logits of the 100-step lane_attention-trained model (bf16) on "
                         "held-out prompts against the same weights in float64 with sdpa "
                         "(ref64), sdpa bf16 as the low-precision peer",
        details={"variant": variant, "prompt_len": len(prompts[0]), "prompts": len(prompts),
                 "max_abs_diff_vs_sdpa_bf16": float((lf - ls).abs().max().item()),
                 "argmax_agreement_vs_sdpa": float((lf.argmax(-1) == ls.argmax(-1)).float().mean().item())}))
    del lf, ls, l64
    # ---- decode
    calls = []  # (q_len, receipt index at the call)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
              output_logits=True, return_dict_in_generate=True, pad_token_id=rd.PAD,
              eos_token_id=rd.EOS, use_cache=True)
    with torch.no_grad():
        with flashlane.receipt_log() as log:
            def pre_hook(module, a, k):
                x = k.get("input_ids")
                if x is None:
                    x = k.get("inputs_embeds")
                if x is None and a:
                    x = a[0]
                calls.append((int(x.shape[1]) if x is not None else -1, len(log)))
            h = fl.model.register_forward_pre_hook(pre_hook, with_kwargs=True)
            try:
                gf = fl.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            finally:
                h.remove()
            dec_all = list(log)
        gs = sd.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    bounds = [c[1] for c in calls] + [len(dec_all)]
    steps = []
    for i, (qlen, start) in enumerate(calls):
        recs = dec_all[start:bounds[i + 1]]
        backends = sorted({r.get("actual_backend") or "(nothing)" for r in recs})
        steps.append({"call": i, "q_len": qlen, "receipts": len(recs),
                      "decode_backend": ",".join(backends) if recs else "(no receipt)",
                      "runtime_modes": sorted({r.get("runtime_mode", "?") for r in recs}),
                      "fallback_reasons": sorted({r["fallback_reason"] for r in recs if r.get("fallback_reason")})})
    decode_steps = [s for s in steps if s["q_len"] == 1]
    decode_receipts = [r for i, (qlen, start) in enumerate(calls) if qlen == 1
                       for r in dec_all[start:bounds[i + 1]]]
    backends = sorted({s["decode_backend"] for s in decode_steps})
    decode_backend = backends[0] if len(backends) == 1 else "mixed:" + "|".join(backends)
    p = ids.shape[1]
    sf, ss = gf.sequences[:, p:].cpu(), gs.sequences[:, p:].cpu()
    logits_f = torch.stack([x.float() for x in gf.logits], 1).cpu()  # [b, new, vocab]
    logits_s = torch.stack([x.float() for x in gs.logits], 1).cpu()
    nan_dec = int((~torch.isfinite(logits_f)).sum().item())
    divergence = []
    for b in range(sf.shape[0]):
        diff = (sf[b] != ss[b]).nonzero()
        if diff.numel() == 0:
            divergence.append({"prompt": b, "first_divergence": None,
                               "max_abs_logit_diff": float((logits_f[b] - logits_s[b]).abs().max())})
            continue
        t = int(diff[0, 0])
        a_tok, s_tok = int(sf[b, t]), int(ss[b, t])
        lf_t, ls_t = logits_f[b, t], logits_s[b, t]
        divergence.append({
            "prompt": b, "first_divergence": t, "lane_attention_token": a_tok, "sdpa_token": s_tok,
            "logit_gap_lane_attention": float(lf_t[a_tok] - lf_t[s_tok]),
            "logit_gap_sdpa": float(ls_t[s_tok] - ls_t[a_tok]),
            "max_abs_logit_diff_at_divergence": float((lf_t - ls_t).abs().max()),
            "max_abs_logit_diff_before": float((logits_f[b, :t] - logits_s[b, :t]).abs().max()) if t > 0 else 0.0,
        })
    agree = float((sf == ss).float().mean())
    n_layers = cfg.num_hidden_layers
    crit = [
        rr.criterion("decode_steps_seen", len(decode_steps) == args.new_tokens - 1,
                     len(decode_steps), args.new_tokens - 1,
                     "generate() made one model call with q_len 1 per new token after the first"),
        rr.criterion("decode_backend_is_requested", decode_backend == requested, decode_backend,
                     requested, "the set of actual_backend values named by every decode step's receipts"),
        rr.criterion("receipts_per_decode_step",
                     bool(decode_steps) and all(s["receipts"] == n_layers for s in decode_steps),
                     sorted({s["receipts"] for s in decode_steps}), n_layers, "one receipt per layer and step"),
        rr.criterion("logits_finite", nan_dec == 0, nan_dec, 0),
    ]
    rows.append(rr.make_row(
        artifact_kind="decode", requested_backend=requested, environment=env, gpu_lane=lane,
        problem=attention_problem(cfg, len(prompts), 1, p + args.new_tokens - 1),
        receipts=decode_receipts, criteria=crit, nan_count=nan_dec, preset="real_work",
        validation_scope="generate() greedy, decode steps (q_len 1 over the KV cache): the backend "
                         "named by each step's receipts, finite logits; greedy outputs compared with "
                         "sdpa (reported, not a criterion: bf16 near-ties may flip)",
        details={"variant": variant, "decode_backend": decode_backend, "steps": steps,
                 "prompt_len": p, "new_tokens": args.new_tokens,
                 "token_agreement_vs_sdpa": agree, "divergence": divergence,
                 "prefill_in_generate": steps[0] if steps else None,
                 "sample_lane_attention": rd.decode(sf[0].tolist()),
                 "sample_sdpa": rd.decode(ss[0].tolist()),
                 "prompt_tail": rd.decode(prompts[0][-120:])}))
    del fl, sd
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------
# The hd64 diagnosis (--diagnose-hd64-steps): the same training under several attention variants.
# Diagnostics, not proof: nothing here writes a row.

_SHORT = {"reference_cuda": "ref_cuda", "reference_cpu": "ref_cpu"}
DIAGNOSE_SAMPLE_STEPS = (1, 10, 20, 30, 40)


def _short(backend):
    return _SHORT.get(backend, backend)


def diagnose_plan(device, backend, sdpa_math_available=True, sdpa_math_reason=""):
    """(variants, skipped) for the hd64 diagnosis on `device` with the run's flashlane `backend`
    (sm90 on the GPU, reference_cpu on the host). A variant: name (the key in the results), label
    (the table column), impl ("sdpa" or "lane"), forward / backward (flashlane backends of lane
    variants), sdpa_backend ("default" or "math"), what (one line). skipped: [{name, reason}] for
    the variants this device cannot run: never run as something else under their name."""
    sdpa = dict(impl="sdpa", forward=None, backward=None)
    lane = dict(impl="lane", sdpa_backend=None)
    v = [dict(sdpa, name="sdpa", label="sdpa", sdpa_backend="default",
              what="transformers \"sdpa\": PyTorch SDPA, its default kernel choice, bf16 (as the main run)"),
         dict(lane, name=f"lane_{backend}", label=_short(backend), forward=backend, backward=backend,
              what=f"lane_attention: flashlane {backend} forward and backward (strict)")]
    skipped = []
    cuda = device == "cuda"
    if backend != "sm90":
        skipped.append({"name": "lane_sm90", "reason": (
            f"sm90 needs an sm_90 CUDA device, this run is on {device}" if not cuda else
            f"this run's flashlane backend is {backend}") + f"; its flashlane variant is lane_{backend}"})
    ref = "reference_cuda"
    if cuda and backend != ref:
        v.append(dict(lane, name=f"lane_{ref}", label=_short(ref), forward=ref, backward=ref,
                      what=f"lane_attention: flashlane {ref} forward and backward (fp32 accumulation, "
                           "same semantics, other numerics; strict)"))
    elif not cuda:
        skipped.append({"name": f"lane_{ref}", "reason": f"needs a CUDA device, this run is on {device}"})
    if sdpa_math_available:
        v.append(dict(sdpa, name="sdpa_math", label="sdpa_math", sdpa_backend="math",
                      what="transformers \"sdpa\" under torch.nn.attention.sdpa_kernel(SDPBackend.MATH): "
                           "PyTorch's unfused attention (a second numerics reference)"))
    else:
        skipped.append({"name": "sdpa_math", "reason": sdpa_math_reason or "SDPBackend.MATH unavailable"})
    fast = backend if cuda else "sm90"  # the kernel the split variants pair with reference_cuda
    for f, b in ((fast, ref), (ref, fast)):
        name = f"lane_fwd_{f}_bwd_{b}"
        if cuda and backend != ref:
            v.append(dict(lane, name=name, label=f"f.{_short(f).replace('_cuda', '')}+b."
                                                 f"{_short(b).replace('_cuda', '')}",
                          forward=f, backward=b,
                          what=f"lane_attention: flashlane {f} forward, {b} backward (strict)"))
        else:
            skipped.append({"name": name, "reason": f"needs a CUDA device, this run is on {device}"
                            if not cuda else f"this run's flashlane backend is {backend}: nothing to split"})
    return v, skipped


def ran_as(receipts, forward, backward):
    """What the receipts of a lane variant say ran: {"fwd": {backend: n}, "bwd": {...}, "failed": n,
    "as_labelled": every forward receipt requested and ran `forward`, every backward one
    `backward`, none failed, and there were both}."""
    by = {"fwd": {}, "bwd": {}}
    failed, ok = 0, True
    for r in receipts:
        d = "bwd" if str(r.get("runtime_mode", "")).endswith("bwd") else "fwd"
        want = backward if d == "bwd" else forward
        got = r.get("actual_backend") or "(nothing)"
        by[d][got] = by[d].get(got, 0) + 1
        if r.get("status") != "ok":
            failed += 1
        if r.get("status") != "ok" or r.get("requested_backend") != want or (want != "auto" and got != want):
            ok = False
    return {"fwd": by["fwd"], "bwd": by["bwd"], "failed": failed,
            "as_labelled": ok and bool(by["fwd"]) and bool(by["bwd"])}


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def diagnose_summary(diag):
    """Fills diag["ratios_vs_sdpa"] (per step, loss / sdpa's loss) and diag["summary"] (ratios at
    the sample steps, means over windows of 10 steps and over the last 10 steps)."""
    runs = {v["name"]: v for v in diag["variants"]}
    base = runs.get("sdpa", {}).get("losses") or []
    n = diag["steps"]
    samples = [s for s in DIAGNOSE_SAMPLE_STEPS if s <= n] + ([n] if n not in DIAGNOSE_SAMPLE_STEPS else [])
    last_lo = max(1, n - 9)
    windows = [(lo, lo + 9) for lo in range(1, last_lo, 10) if lo + 9 < last_lo]
    diag["sample_steps"] = samples
    diag["last10_steps"] = [last_lo, n]
    diag["ratios_vs_sdpa"], diag["summary"] = {}, {}
    for name, v in runs.items():
        ls = v.get("losses") or []
        ratios = [(a / b) if (i < len(base) and b and math.isfinite(a) and math.isfinite(b)) else None
                  for i, (a, b) in enumerate(zip(ls, base))]
        diag["ratios_vs_sdpa"][name] = ratios

        def at(step):
            return ratios[step - 1] if step - 1 < len(ratios) else None

        def mean(lo, hi):  # steps lo..hi, 1-based inclusive; None unless every step is there
            xs = [at(s) for s in range(lo, hi + 1)]
            return _mean(xs) if all(x is not None for x in xs) else None

        diag["summary"][name] = {
            "ratio_at_step": {str(s): at(s) for s in samples},
            "mean_ratio_windows": {f"{lo}-{hi}": mean(lo, hi) for lo, hi in windows},
            "mean_ratio_last10": mean(last_lo, n),
        }
    return diag


def _fmt(x, nd=4):
    """A number with nd decimals; "-" for None; non-finite values and strings (json_safe writes
    NaN as "nan") as they are."""
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return str(x)
    return f"{x:.{nd}f}"


def diagnose_table(diag):
    """The printed table of a diagnosis (a list of lines)."""
    if "summary" not in diag:
        diagnose_summary(diag)
    vs = diag["variants"]
    n = diag["steps"]
    w = max(11, max((len(v["label"]) for v in vs), default=0) + 1)
    lines = [f"=== diagnose hd64: {n} steps, same initial weights and batches as the main run, lr "
             f"schedule of a {diag.get('schedule_steps')}-step run; device {diag.get('device')} "
             f"({diag.get('device_name')}); diagnostics, no proof rows"]
    for v in vs:
        lines.append(f"  {v['label']:<{w}} {v['what']}")
    for s in diag.get("skipped", []):
        lines.append(f"  not run: {s['name']} ({s['reason']})")
    if diag.get("error"):
        lines.append(f"  diagnosis error: {diag['error']}")
    head = "".join(f"{v['label']:>{w}}" for v in vs)
    lines.append(f"{'loss  step':<13}{head}")
    for s in diag["sample_steps"]:
        lines.append(f"{s:>13}" + "".join(
            f"{_fmt(v['losses'][s - 1] if s <= len(v.get('losses') or []) else None):>{w}}" for v in vs))
    lines.append(f"{'ratio/sdpa':<13}{head}")
    for s in diag["sample_steps"]:
        lines.append(f"{s:>13}" + "".join(
            f"{_fmt(diag['summary'][v['name']]['ratio_at_step'].get(str(s))):>{w}}" for v in vs))
    windows = list(next(iter(diag["summary"].values()))["mean_ratio_windows"]) if diag["summary"] else []
    for key in windows:
        lines.append(f"{'mean ' + key:>13}" + "".join(
            f"{_fmt(diag['summary'][v['name']]['mean_ratio_windows'][key]):>{w}}" for v in vs))
    lo, hi = diag["last10_steps"]
    lines.append(f"{f'mean {lo}-{hi}':>13}" + "".join(
        f"{_fmt(diag['summary'][v['name']]['mean_ratio_last10']):>{w}}" for v in vs)
        + f"  (mean of the last {hi - lo + 1} steps' ratios)")
    lines.append(f"{'heldout':>13}" + "".join(f"{_fmt(v.get('heldout_loss')):>{w}}" for v in vs))
    lines.append(f"{'ms/step':>13}" + "".join(f"{_fmt(v.get('median_step_ms'), 1):>{w}}" for v in vs))
    for v in vs:
        done = len(v.get("losses") or [])
        status = "" if done == n and not v.get("error") else f" INCOMPLETE ({done}/{n} steps) {v.get('error', '')}"
        if v["impl"] == "lane":
            ra = v.get("ran_as") or {}
            got = " ".join(f"{d} " + ",".join(f"{b} x{c}" for b, c in sorted(ra.get(d, {}).items()))
                           for d in ("fwd", "bwd"))
            mark = "as labelled" if ra.get("as_labelled") else "NOT AS LABELLED"
            lines.append(f"  receipts {v['label']}: {got or '(none)'} ({mark}){status}")
        else:
            extra = f", flashlane receipts {v.get('flashlane_receipts')}" if v.get("flashlane_receipts") else ""
            if status or extra:
                lines.append(f"  {v['label']}:{extra}{status}")
    rep = diag.get("repro_vs_main_run") or {}
    if rep:
        lines.append(f"  vs the main run's curves (steps 1-{rep.get('steps')}; run-to-run noise): " + "; ".join(
            f"{k} " + ("identical" if not x["first_diff_step"] else
                       f"max|dloss| {_fmt(x['max_abs_diff'])}, first differs at step {x['first_diff_step']}")
            for k, x in rep.get("variants", {}).items()))
    if diag.get("sdpa_math_note"):
        lines.append(f"  sdpa_math: {diag['sdpa_math_note']}")
    return lines


def _repro(diag_losses, main_losses):
    m = min(len(diag_losses), len(main_losses))
    if m == 0:
        return None
    diffs = [abs(a - b) for a, b in zip(diag_losses[:m], main_losses[:m])]
    first = next((i + 1 for i, d in enumerate(diffs) if d != 0), None)
    return {"max_abs_diff": max(diffs), "first_diff_step": first, "steps": m}


def diagnose_hd64(torch, transformers, flashlane, fl_hf, corpus, args, device, env, main_runs,
                  on_progress=None):
    """Trains hd64 args.diagnose_hd64_steps steps under each variant of diagnose_plan(). Returns
    the "diagnose_hd64" entry of real_work_results.json. main_runs: the main run's hd64 runs at
    the longest length ({"lane_attention": {...}, "sdpa": {...}}) when it ran, for the check that
    the diagnosis reproduces its curves."""
    t0 = time.time()
    n = args.diagnose_hd64_steps
    sched = max(max(args.steps), n)
    math_ok, math_reason = True, ""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # noqa: BLE001
        math_ok, math_reason = False, f"torch.nn.attention.sdpa_kernel unavailable: {type(e).__name__}: {e}"
    variants, skipped = diagnose_plan(device, args.backend, math_ok, math_reason)
    diag = {"steps": n, "schedule_steps": sched, "device": device, "device_name": env["device"],
            "flashlane_backend": args.backend, "note": "diagnostics, not proof: no proof rows",
            "variants": [], "skipped": skipped, "error": ""}
    try:
        allowed = torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed()
        diag["sdpa_math_note"] = ("bf16 inputs, reductions in fp32 (torch.backends.cuda."
                                  "fp16_bf16_reduction_math_sdp_allowed() is False)" if not allowed else
                                  "bf16 reductions allowed (fp16_bf16_reduction_math_sdp_allowed() is True)")
    except Exception:  # noqa: BLE001 - older torch: nothing to note
        pass
    cfg = make_config(transformers, "hd64", args.seq_len, args.smoke)
    torch.manual_seed(args.seed)
    init = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="sdpa",
                                                     dtype=torch.float32)
    init_state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    del init
    batches = corpus.take_batches("train", args.batch, n)
    print(f"diagnose hd64: {n} steps (lr schedule of {sched}), variants "
          f"{[v['name'] for v in variants]}, not run {[s['name'] for s in skipped]}", flush=True)
    deadline = (args._t_start + args.diagnose_deadline_s) if args.diagnose_deadline_s > 0 else None
    for v in variants:
        t1 = time.time()
        if deadline is not None and deadline - t1 < 10:
            diag["skipped"].append({"name": v["name"], "reason": "out of time (--diagnose-deadline-s)"})
            print(f"diagnose hd64 {v['name']}: not run, out of time", flush=True)
            continue
        with contextlib.ExitStack() as stack:
            if v["impl"] == "lane":
                stack.enter_context(fl_hf.backend_override(v["forward"], backward_backend=v["backward"],
                                                           strict=True))
                impl = fl_hf.NAME
            else:
                impl = "sdpa"
                if v["sdpa_backend"] == "math":
                    stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            try:
                r = train(torch, transformers, flashlane, cfg, impl, init_state, batches, args, device,
                          schedule_steps=sched, keep_state=False, deadline=deadline)
            except Exception as e:  # noqa: BLE001 - recorded; the other variants still run
                traceback.print_exc()
                r = {"losses": [], "error": f"{type(e).__name__}: {e}", "receipts": [], "eval_receipts": []}
        out = dict(v)
        out.update({k: r.get(k) for k in ("losses", "grad_norms", "step_ms", "median_step_ms",
                                          "heldout_loss", "peak_memory_mib", "error")})
        out["wall_s"] = time.time() - t1
        recs = r.get("receipts", [])
        out["receipts_summary"] = rr.receipts_summary(recs)
        if v["impl"] == "lane":
            out["ran_as"] = ran_as(recs, v["forward"], v["backward"])
        else:
            out["flashlane_receipts"] = len(recs)
        diag["variants"].append(out)
        last = out["losses"][-1] if out["losses"] else None
        print(f"diagnose hd64 {v['name']}: {len(out['losses'])}/{n} steps, last loss {_fmt(last)}, "
              f"{out['wall_s']:.1f} s {out['error'] or ''}", flush=True)
        if on_progress:
            diagnose_summary(diag)
            on_progress(diag)
    if main_runs and n <= max(args.steps):
        rep = {}
        for name, main in (("sdpa", "sdpa"), (f"lane_{args.backend}", "lane_attention")):
            dv = next((x for x in diag["variants"] if x["name"] == name), None)
            if dv and main in main_runs:
                rep[name] = _repro(dv["losses"], main_runs[main].get("losses") or [])
        rep = {k: x for k, x in rep.items() if x}
        if rep:
            diag["repro_vs_main_run"] = {
                "steps": min(x["steps"] for x in rep.values()), "variants": rep,
                "note": "the diagnosis against the main run's curve of the same backend: 0 when the "
                        "training is bitwise reproducible; else the size of run-to-run noise"}
    diag["wall_s"] = time.time() - t0
    return diagnose_summary(diag)


# ------------------------------------------------------------------------------------------------
# The printed summary.

def divergence_text(divergence):
    """The greedy-decode divergences of a decode row, one entry per prompt that diverged:
    "p<prompt>@<position>" (0-based index of the generated token), each backend's margin for its
    own token over the other's in its own logits (small = a near-tie), and the largest logit
    difference between the backends at that step. "" when every prompt agreed."""
    parts = []
    for x in divergence:
        if x.get("first_divergence") is None:
            continue
        parts.append(f"p{x['prompt']}@{x['first_divergence']} tok sdpa {x.get('sdpa_token')} lane "
                     f"{x.get('lane_attention_token')} margin sdpa {_fmt(x.get('logit_gap_sdpa'))} lane "
                     f"{_fmt(x.get('logit_gap_lane_attention'))} max|dlogit| "
                     f"{_fmt(x.get('max_abs_logit_diff_at_divergence'))} (before {_fmt(x.get('max_abs_logit_diff_before'))})")
    return "; ".join(parts)


def summary_line(r):
    """One line of the printed summary for a proof row."""
    d = r["details"]
    line = f"{r['artifact_kind']:<11} {d.get('variant', '?'):<5} {r['preset']:<18} counts={r['counts_for_status']}"
    if r["artifact_kind"] == "short_train":
        fl_, sd_ = d["final_loss"]["lane_attention"], d["final_loss"]["sdpa"]
        ratio = [c for c in r["metrics"]["errors"] if c.get("criterion") == "final_loss_ratio"][0]["value"]
        tf, ts = d["tok_per_sec"]["lane_attention"], d["tok_per_sec"]["sdpa"]
        line += (f" loss {_fmt(fl_)} vs {_fmt(sd_)} ratio {_fmt(ratio)} tok/s {tf and round(tf)} vs "
                 f"{ts and round(ts)}")
    elif r["artifact_kind"] == "prefill":
        line += f" logits err {r['metrics']['max_abs_diff']} vs sdpa {r['metrics']['ref_max_abs_diff']}"
    else:
        firsts = [x["first_divergence"] for x in d["divergence"]]
        line += (f" decode_backend={d['decode_backend']} first divergence {firsts} agreement "
                 f"{d['token_agreement_vs_sdpa']:.3f}")
        text = divergence_text(d["divergence"])
        if text:
            line += f" | {text}"
    if not r["counts_for_status"]:
        line += f" ({r['not_counted_reason']})"
    return line


# ------------------------------------------------------------------------------------------------
# Plot: matplotlib when installed, else a small PNG drawn here (curves only, no text).

def _png(path, width, height, pixels):
    import struct
    import zlib

    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(tag, data):
        c = struct.pack(">I", len(data)) + tag + data
        return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def plot_curves(path, curves):
    """curves: {label: [loss...]}. Returns a note on how it was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        for label, ys in curves.items():
            ax.plot(range(1, len(ys) + 1), ys, label=label,
                    linestyle="--" if "sdpa" in label else "-")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats / byte)")
        ax.set_title("byte-level Llama, real text: lane_attention (flashlane) vs sdpa")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return "matplotlib"
    except Exception as e:  # noqa: BLE001
        w, h, m = 800, 500, 20
        px = bytearray([255]) * (w * h * 3)
        vals = [v for ys in curves.values() for v in ys if math.isfinite(v)]
        if not vals:
            _png(path, w, h, px)
            return f"no finite values ({type(e).__name__})"
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1
        n = max(len(ys) for ys in curves.values())
        colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
        for ci, ys in enumerate(curves.values()):
            col = colors[ci % len(colors)]
            pts = [(m + (w - 2 * m) * i / max(1, n - 1), h - m - (h - 2 * m) * (y - lo) / (hi - lo))
                   for i, y in enumerate(ys) if math.isfinite(y)]
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                k = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
                for j in range(k + 1):
                    x, y = int(x0 + (x1 - x0) * j / k), int(y0 + (y1 - y0) * j / k)
                    if 0 <= x < w and 0 <= y < h:
                        px[(y * w + x) * 3:(y * w + x) * 3 + 3] = bytes(col)
        _png(path, w, h, px)
        return (f"built-in PNG writer (matplotlib unavailable: {type(e).__name__}); colors in order "
                f"{list(curves)}: blue, orange, green, red; y from {lo:.3f} to {hi:.3f}")


# ------------------------------------------------------------------------------------------------

def print_diagnose(path):
    with open(path) as f:
        diag = json.load(f).get("diagnose_hd64")
    if not diag:
        print(f"{path}: no diagnose_hd64 entry (the run had --diagnose-hd64-steps 0, or did not get there)")
        return 1
    for line in diagnose_table(diag):
        print(line)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.print_diagnose:
        return print_diagnose(args.print_diagnose)
    os.makedirs(args.out, exist_ok=True)
    t_start = args._t_start = time.time()
    import torch
    import transformers

    import flashlane
    import flashlane.integrations.transformers as fl_hf

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and args.backend == "sm90":
        args.backend = "reference_cpu"  # the CPU smoke run: what can run there
    impl = fl_hf.register(backend=args.backend, strict=False)  # fallbacks are recorded, not hidden
    env, lane = environment(torch, flashlane, args.backend)
    if device != "cuda":
        lane = {"ran": False, "reason": f"device {device}: host run"}

    max_steps = max(args.steps)
    train_tokens = max_steps * args.batch * args.seq_len * 2
    corpus = rd.ByteCorpus(args.roots, seq_len=args.seq_len, seed=args.seed,
                           heldout_fraction=args.heldout_fraction,
                           max_tokens={"train": train_tokens,
                                       "heldout": max(2 * args.batch, args.prompts) * args.seq_len * 2})
    stats = corpus.stats.to_json()
    batches = corpus.take_batches("train", args.batch, max_steps)
    args._heldout_batches = corpus.take_batches("heldout", args.batch, 2)
    prompts = corpus.prompts(args.prompts, args.prompt_len)
    print(f"data: {stats['files_used']} files, {stats['sequences']} sequences of {args.seq_len} "
          f"tokens, fingerprint {stats['fingerprint']}, missing roots {stats['missing_roots']}", flush=True)

    rows, results = [], {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                         "environment": env, "gpu_lane": lane, "data": stats,
                         "torch": torch.__version__, "transformers": transformers.__version__,
                         "variants": {}}
    curves = {}
    hd64_main_runs = None
    rows_path = os.path.join(args.out, "real_work_rows.jsonl")
    for variant in args.variants:
        cfg = make_config(transformers, variant, args.seq_len, args.smoke)
        torch.manual_seed(args.seed)
        init = transformers.LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="sdpa",
                                                         dtype=torch.float32)
        init_state = {k: v.detach().clone() for k, v in init.state_dict().items()}
        n_params = sum(p.numel() for p in init.parameters())
        del init
        vres = {"config": cfg.to_dict(), "parameters": n_params, "runs": {}}
        trained = None
        for steps in sorted(args.steps):
            run = {}
            for name, which in (("lane_attention", impl), ("sdpa", "sdpa")):
                t0 = time.time()
                r = train(torch, transformers, flashlane, cfg, which, init_state, batches[:steps], args, device)
                r["wall_s"] = time.time() - t0
                run[name] = r
                print(f"{variant} steps={steps} {name}: final loss "
                      f"{r['losses'][-1] if r['losses'] else None}, {r['tok_per_sec'] or 0:.0f} tok/s, "
                      f"{r['wall_s']:.1f} s {r['error']}", flush=True)
            rows.append(short_train_row(env, lane, cfg, variant, steps, run["lane_attention"], run["sdpa"],
                                        args, stats))
            if steps == max_steps:
                if variant == "hd64":
                    hd64_main_runs = {n: {"losses": r["losses"]} for n, r in run.items()}
                trained = run["lane_attention"]["state"]
                curves[f"{variant} lane_attention"] = run["lane_attention"]["losses"]
                curves[f"{variant} sdpa"] = run["sdpa"]["losses"]
            vres["runs"][str(steps)] = {n: {k: v for k, v in r.items() if k not in ("state", "receipts", "eval_receipts")}
                                        for n, r in run.items()}
            for n, r in run.items():
                vres["runs"][str(steps)][n]["receipts_summary"] = rr.receipts_summary(r["receipts"])
        if trained is None:
            print(f"{variant}: the {max_steps}-step lane_attention run failed; prefill/decode use the initial weights")
            trained = init_state
        try:
            rows.extend(prefill_and_decode(torch, transformers, flashlane, cfg, variant, trained, prompts,
                                           env, lane, args, device, impl))
        except Exception as e:  # noqa: BLE001 - the gate then reports the rows as missing
            traceback.print_exc()
            vres["prefill_decode_error"] = f"{type(e).__name__}: {e}"
        results["variants"][variant] = vres
        rr.write_rows(rows_path, rows)  # after each variant: a run cut short keeps what it did

    rr.write_rows(rows_path, rows)
    with open(os.path.join(args.out, "loss_curves.csv"), "w") as f:
        names = list(curves)
        f.write("step," + ",".join(names) + "\n")
        for i in range(max((len(v) for v in curves.values()), default=0)):
            f.write(str(i + 1) + "," + ",".join(
                (repr(curves[n][i]) if i < len(curves[n]) else "") for n in names) + "\n")
    results["plot"] = plot_curves(os.path.join(args.out, "loss_curves.png"), curves)
    results["rows"] = [{"artifact_kind": r["artifact_kind"], "preset": r["preset"],
                        "head_dim": r["problem"]["head_dim"], "counts_for_status": r["counts_for_status"],
                        "not_counted_reason": r["not_counted_reason"]} for r in rows]
    results["wall_s"] = time.time() - t_start
    results_path = os.path.join(args.out, "real_work_results.json")

    def save_results():
        with open(results_path, "w") as f:
            json.dump(rr.json_safe(results), f, indent=1, default=str)

    save_results()

    print("=== real work summary")
    print(f"device {env['device']} sm{env['sm']}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, flashlane {env['library_version']} ({env['git_commit']}), "
          f"wall {results['wall_s']:.0f} s")
    for r in rows:
        print(summary_line(r))
    print(f"rows: {rows_path}", flush=True)
    rc = 0 if rows and all(r["counts_for_status"] for r in rows) else 1

    if args.diagnose_hd64_steps > 0:  # after the proof rows and the summary: a cut-short run keeps them
        def progress(diag):
            results["diagnose_hd64"] = diag
            save_results()

        try:
            diag = diagnose_hd64(torch, transformers, flashlane, fl_hf, corpus, args, device, env,
                                 hd64_main_runs, on_progress=progress)
        except Exception as e:  # noqa: BLE001 - a diagnosis never changes the run's verdict
            traceback.print_exc()
            diag = results.get("diagnose_hd64") or {"steps": args.diagnose_hd64_steps, "variants": [],
                                                     "skipped": [], "device": device,
                                                     "device_name": env["device"]}
            diag["error"] = f"{type(e).__name__}: {e}"
            diagnose_summary(diag)
        results["diagnose_hd64"] = diag
        results["wall_s"] = time.time() - t_start
        save_results()
        for line in diagnose_table(diag):
            print(line)
    return rc


if __name__ == "__main__":
    sys.exit(main())
