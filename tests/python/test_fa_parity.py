"""FlashAttention API parity: flashlane.flash_attn (FlashAttention 2's signatures) and
flashlane.flash_attn_interface (FlashAttention 3's), each call checked on reference_cpu against
the independent NumPy attention (npref.py) or against the equivalent unpacked call.

The table CASES names the call, the FlashAttention version whose semantics it follows and what
the result must be; pytest ids read "<call> [FA<version>]: <expected result>". NumPy only (no
torch, no GPU); the torch rows at the end (autograd through packed tensors) need torch.
"""

from collections import namedtuple

import numpy as np
import pytest

import flashlane
from flashlane import flash_attn as fa2
from flashlane import flash_attn_interface as fa3

import npref

Case = namedtuple("Case", "call version result check")
CASES = []


def case(call, version, result):
    def register(fn):
        CASES.append(Case(call, version, result, fn))
        return fn
    return register


def rand(seed, *shape):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape)


def qkv(seed, b=2, sq=23, sk=31, hq=4, hk=2, d=16):
    return rand(seed, b, sq, hq, d), rand(seed + 1, b, sk, hk, d), rand(seed + 2, b, sk, hk, d)


def varlen(seed, lens_q=(7, 12, 1), lens_k=(9, 12, 5), hq=4, hk=2, d=16):
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    return (rand(seed, cu_q[-1], hq, d), rand(seed + 1, cu_k[-1], hk, d),
            rand(seed + 2, cu_k[-1], hk, d), cu_q, cu_k, max(lens_q), max(lens_k))


def close(a, b):
    np.testing.assert_allclose(a, b, atol=1e-10, rtol=0)


def close_lse(a, b):  # lse is float32
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-6)


def refused(fn, code, tag):
    with pytest.raises(flashlane.FlashlaneError) as e:
        fn()
    assert e.value.code == code and e.value.reason_tag == tag, (e.value.code, e.value.reason_tag)
    r = flashlane.last_receipt()
    assert r["status"] == code and r["error_reason"] == tag and r["actual_backend"] == ""


# --- FlashAttention 2 (flash_attn 2.x flash_attn_interface.py) ---------------------------------

@case("flash_attn.flash_attn_func(q, k, v, 0.0, scale, True)", 2,
      "positional: dropout 0, that softmax_scale, causal (bottom-right)")
def _():
    q, k, v = qkv(1)
    close(fa2.flash_attn_func(q, k, v, 0.0, 0.37, True),
          npref.attention(q, k, v, mask="causal_bottom_right", scale=0.37)[0])


@case("flash_attn.flash_attn_func(causal=True, window_size=(L, R))", 2,
      "equals window (L, 0): causal sets right = 0")
def _():
    q, k, v = qkv(2)
    out = fa2.flash_attn_func(q, k, v, causal=True, window_size=(5, 3))
    close(out, fa2.flash_attn_func(q, k, v, causal=True, window_size=(5, 0)))
    close(out, npref.attention(q, k, v, mask="causal_bottom_right", window=(5, 0))[0])


@case("flash_attn.flash_attn_func(window_size=(seqlen_k, seqlen_k))", 2,
      "equals no window (sizes >= seqlen_k are unbounded), also when seqlen_q > 2 * seqlen_k")
def _():
    for sq, sk in ((23, 31), (40, 9)):
        q, k, v = qkv(3, sq=sq, sk=sk)
        out = fa2.flash_attn_func(q, k, v, window_size=(sk, sk))
        close(out, npref.attention(q, k, v)[0])
        close(out, fa2.flash_attn_func(q, k, v))
    # The literal window would differ there (the first query rows would lose keys).
    assert not np.allclose(out, npref.attention(q, k, v, window=(9, 9))[0])


@case("flash_attn.flash_attn_func(window_size=(-5, 3))", 2, "a negative side is unbounded")
def _():
    q, k, v = qkv(4)
    close(fa2.flash_attn_func(q, k, v, window_size=(-5, 3)),
          npref.attention(q, k, v, window=(-1, 3))[0])


@case("flash_attn.flash_attn_func(softcap=, deterministic=True)", 2,
      "softcap applied; deterministic accepted (backward option)")
