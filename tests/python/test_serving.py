"""ServingPlan.generation(): generation receipts judged against the plan, on the host.

NumPy calls run on reference_cpu, the one backend that executes host tensors, so the plans here
name reference_cpu for both phases and the calls request it (a call that requested auto reaches
reference_cpu only after skipping sm90: its receipt has a fallback_reason, which the plan counts
as a fallback). Off-plan runs are made three ways: a plan whose decode backend is reference_cuda
(accepted without the device rows; the host calls still run on reference_cpu), a call that
requests sm90 and falls back, and a recorded fallback receipt as the transformers integration
writes it (actual_backend torch_sdpa). The last test runs a tiny Llama's generate() with a static
cache through the transformers integration (skipped without torch and transformers).
"""

import numpy as np
import pytest

import flashlane
from flashlane import FlashlaneError, ServingPlan

HEADS_Q, HEADS_KV, D, PROMPT, CAPACITY = 4, 2, 16, 5, 16
CPU = "reference_cpu"


def cpu_plan(**kw):
    config = dict(kv_layout="dense", prefill_varlen=False, dtype="fp32", head_dim=D,
                  heads_q=HEADS_Q, heads_kv=HEADS_KV, append=True)
    config.update(kw)
    prefill = config.pop("prefill_backend", CPU)
    decode = config.pop("decode_backend", CPU)
    return ServingPlan(prefill, decode, **config)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def generation_loop(steps=3, decode_backend=CPU, append=True, sinks=None):
    """One prefill forward over a prompt, then `steps` KV-cache decode calls of one token each
    (appending the token's k/v when `append`, else reading a cache already holding it)."""
    rng = np.random.default_rng(0)
    q, k, v = rand(rng, 1, PROMPT, HEADS_Q, D), rand(rng, 1, PROMPT, HEADS_KV, D), rand(rng, 1, PROMPT, HEADS_KV, D)
    flashlane.flash_attn_func(q, k, v, causal=True, backend=CPU, learnable_sink=sinks)
    k_cache = np.zeros((1, CAPACITY, HEADS_KV, D), np.float32)
    v_cache = np.zeros((1, CAPACITY, HEADS_KV, D), np.float32)
    k_cache[:, :PROMPT], v_cache[:, :PROMPT] = k, v
    used = PROMPT
    for _ in range(steps):
        q1, k1, v1 = rand(rng, 1, 1, HEADS_Q, D), rand(rng, 1, 1, HEADS_KV, D), rand(rng, 1, 1, HEADS_KV, D)
        if append:
            flashlane.flash_attn_with_kvcache(q1, k_cache, v_cache, k=k1, v=v1, cache_seqlens=used,
                                              causal=True, backend=decode_backend,
                                              learnable_sink=sinks)
        else:
            k_cache[:, used:used + 1], v_cache[:, used:used + 1] = k1, v1
            flashlane.flash_attn_with_kvcache(q1, k_cache, v_cache, cache_seqlens=used + 1,
                                              causal=True, backend=decode_backend,
                                              learnable_sink=sinks)
        used += 1


def test_prefill_then_decode_gives_an_ok_receipt_with_the_plans_modes():
    plan = cpu_plan()
    assert (plan.prefill_mode, plan.decode_mode) == ("fwd", "append_decode")
    with plan.generation() as run:
        assert run.receipt is None
        generation_loop(steps=3)
        assert len(run.receipts) == 4
    r = run.receipt
    assert r["ok"] is True and r["violations"] == []
    assert r["prefill_backend"] == r["decode_backend"] == CPU
    assert r["requested_prefill_backend"] == r["requested_decode_backend"] == CPU
    assert r["prefill_executed"] is True and r["decode_executed"] is True
    assert (r["prefill_calls"], r["decode_calls"], r["other_calls"]) == (1, 3, 0)
    assert r["prefill_runtime_modes"] == ["fwd"]
    assert r["decode_runtime_modes"] == ["append_decode"] * 3
    assert r["plan"] == plan.as_dict()

    plain = cpu_plan(append=False)
    with plain.generation() as run:
        generation_loop(steps=2, append=False)
    assert run.receipt["ok"] and run.receipt["decode_runtime_modes"] == ["decode"] * 2


def test_sinks_plan_names_the_modes_calls_with_sinks_record():
    plan = cpu_plan(learnable_sink=True)
    assert plan.learnable_sink is True and plan.prefill_mode == "sinks_fwd"
    assert plan.decode_mode == "append_decode"  # a KV-cache call's mode does not change with sinks
    sinks = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    with plan.generation() as run:
        generation_loop(steps=2, sinks=sinks)
    assert run.receipt["ok"]
    assert run.receipt["prefill_runtime_modes"] == ["sinks_fwd"]
    assert run.receipt["decode_runtime_modes"] == ["append_decode"] * 2
    # The same calls under a plan without sinks: the prefill's mode is not the plan's.
    with pytest.raises(FlashlaneError) as e:
        with cpu_plan().generation():
            generation_loop(steps=1, sinks=sinks)
    assert e.value.reason_tag == "serving.prefill_mode_not_on_plan"


def test_decode_on_another_backend_raises_with_the_tag():
    # reference_cuda has decode code: accepted without the device rows; the host calls run on
    # reference_cpu, which is not the plan's decode backend.
    plan = cpu_plan(decode_backend="reference_cuda")
    with pytest.raises(FlashlaneError) as e:
        with plan.generation() as run:
            generation_loop(steps=2)
    assert e.value.code == "backend_inapplicable"
    assert e.value.reason_tag == "serving.decode_not_on_plan"
    r = run.receipt
    assert r["ok"] is False and r["decode_executed"] is False and r["prefill_executed"] is True
    assert r["decode_backend"] == CPU and r["requested_decode_backend"] == "reference_cuda"
    assert [v["tag"] for v in r["violations"]] == ["serving.decode_not_on_plan"] * 2
    assert [v["call"] for v in r["violations"]] == [1, 2]


