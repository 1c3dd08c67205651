"""Attention sinks (learnable_sink [heads_q]: gpt-oss, FlashAttention 4) through every Python front
on NumPy arrays (reference_cpu), against the independent NumPy attention of npref.py, where the
sink is an extra score column appended before the softmax and dropped after. CI tests: no torch,
no GPU.

The sinks used here are float32 values (the library computes with float32 sinks), so float64
inputs agree with the float64 reference to rounding (1e-10); LSE is float32 (2e-6)."""

import inspect

import numpy as np
import pytest

import flashlane
from flashlane import flash_attn as fa2
from flashlane import flash_attn_interface as fa3
from flashlane._core import numpy_backward

import npref

pytestmark = pytest.mark.surface("attention_sinks")
MASKS = ["no_mask", "causal", "causal_bottom_right"]


def rand(rng, shape, dtype=np.float64):
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def sinks(rng, h, lo=-1.0, hi=2.5):
    """Sink logits large enough to take a visible share of every row (scores here are O(1))."""
    return rng.uniform(lo, hi, size=h).astype(np.float32)


def close(a, b, atol=1e-10):
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def close_lse(a, b):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-6)


def varlen_case(rng, lens_q=(7, 12, 1), lens_k=(9, 12, 5), hq=4, hk=2, d=16):
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    return (rand(rng, (cu_q[-1], hq, d)), rand(rng, (cu_k[-1], hk, d)),
            rand(rng, (cu_k[-1], hk, d)), cu_q, cu_k, max(lens_q), max(lens_k))


# ------------------------------------------------------------------------------------------------
# flashlane's own calls.

@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("sq,sk", [(21, 21), (13, 29), (29, 13)])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (4, 1)])
def test_forward_gqa_masks(mask, sq, sk, heads):
    rng = np.random.default_rng(sq * 31 + sk + heads[1])
    hq, hk = heads
    q, k, v = rand(rng, (2, sq, hq, 32)), rand(rng, (2, sk, hk, 32)), rand(rng, (2, sk, hk, 32))
    sink = sinks(rng, hq)
    out, lse = flashlane.attention(q, k, v, mask=mask, return_lse=True, learnable_sink=sink)
    want_o, want_l = npref.attention(q, k, v, mask=mask, sink=sink)
    close(out, want_o)
    close_lse(lse, want_l)
    # The sinks matter: the same call without them is far from the reference.
    plain = flashlane.attention(q, k, v, mask=mask)
    assert np.abs(plain - want_o).max() > 1e-2
    r = flashlane.last_receipt()
    assert r["actual_backend"] == "reference_cpu" and r["status"] == "ok" and r["runtime_mode"] == "fwd"


def test_rows_sum_to_less_than_one_and_lse_includes_the_sink():
    """With v = 1 every output is the row's total weight: 1 - exp(sink - lse) < 1."""
    rng = np.random.default_rng(3)
    q, k = rand(rng, (1, 9, 2, 16)), rand(rng, (1, 11, 2, 16))
    v = np.ones((1, 11, 2, 16))
    sink = np.array([0.5, 1.5], np.float32)
    out, lse = flashlane.flash_attn_func(q, k, v, return_lse=True, learnable_sink=sink)
    weight = 1.0 - np.exp(sink[None, :, None] - lse.astype(np.float64))  # [b, h, s]
    np.testing.assert_allclose(out[..., 0], weight.transpose(0, 2, 1), atol=2e-6)
    assert np.all(out < 1.0)
    # lse = log(exp(sink) + sum exp(s)): the one without sinks, plus the sink's term.
    _, lse0 = flashlane.flash_attn_func(q, k, v, return_lse=True)
    close_lse(lse, np.logaddexp(lse0.astype(np.float64), sink[None, :, None].astype(np.float64)))


@pytest.mark.parametrize("softcap", [2.0, 30.0])
def test_softcap_does_not_cap_the_sink(softcap):
    """The sink is in the units of the final scores: neither scaled nor capped. A sink of 5
    with softcap 2 would be 2 * tanh(2.5) = 1.97 if it were capped."""
    rng = np.random.default_rng(4)
    q, k, v = rand(rng, (2, 17, 4, 32)), rand(rng, (2, 17, 2, 32)), rand(rng, (2, 17, 2, 32))
    q *= 4.0  # scores past the cap
    sink = np.array([5.0, -1.0, 0.25, 3.0], np.float32)
    out, lse = flashlane.flash_attn_func(q, k, v, softmax_scale=0.4, softcap=softcap, causal=True,
                                         return_lse=True, learnable_sink=sink)
    want_o, want_l = npref.attention(q, k, v, mask="causal_bottom_right", scale=0.4,
                                     softcap=softcap, sink=sink)
    close(out, want_o)
    close_lse(lse, want_l)
    capped = softcap * np.tanh(sink.astype(np.float64) / softcap)
    wrong_o, _ = npref.attention(q, k, v, mask="causal_bottom_right", scale=0.4, softcap=softcap,
                                 sink=capped)
    assert np.abs(wrong_o - out).max() > 1e-3
    scaled = sink.astype(np.float64) * 0.4
    wrong_o, _ = npref.attention(q, k, v, mask="causal_bottom_right", scale=0.4, softcap=softcap,
                                 sink=scaled)
    assert np.abs(wrong_o - out).max() > 1e-3


