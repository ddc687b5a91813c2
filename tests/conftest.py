import logging
import os

import numpy as np
import pytest

os.environ.setdefault("GPUGRAD_DEVICE", "cpu")
logging.getLogger("gpugrad").setLevel(logging.ERROR)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
