"""The default floating dtype (``gg.set_default_dtype`` / ``gg.get_default_dtype``).

It is the dtype of layer parameters (initializers, ``gg.nn`` layers) when none is
given. Array creation (``gg.zeros``, ``gg.random.normal``, ...) follows NumPy and
MATLAB instead: float64 unless a ``dtype`` is given, like ``gg.dlarray`` of Python
numbers. Kept in its own module because the layers and their initializers read it.
"""

from __future__ import annotations

import numpy as np

_DEFAULT = [np.dtype(np.float32)]


def get_default_dtype():
    """The dtype of layer parameters when no ``dtype`` is given: ``float32`` unless
    changed (as MATLAB's ``single`` learnables and PyTorch's parameters). Creation
    functions (``gg.zeros``, ``gg.ones``, ``gg.full``, ``gg.eye``, ``gg.arange``,
    ``gg.linspace``, ``gg.random.normal``/``uniform``) are not affected: as in NumPy and
    MATLAB they make float64 unless given a ``dtype``; ``gg.dlarray(data)`` keeps the
    data's float dtype (Python floats and integers give float64).

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
    >>> gg.nn.Dense(2, 1).weight.dtype
    dtype('float64')
    >>> _ = gg.set_default_dtype(previous)
    >>> gg.nn.Dense(2, 1).weight.dtype, gg.zeros(2).dtype
    (dtype('float32'), dtype('float64'))
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
    """``dtype`` as a NumPy dtype, or the layer default when it is None (internal)."""
    return _DEFAULT[0] if dtype is None else np.dtype(dtype)


def creation(dtype):
    """``dtype`` as a NumPy dtype, or float64 (NumPy's and MATLAB's) when it is None."""
    return np.dtype(np.float64) if dtype is None else np.dtype(dtype)
