"""ServingPlan: the backends a server calls for prefill and decode, checked at construction.

    plan = flashlane.ServingPlan(prefill_backend="sm90", decode_backend="sm90",
                                 kv_layout="paged", page_size=16, head_dim=96, dtype="bf16")
    # FlashlaneError: backend_inapplicable ... [sm90.decode_head_dim_unsupported]

The C++ ServingPlan (include/flashlane/serving.h) asks the applicability table whether each named
backend executes this exact combination (KV layout and page size, dtype, head dims, GQA ratio,
causal, window, softcap, rotary, append) and raises FlashlaneError with the rule's tag when one
does not. Rows about the machine (CUDA device, sm, tensor placement) are checked only with
check_device=True.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Sequence

from . import _C
from ._core import raise_if_error

__all__ = ["ServingPlan"]


class ServingPlan:
    """A checked serving configuration; attributes mirror the arguments, plus prefill_mode and
    decode_mode (receipt runtime_mode values) and as_dict()."""

    def __init__(self, prefill_backend: str = "sm90", decode_backend: str = "sm90", *,
                 kv_layout: str = "paged", page_size: int = 256, dtype: str = "bf16",
                 head_dim: int = 128, head_dim_v: int = 0, heads_q: int = 32,
                 heads_kv: int = 8, causal: bool = True,
                 window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                 append: bool = True, rotary_dim: int = 0, prefill_varlen: bool = True,
                 check_device: bool = False, device_ordinal: int = 0):
        left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
        if causal and right != -1:
            right = 0
        error, text = _C.serving_plan(str(prefill_backend), str(decode_backend),
                                      bool(prefill_varlen), str(kv_layout), int(page_size),
                                      str(dtype), int(head_dim), int(head_dim_v), int(heads_q),
                                      int(heads_kv), bool(causal), left, right, float(softcap),
                                      bool(append), int(rotary_dim), bool(check_device),
                                      int(device_ordinal))
        raise_if_error(error)
        self._plan: Dict[str, Any] = json.loads(text)
        for key, value in self._plan.items():
            setattr(self, key, value)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._plan)

    def __repr__(self) -> str:
        return f"ServingPlan({self._plan})"
