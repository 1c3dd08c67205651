"""pytest configuration: tests marked `gpu` need torch and a CUDA device, tests marked `torch`
need torch; without them they are reported as skipped, with the reason (never as passed).

`surface(*ids)` names the surfaces of the catalog a test proves (the ids of receipts, bench rows,
the rollout manifest, the gate and `flashlane status`, from flashlane._C.surface_ids()): an id
outside the catalog stops the collection, and each id also becomes the marker `surface_<id>`, so
`pytest -m surface_varlen_bwd` runs one surface's tests."""

import importlib.util

import pytest


def _torch_state():
    if importlib.util.find_spec("torch") is None:
        return None, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return torch, "no CUDA device (torch.cuda.is_available() is False)"
    return torch, ""


def _surface_ids():
    from flashlane import _C

    return list(_C.surface_ids())


def pytest_collection_modifyitems(config, items):
    surfaces = set(_surface_ids())
    for item in items:
        for mark in item.iter_markers(name="surface"):
            if not mark.args:
                raise pytest.UsageError(f"{item.nodeid}: surface() needs at least one id")
            for sid in mark.args:
                if sid not in surfaces:
                    raise pytest.UsageError(
                        f"{item.nodeid}: surface '{sid}' is not in the catalog {sorted(surfaces)}")
                item.add_marker(getattr(pytest.mark, f"surface_{sid}"))
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
    for sid in _surface_ids():
        config.addinivalue_line("markers", f"surface_{sid}: the tests of surface {sid}")
