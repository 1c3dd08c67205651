"""PyTorch: autograd, custom ops, torch.compile, CUDA graphs.

Tests marked `torch` run with torch on the CPU (reference_cpu, float64: tight tolerances); tests
marked `gpu` run on a CUDA device in bf16/fp16 against PyTorch SDPA in float64 with FlashAttention's
rule: max|ours - ref64| <= 2 * max|sdpa_lowp - ref64| + 1e-5. Without torch the whole module is
reported as skipped; without a GPU the gpu tests are.
"""

import math

import pytest

torch = pytest.importorskip("torch", reason="needs torch: torch is not installed")

import flashlane  # noqa: E402

MASKS = ["no_mask", "causal", "causal_bottom_right"]


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


def sdpa_ref(q, k, v, mask="no_mask", window=(-1, -1), scale=None, softcap=0.0):
    """bshd reference with PyTorch ops (SDPA when no softcap), GQA by repeating kv heads."""
    g = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k.repeat_interleave(g, 2), v.repeat_interleave(g, 2)))
    ok = visible(q.shape[1], k.shape[1], mask, window, q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if softcap > 0:
        s = scale * qh @ kh.transpose(-1, -2)
        s = softcap * torch.tanh(s / softcap)
        p = torch.softmax(s.masked_fill(~ok, float("-inf")), -1)
        out = p @ vh
    else:
        out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=ok, scale=scale)
    return out.transpose(1, 2)


def fa_rule(ours, lowp_peer, ref64):
    err = (ours.double() - ref64).abs().max().item()
    peer = (lowp_peer.double() - ref64).abs().max().item()
    assert err <= 2 * peer + 1e-5, f"max abs error {err:.3e} > 2 * {peer:.3e} + 1e-5 (peer: SDPA in low precision)"


