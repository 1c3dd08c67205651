"""Hugging Face transformers: attn_implementation registered by
flashlane.integrations.transformers.register(), against "sdpa" on tiny random models (gpt-oss,
whose attention sinks SDPA cannot express: against "eager").

CPU tests (markers torch, transformers) run the models in float64 on reference_cpu and demand
near-exact agreement; the gpu test runs a tiny GQA Llama in bf16 and applies FlashAttention's rule
against the float64 model: max|ours - ref64| <= 2 * max|sdpa_bf16 - ref64| + 1e-5. Decode steps
with a cache are KV-cache calls (receipt runtime_mode "decode"): the tests at the end assert the
route on the receipts, next to the tokens.
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
         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **extra):
    cfg_cls = getattr(transformers, cfg_name)
    cfg = cfg_cls(vocab_size=97, hidden_size=256, intermediate_size=256,
                  num_hidden_layers=num_hidden_layers,
                  num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
                  head_dim=64, max_position_embeddings=256, initializer_range=0.2, **extra)
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


# ---------------------------------------------------------------------------------------------
# Decode steps as KV-cache calls. With a cache, generate()'s decode steps (one query per
# sequence after the cached keys) run as flash_attn_with_kvcache on the cache tensors, receipt
# runtime_mode "decode"; cache_seqlens keeps a static cache's unused slots out. Padding holes
# (left padding) keep the varlen path, receipt runtime_mode "varlen_fwd".

GEN = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
           pad_token_id=0)


def generate_both(ref, ours, ids, am, **kw):
    """Greedy generation by the reference and by flashlane; the receipts of flashlane's calls."""
    kw = dict(GEN, **kw)
    with torch.no_grad():
        a = ref.generate(input_ids=ids, attention_mask=am, **kw)
        with flashlane.receipt_log() as log:
            b = ours.generate(input_ids=ids, attention_mask=am, **kw)
    return a, b, log


def assert_same_generation(a, b):
    assert torch.equal(a.sequences, b.sequences)
    assert len(a.logits) == len(b.logits) == GEN["max_new_tokens"]
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(y, x, atol=1e-9, rtol=1e-9)


def modes_per_forward(log, layers, forwards=GEN["max_new_tokens"]):
    """The receipts' runtime_mode, one list per forward (the prompt, then each decode step)."""
    assert len(log) == layers * forwards, [r["runtime_mode"] for r in log]
    return [[r["runtime_mode"] for r in log[i:i + layers]] for i in range(0, len(log), layers)]


@pytest.mark.torch
@pytest.mark.parametrize("cache", ["static", "dynamic"])
@pytest.mark.parametrize("model", ["llama", "gqa_8_2", "mqa", "mistral_sliding"])
def test_decode_steps_are_kvcache_calls(model, cache):
    """The prompt runs as the forward ("fwd"), every decode step of every layer as a KV-cache
    call ("decode") on reference_cpu; tokens and logits are SDPA's. GQA 4/2 and 8/2, MQA 4/1;
    Mistral's window (6) is shorter than the prompt (21): its static layers are full and roll."""
    if model == "mistral_sliding":
        ref, ours = tiny("MistralForCausalLM", "MistralConfig", sliding_window=6)
    else:
        heads = {"llama": (4, 2), "gqa_8_2": (8, 2), "mqa": (4, 1)}[model]
        ref, ours = tiny(num_attention_heads=heads[0], num_key_value_heads=heads[1])
    ids, am = batch(pad="none")
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    a, b, log = generate_both(ref, ours, ids, am, **kw)
    assert_same_generation(a, b)
    assert modes_per_forward(log, 2) == [["fwd", "fwd"]] + [["decode", "decode"]] * 4
    assert all(r["status"] == "ok" and r["actual_backend"] == "reference_cpu" for r in log)


