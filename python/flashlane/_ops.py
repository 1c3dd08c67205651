"""torch.library custom ops flashlane::fwd and flashlane::bwd, their fake (meta) implementations
and the autograd formula, so that torch.compile(fullgraph=True) traces flashlane calls as single
opaque nodes and CUDA graphs can capture them.

Tensors go to the extension through DLPack without copies. CUDA tensors are exported with
``__dlpack__(stream=-1)`` (no cross-stream synchronization: flashlane launches on PyTorch's current
stream, passed as an integer), which also keeps CUDA graph capture legal. Host (CPU) tensors run
on reference_cpu.
"""

from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _C
from ._core import _after_cpp_call, raise_if_error


def _dl(t: Optional[Tensor]):
    """A DLPack view of `t` for the extension (no copy)."""
    if t is None:
        return None
    t = t.detach()
    if t.is_cuda:
        return t.__dlpack__(stream=-1)
    return t


def _device_guard(t: Tensor):
    """torch exports CUDA tensors through DLPack only from their own current device."""
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def _stream_of(t: Tensor) -> int:
    if t.is_cuda:
        return int(torch.cuda.current_stream(t.device).cuda_stream)
    return 0


def _check_metadata(t: Tensor, varlen: bool) -> bool:
    """Whether validation may read cu_seqlens / seqused_k. Host tensors: always (cheap). CUDA
    tensors: never while a CUDA graph is being captured (the read is a synchronous copy), and
    never for varlen calls, whose max_seqlen the caller gives (FlashAttention's contract)."""
    if not t.is_cuda:
        return True
    if varlen:
        return False
    return not torch.cuda.is_current_stream_capturing()


def _lse_shape(q: Tensor, varlen: bool) -> List[int]:
    if varlen:  # q [total_q, heads_q, d] -> lse [heads_q, total_q]
        return [q.shape[1], q.shape[0]]
    return [q.shape[0], q.shape[2], q.shape[1]]  # q [b, s, h, d] -> lse [b, h, s]


@torch.library.custom_op("flashlane::fwd", mutates_args=(), device_types=None)
def fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Optional[Tensor],
        cu_seqlens_k: Optional[Tensor], seqused_k: Optional[Tensor], max_seqlen_q: int,
        max_seqlen_k: int, softmax_scale: float, mask: str, window_left: int, window_right: int,
        softcap: float, deterministic: bool, backend: str, strict: bool,
        backward_backend: str = "") -> Tuple[Tensor, Tensor]:
    """Attention forward. Returns (out, lse). `deterministic` and `backward_backend` (the backend
    the autograd backward requests; "" = `backend`, the default) are used by the backward only."""
    varlen = cu_seqlens_q is not None
    out = torch.empty(tuple(q.shape[:-1]) + (v.shape[-1],), dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q, varlen), dtype=torch.float32, device=q.device)
    with _device_guard(q):
        result = _C.forward(_dl(q), _dl(k), _dl(v), _dl(out), _dl(lse), _dl(cu_seqlens_q),
                            _dl(cu_seqlens_k), _dl(seqused_k), max_seqlen_q, max_seqlen_k,
                            softmax_scale, mask, window_left, window_right, softcap, backend,
                            strict, _stream_of(q), _check_metadata(q, varlen))
    _after_cpp_call()
    raise_if_error(result)
    return out, lse


@fwd.register_fake
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
              softmax_scale, mask, window_left, window_right, softcap, deterministic, backend,
              strict, backward_backend=""):
    varlen = cu_seqlens_q is not None
    out = q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],))
    lse = q.new_empty(_lse_shape(q, varlen), dtype=torch.float32)
    return out, lse


@torch.library.custom_op("flashlane::bwd", mutates_args=(), device_types=None)
def bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
        cu_seqlens_q: Optional[Tensor], cu_seqlens_k: Optional[Tensor],
        seqused_k: Optional[Tensor], max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float,
        mask: str, window_left: int, window_right: int, softcap: float, deterministic: bool,
        backend: str, strict: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Attention backward. Returns (dq, dk, dv)."""
    varlen = cu_seqlens_q is not None
    if dout.stride(-1) != 1 or 0 in dout.stride():  # autograd hands expanded gradients too
        dout = dout.contiguous()
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    with _device_guard(q):
        result = _C.backward(_dl(q), _dl(k), _dl(v), _dl(out), _dl(lse), _dl(dout), _dl(dq),
                             _dl(dk), _dl(dv), _dl(cu_seqlens_q), _dl(cu_seqlens_k),
                             _dl(seqused_k), max_seqlen_q, max_seqlen_k, softmax_scale, mask,
                             window_left, window_right, softcap, deterministic, backend, strict,
                             _stream_of(q), _check_metadata(q, varlen))
    _after_cpp_call()
    raise_if_error(result)
    return dq, dk, dv


@bwd.register_fake
def _bwd_fake(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
              max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap,
              deterministic, backend, strict):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k, softmax_scale,
     mask, window_left, window_right, softcap, deterministic, backend, strict,
     backward_backend) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k)
    ctx.opts = (max_seqlen_q, max_seqlen_k, softmax_scale, mask, window_left, window_right,
                softcap, deterministic, backward_backend or backend, strict)


def _backward(ctx, dout, dlse):
    # lse is an auxiliary output: its gradient is not propagated (FlashAttention does the same).
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k = ctx.saved_tensors
    (max_seqlen_q, max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap,
     deterministic, backend, strict) = ctx.opts
    dq, dk, dv = torch.ops.flashlane.bwd(
        dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q,
        max_seqlen_k, softmax_scale, mask, window_left, window_right, softcap, deterministic,
        backend, strict)
    return (dq, dk, dv) + (None,) * 14


fwd.register_autograd(_backward, setup_context=_setup_context)


def attention_op(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None,
                 max_seqlen_q=0, max_seqlen_k=0, softmax_scale: float, mask: str,
                 window=(-1, -1), softcap=0.0, deterministic=False, backend="auto",
                 strict=False, backward_backend=None) -> Tuple[Tensor, Tensor]:
    """Calls flashlane::fwd (differentiable). Returns (out, lse). backward_backend: what the
    autograd backward requests (None: `backend`; the op is then called as before, without it)."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    extra = (backward_backend,) if backward_backend else ()
    return torch.ops.flashlane.fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k,
                                   int(max_seqlen_q), int(max_seqlen_k), float(softmax_scale), mask,
                                   int(window[0]), int(window[1]), float(softcap),
                                   bool(deterministic), backend, bool(strict), *extra)
