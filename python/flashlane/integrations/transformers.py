"""Hugging Face transformers backend: ``attn_implementation="lane_attention"``.

    import flashlane.integrations.transformers as fl_hf
    name = fl_hf.register()               # "lane_attention"; or register(backend="sm90", strict=True)
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation=name)

Why not "flashlane": transformers (5.x) treats every attn_implementation whose name contains
"flash" as a FlashAttention build to load from the kernels hub (is_flash_attention_requested), and
refuses the name at model construction. The name must not contain "flash".

register() installs two functions under the same name:
  * a mask function (AttentionMaskInterface). transformers sets the mask to None for a custom
    attention that has no mask function, and a kernel that reads None as "no mask" silently drops
    the causal mask. flashlane's mask function instead returns a FlashlaneMask: a description of
    the mask (causal / bidirectional, sliding window, the 2D padding mask, packed sequences, the
    query and key offsets of the cache), recognized from transformers' own mask functions. A mask
    it does not recognize (custom or/and masks, chunked or block overlays) is marked unsupported.
  * the attention function (AttentionInterface). It maps the description onto flashlane: GQA
    natively (q [b, h, s, d] is transposed to FlashAttention's [b, s, h, d] without a copy), the
    cache offsets onto causal_bottom_right (prefill), padding and packed sequences onto the varlen
    layout (unpad, attend, pad: never a dense mask), and decode steps onto the KV-cache call
    (below).

Decode steps (generate() with a cache, static or dynamic): a causal call of at most
DECODE_MAX_SEQLEN_Q queries that follow cached keys, without padding holes and without autograd,
runs as flashlane.flash_attn_with_kvcache on the cache tensors themselves. transformers has
already written the new keys into the cache, so there is no append; key/value [b, h_kv,
capacity, d] are viewed as the cache [b, capacity, h_kv, d] without a copy (a static cache's
capacity is its max_cache_len, the slots past the current length unused), cache_seqlens (int32
[b], on the tensors' device, made once per forward and kept on the FlashlaneMask; its values
hold by construction, so the call does not read them back: no host synchronization) is the
number of keys in use; causal_bottom_right, GQA, sinks and the sliding window as for the forward. The
receipts say runtime_mode "decode" and name the backend that ran. A call whose mask has padding
holes (left padding) cannot be a KV-cache call (cache_seqlens counts keys from slot 0): it stays
on the varlen path, and its receipt says so ("varlen_fwd", with sinks "sinks_varlen_fwd").
For CUDA tensors the route is taken only where it keeps the backend the forward would run: the
applicability table (as flashlane.ServingPlan asks it) is asked, once per configuration, about
the requested backend (auto: the backends in priority order); at the first one that accepts the
forward or the KV-cache call of this configuration (dtype, head dims, heads, window, softcap),
the KV-cache call must be accepted too. Otherwise (sm90 with head_dim 96, say: forward kernels,
no decode kernels) the step stays a forward call on that backend, with runtime_mode "fwd". Either
way the call carries the integration's Request (backend, strict), and strict=True fails closed
on the call that is made.

Attention sinks (gpt-oss: GptOssAttention passes its parameter ``self.sinks``, one logit per
query head, to the attention function as ``s_aux=``; ``sinks=`` is taken too) become flashlane's
``learnable_sink``: the sink joins every row's softmax as a key without a value, as gpt-oss's
eager attention does by appending the sink logit as an extra column before the softmax and
dropping it after. Training returns the sinks' gradient.

A call it cannot serve (an unsupported mask, a 4D mask given by the caller, dropout in training,
position bias, output_attentions, or a flashlane refusal) raises FlashlaneError with a
"transformers." reason tag when strict=True. With strict=False it runs transformers' SDPA
attention on the exact dense mask instead (a call with sinks, which SDPA cannot express: an eager
attention with the sink column), warns once per reason, and records a receipt with
actual_backend "torch_sdpa" (with sinks "torch_eager"), the reason and the phase of the call as
its runtime_mode ("decode" for a decode-shaped call, else "fwd"; _call_mode) (flashlane.last_receipt(),
receipt_log(), $FLASHLANE_RECEIPTS). Never silently. Sinks that are not one value per query head
are refused in both modes (transformers.attention_sinks_unsupported): no fallback computes them.

Which flashlane backend the calls request is a process-wide setting: register(backend=...,
strict=..., backward_backend=...) sets it, and the context manager backend_override() changes it
for a block and restores it after (for instance to train the same model once on sm90 and once on
reference_cuda, or with the sm90 forward and the reference_cuda backward):

    with fl_hf.backend_override("reference_cuda"):                      # forward and backward
        ...
    with fl_hf.backend_override(backward_backend="reference_cuda"):     # backward only
        ...

The backward backend is fixed when the forward runs (it travels with the autograd graph). Every
call's receipt names what was requested and what ran, and strict=True fails closed as always.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .._core import FlashlaneError, record_python_receipt
from ..interface import flash_attn_func, flash_attn_varlen_func
from ..kvcache import flash_attn_with_kvcache

__all__ = ["register", "backend_override", "settings", "FlashlaneMask",
           "flashlane_attention_forward", "flashlane_mask", "DECODE_MAX_SEQLEN_Q"]

NAME = "lane_attention"

# The most query rows (seqlen_q) a call may have to run as a decode step (a KV-cache call). The
# sm90 decode kernels pack seqlen_q x (heads_q / heads_kv) rows into tiles of 16 and read the
# keys once per tile; a prefill or a long chunk against a cache stays on the forward kernels,
# which read each key tile once for 128 query rows.
DECODE_MAX_SEQLEN_Q = 16


@dataclass
class _Settings:
    backend: str = "auto"
    strict: bool = False
    backward_backend: Optional[str] = None  # None: the backward requests `backend`


_settings = _Settings()
_warned: set = set()


@dataclass
class FlashlaneMask:
    """What flashlane's mask function hands to its attention function (in place of a dense mask).

    kind: "causal", "no_mask" (bidirectional) or "unsupported" (reason says why).
    window: transformers' sliding window W (> 0) or -1; a causal window sees keys
        q - W < k <= q; a bidirectional one |q - k| <= W.
    q_offset, kv_offset: absolute positions of the first query and the first key slot.
    padding: bool [batch, >= kv_offset + kv_length], absolute columns (True = real token), or
        None when there is no padding. packed: sequence ids [batch, q_length] of packed rows.
    """

    kind: str
    q_length: int
    kv_length: int
    q_offset: int = 0
    kv_offset: int = 0
    window: int = -1
    padding: Optional[torch.Tensor] = None
    packed: Optional[torch.Tensor] = None
    reason: str = ""
    _dense_args: Optional[Dict[str, Any]] = field(default=None, repr=False)
    _dense: Optional[torch.Tensor] = field(default=None, repr=False)
    # The unpad plans of the padded path (_padded_plan) and the decode steps' cache_seqlens
    # (_decode_step), made by the first layer that needs one and reused by every other layer of
    # the same forward: transformers builds one mask per forward (per mask type) and hands it to
    # all layers.
    _plans: Dict[Any, Any] = field(default_factory=dict, repr=False, init=False, compare=False)

    # transformers inspects masks it passes around (generate() builds them ahead for compileable
    # caches and hands them back to the model): look like the 4D mask this stands for.
    ndim = 4

    @property
    def shape(self):
        return (int(self._dense_args["batch_size"]) if self._dense_args else 1, 1, self.q_length,
                self.kv_length)

    def dense(self) -> torch.Tensor:
        """The boolean [batch, 1, q, kv] mask transformers' SDPA path would use (fallback only)."""
        if self._dense is None:
            from transformers.masking_utils import sdpa_mask

            args = dict(self._dense_args)
            args["allow_is_causal_skip"] = False
            args.pop("allow_is_bidirectional_skip", None)
            self._dense = sdpa_mask(**args)
        return self._dense


