"""FlashAttention 2's Python API on flashlane: change ``from flash_attn import ...`` to
``from flashlane.flash_attn import ...`` and every call, positional or by keyword, means what it
meant.

Signatures, layouts and return values follow flash_attn 2.x flash_attn/flash_attn_interface.py
(re-exported by the ``flash_attn`` package): ``dropout_p`` is the 4th positional argument of
flash_attn_func, then softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
return_attn_probs. Semantics:

- ``causal=True`` is aligned to the bottom-right corner of the score matrix (flash_attn >= 2.1).
- ``window_size=(left, right)``: query i sees keys in [i + s_k - s_q - left, i + s_k - s_q + right];
  a side that is negative or >= seqlen_k (varlen: max_seqlen_k) is unbounded, and causal=True
  makes right 0, so causal with (L, R) is causal with (L, 0) (csrc/flash_attn/flash_api.cpp).
- ``softmax_scale=None`` is 1 / sqrt(head_dim); ``softcap > 0``: score = softcap * tanh(score / softcap).
- ``deterministic=True`` selects the deterministic backward (flashlane's backward receipts then
  name a ``+deterministic`` variant); the forward is deterministic either way.
- GQA/MQA: heads_q % heads_kv == 0.

Not implemented, refused with FlashlaneError (``.code``, ``.reason_tag``) and a receipt:
``dropout_p != 0`` (dropout_unsupported, ``flash_attn.dropout_unsupported``), ``alibi_slopes``
(``flash_attn.alibi_unsupported``), ``return_attn_probs=True`` (``flash_attn.attn_probs_unavailable``:
FlashAttention 2 then returns ``(out, softmax_lse, S_dmask)`` and flashlane computes no
probabilities), ``block_table`` (``flash_attn.block_table_unsupported``).

flashlane additions, keyword only (so that positional calls keep FlashAttention 2's meaning):
``backend`` ("auto" or a backend name) and ``strict``, as in flashlane.flash_attn_func, and
``learnable_sink``: attention sinks [heads_q] (gpt-oss; FlashAttention 4's ``learnable_sink``,
which FlashAttention 2 does not have; see each function's docstring). PyTorch tensors get
autograd (the sinks' gradient included); NumPy arrays run on reference_cpu.
"""

from __future__ import annotations

from typing import Optional, Sequence

from . import interface as _iface
from ._core import documents_sink
from ._fa_compat import check_common, mask_of, refuse, unpack_kv, unpack_qkv, window_fa2

__all__ = ["flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func",
           "flash_attn_varlen_func", "flash_attn_varlen_kvpacked_func",
           "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache"]

_API = "flash_attn"
#: The FlashAttention version whose semantics this module follows.
FLASH_ATTN_VERSION = 2