def make(shape, device, dtype, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


DEVICES = [pytest.param("cpu", marks=pytest.mark.torch), pytest.param("cuda", marks=pytest.mark.gpu)]


# ---------------------------------------------------------------------------------------------
# Forward and gradients.

def _fwd_bwd(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window,softcap", [((-1, -1), 0.0), ((24, -1), 0.0), ((-1, -1), 15.0)])
@pytest.mark.surface("dense_fwd", "dense_bwd")
def test_forward_backward(device, mask, heads, window, softcap):
    hq, hk = heads
    sq, sk, d = 70, 96, 64  # sq <= sk: no fully masked rows (SDPA gives NaN there)
    kw = dict(mask=mask, window_size=window, softcap=softcap)
    ref_kw = dict(mask=mask, window=window, softcap=softcap)
    shapes = [(2, sq, hq, d), (2, sk, hk, d), (2, sk, hk, d)]
    if device == "cpu":
        q, k, v = (make(s, "cpu", torch.float64, i) for i, s in enumerate(shapes))
        dout = make((2, sq, hq, d), "cpu", torch.float64, 9)
        with flashlane.receipt_log() as log:
            ours = _fwd_bwd(lambda a, b, c: flashlane.attention(a, b, c, **kw), q, k, v, dout)
        ref = _fwd_bwd(lambda a, b, c: sdpa_ref(a, b, c, **ref_kw), q, k, v, dout)
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # the backward uses the float32 LSE
        assert [r["runtime_mode"] for r in log] == ["fwd", "bwd"]
        assert all(r["actual_backend"] == "reference_cpu" for r in log)
        return
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v = (make(s, "cuda", dtype, i) for i, s in enumerate(shapes))
        dout = make((2, sq, hq, d), "cuda", dtype, 9)
        with flashlane.receipt_log() as log:
            ours = _fwd_bwd(lambda a, b, c: flashlane.attention(a, b, c, **kw), q, k, v, dout)
        torch.cuda.synchronize()
        peer = _fwd_bwd(lambda a, b, c: sdpa_ref(a, b, c, **ref_kw), q, k, v, dout)
        ref = _fwd_bwd(lambda a, b, c: sdpa_ref(a, b, c, **ref_kw), *(t.double() for t in (q, k, v)), dout.double())
        for a, p, r in zip(ours, peer, ref):
            fa_rule(a, p, r)
        assert [r["status"] for r in log] == ["ok", "ok"]
        assert [r["runtime_mode"] for r in log] == ["fwd", "bwd"]
        # What ran is recorded; where sm90 did not run, the receipt says why.
        for r in log:
            assert r["actual_backend"] in ("sm90", "reference_cuda")
            if r["actual_backend"] != "sm90":
                assert r["fallback_reason"].startswith("sm90.")


@pytest.mark.gpu
@pytest.mark.parametrize("mask", MASKS)
def test_gpu_matches_cpp_references(mask):
    """The auto backend against reference_cuda (strict) and reference_cpu on host copies."""
    q, k, v = (make(s, "cuda", torch.bfloat16, i) for i, s in enumerate([(2, 130, 8, 128), (2, 257, 2, 128), (2, 257, 2, 128)]))
    out, lse = flashlane.attention(q, k, v, mask=mask, return_lse=True)
    auto_receipt = flashlane.last_receipt()
    ref_out, ref_lse = flashlane.attention(q, k, v, mask=mask, return_lse=True, backend="reference_cuda", strict=True)
    cpu_out, cpu_lse = flashlane.attention(q.cpu(), k.cpu(), v.cpu(), mask=mask, return_lse=True,
                                           backend="reference_cpu", strict=True)
    ref64 = sdpa_ref(q.double(), k.double(), v.double(), mask=mask)
    peer = sdpa_ref(q, k, v, mask=mask)
    fa_rule(out, peer, ref64)
    fa_rule(ref_out, peer, ref64)
    torch.testing.assert_close(out.float().cpu(), cpu_out.float(), atol=2e-2, rtol=2e-2)
    finite = torch.isfinite(cpu_lse)
    torch.testing.assert_close(lse.cpu()[finite], cpu_lse[finite], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(ref_lse.cpu()[finite], cpu_lse[finite], atol=1e-3, rtol=1e-3)
    assert auto_receipt["status"] == "ok"


def _varlen_case(device, dtype):
    lq, lk = [33, 1, 70, 0, 17], [40, 25, 70, 9, 17]
    cu_q = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), dtype=torch.int32, device=device)
    cu_k = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), dtype=torch.int32, device=device)
    q = make((sum(lq), 8, 64), device, dtype, 1)
    k = make((sum(lk), 2, 64), device, dtype, 2)
    v = make((sum(lk), 2, 64), device, dtype, 3)
    return lq, lk, cu_q, cu_k, q, k, v


def _varlen_ref(lq, lk, q, k, v, mask):
    outs, qs, ks = [], 0, 0
    for a, b in zip(lq, lk):
        if a:
            outs.append(sdpa_ref(q[None, qs:qs + a], k[None, ks:ks + b], v[None, ks:ks + b], mask=mask)[0])
        qs, ks = qs + a, ks + b
    return torch.cat(outs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.surface("varlen_fwd", "varlen_bwd")
def test_varlen_forward_backward(device, mask):
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    lq, lk, cu_q, cu_k, q, k, v = _varlen_case(device, dtype)
    dout = make(q.shape, device, dtype, 4)

    def ours(a, b, c):
        return flashlane.flash_attn_varlen_func(a, b, c, cu_q, cu_k, max(lq), max(lk), mask=mask)

    def ref(a, b, c):
        return _varlen_ref(lq, lk, a, b, c, mask)

    with flashlane.receipt_log() as log:
        got = _fwd_bwd(ours, q, k, v, dout)
    assert [r["runtime_mode"] for r in log] == ["varlen_fwd", "varlen_bwd"]
    if device == "cpu":
        for a, b in zip(got, _fwd_bwd(ref, q, k, v, dout)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # the backward uses the float32 LSE
    else:
        peer = _fwd_bwd(ref, q, k, v, dout)
        r64 = _fwd_bwd(ref, q.double(), k.double(), v.double(), dout.double())
        for a, p, r in zip(got, peer, r64):
            fa_rule(a, p, r)


@pytest.mark.parametrize("device", DEVICES)
def test_lse_and_return_values(device):
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    q, k, v = make((1, 5, 2, 64), device, dtype, 1), make((1, 9, 2, 64), device, dtype, 2), make((1, 9, 2, 64), device, dtype, 3)
    out, lse = flashlane.flash_attn_func(q, k, v, causal=True, return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 5)
    s = (q.double().transpose(1, 2) @ k.double().transpose(1, 2).transpose(-1, -2)) / 8.0
    s = s.masked_fill(~visible(5, 9, "causal_bottom_right", device=device), float("-inf"))
    tol = 1e-6 if device == "cpu" else 1e-3
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1), atol=tol, rtol=tol)


