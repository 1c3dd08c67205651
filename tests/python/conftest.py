"""pytest configuration: tests marked `gpu` need torch and a CUDA device, tests marked `torch`
need torch; without them they are reported as skipped, with the reason (never as passed)."""

import importlib.util

import pytest


def _torch_state():
    if importlib.util.find_spec("torch") is None:
        return None, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return torch, "no CUDA device (torch.cuda.is_available() is False)"
    return torch, ""


def pytest_collection_modifyitems(config, items):
    torch, gpu_reason = _torch_state()
    has_transformers = importlib.util.find_spec("transformers") is not None
    for item in items:
        if "torch" in item.keywords and torch is None:
            item.add_marker(pytest.mark.skip(reason="needs torch: torch is not installed"))
        if "gpu" in item.keywords and gpu_reason:
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU: {gpu_reason}"))
        if "transformers" in item.keywords and not has_transformers:
            item.add_marker(pytest.mark.skip(reason="needs transformers: not installed"))


def pytest_configure(config):
    config.addinivalue_line("markers", "transformers: needs Hugging Face transformers")