def test_fully_masked_rows_give_zero_and_lse_sink():
    """causal_bottom_right with seqlen_q > seqlen_k: the first rows see no key; a window makes
    rows in the middle see none either. O = 0 and LSE = the head's sink, never NaN."""
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, (2, 12, 4, 16)), rand(rng, (2, 5, 2, 16)), rand(rng, (2, 5, 2, 16))
    sink = np.array([0.3, -2.0, 1.0, 4.0], np.float32)
    out, lse = flashlane.flash_attn_func(q, k, v, causal=True, return_lse=True,
                                         learnable_sink=sink)
    assert np.all(out[:, :7] == 0) and not np.isnan(out).any()
    np.testing.assert_array_equal(lse[:, :, :7], np.broadcast_to(sink[None, :, None], (2, 4, 7)))
    want_o, want_l = npref.attention(q, k, v, mask="causal_bottom_right", sink=sink)
    close(out, want_o)
    close_lse(lse, want_l)
    # A window (0, 0) over seqused_k: the rows past each sequence's keys see nothing.
    used = np.array([3, 0], np.int32)
    q2, k2, v2 = rand(rng, (2, 5, 4, 16)), rand(rng, (2, 5, 2, 16)), rand(rng, (2, 5, 2, 16))
    out, lse = flashlane.flash_attn_func(q2, k2, v2, window_size=(0, 0), seqused_k=used,
                                         return_lse=True, learnable_sink=sink)
    want_o, want_l = npref.attention(q2, k2, v2, window=(0, 0), seqused_k=used, sink=sink)
    close(out, want_o)
    close_lse(lse, want_l)
    assert np.all(out[1] == 0) and np.all(lse[1] == sink[:, None])


