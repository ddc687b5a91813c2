"""Array creation on the active device.

Creation functions that take values (``full``, ``linspace``, ``arange``,
``meshgrid``) are differentiable in them: given a traced dlarray while recording
they build the result from gpugrad ops, so gradients flow back to the values.

>>> import gpugrad as gg
>>> float(gg.gradient(lambda a: gg.sum(gg.linspace(a, 3.0, 5)))(1.0))  # sum of (1 - t)
2.5
"""

from __future__ import annotations

import numpy as np

from . import backend, tape
from .array import dlarray
from .ops.core import make


def _traced(*vals):
    """True when one of ``vals`` is a traced dlarray and recording is on."""
    return any(type(v) is dlarray and v._node is not None for v in vals) and (
        tape.FRAME.get().recording
    )


def _value_dtype(dtype, *vals):
    """Result dtype for a traced creation: ``dtype``, else the values' float/complex type."""
    if dtype is not None:
        return _dtype(dtype)
    kinds = [v.dtype for v in vals if type(v) is dlarray]
    kinds += [np.dtype(np.complex128) for v in vals if isinstance(v, complex)]
    return np.result_type(*kinds) if kinds else np.dtype(np.float64)


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
    """An array filled with ``value`` (differentiable in a traced ``value``, whose
    gradient is the sum over the array; ``value`` may be any array that broadcasts
    to ``shape``).

    >>> import gpugrad as gg
    >>> float(gg.gradient(lambda a: gg.sum(gg.full((3,), a) ** 2))(2.0))
    12.0
    """
    if _traced(value):
        from .ops import astype

        dt = _value_dtype(dtype, value)
        v = astype(value, dt) if value.dtype != dt else value
        return _fmt(v * make(backend.xp().ones(_shape(shape), dt)), fmt)
    if type(value) is dlarray:
        value = value._data
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


def _scalar(v):
    return v._data.item() if type(v) is dlarray else v


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values in ``[start, stop)``, as ``numpy.arange`` (stored as float).
    Traced ``start``/``step`` are differentiated (``start + step * i``); ``stop`` only
    decides how many values there are (its derivative is zero).

    >>> import gpugrad as gg
    >>> gg.arange(4).numpy(), gg.arange(1, 2, 0.25).numpy()
    (array([0., 1., 2., 3.]), array([1.  , 1.25, 1.5 , 1.75]))
    """
    if stop is None:
        start, stop = 0, start
    if _traced(start, step):
        n = len(np.arange(_scalar(start), _scalar(stop), _scalar(step)))
        dt = _value_dtype(dtype, start, step)
        i = make(backend.xp().arange(n).astype(dt))
        return start + step * i
    start, stop, step = _scalar(start), _scalar(stop), _scalar(step)
    return make(backend.xp().arange(start, stop, step).astype(_dtype(dtype)))


def linspace(start, stop, num=50, dtype=None):
    """``num`` evenly spaced values from ``start`` to ``stop`` inclusive.
    Differentiable in traced ``start`` and ``stop``: the values are
    ``start * (1 - t) + stop * t`` with ``t = 0, 1/(num-1), ..., 1`` (both ends exact);
    array ``start``/``stop`` give the points along a new first axis, as NumPy does.

    >>> import gpugrad as gg
    >>> gg.linspace(0, 1, 5).numpy()
    array([0.  , 0.25, 0.5 , 0.75, 1.  ])
    """
    num = int(num)
    if _traced(start, stop):
        from .ops import reshape

        dt = _value_dtype(dtype, start, stop)
        nd = max(getattr(start, "ndim", 0), getattr(stop, "ndim", 0))
        t = backend.xp().linspace(0.0, 1.0, num).astype(dt)
        t = make(t.reshape((num,) + (1,) * nd))
        out = start * (1 - t) + stop * t
        return out if out.shape[0] == num else reshape(out, (num,) + out.shape[1:])
    start, stop = _raw_value(start), _raw_value(stop)
    return make(backend.xp().linspace(start, stop, num).astype(_dtype(dtype)))


def _raw_value(v):
    return v._data if type(v) is dlarray else v


def meshgrid(*xs, indexing="xy"):
    """Coordinate grids, as ``numpy.meshgrid`` (differentiable in traced inputs).

    >>> import gpugrad as gg
    >>> gx, gy = gg.meshgrid(gg.dlarray([1.0, 2.0, 3.0]), gg.dlarray([4.0, 5.0]))
    >>> gx.shape, gy.shape
    ((2, 3), (2, 3))
    """
    if indexing not in ("xy", "ij"):
        raise ValueError(f"meshgrid: indexing must be 'xy' or 'ij', got {indexing!r}")
    if _traced(*xs):
        from .ops import reshape

        xs = [x if type(x) is dlarray else dlarray(x) for x in xs]
        n = len(xs)
        shape = [x.size for x in xs]
        axes = list(range(n))
        if indexing == "xy" and n >= 2:
            shape[0], shape[1] = shape[1], shape[0]
            axes[0], axes[1] = 1, 0
        out = []
        for x, ax in zip(xs, axes):
            s = [1] * n
            s[ax] = x.size
            dt = _dtype(x.dtype)
            xv = reshape(x, tuple(s))
            out.append(xv * make(backend.xp().ones(tuple(shape), dt)))
        return tuple(out)
    raws = [x._data if isinstance(x, dlarray) else backend.xp().asanyarray(x) for x in xs]
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
