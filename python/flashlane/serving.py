"""ServingPlan: the backends a server calls for prefill and decode, checked at construction, and
generation receipts that say what really ran under the plan.

    plan = flashlane.ServingPlan(prefill_backend="sm90", decode_backend="sm90",
                                 kv_layout="paged", page_size=16, head_dim=96, dtype="bf16")
    # FlashlaneError: backend_inapplicable ... [sm90.decode_head_dim_unsupported]

The C++ ServingPlan (include/flashlane/serving.h) asks the applicability table whether each named
backend executes this exact combination (KV layout and page size, dtype, head dims, GQA ratio,
causal, window, softcap, rotary, append, attention sinks) and raises FlashlaneError with the
rule's tag when one does not. Rows about the machine (CUDA device, sm, tensor placement) are
checked only with check_device=True.

A generate() loop (or a server's loop of flashlane calls) run under the plan records prefill and
decode truth separately, from the receipts of the calls made inside the block:

    with plan.generation() as run:
        model.generate(...)
    run.receipt   # {"prefill_backend": "sm90", "decode_backend": "sm90", "decode_executed": True,
                  #  "decode_runtime_modes": ["paged_decode", ...], "ok": True, ...}

A call that ran on another backend than the plan's, fell back, failed, or recorded another mode
than the plan's makes the block raise FlashlaneError (code "backend_inapplicable", reason tags
"serving.prefill_not_on_plan", "serving.decode_not_on_plan", "serving.prefill_mode_not_on_plan",
"serving.decode_mode_not_on_plan", "serving.decode_not_executed") on exit; strict=False records
the violations in the receipt (ok False) instead.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Dict, Iterator, List, Optional, Sequence

from . import _C
from ._core import FlashlaneError, raise_if_error, receipt_log

__all__ = ["ServingPlan", "GenerationRun", "PREFILL_MODES", "DECODE_MODES",
           "VIOLATION_CODE"]

#: Receipt runtime_mode values of prefill calls (forward() over dense or packed tokens, with or
#: without attention sinks).
PREFILL_MODES = ("fwd", "varlen_fwd", "sinks_fwd", "sinks_varlen_fwd")
#: Receipt runtime_mode values of decode calls (flash_attn_with_kvcache; the transformers
#: integration's decode steps record "decode").
DECODE_MODES = ("decode", "paged_decode", "append_decode")
#: FlashlaneError.code of a generation run that left the plan: one of the library's error codes
#: (the plan's backend did not serve the call as planned); the "serving." reason tag says how.
VIOLATION_CODE = "backend_inapplicable"


class ServingPlan:
    """A checked serving configuration; attributes mirror the arguments, plus prefill_mode and
    decode_mode (the receipt runtime_mode values such calls record: prefill "fwd", "varlen_fwd",
    with learnable_sink "sinks_fwd", "sinks_varlen_fwd"; decode "decode", "paged_decode",
    "append_decode", unchanged by sinks) and as_dict().

    learnable_sink (keyword, default False): the model has attention sinks (gpt-oss: one logit
    per query head, passed to every call as learnable_sink); the table is asked about calls with
    sinks.

    Raises FlashlaneError: code "backend_inapplicable" with the refusing rule's reason tag (e.g.
    "sm90.decode_head_dim_unsupported", "cudnn.not_implemented"); "invalid_argument",
    "head_dim_invalid", "heads_not_divisible", "window_invalid", "softcap_invalid",
    "rotary_invalid", "unsupported_dtype", "page_table_invalid" for a bad configuration.
    """

    def __init__(self, prefill_backend: str = "sm90", decode_backend: str = "sm90", *,
                 kv_layout: str = "paged", page_size: int = 256, dtype: str = "bf16",
                 head_dim: int = 128, head_dim_v: int = 0, heads_q: int = 32,
                 heads_kv: int = 8, causal: bool = True,
                 window_size: Sequence[int] = (-1, -1), softcap: float = 0.0,
                 append: bool = True, rotary_dim: int = 0, prefill_varlen: bool = True,
                 learnable_sink: bool = False, check_device: bool = False,
                 device_ordinal: int = 0):
        left, right = (-1, -1) if window_size is None else (int(window_size[0]), int(window_size[1]))
        if causal and right != -1:
            right = 0
        error, text = _C.serving_plan(str(prefill_backend), str(decode_backend),
                                      bool(prefill_varlen), str(kv_layout), int(page_size),
                                      str(dtype), int(head_dim), int(head_dim_v), int(heads_q),
                                      int(heads_kv), bool(causal), left, right, float(softcap),
                                      bool(append), int(rotary_dim), bool(learnable_sink),
                                      bool(check_device), int(device_ordinal))
        raise_if_error(error)
        self._plan: Dict[str, Any] = json.loads(text)
        for key, value in self._plan.items():
            setattr(self, key, value)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self._plan)

    @contextlib.contextmanager
    def generation(self, *, strict: bool = True,
                   require_decode: bool = False) -> Iterator["GenerationRun"]:
        """Records the flashlane calls made inside the block (on any thread, through
        flashlane.receipt_log()) and judges them against the plan on exit::

            with plan.generation() as run:
                model.generate(input_ids, max_new_tokens=16)
            assert run.receipt["decode_executed"]

        Each call is classified by its receipt's runtime_mode: PREFILL_MODES are prefill calls,
        DECODE_MODES decode calls, anything else (a backward) is counted in other_calls and not
        judged. A prefill (decode) call is on the plan when its status is "ok", its
        actual_backend is the plan's prefill_backend (decode_backend) and its fallback_reason is
        empty: a call that requested auto and reached the plan's backend only after skipping
        another one fell back, so calls under a plan should request the plan's backends. Its
        runtime_mode must be the plan's prefill_mode (decode_mode).

        strict (default True): on exit, the first violation raises FlashlaneError(code
        "backend_inapplicable", reason tag "serving.prefill_not_on_plan" (ran on another
        backend, fell back: e.g. the transformers integration's actual_backend "torch_sdpa" /
        "torch_eager", or failed), "serving.decode_not_on_plan", "serving.prefill_mode_not_on_plan",
        "serving.decode_mode_not_on_plan", or with require_decode "serving.decode_not_executed");
        run.receipt is set before it raises. strict=False: no raise; the receipt says ok False
        and lists the violations. An exception raised inside the block propagates unchanged
        (run.receipt is still set).

        require_decode: a run without any decode call executed on the plan is a violation
        ("serving.decode_not_executed"), e.g. decode steps that stayed forward calls.

        Yields a GenerationRun; run.receipts is the live list of per-call receipts, run.receipt
        the generation receipt (a dict, see GenerationRun) once the block has exited."""
        run = GenerationRun(self, strict=strict, require_decode=require_decode)
        with receipt_log() as calls:
            run.receipts = calls
            try:
                yield run
            except BaseException:
                run.receipt = run._judge(list(calls))
                raise
        run.receipt = run._judge(list(calls))
        if strict and not run.receipt["ok"]:
            first = run.receipt["violations"][0]
            raise FlashlaneError(VIOLATION_CODE, first["message"], first["tag"])

    def __repr__(self) -> str:
        return f"ServingPlan({self._plan})"


class GenerationRun:
    """The record of one ServingPlan.generation() block.

    Attributes:
        plan: the ServingPlan.
        receipts: the per-call receipts collected inside the block (a live list while it runs).
        receipt: None inside the block; on exit the generation receipt, a dict:
            plan: the plan (ServingPlan.as_dict()).
            requested_prefill_backend / requested_decode_backend: the plan's backends.
            prefill_mode / decode_mode: the plan's modes.
            prefill_backend / decode_backend: the actual_backend of the phase's calls that
                executed (status "ok"): one name when they agree, the distinct names joined with
                "," in order of first appearance otherwise, "" when none executed.
            prefill_executed / decode_executed: at least one call of the phase executed on the
                plan's backend without a fallback.
            prefill_calls / decode_calls / other_calls: counts.
            prefill_runtime_modes / decode_runtime_modes: runtime_mode of each call of the phase,
                in order (decode: one entry per step and layer).
            strict: the block's strict flag.
            ok: no violation.
            violations: [{tag, phase, call, runtime_mode, actual_backend, fallback_reason,
                status, message}], call being the index into receipts ("" for run-level ones).
    """

    def __init__(self, plan: ServingPlan, *, strict: bool, require_decode: bool):
        self.plan = plan
        self.strict = strict
        self.require_decode = require_decode
        self.receipts: List[Dict[str, Any]] = []
        self.receipt: Optional[Dict[str, Any]] = None

    def _judge(self, calls: List[Dict[str, Any]]) -> Dict[str, Any]:
        plan = self.plan
        want = {"prefill": (plan.prefill_backend, plan.prefill_mode),
                "decode": (plan.decode_backend, plan.decode_mode)}
        modes: Dict[str, List[str]] = {"prefill": [], "decode": []}
        ran: Dict[str, List[str]] = {"prefill": [], "decode": []}
        on_plan = {"prefill": False, "decode": False}
        violations: List[Dict[str, Any]] = []
        other = 0
        for index, r in enumerate(calls):
            mode = r.get("runtime_mode", "")
            phase = ("prefill" if mode in PREFILL_MODES else
                     "decode" if mode in DECODE_MODES else None)
            if phase is None:
                other += 1
                continue
            backend, plan_mode = want[phase]
            modes[phase].append(mode)
            actual = r.get("actual_backend", "")
            status = r.get("status", "")
            fallback = r.get("fallback_reason", "")
            if status == "ok" and actual and actual not in ran[phase]:
                ran[phase].append(actual)
            facts = dict(phase=phase, call=index, runtime_mode=mode, actual_backend=actual,
                         fallback_reason=fallback, status=status)
            if status != "ok":
                why = f"failed with status {status}" + (
                    f" [{r.get('error_reason')}]" if r.get("error_reason") else "")
            elif actual != backend:
                why = f"ran on {actual or 'no backend'}"
            elif fallback:
                why = f"fell back to {actual} [{fallback}]"
            else:
                why = ""
            if why:
                violations.append(dict(
                    facts, tag=f"serving.{phase}_not_on_plan",
                    message=f"{phase} call {index} ({mode}) {why}; the plan's {phase} backend "
                            f"is {backend}"))
            else:
                on_plan[phase] = True
            if mode != plan_mode:
                violations.append(dict(
                    facts, tag=f"serving.{phase}_mode_not_on_plan",
                    message=f"{phase} call {index} recorded runtime_mode {mode}; the plan's "
                            f"{phase} mode is {plan_mode}"))
        if self.require_decode and not on_plan["decode"]:
            violations.append(dict(
                tag="serving.decode_not_executed", phase="decode", call="", runtime_mode="",
                actual_backend="", fallback_reason="", status="",
                message=f"no decode call executed on {plan.decode_backend} "
                        f"({len(modes['decode'])} decode calls, {len(modes['prefill'])} prefill)"))
        return {
            "plan": plan.as_dict(),
            "requested_prefill_backend": plan.prefill_backend,
            "requested_decode_backend": plan.decode_backend,
            "prefill_mode": plan.prefill_mode,
            "decode_mode": plan.decode_mode,
            "prefill_backend": ",".join(ran["prefill"]),
            "decode_backend": ",".join(ran["decode"]),
            "prefill_executed": on_plan["prefill"],
            "decode_executed": on_plan["decode"],
            "prefill_calls": len(modes["prefill"]),
            "decode_calls": len(modes["decode"]),
            "other_calls": other,
            "prefill_runtime_modes": modes["prefill"],
            "decode_runtime_modes": modes["decode"],
            "strict": self.strict,
            "ok": not violations,
            "violations": violations,
        }

    def __repr__(self) -> str:
        return f"GenerationRun(plan={self.plan!r}, receipt={self.receipt!r})"
