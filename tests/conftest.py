import logging
import os

import numpy as np
import pytest

os.environ.setdefault("GPUGRAD_DEVICE", "cpu")
# every hand-written kernel stays covered: no vendor library, no timing-based choice
os.environ["GPUGRAD_KERNEL_POLICY"] = "hand"
logging.getLogger("gpugrad").setLevel(logging.ERROR)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def float64():
    """Layer parameters and creation functions default to float64 inside the test (for
    comparisons with float64 references and finite differences); float32 after."""
    import gpugrad as gg

    previous = gg.set_default_dtype(np.float64)
    yield
    gg.set_default_dtype(previous)
