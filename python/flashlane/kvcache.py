"""Attention against a KV cache: FlashAttention's ``flash_attn_with_kvcache``.

Semantics follow flash-attention's docstring (hopper/flash_attn_interface.py and
flash_attn/flash_attn_interface.py), made exact in include/flashlane/kvcache.h:

- ``q`` [batch, seqlen_q, heads_q, d]; ``k_cache`` / ``v_cache`` dense [batch_cache,
  seqlen_cache, heads_kv, d] (``cache_batch_idx`` int32 [batch] picks the cache rows), or paged
  [num_pages, page_size, heads_kv, d] with ``page_table`` int32 [batch, max_pages_per_seq].
- ``cache_seqlens``: int or int32 [batch], keys already in the cache (None: the whole cache).
- ``k`` / ``v`` [batch, seqlen_new, heads_kv, d]: written into the cache *in place* at
  cache_seqlens[b] before attending; the cache then holds cache_seqlens[b] + seqlen_new keys.
- ``rotary_cos`` / ``rotary_sin`` [seqlen_ro, rotary_dim / 2] (only with k / v): k is rotated at
  positions cache_seqlens[b] + j; q at cache_seqlens[b] + i when causal or local
  (window_size != (-1, -1)), else every q row at cache_seqlens[b]. ``rotary_interleaved=True``
  pairs dims (0, 1), (2, 3), ... (GPT-J); False pairs (i, i + rotary_dim / 2) (GPT-NeoX).
- ``causal=True`` is bottom-right aligned (the query rows are the last positions);
  ``window_size``, ``softcap``, ``softmax_scale`` as in flash_attn_func; ``num_splits`` is a hint.
- ``learnable_sink`` (keyword only): attention sinks, one logit per query head [heads_q]
  (gpt-oss; FlashAttention 4's ``learnable_sink``), as in flash_attn_func: the LSE includes them.
- Returns ``out`` [batch, seqlen_q, heads_q, d_v], or ``(out, softmax_lse)`` (float32
  [batch, heads_q, seqlen_q]) with ``return_softmax_lse=True``. A row with no visible key gives
  out = 0 and lse = -inf (with sinks: lse = the head's sink).

NumPy arrays run on reference_cpu (float64 accumulation). PyTorch tensors go to the dispatcher
as they are: CUDA tensors run on sm90 on an H100/H200 (head_dim 64, 128 or 256; split-KV,
``num_splits`` forces the count) and otherwise on reference_cuda (fp32 accumulation); a strict
request for a backend that cannot serve the call is refused with its tag
(``sm90.decode_head_dim_unsupported``, ...). flashlane additions:
``backend`` and ``strict`` as in flashlane.flash_attn_func. Errors raise FlashlaneError with the
stable code (``page_table_invalid``, ``cache_overflow``, ...) and, for refusals, the tag; on any
error neither the outputs nor the cache are written.
"""

from __future__ import annotations

from typing import Optional, Sequence

from . import _C
from ._core import _after_cpp_call, check_backend, documents_sink, np_sink, raise_if_error

__all__ = ["flash_attn_with_kvcache"]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _int32(x, like_torch: bool, device=None):
    if x is None:
        return None
    if like_torch:
        import torch

        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, device=device)
        return x if x.dtype == torch.int32 else x.to(torch.int32)
    import numpy as np

    a = np.asarray(x)
    if a.dtype != np.int32 and np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.int32)
    return a


@documents_sink(grad=False)
def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            page_table=None, softmax_scale: Optional[float] = None,
                            causal: bool = False, window_size: Sequence[int] = (-1, -1),
                            softcap: float = 0.0, rotary_interleaved: bool = True,
                            num_splits: int = 0, return_softmax_lse: bool = False,
                            backend: str = "auto", strict: bool = False, *,
                            learnable_sink=None, check_metadata_values: Optional[bool] = None):
    """FlashAttention's flash_attn_with_kvcache on flashlane (see the module docstring).

    check_metadata_values (keyword only; flashlane): whether the validation reads the values of
    cache_seqlens, cache_batch_idx and page_table (out-of-range lengths and page indices are
    then refused with their codes before anything is written). CUDA metadata costs a
    synchronous device-to-host copy per call; host metadata is always checked. None: True
    outside CUDA-graph capture, False while the current stream is capturing (the read is not
    capturable). False: CUDA values are trusted, as FlashAttention trusts them; a decode loop
    that builds its metadata on the device passes False to keep the host off the critical path.
    """
    check_backend(backend)
    torch_path = _is_torch(q)
    batch = q.shape[0]
    if isinstance(cache_seqlens, int):
        if torch_path:
            import torch

            cache_seqlens = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)
        else:
            import numpy as np

            cache_seqlens = np.full((batch,), cache_seqlens, dtype=np.int32)
    device = q.device if torch_path else None
    cache_seqlens = _int32(cache_seqlens, torch_path, device)
    cache_batch_idx = _int32(cache_batch_idx, torch_path, device)
    page_table = _int32(page_table, torch_path, device)
    left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
    if causal and right != -1:
        right = 0  # FlashAttention: causal makes the right bound 0
    mask = "causal_bottom_right" if causal else "no_mask"
    shape_o = tuple(q.shape[:-1]) + (v_cache.shape[-1],)
    shape_lse = (q.shape[0], q.shape[2], q.shape[1])
    stream = 0
    if torch_path:
        import torch

        from ._ops import sink_tensor

        out = torch.empty(shape_o, dtype=q.dtype, device=q.device)
        lse = torch.empty(shape_lse, dtype=torch.float32, device=q.device)
        sink = sink_tensor(learnable_sink, q)
        if sink is not None:
            sink = sink.detach()  # no backward: the cast needs no autograd node
        if q.is_cuda:
            stream = torch.cuda.current_stream(q.device).cuda_stream
            if check_metadata_values is None:
                check_metadata_values = not torch.cuda.is_current_stream_capturing()
    else:
        import numpy as np

        out = np.empty(shape_o, dtype=q.dtype)
        lse = np.empty(shape_lse, dtype=np.float32)
        sink = np_sink(np, learnable_sink)
    result = _C.forward_kvcache(
        q, k_cache, v_cache, out, lse, cache_seqlens, cache_batch_idx, page_table, k, v,
        rotary_cos, rotary_sin, sink, bool(rotary_interleaved),
        None if softmax_scale is None else float(softmax_scale), mask, left, right,
        float(softcap), int(num_splits), backend, bool(strict), stream,
        True if check_metadata_values is None else bool(check_metadata_values))
    _after_cpp_call()
    raise_if_error(result)
    return (out, lse) if return_softmax_lse else out