def _attend(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size,
            softcap, alibi_slopes, deterministic, return_attn_probs, backend, strict,
            block_table=None, *, learnable_sink=None):
    check_common(_API, q, dropout_p=dropout_p, alibi_slopes=alibi_slopes, backend=backend,
                 strict=strict)
    if return_attn_probs:
        refuse(_API, "invalid_argument", f"{_API}.attn_probs_unavailable",
               "return_attn_probs=True asks for (out, softmax_lse, S_dmask): flashlane computes "
               "no attention probabilities. softmax_lse alone: flashlane.flash_attn_interface "
               "(return_attn_probs=True) or flashlane.flash_attn_func(return_lse=True)",
               q, backend, strict)
    if block_table is not None:
        refuse(_API, "invalid_argument", f"{_API}.block_table_unsupported",
               "block_table (paged KV) is not supported by this call", q, backend, strict)
    if cu_q is None:
        seqlen_k = k.shape[1]
    else:
        max_q = _iface._max_seqlen(cu_q, max_q, "max_seqlen_q")
        max_k = _iface._max_seqlen(cu_k, max_k, "max_seqlen_k")
        seqlen_k = max_k
    window = window_fa2(window_size, causal, seqlen_k)
    return _iface._run(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, seqused_k=None,
                       max_seqlen_q=max_q if cu_q is not None else 0,
                       max_seqlen_k=max_k if cu_q is not None else 0,
                       softmax_scale=softmax_scale, mask=mask_of(causal, window),
                       window_size=window, softcap=softcap, deterministic=deterministic,
                       return_lse=False, backend=backend, strict=strict,
                       learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_func(q, k, v, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                    causal: bool = False, window_size: Sequence[int] = (-1, -1),
                    softcap: float = 0.0, alibi_slopes=None, deterministic: bool = False,
                    return_attn_probs: bool = False, *, backend: str = "auto",
                    strict: bool = False, learnable_sink=None):
    """flash_attn 2.x flash_attn_func: q [b, s_q, h_q, d], k/v [b, s_k, h_kv, d(_v)].
    Returns out [b, s_q, h_q, d_v]. See the module docstring for the semantics and refusals."""
    return _attend(q, k, v, None, None, 0, 0, dropout_p, softmax_scale, causal, window_size,
                   softcap, alibi_slopes, deterministic, return_attn_probs, backend, strict,
                   learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_qkvpacked_func(qkv, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                              causal: bool = False, window_size: Sequence[int] = (-1, -1),
                              softcap: float = 0.0, alibi_slopes=None,
                              deterministic: bool = False, return_attn_probs: bool = False, *,
                              backend: str = "auto", strict: bool = False, learnable_sink=None):
    """flash_attn 2.x flash_attn_qkvpacked_func: qkv [b, s, 3, h, d] (q, k, v along dim 2).
    Returns out [b, s, h, d]. The q, k, v it attends are views of qkv (no copies)."""
    q, k, v = unpack_qkv(qkv, 2)
    return _attend(q, k, v, None, None, 0, 0, dropout_p, softmax_scale, causal, window_size,
                   softcap, alibi_slopes, deterministic, return_attn_probs, backend, strict,
                   learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_kvpacked_func(q, kv, dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                             causal: bool = False, window_size: Sequence[int] = (-1, -1),
                             softcap: float = 0.0, alibi_slopes=None,
                             deterministic: bool = False, return_attn_probs: bool = False, *,
                             backend: str = "auto", strict: bool = False, learnable_sink=None):
    """flash_attn 2.x flash_attn_kvpacked_func: q [b, s_q, h_q, d], kv [b, s_k, 2, h_kv, d].
    Returns out [b, s_q, h_q, d]."""
    k, v = unpack_kv(kv, 2)
    return _attend(q, k, v, None, None, 0, 0, dropout_p, softmax_scale, causal, window_size,
                   softcap, alibi_slopes, deterministic, return_attn_probs, backend, strict,
                   learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p: float = 0.0, softmax_scale: Optional[float] = None,
                           causal: bool = False, window_size: Sequence[int] = (-1, -1),
                           softcap: float = 0.0, alibi_slopes=None, deterministic: bool = False,
                           return_attn_probs: bool = False, block_table=None, *,
                           backend: str = "auto", strict: bool = False, learnable_sink=None):
    """flash_attn 2.x flash_attn_varlen_func: q [total_q, h_q, d], k/v [total_k, h_kv, d(_v)],
    int32 cu_seqlens_q / cu_seqlens_k [batch + 1]. Windows are bounded by max_seqlen_k, as in
    FlashAttention 2. Returns out [total_q, h_q, d_v]."""
    return _attend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                   softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                   return_attn_probs, backend, strict, block_table, learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p: float = 0.0,
                                     softmax_scale: Optional[float] = None, causal: bool = False,
                                     window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                                     alibi_slopes=None, deterministic: bool = False,
                                     return_attn_probs: bool = False, *, backend: str = "auto",
                                     strict: bool = False, learnable_sink=None):
    """flash_attn 2.x flash_attn_varlen_qkvpacked_func: qkv [total, 3, h, d], cu_seqlens
    [batch + 1] for queries and keys alike. Returns out [total, h, d]."""
    q, k, v = unpack_qkv(qkv, 1)
    return _attend(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p,
                   softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                   return_attn_probs, backend, strict, learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p: float = 0.0,
                                    softmax_scale: Optional[float] = None, causal: bool = False,
                                    window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                                    alibi_slopes=None, deterministic: bool = False,
                                    return_attn_probs: bool = False, *, backend: str = "auto",
                                    strict: bool = False, learnable_sink=None):
    """flash_attn 2.x flash_attn_varlen_kvpacked_func: q [total_q, h_q, d], kv [total_k, 2, h_kv, d].
    Returns out [total_q, h_q, d]."""
    k, v = unpack_kv(kv, 1)
    return _attend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                   softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                   return_attn_probs, backend, strict, learnable_sink=learnable_sink)


@documents_sink(grad=False)
def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            cache_leftpad=None, block_table=None,
                            softmax_scale: Optional[float] = None, causal: bool = False,
                            window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                            rotary_interleaved: bool = True, alibi_slopes=None,
                            num_splits: int = 0, return_softmax_lse: bool = False, *,
                            backend: str = "auto", strict: bool = False, learnable_sink=None):
    """flash_attn 2.x flash_attn_with_kvcache (block_table is the paged cache's page table).
    Semantics: flashlane.kvcache. Refused with a tag: cache_leftpad
    (flash_attn.cache_leftpad_unsupported), alibi_slopes (flash_attn.alibi_unsupported)."""
    from .kvcache import flash_attn_with_kvcache as _kv

    check_common(_API, q, alibi_slopes=alibi_slopes, backend=backend, strict=strict)
    if cache_leftpad is not None:
        refuse(_API, "invalid_argument", f"{_API}.cache_leftpad_unsupported",
               "cache_leftpad (a cache that starts after position 0) is not supported", q,
               backend, strict, runtime_mode="decode")
    return _kv(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
               cache_batch_idx, block_table, softmax_scale, causal, window_size, softcap,
               rotary_interleaved, num_splits, return_softmax_lse, backend=backend,
               strict=strict, learnable_sink=learnable_sink)
