"""Array creation on the active device.

Without a ``dtype`` the creation functions (``zeros``, ``ones``, ``full``, ``eye``,
``arange``, ``linspace``) make arrays of the default dtype, ``gg.get_default_dtype()``
(float32 unless ``gg.set_default_dtype`` changed it, as PyTorch and MATLAB's
``single`` learnables); ``zeros_like``/``ones_like`` keep their argument's dtype and
``gg.dlarray(data)`` keeps the data's (Python floats give float64).
"""

from __future__ import annotations

import numpy as np

from . import backend
from ._defaults import get_default_dtype, set_default_dtype  # noqa: F401 - re-exported
from .array import dlarray
from .ops.core import make


def _dtype(dtype):
    # why: no dtype -> the default (float32 unless set_default_dtype changed it);
    # an integer dtype -> float64 (MATLAB double), as gg.dlarray does with integers
    dt = get_default_dtype() if dtype is None else np.dtype(dtype)
    if dt.kind in "iu":
        dt = np.dtype(np.float64)
    return dt


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _fmt(out, fmt):
    return dlarray(out, fmt, copy=False) if fmt else out


def zeros(shape, dtype=None, fmt=None):
    """An array of zeros (the default dtype, float32, unless ``dtype`` is given).

    >>> import gpugrad as gg
    >>> gg.zeros((2, 3)).shape
    (2, 3)
    """
    return _fmt(make(backend.xp().zeros(_shape(shape), _dtype(dtype))), fmt)


def ones(shape, dtype=None, fmt=None):
    """An array of ones."""
    return _fmt(make(backend.xp().ones(_shape(shape), _dtype(dtype))), fmt)


def full(shape, value, dtype=None, fmt=None):
    """An array filled with ``value``."""
    if dtype is None and isinstance(value, complex):
        dtype = np.result_type(get_default_dtype(), np.complex64)
    return _fmt(make(backend.xp().full(_shape(shape), value, _dtype(dtype))), fmt)


def zeros_like(x, dtype=None):
    """Zeros with the shape (and dtype, and format) of ``x``."""
    x = x if isinstance(x, dlarray) else dlarray(x)
    return make(backend.xp().zeros(x.shape, dtype or x.dtype), x.fmt)


def ones_like(x, dtype=None):
    """Ones with the shape (and dtype, and format) of ``x``."""
    x = x if isinstance(x, dlarray) else dlarray(x)
    return make(backend.xp().ones(x.shape, dtype or x.dtype), x.fmt)


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values in ``[start, stop)``, as ``numpy.arange`` (stored as float)."""
    if stop is None:
        start, stop = 0, start
    return make(backend.xp().arange(start, stop, step).astype(_dtype(dtype)))


def linspace(start, stop, num=50, dtype=None):
    """``num`` evenly spaced values from ``start`` to ``stop`` inclusive."""
    return make(backend.xp().linspace(start, stop, int(num)).astype(_dtype(dtype)))


def meshgrid(*xs, indexing="xy"):
    """Coordinate grids, as ``numpy.meshgrid``."""
    raws = [x._data if isinstance(x, dlarray) else backend.xp().asarray(x) for x in xs]
    return tuple(
        make(g.astype(_dtype(g.dtype))) for g in backend.xp().meshgrid(*raws, indexing=indexing)
    )


def eye(n, m=None, dtype=None):
    """Identity matrix."""
    return make(backend.xp().eye(n, m, dtype=_dtype(dtype)))
