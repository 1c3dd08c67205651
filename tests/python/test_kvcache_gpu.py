"""flash_attn_with_kvcache on CUDA tensors through the sm90 decode kernels (strict), against the
float64 NumPy implementation of test_kvcache.py and reference_cuda on the same inputs: dense and
paged caches (page sizes 16 and 7, shuffled pages, NaN in every slot the call must not read),
GQA 8/2, ragged cache_seqlens with an empty sequence, append with and without rotary, causal
multi-query rows, forced splits, LSE; the appended cache entries, and the receipt."""

import numpy as np
import pytest

import flashlane

from test_kvcache import expected, to_paged

torch = pytest.importorskip("torch")


def _within_rule(ours, peer, ref64, what):
    """FlashAttention's form of the rule, with reference_cuda (fp32 accumulation, the output
    rounded to bf16) in the place of the low-precision reference."""
    ref = torch.as_tensor(ref64, dtype=torch.float64)
    err = (ours.cpu().double() - ref).abs().max().item()
    base = (peer.cpu().double() - ref).abs().max().item()
    slack = 1e-3 * ref.abs().max().item() + 1e-5
    assert err <= 2 * base + slack, f"{what}: sm90 {err:.3e} vs reference_cuda {base:.3e}"


def _bf16_np(x):
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()


@pytest.mark.gpu
@pytest.mark.surface("decode", "paged_decode", "append_decode")
@pytest.mark.parametrize("page_size", [0, 16, 7], ids=["dense", "paged16", "paged7"])
@pytest.mark.parametrize("append", ["none", "plain", "rotary"])
def test_sm90_kvcache_matches_float64(page_size, append):
    rng = np.random.default_rng(page_size * 10 + len(append))
    b, sq, hq, hk, d, cap = 3, 2, 8, 2, 128, 320
    seqlens = np.array([0, 37, 300], np.int32)
    q = _bf16_np(rng.standard_normal((b, sq, hq, d)).astype(np.float32))
    kc = _bf16_np(rng.standard_normal((b, cap, hk, d)).astype(np.float32))
    vc = _bf16_np(rng.standard_normal((b, cap, hk, d)).astype(np.float32))
    for i, n in enumerate(seqlens):
        kc[i, n:] = np.nan
        vc[i, n:] = np.nan
    k_new = v_new = cos = sin = None
    if append != "none":
        k_new = _bf16_np(rng.standard_normal((b, 3, hk, d)).astype(np.float32))
        v_new = _bf16_np(rng.standard_normal((b, 3, hk, d)).astype(np.float32))
    if append == "rotary":
        ang = rng.uniform(0, 2 * np.pi, (cap, 32))
        cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    want_o, want_l, want_k = expected(q, np.nan_to_num(kc), np.nan_to_num(vc), seqlens, k_new,
                                      v_new, cos, sin, True, True, (-1, -1), 0.0)

    def dev(x, dtype=torch.bfloat16):
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x)).to("cuda", dtype)

    outs = {}
    for backend in ("sm90", "reference_cuda"):
        if page_size:
            kp, vp, table = to_paged(kc, vc, seqlens, page_size, np.random.default_rng(1))
            k_cache, v_cache, page_table = dev(kp), dev(vp), dev(table, torch.int32)
        else:
            k_cache, v_cache, page_table = dev(kc), dev(vc), None
        out, lse = flashlane.flash_attn_with_kvcache(
            dev(q), k_cache, v_cache, k=dev(k_new), v=dev(v_new), rotary_cos=dev(cos, torch.float32),
            rotary_sin=dev(sin, torch.float32), cache_seqlens=dev(seqlens, torch.int32),
            page_table=page_table, causal=True, num_splits=3 if backend == "sm90" else 0,
            return_softmax_lse=True, backend=backend, strict=True)
        torch.cuda.synchronize()
        r = flashlane.last_receipt()
        assert r["actual_backend"] == backend and r["status"] == "ok", r
        if backend == "sm90":
            assert "decode" in r["variant"] and "splits3" in r["variant"], r["variant"]
        outs[backend] = (out, lse, k_cache, page_table)

    o, l, k_cache, page_table = outs["sm90"]
    o_ref, l_ref = outs["reference_cuda"][:2]
    assert torch.isfinite(o).all()
    _within_rule(o, o_ref, want_o, "out")
    _within_rule(l[1:], l_ref[1:], want_l[1:], "lse")
    if append == "none":  # sequence 0 holds no key: O = 0, LSE = -inf
        assert torch.all(o[0] == 0)
        assert torch.isneginf(l[0]).all()
    if append != "none":
        # The appended rows as stored (after rotary, rounded to bf16), read back from the cache.
        for i, n in enumerate(seqlens):
            for j in range(3):
                t = int(n) + j
                if page_size:
                    page = int(page_table[i, t // page_size])
                    got = k_cache[page, t % page_size].float().cpu().numpy()
                else:
                    got = k_cache[i, t].float().cpu().numpy()
                np.testing.assert_allclose(got, want_k[i][j], atol=2e-2, rtol=1e-2)
