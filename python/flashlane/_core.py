"""Errors, receipts and the NumPy path: everything that needs neither torch nor a GPU."""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import _C

MASK_NAMES = ("no_mask", "causal", "causal_bottom_right")
#: "auto" and every backend the library registered (src/dispatch/backend_registry.cpp).
BACKEND_NAMES: Tuple[str, ...] = ("auto",) + tuple(_C.backend_names())

#: Stable error code names -> numeric values (include/flashlane/status.h).
ERROR_CODES: Dict[str, int] = dict(_C.error_codes())


class FlashlaneError(RuntimeError):
    """A flashlane call failed. Nothing was launched unless ``code`` is ``cuda_error``
    (``cuda_error_pending``: a CUDA error of the caller's earlier work was pending when the call
    began; nothing was launched and the error is left pending for the caller).

    Attributes:
        code: stable snake_case name of the error code ("head_dim_invalid", "backend_inapplicable").
        code_value: its numeric value (ErrorCode in include/flashlane/status.h).
        reason_tag: the applicability rule that refused ("sm90.requires_sm90"), or "".
        message: the message naming the argument and its value.
    """

    def __init__(self, code: str, message: str, reason_tag: str = "", code_value: Optional[int] = None):
        self.code = code
        self.code_value = ERROR_CODES.get(code, -1) if code_value is None else code_value
        self.reason_tag = reason_tag
        self.message = message
        text = f"{code}: {message}"
        if reason_tag:
            text += f" [{reason_tag}]"
        super().__init__(text)

    def __reduce__(self):
        return (FlashlaneError, (self.code, self.message, self.reason_tag, self.code_value))


# ------------------------------------------------------------------------------------------------
# Receipts. The C++ library keeps the last receipt per thread; the Python layer remembers, per
# thread, whether the last flashlane event was a C++ call or a Python-side decision (the
# transformers integration falling back to PyTorch SDPA), and lets callers collect every receipt
# made inside a block, from any thread (autograd runs backward on its own threads).

_tls = threading.local()
_collectors: List[List[Dict[str, Any]]] = []
_collectors_lock = threading.Lock()


def _cpp_receipt_json() -> Dict[str, Any]:
    return json.loads(_C.last_receipt_json())


#: This thread's C++ receipt as a dict: the extension builds it directly (the dict json.loads
#: makes of last_receipt_json(), without printing and parsing JSON); an extension built before
#: last_receipt_dict existed goes through JSON.
_cpp_receipt = getattr(_C, "last_receipt_dict", _cpp_receipt_json)


def _receipt_to_collectors() -> None:
    """Hands this thread's C++ receipt, as a dict, to every active receipt_log() block."""
    receipt = _cpp_receipt()
    with _collectors_lock:
        for c in _collectors:
            c.append(receipt)


def _after_cpp_call() -> None:
    """Called after every _C.forward/_C.backward (the torch ops inline it: _ops._call)."""
    _tls.python_receipt = None
    if _collectors:
        _receipt_to_collectors()


def record_python_receipt(receipt: Dict[str, Any]) -> None:
    """Records a receipt made by the Python layer (e.g. a visible fallback to PyTorch SDPA):
    it becomes this thread's last_receipt(), goes to active receipt_log() blocks, and is appended
    to $FLASHLANE_RECEIPTS like the C++ receipts."""
    _tls.python_receipt = dict(receipt)
    with _collectors_lock:
        for c in _collectors:
            c.append(dict(receipt))
    path = os.environ.get("FLASHLANE_RECEIPTS")
    if path:
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(receipt, separators=(",", ":")) + "\n")
        except OSError:
            pass  # best effort, like the C++ sink


def last_receipt() -> Dict[str, Any]:
    """The receipt of the last flashlane call made on this thread, as a dict (schema:
    docs/RECEIPTS.md): requested_backend, actual_backend, runtime_mode, strict, fallback_reason,
    skipped [{backend, reason}], variant, device {name, sm}, deterministic, status, error_reason.

    Backward passes run by torch.autograd happen on autograd's threads: use receipt_log() to see
    them. Replays of a captured CUDA graph run no Python and leave no receipt."""
    pr = getattr(_tls, "python_receipt", None)
    if pr is not None:
        return dict(pr)
    return _cpp_receipt()


@contextlib.contextmanager
def receipt_log() -> Iterator[List[Dict[str, Any]]]:
    """Collects the receipt of every flashlane call made inside the block, on any thread::

        with flashlane.receipt_log() as receipts:
            loss = model(x).sum(); loss.backward()
        assert all(r["status"] == "ok" for r in receipts)
    """
    sink: List[Dict[str, Any]] = []
    with _collectors_lock:
        _collectors.append(sink)
    try:
        yield sink
    finally:
        with _collectors_lock:
            _collectors.remove(sink)


def raise_if_error(result) -> None:
    if result is not None:
        code, value, message, tag = result
        raise FlashlaneError(code, message, tag, value)


# ------------------------------------------------------------------------------------------------
# Argument resolution shared by the NumPy and torch paths.

def resolve_mask(causal: bool, mask: Optional[str]) -> str:
    """FlashAttention's causal=True is causal_bottom_right. `mask` names the mask explicitly
    (no_mask, causal = top-left as SDPA's is_causal, causal_bottom_right)."""
    if mask is None:
        return "causal_bottom_right" if causal else "no_mask"
    if mask not in MASK_NAMES:
        raise ValueError(f"mask={mask!r}: expected one of {', '.join(MASK_NAMES)}")
    if causal and mask != "causal_bottom_right":
        raise ValueError(
            f"causal=True (FlashAttention's meaning: causal_bottom_right) conflicts with mask={mask!r}; "
            "give only one of them")
    return mask