@pytest.mark.torch
def test_decode_steps_read_the_static_cache_in_place(monkeypatch):
    """Each decode step hands flash_attn_with_kvcache the static cache's own memory (the
    [b, max_cache_len, h_kv, d] view of its [b, h_kv, max_cache_len, d] tensors: no copy) and
    cache_seqlens = the keys in use: one int32 tensor per forward, shared by every layer."""
    ref, ours = tiny(num_hidden_layers=3)
    ids, am = batch(pad="none")
    calls = []
    real = fl_hf.flash_attn_with_kvcache

    def recording(q, k_cache, v_cache, **kw):
        calls.append((k_cache, v_cache, kw["cache_seqlens"]))
        return real(q, k_cache, v_cache, **kw)

    monkeypatch.setattr(fl_hf, "flash_attn_with_kvcache", recording)
    cache = transformers.StaticCache(config=ours.config, max_cache_len=32)
    with torch.no_grad():
        a = ref.generate(input_ids=ids, attention_mask=am, cache_implementation="static", **GEN)
        b = ours.generate(input_ids=ids, attention_mask=am, past_key_values=cache, **GEN)
    assert_same_generation(a, b)
    layers, steps = 3, GEN["max_new_tokens"] - 1
    assert len(calls) == layers * steps
    for step in range(steps):
        this_step = calls[step * layers:(step + 1) * layers]
        seqlens = this_step[0][2]
        assert all(c[2] is seqlens for c in this_step)  # made once per forward
        assert seqlens.dtype == torch.int32 and seqlens.tolist() == [ids.shape[1] + step + 1] * 3
        for layer, (k, v, _) in enumerate(this_step):
            for view, own in ((k, cache.layers[layer].keys), (v, cache.layers[layer].values)):
                assert view.data_ptr() == own.data_ptr() and view.shape == (3, 32, 2, 64)
                assert view.stride() == own.transpose(1, 2).stride()


@pytest.mark.torch
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_left_padded_decode_stays_varlen(cache):
    """Left padding leaves holes at the start of the keys, which cache_seqlens cannot express:
    every step runs on the varlen path, and the receipts say so."""
    ref, ours = tiny()
    ids, am = batch(pad="left")
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    a, b, log = generate_both(ref, ours, ids, am, **kw)
    assert_same_generation(a, b)
    assert modes_per_forward(log, 2) == [["varlen_fwd", "varlen_fwd"]] * 5
    assert all(r["actual_backend"] == "reference_cpu" for r in log)


@pytest.mark.torch
@pytest.mark.parametrize("pad", ["none", "left"])
def test_gpt_oss_static_cache_decode_with_sinks(pad):
    """gpt-oss with a static cache: the sinks join every decode step's KV-cache call; tokens and
    logits are eager attention's. With left padding the full layer keeps the varlen path, while
    the sliding layer's window (6 keys) holds real tokens only and decodes as a KV-cache call."""
    ref, ours = tiny_gpt_oss()
    ids, am = batch(pad=pad)
    a, b, log = generate_both(ref, ours, ids, am, cache_implementation="static")
    assert_same_generation(a, b)
    if pad == "none":
        expected = [["sinks_fwd", "sinks_fwd"]] + [["decode", "decode"]] * 4
    else:
        expected = [["sinks_varlen_fwd", "sinks_varlen_fwd"]] + [["decode", "sinks_varlen_fwd"]] * 4
    assert modes_per_forward(log, 2) == expected
    assert all(r["actual_backend"] == "reference_cpu" for r in log)


def causal_bottom_right_reference(q, k, v, scale):
    """q [b, h, sq, d], k/v [b, hk, sk, d]: softmax attention, query i sees keys j <= i + sk - sq.
    Returns [b, sq, h, d]."""
    sq, sk = q.shape[2], k.shape[2]
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    visible = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)
    scores = (q @ k.transpose(2, 3) * scale).masked_fill(~visible, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)


