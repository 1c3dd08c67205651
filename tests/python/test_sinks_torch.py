"""Attention sinks with PyTorch: the forward and autograd (the sinks' gradient included) against
torch autograd through an eager reference that appends the sink logit as an extra score column
before the softmax and drops it after (gpt-oss's eager attention).

Tests marked `torch` run CPU tensors on reference_cpu in float64. The sinks hold float32 values
(the library computes with float32 sinks), so the forward agrees to rounding; the backward uses
the float32 LSE and returns the sinks' gradient computed in float32 (cast to the sinks' dtype):
1e-5, as test_torch.py's float64 backward. The `gpu` test applies FlashAttention's rule against
the float64 reference."""

import math

import pytest

torch = pytest.importorskip("torch", reason="needs torch: torch is not installed")

import flashlane  # noqa: E402
from flashlane import flash_attn as fa2  # noqa: E402
from flashlane import flash_attn_interface as fa3  # noqa: E402

pytestmark = pytest.mark.surface("attention_sinks")
MASKS = ["no_mask", "causal", "causal_bottom_right"]


def make(shape, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def sink_values(h, seed=0, dtype=torch.float64, device="cpu"):
    """float32 values in [-1, 2.5), held in `dtype`."""
    g = torch.Generator().manual_seed(100 + seed)
    s = (torch.rand(h, generator=g) * 3.5 - 1.0).to(torch.float32)
    return s.to(device=device, dtype=dtype)


def visible(sq, sk, mask, window=(-1, -1), device="cpu"):
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    diag = i if mask == "causal" else i + sk - sq
    left, right = window
    if mask != "no_mask":
        right = 0
    ok = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if left >= 0:
        ok &= j >= diag - left
    if right >= 0:
        ok &= j <= diag + right
    return ok


def eager(q, k, v, sink, mask="no_mask", window=(-1, -1), scale=None, softcap=0.0):
    """bshd, GQA by repeating kv heads; the sink [h] is an extra column of the scores."""
    b, sq, h, d = q.shape
    g = h // k.shape[2]
    qh = q.transpose(1, 2)
    kh = k.repeat_interleave(g, 2).transpose(1, 2)
    vh = v.repeat_interleave(g, 2).transpose(1, 2)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = scale * qh @ kh.transpose(-1, -2)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    s = s.masked_fill(~visible(sq, k.shape[1], mask, window, q.device), float("-inf"))
    col = sink.to(s.dtype).reshape(1, h, 1, 1).expand(b, h, sq, 1)
    p = torch.softmax(torch.cat([s, col], -1), -1)[..., :-1]
    return (p @ vh).transpose(1, 2)


def grads(fn, tensors, dout):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(dout)
    return [out.detach()] + [t.grad for t in leaves]


def assert_all_close(got, want, atol=1e-5, rtol=1e-5):
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"item {i}: {m}")


@pytest.mark.torch
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window,softcap", [((-1, -1), 0.0), ((9, -1), 0.0), ((-1, -1), 3.0)])
def test_autograd_matches_eager(mask, heads, window, softcap):
    hq, hk = heads
    q, k, v = make((2, 23, hq, 32), seed=1), make((2, 31, hk, 32), seed=2), make((2, 31, hk, 32), seed=3)
    q = q * 2.0  # scores large enough for softcap to matter
    dout = make((2, 23, hq, 32), seed=4)
    sink = sink_values(hq)
    kw = dict(mask=mask, window_size=window, softcap=softcap, softmax_scale=0.3)
    with flashlane.receipt_log() as log:
        got = grads(lambda a, b, c, s: flashlane.attention(a, b, c, learnable_sink=s, **kw),
                    (q, k, v, sink), dout)
    want = grads(lambda a, b, c, s: eager(a, b, c, s, mask, window, 0.3, softcap),
                 (q, k, v, sink), dout)
    torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-10)
    assert_all_close(got[1:], want[1:])
    assert got[4].dtype == torch.float64 and got[4].shape == (hq,)
    assert want[4].abs().max() > 1e-2  # the sinks' gradient is not trivially 0
    assert [r["runtime_mode"] for r in log] == ["sinks_fwd", "sinks_bwd"]
    assert all(r["actual_backend"] == "reference_cpu" and r["status"] == "ok" for r in log)


