"""torch.library custom ops flashlane::fwd and flashlane::bwd, their fake (meta) implementations
and the autograd formula, so that torch.compile(fullgraph=True) traces flashlane calls as single
opaque nodes and CUDA graphs can capture them.

Tensors go to the extension as DLPack capsules without copies (torch.utils.dlpack.to_dlpack, the
function Tensor.__dlpack__ ends in; no cross-stream synchronization, as ``__dlpack__(stream=-1)``:
flashlane launches on PyTorch's current stream, passed as an integer), which also keeps CUDA graph
capture legal. Host (CPU) tensors run on reference_cpu.

The host time of these calls matters: a training step makes them once per layer and direction,
and a small model's step is CPU-bound when they are slow. bench/python_overhead.py measures them;
the hot paths below therefore make no Python-level DLPack call, build no torch Stream object and
look nothing up twice, and flash_attn_func & co. record their autograd node with
FlashlaneAttention (below) instead of the op's registered formula.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _C
from ._core import _collectors, _receipt_to_collectors, _tls, raise_if_error

# at::toDLPack through torch.utils.dlpack.to_dlpack: the capsule Tensor.__dlpack__(stream=-1)
# returns (a view of the tensor on its own device, strides of size-1 dimensions normalized), made
# without __dlpack__'s Python checks. Those refuse tensors that require grad (the old code
# detached first), carry the conjugate bit (complex: flashlane refuses the dtype anyway) or are
# not strided (to_dlpack raises too), and CUDA tensors of a device other than the current one
# (the old code switched devices first; the C++ side makes the tensors' device current itself).
_to_dlpack = torch.utils.dlpack.to_dlpack
_forward_cpp, _backward_cpp = _C.forward, _C.backward
# The raw cudaStream_t of a device's current stream as an int, which is what
# torch.cuda.current_stream(device).cuda_stream returns, without building a Stream object
# (torch's inductor uses it the same way). Absent from CPU-only builds of torch.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream_of(index: int) -> int:
    if _raw_stream is not None:
        return _raw_stream(index)
    return int(torch.cuda.current_stream(index).cuda_stream)


def _call(fn, q: Tensor, varlen: bool, tensors, options):
    """fn(*capsules of `tensors` (None stays None), *options, stream, check_metadata_values), then
    the receipt bookkeeping, then the error if fn returned one.

    CUDA: PyTorch's current stream of q's device. check_metadata_values says whether validation
    may read cu_seqlens / seqused_k: host tensors always (cheap); CUDA tensors never while a CUDA
    graph is being captured (the read is a synchronous copy) and never for varlen calls, whose
    max_seqlen the caller gives (FlashAttention's contract). The capture state is that of q's
    device's current stream: q's device is made current for the call when another one is."""
    caps = [None if t is None else _to_dlpack(t) for t in tensors]
    if not q.is_cuda:
        result = fn(*caps, *options, 0, True)
    else:
        index = q.get_device()
        if torch.cuda.current_device() == index:
            result = fn(*caps, *options, _stream_of(index),
                        not varlen and not torch.cuda.is_current_stream_capturing())
        else:
            with torch.cuda.device(index):
                result = fn(*caps, *options, _stream_of(index),
                            not varlen and not torch.cuda.is_current_stream_capturing())
    # _core._after_cpp_call, inlined: this thread's last receipt is the C++ one again, and the
    # active receipt_log() blocks get it.
    _tls.python_receipt = None
    if _collectors:
        _receipt_to_collectors()
    if result is not None:
        raise_if_error(result)


def _lse_shape(q: Tensor, varlen: bool) -> List[int]:
    if varlen:  # q [total_q, heads_q, d] -> lse [heads_q, total_q]
        return [q.shape[1], q.shape[0]]
    return [q.shape[0], q.shape[2], q.shape[1]]  # q [b, s, h, d] -> lse [b, h, s]


@torch.library.custom_op("flashlane::fwd", mutates_args=(), device_types=None)
def fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor],
        cu_seqlens_k: Optional[Tensor], seqused_k: Optional[Tensor], max_seqlen_q: int,
        max_seqlen_k: int, softmax_scale: float, mask: str, window_left: int, window_right: int,
        softcap: float, deterministic: bool, backend: str, strict: bool,
        backward_backend: str = "", learnable_sink: Optional[Tensor] = None
        ) -> Tuple[Tensor, Tensor]:
    """Attention forward. Returns (out, lse). `deterministic` and `backward_backend` (the backend
    the autograd backward requests; "" = `backend`, the default) are used by the backward only.
    learnable_sink: None or the attention sinks, float32 [heads_q] on q's device (lse then
    includes them; include/flashlane/problem.h, "Attention sinks")."""
    varlen = cu_seqlens_q is not None
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))  # q's dtype and device
    lse = q.new_empty(_lse_shape(q, varlen), dtype=torch.float32)
    _call(_forward_cpp, q, varlen,
          (q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, learnable_sink),
          (max_seqlen_q, max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap,
           backend, strict))
    return out, lse


@fwd.register_fake
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
              softmax_scale, mask, window_left, window_right, softcap, deterministic, backend,
              strict, backward_backend="", learnable_sink=None):
    varlen = cu_seqlens_q is not None
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))
    lse = q.new_empty(_lse_shape(q, varlen), dtype=torch.float32)
    return out, lse


def _dsink_like(q: Tensor, learnable_sink: Optional[Tensor]) -> Tensor:
    """The sinks' gradient buffer: float32 like learnable_sink, or empty [0] without sinks (the
    op's outputs cannot be None)."""
    if learnable_sink is None:
        return q.new_empty((0,), dtype=torch.float32)
    return q.new_empty(tuple(learnable_sink.shape), dtype=torch.float32)