# ------------------------------------------------------------------------------------------------
# The mask function.

def _closure(fn) -> Dict[str, Any]:
    cells = getattr(fn, "__closure__", None) or ()
    return {name: c.cell_contents for name, c in zip(fn.__code__.co_freevars, cells)}


# Stands in _components' output for transformers' remap of packed rows' positions.
_REMAPPED_POSITIONS = object()


def _components(fn):
    """Flattens transformers' and_masks(...) into its mask functions. The remap of packed rows to
    per-sequence positions (remap_positions_for_packed_sequence, newer transformers 5.x) yields
    _REMAPPED_POSITIONS, then the mask functions it wraps."""
    qual = getattr(fn, "__qualname__", "")
    if qual == "and_masks.<locals>.and_mask":
        for f in _closure(fn).get("mask_functions", ()):
            yield from _components(f)
    elif qual == "remap_positions_for_packed_sequence.<locals>.inner_mask":
        yield _REMAPPED_POSITIONS
        yield from _components(_closure(fn)["mask_function"])
    else:
        yield fn


def _classify(mask_function):
    """(kind, window, packed, reason) of a transformers mask function."""
    from transformers import masking_utils as mu

    causal = bidirectional = 0
    window = bidir_window = -1
    packed = None
    remapped = False
    for f in _components(mask_function):
        qual = getattr(f, "__qualname__", repr(f))
        if f is _REMAPPED_POSITIONS:
            remapped = True
        elif f is mu.causal_mask_function:
            causal += 1
        elif f is mu.bidirectional_mask_function:
            bidirectional += 1
        elif qual == "sliding_window_overlay.<locals>.inner_mask":
            window = int(_closure(f)["sliding_window"])
        elif qual == "sliding_window_bidirectional_overlay.<locals>.inner_mask":
            bidir_window = int(_closure(f)["sliding_window"])
        elif qual == "packed_sequence_mask_function.<locals>.inner_mask":
            packed = _closure(f)["packed_sequence_mask"]
        else:
            return "unsupported", -1, None, f"transformers.mask_function_unsupported:{qual}"
    # Remapped positions are served only together with the packed-sequence mask: transformers
    # starts a new sequence wherever the position does not grow by 1, so inside a sequence the
    # position differences, hence the causal and window masks, are those of the rows.
    if remapped and packed is None:
        return "unsupported", -1, None, "transformers.mask_combination_unsupported"
    if causal == 1 and bidirectional == 0 and bidir_window < 0:
        return "causal", window, packed, ""
    if bidirectional == 1 and causal == 0 and window < 0:
        return "no_mask", bidir_window, packed, ""
    return "unsupported", -1, None, "transformers.mask_combination_unsupported"


