"""Where a training step of the real-work Llama spends its time, with flashlane and with SDPA:
torch.profiler over a few steps of the same model (random tokens; the time does not depend on the
text), then the top CUDA kernels, the total CUDA time of attention kernels and the step time.
A diagnostic for the tokens/s gap that realwork_run.py reports; it writes no proof rows.

    python3 bench/real_work/realwork_profile.py [--variant hd64] [--steps 3] [--batch 4]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import realwork_run as rw  # noqa: E402  (the same model and optimizer setup)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="hd64", choices=["hd64", "hd128"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()

    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    import flashlane.integrations.transformers as fl_hf

    lane = fl_hf.register(backend="sm90", strict=True)
    cfg = rw.make_config(transformers, args.variant, args.seq_len, smoke=False)
    torch.manual_seed(0)
    init = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa",
                                                      dtype=torch.float32).state_dict()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device="cuda")
    for impl in ("sdpa", lane):
        model = rw.build_model(torch, transformers, cfg, impl, torch.bfloat16, "cuda", init)
        model.train()

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        events.sort(key=lambda e: e.device_time_total, reverse=True)
        total_cuda = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
        attn = [e for e in events
                if any(s in e.key.lower() for s in ("flash", "attention", "fmha", "sdpa", "bwd_",
                                                    "fwd_kernel", "flashlane", "cudnn"))]
        attn_ms = sum(e.self_device_time_total for e in attn) / 1e3 / args.steps
        print(f"=== {args.variant} {impl}: step {wall_ms:.1f} ms wall, {total_cuda:.1f} ms CUDA "
              f"(kernels), attention-like kernels {attn_ms:.2f} ms/step")
        for e in events[:args.top]:
            print(f"  {e.self_device_time_total / 1e3 / args.steps:8.3f} ms/step "
                  f"x{e.count // args.steps:4d}  {e.key[:110]}")
        cpu = sorted((e for e in prof.key_averages() if "flashlane" in e.key.lower()),
                     key=lambda e: e.cpu_time_total, reverse=True)
        for e in cpu[:5]:
            print(f"  cpu {e.cpu_time_total / 1e3 / args.steps:8.3f} ms/step x{e.count // args.steps:4d}"
                  f"  {e.key[:100]}")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
