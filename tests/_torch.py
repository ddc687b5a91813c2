"""PyTorch for the comparison tests, when it is installed.

Without it, ``torch`` is a stand-in that skips a test at the moment the test first
touches PyTorch: everything a test checked before that (values against NumPy,
finite-difference gradients, errors) still runs and still counts.
"""

import pytest

try:
    import torch

    TF = torch.nn.functional
except ImportError:

    class _NoTorch:
        def __getattr__(self, name):
            if name.startswith("_") or name == "pytestmark":  # pytest's collector probing
                raise AttributeError(name)
            pytest.skip("PyTorch is not installed: the comparison with PyTorch is skipped")

    torch = _NoTorch()
    TF = _NoTorch()

__all__ = ["torch", "TF"]
