"""flash_attn_with_kvcache on NumPy arrays (reference_cpu) against an independent NumPy
implementation: dense and paged caches, ragged cache_seqlens (0 and full), cache_batch_idx,
seqlen_q 1/2/4, GQA, rotary (both modes, rotary_dim < head_dim), append across a page boundary,
causal / window / softcap, the error codes and tags, and ServingPlan."""

import numpy as np
import pytest

import flashlane
from flashlane import FlashlaneError
import flashlane.flash_attn as fa2
import flashlane.flash_attn_interface as fa3

from npref import attention as np_attention


def rope(x, cos, sin, pos, interleaved):
    """x [..., d] rotated at integer positions pos (broadcast over x's leading dims)."""
    rd = cos.shape[1] * 2
    c, s = cos[pos].astype(np.float64), sin[pos].astype(np.float64)
    y = x.astype(np.float64).copy()
    if interleaved:
        x1, x2 = x[..., 0:rd:2], x[..., 1:rd:2]
        y[..., 0:rd:2] = x1 * c - x2 * s
        y[..., 1:rd:2] = x1 * s + x2 * c
    else:
        h = rd // 2
        x1, x2 = x[..., :h], x[..., h:rd]
        y[..., :h] = x1 * c - x2 * s
        y[..., h:rd] = x1 * s + x2 * c
    return y


def expected(q, k_logical, v_logical, seqlens, k_new, v_new, cos, sin, interleaved, causal,
             window, softcap):
    """Out / lse per sequence from logical caches k_logical [b, cap, hk, d] (before the append)."""
    b = q.shape[0]
    outs, lses, ks = [], [], []
    local = causal or window != (-1, -1)
    for i in range(b):
        n = int(seqlens[i])
        kk, vv = k_logical[i, :n].astype(np.float64), v_logical[i, :n].astype(np.float64)
        qq = q[i].astype(np.float64)
        if k_new is not None:
            kn = k_new[i].astype(np.float64)
            if cos is not None:
                kn = rope(kn, cos, sin, (n + np.arange(kn.shape[0]))[:, None], interleaved)
            kk = np.concatenate([kk, kn.astype(k_new.dtype).astype(np.float64)])
            vv = np.concatenate([vv, v_new[i].astype(np.float64)])
            ks.append(kn)
        if cos is not None:
            pos = n + (np.arange(qq.shape[0]) if local else np.zeros(qq.shape[0], int))
            qq = rope(qq, cos, sin, pos[:, None], interleaved)
        o, l = np_attention(qq[None], kk[None], vv[None], mask="causal_bottom_right" if causal else "no_mask",
                            window=window, softcap=softcap)[:2]
        outs.append(o[0])
        lses.append(l[0])
    return np.stack(outs), np.stack(lses), ks


def make(rng, b=3, sq=1, hq=4, hk=2, d=32, cap=24, dtype=np.float32, nan_fill=True):
    q = rng.standard_normal((b, sq, hq, d)).astype(dtype)
    kc = rng.standard_normal((b, cap, hk, d)).astype(dtype)
    vc = rng.standard_normal((b, cap, hk, d)).astype(dtype)
    return q, kc, vc