# ---------------------------------------------------------------------------------------------
# Errors, receipts, options.

@pytest.mark.parametrize("device", DEVICES)
def test_errors_through_custom_op(device):
    q = make((1, 8, 2, 64), device, torch.float32, 1)
    with pytest.raises(flashlane.FlashlaneError) as e:
        flashlane.flash_attn_func(q, q, q, backend="sm100", strict=True)
    assert e.value.code == "backend_inapplicable" and e.value.reason_tag.startswith("sm100.")
    bad = make((1, 8, 2, 12), device, torch.float32, 1)
    with pytest.raises(flashlane.FlashlaneError) as e:
        flashlane.flash_attn_func(bad, bad, bad)
    assert e.value.code == "head_dim_invalid"


@pytest.mark.torch
def test_sm90_strict_on_cpu_tensors_refuses_with_tag():
    q = make((1, 8, 2, 64), "cpu", torch.bfloat16, 1)
    with pytest.raises(flashlane.FlashlaneError) as e:
        flashlane.flash_attn_func(q, q, q, backend="sm90", strict=True)
    assert e.value.reason_tag.startswith("sm90.")


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_reaches_backward_receipt(device):
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    q = make((1, 16, 4, 64), device, dtype, 1).requires_grad_()
    with flashlane.receipt_log() as log:
        flashlane.flash_attn_func(q, q, q, causal=True, deterministic=True).sum().backward()
    assert [r["deterministic"] for r in log] == [False, True]


@pytest.mark.torch
def test_non_contiguous_inputs_and_transposed_views():
    qh = make((2, 4, 12, 32), "cpu", torch.float64, 1)  # [b, h, s, d]
    q = qh.transpose(1, 2)                               # [b, s, h, d] view, no copy made
    out = flashlane.attention(q, q, q, mask="causal")
    torch.testing.assert_close(out, sdpa_ref(q, q, q, mask="causal"), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["bshd", "varlen"])