def direct_call(sq, sk, requires_grad=False, seed=3):
    """One attention call without a mask (the keys are the cache, the queries its last rows).
    Returns (the receipt, max |out - reference|)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, sq, 64, dtype=torch.float64, generator=g).requires_grad_(requires_grad)
    k = torch.randn(2, 2, sk, 64, dtype=torch.float64, generator=g)
    v = torch.randn(2, 2, sk, 64, dtype=torch.float64, generator=g)
    with flashlane.receipt_log() as log:
        out, _ = fl_hf.flashlane_attention_forward(torch.nn.Module(), q, k, v, None, scaling=0.125)
    assert len(log) == 1
    err = (out - causal_bottom_right_reference(q, k, v, 0.125)).abs().max().item()
    return log[0], err


@pytest.mark.torch
@pytest.mark.parametrize("sq, sk, mode", [(1, 30, "decode"), (fl_hf.DECODE_MAX_SEQLEN_Q, 30, "decode"),
                                          (fl_hf.DECODE_MAX_SEQLEN_Q + 1, 30, "fwd"), (5, 5, "fwd")])
def test_fallback_receipt_names_the_phase_of_the_call(sq, sk, mode):
    """A call the integration cannot serve (output_attentions) falls back to SDPA, or is refused
    when strict; its receipt's runtime_mode is the phase of the call: "decode" for a
    decode-shaped call (few queries after cached keys), "fwd" for a prefill."""
    q = torch.randn(1, 4, sq, 16, dtype=torch.float64)
    k = torch.randn(1, 2, sk, 16, dtype=torch.float64)
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    fl_hf.register(strict=False)
    with flashlane.receipt_log() as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fl_hf.flashlane_attention_forward(module, q, k, k, None, scaling=0.25, output_attentions=True)
    assert [(r["actual_backend"], r["runtime_mode"]) for r in log] == [("torch_sdpa", mode)]
    assert log[0]["fallback_reason"] == "transformers.output_attentions_unsupported"
    fl_hf.register(strict=True)
    try:
        with pytest.raises(flashlane.FlashlaneError):
            fl_hf.flashlane_attention_forward(module, q, k, k, None, scaling=0.25,
                                              output_attentions=True)
        assert flashlane.last_receipt()["runtime_mode"] == mode
    finally:
        fl_hf.register(strict=False)


@pytest.mark.torch
def test_decode_route_rule():
    """A KV-cache call for at most DECODE_MAX_SEQLEN_Q queries after cached keys without
    autograd; the forward for longer chunks, for a prefill (no cached key before the queries),
    and whenever autograd records (the forward has the backward)."""
    n = fl_hf.DECODE_MAX_SEQLEN_Q
    cases = [((1, 30), "decode"), ((n, 30), "decode"), ((n + 1, 30), "fwd"), ((5, 5), "fwd"),
             ((1, 30, True), "fwd")]
    for args, mode in cases:
        receipt, err = direct_call(*args)
        assert receipt["runtime_mode"] == mode, args
        assert receipt["actual_backend"] == "reference_cpu", args
        assert err < 1e-12, args
    with torch.no_grad():
        receipt, err = direct_call(1, 30, requires_grad=True)
    assert receipt["runtime_mode"] == "decode" and err < 1e-12


@pytest.mark.torch
def test_decode_steps_keep_the_request_and_strict():
    """The KV-cache calls carry the integration's Request: a named backend and strict reach
    them; a strict request the backend cannot serve fails closed with its tag, a non-strict one
    falls back visibly (the receipt names what ran and why)."""
    ref, ours = tiny()
    ids, am = batch(pad="none")
    fl_hf.register(backend="reference_cpu", strict=True)
    a, b, log = generate_both(ref, ours, ids, am, cache_implementation="static")
    assert_same_generation(a, b)
    assert modes_per_forward(log, 2)[1:] == [["decode", "decode"]] * 4
    assert all(r["requested_backend"] == r["actual_backend"] == "reference_cpu" and r["strict"]
               and r["fallback_reason"] == "" for r in log)
    with torch.no_grad():
        fl_hf.register(backend="sm90", strict=True)
        with pytest.raises(flashlane.FlashlaneError) as e:
            direct_call(1, 30)
        assert e.value.reason_tag.startswith("sm90.")
        r = flashlane.last_receipt()
        assert r["runtime_mode"] == "decode" and r["status"] == "backend_inapplicable"
        fl_hf.register(backend="sm90", strict=False)
        receipt, err = direct_call(1, 30)
    assert receipt["runtime_mode"] == "decode" and receipt["requested_backend"] == "sm90"
    assert receipt["actual_backend"] == "reference_cpu"
    assert receipt["fallback_reason"].startswith("sm90.")
    assert err < 1e-12


class _CudaLike:
    """What the route decision reads of a CUDA tensor: is_cuda, dtype, shape, get_device()."""

    is_cuda = True
    dtype = torch.bfloat16

    def __init__(self, *shape):
        self.shape = shape

    def get_device(self):
        return 0


@pytest.mark.torch
def test_decode_route_keeps_the_backend_the_forward_would_run(monkeypatch):
    """CUDA tensors: the route asks the applicability table (through ServingPlan). A backend with
    forward kernels but no decode kernels for the configuration (sm90 at head_dim 96) keeps the
    forward; where the first backend that serves either direction serves the KV-cache call, the
    route is taken; auto walks the priority order."""
    accepted = {("sm90", "fwd"), ("reference_cuda", "fwd"), ("reference_cuda", "decode"),
                ("reference_cpu", "fwd"), ("reference_cpu", "decode")}
    asked = []

    def table(prefill, decode, config):
        asked.append((prefill, decode, config["head_dim"], config["check_device"]))
        return (prefill, "fwd") in accepted and (decode, "decode") in accepted

    monkeypatch.setattr(fl_hf, "_table_accepts", table)
    monkeypatch.setattr(fl_hf, "_decode_route", {})
    q, v = _CudaLike(2, 1, 8, 96), _CudaLike(2, 30, 2, 96)
    cases = [("auto", False), ("sm90", False), ("reference_cuda", True)]
    for backend, served in cases:
        with fl_hf.backend_override(backend):
            assert fl_hf._decode_route_served(q, v, (-1, -1), 0.0) is served, backend
    assert all(head_dim == 96 and check_device for _, _, head_dim, check_device in asked)
    accepted.add(("sm90", "decode"))  # a configuration the sm90 decode kernels serve
    monkeypatch.setattr(fl_hf, "_decode_route", {})
    with fl_hf.backend_override("sm90"):
        assert fl_hf._decode_route_served(q, v, (-1, -1), 0.0) is True
    accepted.discard(("sm90", "decode"))
    accepted.discard(("sm90", "fwd"))  # not an sm90 device: auto decides at reference_cuda
    monkeypatch.setattr(fl_hf, "_decode_route", {})
    assert fl_hf._decode_route_served(q, v, (-1, -1), 0.0) is True
    n = len(asked)
    assert fl_hf._decode_route_served(q, v, (-1, -1), 0.0) is True and len(asked) == n  # cached
    # Host tensors take the route without asking the table.
    monkeypatch.undo()
    host_q = torch.zeros(2, 1, 8, 96, dtype=torch.bfloat16)
    assert fl_hf._decode_route_served(host_q, host_q, (-1, -1), 0.0) is True


@pytest.mark.gpu
def test_llama_gpu_static_cache_decode_on_sm90():
    """bf16 on an H100/H200, backend sm90, strict: the prompt on the sm90 forward, every decode
    step a KV-cache call on the sm90 decode kernels (head_dim 64, GQA 4/2), tokens as SDPA's.

    Two correct bf16 attentions can flip a near-tie of greedy decoding, after which the sequences
    part. So: the logits of every step whose prefix the two runs share obey FlashAttention's rule
    against the float64 model on the same prefix, and their tokens are equal wherever SDPA's
    choice leads by more than near_tie (logit units; a flip needs the two runs' logits to differ
    by half of it, and in bf16 on the CPU reference_cpu and SDPA differ by about 0.1 here)."""
    near_tie = 1.0
    steps = 4
    ref64, _ = tiny(device="cuda", dtype=torch.float64)
    ref, ours = tiny(device="cuda", dtype=torch.bfloat16)
    ref.load_state_dict(ref64.state_dict())
    ours.load_state_dict(ref64.state_dict())
    fl_hf.register(backend="sm90", strict=True)
    ids, am = batch(device="cuda", pad="none")
    kw = dict(GEN, max_new_tokens=steps, cache_implementation="static",
              disable_compile=True)  # eager decode steps: each call leaves its receipt
    with torch.no_grad():
        a = ref.generate(input_ids=ids, attention_mask=am, **kw)
        with flashlane.receipt_log() as log:
            b = ours.generate(input_ids=ids, attention_mask=am, **kw)
        p = ids.shape[1]
        l64 = ref64(input_ids=a.sequences[:, :-1]).logits[:, p - 1:].double()  # SDPA's prefixes
    decode_steps = [["decode", "decode"]] * (steps - 1)
    assert modes_per_forward(log, 2, steps) == [["fwd", "fwd"]] + decode_steps
    assert all(r["status"] == "ok" and r["requested_backend"] == r["actual_backend"] == "sm90"
               and r["strict"] for r in log), log
    la = torch.stack(a.logits, 1).double()  # [batch, steps, vocab]
    lb = torch.stack(b.logits, 1).double()
    same = a.sequences[:, p:] == b.sequences[:, p:]  # [batch, steps]
    shared_prefix = torch.cat([torch.ones_like(same[:, :1]), same[:, :-1].cumprod(1).bool()], 1)
    err = (lb - l64).abs().amax(-1)[shared_prefix].max().item()
    peer = (la - l64).abs().amax(-1)[shared_prefix].max().item()
    assert err <= 2 * peer + 1e-5, f"flashlane {err:.3e} vs sdpa bf16 {peer:.3e}"
    top2 = la.topk(2, dim=-1).values
    decided = shared_prefix & (top2[..., 0] - top2[..., 1] > near_tie)
    assert same[decided].all(), (a.sequences[:, p:], b.sequences[:, p:])
    assert decided[:, 1:].any()  # tokens of decode steps were compared