def flashlane_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                   mask_function=None, attention_mask: Optional[torch.Tensor] = None,
                   **kwargs) -> FlashlaneMask:
    """transformers mask interface: returns a FlashlaneMask (see the module docstring)."""
    from transformers import masking_utils as mu

    if isinstance(attention_mask, FlashlaneMask):  # built ahead (generate with a static cache)
        return attention_mask
    if mask_function is None:
        mask_function = mu.causal_mask_function
    if isinstance(q_offset, torch.Tensor):
        q_offset = int(q_offset.item())
    if isinstance(kv_offset, torch.Tensor):
        kv_offset = int(kv_offset.item())
    kind, window, packed, reason = _classify(mask_function)
    padding = None
    if attention_mask is not None:
        padding = mu.prepare_padding_mask(attention_mask.to(torch.bool), kv_length, kv_offset)
        end = kv_offset + kv_length
        if kind == "causal":  # keys after the last query are invisible anyway (static caches)
            end = min(end, q_offset + q_length)
        if bool(padding[:, kv_offset:end].all()):
            padding = None
    dense_args = dict(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                      q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                      attention_mask=attention_mask, **kwargs)
    return FlashlaneMask(kind=kind, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                         kv_offset=kv_offset, window=window, padding=padding, packed=packed,
                         reason=reason, _dense_args=dense_args)


# ------------------------------------------------------------------------------------------------
# The attention function.

