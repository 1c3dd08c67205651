"""CI tests (no GPU, no torch): the package imports, NumPy arrays run on reference_cpu and match
an independent NumPy attention (npref.py), refusals raise with their codes and tags, receipts
round-trip."""

import json
import os
import pathlib
import re

import numpy as np
import pytest

import flashlane
from flashlane import _C

import npref

ROOT = pathlib.Path(__file__).resolve().parents[2]
MASKS = ["no_mask", "causal", "causal_bottom_right"]


def rand(rng, shape, dtype=np.float64):
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def tol(dtype):
    return {np.float64: 1e-10, np.float32: 2e-5, np.float16: 2e-3}[dtype]


def test_imports_and_build_facts():
    assert flashlane.version() == "0.1.0" == flashlane.__version__
    assert isinstance(flashlane.git_commit(), str)
    assert "sm_80" in flashlane.compiled_architectures()
    assert flashlane.backend_priority() == ["sm90", "reference_cuda", "reference_cpu"]
    assert flashlane.ERROR_CODES["head_dim_invalid"] == 106
    assert issubclass(flashlane.FlashlaneError, RuntimeError)
    info = flashlane.device_info()
    assert set(info) >= {"cuda_available", "sm", "name"}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("sq,sk", [(37, 37), (19, 45), (45, 19)])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.surface("dense_fwd")
def test_forward_masks_gqa(mask, sq, sk, heads):
    rng = np.random.default_rng(sq * 100 + sk)
    hq, hk = heads
    q, k, v = rand(rng, (2, sq, hq, 32)), rand(rng, (2, sk, hk, 32)), rand(rng, (2, sk, hk, 32))
    out, lse = flashlane.attention(q, k, v, mask=mask, return_lse=True)
    ref_out, ref_lse = npref.attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out, ref_out, atol=1e-10)
    np.testing.assert_allclose(lse, ref_lse, atol=1e-10)  # -inf rows compare equal
    r = flashlane.last_receipt()
    assert r["actual_backend"] == "reference_cpu" and r["status"] == "ok"
    assert r["runtime_mode"] == "fwd"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_forward_dtypes_flash_attn_causal_is_bottom_right(dtype):
    rng = np.random.default_rng(1)
    q, k, v = rand(rng, (1, 13, 2, 64), dtype), rand(rng, (1, 29, 2, 64), dtype), rand(rng, (1, 29, 2, 64), dtype)
    out = flashlane.flash_attn_func(q, k, v, causal=True)
    assert out.dtype == dtype and out.shape == (1, 13, 2, 64)
    ref, _ = npref.attention(q, k, v, mask="causal_bottom_right")
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=tol(dtype), rtol=tol(dtype))
    # mask="causal" is SDPA's top-left: a different answer when seqlen_q != seqlen_k.
    top_left = flashlane.flash_attn_func(q, k, v, mask="causal")
    ref_tl, _ = npref.attention(q, k, v, mask="causal")
    np.testing.assert_allclose(top_left.astype(np.float64), ref_tl, atol=tol(dtype), rtol=tol(dtype))
    assert not np.allclose(ref, ref_tl)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("window", [(5, 0), (3, 7), (0, 0), (-1, 4), (6, -1)])
def test_forward_window(mask, window):
    if mask != "no_mask" and window[1] > 0:
        window = (window[0], 0)
    rng = np.random.default_rng(2)
    q, k, v = rand(rng, (2, 23, 4, 16)), rand(rng, (2, 31, 2, 16)), rand(rng, (2, 31, 2, 16))
    out, lse = flashlane.attention(q, k, v, mask=mask, window_size=window, return_lse=True)
    ref_out, ref_lse = npref.attention(q, k, v, mask=mask, window=window)
    np.testing.assert_allclose(out, ref_out, atol=1e-10)
    np.testing.assert_allclose(lse, ref_lse, atol=1e-10)


