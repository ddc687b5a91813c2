"""Array creation on the active device."""

from __future__ import annotations

import numbers

import numpy as np

from . import backend
from ._alloc import allocate, shape_arg
from .array import dlarray
from .ops.core import make


def _dtype(dtype, where="dtype"):
    try:
        dt = np.dtype(np.float64 if dtype is None else dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be a NumPy numeric dtype, got {dtype!r}") from None
    if dt.kind in "iu":
        dt = np.dtype(np.float64)
    if dt.kind not in "fcb":
        raise TypeError(f"{where}: dtype must be a float, complex or bool type, got {dt}")
    return dt


def _number(value, where, arg):
    if isinstance(value, dlarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (str, bytes)) or not isinstance(value, numbers.Number):
        raise TypeError(f"{where}: {arg} must be a number, got {value!r}")
    return value


def _fmt(out, fmt):
    return dlarray(out, fmt) if fmt else out


def _filled(where, shape, dtype, fill):
    shape = shape_arg(shape, where)
    dt = _dtype(dtype, where)
    return make(allocate(where, shape, dt, lambda: fill(shape, dt)))


def zeros(shape, dtype=None, fmt=None):
    """An array of zeros (float64 unless ``dtype`` is given).

    >>> import gpugrad as gg
    >>> gg.zeros((2, 3)).shape
    (2, 3)
    """
    return _fmt(_filled("zeros", shape, dtype, backend.xp().zeros), fmt)


def ones(shape, dtype=None, fmt=None):
    """An array of ones."""
    return _fmt(_filled("ones", shape, dtype, backend.xp().ones), fmt)


def full(shape, value, dtype=None, fmt=None):
    """An array filled with ``value``."""
    value = _number(value, "full", "value")
    if dtype is None and isinstance(value, complex):
        dtype = np.complex128
    xp = backend.xp()
    return _fmt(_filled("full", shape, dtype, lambda s, dt: xp.full(s, value, dt)), fmt)


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
    start = _number(start, "arange", "start")
    stop = _number(stop, "arange", "stop")
    step = _number(step, "arange", "step")
    if step == 0:
        raise ValueError("arange: step must not be 0")
    dt = _dtype(dtype, "arange")
    n = max(int(np.ceil((stop - start) / step)), 0) if not isinstance(step, complex) else 0
    return make(
        allocate("arange", (n,), dt, lambda: backend.xp().arange(start, stop, step).astype(dt))
    )


def linspace(start, stop, num=50, dtype=None):
    """``num`` evenly spaced values from ``start`` to ``stop`` inclusive."""
    start = _number(start, "linspace", "start")
    stop = _number(stop, "linspace", "stop")
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 0:
        raise ValueError(f"linspace: num must be a non-negative int, got {num!r}")
    dt = _dtype(dtype, "linspace")
    return make(
        allocate(
            "linspace",
            (int(num),),
            dt,
            lambda: backend.xp().linspace(start, stop, int(num)).astype(dt),
        )
    )


def meshgrid(*xs, indexing="xy"):
    """Coordinate grids, as ``numpy.meshgrid``."""
    if indexing not in ("xy", "ij"):
        raise ValueError(f"meshgrid: indexing must be 'xy' or 'ij', got {indexing!r}")
    raws = [x._data if isinstance(x, dlarray) else backend.xp().asarray(x) for x in xs]
    return tuple(
        make(g.astype(_dtype(g.dtype))) for g in backend.xp().meshgrid(*raws, indexing=indexing)
    )


def eye(n, m=None, dtype=None):
    """Identity matrix."""
    if not isinstance(n, numbers.Integral):
        raise ValueError(f"eye: n must be a non-negative int, got {n!r}")
    (n,) = shape_arg(n, "eye", "n")
    (m,) = (n,) if m is None else shape_arg(m, "eye", "m")
    dt = _dtype(dtype, "eye")
    return make(allocate("eye", (n, m), dt, lambda: backend.xp().eye(n, m, dtype=dt)))