class _Unservable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _cu(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def _contiguous_runs(valid: torch.Tensor) -> bool:
    """Whether every row's True entries form one run (compact and absolute distances agree)."""
    n = valid.shape[1]
    idx = torch.arange(n, device=valid.device).expand_as(valid)
    first = torch.where(valid, idx, n).min(dim=1).values
    last = torch.where(valid, idx, -1).max(dim=1).values
    count = valid.sum(dim=1)
    return bool(((last - first + 1 == count) | (count == 0)).all())


@dataclass
class _PaddedPlan:
    """Where the real tokens of a padded batch are, computed once per forward and layer shape:
    (batch, position) index pairs of the real queries and keys, cu_seqlens and max_seqlen of
    both, and the reason the mask cannot be served, if any. The layers then gather, attend and
    scatter with index tensors: no device-to-host copy per layer."""

    batch_q: torch.Tensor
    pos_q: torch.Tensor
    batch_k: torch.Tensor
    pos_k: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    unservable: str = ""


def _padded_plan(desc: FlashlaneMask, device, b: int, sq: int, used: int, window) -> _PaddedPlan:
    key = (str(device), b, sq, used, desc.q_offset, desc.kv_offset, window)
    plan = desc._plans.get(key)
    if plan is not None:
        return plan
    pad = desc.padding.to(device)
    valid_k = pad[:, desc.kv_offset:desc.kv_offset + used]
    unservable = ""
    if desc.kind == "causal":
        # Self-attention: the queries are the last tokens of the keys' sequence, and the padding
        # mask says which of them are real. Dropping the padded ones keeps the diagonal
        # bottom-right aligned in every packed sequence.
        if not (desc.q_offset >= desc.kv_offset and desc.q_offset + sq <= desc.kv_offset + used):
            unservable = "transformers.cache_offsets_unsupported"
        valid_q = pad[:, desc.q_offset:desc.q_offset + sq]
    else:
        # Bidirectional (possibly cross-attention: the padding mask is about the keys only):
        # every query attends to the real keys, as SDPA computes it.
        if window != (-1, -1):
            unservable = "transformers.bidirectional_window_with_padding_unsupported"
        valid_q = torch.ones(b, sq, dtype=torch.bool, device=device)
    if not unservable and window != (-1, -1) and not _contiguous_runs(valid_k):
        # Windows count absolute positions; with holes inside a sequence the packed (varlen)
        # distances would differ.
        unservable = "transformers.window_with_padding_holes_unsupported"
    len_q = valid_q.sum(dim=1, dtype=torch.int32)
    len_k = valid_k.sum(dim=1, dtype=torch.int32)
    rows_q, rows_k = valid_q.nonzero(), valid_k.nonzero()  # [n, 2], row-major: sequence order
    plan = _PaddedPlan(batch_q=rows_q[:, 0], pos_q=rows_q[:, 1],
                       batch_k=rows_k[:, 0], pos_k=rows_k[:, 1],
                       cu_q=_cu(len_q), cu_k=_cu(len_k),
                       max_q=max(1, int(len_q.max())), max_k=max(1, int(len_k.max())),
                       unservable=unservable)
    desc._plans[key] = plan
    return plan


_TORCH_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                      torch.float64: "fp64"}
# (backend, device ordinal, dtype, head_dim, head_dim_v, heads_q, heads_kv, window, softcap) ->
# whether decode steps of that configuration run as KV-cache calls (_decode_route_served).
_decode_route: Dict[Any, bool] = {}


def _table_accepts(prefill: str, decode: str, config: Dict[str, Any]) -> bool:
    """Whether the applicability table lets `prefill` run the forward and `decode` the KV-cache
    call of `config` (flashlane.ServingPlan's question, the device rows included)."""
    from ..serving import ServingPlan

    try:
        ServingPlan(prefill_backend=prefill, decode_backend=decode, **config)
    except FlashlaneError:
        return False
    return True