def _():
    q, k, v = qkv(5)
    close(fa2.flash_attn_func(q * 4, k * 4, v, 0.0, None, True, (-1, -1), 3.0, None, True),
          npref.attention(q * 4, k * 4, v, mask="causal_bottom_right", softcap=3.0)[0])


@case("flash_attn.flash_attn_qkvpacked_func(qkv [b, s, 3, h, d])", 2,
      "equals flash_attn_func on the unpacked q, k, v")
def _():
    packed = rand(6, 2, 19, 3, 4, 16)
    q, k, v = packed[:, :, 0], packed[:, :, 1], packed[:, :, 2]
    close(fa2.flash_attn_qkvpacked_func(packed, 0.0, None, True, (4, 0)),
          fa2.flash_attn_func(q, k, v, 0.0, None, True, (4, 0)))


@case("flash_attn.flash_attn_kvpacked_func(q, kv [b, s_k, 2, h_kv, d])", 2,
      "equals flash_attn_func on the unpacked k, v (GQA)")
def _():
    q = rand(7, 2, 13, 6, 16)
    kv = rand(8, 2, 21, 2, 2, 16)
    close(fa2.flash_attn_kvpacked_func(q, kv, 0.0, 0.5, True),
          fa2.flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], 0.0, 0.5, True))


@case("flash_attn.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, None, True, (3, 2))",
      2, "NumPy varlen reference with window (3, 0)")
def _():
    q, k, v, cu_q, cu_k, mq, mk = varlen(9)
    close(fa2.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, 0.0, None, True, (3, 2)),
          npref.attention_varlen(q, k, v, cu_q, cu_k, mask="causal_bottom_right", window=(3, 0))[0])


@case("flash_attn.flash_attn_varlen_qkvpacked_func(qkv [total, 3, h, d], cu, max)", 2,
      "equals flash_attn_varlen_func on the unpacked q, k, v")
def _():
    lens = (5, 11, 8)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    packed = rand(10, cu[-1], 3, 4, 16)
    close(fa2.flash_attn_varlen_qkvpacked_func(packed, cu, max(lens), 0.0, None, True),
          fa2.flash_attn_varlen_func(packed[:, 0], packed[:, 1], packed[:, 2], cu, cu, max(lens),
                                     max(lens), 0.0, None, True))


@case("flash_attn.flash_attn_varlen_kvpacked_func(q, kv [total_k, 2, h_kv, d], ...)", 2,
      "equals flash_attn_varlen_func on the unpacked k, v")
def _():
    q, k, v, cu_q, cu_k, mq, mk = varlen(11)
    kv = np.stack([k, v], axis=1)
    close(fa2.flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, mq, mk, 0.0, None, False, (2, 4)),
          fa2.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, 0.0, None, False, (2, 4)))


@case("flash_attn.flash_attn_func(q, k, v, 0.1)", 2,
      "raises FlashlaneError dropout_unsupported [flash_attn.dropout_unsupported]")
def _():
    q, k, v = qkv(12)
    refused(lambda: fa2.flash_attn_func(q, k, v, 0.1), "dropout_unsupported",
            "flash_attn.dropout_unsupported")
    refused(lambda: fa2.flash_attn_qkvpacked_func(np.stack([q, q, q], 2), 0.1),
            "dropout_unsupported", "flash_attn.dropout_unsupported")


@case("flash_attn.flash_attn_func(alibi_slopes=...)", 2,
      "raises invalid_argument [flash_attn.alibi_unsupported]")
def _():
    q, k, v = qkv(13)
    refused(lambda: fa2.flash_attn_func(q, k, v, alibi_slopes=np.ones(4, np.float32)),
            "invalid_argument", "flash_attn.alibi_unsupported")


@case("flash_attn.flash_attn_func(return_attn_probs=True)", 2,
      "raises invalid_argument [flash_attn.attn_probs_unavailable] (no S_dmask)")
def _():
    q, k, v = qkv(14)
    refused(lambda: fa2.flash_attn_func(q, k, v, return_attn_probs=True), "invalid_argument",
            "flash_attn.attn_probs_unavailable")