def test_fully_masked_rows_are_zero_with_minus_inf_lse():
    rng = np.random.default_rng(3)
    q, k, v = rand(rng, (1, 20, 2, 16)), rand(rng, (1, 8, 2, 16)), rand(rng, (1, 8, 2, 16))
    out, lse = flashlane.flash_attn_func(q, k, v, causal=True, return_lse=True)
    # bottom-right with sq > sk: the first 12 query rows see no key.
    assert np.all(out[0, :12] == 0.0) and np.all(np.isneginf(lse[0, :, :12]))
    assert not np.isnan(out).any()


@pytest.mark.parametrize("softcap", [0.0, 2.5, 30.0])
def test_forward_softcap_scale(softcap):
    rng = np.random.default_rng(4)
    q, k, v = rand(rng, (2, 17, 4, 32)) * 3, rand(rng, (2, 17, 4, 32)) * 3, rand(rng, (2, 17, 4, 32))
    out = flashlane.flash_attn_func(q, k, v, softmax_scale=0.7, causal=True, softcap=softcap)
    ref, _ = npref.attention(q, k, v, mask="causal_bottom_right", softcap=softcap, scale=0.7)
    np.testing.assert_allclose(out, ref, atol=1e-10)


def test_head_dim_v_differs():
    rng = np.random.default_rng(5)
    q, k, v = rand(rng, (1, 9, 2, 48)), rand(rng, (1, 11, 2, 48)), rand(rng, (1, 11, 2, 24))
    out = flashlane.flash_attn_func(q, k, v)
    assert out.shape == (1, 9, 2, 24)
    np.testing.assert_allclose(out, npref.attention(q, k, v)[0], atol=1e-10)


def test_strided_views_without_copies():
    # q as a [b, h, s, d] buffer transposed to [b, s, h, d] (what torch's transpose gives).
    rng = np.random.default_rng(6)
    qb, kb, vb = rand(rng, (2, 4, 15, 32)), rand(rng, (2, 2, 21, 32)), rand(rng, (2, 2, 21, 32))
    q, k, v = qb.transpose(0, 2, 1, 3), kb.transpose(0, 2, 1, 3), vb.transpose(0, 2, 1, 3)
    assert not q.flags.c_contiguous
    out = flashlane.attention(q, k, v, mask="causal")
    np.testing.assert_allclose(out, npref.attention(q, k, v, mask="causal")[0], atol=1e-10)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("seqused", [False, True])
@pytest.mark.surface("varlen_fwd")
def test_varlen(mask, seqused):
    rng = np.random.default_rng(7)
    lq, lk = [5, 0, 17, 1, 9], [7, 3, 12, 30, 9]
    cu_q = np.concatenate([[0], np.cumsum(lq)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lk)]).astype(np.int32)
    q, k, v = rand(rng, (cu_q[-1], 6, 16)), rand(rng, (cu_k[-1], 3, 16)), rand(rng, (cu_k[-1], 3, 16))
    used = np.array([4, 3, 12, 11, 0], dtype=np.int32) if seqused else None
    out, lse = flashlane.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk), mask=mask,
                                                seqused_k=used, window_size=(6, -1),
                                                return_lse=True)
    ref_out, ref_lse = npref.attention_varlen(q, k, v, cu_q, cu_k, mask=mask, window=(6, -1),
                                              seqused_k=used)
    np.testing.assert_allclose(out, ref_out, atol=1e-10)
    np.testing.assert_allclose(lse, ref_lse, atol=1e-10)
    assert flashlane.last_receipt()["runtime_mode"] == "varlen_fwd"
    # max_seqlen computed from cu_seqlens when not given; int64 metadata is accepted.
    out2 = flashlane.flash_attn_varlen_func(q, k, v, cu_q.astype(np.int64), cu_k, mask=mask,
                                            seqused_k=used, window_size=(6, -1))
    np.testing.assert_array_equal(out, out2)


def test_seqused_k_bshd():
    rng = np.random.default_rng(8)
    q, k, v = rand(rng, (3, 6, 2, 16)), rand(rng, (3, 20, 2, 16)), rand(rng, (3, 20, 2, 16))
    used = np.array([20, 7, 1], dtype=np.int32)
    out = flashlane.flash_attn_func(q, k, v, causal=True, seqused_k=used)
    ref, _ = npref.attention(q, k, v, mask="causal_bottom_right", seqused_k=used)
    np.testing.assert_allclose(out, ref, atol=1e-10)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("softcap", [0.0, 3.0])
