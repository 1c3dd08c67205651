"""flashlane as PyTorch's SDPA flash-attention implementation.

    import flashlane.torch as fl_torch
    fl_torch.activate()                      # or: torch.nn.attention.activate_flash_attention_impl("flashlane")
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)    # flash-eligible: runs on flashlane
    fl_torch.deactivate()                    # PyTorch's own flash kernel again

The contract is PyTorch's (torch >= 2.11, torch/nn/attention/_registry.py and the FA4 provider
torch/nn/attention/_fa4.py): a provider registers a function under a name with
``torch.nn.attention.register_flash_attention_impl``; ``activate_flash_attention_impl(name)``
calls it, and it replaces the CUDA kernels of ``aten::_scaled_dot_product_flash_attention`` (what
SDPA's flash backend calls), its backward, and ``aten::_flash_attention_forward`` / ``_backward``
(the FlashAttention-level ops) through a ``torch.library.Library``; the handle it returns
removes them again (``restore_flash_attention_impl``). flashlane registers the name "flashlane"
when it is imported (with torch >= 2.11) and activates nothing: only ``activate()`` or
``activate_flash_attention_impl("flashlane")`` do.

PyTorch still decides which SDPA calls are flash-eligible (fp16/bf16 CUDA tensors, no attn_mask,
...); calls it sends to another backend never reach flashlane and leave no flashlane receipt.
While active, the flash backend is first in SDPA's priority order (on sm90 PyTorch otherwise puts
cuDNN first, and flash-eligible calls would go there); the previous order comes back with the
kernels' removal.
Every call that reaches flashlane leaves one: the forward and (on autograd's thread) the
backward, each naming what ran (``flashlane.receipt_log()`` collects both).

Semantics: SDPA's ``is_causal=True`` is top-left aligned (flashlane mask "causal");
``aten::_flash_attention_forward``'s ``is_causal`` is FlashAttention 2's (bottom-right), with its
windows normalized as flashlane.flash_attn does. The backward is deterministic when
``torch.are_deterministic_algorithms_enabled()`` (as the FA4 provider does), else flashlane's
default. ``scale=None`` is 1 / sqrt(head_dim).

Calls flashlane cannot serve: dropout (``dropout_p > 0``), ``return_debug_mask``, ALiBi slopes.
With ``strict=True`` (see ``activate``) they raise FlashlaneError with the tag
(``torch_sdpa.dropout_unsupported``, ...). Otherwise an SDPA call with dropout goes where SDPA's
own priority order sends a call the flash backend does not take: PyTorch's memory-efficient
kernel (forward and backward), and the receipt says so (``actual_backend``
"torch_sdpa_efficient", ``fallback_reason`` the tag). The other refusals raise in both modes: no
PyTorch kernel serves them in the flash op's place (the FA4 provider raises likewise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

import torch

from ._core import FlashlaneError, check_backend, record_python_receipt
from ._fa_compat import window_fa2
from ._ops import _backward_cpp, _call, _forward_cpp

__all__ = ["NAME", "activate", "deactivate", "activated", "is_active", "settings"]

#: The name flashlane registers with torch.nn.attention.register_flash_attention_impl.
NAME = "flashlane"
_API = "torch_sdpa"
_DEFAULT_KEYS = ("CUDA",)


@dataclass
class _Settings:
    backend: str = "auto"
    strict: bool = False


_settings = _Settings()
_handle: Optional["_Handle"] = None


class _Handle:
    """What the register function returns (torch's FlashAttentionHandle): remove() takes the
    kernels out of the dispatcher again (PyTorch's own flash kernels are back)."""

    def __init__(self, library, keys: Sequence[str], saved_priority=None):
        self.library = library
        self.keys = tuple(keys)
        self.saved_priority = saved_priority

    def remove(self) -> None:
        global _handle
        if self.library is not None:
            self.library._destroy()
            self.library = None
        if self.saved_priority is not None:
            torch._C._set_sdp_priority_order(self.saved_priority)
            self.saved_priority = None
        if _handle is self:
            _handle = None


# ------------------------------------------------------------------------------------------------
# Receipts and refusals of the Python layer.

def _device(t: torch.Tensor) -> Dict[str, Any]:
    if t.is_cuda:
        major, minor = torch.cuda.get_device_capability(t.device)
        return {"name": torch.cuda.get_device_name(t.device), "sm": major * 10 + minor}
    return {"name": "cpu", "sm": 0}


def _receipt(t: torch.Tensor, mode: str, **fields) -> Dict[str, Any]:
    r = {"requested_backend": _settings.backend, "actual_backend": "", "runtime_mode": mode,
         "strict": _settings.strict, "fallback_reason": "", "skipped": [], "variant": "",
         "device": _device(t), "deterministic": False, "status": "ok", "error_reason": ""}
    r.update(fields)
    return r


def _refuse(t: torch.Tensor, mode: str, why: str, message: str, code: str = "invalid_argument"):
    tag = f"{_API}.{why}"
    record_python_receipt(_receipt(t, mode, status=code, error_reason=tag,
                                   skipped=[{"backend": NAME, "reason": tag}]))
    raise FlashlaneError(code, f"PyTorch SDPA through flashlane: {message}", tag)


def _fallback_receipt(t: torch.Tensor, mode: str, why: str, ran: str) -> None:
    tag = f"{_API}.{why}"
    record_python_receipt(_receipt(t, mode, actual_backend=ran, fallback_reason=tag,
                                   skipped=[{"backend": NAME, "reason": tag}],
                                   variant=f"aten.{ran}"))


# ------------------------------------------------------------------------------------------------
# The kernels.

def _bshd(t: torch.Tensor) -> torch.Tensor:
    """[b, h, s, d] -> a [b, s, h, d] view (a copy only when the last dimension is strided)."""
    t = t.transpose(1, 2)
    if t.stride(-1) != 1 or 0 in t.stride():
        t = t.contiguous()
    return t


def _scale(scale: Optional[float], head_dim: int) -> float:
    return float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)


def _zeros_rng(device):
    return (torch.zeros((2,), dtype=torch.uint64, device=device),
            torch.zeros((), dtype=torch.uint64, device=device))


def _repeat_kv(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def _sdpa_flash_fwd(query, key, value, dropout_p=0.0, is_causal=False, return_debug_mask=False,
                    *, scale=None):
    """aten::_scaled_dot_product_flash_attention: q [b, h_q, s_q, d], k/v [b, h_kv, s_k, d]."""
    if return_debug_mask:
        _refuse(query, "fwd", "debug_mask_unsupported",
                "return_debug_mask=True: flashlane computes no attention probabilities")
    b, h, sq, d = query.shape
    sk = key.shape[2]
    if dropout_p != 0.0:
        if _settings.strict or not query.is_cuda:
            _refuse(query, "fwd", "dropout_unsupported",
                    f"dropout_p = {dropout_p}: flashlane implements no dropout",
                    "dropout_unsupported")
        g = h // key.shape[1]
        out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, _repeat_kv(key, g), _repeat_kv(value, g), None, True, dropout_p, is_causal,
            scale=scale)
        _fallback_receipt(query, "fwd", "dropout_unsupported", "torch_sdpa_efficient")
        return (out, lse, None, None, sq, sk, seed, offset,
                torch.empty(0, dtype=query.dtype, device=query.device))
    if value.shape[-1] == d:
        out = torch.empty_like(query)
    else:
        out = query.new_empty((b, sq, h, value.shape[-1])).transpose(1, 2)
    lse = torch.empty((b, h, sq), dtype=torch.float32, device=query.device)
    q, k, v = _bshd(query), _bshd(key), _bshd(value)
    _call(_forward_cpp, q, False, (q, k, v, out.transpose(1, 2), lse, None, None, None, None),
          (0, 0, _scale(scale, d), "causal" if is_causal else "no_mask", -1, -1, 0.0,
           _settings.backend, _settings.strict))
    rng, offset = _zeros_rng(query.device)
    return (out, lse, None, None, sq, sk, rng, offset,
            torch.empty(0, dtype=query.dtype, device=query.device))


def _sdpa_flash_bwd(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q,
                    max_k, dropout_p, is_causal, philox_seed, philox_offset, *, scale=None):
    """aten::_scaled_dot_product_flash_attention_backward: the gradients of _sdpa_flash_fwd."""
    d = query.shape[-1]
    if dropout_p != 0.0:  # the forward ran PyTorch's memory-efficient kernel: so does this
        if _settings.strict or not query.is_cuda:
            _refuse(query, "bwd", "dropout_unsupported",
                    f"dropout_p = {dropout_p}: flashlane implements no dropout",
                    "dropout_unsupported")
        g = query.shape[1] // key.shape[1]
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            grad_out, query, _repeat_kv(key, g), _repeat_kv(value, g), None, out, logsumexp,
            philox_seed, philox_offset, dropout_p, [True, True, True, False], is_causal,
            scale=scale)
        if g != 1:
            b, h, s, _ = dk.shape
            dk = dk.view(b, h // g, g, s, -1).sum(2)
            dv = dv.view(b, h // g, g, s, -1).sum(2)
        _fallback_receipt(query, "bwd", "dropout_unsupported", "torch_sdpa_efficient")
        return dq, dk, dv
    dq, dk, dv = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
    q, k, v, o, do = (_bshd(t) for t in (query, key, value, out, grad_out))
    _call(_backward_cpp, q, False,
          (q, k, v, o, logsumexp, do, dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2),
           None, None, None, None, None),
          (0, 0, _scale(scale, d), "causal" if is_causal else "no_mask", -1, -1, 0.0,
           torch.are_deterministic_algorithms_enabled(), _settings.backend, _settings.strict))
    return dq, dk, dv


def _fa_window(window_size_left, window_size_right, is_causal, seqlen_k):
    left = -1 if window_size_left is None else int(window_size_left)
    right = -1 if window_size_right is None else int(window_size_right)
    return window_fa2((left, right), bool(is_causal), int(seqlen_k))


def _fa_mask(is_causal, window):
    return "causal_bottom_right" if is_causal or window == (-1, 0) else "no_mask"


def _flash_fwd(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
               return_debug_mask, *, scale=None, window_size_left=None, window_size_right=None,
               seqused_k=None, alibi_slopes=None):
    """aten::_flash_attention_forward: FlashAttention 2's layouts (bshd, or varlen with
    cum_seq_q / cum_seq_k) and semantics (causal bottom-right, its window normalization)."""
    if return_debug_mask:
        _refuse(query, "fwd", "debug_mask_unsupported",
                "return_debug_mask=True: flashlane computes no attention probabilities")
    if dropout_p != 0.0:
        _refuse(query, "fwd", "dropout_unsupported",
                f"dropout_p = {dropout_p}: flashlane implements no dropout", "dropout_unsupported")
    if alibi_slopes is not None:
        _refuse(query, "fwd", "alibi_unsupported", "alibi_slopes: flashlane implements no ALiBi")
    varlen = cum_seq_q is not None
    seqlen_k = int(max_k) if varlen else key.shape[1]
    window = _fa_window(window_size_left, window_size_right, is_causal, seqlen_k)
    out = query.new_empty(tuple(query.shape[:-1]) + (value.shape[-1],))
    if varlen:
        lse = torch.empty((query.shape[1], query.shape[0]), dtype=torch.float32, device=query.device)
    else:
        lse = torch.empty((query.shape[0], query.shape[2], query.shape[1]), dtype=torch.float32,
                          device=query.device)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    _call(_forward_cpp, q, varlen, (q, k, v, out, lse, cum_seq_q, cum_seq_k, seqused_k, None),
          (int(max_q) if varlen else 0, int(max_k) if varlen else 0,
           _scale(scale, query.shape[-1]), _fa_mask(is_causal, window), window[0], window[1],
           0.0, _settings.backend, _settings.strict))
    rng, offset = _zeros_rng(query.device)
    return out, lse, rng, offset, torch.empty(0, dtype=query.dtype, device=query.device)


def _flash_bwd(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k,
               dropout_p, is_causal, rng_state, unused, *, scale=None, window_size_left=None,
               window_size_right=None):
    """aten::_flash_attention_backward: the gradients of _flash_fwd."""
    if dropout_p != 0.0:
        _refuse(query, "bwd", "dropout_unsupported",
                f"dropout_p = {dropout_p}: flashlane implements no dropout", "dropout_unsupported")
    varlen = cum_seq_q is not None
    seqlen_k = int(max_k) if varlen else key.shape[1]
    window = _fa_window(window_size_left, window_size_right, is_causal, seqlen_k)
    if grad_out.stride(-1) != 1 or 0 in grad_out.stride():
        grad_out = grad_out.contiguous()
    q, k, v, o = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value, out))
    dq, dk, dv = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    _call(_backward_cpp, q, varlen,
          (q, k, v, o, logsumexp, grad_out, dq, dk, dv, cum_seq_q, cum_seq_k, None, None, None),
          (int(max_q) if varlen else 0, int(max_k) if varlen else 0,
           _scale(scale, query.shape[-1]), _fa_mask(is_causal, window), window[0], window[1],
           0.0, torch.are_deterministic_algorithms_enabled(), _settings.backend,
           _settings.strict))
    return dq, dk, dv