# --- FlashAttention 3 (flash-attention hopper/flash_attn_interface.py) -------------------------

@case("flash_attn_interface.flash_attn_func(q, k, v, scale, True)", 3,
      "positional: that softmax_scale, causal (bottom-right)")
def _():
    q, k, v = qkv(20, sq=13, sk=29)
    close(fa3.flash_attn_func(q, k, v, 0.37, True),
          npref.attention(q, k, v, mask="causal_bottom_right", scale=0.37)[0])


@case("flash_attn_interface.flash_attn_func(..., return_attn_probs=True)", 3,
      "returns (out, softmax_lse) with lse [b, h_q, s_q]")
def _():
    q, k, v = qkv(21)
    out, lse = fa3.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    ref_out, ref_lse = npref.attention(q, k, v, mask="causal_bottom_right")
    close(out, ref_out)
    close_lse(lse, ref_lse)
    assert not isinstance(fa3.flash_attn_func(q, k, v), tuple)


@case("flash_attn_interface.flash_attn_func(causal=True, window_size=(L, R))", 3,
      "equals window (L, 0)")
def _():
    q, k, v = qkv(22)
    out = fa3.flash_attn_func(q, k, v, causal=True, window_size=(6, 9))
    close(out, npref.attention(q, k, v, mask="causal_bottom_right", window=(6, 0))[0])


@case("flash_attn_interface.flash_attn_func(window_size=(seqlen_k - 1, seqlen_q - 1))", 3,
      "equals no window")
def _():
    q, k, v = qkv(23, sq=40, sk=9)
    close(fa3.flash_attn_func(q, k, v, window_size=(8, 39)), npref.attention(q, k, v)[0])


@case("flash_attn_interface.flash_attn_qkvpacked_func(qkv [b, s, 3, h, d] | [b, s, h_q + 2 h_k, d])",
      3, "equals flash_attn_func on the unpacked q, k, v (num_heads_q for the 4-d packing)")
def _():
    packed = rand(24, 2, 17, 3, 4, 16)
    close(fa3.flash_attn_qkvpacked_func(packed, None, True),
          fa3.flash_attn_func(packed[:, :, 0], packed[:, :, 1], packed[:, :, 2], None, True))
    heads = rand(25, 2, 17, 6 + 2 * 2, 16)  # h_q 6, h_k 2
    close(fa3.flash_attn_qkvpacked_func(heads, 0.3, True, num_heads_q=6),
          fa3.flash_attn_func(heads[:, :, :6], heads[:, :, 6:8], heads[:, :, 8:], 0.3, True))


@case("flash_attn_interface.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, None, seqused_k, ...)",
      3, "NumPy varlen reference with seqused_k")
def _():
    q, k, v, cu_q, cu_k, mq, mk = varlen(26)
    used = np.array([6, 12, 2], np.int32)
    out, lse = fa3.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, None, used, causal=True,
                                          return_attn_probs=True)
    ref_out, ref_lse = npref.attention_varlen(q, k, v, cu_q, cu_k, mask="causal_bottom_right",
                                              seqused_k=used)
    close(out, ref_out)
    close_lse(lse, ref_lse)


@case("flash_attn_interface.flash_attn_func(qv= | q_descale= | attention_chunk=)", 3,
      "raise invalid_argument [flash_attn_interface.qv_unsupported | descale_unsupported | "
      "attention_chunk_unsupported]")
def _():
    q, k, v = qkv(27)
    refused(lambda: fa3.flash_attn_func(q, k, v, qv=q), "invalid_argument",
            "flash_attn_interface.qv_unsupported")
    refused(lambda: fa3.flash_attn_func(q, k, v, q_descale=np.ones(1)), "invalid_argument",
            "flash_attn_interface.descale_unsupported")
    refused(lambda: fa3.flash_attn_func(q, k, v, attention_chunk=8), "invalid_argument",
            "flash_attn_interface.attention_chunk_unsupported")


@case("flashlane.flash_attn_func(q, k, v, scale, True)", 3,
      "flashlane's own call keeps FlashAttention 3's positional order")