def test_decode_that_fell_back_raises_with_the_tag():
    # sm90 requested, not strict: the call falls back to reference_cpu (the plan's backend) and
    # its receipt says so.
    with pytest.raises(FlashlaneError) as e:
        with cpu_plan().generation() as run:
            generation_loop(steps=2, decode_backend="sm90")
    assert e.value.reason_tag == "serving.decode_not_on_plan"
    assert "fell back" in e.value.message
    r = run.receipt
    assert r["decode_backend"] == CPU and r["decode_executed"] is False
    assert all(v["fallback_reason"].startswith("sm90.") for v in r["violations"])


def fallback_receipt(mode="fwd", ran="torch_sdpa", reason="transformers.output_attentions"):
    """A receipt as the transformers integration records a fallback to PyTorch SDPA."""
    return {"requested_backend": CPU, "actual_backend": ran, "runtime_mode": mode,
            "strict": False, "fallback_reason": reason,
            "skipped": [{"backend": "lane_attention", "reason": reason}],
            "variant": "transformers.sdpa_attention_forward", "device": {"name": "cpu", "sm": 0},
            "deterministic": False, "status": "ok", "error_reason": ""}


def test_fallback_receipt_raises_with_the_tag():
    with pytest.raises(FlashlaneError) as e:
        with cpu_plan().generation():
            generation_loop(steps=1)
            flashlane.record_python_receipt(fallback_receipt())
    assert e.value.reason_tag == "serving.prefill_not_on_plan"
    assert "torch_sdpa" in e.value.message
    with pytest.raises(FlashlaneError) as e:
        with cpu_plan(append=False).generation():
            flashlane.record_python_receipt(fallback_receipt("decode", CPU, "sm90.requires_sm90"))
    assert e.value.reason_tag == "serving.decode_not_on_plan"


def test_not_strict_records_the_violations():
    plan = cpu_plan()  # append_decode
    with plan.generation(strict=False) as run:
        generation_loop(steps=2, append=False)  # plain decode calls: another mode
        flashlane.record_python_receipt(fallback_receipt("fwd", "torch_eager"))
        with pytest.raises(FlashlaneError):  # a refused call: head_dim 12 is not a multiple of 8
            z = np.zeros((1, 1, HEADS_Q, 12), np.float32)
            zc = np.zeros((1, CAPACITY, HEADS_KV, 12), np.float32)
            flashlane.flash_attn_with_kvcache(z, zc, zc, cache_seqlens=1, backend=CPU)
    r = run.receipt
    assert r["ok"] is False and r["strict"] is False
    tags = [v["tag"] for v in r["violations"]]
    assert tags == ["serving.decode_mode_not_on_plan"] * 2 + [
        "serving.prefill_not_on_plan", "serving.decode_not_on_plan",
        "serving.decode_mode_not_on_plan"]
    assert r["violations"][3]["status"] == "head_dim_invalid"
    assert r["prefill_backend"] == CPU + ",torch_eager"
    assert r["decode_calls"] == 3 and r["decode_executed"] is True


def test_require_decode_and_exceptions_in_the_block():
    plan = cpu_plan()
    with pytest.raises(FlashlaneError) as e:
        with plan.generation(require_decode=True) as run:
            generation_loop(steps=0)
    assert e.value.reason_tag == "serving.decode_not_executed"
    assert run.receipt["prefill_executed"] is True and run.receipt["decode_calls"] == 0
    with plan.generation() as run:  # not required: a prefill-only run is ok
        generation_loop(steps=0)
    assert run.receipt["ok"] and run.receipt["decode_executed"] is False
    # The block's own exception propagates unchanged; the receipt is still made.
    with pytest.raises(KeyError):
        with plan.generation() as run:
            generation_loop(steps=1)
            raise KeyError("stop")
    assert run.receipt["ok"] and run.receipt["decode_calls"] == 1


@pytest.mark.torch
@pytest.mark.transformers
def test_transformers_generate_static_cache_under_the_plan():
    torch = pytest.importorskip("torch", reason="needs torch: torch is not installed")
    transformers = pytest.importorskip("transformers", reason="needs transformers: not installed")
    from flashlane.integrations import transformers as fl_hf

    layers, new_tokens = 2, 4
    name = fl_hf.register(backend=CPU)  # the plan's backend, so no call falls back
    try:
        cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=256, intermediate_size=256,
                                       num_hidden_layers=layers, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=64,
                                       max_position_embeddings=256, initializer_range=0.2)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM._from_config(
            cfg, attn_implementation=name, dtype=torch.float64).eval()
        ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
        plan = ServingPlan(CPU, CPU, kv_layout="dense", append=False, prefill_varlen=False,
                           dtype="fp64", head_dim=64, heads_q=4, heads_kv=2)
        with torch.no_grad(), plan.generation(require_decode=True) as run:
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                           max_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                           cache_implementation="static")
    finally:
        fl_hf.register()
    r = run.receipt
    assert r["ok"], r["violations"]
    assert r["decode_executed"] is True and r["decode_backend"] == CPU
    assert r["prefill_executed"] is True and r["prefill_backend"] == CPU
    assert r["prefill_runtime_modes"] == ["fwd"] * layers
    assert r["decode_runtime_modes"] == ["decode"] * (layers * (new_tokens - 1))