@pytest.mark.parametrize("backward_backend", [None, "reference_cpu"])
def test_eager_autograd_node_is_the_ops_formula(device, layout, backward_backend):
    """In eager mode flash_attn_func & co. record FlashlaneAttention (_ops.py: the op's formula
    without torch.library's per-call re-binding). Outputs, gradients (bitwise), receipts and
    the refusal of a double backward must be those of flashlane::fwd called directly, with its
    registered formula; without a gradient to record, no node."""
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    if layout == "bshd":
        q, k, v = (make(s, device, dtype, i) for i, s in enumerate([(2, 24, 4, 32), (2, 30, 2, 32), (2, 30, 2, 32)]))
        meta = (None, None, None, 0, 0)
        mask = "causal_bottom_right"

        def ours(a, b, c):
            return flashlane.flash_attn_func(a, b, c, causal=True, deterministic=True,
                                             backward_backend=backward_backend)
    else:
        lq, lk, cu_q, cu_k, q, k, v = _varlen_case(device, dtype)
        meta = (cu_q, cu_k, None, max(lq), max(lk))
        mask = "causal"

        def ours(a, b, c):
            return flashlane.flash_attn_varlen_func(a, b, c, cu_q, cu_k, max(lq), max(lk), mask=mask,
                                                    deterministic=True,
                                                    backward_backend=backward_backend)
    extra = (backward_backend,) if backward_backend else ()

    def op(a, b, c):
        return torch.ops.flashlane.fwd(a, b, c, *meta, 1.0 / math.sqrt(q.shape[-1]), mask, -1, -1,
                                       0.0, True, "auto", False, *extra)[0]

    dout = make(q.shape, device, dtype, 7)
    results = []
    for fn in (ours, op):
        a, b, c = (t.detach().clone().requires_grad_() for t in (q, k, v))
        with flashlane.receipt_log() as log:
            out = fn(a, b, c)
            out.backward(dout)
        results.append((out.detach(), a.grad, b.grad, c.grad, log, type(out.grad_fn).__name__))
    (*got, log_got, node_got), (*want, log_want, node_want) = results
    assert node_got == "FlashlaneAttentionBackward" and node_want.startswith("GeneratedBackwardFor_flashlane_fwd")
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    assert log_got == log_want and [r["deterministic"] for r in log_got] == [False, True]
    # No gradient to record: the op is called as it is, and nothing is recorded.
    with torch.no_grad():
        assert ours(*(t.detach().clone().requires_grad_() for t in (q, k, v))).grad_fn is None
    assert ours(q, k, v).grad_fn is None
    # A double backward is refused as by the op (flashlane::bwd has no formula).
    a = q.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(ours(a, k, v).float().sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        g.sum().backward()


@pytest.mark.torch
def test_opcheck_cpu():
    q, k, v = make((1, 7, 4, 32), "cpu", torch.float64, 1), make((1, 9, 2, 32), "cpu", torch.float64, 2), make((1, 9, 2, 32), "cpu", torch.float64, 3)
    for t in (q, k, v):
        t.requires_grad_()
    args = (q, k, v, None, None, None, 0, 0, 0.2, "causal_bottom_right", -1, -1, 0.0, False, "auto", False)
    torch.library.opcheck(torch.ops.flashlane.fwd.default, args)
    torch.library.opcheck(torch.ops.flashlane.fwd.default, args + ("reference_cpu",))  # backward_backend


@pytest.mark.torch
def test_backward_backend_is_what_the_backward_requests():
    """backward_backend= directs the autograd backward only; its receipt names the request, the
    backend that ran and the fallback reason; strict fails closed in the backward; the default
    (None) keeps the backward on `backend`."""
    q = make((1, 12, 4, 32), "cpu", torch.float64, 1).requires_grad_()
    k = make((1, 12, 2, 32), "cpu", torch.float64, 2).requires_grad_()
    with flashlane.receipt_log() as log:
        a = flashlane.flash_attn_func(q, k, k, causal=True, backend="reference_cpu")
        a.sum().backward()
        g_default = q.grad.clone()
        q.grad = None
        b = flashlane.flash_attn_func(q, k, k, causal=True, backend="reference_cpu", backward_backend="sm90")
        b.sum().backward()
    seen = [(r["runtime_mode"], r["requested_backend"], r["actual_backend"], r["fallback_reason"]) for r in log]
    assert seen[:2] == [("fwd", "reference_cpu", "reference_cpu", ""), ("bwd", "reference_cpu", "reference_cpu", "")]
    assert seen[2] == ("fwd", "reference_cpu", "reference_cpu", "")
    assert seen[3][:3] == ("bwd", "sm90", "reference_cpu") and seen[3][3].startswith("sm90."), seen[3]
    torch.testing.assert_close(q.grad, g_default, atol=0, rtol=0)  # the same backend ran both
    q.grad = None
    out = flashlane.flash_attn_func(q, k, k, causal=True, backend="reference_cpu", strict=True,
                                    backward_backend="sm90")  # the forward runs ...
    with pytest.raises(flashlane.FlashlaneError) as e:
        out.sum().backward()  # ... the backward is refused, strictly
    assert e.value.reason_tag.startswith("sm90."), e.value
    with pytest.raises(ValueError):
        flashlane.flash_attn_func(q, k, k, backward_backend="fa3")


# ---------------------------------------------------------------------------------------------
# torch.compile and CUDA graphs.

@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    dtype = torch.float64 if device == "cpu" else torch.bfloat16

    def f(q, k, v):
        out = flashlane.flash_attn_func(q * 1.5, k, v, causal=True)
        return (out.float() ** 2).sum()

    backend = "aot_eager" if device == "cpu" else "inductor"
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    q, k, v = make((2, 40, 4, 64), device, dtype, 1), make((2, 40, 2, 64), device, dtype, 2), make((2, 40, 2, 64), device, dtype, 3)
    grads = []
    for fn in (f, compiled):
        a, b, c = (t.detach().clone().requires_grad_() for t in (q, k, v))
        loss = fn(a, b, c)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad, c.grad))
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y, atol=1e-2 if device == "cuda" else 1e-10, rtol=1e-2 if device == "cuda" else 1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_varlen_fullgraph(device):
    torch._dynamo.reset()
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    lq, lk, cu_q, cu_k, q, k, v = _varlen_case(device, dtype)
    mq, mk = max(lq), max(lk)

    def f(q, k, v, cu_q, cu_k):
        return flashlane.flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, causal=True)

    backend = "aot_eager" if device == "cpu" else "inductor"
    out = torch.compile(f, fullgraph=True, backend=backend)(q, k, v, cu_q, cu_k)
    torch.testing.assert_close(out, f(q, k, v, cu_q, cu_k))