_KERNELS = (("_scaled_dot_product_flash_attention", _sdpa_flash_fwd),
            ("_scaled_dot_product_flash_attention_backward", _sdpa_flash_bwd),
            ("_flash_attention_forward", _flash_fwd),
            ("_flash_attention_backward", _flash_bwd))


# ------------------------------------------------------------------------------------------------
# Registration and activation.

def _register_kernels(dispatch_keys: Sequence[str] = _DEFAULT_KEYS) -> _Handle:
    """torch's register_fn for "flashlane": puts flashlane's kernels into the dispatcher for
    `dispatch_keys` (CUDA; tests use CPU) and returns the handle that takes them out."""
    global _handle
    if _handle is not None:
        _handle.remove()
    lib = torch.library.Library("aten", "IMPL")  # noqa: TOR901 (as torch's own FA4 provider)
    with warnings.catch_warnings():  # "overriding a previously registered kernel": the point
        warnings.simplefilter("ignore")
        for key in dispatch_keys:
            for op, fn in _KERNELS:
                lib.impl(op, fn, key)
    _handle = _Handle(lib, dispatch_keys, _flash_first() if "CUDA" in dispatch_keys else None)
    return _handle


def _flash_first():
    """Puts SDPA's flash backend first in PyTorch's priority order and returns the previous order
    (None when unchanged). On sm90 / sm100 with a recent cuDNN, PyTorch initializes the order
    with cuDNN first (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp, priority_order and
    check_prefer_cudnn_attention), which would hand flash-eligible calls to cuDNN. It does so
    lazily, at the first backend selection (reading the order does not), and would then overwrite
    an order set before: one selection on a tiny CUDA problem (torch._fused_sdp_choice, which
    launches nothing) initializes it first. Calls the flash backend does not take still go to the
    next backend of the previous order."""
    get = getattr(torch._C, "_get_sdp_priority_order", None)
    set_ = getattr(torch._C, "_set_sdp_priority_order", None)
    if get is None or set_ is None:
        return None
    if torch.cuda.is_available() and hasattr(torch, "_fused_sdp_choice"):
        t = torch.zeros((1, 1, 1, 8), dtype=torch.float16, device="cuda")
        torch._fused_sdp_choice(t, t, t)
    previous = [int(b) for b in get()]
    flash = int(torch.nn.attention.SDPBackend.FLASH_ATTENTION)
    order = [flash] + [b for b in previous if b != flash]
    if order == previous:
        return None
    set_(order)
    return previous