def _decode_route_served(q: torch.Tensor, v: torch.Tensor, window, softcap: float) -> bool:
    """Whether a decode step q [b, sq, h, d] against v [b, sk, hk, dv] runs as a KV-cache call.
    Host tensors: always (reference_cpu runs both calls; a CUDA backend refuses both alike).
    CUDA tensors: at the first backend of the request (the named one, or auto's priority order)
    whose forward or KV-cache call the applicability table accepts for this configuration, the
    KV-cache call is accepted, so the route never trades a backend's forward kernels for another
    backend's decode. Asked once per configuration and process."""
    if not q.is_cuda:
        return True
    dtype = _TORCH_DTYPE_NAMES.get(q.dtype)
    if dtype is None:
        return False
    key = (_settings.backend, q.get_device(), dtype, q.shape[-1], v.shape[-1], q.shape[2],
           v.shape[2], tuple(window), float(softcap))
    served = _decode_route.get(key)
    if served is None:
        from .. import _C

        config = dict(kv_layout="dense", dtype=dtype, head_dim=int(q.shape[-1]),
                      head_dim_v=int(v.shape[-1]), heads_q=int(q.shape[2]),
                      heads_kv=int(v.shape[2]), causal=True, window_size=tuple(window),
                      softcap=float(softcap), append=False, prefill_varlen=False,
                      check_device=True, device_ordinal=q.get_device())
        if _settings.backend == "auto":
            candidates = list(_C.backend_priority())
        else:
            candidates = [_settings.backend]
        served = False
        for backend in candidates:
            # reference_cpu stands in for the other direction: it accepts every configuration.
            decode_ok = _table_accepts("reference_cpu", backend, config)
            if decode_ok or _table_accepts(backend, "reference_cpu", config):
                served = decode_ok
                break
        _decode_route[key] = served
    return served


def _needs_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _decode_step(q, k_cache, v_cache, desc: FlashlaneMask, used: int, scale, softcap, window,
                 sinks):
    """A decode step as a KV-cache call. q [b, sq, h, d]; k_cache / v_cache [b, capacity, hk, d]
    (views of transformers' cache, last dimension contiguous) whose first `used` slots hold each
    sequence's keys, the new ones included (the queries are the last sq of them); sinks None or
    [h]. cache_seqlens int32 [b] = used, made from the mask description once per forward and
    device (a fill on the device); its values hold by construction, so the call does not read
    them back (check_metadata_values=False: no host synchronization). Returns out [b, sq, h, dv]."""
    b = q.shape[0]
    key = ("cache_seqlens", str(q.device), b, used)
    cache_seqlens = desc._plans.get(key)
    if cache_seqlens is None:
        cache_seqlens = torch.full((b,), used, dtype=torch.int32, device=q.device)
        desc._plans[key] = cache_seqlens
    return flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens,
                                   softmax_scale=scale, causal=True, window_size=window,
                                   softcap=softcap, backend=_settings.backend,
                                   strict=_settings.strict, learnable_sink=sinks,
                                   check_metadata_values=False)