@pytest.mark.parametrize("mask", MASKS)
def test_varlen(mask):
    rng = np.random.default_rng(6)
    q, k, v, cu_q, cu_k, mq, mk = varlen_case(rng)
    sink = sinks(rng, 4)
    out, lse = flashlane.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, mask=mask,
                                                return_lse=True, learnable_sink=sink)
    want_o, want_l = npref.attention_varlen(q, k, v, cu_q, cu_k, mask=mask, sink=sink)
    close(out, want_o)
    close_lse(lse, want_l)
    assert flashlane.last_receipt()["runtime_mode"] == "sinks_varlen_fwd"
    out2 = flashlane.attention(q, k, v, mask=mask, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                               learnable_sink=sink)
    close(out2, want_o)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_input_dtypes(dtype):
    rng = np.random.default_rng(7)
    q, k, v = (rand(rng, (1, 13, 2, 64), dtype) for _ in range(3))
    sink = sinks(rng, 2)
    out = flashlane.flash_attn_func(q, k, v, causal=True, learnable_sink=sink)
    assert out.dtype == dtype
    want, _ = npref.attention(q, k, v, mask="causal_bottom_right", sink=sink)
    tol = {np.float64: 1e-10, np.float32: 2e-5, np.float16: 2e-3}[dtype]
    np.testing.assert_allclose(out.astype(np.float64), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("given", ["float64", "float16", "list", "strided"])
def test_sink_dtypes_are_converted_to_float32(given):
    """Any float dtype (and a plain sequence, and a strided view) is taken: the call computes
    with the float32 value of each sink."""
    rng = np.random.default_rng(8)
    q, k, v = rand(rng, (2, 9, 4, 16)), rand(rng, (2, 9, 2, 16)), rand(rng, (2, 9, 2, 16))
    base = np.array([0.5, -1.25, 2.0, 0.75], np.float32)  # exact in float16 too
    arg = {"float64": base.astype(np.float64), "float16": base.astype(np.float16),
           "list": [float(x) for x in base],
           "strided": np.repeat(base, 2)[::2]}[given]
    assert given != "strided" or not arg.flags.c_contiguous
    out, lse = flashlane.flash_attn_func(q, k, v, return_lse=True, learnable_sink=arg)
    want_o, want_l = flashlane.flash_attn_func(q, k, v, return_lse=True, learnable_sink=base)
    np.testing.assert_array_equal(out, want_o)
    np.testing.assert_array_equal(lse, want_l)


def test_sink_of_the_wrong_shape_is_refused():
    rng = np.random.default_rng(9)
    q, k, v = rand(rng, (1, 5, 4, 16)), rand(rng, (1, 5, 2, 16)), rand(rng, (1, 5, 2, 16))
    with pytest.raises(flashlane.FlashlaneError) as e:
        flashlane.flash_attn_func(q, k, v, learnable_sink=np.zeros(2, np.float32))  # heads_kv
    assert e.value.code == "shape_mismatch" and "learnable_sink" in e.value.message


# ------------------------------------------------------------------------------------------------
# The backward on host arrays (what autograd calls): dq, dk, dv and the sinks' gradient.

@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("softcap", [0.0, 3.0])
def test_backward_matches_numpy(mask, softcap):
    rng = np.random.default_rng(10)
    q, k, v = rand(rng, (2, 19, 4, 32)), rand(rng, (2, 27, 2, 32)), rand(rng, (2, 27, 2, 32))
    dout = rand(rng, (2, 19, 4, 32))
    sink = sinks(rng, 4)
    opts = dict(softmax_scale=0.3, mask=mask, window=(-1, -1), softcap=softcap)
    out, lse = flashlane.attention(q, k, v, mask=mask, softmax_scale=0.3, softcap=softcap,
                                   return_lse=True, learnable_sink=sink)
    dq, dk, dv, dsink = numpy_backward(dout, q, k, v, out, lse, learnable_sink=sink, **opts)
    _, _, rq, rk, rv, rsink = npref.attention(q, k, v, mask=mask, scale=0.3, softcap=softcap,
                                              dout=dout, sink=sink)
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)  # lse is float32
    assert dsink.dtype == np.float32 and dsink.shape == (4,)
    np.testing.assert_allclose(dsink, rsink, rtol=1e-5, atol=1e-6)
    # Independent of the formula: central differences of sum(dout * out) in each sink.
    eps = 1e-4
    for h in range(4):
        up, down = sink.astype(np.float64), sink.astype(np.float64)
        up[h] += eps
        down[h] -= eps
        f_up = (dout * npref.attention(q, k, v, mask=mask, scale=0.3, softcap=softcap, sink=up)[0]).sum()
        f_dn = (dout * npref.attention(q, k, v, mask=mask, scale=0.3, softcap=softcap, sink=down)[0]).sum()
        np.testing.assert_allclose(dsink[h], (f_up - f_dn) / (2 * eps), rtol=1e-5, atol=1e-6)
    assert flashlane.last_receipt()["runtime_mode"] == "sinks_bwd"


