"""Hugging Face transformers: attn_implementation registered by
flashlane.integrations.transformers.register(), against "sdpa" on tiny random models (gpt-oss,
whose attention sinks SDPA cannot express: against "eager").

CPU tests (markers torch, transformers) run the models in float64 on reference_cpu and demand
near-exact agreement; the gpu test runs a tiny GQA Llama in bf16 and applies FlashAttention's rule
against the float64 model: max|ours - ref64| <= 2 * max|sdpa_bf16 - ref64| + 1e-5.
"""

import copy
import warnings

import pytest

torch = pytest.importorskip("torch", reason="needs torch: torch is not installed")
transformers = pytest.importorskip("transformers", reason="needs transformers: not installed")

import flashlane  # noqa: E402
from flashlane.integrations import transformers as fl_hf  # noqa: E402

pytestmark = pytest.mark.transformers


@pytest.fixture(autouse=True)
def registered():
    name = fl_hf.register()
    yield name
    fl_hf.register()  # back to the defaults (auto, not strict) after tests that change them


def tiny(cls_name="LlamaForCausalLM", cfg_name="LlamaConfig", dtype=torch.float64, device="cpu",
         num_hidden_layers=2, **extra):
    cfg_cls = getattr(transformers, cfg_name)
    cfg = cfg_cls(vocab_size=97, hidden_size=256, intermediate_size=256,
                  num_hidden_layers=num_hidden_layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  max_position_embeddings=256, initializer_range=0.2, **extra)
    torch.manual_seed(0)
    cls = getattr(transformers, cls_name)
    ref = cls._from_config(copy.deepcopy(cfg), attn_implementation="sdpa", dtype=dtype).to(device).eval()
    ours = cls._from_config(copy.deepcopy(cfg), attn_implementation=fl_hf.NAME, dtype=dtype).to(device).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def batch(device="cpu", pad="left"):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 21), generator=g)
    am = torch.ones(3, 21, dtype=torch.long)
    if pad == "left":
        am[1, :6] = 0
        am[2, :13] = 0
    elif pad == "right":
        am[1, 15:] = 0
        am[2, 8:] = 0
    elif pad == "holes":
        am[1, 3:7] = 0
        am[2, :2] = 0
        am[2, 10:12] = 0
    return ids.to(device), am.to(device)


@pytest.mark.torch
@pytest.mark.parametrize("pad", ["none", "left", "right", "holes"])
def test_llama_prefill_matches_sdpa(pad):
    ref, ours = tiny()
    ids, am = batch(pad=pad)
    with torch.no_grad(), flashlane.receipt_log() as log:
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    valid = am.bool()
    torch.testing.assert_close(b[valid], a[valid], atol=1e-9, rtol=1e-9)
    assert len(log) == 2 and all(r["status"] == "ok" for r in log)  # one call per layer
    assert all(r["actual_backend"] == "reference_cpu" for r in log)
    assert {r["runtime_mode"] for r in log} == {"fwd" if pad == "none" else "varlen_fwd"}


@pytest.mark.torch
@pytest.mark.parametrize("pad", ["left", "holes"])
def test_padded_metadata_is_computed_once_per_forward(pad, monkeypatch):
    """The unpad plan (real tokens' indices, cu_seqlens, max_seqlen: the only device-to-host
    reads of the padded path) is made by the first layer and reused by the others; a new forward
    makes a new one."""
    made = []
    real = fl_hf._PaddedPlan

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fl_hf, "_PaddedPlan", counting)
    ref, ours = tiny(num_hidden_layers=4)
    ids, am = batch(pad=pad)
    with torch.no_grad(), flashlane.receipt_log() as log:
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
        assert len(made) == 1 and len(log) == 4  # 4 layers, one plan
        ours(input_ids=ids, attention_mask=am)
        assert len(made) == 2
    valid = am.bool()
    torch.testing.assert_close(b[valid], a[valid], atol=1e-9, rtol=1e-9)
    assert all(r["runtime_mode"] == "varlen_fwd" for r in log)