def _attend(q, k, v, desc: FlashlaneMask, scale, softcap, sinks=None):
    """q [b, sq, h, d], k/v [b, sk, hk, d] (views); sinks None or [h] (gpt-oss's sinks).
    Returns out [b, sq, h, dv]."""
    b, sq = q.shape[0], q.shape[1]
    sk = k.shape[1]
    d = desc.q_offset - desc.kv_offset  # key slot j is visible to query i when j <= i + d (causal)
    if desc.kind == "causal":
        used = d + sq
        if d < 0 or used > sk:
            raise _Unservable("transformers.cache_offsets_unsupported")
        mask = "causal_bottom_right"
        window = (desc.window - 1, 0) if desc.window > 0 else (-1, -1)
        # A decode step: few queries after cached keys, every key slot below `used` real.
        if (d > 0 and sq <= DECODE_MAX_SEQLEN_Q and desc.padding is None and desc.packed is None
                and not _needs_autograd(q, k, v, sinks)
                and _decode_route_served(q, v, window, softcap)):
            return _decode_step(q, k, v, desc, used, scale, softcap, window, sinks)
        if used != sk:  # static caches: drop the unused tail (no slice, no autograd node, else)
            k, v = k[:, :used], v[:, :used]
    else:
        used = sk
        mask = "no_mask"
        window = (-1, -1)
        if desc.window >= 0:
            if d != sk - sq:
                raise _Unservable("transformers.window_alignment_unsupported")
            window = (desc.window, desc.window)
    common = dict(softmax_scale=scale, mask=mask, window_size=window, softcap=softcap,
                  backend=_settings.backend, strict=_settings.strict,
                  backward_backend=_settings.backward_backend, learnable_sink=sinks)

    if desc.packed is not None:
        if desc.padding is not None or sq != used or d != 0:
            raise _Unservable("transformers.packed_with_cache_unsupported")
        plan_key = ("packed", str(q.device), b, sq)
        if plan_key not in desc._plans:  # once per forward: every layer reuses it
            ids = desc.packed.to(q.device)
            rows = torch.arange(b, device=q.device)[:, None].expand(b, sq)
            key = (rows.to(torch.int64) << 32) + ids.to(torch.int64)
            _, counts = torch.unique_consecutive(key.reshape(-1), return_counts=True)
            desc._plans[plan_key] = (_cu(counts), int(counts.max()))
        cu, max_len = desc._plans[plan_key]
        out = flash_attn_varlen_func(q.reshape(b * sq, *q.shape[2:]), k.reshape(b * sq, *k.shape[2:]),
                                     v.reshape(b * sq, *v.shape[2:]), cu, cu, max_len, max_len,
                                     **common)
        return out.reshape(b, sq, *out.shape[1:])

    if desc.padding is None:
        return flash_attn_func(q, k, v, **common)

    plan = _padded_plan(desc, q.device, b, sq, used, window)
    if plan.unservable:
        raise _Unservable(plan.unservable)
    out_p = flash_attn_varlen_func(q[plan.batch_q, plan.pos_q], k[plan.batch_k, plan.pos_k],
                                   v[plan.batch_k, plan.pos_k], plan.cu_q, plan.cu_k, plan.max_q,
                                   plan.max_k, **common)
    out = out_p.new_zeros((b, sq) + tuple(out_p.shape[1:]))
    out[plan.batch_q, plan.pos_q] = out_p
    return out


def _call_mode(desc: Optional["FlashlaneMask"], q_length: int) -> str:
    """The runtime_mode a receipt of this integration's own (a fallback or a refusal) records:
    "decode" for a decode-shaped call (causal, at most DECODE_MAX_SEQLEN_Q queries after cached
    keys), the phase a served call of that shape would be in; "fwd" otherwise."""
    if (desc is not None and desc.kind == "causal" and desc.q_offset > desc.kv_offset
            and q_length <= DECODE_MAX_SEQLEN_Q):
        return "decode"
    return "fwd"


def _receipt(query: torch.Tensor, reason: str, ran: str = "torch_sdpa",
             variant: str = "transformers.sdpa_attention_forward",
             mode: str = "fwd") -> Dict[str, Any]:
    sm = 0
    name = "cpu"
    if query.is_cuda:
        major, minor = torch.cuda.get_device_capability(query.device)
        sm = major * 10 + minor
        name = torch.cuda.get_device_name(query.device)
    return {"requested_backend": _settings.backend, "actual_backend": ran,
            "runtime_mode": mode, "strict": _settings.strict, "fallback_reason": reason,
            "skipped": [{"backend": NAME, "reason": reason}],
            "variant": variant, "device": {"name": name, "sm": sm},
            "deterministic": False, "status": "ok", "error_reason": ""}


def _refuse(query, code: str, reason: str, message: str, mode: str = "fwd"):
    refused = _receipt(query, "", mode=mode)
    refused.update(actual_backend="", variant="", status=code, error_reason=reason,
                   skipped=[{"backend": NAME, "reason": reason}])
    record_python_receipt(refused)
    raise FlashlaneError(code, message, reason)