def test_backward_varlen_and_the_gradient_dtype():
    rng = np.random.default_rng(11)
    q, k, v, cu_q, cu_k, mq, mk = varlen_case(rng)
    dout = rand(rng, q.shape)
    sink = sinks(rng, 4).astype(np.float64)  # float32 values held in float64
    out, lse = flashlane.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, causal=True,
                                                return_lse=True, learnable_sink=sink)
    dq, dk, dv, dsink = numpy_backward(dout, q, k, v, out, lse, cu_seqlens_q=cu_q,
                                       cu_seqlens_k=cu_k, max_seqlen_q=mq, max_seqlen_k=mk,
                                       softmax_scale=0.25, mask="causal_bottom_right",
                                       window=(-1, -1), softcap=0.0, learnable_sink=sink)
    _, _, rq, rk, rv, rsink = npref.attention_varlen(q, k, v, cu_q, cu_k, scale=0.25,
                                                     mask="causal_bottom_right", dout=dout,
                                                     sink=sink)
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)
    assert dsink.dtype == np.float64  # the sinks' own dtype
    np.testing.assert_allclose(dsink, rsink, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The FlashAttention 2 / 3 signatures.

def fronts():
    from flashlane import interface, kvcache

    mods = [interface, fa2, fa3, kvcache]
    return [getattr(m, n) for m in mods for n in m.__all__]


@pytest.mark.parametrize("fn", fronts(), ids=lambda f: f"{f.__module__}.{f.__name__}")
def test_every_front_takes_learnable_sink_keyword_only_and_documents_it(fn):
    p = inspect.signature(fn).parameters["learnable_sink"]
    assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None
    doc = fn.__doc__
    for words in ("learnable_sink", "[heads_q]", "gpt-oss", "FlashAttention 4", "float32",
                  "neither scaled nor capped", "lse = sink_h"):
        assert words in doc, (fn.__name__, words)


def test_fa2_positional_call_keeps_dropout_scale_causal():
    """flash_attn.flash_attn_func(q, k, v, 0.0, scale, True): dropout 0, that scale, causal."""
    rng = np.random.default_rng(12)
    q, k, v = rand(rng, (2, 23, 4, 16)), rand(rng, (2, 31, 2, 16)), rand(rng, (2, 31, 2, 16))
    sink = sinks(rng, 4)
    out = fa2.flash_attn_func(q, k, v, 0.0, 0.37, True, learnable_sink=sink)
    close(out, npref.attention(q, k, v, mask="causal_bottom_right", scale=0.37, sink=sink)[0])
    out = fa2.flash_attn_func(q, k, v, 0.0, 0.37, True, (4, 0), 0.0, None, False, False,
                              learnable_sink=sink)
    close(out, npref.attention(q, k, v, mask="causal_bottom_right", scale=0.37, window=(4, 0),
                               sink=sink)[0])
    with pytest.raises(flashlane.FlashlaneError) as e:  # the 4th positional is still dropout_p
        fa2.flash_attn_func(q, k, v, 0.1, learnable_sink=sink)
    assert e.value.code == "dropout_unsupported"


def test_fa2_packed_and_varlen_calls():
    rng = np.random.default_rng(13)
    sink = sinks(rng, 4)
    qkv = rand(rng, (2, 17, 3, 4, 16))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    want = npref.attention(q, k, v, mask="causal_bottom_right", sink=sink)[0]
    close(fa2.flash_attn_qkvpacked_func(qkv, causal=True, learnable_sink=sink), want)
    kv = np.stack([k, v], axis=2)
    close(fa2.flash_attn_kvpacked_func(q, kv, 0.0, None, True, learnable_sink=sink), want)

    q, k, v, cu_q, cu_k, mq, mk = varlen_case(rng)
    want = npref.attention_varlen(q, k, v, cu_q, cu_k, mask="causal_bottom_right", sink=sink)[0]
    close(fa2.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, 0.0, None, True,
                                     learnable_sink=sink), want)
    kv = np.stack([k, v], axis=1)
    close(fa2.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, mq, mk, causal=True,
                                              learnable_sink=sink), want)
    lens = (6, 11, 3)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    qkv = rand(rng, (cu[-1], 3, 4, 16))
    want = npref.attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, sink=sink)[0]
    close(fa2.flash_attn_varlen_qkvpacked_func(qkv, cu, max(lens), learnable_sink=sink), want)


def test_fa3_calls_positional_and_packed():
    rng = np.random.default_rng(14)
    q, k, v = rand(rng, (2, 23, 4, 16)), rand(rng, (2, 31, 2, 16)), rand(rng, (2, 31, 2, 16))
    sink = sinks(rng, 4)
    # 4th positional: softmax_scale, then causal; return_attn_probs gives the LSE.
    out, lse = fa3.flash_attn_func(q, k, v, 0.37, True, return_attn_probs=True,
                                   learnable_sink=sink)
    want_o, want_l = npref.attention(q, k, v, mask="causal_bottom_right", scale=0.37, sink=sink)
    close(out, want_o)
    close_lse(lse, want_l)

    qv, kv_, vv, cu_q, cu_k, mq, mk = varlen_case(rng)
    used = np.array([9, 4, 5], np.int32)
    out, lse = fa3.flash_attn_varlen_func(qv, kv_, vv, cu_q, cu_k, mq, mk, None, used,
                                          return_attn_probs=True, learnable_sink=sink)
    want_o, want_l = npref.attention_varlen(qv, kv_, vv, cu_q, cu_k, seqused_k=used, sink=sink)
    close(out, want_o)
    close_lse(lse, want_l)

    qkv = rand(rng, (2, 15, 3, 4, 16))
    want = npref.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], sink=sink)[0]
    close(fa3.flash_attn_qkvpacked_func(qkv, learnable_sink=sink), want)
    gqa = rand(rng, (2, 15, 4 + 2 * 2, 16))  # heads: 4 q, 2 k, 2 v
    want = npref.attention(gqa[:, :, :4], gqa[:, :, 4:6], gqa[:, :, 6:], mask="causal_bottom_right",
                           sink=sink)[0]
    close(fa3.flash_attn_qkvpacked_func(gqa, causal=True, num_heads_q=4, learnable_sink=sink),
          want)


# ------------------------------------------------------------------------------------------------
# flash_attn_with_kvcache.

