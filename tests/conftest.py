import pytest
import torch


@pytest.fixture(autouse=True)
def _no_autograd():
    """The library must work with autograd off; oracles turn it on locally (see helpers)."""
    torch.manual_seed(0)
    with torch.no_grad():
        yield


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