def to_paged(kc, vc, seqlens, page_size, rng, extra_pages=2):
    """Scatter logical caches into shuffled pages; NaN in every slot past seqlens and in unused pages."""
    b, cap, hk, d = kc.shape
    max_pages = -(-cap // page_size)
    num_pages = b * max_pages + extra_pages
    perm = rng.permutation(num_pages)[: b * max_pages].reshape(b, max_pages).astype(np.int32)
    kp = np.full((num_pages, page_size, hk, d), np.nan, kc.dtype)
    vp = np.full((num_pages, page_size, hk, d), np.nan, vc.dtype)
    for i in range(b):
        for t in range(int(seqlens[i])):
            kp[perm[i, t // page_size], t % page_size] = kc[i, t]
            vp[perm[i, t // page_size], t % page_size] = vc[i, t]
    return kp, vp, perm


def gather(cache, table, page_size, b, cap):
    out = np.empty((b, cap) + cache.shape[2:], cache.dtype)
    for i in range(b):
        for t in range(cap):
            out[i, t] = cache[table[i, t // page_size], t % page_size]
    return out


@pytest.mark.parametrize("sq", [1, 2, 4])
@pytest.mark.parametrize("causal,window,softcap", [(False, (-1, -1), 0.0), (True, (-1, -1), 0.0),
                                                   (True, (5, 0), 0.0), (False, (3, 2), 0.0),
                                                   (True, (-1, -1), 4.0)])
def test_dense_ragged_gqa_against_numpy(sq, causal, window, softcap):
    rng = np.random.default_rng(sq)
    q, kc, vc = make(rng, sq=sq)
    seqlens = np.array([0, 7, 24], np.int32)  # empty, ragged, full
    kc[0] = np.nan
    kc[1, 7:] = np.nan
    vc[1, 7:] = np.nan
    out, lse = flashlane.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens, causal=causal,
                                                 window_size=window, softcap=softcap,
                                                 return_softmax_lse=True)
    want_o, want_l, _ = expected(q, kc, vc, seqlens, None, None, None, None, True, causal,
                                 window, softcap)
    np.testing.assert_allclose(out, want_o, atol=2e-6)
    np.testing.assert_allclose(lse, want_l, atol=2e-6)
    assert np.all(out[0] == 0) and np.all(np.isneginf(lse[0]))
    r = flashlane.last_receipt()
    assert r["runtime_mode"] == "decode" and r["actual_backend"] == "reference_cpu"


@pytest.mark.parametrize("page_size", [1, 4, 16, 24])
def test_paged_equals_dense(page_size):
    rng = np.random.default_rng(page_size)
    q, kc, vc = make(rng, sq=2, cap=48)
    seqlens = np.array([5, 0, 48], np.int32)
    kp, vp, table = to_paged(kc, vc, seqlens, page_size, rng)
    out = flashlane.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, page_table=table,
                                            causal=True)
    assert flashlane.last_receipt()["runtime_mode"] == "paged_decode"
    want, _, _ = expected(q, kc, vc, seqlens, None, None, None, None, True, True, (-1, -1), 0.0)
    np.testing.assert_allclose(out, want, atol=2e-6)
    # FlashAttention 2's spelling (block_table) gives the same.
    out2 = fa2.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=table,
                                       causal=True)
    np.testing.assert_array_equal(out, out2)


def test_cache_batch_idx_and_int_cache_seqlens():
    rng = np.random.default_rng(3)
    q, kc, vc = make(rng, b=2)
    big_k = np.full((4,) + kc.shape[1:], np.nan, kc.dtype)
    big_v = np.full((4,) + vc.shape[1:], np.nan, vc.dtype)
    big_k[3], big_v[3] = kc[0], vc[0]
    big_k[1], big_v[1] = kc[1], vc[1]
    out = flashlane.flash_attn_with_kvcache(q, big_k, big_v, cache_seqlens=10,
                                            cache_batch_idx=np.array([3, 1], np.int32))
    want, _, _ = expected(q, kc, vc, [10, 10], None, None, None, None, True, False, (-1, -1), 0.0)
    np.testing.assert_allclose(out, want, atol=2e-6)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("page_size", [0, 4])
def test_append_with_rotary(interleaved, causal, page_size):
    rng = np.random.default_rng(7)
    b, sq, hk, d, cap, new, rd = 2, 2, 2, 32, 16, 3, 16  # rotary_dim < head_dim
    q, kc, vc = make(rng, b=b, sq=sq, hk=hk, d=d, cap=cap)
    seqlens = np.array([3, 10], np.int32)  # 3 + 3 and 10 + 3 cross page boundaries (page 4)
    k_new = rng.standard_normal((b, new, hk, d)).astype(np.float32)
    v_new = rng.standard_normal((b, new, hk, d)).astype(np.float32)
    ang = np.arange(cap + sq)[:, None] * (10000.0 ** (-np.arange(rd // 2) * 2.0 / rd))[None]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    logical_k, logical_v = kc.copy(), vc.copy()
    if page_size:
        kcache, vcache, table = to_paged(kc, vc, seqlens, page_size, rng)
    else:
        kcache, vcache, table = kc, vc, None
    out, lse = flashlane.flash_attn_with_kvcache(
        q, kcache, vcache, k=k_new, v=v_new, rotary_cos=cos, rotary_sin=sin,
        cache_seqlens=seqlens, page_table=table, causal=causal,
        rotary_interleaved=interleaved, return_softmax_lse=True)
    assert flashlane.last_receipt()["runtime_mode"] == "append_decode"
    want_o, want_l, rotated = expected(q, logical_k, logical_v, seqlens, k_new, v_new, cos, sin,
                                       interleaved, causal, (-1, -1), 0.0)
    np.testing.assert_allclose(out, want_o, atol=5e-6)
    np.testing.assert_allclose(lse, want_l, atol=5e-6)
    after = gather(kcache, table, page_size, b, cap) if page_size else kcache
    after_v = gather(vcache, table, page_size, b, cap) if page_size else vcache
    for i in range(b):
        n = seqlens[i]
        np.testing.assert_allclose(after[i, n:n + new], rotated[i], atol=1e-6)
        np.testing.assert_array_equal(after_v[i, n:n + new], v_new[i])
        np.testing.assert_array_equal(after[i, :n], logical_k[i, :n])
        # Features past rotary_dim are not rotated.
        np.testing.assert_array_equal(after[i, n:n + new, :, rd:], k_new[i, :, :, rd:])


def _base(rng, page_size=4):
    q, kc, vc = make(rng, b=2, cap=16)
    seqlens = np.array([3, 6], np.int32)
    kp, vp, table = to_paged(kc, vc, seqlens, page_size, rng)
    k_new = rng.standard_normal((2, 2, 2, 32)).astype(np.float32)
    return dict(q=q, k_cache=kp, v_cache=vp, k=k_new, v=k_new.copy(), cache_seqlens=seqlens,
                page_table=table)


@pytest.mark.parametrize("mutate,code", [
    (lambda a: a["page_table"].__setitem__((0, 0), 99), "page_table_invalid"),
    (lambda a: a["page_table"].__setitem__((1, 0), -1), "page_table_invalid"),
    (lambda a: a.__setitem__("cache_seqlens", np.array([-1, 3], np.int32)), "cache_seqlens_invalid"),
    (lambda a: a.__setitem__("cache_seqlens", np.array([17, 3], np.int32)), "cache_seqlens_invalid"),
    (lambda a: a.__setitem__("cache_seqlens", np.array([15, 3], np.int32)), "cache_overflow"),
    (lambda a: a.update(rotary_cos=np.ones((20, 4), np.float32), rotary_sin=np.ones((20, 5), np.float32)),
     "rotary_invalid"),
    (lambda a: a.update(rotary_cos=np.ones((20, 20), np.float32), rotary_sin=np.ones((20, 20), np.float32)),
     "rotary_invalid"),  # rotary_dim 40 > head_dim 32
    (lambda a: a.update(rotary_cos=np.ones((4, 8), np.float32), rotary_sin=np.ones((4, 8), np.float32)),
     "rotary_invalid"),  # seqlen_ro does not cover the rotated positions
    (lambda a: a.update(k=None, v=None, rotary_cos=np.ones((20, 8), np.float32),
                        rotary_sin=np.ones((20, 8), np.float32)), "invalid_argument"),
    (lambda a: a.update(cache_batch_idx=np.array([0, 1], np.int32)), "invalid_argument"),
    (lambda a: a.__setitem__("v", None), "invalid_argument"),
])
def test_bad_inputs_raise_and_write_nothing(mutate, code):
    args = _base(np.random.default_rng(11))
    mutate(args)
    k0, v0 = args["k_cache"].copy(), args["v_cache"].copy()
    with pytest.raises(FlashlaneError) as e:
        flashlane.flash_attn_with_kvcache(**args)
    assert e.value.code == code, str(e.value)
    np.testing.assert_array_equal(args["k_cache"], k0)
    np.testing.assert_array_equal(args["v_cache"], v0)
    assert flashlane.last_receipt()["status"] == code


def test_strict_backends_fail_closed_with_tags():
    args = _base(np.random.default_rng(5))
    with pytest.raises(FlashlaneError) as e:
        flashlane.flash_attn_with_kvcache(**args, backend="sm90", strict=True)
    assert e.value.code == "backend_inapplicable"
    assert e.value.reason_tag.startswith("sm90.")
    with pytest.raises(FlashlaneError) as e:
        flashlane.flash_attn_with_kvcache(**args, backend="sm100", strict=True)
    assert e.value.reason_tag == "sm100.not_implemented"
    # Auto falls back to reference_cpu and says why the others stepped aside.
    flashlane.flash_attn_with_kvcache(**_base(np.random.default_rng(5)))
    r = flashlane.last_receipt()
    assert r["actual_backend"] == "reference_cpu"
    assert [s["backend"] for s in r["skipped"]] == ["sm90", "reference_cuda"]


def test_fa3_signature_and_refusals():
    rng = np.random.default_rng(2)
    q, kc, vc = make(rng, b=1)
    out = fa3.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=5, causal=True)
    want, _, _ = expected(q, kc, vc, [5], None, None, None, None, True, True, (-1, -1), 0.0)
    np.testing.assert_allclose(out, want, atol=2e-6)
    with pytest.raises(FlashlaneError) as e:
        fa3.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=5, qv=q)
    assert e.value.reason_tag == "flash_attn_interface.qv_unsupported"
    with pytest.raises(FlashlaneError) as e:
        fa2.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=5, cache_leftpad=np.zeros(1, np.int32))
    assert e.value.reason_tag == "flash_attn.cache_leftpad_unsupported"


def test_serving_plan():
    # head_dim 96 has forward kernels but no decode kernel.
    with pytest.raises(FlashlaneError) as e:
        flashlane.ServingPlan("sm90", "sm90", kv_layout="paged", page_size=8, head_dim=96)
    assert e.value.code == "backend_inapplicable"
    archs = flashlane.compiled_architectures()  # "sm_80,sm_90a(reference only)" without sm90
    compiled = "sm_90a" in archs and "reference only" not in archs
    if compiled:
        # A package built with a subset of head dims (FLASHLANE_SM90_HEAD_DIMS) may lack the
        # forward at 96 too: then the prefill is refused first.
        try:
            flashlane.ServingPlan("sm90", "reference_cpu", head_dim=96)
            forward_96 = True
        except FlashlaneError as prefill:
            assert prefill.reason_tag == "sm90.head_dim_unsupported"
            forward_96 = False
        assert e.value.reason_tag == ("sm90.decode_head_dim_unsupported" if forward_96
                                      else "sm90.head_dim_unsupported")
        # Any page size: the sm90 paged gather moves single key rows (the package builds every
        # head dim of the kernel table, 128 among them).
        plan = flashlane.ServingPlan("sm90", "sm90", kv_layout="paged", page_size=8)
        assert plan.decode_mode == "append_decode" and plan.page_size == 8  # append=True default
        plan = flashlane.ServingPlan("sm90", "sm90", kv_layout="paged", page_size=8, append=False)
        assert plan.decode_mode == "paged_decode"
    plan = flashlane.ServingPlan("reference_cpu", "reference_cpu", kv_layout="paged",
                                 page_size=8, heads_q=8, heads_kv=2, window_size=(64, 0),
                                 softcap=30.0, rotary_dim=32)
    assert plan.decode_mode == "append_decode" and plan.page_size == 8
    with pytest.raises(FlashlaneError) as e:
        flashlane.ServingPlan("reference_cpu", "reference_cpu", heads_q=6, heads_kv=4)
    assert e.value.code == "heads_not_divisible"


def test_serving_plan_with_sinks():
    """learnable_sink: the plan asks the table about calls with sinks and names the modes their
    receipts say (checked against a real call of each kind on reference_cpu)."""
    plan = flashlane.ServingPlan("reference_cpu", "reference_cpu", kv_layout="paged",
                                 page_size=4, heads_q=4, heads_kv=2, head_dim=16, dtype="fp32",
                                 learnable_sink=True)
    assert plan.learnable_sink is True and plan.as_dict()["learnable_sink"] is True
    assert (plan.prefill_mode, plan.decode_mode) == ("sinks_varlen_fwd", "append_decode")
    assert flashlane.ServingPlan("reference_cpu", "reference_cpu").learnable_sink is False
    dense = flashlane.ServingPlan("reference_cpu", "reference_cpu", kv_layout="dense",
                                  append=False, prefill_varlen=False, learnable_sink=True)
    assert (dense.prefill_mode, dense.decode_mode) == ("sinks_fwd", "decode")

    rng = np.random.default_rng(3)
    sinks = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    q = rng.standard_normal((6, 4, 16)).astype(np.float32)
    k = rng.standard_normal((6, 2, 16)).astype(np.float32)
    cu = np.array([0, 2, 6], np.int32)
    flashlane.flash_attn_varlen_func(q, k, k, cu, cu, 4, 4, causal=True, backend="reference_cpu",
                                     learnable_sink=sinks)
    assert flashlane.last_receipt()["runtime_mode"] == plan.prefill_mode
    flashlane.flash_attn_func(q[None], k[None], k[None], causal=True, backend="reference_cpu",
                              learnable_sink=sinks)
    assert flashlane.last_receipt()["runtime_mode"] == dense.prefill_mode
    kc = np.zeros((3, 4, 2, 16), np.float32)  # 3 pages of 4
    table = np.array([[2, 0]], np.int32)
    flashlane.flash_attn_with_kvcache(q[None, :1], kc, kc, k=k[None, :1], v=k[None, :1],
                                      cache_seqlens=3, page_table=table, causal=True,
                                      backend="reference_cpu", learnable_sink=sinks)
    assert flashlane.last_receipt()["runtime_mode"] == plan.decode_mode
    flashlane.flash_attn_with_kvcache(q[None, :1], kc[:1], kc[:1], cache_seqlens=3, causal=True,
                                      backend="reference_cpu", learnable_sink=sinks)
    assert flashlane.last_receipt()["runtime_mode"] == dense.decode_mode

    # A backend that executes nothing is refused with its own tag, sinks or not.
    with pytest.raises(FlashlaneError) as e:
        flashlane.ServingPlan("cudnn", "reference_cpu", learnable_sink=True)
    assert e.value.code == "backend_inapplicable" and e.value.reason_tag == "cudnn.not_implemented"