@torch.library.custom_op("flashlane::bwd", mutates_args=(), device_types=None)
def bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
        cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
        seqused_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
        mask: str, window_left: int, window_right: int, softcap: float, deterministic: bool,
        backend: str, strict: bool, learnable_sink: Optional[Tensor] = None
        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Attention backward. Returns (dq, dk, dv, dlearnable_sink): the last is float32 like
    learnable_sink, or empty ([0]) when there are no sinks."""
    varlen = cu_seqlens_q is not None
    if dout.stride(-1) != 1 or 0 in dout.stride():  # autograd hands expanded gradients too
        dout = dout.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    dsink = _dsink_like(q, learnable_sink)
    _call(_backward_cpp, q, varlen,
          (q, k, v, out, lse, dout, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, seqused_k,
           learnable_sink, None if learnable_sink is None else dsink),
          (max_seqlen_q, max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap,
           deterministic, backend, strict))
    return dq, dk, dv, dsink


@bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
              max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap,
              deterministic, backend, strict, learnable_sink=None):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            _dsink_like(q, learnable_sink))


_bwd_op = torch.ops.flashlane.bwd.default


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale,
     mask, window_left, window_right, softcap, deterministic, backend, strict,
     backward_backend, learnable_sink) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k,
                          learnable_sink)
    ctx.opts = (max_seqlen_q, max_seqlen_k, softmax_scale, mask, window_left, window_right,
                softcap, deterministic, backward_backend or backend, strict)


def _backward(ctx, dout, dlse):
    # lse is an auxiliary output: its gradient is not propagated (FlashAttention does the same).
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, learnable_sink = ctx.saved_tensors
    (max_seqlen_q, max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap,
     deterministic, backend, strict) = ctx.opts
    if learnable_sink is None:  # the op called as before sinks existed
        dq, dk, dv, _ = _bwd_op(
            dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
            max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap, deterministic,
            backend, strict)
        dsink = None
    else:
        dq, dk, dv, dsink = _bwd_op(
            dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
            max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap, deterministic,
            backend, strict, learnable_sink)
    return (dq, dk, dv) + (None,) * 14 + (dsink,)


fwd.register_autograd(_backward, setup_context=_setup_context)

_fwd_op = torch.ops.flashlane.fwd.default
_is_compiling = torch.compiler.is_compiling
_is_grad_enabled = torch.is_grad_enabled
_functorch_active = torch._C._are_functorch_transforms_active
# Dispatches below the Autograd key. A custom op's Autograd kernel does exactly that (in Python,
# torch._library.autograd: forward_no_grad) when the call records no gradient (grad mode off, or
# no input requiring grad); entering the guard ourselves in those cases skips that Python layer
# (~5 us per call). Modes, the profiler and the device kernels see the same call.
_below_autograd = getattr(torch._C, "_AutoDispatchBelowAutograd", None)


class FlashlaneAttention(torch.autograd.Function):
    """The autograd node of flash_attn_func & co. in eager mode: flashlane::fwd's own formula
    (_setup_context and _backward above: the same saved tensors, the same flashlane::bwd call)
    around the same flashlane::fwd call, applied as an autograd.Function.

    Why: torch.library applies a custom op's registered formula through a wrapper that re-binds
    the call against the op's 18-argument schema on every call (torch._library.utils
    .fill_defaults rebuilds the schema's argument list once per argument): about 65 us of host
    time per forward on a desktop CPU, more than everything else flashlane does in Python. The
    forward here calls the op below autograd (grad mode is off inside Function.forward), so the
    dispatcher, profilers and modes still see flashlane::fwd and flashlane::bwd as before.
    forward takes ctx (the classic form): with a separate setup_context, Function.apply binds
    every call to forward's signature with inspect (another ~20 us). The classic form does not
    run under torch.func transforms, and neither does the op's registered formula (torch wraps it
    in the same kind of Function): attention_op calls the op there, and under torch.compile."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, learnable_sink, options):
        # options: the op's 11 other arguments, (max_seqlen_q, ..., strict, backward_backend),
        # in one tuple: Function.apply walks every argument (functorch's unwrap_dead_wrappers).
        inputs = (q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k) + options
        if learnable_sink is not None:
            args = inputs + (learnable_sink,)
        else:
            args = inputs if options[-1] else inputs[:-1]  # backward_backend "": called without it
        if _below_autograd is None:
            output = _fwd_op(*args)
        else:
            with _below_autograd():  # grad mode is off in Function.forward
                output = _fwd_op(*args)
        _setup_context(ctx, inputs + (learnable_sink,), output)
        return output

    @staticmethod
    def backward(ctx, dout, dlse):
        if _below_autograd is None or torch.is_grad_enabled():  # create_graph=True: as the op
            grads = _backward(ctx, dout, dlse)
        else:
            with _below_autograd():
                grads = _backward(ctx, dout, dlse)
        return grads[:3] + (None,) * 3 + (grads[17], None)