@pytest.mark.torch
@pytest.mark.parametrize("sink_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sink_gradient_comes_back_in_the_sinks_dtype(sink_dtype):
    q, k, v = make((1, 9, 4, 16), seed=5), make((1, 9, 2, 16), seed=6), make((1, 9, 2, 16), seed=7)
    dout = make((1, 9, 4, 16), seed=8)
    sink = torch.tensor([0.5, -1.25, 2.0, 0.75], dtype=sink_dtype)  # exact in every dtype here
    got = grads(lambda a, b, c, s: flashlane.flash_attn_func(a, b, c, causal=True, learnable_sink=s),
                (q, k, v, sink), dout)
    want = grads(lambda a, b, c, s: eager(a, b, c, s.double(), "causal_bottom_right"),
                 (q, k, v, sink), dout)
    assert got[4].dtype == sink_dtype
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[sink_dtype]
    torch.testing.assert_close(got[4], want[4], atol=tol, rtol=tol)
    assert_all_close(got[:4], want[:4])


@pytest.mark.torch
def test_only_the_sinks_require_grad():
    """A graph is recorded for the sinks alone (frozen q, k, v: training just the sinks)."""
    q, k, v = make((2, 11, 4, 16), seed=9), make((2, 13, 2, 16), seed=10), make((2, 13, 2, 16), seed=11)
    sink = sink_values(4, seed=1).requires_grad_()
    out = flashlane.flash_attn_func(q, k, v, learnable_sink=sink)
    assert out.grad_fn is not None
    (g,) = torch.autograd.grad(out.sum(), sink)
    s2 = sink.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(eager(q, k, v, s2).sum(), s2)
    torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert flashlane.flash_attn_func(q, k, v, learnable_sink=sink).grad_fn is None


def _varlen(lens_q, lens_k, hq=4, hk=2, d=16):
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32)
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32)
    return (cu_q, cu_k, make((int(cu_q[-1]), hq, d), seed=12), make((int(cu_k[-1]), hk, d), seed=13),
            make((int(cu_k[-1]), hk, d), seed=14))


def _varlen_eager(lens_q, lens_k, q, k, v, sink, mask):
    outs, q0, k0 = [], 0, 0
    for lq, lk in zip(lens_q, lens_k):
        outs.append(eager(q[None, q0:q0 + lq], k[None, k0:k0 + lk], v[None, k0:k0 + lk], sink,
                          mask)[0])
        q0, k0 = q0 + lq, k0 + lk
    return torch.cat(outs)


@pytest.mark.torch
@pytest.mark.parametrize("mask", MASKS)
def test_varlen_autograd_through_the_fa_fronts(mask):
    lens_q, lens_k = (7, 12, 3), (9, 12, 5)
    cu_q, cu_k, q, k, v = _varlen(lens_q, lens_k)
    dout = make(q.shape, seed=15)
    sink = sink_values(4, seed=2)
    want = grads(lambda a, b, c, s: _varlen_eager(lens_q, lens_k, a, b, c, s, mask),
                 (q, k, v, sink), dout)
    calls = [lambda a, b, c, s: flashlane.flash_attn_varlen_func(a, b, c, cu_q, cu_k, 12, 12,
                                                                 mask=mask, learnable_sink=s)]
    if mask != "causal":  # FlashAttention's causal is bottom-right
        causal = mask == "causal_bottom_right"
        calls.append(lambda a, b, c, s: fa2.flash_attn_varlen_func(
            a, b, c, cu_q, cu_k, 12, 12, 0.0, None, causal, learnable_sink=s))
        calls.append(lambda a, b, c, s: fa3.flash_attn_varlen_func(
            a, b, c, cu_q, cu_k, 12, 12, None, None, None, causal, learnable_sink=s))
    for call in calls:
        with flashlane.receipt_log() as log:
            got = grads(call, (q, k, v, sink), dout)
        torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-10)
        assert_all_close(got[1:], want[1:])
        assert [r["runtime_mode"] for r in log] == ["sinks_varlen_fwd", "sinks_varlen_bwd"]


@pytest.mark.torch
def test_packed_fronts_sum_the_gradients_back():
    qkv = make((2, 13, 3, 4, 16), seed=16)
    dout = make((2, 13, 4, 16), seed=17)
    sink = sink_values(4, seed=3)

    def unpacked(t, s):
        return eager(t[:, :, 0], t[:, :, 1], t[:, :, 2], s, "causal_bottom_right")

    want = grads(unpacked, (qkv, sink), dout)
    for call in (lambda t, s: fa2.flash_attn_qkvpacked_func(t, 0.0, None, True, learnable_sink=s),
                 lambda t, s: fa3.flash_attn_qkvpacked_func(t, None, True, learnable_sink=s)):
        got = grads(call, (qkv, sink), dout)
        torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-10)
        assert_all_close(got[1:], want[1:])