def _kv_expected(q, kc, vc, seqlens, sink, causal=False, window=(-1, -1), softcap=0.0,
                 k_new=None, v_new=None):
    outs, lses = [], []
    for i in range(q.shape[0]):
        n = int(seqlens[i])
        kk, vv = kc[i, :n], vc[i, :n]
        if k_new is not None:
            kk = np.concatenate([kk, k_new[i]])
            vv = np.concatenate([vv, v_new[i]])
        o, l = npref.attention(q[i:i + 1], kk[None], vv[None],
                               mask="causal_bottom_right" if causal else "no_mask",
                               window=window, softcap=softcap, sink=sink)
        outs.append(o[0])
        lses.append(l[0])
    return np.stack(outs), np.stack(lses)


@pytest.mark.parametrize("sq", [1, 3])
@pytest.mark.parametrize("causal,window,softcap", [(False, (-1, -1), 0.0), (True, (-1, -1), 0.0),
                                                   (True, (4, 0), 0.0), (True, (-1, -1), 3.0)])
def test_kvcache_dense_ragged_gqa(sq, causal, window, softcap):
    rng = np.random.default_rng(15 + sq)
    q = rng.standard_normal((3, sq, 4, 32)).astype(np.float32)
    kc = rng.standard_normal((3, 20, 2, 32)).astype(np.float32)
    vc = rng.standard_normal((3, 20, 2, 32)).astype(np.float32)
    seqlens = np.array([0, 7, 20], np.int32)  # empty, ragged, full
    kc[0] = np.nan  # never read
    kc[1, 7:] = np.nan
    sink = sinks(rng, 4)
    out, lse = flashlane.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, causal=causal,
                                                 window_size=window, softcap=softcap,
                                                 return_softmax_lse=True, learnable_sink=sink)
    want_o, want_l = _kv_expected(q, kc, vc, seqlens, sink, causal, window, softcap)
    np.testing.assert_allclose(out, want_o, atol=2e-6)
    close_lse(lse, want_l)
    # The empty cache: no key, so O = 0 and LSE = the sink.
    assert np.all(out[0] == 0)
    np.testing.assert_array_equal(lse[0], np.broadcast_to(sink[:, None], (4, sq)))
    assert flashlane.last_receipt()["runtime_mode"] == "decode"


def test_kvcache_paged_append_and_fa_wrappers():
    rng = np.random.default_rng(17)
    b, cap, page = 2, 16, 4
    q = rng.standard_normal((b, 2, 4, 16)).astype(np.float32)
    kc = rng.standard_normal((b, cap, 2, 16)).astype(np.float32)
    vc = rng.standard_normal((b, cap, 2, 16)).astype(np.float32)
    k_new = rng.standard_normal((b, 2, 2, 16)).astype(np.float32)
    v_new = rng.standard_normal((b, 2, 2, 16)).astype(np.float32)
    seqlens = np.array([5, 11], np.int32)
    sink = sinks(rng, 4)
    want_o, want_l = _kv_expected(q, kc, vc, seqlens, sink, causal=True, k_new=k_new,
                                  v_new=v_new)
    # Paged: the logical caches scattered into shuffled pages.
    pages = cap // page
    table = rng.permutation(b * pages).reshape(b, pages).astype(np.int32)
    kp = np.zeros((b * pages, page, 2, 16), np.float32)
    vp = np.zeros_like(kp)
    for i in range(b):
        for t in range(cap):
            kp[table[i, t // page], t % page] = kc[i, t]
            vp[table[i, t // page], t % page] = vc[i, t]
    for call in (
        lambda kc_, vc_, pt: flashlane.flash_attn_with_kvcache(
            q, kc_, vc_, k_new, v_new, cache_seqlens=seqlens, page_table=pt, causal=True,
            return_softmax_lse=True, learnable_sink=sink),
        lambda kc_, vc_, pt: fa2.flash_attn_with_kvcache(
            q, kc_, vc_, k_new, v_new, cache_seqlens=seqlens, block_table=pt, causal=True,
            return_softmax_lse=True, learnable_sink=sink),
        lambda kc_, vc_, pt: fa3.flash_attn_with_kvcache(
            q, kc_, vc_, k_new, v_new, cache_seqlens=seqlens, page_table=pt, causal=True,
            return_softmax_lse=True, learnable_sink=sink),
    ):
        for paged in (False, True):
            kc_, vc_ = (kp.copy(), vp.copy()) if paged else (kc.copy(), vc.copy())
            out, lse = call(kc_, vc_, table if paged else None)
            np.testing.assert_allclose(out, want_o, atol=2e-6)
            close_lse(lse, want_l)