@pytest.mark.gpu
def test_cuda_graph_capture_bshd_and_varlen():
    q, k, v = (make(s, "cuda", torch.bfloat16, i) for i, s in enumerate([(2, 64, 8, 128), (2, 64, 2, 128), (2, 64, 2, 128)]))
    lq, lk, cu_q, cu_k, vq, vk, vv = _varlen_case("cuda", torch.bfloat16)

    def step():
        a = flashlane.flash_attn_func(q, k, v, causal=True)
        b = flashlane.flash_attn_varlen_func(vq, vk, vv, cu_q, cu_k, max(lq), max(lk), causal=True)
        return a, b

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_a, static_b = step()
    for seed in (10, 20):
        q.copy_(make(q.shape, "cuda", q.dtype, seed))
        vq.copy_(make(vq.shape, "cuda", vq.dtype, seed + 1))
        graph.replay()
        torch.cuda.synchronize()
        a, b = step()
        torch.testing.assert_close(static_a, a, atol=0, rtol=0)
        torch.testing.assert_close(static_b, b, atol=0, rtol=0)


@pytest.mark.gpu
def test_cuda_graph_make_graphed_callables_forward_backward():
    q, k, v = (make(s, "cuda", torch.bfloat16, i).requires_grad_() for i, s in enumerate([(2, 64, 8, 128), (2, 64, 2, 128), (2, 64, 2, 128)]))

    def f(q, k, v):
        return flashlane.flash_attn_func(q, k, v, causal=True)

    graphed = torch.cuda.make_graphed_callables(f, (q, k, v))
    out = graphed(q, k, v)
    out.float().sum().backward()
    ref_q = q.detach().clone().requires_grad_()
    f(ref_q, k.detach(), v.detach()).float().sum().backward()
    # the backward may accumulate dk/dv with atomics (GQA): equal up to summation order
    torch.testing.assert_close(q.grad, ref_q.grad, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_runs_on_the_current_stream():
    q = make((4, 256, 8, 128), "cuda", torch.bfloat16, 1)
    expected = flashlane.flash_attn_func(q, q, q, causal=True)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        q2 = q * 1  # produced on the side stream
        out = flashlane.flash_attn_func(q2, q2, q2, causal=True)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