@pytest.mark.torch
def test_fully_masked_rows_and_lse():
    q, k, v = make((1, 8, 2, 16), seed=18), make((1, 3, 2, 16), seed=19), make((1, 3, 2, 16), seed=20)
    sink = torch.tensor([0.25, -3.0], dtype=torch.float64, requires_grad=True)
    out, lse = flashlane.flash_attn_func(q, k, v, causal=True, return_lse=True, learnable_sink=sink)
    assert torch.all(out[:, :5] == 0) and not torch.isnan(out).any()
    assert torch.equal(lse[0, :, :5], sink.detach().float()[:, None].expand(2, 5))
    s = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) / 4.0
    s = s.masked_fill(~visible(8, 3, "causal_bottom_right"), float("-inf"))
    want = torch.logsumexp(torch.cat([s, sink.detach().reshape(1, 2, 1, 1).expand(1, 2, 8, 1)], -1), -1)
    torch.testing.assert_close(lse.double(), want, atol=1e-6, rtol=1e-6)
    out.sum().backward()  # rows without keys contribute nothing to the sinks' gradient
    s2 = sink.detach().clone().requires_grad_()
    eager(q, k, v, s2, "causal_bottom_right").sum().backward()
    torch.testing.assert_close(sink.grad, s2.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.torch
def test_kvcache_cpu_tensors():
    g = torch.Generator().manual_seed(21)
    q = torch.randn(2, 1, 4, 16, generator=g)
    kc, vc = torch.randn(2, 10, 2, 16, generator=g), torch.randn(2, 10, 2, 16, generator=g)
    seqlens = torch.tensor([6, 0], dtype=torch.int32)
    sink = sink_values(4, seed=4, dtype=torch.float64).requires_grad_()  # taken as a plain input
    out, lse = flashlane.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=seqlens,
                                                 return_softmax_lse=True, learnable_sink=sink)
    want = eager(q[:1].double(), kc[:1, :6].double(), vc[:1, :6].double(), sink.detach())
    torch.testing.assert_close(out[:1].double(), want, atol=2e-6, rtol=2e-6)
    assert torch.all(out[1] == 0) and torch.equal(lse[1], sink.detach().float()[:, None])


@pytest.mark.torch
def test_opcheck_with_sinks():
    q, k, v = make((1, 7, 4, 32), seed=22), make((1, 9, 2, 32), seed=23), make((1, 9, 2, 32), seed=24)
    for t in (q, k, v):
        t.requires_grad_()
    sink = sink_values(4, seed=5, dtype=torch.float32).requires_grad_()
    args = (q, k, v, None, None, None, 0, 0, 0.2, "causal_bottom_right", -1, -1, 0.0, False,
            "auto", False, "", sink)
    torch.library.opcheck(torch.ops.flashlane.fwd.default, args)


@pytest.mark.torch
def test_torch_compile_fullgraph_with_sinks():
    q, k, v = make((1, 9, 4, 16), seed=25), make((1, 9, 2, 16), seed=26), make((1, 9, 2, 16), seed=27)
    sink = sink_values(4, seed=6).requires_grad_()

    def f(a, b, c, s):
        return flashlane.flash_attn_func(a, b, c, causal=True, learnable_sink=s)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(q, k, v, sink)
    (g_got,) = torch.autograd.grad(got.sum(), sink)
    want = f(q, k, v, sink)
    (g_want,) = torch.autograd.grad(want.sum(), sink)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(g_got, g_want, atol=0, rtol=0)


@pytest.mark.gpu
def test_gpu_bf16_within_flashattention_rule():
    """CUDA bf16 with sinks against the float64 eager reference: max|ours - ref64| <= 2 *
    max|eager_bf16 - ref64| + 1e-5, forward and gradients; the receipts name what ran."""
    dev = "cuda"
    shapes = [(2, 70, 8, 64), (2, 96, 2, 64), (2, 96, 2, 64)]
    q, k, v = (make(s, torch.bfloat16, i, dev) for i, s in enumerate(shapes))
    dout = make((2, 70, 8, 64), torch.bfloat16, 9, dev)
    sink = sink_values(8, dtype=torch.bfloat16, device=dev)
    with flashlane.receipt_log() as log:
        got = grads(lambda a, b, c, s: flashlane.flash_attn_func(a, b, c, causal=True,
                                                                 learnable_sink=s),
                    (q, k, v, sink), dout)
    torch.cuda.synchronize()
    peer = grads(lambda a, b, c, s: eager(a, b, c, s, "causal_bottom_right"), (q, k, v, sink), dout)
    ref = grads(lambda a, b, c, s: eager(a, b, c, s, "causal_bottom_right"),
                [t.double() for t in (q, k, v, sink)], dout.double())
    for a, p, r in zip(got, peer, ref):
        err = (a.double() - r).abs().max().item()
        base = (p.double() - r).abs().max().item()
        assert err <= 2 * base + 1e-5, f"{err:.3e} > 2 * {base:.3e} + 1e-5"
    assert [r["runtime_mode"] for r in log] == ["sinks_fwd", "sinks_bwd"]
    for r in log:
        assert r["status"] == "ok" and r["actual_backend"] in ("sm90", "reference_cuda"), r
        assert r["actual_backend"] == "sm90" or r["fallback_reason"].startswith("sm90."), r
