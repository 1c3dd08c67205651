"""FlashAttention 3's Python API on flashlane: change ``from flash_attn_interface import ...``
(the module FlashAttention 3 installs from hopper/) to ``from flashlane.flash_attn_interface
import ...`` and every call, positional or by keyword, means what it meant.

Signatures and return values follow flash-attention hopper/flash_attn_interface.py:
``softmax_scale`` is the 4th positional argument of flash_attn_func (FlashAttention 3 has no
dropout), then causal, qv, q_descale, k_descale, v_descale, window_size, attention_chunk,
softcap, num_splits, pack_gqa, deterministic, sm_margin, return_attn_probs. flash_attn_varlen_func
takes seqused_q, seqused_k after max_seqlen_k. The functions return ``out``, or ``(out,
softmax_lse)`` with ``return_attn_probs=True`` (FlashAttention 3 returns the log-sum-exp there,
float32 [b, h_q, s_q], varlen [h_q, total_q]; its early betas returned the pair always).

Semantics:

- ``causal=True`` is bottom-right aligned; ``window_size=(left, right)`` as in FlashAttention 2,
  with FlashAttention 3's bounds: left >= seqlen_k - 1 and right >= seqlen_q - 1 (varlen: the
  max_seqlen values), or negative, are unbounded; causal=True makes right 0, so causal with
  (L, R) is causal with (L, 0) (hopper/flash_api.cpp, mha_fwd).
- ``deterministic=True`` selects the deterministic backward.
- ``num_splits``, ``pack_gqa`` and ``sm_margin`` are scheduling hints with no effect on the
  result: accepted and ignored (flashlane's dispatcher chooses the kernel).

Not implemented, refused with FlashlaneError and a reason tag (and a receipt): ``qv``
(``flash_attn_interface.qv_unsupported``), FP8 descale factors
(``flash_attn_interface.descale_unsupported``), ``attention_chunk != 0``
(``flash_attn_interface.attention_chunk_unsupported``), ``seqused_q``
(``flash_attn_interface.seqused_q_unsupported``).

flashlane additions, keyword only (so that positional calls keep FlashAttention 3's meaning):
``backend`` and ``strict``, as in flashlane.flash_attn_func, and ``learnable_sink``: attention
sinks [heads_q] (gpt-oss; FlashAttention 4's ``learnable_sink``; see each function's docstring),
with autograd for PyTorch tensors.
"""

from __future__ import annotations

from typing import Optional, Sequence

from . import interface as _iface
from ._core import documents_sink
from ._fa_compat import mask_of, refuse, split_heads, unpack_qkv, window_fa3

__all__ = ["flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_varlen_func",
           "flash_attn_with_kvcache"]

_API = "flash_attn_interface"
#: The FlashAttention version whose semantics this module follows.
FLASH_ATTN_VERSION = 3


