"""What flashlane.flash_attn (FlashAttention 2's API) and flashlane.flash_attn_interface
(FlashAttention 3's) share: each version's window normalization, the refusals of arguments
flashlane does not implement (FlashlaneError with a stable reason tag, and a receipt), and the
unpacking of packed qkv / kv tensors into strided views (no copies)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from ._core import FlashlaneError, record_python_receipt


def window_fa2(window_size: Optional[Sequence[int]], causal: bool, seqlen_k: int) -> Tuple[int, int]:
    """FlashAttention 2's normalization of (left, right) (flash_attn 2.x csrc/flash_attn/flash_api.cpp,
    mha_fwd / mha_varlen_fwd): a side >= seqlen_k (varlen: max_seqlen_k) or negative is unbounded
    (-1); causal=True sets right = 0, so causal with (L, R) is (L, 0)."""
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    if left < 0 or left >= seqlen_k:
        left = -1
    if right < 0 or right >= seqlen_k:
        right = -1
    if causal:
        right = 0
    return left, right


def window_fa3(window_size: Optional[Sequence[int]], causal: bool, seqlen_q: int,
               seqlen_k: int) -> Tuple[int, int]:
    """FlashAttention 3's normalization of (left, right) (flash-attention hopper/flash_api.cpp,
    mha_fwd, and hopper/flash_attn_interface.py, _flash_attn_backward): left >= seqlen_k - 1 and
    right >= seqlen_q - 1 (varlen: the max_seqlen values) are unbounded (-1), as are negative
    sizes; causal=True sets right = 0. Both bounds only drop windows that exclude no key."""
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    if left < 0 or left >= seqlen_k - 1:
        left = -1
    if right < 0 or right >= seqlen_q - 1:
        right = -1
    if causal:
        right = 0
    return left, right


def mask_of(causal: bool, window: Tuple[int, int]) -> str:
    """flashlane's mask name for a normalized FlashAttention call: causal (or the window
    (-1, 0), which FlashAttention also treats as causal) is bottom-right aligned."""
    return "causal_bottom_right" if causal or window == (-1, 0) else "no_mask"


def _device_of(x) -> Dict[str, Any]:
    if getattr(x, "is_cuda", False):
        import torch

        major, minor = torch.cuda.get_device_capability(x.device)
        return {"name": torch.cuda.get_device_name(x.device), "sm": major * 10 + minor}
    return {"name": "cpu", "sm": 0}


def refuse(api: str, code: str, tag: str, message: str, like=None, requested: str = "auto",
           strict: bool = False, runtime_mode: str = "fwd"):
    """Raises FlashlaneError(code, message, tag) after recording a receipt of the refused call
    (status = code, error_reason = tag), so that receipt_log() and $FLASHLANE_RECEIPTS show it."""
    record_python_receipt({
        "requested_backend": requested, "actual_backend": "", "runtime_mode": runtime_mode,
        "strict": bool(strict), "fallback_reason": "", "skipped": [{"backend": api, "reason": tag}],
        "variant": "", "device": _device_of(like), "deterministic": False, "status": code,
        "error_reason": tag})
    raise FlashlaneError(code, f"{api}: {message}", tag)


def check_common(api: str, q, *, dropout_p: float = 0.0, alibi_slopes=None,
                 backend: str = "auto", strict: bool = False) -> None:
    """Refusals FlashAttention 2 and 3 share: dropout (flashlane has none) and ALiBi."""
    if dropout_p is not None and float(dropout_p) != 0.0:
        refuse(api, "dropout_unsupported", f"{api}.dropout_unsupported",
               f"dropout_p = {dropout_p}: flashlane implements no dropout (pass 0.0)", q,
               backend, strict)
    if alibi_slopes is not None:
        refuse(api, "invalid_argument", f"{api}.alibi_unsupported",
               "alibi_slopes: flashlane implements no ALiBi bias (pass None)", q, backend, strict)


def unpack_qkv(qkv, dim: int):
    """(q, k, v) views of a packed qkv tensor along `dim` (size 3): no copies; autograd sums the
    three gradients back into qkv."""
    if qkv.shape[dim] != 3:
        raise FlashlaneError("shape_mismatch",
                             f"qkv.shape[{dim}] = {qkv.shape[dim]}: the packed dimension must be 3")
    return _select(qkv, dim, 0), _select(qkv, dim, 1), _select(qkv, dim, 2)


def unpack_kv(kv, dim: int):
    if kv.shape[dim] != 2:
        raise FlashlaneError("shape_mismatch",
                             f"kv.shape[{dim}] = {kv.shape[dim]}: the packed dimension must be 2")
    return _select(kv, dim, 0), _select(kv, dim, 1)


def _select(t, dim: int, i: int):
    # Basic indexing: a strided view for torch tensors and NumPy arrays alike.
    return t[(slice(None),) * (dim % t.ndim) + (i,)]


def split_heads(qkv, num_heads_q: int):
    """FlashAttention 3's 4-dimensional packing: qkv [b, s, h_q + 2 * h_k, d] split along the
    heads into q [.., h_q, d], k and v [.., h_k, d] (views)."""
    total = qkv.shape[-2]
    h_k = (total - num_heads_q) // 2
    if num_heads_q <= 0 or h_k <= 0 or num_heads_q + 2 * h_k != total:
        raise FlashlaneError("shape_mismatch",
                             f"qkv.shape[-2] = {total} is not num_heads_q ({num_heads_q}) + 2 * heads_k")
    idx = (slice(None),) * (qkv.ndim - 2)
    return (qkv[idx + (slice(0, num_heads_q),)],
            qkv[idx + (slice(num_heads_q, num_heads_q + h_k),)],
            qkv[idx + (slice(num_heads_q + h_k, total),)])