def _():
    q, k, v = qkv(28)
    close(flashlane.flash_attn_func(q, k, v, 0.37, True), fa3.flash_attn_func(q, k, v, 0.37, True))


# --- KV cache (flash_attn_with_kvcache; tests/python/test_kvcache.py covers it in depth) ---------

def _kv_case(seed):
    q = rand(seed, 2, 1, 4, 16)
    kc, vc = rand(seed + 1, 2, 12, 2, 16), rand(seed + 2, 2, 12, 2, 16)
    lens = np.array([5, 12], np.int32)
    want = np.stack([npref.attention(q[b:b + 1], kc[b:b + 1, :lens[b]], vc[b:b + 1, :lens[b]],
                                     mask="causal_bottom_right")[0][0] for b in range(2)])
    return q, kc, vc, lens, want


@case("flash_attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=..., causal=True)", 2,
      "attention over the first cache_seqlens[b] keys, bottom-right causal")
def _():
    q, kc, vc, lens, want = _kv_case(40)
    close(fa2.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True), want)


@case("flash_attn_interface.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=..., causal=True)",
      3, "attention over the first cache_seqlens[b] keys, bottom-right causal")
def _():
    q, kc, vc, lens, want = _kv_case(41)
    close(fa3.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, causal=True), want)


@case("flash_attn_interface.flash_attn_with_kvcache(attention_chunk=8)", 3,
      "raises invalid_argument [flash_attn_interface.attention_chunk_unsupported]")
def _():
    q, kc, vc, lens, _ = _kv_case(42)
    refused(lambda: fa3.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=lens, attention_chunk=8),
            "invalid_argument", "flash_attn_interface.attention_chunk_unsupported")


@pytest.mark.parametrize("row", CASES, ids=[f"{c.call} [FA{c.version}]: {c.result}" for c in CASES])
def test_fa_parity(row):
    row.check()
    if row.version in (2, 3) and "raise" not in row.result:
        r = flashlane.last_receipt()
        assert r["status"] == "ok" and r["actual_backend"] == "reference_cpu"


def test_table_covers_both_versions_and_every_packed_call():
    calls = " ".join(c.call for c in CASES)
    assert {c.version for c in CASES} == {2, 3}
    for name in fa2.__all__:
        assert f"flash_attn.{name}(" in calls, name
    for name in fa3.__all__:
        assert f"flash_attn_interface.{name}(" in calls, name


# --- torch: autograd through packed tensors ----------------------------------------------------

@pytest.mark.torch
def test_packed_gradients_equal_unpacked_gradients():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    packed = torch.randn(2, 15, 3, 4, 16, dtype=torch.float64, generator=g, requires_grad=True)
    dout = torch.randn(2, 15, 4, 16, dtype=torch.float64, generator=g)
    fa2.flash_attn_qkvpacked_func(packed, 0.0, None, True, (3, 1)).backward(dout)
    q, k, v = (packed.detach()[:, :, i].clone().requires_grad_() for i in range(3))
    fa2.flash_attn_func(q, k, v, 0.0, None, True, (3, 0)).backward(dout)
    torch.testing.assert_close(packed.grad, torch.stack([q.grad, k.grad, v.grad], 2))
    heads = torch.randn(2, 15, 8, 16, dtype=torch.float64, generator=g, requires_grad=True)
    out, lse = fa3.flash_attn_qkvpacked_func(heads, None, True, num_heads_q=4,
                                             return_attn_probs=True)
    assert lse.shape == (2, 4, 15) and lse.dtype == torch.float32
    out.backward(dout)
    assert heads.grad.shape == heads.shape and torch.isfinite(heads.grad).all()


@pytest.mark.torch
def test_deterministic_reaches_the_backward_receipt():
    torch = pytest.importorskip("torch")
    q = torch.randn(1, 9, 2, 16, dtype=torch.float64, requires_grad=True)
    with flashlane.receipt_log() as receipts:
        fa2.flash_attn_func(q, q, q, 0.0, None, True, deterministic=True).sum().backward()
    bwd = [r for r in receipts if r["runtime_mode"] == "bwd"]
    assert bwd and all(r["deterministic"] for r in bwd)