@pytest.mark.surface("dense_bwd")
def test_backward_matches_numpy(mask, softcap):
    # The backward recomputes P from the float32 LSE: agreement ~1e-8 even for float64 inputs.
    from flashlane._core import numpy_backward

    rng = np.random.default_rng(9)
    q, k, v = rand(rng, (2, 11, 4, 16)), rand(rng, (2, 14, 2, 16)), rand(rng, (2, 14, 2, 16))
    dout = rand(rng, (2, 11, 4, 16))
    out, lse = flashlane.attention(q, k, v, mask=mask, softcap=softcap, window_size=(9, -1),
                                   return_lse=True)
    dq, dk, dv = numpy_backward(dout, q, k, v, out, lse, softmax_scale=0.25, mask=mask,
                                window=(9, -1), softcap=softcap)  # 0.25 = 1 / sqrt(16)
    _, _, rdq, rdk, rdv = npref.attention(q, k, v, mask=mask, window=(9, -1), softcap=softcap,
                                          dout=dout)
    np.testing.assert_allclose(dq, rdq, atol=1e-6)
    np.testing.assert_allclose(dk, rdk, atol=1e-6)
    np.testing.assert_allclose(dv, rdv, atol=1e-6)
    assert flashlane.last_receipt()["runtime_mode"] == "bwd"


@pytest.mark.surface("varlen_bwd")
def test_backward_varlen_matches_numpy():
    from flashlane._core import numpy_backward

    rng = np.random.default_rng(10)
    cu_q = np.array([0, 4, 4, 13], dtype=np.int32)
    cu_k = np.array([0, 6, 8, 20], dtype=np.int32)
    q, k, v = rand(rng, (13, 4, 16)), rand(rng, (20, 2, 16)), rand(rng, (20, 2, 16))
    dout = rand(rng, (13, 4, 16))
    out, lse = flashlane.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 9, 12, causal=True,
                                                return_lse=True)
    dq, dk, dv = numpy_backward(dout, q, k, v, out, lse, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                max_seqlen_q=9, max_seqlen_k=12, softmax_scale=0.25,
                                mask="causal_bottom_right", window=(-1, -1), softcap=0.0)
    _, _, rdq, rdk, rdv = npref.attention_varlen(q, k, v, cu_q, cu_k, mask="causal_bottom_right",
                                                 dout=dout)
    np.testing.assert_allclose(dq, rdq, atol=1e-6)
    np.testing.assert_allclose(dk, rdk, atol=1e-6)
    np.testing.assert_allclose(dv, rdv, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Refusals: stable codes and reason tags.

def _small(rng, d=64, dtype=np.float32):
    return rand(rng, (1, 8, 2, d), dtype), rand(rng, (1, 8, 2, d), dtype), rand(rng, (1, 8, 2, d), dtype)


@pytest.mark.parametrize("backend", ["sm90", "reference_cuda", "sm100", "cudnn"])
def test_strict_refusal_carries_tag(backend):
    q, k, v = _small(np.random.default_rng(11))
    with pytest.raises(flashlane.FlashlaneError) as e:
        flashlane.flash_attn_func(q, k, v, backend=backend, strict=True)
    assert e.value.code == "backend_inapplicable"
    assert e.value.code_value == 200
    assert e.value.reason_tag.startswith(backend + ".")
    assert e.value.reason_tag in str(e.value)
    r = flashlane.last_receipt()
    assert r["status"] == "backend_inapplicable" and r["error_reason"] == e.value.reason_tag
    assert r["actual_backend"] == "" and r["strict"] is True and r["requested_backend"] == backend


def test_non_strict_falls_back_visibly():
    q, k, v = _small(np.random.default_rng(12))
    flashlane.flash_attn_func(q, k, v, backend="sm90")
    r = flashlane.last_receipt()
    assert r["actual_backend"] == "reference_cpu"
    assert r["fallback_reason"].startswith("sm90.")
    assert [s["backend"] for s in r["skipped"]][:1] == ["sm90"]


@pytest.mark.parametrize("case,code", [
    ("head_dim", "head_dim_invalid"),
    ("heads", "heads_not_divisible"),
    ("dtype_mix", "dtype_mismatch"),
    ("int_q", "unsupported_dtype"),
    ("scale", "softmax_scale_invalid"),
    ("softcap", "softcap_invalid"),
    ("window", "window_invalid"),
    ("cu_seqlens", "cu_seqlens_invalid"),
    ("dropout", "dropout_unsupported"),
    ("rank", "rank_mismatch"),
])
def test_validation_codes(case, code):
    rng = np.random.default_rng(13)
    q, k, v = _small(rng)
    kw = {}
    if case == "head_dim":
        q, k, v = _small(rng, d=12)
    elif case == "heads":
        q = rand(rng, (1, 8, 3, 64), np.float32)
    elif case == "dtype_mix":
        k = k.astype(np.float64)
    elif case == "int_q":
        q = q.astype(np.int32)
    elif case == "scale":
        kw["softmax_scale"] = -1.0
    elif case == "softcap":
        kw["softcap"] = -2.0
    elif case == "window":
        kw["window_size"] = (-3, -1)
    elif case == "dropout":
        kw["dropout_p"] = 0.1
    elif case == "rank":
        q = q[0]
    if case == "cu_seqlens":
        cu = np.array([0, 9, 8], dtype=np.int32)
        with pytest.raises(flashlane.FlashlaneError) as e:
            flashlane.flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 8, 8)
    else:
        with pytest.raises(flashlane.FlashlaneError) as e:
            flashlane.flash_attn_func(q, k, v, **kw)
    assert e.value.code == code, str(e.value)
    assert e.value.message