_EAGER_SINK_VARIANT = "flashlane.integrations.transformers.eager_sink_attention"


def _eager_sink_attention(module, query, key, value, attention_mask, dropout, scaling, softcap,
                          is_causal, sinks):
    """The fallback for calls with sinks (PyTorch SDPA has no sink): gpt-oss's eager attention,
    the sink logit appended as an extra column before the softmax and dropped after, on the
    dense mask. query [b, h, sq, d], key/value [b, hk, sk, d]; attention_mask a boolean
    (True = visible) or additive [b, 1 or h, sq, sk] mask, or None (causal, bottom-right, when
    the module or is_causal says so). Returns out [b, sq, h, dv]."""
    b, h, sq, d = query.shape
    sk = key.shape[2]
    g = h // key.shape[1]
    k = key.repeat_interleave(g, dim=1) if g != 1 else key
    v = value.repeat_interleave(g, dim=1) if g != 1 else value
    scale = scaling if scaling is not None else d ** -0.5
    scores = torch.matmul(query, k.transpose(2, 3)) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        if causal:
            i = torch.arange(sq, device=query.device)[:, None]
            j = torch.arange(sk, device=query.device)[None, :]
            attention_mask = j <= i + (sk - sq)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    sink_col = sinks.to(scores.dtype).reshape(1, h, 1, 1).expand(b, h, sq, 1)
    logits = torch.cat([scores, sink_col], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values  # the sink column is finite
    probs = torch.softmax(logits, dim=-1)[..., :-1]
    training = getattr(module, "training", False)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs.to(v.dtype), v).transpose(1, 2).contiguous()


def _fallback(module, query, key, value, attention_mask, reason, dropout, scaling, kwargs,
              sinks=None, softcap=None, mode="fwd"):
    """The call on transformers' SDPA attention (with sinks: the eager one), recorded with
    `reason` and `mode` (_call_mode); strict: refused with `reason` instead."""
    if _settings.strict:
        _refuse(query, "backend_inapplicable", reason,
                f"the transformers integration (strict) cannot serve this call: {reason}", mode)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, FlashlaneMask):
        attention_mask = attention_mask.dense()
    target = "PyTorch SDPA" if sinks is None else "an eager attention with the sink column"
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"flashlane: attention falls back to {target} ({reason}); the receipt "
                      "records it (flashlane.last_receipt())", RuntimeWarning, stacklevel=3)
    if sinks is not None:
        record_python_receipt(_receipt(query, reason, "torch_eager", _EAGER_SINK_VARIANT, mode))
        out = _eager_sink_attention(module, query, key, value, attention_mask, dropout, scaling,
                                    float(softcap or 0.0), kwargs.get("is_causal"), sinks)
        return out, None
    record_python_receipt(_receipt(query, reason, mode=mode))
    kwargs = {k: v for k, v in kwargs.items() if k != "is_causal"}
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=False if attention_mask is not None
                                  else None, **kwargs)


_FALLBACK_CODES = {"backend_inapplicable", "no_applicable_backend", "unsupported_dtype",
                   "head_dim_invalid", "misaligned", "not_contiguous"}