@pytest.mark.torch
def test_mask_function_keeps_the_causal_mask():
    """The registered mask function hands a causal description to the attention, never None."""
    from transformers.masking_utils import create_causal_mask

    ref, ours = tiny()
    emb = torch.zeros(2, 5, 256, dtype=torch.float64)
    m = create_causal_mask(config=ours.config, inputs_embeds=emb, attention_mask=None,
                           past_key_values=None, position_ids=torch.arange(5)[None])
    assert isinstance(m, fl_hf.FlashlaneMask) and m.kind == "causal" and m.padding is None


@pytest.mark.torch
@pytest.mark.parametrize("model", ["llama", "mistral_sliding"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_decode_matches_sdpa(cache, model):
    if model == "llama":
        ref, ours = tiny()
    else:
        ref, ours = tiny("MistralForCausalLM", "MistralConfig", sliding_window=6)
    ids, am = batch(pad="left")
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=0)
    if cache == "static":
        kw["cache_implementation"] = "static"
    with torch.no_grad(), flashlane.receipt_log() as log:
        a = ref.generate(input_ids=ids, attention_mask=am, **kw)
        b = ours.generate(input_ids=ids, attention_mask=am, **kw)
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(y, x, atol=1e-9, rtol=1e-9)
    assert len(log) == 2 * 5 and all(r["actual_backend"] == "reference_cpu" for r in log)


@pytest.mark.torch
def test_packed_sequences_from_position_ids():
    """Padding-free packing: position_ids restart per sequence -> varlen, like separate calls."""
    ref, ours = tiny()
    g = torch.Generator().manual_seed(2)
    lens = [7, 5, 9]
    ids = torch.randint(3, 97, (1, sum(lens)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    with torch.no_grad(), flashlane.receipt_log() as log:
        packed = ours(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert all(r["runtime_mode"] == "varlen_fwd" for r in log) and len(log) == 2
    start = 0
    for n in lens:
        with torch.no_grad():
            alone = ref(input_ids=ids[:, start:start + n], use_cache=False).logits
        torch.testing.assert_close(packed[:, start:start + n], alone, atol=1e-9, rtol=1e-9)
        start += n


@pytest.mark.torch
@pytest.mark.parametrize("pad", ["none", "left"])
def test_sliding_window_model(pad):
    ref, ours = tiny("MistralForCausalLM", "MistralConfig", sliding_window=6)
    ids, am = batch(pad=pad)
    with torch.no_grad(), flashlane.receipt_log() as log:
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    valid = am.bool()
    torch.testing.assert_close(b[valid], a[valid], atol=1e-9, rtol=1e-9)
    assert all(r["actual_backend"] == "reference_cpu" for r in log)


@pytest.mark.torch
def test_sliding_window_with_holes_falls_back_visibly():
    ref, ours = tiny("MistralForCausalLM", "MistralConfig", sliding_window=6)
    ids, am = batch(pad="holes")
    with torch.no_grad(), flashlane.receipt_log() as log, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fl_hf._warned.clear()
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    valid = am.bool()
    torch.testing.assert_close(b[valid], a[valid], atol=1e-9, rtol=1e-9)
    assert log and all(r["actual_backend"] == "torch_sdpa" for r in log)
    assert log[0]["fallback_reason"] == "transformers.window_with_padding_holes_unsupported"
    assert flashlane.last_receipt()["actual_backend"] == "torch_sdpa"
    assert any("falls back to PyTorch SDPA" in str(x.message) for x in w)


@pytest.mark.torch
def test_custom_4d_mask_falls_back_or_raises_when_strict():
    ref, ours = tiny()
    ids, _ = batch(pad="none")
    s = ids.shape[1]
    dense = torch.tril(torch.ones(s, s, dtype=torch.bool))
    dense[:, 0] = True  # an "attention sink" column: not a mask flashlane can express
    mask4d = dense[None, None].expand(3, 1, s, s)
    with torch.no_grad(), flashlane.receipt_log() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ref(input_ids=ids, attention_mask=mask4d).logits
        b = ours(input_ids=ids, attention_mask=mask4d).logits
    torch.testing.assert_close(b, a, atol=1e-9, rtol=1e-9)
    assert [r["fallback_reason"] for r in log] == ["transformers.dense_mask_unsupported"] * 2
    fl_hf.register(strict=True)
    with pytest.raises(flashlane.FlashlaneError) as e, torch.no_grad():
        ours(input_ids=ids, attention_mask=mask4d)
    assert e.value.reason_tag == "transformers.dense_mask_unsupported"
    r = flashlane.last_receipt()
    assert r["status"] == "backend_inapplicable" and r["error_reason"] == e.value.reason_tag
    assert r["actual_backend"] == "" and r["strict"] is True


@pytest.mark.torch
def test_strict_backend_refusal_propagates():
    ref, ours = tiny()
    fl_hf.register(backend="sm90", strict=True)
    ids, am = batch(pad="left")
    with pytest.raises(flashlane.FlashlaneError) as e, torch.no_grad():
        ours(input_ids=ids, attention_mask=am)
    assert e.value.reason_tag.startswith("sm90.")


@pytest.mark.torch
def test_backend_override_directs_each_direction_and_restores():
    """backend_override(): the forward / backward backends of the block reach the calls (their
    receipts name the request and what ran), strict fails closed in either direction, and the
    registered settings come back after the block, also when it raised."""
    ref, ours = tiny()
    ours.train()
    fl_hf.register(backend="reference_cpu")
    registered = fl_hf.settings()
    assert registered == {"backend": "reference_cpu", "strict": False, "backward_backend": None}
    ids, am = batch(pad="none")
    with fl_hf.backend_override(backward_backend="sm90") as now, flashlane.receipt_log() as log:
        assert now == {"backend": "reference_cpu", "strict": False, "backward_backend": "sm90"}
        ours(input_ids=ids, labels=ids).loss.backward()
    assert fl_hf.settings() == registered
    fwd = [r for r in log if r["runtime_mode"] == "fwd"]
    bwd = [r for r in log if r["runtime_mode"] == "bwd"]
    assert len(fwd) == len(bwd) == 2  # one per layer
    assert all(r["requested_backend"] == r["actual_backend"] == "reference_cpu" for r in fwd)
    assert all(r["requested_backend"] == "sm90" and r["actual_backend"] == "reference_cpu"
               and r["fallback_reason"].startswith("sm90.") for r in bwd), bwd
    ours.zero_grad()
    with fl_hf.backend_override(backward_backend="sm90", strict=True):
        loss = ours(input_ids=ids, labels=ids).loss  # the forward runs on reference_cpu ...
        with pytest.raises(flashlane.FlashlaneError) as e:
            loss.backward()  # ... the backward asks sm90 strictly: refused with its tag
    assert e.value.reason_tag.startswith("sm90.")
    with pytest.raises(flashlane.FlashlaneError), torch.no_grad():
        with fl_hf.backend_override("sm90", strict=True):
            ours(input_ids=ids)
    assert fl_hf.settings() == registered
    with fl_hf.backend_override("sm90", backward_backend="reference_cpu") as now:
        assert now == {"backend": "sm90", "strict": False, "backward_backend": "reference_cpu"}
        with fl_hf.backend_override("reference_cpu") as inner:  # a forward backend alone: both directions
            assert inner == {"backend": "reference_cpu", "strict": False, "backward_backend": None}
    assert fl_hf.settings() == registered
    with pytest.raises(ValueError):
        with fl_hf.backend_override(backward_backend="fa3"):
            pass


@pytest.mark.torch
def test_register_refuses_names_with_flash():
    with pytest.raises(ValueError):
        fl_hf.register(name="flashlane")


@pytest.mark.torch
def test_training_step_gradients_match_sdpa():
    ref, ours = tiny()
    ref.train()
    ours.train()
    ids, am = batch(pad="right")
    labels = ids.masked_fill(am == 0, -100)
    la = ref(input_ids=ids, attention_mask=am, labels=labels).loss
    lb = ours(input_ids=ids, attention_mask=am, labels=labels).loss
    la.backward()
    lb.backward()
    torch.testing.assert_close(lb, la, atol=1e-9, rtol=1e-9)
    for (n, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.gpu
@pytest.mark.parametrize("pad", ["none", "left", "right"])
def test_llama_gpu_bf16_within_flashattention_rule(pad):
    ref64, _ = tiny(device="cuda", dtype=torch.float64)
    ref, ours = tiny(device="cuda", dtype=torch.bfloat16)
    ours.load_state_dict(ref64.state_dict())
    ref.load_state_dict(ref64.state_dict())
    ids, am = batch(device="cuda", pad=pad)
    with torch.no_grad(), flashlane.receipt_log() as log:
        r64 = ref64(input_ids=ids, attention_mask=am).logits
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    valid = am.bool()
    err = (b[valid].double() - r64[valid]).abs().max().item()
    peer = (a[valid].double() - r64[valid]).abs().max().item()
    assert err <= 2 * peer + 1e-5, f"flashlane {err:.3e} vs sdpa bf16 {peer:.3e}"
    assert log and all(r["status"] == "ok" for r in log)
    # the kernel that ran is recorded: sm90 where it applies, else reference_cuda with the reason
    for r in log:
        assert r["actual_backend"] in ("sm90", "reference_cuda"), r
        assert r["actual_backend"] == "sm90" or r["fallback_reason"].startswith("sm90.")


@pytest.mark.gpu
def test_llama_gpu_generate_left_padded():
    ref, ours = tiny(device="cuda", dtype=torch.bfloat16)
    ids, am = batch(device="cuda", pad="left")
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        a = ref.generate(input_ids=ids, attention_mask=am, **kw)
        b = ours.generate(input_ids=ids, attention_mask=am, **kw)
    # bf16 greedy decoding can flip near-ties; the prompt is kept and most tokens agree
    assert torch.equal(a[:, :ids.shape[1]], b[:, :ids.shape[1]])
    assert (a == b).float().mean().item() > 0.9


@pytest.mark.torch
@pytest.mark.parametrize("pad", ["none", "left", "holes"])
def test_bidirectional_model_with_padding(pad):
    """config.is_causal=False: transformers builds a bidirectional mask; every query (pad rows
    included, as SDPA computes them) attends to the real keys."""
    ref, ours = tiny(is_causal=False)
    ids, am = batch(pad=pad)
    with torch.no_grad(), flashlane.receipt_log() as log:
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(b, a, atol=1e-9, rtol=1e-9)
    assert log and all(r["actual_backend"] == "reference_cpu" for r in log)


# ---------------------------------------------------------------------------------------------
# gpt-oss: attention sinks. GptOssAttention passes its parameter `sinks` ([heads], one logit per
# query head) to the attention function as s_aux=; its eager attention appends the sink logit as
# an extra score column before the softmax and drops it after. The reference is that eager
# attention ("sdpa" is not offered for gpt-oss: SDPA has no sinks).
#
# Tolerance: in float64 both sides compute the same real numbers. The sinks are set to float32
# values (flashlane computes with float32 sinks, so nothing is rounded there) and reference_cpu
# accumulates in float64, so logits agree to rounding (1e-9, as the Llama tests above). The
# backward uses the float32 LSE and computes the sinks' gradient in float32: gradients to 1e-6
# absolute / 1e-5 relative, as test_training_step_gradients_match_sdpa.

def tiny_gpt_oss(dtype=torch.float64, device="cpu", **extra):
    """A 2-layer MoE gpt-oss (a sliding-window layer, then a full one) with distinct sinks,
    once with attn_implementation="eager" and once with flashlane's, the same weights."""
    fields = dict(
        vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=6, max_position_embeddings=256,
        initializer_range=0.2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    fields.update(extra)
    cfg = transformers.GptOssConfig(**fields)
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    torch.manual_seed(0)
    # experts_implementation="eager": the grouped-matmul experts take no float64
    kw = dict(experts_implementation="eager", dtype=dtype)
    cls = transformers.GptOssForCausalLM
    ref = cls._from_config(copy.deepcopy(cfg), attn_implementation="eager", **kw).to(device).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in ref.model.layers:  # float32 values in [-1, 2.5): a visible share of each row
            s = (torch.rand(cfg.num_attention_heads, generator=g) * 3.5 - 1.0).float()
            layer.self_attn.sinks.copy_(s.to(dtype))
    ours = cls._from_config(copy.deepcopy(cfg), attn_implementation=fl_hf.NAME, **kw).to(device).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.torch
@pytest.mark.parametrize("pad", ["none", "left", "right"])
def test_gpt_oss_prefill_matches_eager(pad):
    ref, ours = tiny_gpt_oss()
    ids, am = batch(pad=pad)
    with torch.no_grad(), flashlane.receipt_log() as log:
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    valid = am.bool()
    torch.testing.assert_close(b[valid], a[valid], atol=1e-9, rtol=1e-9)
    assert len(log) == 2 and all(r["status"] == "ok" for r in log)  # one call per layer
    assert all(r["actual_backend"] == "reference_cpu" for r in log)
    assert {r["runtime_mode"] for r in log} == {"sinks_fwd" if pad == "none" else "sinks_varlen_fwd"}
    # The sinks matter here: without them (a sink of -1e4 takes no weight) the logits move.
    with torch.no_grad():
        for layer in ref.model.layers:
            layer.self_attn.sinks.fill_(-1e4)
        without = ref(input_ids=ids, attention_mask=am).logits
    assert (without[valid] - a[valid]).abs().max() > 1e-3


@pytest.mark.torch
def test_gpt_oss_generate_decode_matches_eager():
    """Left-padded prefill, then decode steps with a dynamic cache (the sliding layer keeps its
    window only): the sinks join every step's softmax."""
    ref, ours = tiny_gpt_oss()
    ids, am = batch(pad="left")
    kw = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=0)
    with torch.no_grad(), flashlane.receipt_log() as log:
        a = ref.generate(input_ids=ids, attention_mask=am, **kw)
        b = ours.generate(input_ids=ids, attention_mask=am, **kw)
    assert torch.equal(a.sequences, b.sequences)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(y, x, atol=1e-9, rtol=1e-9)
    assert len(log) == 2 * 5 and all(r["actual_backend"] == "reference_cpu" for r in log)


@pytest.mark.torch
def test_gpt_oss_training_gradients_match_eager():
    """The sinks are trained: their gradient (flashlane's dlearnable_sink) and every other
    parameter's match eager autograd."""
    ref, ours = tiny_gpt_oss()
    ref.train()
    ours.train()
    ids, am = batch(pad="right")
    labels = ids.masked_fill(am == 0, -100)
    with flashlane.receipt_log() as log:
        la = ref(input_ids=ids, attention_mask=am, labels=labels).loss
        lb = ours(input_ids=ids, attention_mask=am, labels=labels).loss
        la.backward()
        lb.backward()
    torch.testing.assert_close(lb, la, atol=1e-9, rtol=1e-9)
    for (n, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=n)
    sinks = [p.grad for n, p in ours.named_parameters() if n.endswith("sinks")]
    assert len(sinks) == 2 and all(g.abs().max() > 1e-4 for g in sinks)
    assert sorted(r["runtime_mode"] for r in log) == (["sinks_varlen_bwd"] * 2 +
                                                      ["sinks_varlen_fwd"] * 2)
    assert all(r["actual_backend"] == "reference_cpu" for r in log)


@pytest.mark.torch
def test_gpt_oss_fallback_keeps_the_sinks_or_raises_when_strict():
    """Padding holes under the sliding window cannot be served: that layer falls back visibly
    to an eager attention with the sink column (PyTorch SDPA would drop the sinks); the full
    layer still runs on flashlane."""
    ref, ours = tiny_gpt_oss()
    ids, am = batch(pad="holes")
    with torch.no_grad(), flashlane.receipt_log() as log, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fl_hf._warned.clear()
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    valid = am.bool()
    torch.testing.assert_close(b[valid], a[valid], atol=1e-9, rtol=1e-9)
    assert [r["actual_backend"] for r in log] == ["torch_eager", "reference_cpu"]
    assert log[0]["fallback_reason"] == "transformers.window_with_padding_holes_unsupported"
    assert log[0]["variant"] == "flashlane.integrations.transformers.eager_sink_attention"
    assert any("eager attention with the sink column" in str(x.message) for x in w)
    fl_hf.register(strict=True)
    with pytest.raises(flashlane.FlashlaneError) as e, torch.no_grad():
        ours(input_ids=ids, attention_mask=am)
    assert e.value.reason_tag == "transformers.window_with_padding_holes_unsupported"


@pytest.mark.torch
@pytest.mark.parametrize("strict", [False, True])
def test_sinks_not_one_per_query_head_are_refused(strict):
    """Sinks of another shape are no gpt-oss sinks: refused with the tag in both modes (no
    fallback computes them)."""
    fl_hf.register(strict=strict)
    q = torch.randn(1, 4, 5, 16, dtype=torch.float64)
    k = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    module = torch.nn.Module()
    for bad in (torch.zeros(2, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)):
        with pytest.raises(flashlane.FlashlaneError) as e:
            fl_hf.flashlane_attention_forward(module, q, k, k, None, scaling=0.25, s_aux=bad)
        assert e.value.reason_tag == "transformers.attention_sinks_unsupported"
        r = flashlane.last_receipt()
        assert r["error_reason"] == e.value.reason_tag and r["actual_backend"] == ""
    # sinks= (the other name) is taken like s_aux=.
    s = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    out, _ = fl_hf.flashlane_attention_forward(module, q, k, k, None, scaling=0.25, sinks=s)
    out2, _ = fl_hf.flashlane_attention_forward(module, q, k, k, None, scaling=0.25, s_aux=s)
    torch.testing.assert_close(out, out2, atol=0, rtol=0)
    plain, _ = fl_hf.flashlane_attention_forward(module, q, k, k, None, scaling=0.25)
    assert (plain - out).abs().max() > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("pad", ["none", "left"])
def test_gpt_oss_gpu_bf16_within_flashattention_rule(pad):
    # Every token goes to every expert (top-k = all): with top-2 of 4, a bf16 rounding
    # difference in attention flips a router's choice and the logits jump discretely, so the
    # error would measure the routing, not the attention.
    every_expert = dict(num_local_experts=2, num_experts_per_tok=2)
    ref64, _ = tiny_gpt_oss(device="cuda", dtype=torch.float64, **every_expert)
    ref, ours = tiny_gpt_oss(device="cuda", dtype=torch.bfloat16, **every_expert)
    ref.load_state_dict(ref64.state_dict())
    ours.load_state_dict(ref64.state_dict())
    ids, am = batch(device="cuda", pad=pad)
    with torch.no_grad(), flashlane.receipt_log() as log:
        r64 = ref64(input_ids=ids, attention_mask=am).logits
        a = ref(input_ids=ids, attention_mask=am).logits
        b = ours(input_ids=ids, attention_mask=am).logits
    valid = am.bool()
    err = (b[valid].double() - r64[valid]).abs().max().item()
    peer = (a[valid].double() - r64[valid]).abs().max().item()
    assert err <= 2 * peer + 1e-5, f"flashlane {err:.3e} vs eager bf16 {peer:.3e}"
    assert log and all(r["status"] == "ok" for r in log)
    for r in log:
        assert r["actual_backend"] in ("sm90", "reference_cuda"), r
        assert r["actual_backend"] == "sm90" or r["fallback_reason"].startswith("sm90.")
