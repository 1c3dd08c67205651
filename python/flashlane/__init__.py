"""flashlane: FlashAttention-class attention for Hopper behind a dispatcher that never lies.

    import flashlane
    out = flashlane.flash_attn_func(q, k, v, causal=True)      # FlashAttention's call and layouts
    flashlane.last_receipt()    # {'requested_backend': 'auto', 'actual_backend': 'sm90', ...}

PyTorch tensors (CUDA, or CPU on reference_cpu) go through the custom ops flashlane::fwd /
flashlane::bwd (autograd, torch.compile, CUDA graphs); NumPy arrays run on reference_cpu.
Errors raise FlashlaneError (a RuntimeError) with .code (stable name) and .reason_tag.
FlashAttention 2's and 3's exact signatures: flashlane.flash_attn, flashlane.flash_attn_interface.
PyTorch SDPA: flashlane.torch.activate() (or torch.nn.attention.activate_flash_attention_impl(
"flashlane")); importing flashlane activates nothing.
Hugging Face transformers: flashlane.integrations.transformers.register().
See docs/PYTHON.md.
"""

try:
    # torch first: importing the extension before torch made `import torch` crash inside its
    # own CUDA set-up on the GPU machine (torch 2.11). With torch imported first both load.
    import torch as _torch  # noqa: F401
except ImportError:
    _torch = None
from . import _C
from ._core import (ERROR_CODES, FlashlaneError, last_receipt, receipt_log,
                    record_python_receipt)
from .interface import attention, flash_attn_func, flash_attn_varlen_func
from .kvcache import flash_attn_with_kvcache
from .serving import GenerationRun, ServingPlan
from . import flash_attn, flash_attn_interface  # noqa: E402  FlashAttention 2 / 3 signatures

__version__ = _C.version()

__all__ = [
    "FlashlaneError", "ERROR_CODES", "attention", "flash_attn_func", "flash_attn_varlen_func",
    "flash_attn_with_kvcache", "ServingPlan", "GenerationRun",
    "last_receipt", "receipt_log", "version", "git_commit", "compiled_architectures",
    "kernel_fingerprint", "backend_priority", "device_info",
]


def version() -> str:
    """Library version, "0.1.0"."""
    return _C.version()


def git_commit() -> str:
    """Git commit the extension was built from ("unknown" outside a checkout)."""
    return _C.git_commit()


def compiled_architectures() -> str:
    """CUDA architectures compiled into this build, e.g. "sm_80,sm_90a"."""
    return _C.compiled_architectures()


def kernel_fingerprint(backend: str, runtime_mode: str = "") -> str:
    """The build's kernel fingerprint of `backend` (16 hex digits over its kernel sources; ""
    for a backend without kernel sources). With a `runtime_mode` ("fwd", "varlen_bwd",
    "decode", ...): the fingerprint of the sm90 kernel family that serves it (flashlane's C++
    kernel_family: the forward's, the backward's or the decode's sources and the shared ones),
    which receipts record. Rows of other fingerprints are stale."""
    return _C.kernel_fingerprint(backend, runtime_mode)


def backend_priority() -> list:
    """Concrete backends in the order auto tries them."""
    return list(_C.backend_priority())


def device_info(ordinal: int = 0) -> dict:
    """What the dispatcher's rules see of CUDA device `ordinal` (cuda_available, sm, name, ...)."""
    return dict(_C.device_info(ordinal))


def _register_torch_ops() -> None:
    # Registers flashlane::fwd / flashlane::bwd when torch is importable, so that
    # torch.ops.flashlane.* exist as soon as flashlane is imported. Without torch: NumPy only.
    if _torch is None:
        return
    from . import _ops, interface

    interface._attention_op = _ops.attention_op
    # The name "flashlane" in torch's flash-attention registry (torch >= 2.11): registration
    # only; activate_flash_attention_impl("flashlane") or flashlane.torch.activate() activates.
    from . import torch as _sdpa_provider

    _sdpa_provider._register_provider()


_register_torch_ops()