def test_mask_argument_rules():
    q, k, v = _small(np.random.default_rng(14))
    with pytest.raises(ValueError):
        flashlane.flash_attn_func(q, k, v, causal=True, mask="causal")
    with pytest.raises(ValueError):
        flashlane.flash_attn_func(q, k, v, causal=True, mask="no_mask")
    with pytest.raises(ValueError):
        flashlane.flash_attn_func(q, k, v, mask="top_left")
    with pytest.raises(ValueError):
        flashlane.flash_attn_func(q, k, v, backend="fa3")
    a = flashlane.flash_attn_func(q, k, v, causal=True, mask="causal_bottom_right")
    b = flashlane.flash_attn_func(q, k, v, causal=True)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Receipts.

def test_receipt_round_trip_and_schema():
    q, k, v = _small(np.random.default_rng(15))
    flashlane.flash_attn_func(q, k, v, causal=True, backend="reference_cpu", strict=True)
    r = flashlane.last_receipt()
    assert set(r) == {"requested_backend", "actual_backend", "runtime_mode", "strict",
                      "fallback_reason", "skipped", "variant", "device", "deterministic",
                      "status", "error_reason", "kernel_fingerprint", "surface"}
    assert r["requested_backend"] == "reference_cpu" and r["actual_backend"] == "reference_cpu"
    assert r["device"] == {"name": "cpu", "sm": 0} and r["variant"]
    assert r["surface"] == "dense_fwd" and r["surface"] in _C.surface_ids()
    assert r["kernel_fingerprint"] == _C.kernel_fingerprint("reference_cpu")
    assert len(r["kernel_fingerprint"]) == 16
    # C++ parses what Python hands back, and prints the same receipt.
    again = _C.receipt_roundtrip(json.dumps(r))
    assert again is not None and json.loads(again) == r
    assert _C.receipt_roundtrip("{not json") is None


