"""FlashAttention-compatible calls, and `attention` with explicit mask names.

Layouts are FlashAttention's: q [batch, seqlen_q, heads_q, head_dim], k/v [batch, seqlen_k,
heads_kv, head_dim(_v)]; varlen packs tokens: q [total_q, heads_q, head_dim] with int32
cu_seqlens [batch + 1]. `causal=True` means causal_bottom_right (FlashAttention >= 2.1); SDPA users
who mean top-left causal (is_causal=True) pass mask="causal". LSE is float32 [batch, heads_q,
seqlen_q] (varlen: [heads_q, total_q]), natural log.

PyTorch tensors (CUDA or CPU) go through the custom op flashlane::fwd (autograd, torch.compile,
CUDA graphs); NumPy arrays run on the host (reference_cpu) without autograd.

Every call takes keyword-only ``learnable_sink``: gpt-oss's attention sinks, FlashAttention 4's
argument of that name (one logit per query head; see the functions' docstrings).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ._core import (check_backend, check_dropout, documents_sink, numpy_forward, resolve_mask,
                    resolve_scale, resolve_window)

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "attention"]


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _torch_int32(t):
    if t is None:
        return None
    import torch

    if t.dtype != torch.int32:
        t = t.to(torch.int32)
    return t


def _max_seqlen(cu, given, name):
    if given is not None and int(given) > 0:
        return int(given)
    if cu is None:
        return 0  # validation names the missing tensor
    if _is_torch(cu):
        import torch

        if cu.is_cuda and torch.cuda.is_current_stream_capturing():
            raise ValueError(f"{name} must be given inside CUDA graph capture "
                             "(computing it reads cu_seqlens on the host)")
        return int((cu[1:] - cu[:-1]).max().item()) if cu.numel() > 1 else 0
    import numpy as np

    cu = np.asarray(cu)
    return int((cu[1:] - cu[:-1]).max()) if cu.size > 1 else 0


#: _ops.attention_op, set when flashlane registers its torch ops (flashlane/__init__.py); the
#: package works without torch, so interface.py does not import _ops itself.
_attention_op = None


def _run(q, k, v, *, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
         softmax_scale, mask, window_size, softcap, deterministic, return_lse, backend, strict,
         backward_backend=None, learnable_sink=None):
    check_backend(backend)
    if backward_backend is not None:
        check_backend(backward_backend)
    window = resolve_window(window_size)
    scale = resolve_scale(softmax_scale, q.shape[-1])
    if _is_torch(q):
        attention_op = _attention_op
        if attention_op is None:
            from ._ops import attention_op
        out, lse = attention_op(q, k, v, cu_seqlens_q=_torch_int32(cu_seqlens_q),
                                cu_seqlens_k=_torch_int32(cu_seqlens_k),
                                seqused_k=_torch_int32(seqused_k), max_seqlen_q=max_seqlen_q,
                                max_seqlen_k=max_seqlen_k, softmax_scale=scale, mask=mask,
                                window=window, softcap=softcap, deterministic=deterministic,
                                backend=backend, strict=strict,
                                backward_backend=backward_backend, learnable_sink=learnable_sink)
    else:  # NumPy: no autograd, so no backward to direct
        out, lse = numpy_forward(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                 seqused_k=seqused_k, max_seqlen_q=max_seqlen_q,
                                 max_seqlen_k=max_seqlen_k, softmax_scale=scale, mask=mask,
                                 window=window, softcap=softcap, backend=backend, strict=strict,
                                 learnable_sink=learnable_sink)
    return (out, lse) if return_lse else out


@documents_sink()
def flash_attn_func(q, k, v, softmax_scale: Optional[float] = None, causal: bool = False,
                    window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                    deterministic: bool = False, return_lse: bool = False, backend: str = "auto",
                    strict: bool = False, mask: Optional[str] = None, *,
                    seqused_k=None, dropout_p: float = 0.0,
                    backward_backend: Optional[str] = None, learnable_sink=None):
    """FlashAttention's flash_attn_func. q [b, s_q, h_q, d], k/v [b, s_k, h_kv, d(_v)].

    causal=True is bottom-right aligned (FlashAttention); mask= names the mask explicitly
    ("no_mask", "causal" = top-left as SDPA's is_causal, "causal_bottom_right"); giving both
    raises ValueError unless they agree. window_size (left, right), -1 = unbounded, aligned like
    the causal diagonal. softcap > 0: score = softcap * tanh(score / softcap). deterministic
    applies to the backward. backend: "auto" or a backend name; strict=True fails (FlashlaneError
    with the reason tag) instead of falling back. backward_backend (keyword only, torch autograd
    only): the backend the backward requests, with the same strictness; None (the default) means
    `backend`. Returns out, or (out, lse) with return_lse.
    """
    check_dropout(dropout_p)
    return _run(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=seqused_k,
                max_seqlen_q=0, max_seqlen_k=0, softmax_scale=softmax_scale,
                mask=resolve_mask(causal, mask), window_size=window_size, softcap=softcap,
                deterministic=deterministic, return_lse=return_lse, backend=backend,
                strict=strict, backward_backend=backward_backend, learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
                           max_seqlen_k=None, softmax_scale: Optional[float] = None,
                           causal: bool = False, window_size: Sequence[int] = (-1, -1),
                           softcap: float = 0.0, deterministic: bool = False,
                           return_lse: bool = False, backend: str = "auto", strict: bool = False,
                           mask: Optional[str] = None, seqused_k=None, *,
                           dropout_p: float = 0.0, backward_backend: Optional[str] = None,
                           learnable_sink=None):
    """FlashAttention's flash_attn_varlen_func: q [total_q, h_q, d], k/v [total_k, h_kv, d(_v)],
    int32 cu_seqlens_q / cu_seqlens_k [batch + 1]; optional int32 seqused_k [batch].

    max_seqlen_q / max_seqlen_k bound the sequence lengths; when None they are computed from
    cu_seqlens (a device-to-host read for CUDA tensors: not allowed inside CUDA graph capture).
    Other arguments as flash_attn_func. Returns out [total_q, h_q, d_v], or (out, lse) with lse
    float32 [h_q, total_q].
    """
    check_dropout(dropout_p)
    max_q = _max_seqlen(cu_seqlens_q, max_seqlen_q, "max_seqlen_q")
    max_k = _max_seqlen(cu_seqlens_k, max_seqlen_k, "max_seqlen_k")
    return _run(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                seqused_k=seqused_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
                softmax_scale=softmax_scale, mask=resolve_mask(causal, mask),
                window_size=window_size, softcap=softcap, deterministic=deterministic,
                return_lse=return_lse, backend=backend, strict=strict,
                backward_backend=backward_backend, learnable_sink=learnable_sink)


@documents_sink()
def attention(q, k, v, mask: str = "no_mask", *, softmax_scale: Optional[float] = None,
              window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
              cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
              seqused_k=None, deterministic: bool = False, return_lse: bool = False,
              backend: str = "auto", strict: bool = False,
              backward_backend: Optional[str] = None, learnable_sink=None):
    """Attention with the mask named explicitly: "no_mask", "causal" (top-left, as SDPA's
    is_causal=True) or "causal_bottom_right". FlashAttention layouts (bshd, or varlen when
    cu_seqlens_q is given). Other arguments as flash_attn_func."""
    mask = resolve_mask(False, mask)
    if cu_seqlens_q is not None:
        max_q = _max_seqlen(cu_seqlens_q, max_seqlen_q, "max_seqlen_q")
        max_k = _max_seqlen(cu_seqlens_k, max_seqlen_k, "max_seqlen_k")
    else:
        max_q = max_k = 0
    return _run(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                seqused_k=seqused_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
                softmax_scale=softmax_scale, mask=mask, window_size=window_size, softcap=softcap,
                deterministic=deterministic, return_lse=return_lse, backend=backend,
                strict=strict, backward_backend=backward_backend, learnable_sink=learnable_sink)