def _attend(q, k, v, cu_q, cu_k, max_q, max_k, seqused_q, seqused_k, softmax_scale, causal, qv,
            descales, window_size, attention_chunk, softcap, deterministic, return_attn_probs,
            backend, strict, *, learnable_sink=None):
    if qv is not None:
        refuse(_API, "invalid_argument", f"{_API}.qv_unsupported",
               "qv (the extra query-value product) is not supported", q, backend, strict)
    if any(d is not None for d in descales):
        refuse(_API, "invalid_argument", f"{_API}.descale_unsupported",
               "q_descale / k_descale / v_descale (FP8 inputs) are not supported", q, backend,
               strict)
    if attention_chunk:
        refuse(_API, "invalid_argument", f"{_API}.attention_chunk_unsupported",
               f"attention_chunk = {attention_chunk}: chunked attention is not supported (pass 0)",
               q, backend, strict)
    if seqused_q is not None:
        refuse(_API, "invalid_argument", f"{_API}.seqused_q_unsupported",
               "seqused_q is not supported (seqused_k is)", q, backend, strict)
    if cu_q is None:
        seqlen_q, seqlen_k = q.shape[1], k.shape[1]
        max_q = max_k = 0
    else:
        max_q = _iface._max_seqlen(cu_q, max_q, "max_seqlen_q")
        max_k = _iface._max_seqlen(cu_k, max_k, "max_seqlen_k")
        seqlen_q, seqlen_k = max_q, max_k
    window = window_fa3(window_size, causal, seqlen_q, seqlen_k)
    return _iface._run(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, seqused_k=seqused_k,
                       max_seqlen_q=max_q, max_seqlen_k=max_k, softmax_scale=softmax_scale,
                       mask=mask_of(causal, window), window_size=window, softcap=softcap,
                       deterministic=deterministic, return_lse=bool(return_attn_probs),
                       backend=backend, strict=strict, learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_func(q, k, v, softmax_scale: Optional[float] = None, causal: bool = False,
                    qv=None, q_descale=None, k_descale=None, v_descale=None,
                    window_size: Sequence[int] = (-1, -1), attention_chunk: int = 0,
                    softcap: float = 0.0, num_splits: int = 1, pack_gqa=None,
                    deterministic: bool = False, sm_margin: int = 0,
                    return_attn_probs: bool = False, *, backend: str = "auto",
                    strict: bool = False, learnable_sink=None):
    """FlashAttention 3 flash_attn_func: q [b, s_q, h_q, d], k/v [b, s_k, h_kv, d(_v)].
    Returns out, or (out, softmax_lse) with return_attn_probs=True."""
    return _attend(q, k, v, None, None, None, None, None, None, softmax_scale, causal, qv,
                   (q_descale, k_descale, v_descale), window_size, attention_chunk, softcap,
                   deterministic, return_attn_probs, backend, strict, learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           seqused_q=None, seqused_k=None, softmax_scale: Optional[float] = None,
                           causal: bool = False, qv=None, q_descale=None, k_descale=None,
                           v_descale=None, window_size: Sequence[int] = (-1, -1),
                           attention_chunk: int = 0, softcap: float = 0.0, num_splits: int = 1,
                           pack_gqa=None, deterministic: bool = False, sm_margin: int = 0,
                           return_attn_probs: bool = False, *, backend: str = "auto",
                           strict: bool = False, learnable_sink=None):
    """FlashAttention 3 flash_attn_varlen_func: q [total_q, h_q, d], k/v [total_k, h_kv, d(_v)],
    int32 cu_seqlens [batch + 1], optional int32 seqused_k [batch]. max_seqlen_* None: computed
    from cu_seqlens (a device-to-host read for CUDA tensors). Returns out [total_q, h_q, d_v], or
    (out, softmax_lse [h_q, total_q]) with return_attn_probs=True."""
    return _attend(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q,
                   seqused_k, softmax_scale, causal, qv, (q_descale, k_descale, v_descale),
                   window_size, attention_chunk, softcap, deterministic, return_attn_probs,
                   backend, strict, learnable_sink=learnable_sink)


@documents_sink()
def flash_attn_qkvpacked_func(qkv, softmax_scale: Optional[float] = None, causal: bool = False,
                              q_descale=None, k_descale=None, v_descale=None,
                              window_size: Sequence[int] = (-1, -1), attention_chunk: int = 0,
                              softcap: float = 0.0, deterministic: bool = False,
                              num_heads_q: Optional[int] = None, sm_margin: int = 0,
                              return_attn_probs: bool = False, *, backend: str = "auto",
                              strict: bool = False, learnable_sink=None):
    """FlashAttention 3 flash_attn_qkvpacked_func: qkv [b, s, 3, h, d], or [b, s, h_q + 2 * h_k, d]
    with num_heads_q (GQA packing along the heads). q, k, v are views of qkv (no copies)."""
    if qkv.ndim == 5:
        q, k, v = unpack_qkv(qkv, -3)
    else:
        if num_heads_q is None:
            refuse(_API, "invalid_argument", f"{_API}.num_heads_q_required",
                   "a 4-dimensional qkv [b, s, h_q + 2 * h_k, d] needs num_heads_q", qkv,
                   backend, strict)
        q, k, v = split_heads(qkv, int(num_heads_q))
    return _attend(q, k, v, None, None, None, None, None, None, softmax_scale, causal, None,
                   (q_descale, k_descale, v_descale), window_size, attention_chunk, softcap,
                   deterministic, return_attn_probs, backend, strict, learnable_sink=learnable_sink)


@documents_sink(grad=False)
def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            cache_leftpad=None, page_table=None, cu_seqlens_q=None,
                            cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                            q_descale=None, k_descale=None, v_descale=None,
                            softmax_scale: Optional[float] = None, causal: bool = False,
                            window_size: Sequence[int] = (-1, -1), attention_chunk: int = 0,
                            softcap: float = 0.0, rotary_interleaved: bool = True,
                            scheduler_metadata=None, num_splits: int = 0, pack_gqa=None,
                            sm_margin: int = 0, return_softmax_lse: bool = False, *,
                            backend: str = "auto", strict: bool = False, learnable_sink=None):
    """FlashAttention 3 flash_attn_with_kvcache (hopper/flash_attn_interface.py). Semantics:
    flashlane.kvcache; scheduler_metadata, pack_gqa and sm_margin are scheduling hints (ignored).
    Refused with a tag (flash_attn_interface.<what>_unsupported): qv, cache_leftpad,
    cu_seqlens_q / cu_seqlens_k_new / max_seqlen_q (varlen queries), rotary_seqlens, FP8
    descale factors, attention_chunk != 0."""
    from .kvcache import flash_attn_with_kvcache as _kv

    refusals = [
        (qv is not None, "qv", "qv (the extra query-value product)"),
        (cache_leftpad is not None, "cache_leftpad", "cache_leftpad"),
        (cu_seqlens_q is not None or cu_seqlens_k_new is not None or max_seqlen_q is not None,
         "varlen_kvcache", "cu_seqlens_q / cu_seqlens_k_new / max_seqlen_q (varlen queries)"),
        (rotary_seqlens is not None, "rotary_seqlens", "rotary_seqlens"),
        (any(d is not None for d in (q_descale, k_descale, v_descale)), "descale",
         "q_descale / k_descale / v_descale (FP8 inputs)"),
        (bool(attention_chunk), "attention_chunk", f"attention_chunk = {attention_chunk}"),
    ]
    for bad, what, text in refusals:
        if bad:
            refuse(_API, "invalid_argument", f"{_API}.{what}_unsupported",
                   f"{text} is not supported", q, backend, strict, runtime_mode="decode")
    return _kv(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, cache_seqlens,
               cache_batch_idx, page_table, softmax_scale, causal, window_size, softcap,
               rotary_interleaved, num_splits, return_softmax_lse, backend=backend,
               strict=strict, learnable_sink=learnable_sink)
