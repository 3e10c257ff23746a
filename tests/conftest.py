"""Shared pytest fixtures. Add fixtures here; never rewrite other areas' fixtures.

The real default models are loaded once per session (``@pytest.mark.slow`` tests only).
"""

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M adapter (offline package; first load dequantises, ~1 min)."""
    from stitchplug.adapter import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma-3-270M adapter (offline package; first load dequantises, ~1 min)."""
    from stitchplug.adapter import load_model

    return load_model("gemma-3-270m")


@pytest.fixture
def one_thread():
    """Tiny matrices: torch's thread pool only adds overhead (and stalls on a busy 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
