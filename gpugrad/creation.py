"""Array creation on the active device."""

from __future__ import annotations

import numpy as np

from . import backend
from .array import dlarray
from .ops.core import make


def _dtype(dtype):
    dt = np.dtype(np.float64 if dtype is None else dtype)
    if dt.kind in "iu":
        dt = np.dtype(np.float64)
    return dt


def _shape(shape):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _fmt(out, fmt):
    return dlarray(out, fmt) if fmt else out


def zeros(shape, dtype=None, fmt=None):
    """An array of zeros (float64 unless ``dtype`` is given).

    >>> import gpugrad as gg
    >>> gg.zeros((2, 3)).shape
    (2, 3)

    >>> import gpugrad as gg
    >>> gg.zeros((2, 3)).shape, gg.zeros(2, dtype="float32").dtype
    ((2, 3), dtype('float32'))
    """
    return _fmt(make(backend.xp().zeros(_shape(shape), _dtype(dtype))), fmt)


def ones(shape, dtype=None, fmt=None):
    """An array of ones.

    >>> import gpugrad as gg
    >>> gg.ones((2, 2)).numpy()
    array([[1., 1.],
           [1., 1.]])
    """
    return _fmt(make(backend.xp().ones(_shape(shape), _dtype(dtype))), fmt)


def full(shape, value, dtype=None, fmt=None):
    """An array filled with ``value``.

    >>> import gpugrad as gg
    >>> gg.full((2,), 7.0).numpy()
    array([7., 7.])
    """
    if dtype is None and isinstance(value, complex):
        dtype = np.complex128
    return _fmt(make(backend.xp().full(_shape(shape), value, _dtype(dtype))), fmt)


def zeros_like(x, dtype=None):
    """Zeros with the shape (and dtype, and format) of ``x``.

    >>> import gpugrad as gg
    >>> z = gg.zeros_like(gg.dlarray([[1.0, 2.0, 3.0]], "BC"))
    >>> z.shape, gg.dims(z)
    ((3, 1), 'CB')
    """
    x = x if isinstance(x, dlarray) else dlarray(x)
    return make(backend.xp().zeros(x.shape, dtype or x.dtype), x.fmt)


def ones_like(x, dtype=None):
    """Ones with the shape (and dtype, and format) of ``x``.

    >>> import gpugrad as gg
    >>> gg.ones_like(gg.zeros((2, 3))).shape
    (2, 3)
    """
    x = x if isinstance(x, dlarray) else dlarray(x)
    return make(backend.xp().ones(x.shape, dtype or x.dtype), x.fmt)


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values in ``[start, stop)``, as ``numpy.arange`` (stored as float).

    >>> import gpugrad as gg
    >>> gg.arange(4).numpy(), gg.arange(1, 2, 0.25).numpy()
    (array([0., 1., 2., 3.]), array([1.  , 1.25, 1.5 , 1.75]))
    """
    if stop is None:
        start, stop = 0, start
    return make(backend.xp().arange(start, stop, step).astype(_dtype(dtype)))


def linspace(start, stop, num=50, dtype=None):
    """``num`` evenly spaced values from ``start`` to ``stop`` inclusive.

    >>> import gpugrad as gg
    >>> gg.linspace(0, 1, 5).numpy()
    array([0.  , 0.25, 0.5 , 0.75, 1.  ])
    """
    return make(backend.xp().linspace(start, stop, int(num)).astype(_dtype(dtype)))


def meshgrid(*xs, indexing="xy"):
    """Coordinate grids, as ``numpy.meshgrid``.

    >>> import gpugrad as gg
    >>> xx, yy = gg.meshgrid(gg.arange(3), gg.arange(2))
    >>> xx.shape, yy.numpy().tolist()
    ((2, 3), [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    """
    raws = [x._data if isinstance(x, dlarray) else backend.xp().asarray(x) for x in xs]
    return tuple(
        make(g.astype(_dtype(g.dtype))) for g in backend.xp().meshgrid(*raws, indexing=indexing)
    )


def eye(n, m=None, dtype=None):
    """Identity matrix.

    >>> import gpugrad as gg
    >>> gg.eye(2).numpy()
    array([[1., 0.],
           [0., 1.]])
    """
    return make(backend.xp().eye(n, m, dtype=_dtype(dtype)))