def test_kernel_fingerprint_of_a_mode_is_its_family():
    # reference backends have no families: the backend's fingerprint whatever the mode.
    assert flashlane.kernel_fingerprint("reference_cpu", "bwd") == flashlane.kernel_fingerprint("reference_cpu")
    # sm90: each mode's family has its own fingerprint (the sources are hashed whether or not
    # the build compiles them).
    fams = {m: flashlane.kernel_fingerprint("sm90", m) for m in ("fwd", "varlen_bwd", "paged_decode")}
    assert fams["fwd"] == flashlane.kernel_fingerprint("sm90_fwd")
    assert fams["varlen_bwd"] == flashlane.kernel_fingerprint("sm90_bwd")
    assert fams["paged_decode"] == flashlane.kernel_fingerprint("sm90_decode")
    assert len(set(fams.values()) | {flashlane.kernel_fingerprint("sm90")}) == 4
    assert flashlane.kernel_fingerprint("sm90", "short_train") == flashlane.kernel_fingerprint("sm90")


def test_surface_ids_are_the_catalog():
    """The receipt's surface, the catalog (_C.surface_ids()) and the tests' `surface` markers
    (conftest.py refuses an id outside the catalog) share one list."""
    assert _C.surface_ids() == ["dense_fwd", "dense_bwd", "varlen_fwd", "varlen_bwd", "decode",
                                "paged_decode", "append_decode", "attention_sinks",
                                "context_parallel"]
    q, k, v = _small(np.random.default_rng(16))
    flashlane.flash_attn_func(q, k, v, backend="reference_cpu")
    assert flashlane.last_receipt()["surface"] == "dense_fwd"


def test_receipt_dict_is_the_json_receipt():
    """last_receipt() and receipt_log() take the receipt from _C.last_receipt_dict(), built in
    C++ without JSON: it must be json.loads(last_receipt_json()) exactly (keys, key order, value
    types), for a call that ran with skipped backends and for a refused one, and fresh each
    call (no dict shared with an earlier receipt)."""
    q, k, v = _small(np.random.default_rng(19))
    first = None
    for kw in ({}, {"backend": "sm90"}, {"backend": "sm100", "strict": True}):
        try:
            flashlane.flash_attn_func(q, k, v, causal=True, **kw)
        except flashlane.FlashlaneError:
            pass
        d, j = _C.last_receipt_dict(), json.loads(_C.last_receipt_json())
        assert json.dumps(d) == json.dumps(j)  # same order and types (True is not 1)
        assert flashlane.last_receipt() == j
        first = first or d
    assert first["requested_backend"] == "auto" and first["skipped"]
    assert json.loads(_C.last_receipt_json())["status"] == "backend_inapplicable"


def test_receipt_log_and_jsonl_sink(tmp_path, monkeypatch):
    path = tmp_path / "receipts.jsonl"
    monkeypatch.setenv("FLASHLANE_RECEIPTS", str(path))
    q, k, v = _small(np.random.default_rng(16))
    with flashlane.receipt_log() as log:
        flashlane.flash_attn_func(q, k, v)
        with pytest.raises(flashlane.FlashlaneError):
            flashlane.flash_attn_func(q, k, v, backend="sm90", strict=True)
    assert [r["status"] for r in log] == ["ok", "backend_inapplicable"]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == log


def test_last_receipt_is_per_thread():
    import threading

    q, k, v = _small(np.random.default_rng(17))
    flashlane.flash_attn_func(q, k, v, backend="reference_cpu")
    seen = {}

    def other():
        seen["r"] = flashlane.last_receipt()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["r"]["status"] == ""  # that thread made no call
    assert flashlane.last_receipt()["status"] == "ok"


# ---------------------------------------------------------------------------------------------
# Packaging.

def test_build_pins_agree():
    """pyproject.toml's build requirements and the pins scripts/python_package.sh installs are the same."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    script = (ROOT / "scripts" / "python_package.sh").read_text()
    pins = re.findall(r'"((?:scikit-build-core|nanobind)==[0-9.]+)"', pyproject)
    assert len(pins) == 2
    for pin in pins:
        assert pin in script, f"{pin} is pinned in pyproject.toml but not in scripts/python_package.sh"


def test_torch_is_optional():
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("torch is not installed: test_torch.py and test_transformers.py skip too")
    import flashlane._ops  # noqa: F401
    assert hasattr(__import__("torch").ops.flashlane, "fwd")
