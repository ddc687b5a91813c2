"""Array creation on the active device.

Creation functions that take values (``full``, ``linspace``, ``arange``,
``meshgrid``) are differentiable in them: given a traced dlarray while recording
they build the result from gpugrad ops, so gradients flow back to the values.
Bad shapes, sizes and values raise an error naming the function and the argument;
an allocation too large for the machine says how many bytes it asked for.

>>> import gpugrad as gg
>>> float(gg.gradient(lambda a: gg.sum(gg.linspace(a, 3.0, 5)))(1.0))  # sum of (1 - t)
2.5

Without a ``dtype`` the creation functions (``zeros``, ``ones``, ``full``, ``eye``,
``arange``, ``linspace``) make float64 arrays, as NumPy and MATLAB do;
``zeros_like``/``ones_like`` keep their argument's dtype and ``gg.dlarray(data)`` keeps
the data's (Python floats give float64). Layer parameters are another matter: they
follow ``gg.get_default_dtype()`` (float32 unless ``gg.set_default_dtype`` changed it).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import backend, tape
from ._alloc import allocate, shape_arg
from ._defaults import get_default_dtype, set_default_dtype  # noqa: F401 - re-exported
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


def _dtype(dtype, where="dtype"):
    try:
        # why: no dtype -> float64 (NumPy, MATLAB); an integer dtype -> float64 (MATLAB
        # double), as gg.dlarray does with integers
        dt = np.dtype(np.float64) if dtype is None else np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype must be a NumPy numeric dtype, got {dtype!r}") from None
    if dt.kind in "iu":
        dt = np.dtype(np.float64)
    if dt.kind not in "fcb":
        raise TypeError(f"{where}: dtype must be a float, complex or bool type, got {dt}")
    return dt


def _number(value, where, arg):
    """A Python/NumPy number (an untraced one-element dlarray is read as its value)."""
    if isinstance(value, dlarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (str, bytes)) or not isinstance(value, numbers.Number):
        raise TypeError(f"{where}: {arg} must be a number, got {value!r}")
    return value


def _fmt(out, fmt):
    return dlarray(out, fmt, copy=False) if fmt else out


def _filled(where, shape, dtype, fill):
    shape = shape_arg(shape, where)
    dt = _dtype(dtype, where)
    return make(allocate(where, shape, dt, lambda: fill(shape, dt)))


def zeros(shape, dtype=None, fmt=None):
    """An array of zeros (the default dtype, float32, unless ``dtype`` is given).

    >>> import gpugrad as gg
    >>> gg.zeros((2, 3)).shape, gg.zeros(2, dtype="float32").dtype
    ((2, 3), dtype('float32'))
    """
    return _fmt(_filled("zeros", shape, dtype, backend.xp().zeros), fmt)


def ones(shape, dtype=None, fmt=None):
    """An array of ones.

    >>> import gpugrad as gg
    >>> gg.ones((2, 2)).numpy()
    array([[1., 1.],
           [1., 1.]])
    """
    return _fmt(_filled("ones", shape, dtype, backend.xp().ones), fmt)


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
        return _fmt(v * _filled("full", shape, dt, backend.xp().ones), fmt)
    if type(value) is dlarray and value.size != 1:
        value = value._data  # an array that broadcasts to shape
        shape = shape_arg(shape, "full")
        try:
            np.broadcast_shapes(value.shape, shape)
        except ValueError:
            raise ValueError(
                f"full: value of shape {value.shape} does not broadcast to shape {shape}"
            ) from None
    else:
        value = _number(value, "full", "value")
    if dtype is None and isinstance(value, complex):
        dtype = np.complex128
    xp = backend.xp()
    return _fmt(_filled("full", shape, dtype, lambda s, dt: xp.full(s, value, dt)), fmt)


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


def _count(start, stop, step):
    return max(int(np.ceil((stop - start) / step)), 0) if not isinstance(step, complex) else 0


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
        s0 = _number(start._data.item() if type(start) is dlarray else start, "arange", "start")
        st = _number(step._data.item() if type(step) is dlarray else step, "arange", "step")
        if st == 0:
            raise ValueError("arange: step must not be 0")
        n = _count(s0, _number(stop, "arange", "stop"), st)
        dt = _value_dtype(dtype, start, step)
        i = make(allocate("arange", (n,), dt, lambda: backend.xp().arange(n).astype(dt)))
        return start + step * i
    start = _number(start, "arange", "start")
    stop = _number(stop, "arange", "stop")
    step = _number(step, "arange", "step")
    if step == 0:
        raise ValueError("arange: step must not be 0")
    dt = _dtype(dtype, "arange")
    n = _count(start, stop, step)
    return make(
        allocate("arange", (n,), dt, lambda: backend.xp().arange(start, stop, step).astype(dt))
    )


def linspace(start, stop, num=50, dtype=None):
    """``num`` evenly spaced values from ``start`` to ``stop`` inclusive.
    Differentiable in traced ``start`` and ``stop``: the values are
    ``start * (1 - t) + stop * t`` with ``t = 0, 1/(num-1), ..., 1`` (both ends exact);
    array ``start``/``stop`` give the points along a new first axis, as NumPy does.

    >>> import gpugrad as gg
    >>> gg.linspace(0, 1, 5).numpy()
    array([0.  , 0.25, 0.5 , 0.75, 1.  ])
    """
    if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 0:
        raise ValueError(f"linspace: num must be a non-negative int, got {num!r}")
    num = int(num)
    if _traced(start, stop):
        from .ops import reshape

        dt = _value_dtype(dtype, start, stop)
        nd = max(getattr(start, "ndim", 0), getattr(stop, "ndim", 0))
        t = allocate("linspace", (num,), dt, lambda: backend.xp().linspace(0.0, 1.0, num))
        t = make(t.astype(dt).reshape((num,) + (1,) * nd))
        out = start * (1 - t) + stop * t
        return out if out.shape[0] == num else reshape(out, (num,) + out.shape[1:])
    xp = backend.xp()
    if isinstance(start, dlarray) and start.size != 1:
        start = start._data  # array end points, as NumPy
    elif isinstance(start, np.ndarray):
        start = xp.asarray(start)  # host end points onto the device (cuda)
    else:
        start = _number(start, "linspace", "start")
    if isinstance(stop, dlarray) and stop.size != 1:
        stop = stop._data
    elif isinstance(stop, np.ndarray):
        stop = xp.asarray(stop)
    else:
        stop = _number(stop, "linspace", "stop")
    dt = _dtype(dtype, "linspace")
    return make(allocate("linspace", (num,), dt, lambda: xp.linspace(start, stop, num)).astype(dt))


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
    if not isinstance(n, numbers.Integral):
        raise ValueError(f"eye: n must be a non-negative int, got {n!r}")
    (n,) = shape_arg(n, "eye", "n")
    (m,) = (n,) if m is None else shape_arg(m, "eye", "m")
    dt = _dtype(dtype, "eye")
    return make(allocate("eye", (n, m), dt, lambda: backend.xp().eye(n, m, dtype=dt)))
