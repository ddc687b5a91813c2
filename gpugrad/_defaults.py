"""The default floating dtype (``gg.set_default_dtype`` / ``gg.get_default_dtype``).

Kept in its own module because creation functions, random draws and layer
initializers all read it, and none of them may import the others.
"""

from __future__ import annotations

import numpy as np

_DEFAULT = [np.dtype(np.float32)]


def get_default_dtype():
    """The dtype of layer parameters and of arrays made by ``gg.zeros``, ``gg.ones``,
    ``gg.full``, ``gg.eye``, ``gg.arange``, ``gg.linspace``, ``gg.random.normal`` and
    ``gg.random.uniform`` when no ``dtype`` is given: ``float32`` unless changed (as
    MATLAB's ``single`` learnables and PyTorch). ``gg.dlarray(data)`` is not affected:
    it keeps the data's float dtype (Python floats and integers give float64).

    >>> import gpugrad as gg
    >>> gg.get_default_dtype()
    dtype('float32')
    """
    return _DEFAULT[0]


def set_default_dtype(dtype):
    """Set the default floating dtype (``float16``, ``float32`` or ``float64``); returns
    the previous one, so a block can restore it. Use ``float64`` for finite-difference
    gradient checks.

    >>> import numpy as np, gpugrad as gg
    >>> previous = gg.set_default_dtype(np.float64)
    >>> gg.zeros(2).dtype, gg.nn.Dense(2, 1).weight.dtype
    (dtype('float64'), dtype('float64'))
    >>> _ = gg.set_default_dtype(previous)
    >>> gg.zeros(2).dtype
    dtype('float32')
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f" or dt.itemsize not in (2, 4, 8):
        raise TypeError(
            f"set_default_dtype: dtype must be float16, float32 or float64, got {dtype!r}"
        )
    previous = _DEFAULT[0]
    _DEFAULT[0] = dt
    return previous


def resolve(dtype):
    """``dtype`` as a NumPy dtype, or the default when it is None (internal)."""
    return _DEFAULT[0] if dtype is None else np.dtype(dtype)