def resolve_window(window_size: Sequence[int]) -> Tuple[int, int]:
    if window_size is None:
        return -1, -1
    left, right = window_size
    return int(left), int(right)


def resolve_scale(softmax_scale: Optional[float], head_dim: int) -> float:
    return float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(head_dim)


def check_backend(backend: str) -> str:
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKEND_NAMES)}")
    return backend


def check_dropout(dropout_p: float) -> None:
    if dropout_p != 0.0:
        raise FlashlaneError("dropout_unsupported",
                             f"dropout_p = {dropout_p} (dropout is not supported; must be 0)")


#: The learnable_sink paragraph of every front's docstring (documents_sink appends it).
SINK_DOC = """
    learnable_sink (keyword only): None, or attention sinks: one logit per query head, shape
    [heads_q] (a torch tensor on q's device, a NumPy array, or a sequence of numbers). Any float
    dtype: the library computes with float32 sinks ({conversion}). The sink of head h joins
    the softmax of every row of head h as a key without a value, in the units of the final
    scores (after softmax_scale and softcap; the sink itself is neither scaled nor capped):
    lse_i = log(exp(sink_h) + sum_j exp(s_ij)), p_ij = exp(s_ij - lse_i), out_i = sum_j p_ij v_j.
    So a row's weights sum to less than 1, the returned LSE includes the sink, and a row that sees
    no key gives out = 0 and lse = sink_h. These are gpt-oss's attention sinks (transformers'
    GptOssAttention.sinks, passed to attention functions as s_aux) and FlashAttention 4's
    learnable_sink (include/flashlane/problem.h, "Attention sinks")."""


def documents_sink(grad: bool = True):
    """Appends SINK_DOC to the decorated function's docstring (grad=False: forward-only calls)."""
    def decorate(fn):
        text = SINK_DOC.format(conversion=(
            "others are converted for the call, and autograd returns a torch tensor's gradient "
            "in its own dtype" if grad else "others are converted for the call, which has no "
            "backward"))
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + text
        return fn
    return decorate


# ------------------------------------------------------------------------------------------------
# NumPy: host arrays, run by reference_cpu (or refused, with the tag, by any other backend).

def _np_int32(np, a):
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype != np.int32 and np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.int32)
    return a


def np_sink(np, learnable_sink):
    """The sinks as the C++ API takes them: a contiguous float32 array (other float dtypes and
    sequences of numbers are converted; anything else goes on as it is, for validation to name)."""
    if learnable_sink is None:
        return None
    a = np.asarray(learnable_sink)
    if np.issubdtype(a.dtype, np.floating) and a.dtype != np.float32:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def numpy_forward(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, seqused_k=None,
                  max_seqlen_q=0, max_seqlen_k=0, softmax_scale, mask, window, softcap,
                  backend, strict, learnable_sink=None):
    import numpy as np

    varlen = cu_seqlens_q is not None
    out = np.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
    if varlen:
        lse = np.empty((q.shape[1], q.shape[0]), dtype=np.float32)
    else:
        lse = np.empty((q.shape[0], q.shape[2], q.shape[1]), dtype=np.float32)
    result = _C.forward(q, k, v, out, lse, _np_int32(np, cu_seqlens_q), _np_int32(np, cu_seqlens_k),
                        _np_int32(np, seqused_k), np_sink(np, learnable_sink),
                        int(max_seqlen_q or 0), int(max_seqlen_k or 0),
                        softmax_scale, mask, window[0], window[1], float(softcap), backend,
                        bool(strict), 0, True)
    _after_cpp_call()
    raise_if_error(result)
    return out, lse


def numpy_backward(dout, q, k, v, out, lse, *, cu_seqlens_q=None, cu_seqlens_k=None,
                   seqused_k=None, max_seqlen_q=0, max_seqlen_k=0, softmax_scale, mask, window,
                   softcap, deterministic=False, backend="auto", strict=False,
                   learnable_sink=None):
    """Gradients (dq, dk, dv) of host arrays; FlashAttention's backward contract. With
    learnable_sink (lse then the forward's, sinks included): (dq, dk, dv, dlearnable_sink), the
    sinks' gradient in learnable_sink's dtype (float32 for a sequence of numbers)."""
    import numpy as np

    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    sink = np_sink(np, learnable_sink)
    dsink = None if sink is None else np.empty(sink.shape, dtype=np.float32)
    result = _C.backward(q, k, v, out, lse, dout, dq, dk, dv, _np_int32(np, cu_seqlens_q),
                         _np_int32(np, cu_seqlens_k), _np_int32(np, seqused_k), sink, dsink,
                         int(max_seqlen_q or 0), int(max_seqlen_k or 0), softmax_scale, mask,
                         window[0], window[1], float(softcap), bool(deterministic), backend,
                         bool(strict), 0, True)
    _after_cpp_call()
    raise_if_error(result)
    if dsink is None:
        return dq, dk, dv
    like = getattr(learnable_sink, "dtype", np.float32)
    return dq, dk, dv, dsink.astype(like if np.issubdtype(like, np.floating) else np.float32)