def sink_tensor(learnable_sink, q: Tensor) -> Optional[Tensor]:
    """The sinks as flashlane::fwd takes them: float32 and contiguous. Other float dtypes are
    converted with a differentiable cast (autograd returns the gradient in the sinks' own dtype);
    numbers and arrays become a float32 tensor on q's device; other dtypes and devices go on as
    they are, for validation to name."""
    if learnable_sink is None:
        return None
    if not isinstance(learnable_sink, Tensor):
        return torch.as_tensor(learnable_sink, dtype=torch.float32, device=q.device)
    if learnable_sink.is_floating_point() and learnable_sink.dtype != torch.float32:
        learnable_sink = learnable_sink.to(torch.float32)
    if not learnable_sink.is_contiguous():
        learnable_sink = learnable_sink.contiguous()
    return learnable_sink


def attention_op(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None,
                 max_seqlen_q=0, max_seqlen_k=0, softmax_scale: float, mask: str,
                 window=(-1, -1), softcap=0.0, deterministic=False, backend="auto",
                 strict=False, backward_backend=None,
                 learnable_sink=None) -> Tuple[Tensor, Tensor]:
    """Calls flashlane::fwd (differentiable). Returns (out, lse). backward_backend: what the
    autograd backward requests (None: `backend`; the op is then called as before, without it).
    learnable_sink: None or the attention sinks [heads_q] (sink_tensor() converts them); the
    autograd backward returns their gradient when they require grad.

    Under torch.compile and torch.func transforms the op is called as registered (its autograd
    formula included). In eager mode a call that records a gradient goes through
    FlashlaneAttention (the op's formula without torch.library's per-call re-binding), and one
    that records none calls the op below the Autograd key, as the op's Autograd kernel would."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    sink = sink_tensor(learnable_sink, q)
    options = (int(max_seqlen_q), int(max_seqlen_k), float(softmax_scale), mask, int(window[0]),
               int(window[1]), float(softcap), bool(deterministic), backend, bool(strict))
    if sink is None:
        extra = (backward_backend,) if backward_backend else ()
    else:  # the sinks come after backward_backend ("" = the forward's backend)
        extra = (backward_backend or "", sink)
    if _is_compiling() or _functorch_active() or _below_autograd is None:
        # the op as registered, its formula included
        return _fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, *options, *extra)
    if _is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                               or (sink is not None and sink.requires_grad)):
        return FlashlaneAttention.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, sink,
                                        options + (backward_backend or "",))
    # No gradient to record (cu_seqlens / seqused_k are integer tensors: they never require
    # grad): what the op's Autograd kernel does then, without its Python layer.
    with _below_autograd():
        return _fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, *options, *extra)