def _torch_registry():
    """torch.nn.attention's registry functions (torch >= 2.11), or None."""
    import torch.nn.attention as tna

    if not hasattr(tna, "register_flash_attention_impl"):
        return None
    return tna


def _register_provider() -> bool:
    """Registers the name "flashlane" with torch's flash-attention registry (no activation).
    Called when flashlane is imported. Returns whether torch has the registry."""
    tna = _torch_registry()
    if tna is None:
        return False
    tna.register_flash_attention_impl(NAME, register_fn=_register_kernels)
    return True


def activate(backend: str = "auto", strict: bool = False, *,
             dispatch_keys: Sequence[str] = _DEFAULT_KEYS) -> None:
    """Makes flashlane PyTorch's SDPA flash implementation (forward and backward).

    backend / strict: the flashlane Request of every call ("auto": sm90, then reference_cuda;
    strict=True raises FlashlaneError with the reason tag instead of falling back, also for the
    calls of the module docstring that would otherwise go to PyTorch's memory-efficient kernel).
    With torch >= 2.11 this is ``torch.nn.attention.activate_flash_attention_impl("flashlane")``
    (so ``current_flash_attention_impl()`` says "flashlane"); older torch gets the same kernels
    directly. dispatch_keys: the dispatch keys the kernels are registered for (CUDA; the CPU
    tests pass ("CPU",) to drive the aten ops with host tensors)."""
    _settings.backend = check_backend(backend)
    _settings.strict = bool(strict)
    tna = _torch_registry()
    if tna is not None and tuple(dispatch_keys) == _DEFAULT_KEYS:
        _register_provider()
        tna.activate_flash_attention_impl(NAME)
    else:
        deactivate()
        _register_kernels(tuple(dispatch_keys))


def deactivate() -> None:
    """Gives SDPA's flash backend back to PyTorch's own kernels. No-op when not active."""
    tna = _torch_registry()
    if tna is not None and tna.current_flash_attention_impl() == NAME:
        tna.restore_flash_attention_impl()
    if _handle is not None:
        _handle.remove()


def is_active() -> bool:
    """Whether flashlane's kernels are in the dispatcher now."""
    return _handle is not None and _handle.library is not None


@contextlib.contextmanager
def activated(backend: str = "auto", strict: bool = False, *,
              dispatch_keys: Sequence[str] = _DEFAULT_KEYS) -> Iterator[Dict[str, Any]]:
    """activate() for the block, then deactivate() (also when the block raises)."""
    saved = dataclasses.replace(_settings)
    activate(backend, strict, dispatch_keys=dispatch_keys)
    try:
        yield settings()
    finally:
        deactivate()
        _settings.backend, _settings.strict = saved.backend, saved.strict


def settings() -> Dict[str, Any]:
    """{"backend", "strict", "active", "dispatch_keys"}."""
    return dict(dataclasses.asdict(_settings), active=is_active(),
                dispatch_keys=_handle.keys if is_active() else ())