def flashlane_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                value: torch.Tensor, attention_mask, dropout: float = 0.0,
                                scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                                softcap: Optional[float] = None, **kwargs):
    """transformers attention interface: query [b, h, s_q, d], key/value [b, h_kv, s_k, d];
    s_aux (or sinks): None or the attention sinks [h] (gpt-oss), passed on as learnable_sink.
    Returns (out [b, s_q, h, d_v], None)."""
    sinks = kwargs.get("s_aux")
    if sinks is None:
        sinks = kwargs.get("sinks")
    if sinks is not None and (not isinstance(sinks, torch.Tensor)
                              or tuple(sinks.shape) != (query.shape[1],)):
        shape = tuple(sinks.shape) if isinstance(sinks, torch.Tensor) else type(sinks).__name__
        _refuse(query, "shape_mismatch", "transformers.attention_sinks_unsupported",
                f"attention sinks of shape {shape}: flashlane takes one sink logit per query head "
                f"([{query.shape[1]}])")
    reason = ""
    if dropout and getattr(module, "training", False):
        reason = "transformers.dropout_unsupported"
    elif kwargs.get("output_attentions"):
        reason = "transformers.output_attentions_unsupported"
    elif kwargs.get("position_bias") is not None:
        reason = "transformers.position_bias_unsupported"

    if isinstance(attention_mask, FlashlaneMask):
        desc = attention_mask
        if desc.kind == "unsupported" and not reason:
            reason = desc.reason
    elif attention_mask is None:
        # No mask was built for this call (the model passed none): the module says whether it is
        # causal; a cache makes the queries the last ones (bottom-right), as in FlashAttention.
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        sq, sk = query.shape[2], key.shape[2]
        desc = FlashlaneMask(kind="causal" if causal else "no_mask", q_length=sq, kv_length=sk,
                             q_offset=max(sk - sq, 0))
    else:
        desc = None
        reason = reason or "transformers.dense_mask_unsupported"

    if not reason:
        try:
            out = _attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), desc,
                          scaling, float(softcap or 0.0), sinks)
            return out, None
        except _Unservable as e:
            reason = e.reason
        except FlashlaneError as e:
            if _settings.strict or e.code not in _FALLBACK_CODES:
                raise
            reason = f"flashlane.{e.code}" + (f":{e.reason_tag}" if e.reason_tag else "")
    if isinstance(attention_mask, FlashlaneMask) or attention_mask is not None:
        mask_for_sdpa = attention_mask
    else:
        mask_for_sdpa = None
    return _fallback(module, query, key, value, mask_for_sdpa, reason, dropout, scaling,
                     dict(kwargs, is_causal=is_causal), sinks, softcap,
                     _call_mode(desc, query.shape[2]))


def register(backend: str = "auto", strict: bool = False, name: str = NAME,
             backward_backend: Optional[str] = None) -> str:
    """Registers attn_implementation=`name` ("lane_attention") and its mask function with
    transformers.

    backend / strict: the flashlane Request of every call (strict=True also turns the fallbacks
    to SDPA into FlashlaneError). backward_backend: what the autograd backward requests (None:
    `backend`). The settings are process-wide (see backend_override()). Returns the name to pass
    as attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from .._core import check_backend

    if "flash" in name:
        raise ValueError(f"name={name!r}: transformers treats names containing 'flash' as "
                         "FlashAttention kernels to load from the hub; choose another name")
    _settings.backend = check_backend(backend)
    _settings.strict = bool(strict)
    _settings.backward_backend = None if backward_backend is None else check_backend(backward_backend)
    AttentionInterface.register(name, flashlane_attention_forward)
    AttentionMaskInterface.register(name, flashlane_mask)
    return name


def settings() -> Dict[str, Any]:
    """The Request the integration's calls make now: {"backend", "backward_backend", "strict"}
    (backward_backend None: the backward requests `backend`)."""
    return dataclasses.asdict(_settings)


@contextlib.contextmanager
def backend_override(backend: Optional[str] = None, *, backward_backend: Optional[str] = None,
                     strict: Optional[bool] = None):
    """Changes the integration's Request for the block, then restores the previous settings.

    backend: the forward's backend, and the backward's unless backward_backend is given (None:
    keep the registered forward backend). backward_backend: the backend of the backward only.
    strict: None keeps the registered value. Process-wide like register() (not per thread): the
    backward backend is taken when the forward runs, so backward passes run later (on autograd's
    threads) use the backend of the block their forward ran in. Yields settings().
    """
    from .._core import check_backend

    saved = dataclasses.replace(_settings)
    try:
        if backend is not None:
            _settings.backend = check_backend(backend)
            _settings.backward_backend = None
        if backward_backend is not None:
            _settings.backward_backend = check_backend(backward_backend)
        if strict is not None:
            _settings.strict = bool(strict)
        yield settings()
    finally:
        _settings.backend = saved.backend
        _settings.backward_backend = saved.backward_backend
        _settings.strict = saved.strict
