"""Shape and indexing primitives: reshape, transpose, broadcast_to, concatenate, flip,
getitem, setitem (functional index update), scatter_add, astype; composites on top."""

from __future__ import annotations

import numpy as np

from .. import backend, tape
from .._alloc import shape_arg
from ..array import dlarray
from . import core
from .axes import normalize_axes, normalize_axis_index
from .core import _STATE, Primitive, _record1, bind, coerce, host_call, make

_FRAME = tape.FRAME


def _xp():
    return _STATE["xp"]


def _dl(x):
    return x if type(x) is dlarray else dlarray(x, copy=False)


# ------------------------------------------------------------------ reshape / transpose


_RESHAPE = Primitive(
    "reshape",
    lambda x, shape: x.reshape(shape),
    lambda g, ans, x, shape: (reshape(g, x.shape),),
    fast=lambda g, ans, x, shape: (g.reshape(x.shape),),
)


def reshape(x, *shape):
    """Reshape (``-1`` infers one dimension); drops format labels unless the shape is unchanged.

    >>> import gpugrad as gg
    >>> gg.reshape(gg.dlarray([1.0, 2.0, 3.0, 4.0]), (2, 2)).shape
    (2, 2)
    """
    x = _dl(x)
    if len(shape) == 1 and not isinstance(shape[0], int):
        shape = shape[0]
    if isinstance(shape, (str, bytes)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in _items(shape)
    ):
        raise TypeError(f"reshape: shape must be an int or a tuple of ints, got {shape!r}")
    shape = tuple(int(s) for s in _items(shape))
    if shape == x._data.shape:
        return x
    try:
        target = np.empty(x._data.shape, dtype=np.bool_).reshape(shape).shape  # shape check only
    except ValueError:
        raise ValueError(
            f"reshape: cannot reshape an array of shape {x.shape} ({x.size} elements) into {shape}"
        ) from None
    return bind(_RESHAPE, (x,), {"shape": target})


def _transpose_vjp(g, ans, x, axes):
    inverse = tuple(int(i) for i in np.argsort(axes))
    return (transpose(g, inverse),)


def _items(shape):
    try:
        return tuple(shape)
    except TypeError:
        return (shape,)


_TRANSPOSE = Primitive("transpose", lambda x, axes: x.transpose(axes), _transpose_vjp)


def transpose(x, axes=None):
    """Permute axes (reverse them when ``axes`` is None), as ``numpy.transpose``.

    >>> import gpugrad as gg
    >>> gg.transpose(gg.zeros((2, 3, 4))).shape, gg.transpose(gg.zeros((2, 3, 4)), (1, 0, 2)).shape
    ((4, 3, 2), (3, 2, 4))
    """
    x = _dl(x)
    nd = x.ndim
    if axes is None:
        axes = tuple(range(nd - 1, -1, -1))
    if not isinstance(axes, (tuple, list)):
        raise TypeError(f"transpose: axes must be None or a tuple of ints, got {axes!r}")
    axes = normalize_axes(axes, nd, "transpose", sort=False)
    if len(axes) != nd:
        raise ValueError(f"transpose: axes {axes} are not a permutation of {nd} dimension(s)")
    if axes == tuple(range(nd)):
        return x
    return bind(_TRANSPOSE, (x,), {"axes": axes})


def moveaxis(x, source, destination):
    """Move one axis to a new position.

    >>> import gpugrad as gg
    >>> gg.moveaxis(gg.zeros((2, 3, 4)), 0, -1).shape
    (3, 4, 2)
    """
    x = _dl(x)
    nd = x.ndim
    source = normalize_axis_index(source, nd, "moveaxis")
    destination = normalize_axis_index(destination, nd, "moveaxis")
    order = [i for i in range(nd) if i != source]
    order.insert(destination, source)
    return transpose(x, tuple(order))


def swapaxes(x, a, b):
    """Interchange axes ``a`` and ``b`` (a :func:`transpose`; differentiable).

    >>> import gpugrad as gg
    >>> gg.swapaxes(gg.zeros((2, 3, 4)), 0, 2).shape
    (4, 3, 2)
    """
    x = _dl(x)
    a = normalize_axis_index(a, x.ndim, "swapaxes")
    b = normalize_axis_index(b, x.ndim, "swapaxes")
    order = list(range(x.ndim))
    order[a], order[b] = order[b], order[a]
    return transpose(x, tuple(order))


# ------------------------------------------------------------------ broadcast / concatenate / flip


_BROADCAST = Primitive(
    "broadcast_to",
    lambda x, shape: _xp().broadcast_to(x, shape),
    lambda g, ans, x, shape: (g,),  # the walker sums back to x's shape
    fast=lambda g, ans, x, shape: (g,),
)


def broadcast_to(x, shape):
    """Broadcast to ``shape`` (a read-only view; the gradient is summed back).

    >>> import gpugrad as gg
    >>> gg.gradient(lambda b: gg.sum(gg.broadcast_to(b, (4, 2))))(gg.dlarray([1.0, 2.0])).numpy()
    array([4., 4.])
    """
    x = _dl(x)
    shape = shape_arg(shape, "broadcast_to")
    if x.shape == shape:
        return x
    try:
        np.broadcast_shapes(x.shape, shape)
    except ValueError:
        raise ValueError(f"broadcast_to: shape {x.shape} does not broadcast to {shape}") from None
    return bind(_BROADCAST, (x,), {"shape": shape})


def _concat_vjp(g, ans, *xs, axis):
    out = []
    start = 0
    for x in xs:
        n = x.shape[axis]
        index = (slice(None),) * axis + (slice(start, start + n),)
        out.append(getitem(g, index))
        start += n
    return tuple(out)


_CONCAT = Primitive("concatenate", lambda *xs, axis: _xp().concatenate(xs, axis=axis), _concat_vjp)


def _array_list(arrays, where):
    if isinstance(arrays, (dlarray, np.ndarray, str, bytes)) or not hasattr(arrays, "__iter__"):
        raise TypeError(
            f"{where}: arrays must be a list or tuple of arrays, got {type(arrays).__name__}"
        )
    return [_dl(a) for a in arrays]


def concatenate(arrays, axis=0):
    """Join arrays along an existing axis.

    >>> import gpugrad as gg
    >>> gg.concatenate([gg.ones((2, 3)), gg.zeros((1, 3))]).shape
    (3, 3)
    """
    arrays = _array_list(arrays, "concatenate")
    if not arrays:
        raise ValueError("concatenate: need at least one array")
    nd = arrays[0].ndim
    if nd == 0:
        raise ValueError("concatenate: zero-dimensional arrays cannot be concatenated")
    axis = normalize_axis_index(axis, nd, "concatenate")
    for i, a in enumerate(arrays):
        if a.ndim != nd or any(a.shape[d] != arrays[0].shape[d] for d in range(nd) if d != axis):
            raise ValueError(
                f"concatenate: array {i} has shape {a.shape}, which does not match "
                f"{arrays[0].shape} outside axis {axis}"
            )
    fmt = arrays[0]._fmt if all(a._fmt == arrays[0]._fmt for a in arrays) else ""
    return bind(_CONCAT, tuple(arrays), {"axis": axis}, fmt)


def stack(arrays, axis=0):
    """Join arrays along a new axis.

    >>> import gpugrad as gg
    >>> gg.stack([gg.ones(3), gg.zeros(3)], axis=1).shape
    (3, 2)
    """
    arrays = _array_list(arrays, "stack")
    if not arrays:
        raise ValueError("stack: need at least one array")
    axis = normalize_axis_index(axis, arrays[0].ndim + 1, "stack")
    for i, a in enumerate(arrays):
        if a.shape != arrays[0].shape:
            raise ValueError(
                f"stack: array {i} has shape {a.shape}, but array 0 has shape "
                f"{arrays[0].shape}; all arrays must have the same shape"
            )
    return concatenate([expand_dims(a, axis) for a in arrays], axis=axis)


_FLIP = Primitive(
    "flip", lambda x, axis: _xp().flip(x, axis), lambda g, ans, x, axis: (flip(g, axis),)
)


def flip(x, axis=None):
    """Reverse the order of elements along ``axis`` (all axes when None).

    >>> import gpugrad as gg
    >>> gg.flip(gg.dlarray([1.0, 2.0, 3.0])).numpy()
    array([3., 2., 1.])
    """
    x = _dl(x)
    axis = normalize_axes(axis, x.ndim, "flip")
    return bind(_FLIP, (x,), {"axis": axis}, x._fmt)


def squeeze(x, axis=None):
    """Remove axes of length one.

    >>> import gpugrad as gg
    >>> gg.squeeze(gg.zeros((1, 3, 1))).shape
    (3,)
    """
    x = _dl(x)
    if axis is None:
        shape = tuple(s for s in x.shape if s != 1)
    else:
        axes = normalize_axes(axis, x.ndim, "squeeze")
        for a in axes:
            if x.shape[a] != 1:
                raise ValueError(f"squeeze: axis {a} has length {x.shape[a]}, not 1")
        shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    return reshape(x, shape)


def expand_dims(x, axis):
    """Insert an axis of length one at ``axis``.

    >>> import gpugrad as gg
    >>> gg.expand_dims(gg.zeros(3), 0).shape
    (1, 3)
    """
    x = _dl(x)
    nd = x.ndim + 1
    axis = normalize_axis_index(axis, nd, "expand_dims")
    shape = list(x.shape)
    shape.insert(axis, 1)
    return reshape(x, tuple(shape))


def flatten(x):
    """A 1-D copy of the elements (row-major).

    >>> import gpugrad as gg
    >>> gg.flatten(gg.dlarray([[1.0, 2.0], [3.0, 4.0]])).numpy()
    array([1., 2., 3., 4.])
    """
    x = _dl(x)
    return reshape(x, (x.size,))


# ------------------------------------------------------------------ astype


_ASTYPE = Primitive(
    "astype",
    lambda x, dtype: x.astype(dtype),
    lambda g, ans, x, dtype: (g,),  # the walker casts back to x's dtype
)


def astype(x, dtype):
    """Cast to ``dtype``. Casts to float or complex keep gradients; casts to integer or
    bool types carry none (the result is a constant, as in PyTorch and JAX).

    >>> import gpugrad as gg
    >>> gg.astype(gg.dlarray([1.5]), "float32").dtype
    dtype('float32')
    """
    x = _dl(x)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"astype: dtype must be a NumPy dtype, got {dtype!r}") from None
    if x.dtype == dtype:
        return x
    if dtype.kind not in "fc":
        # why: a step function has zero derivative; passing g through was a silent error
        return make(x._data.astype(dtype), x._fmt, None, 0, x._taint)
    return bind(_ASTYPE, (x,), {"dtype": dtype}, x._fmt)


# ------------------------------------------------------------------ indexing


def _is_basic(idx):
    if type(idx) is int:
        return True
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in items)


@host_call  # raw code on index data: a gg.dlaccelerate replay repeats it
def normalize_index(idx, where="index"):
    """Turn dlarray / list indices into raw integer or bool arrays."""
    if isinstance(idx, tuple):
        return tuple(_norm_one(i, where) for i in idx)
    return _norm_one(idx, where)


def _norm_one(i, where):
    if isinstance(i, (int, slice)) or i is None or i is Ellipsis:
        return i
    if isinstance(i, np.integer):
        return int(i)
    if type(i) is dlarray:
        i = i._data
    elif isinstance(i, (list, tuple)):
        i = np.asanyarray(i)
    elif isinstance(i, float):
        raise IndexError(f"{where}: index {i!r} is a float; use an integer")
    if hasattr(i, "dtype"):
        kind = i.dtype.kind
        if kind == "b" or kind in "iu":
            pass
        elif kind == "f":
            r = i.astype(np.int64)
            if not bool((r == i).all()):
                raise IndexError(f"{where}: index array has non-integer values")
            i = r
        else:
            raise IndexError(f"{where}: index arrays must be integer or bool, got {i.dtype}")
        if backend.is_cuda() and not backend.is_device_array(i):
            i = backend.xp().asanyarray(i)
        return i
    raise IndexError(f"{where}: unsupported index {i!r}")


def _scatter_add_fwd(g, idx, shape):
    out = _STATE["xp"].zeros(shape, dtype=g.dtype)
    if type(idx) is int or _is_basic(idx):
        out[idx] = g
    elif _STATE["xp"] is np:
        np.add.at(out, idx, g)
    else:
        # why: through backend (the real cupyx on cuda, the simulated one on cuda-sim)
        backend.cupyx_module().scatter_add(out, idx, g)
    return out


_SCATTER_ADD = Primitive(
    "scatter_add",
    _scatter_add_fwd,
    lambda gg, ans, g, idx, shape: (getitem(gg, idx),),
    fast=lambda gg, ans, g, idx, shape: (gg[idx],),
)


_GETITEM = Primitive(
    "getitem",
    lambda x, idx: x[idx],
    lambda g, ans, x, idx: (bind(_SCATTER_ADD, (g,), {"idx": idx, "shape": x.shape}),),
    fast=lambda g, ans, x, idx: (_scatter_add_fwd(g, idx, x[0]),),
)


def getitem(x, idx):
    """``x[idx]``: ints, slices, ``None``, ``...``, integer and bool arrays."""
    if type(idx) is int and type(x) is dlarray:
        # why: x[0] on a traced vector is the commonest index; skip the general path
        raw = x._data
        try:
            out = _GETITEM.fwd(raw, idx)  # through fwd: an accelerator trace sees it
        except IndexError as exc:
            raise IndexError(
                f"dlarray index {idx!r} is invalid for shape {x.shape}: {exc}"
            ) from None
        if x._node is not None:
            frame = _FRAME.get()
            if frame.recording:
                return _record1(_GETITEM, x, raw, out, {"idx": idx}, "", frame, x._taint)
        return make(out, "", None, 0, x._taint)
    x = _dl(x)
    idx = normalize_index(idx, "dlarray index")
    try:
        out_fmt = x._fmt if x._fmt and _is_basic(idx) and _keeps_ndim(idx) else ""
        return bind(_GETITEM, (x,), {"idx": idx}, out_fmt)
    except IndexError as exc:
        raise IndexError(f"dlarray index {idx!r} is invalid for shape {x.shape}: {exc}") from None


def _keeps_ndim(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, slice) or i is Ellipsis for i in items)


def _setitem_fwd(x, v, idx):
    out = x.copy()
    out[idx] = v
    return out


def _setitem_vjp(g, ans, x, v, idx):
    gx = bind(_SETITEM, (g, 0.0), {"idx": idx})
    gv = getitem(g, idx) if hasattr(v, "shape") else None
    return gx, gv


_SETITEM = Primitive("setitem", _setitem_fwd, _setitem_vjp)


def setitem(x, idx, v):
    """Functional ``x[idx] = v``: a new array; both ``x`` and ``v`` get gradients."""
    x = _dl(x)
    idx = normalize_index(idx, "dlarray index assignment")
    if type(v) is not dlarray:
        v = coerce(v)
    return bind(_SETITEM, (x, v), {"idx": idx}, x._fmt)


def setitem_inplace(x, idx, v):
    """``x[idx] = v`` on the dlarray object: in place outside a trace; inside one, a
    recorded functional update rebound to ``x`` (earlier saved values stay intact)."""
    traced = x._node is not None or (type(v) is dlarray and v._node is not None)
    # an accelerator trace records the functional update (an in-place write is invisible)
    if (traced and tape.FRAME.get().recording) or core.RECORDER is not None:
        new = setitem(x, idx, v)
        x._data, x._node, x._idx = new._data, new._node, new._idx
        x._taint = x._taint or new._taint
        return
    idx = normalize_index(idx, "dlarray index assignment")
    raw = v._data if type(v) is dlarray else coerce(v)
    data = x._data
    node = x._node
    if not hasattr(data, "__setitem__"):
        data = _xp().asanyarray(data).copy()
    elif node is not None and node.prim is not tape.LEAF:
        # why: a recorded op's output may be saved by the tape; never mutate it.
        # The new value is no longer that op's output, so it is untraced.
        data = data.copy()
        x._node = None
    try:
        data[idx] = raw
    except (ValueError, IndexError) as exc:
        raise type(exc)(f"dlarray index assignment x[{idx!r}] = value: {exc}") from None
    tape.bump_version(data)
    x._data = data


def take_along_axis(x, indices, axis):
    """Gather values along ``axis`` (as ``numpy.take_along_axis``); differentiable in ``x``.

    >>> import gpugrad as gg, numpy as np
    >>> x = gg.dlarray([[10.0, 20.0], [30.0, 40.0]])
    >>> gg.take_along_axis(x, np.array([[1], [0]]), axis=1).numpy()
    array([[20.],
           [30.]])
    """
    x = _dl(x)
    ind = indices._data if type(indices) is dlarray else indices
    if not backend.is_device_array(ind):  # why: np.asanyarray of a CuPy array raises
        ind = np.asanyarray(ind)
    axis = normalize_axis_index(axis, x.ndim, "take_along_axis")
    if ind.ndim != x.ndim:
        raise ValueError(
            f"take_along_axis: indices must have the same number of dimensions as x "
            f"({x.ndim}), got {ind.ndim}"
        )
    return getitem(x, _along_axis_index(ind, axis))


@host_call  # raw code on index data: a gg.dlaccelerate replay repeats it
def _along_axis_index(ind, axis):
    ind = ind.astype(np.int64)
    xp = _xp()
    if xp is np:
        grids = list(np.indices(ind.shape, sparse=True))
    else:  # why: made on the device (np.indices + asanyarray was a host->device copy)
        ones = [1] * ind.ndim
        grids = [
            xp.arange(n, dtype=np.int64).reshape(ones[:d] + [n] + ones[d + 1 :])
            for d, n in enumerate(ind.shape)
        ]
    grids[axis] = ind
    return tuple(xp.asanyarray(gr) for gr in grids)


__all__ = [
    "reshape",
    "transpose",
    "moveaxis",
    "swapaxes",
    "broadcast_to",
    "concatenate",
    "stack",
    "flip",
    "squeeze",
    "expand_dims",
    "flatten",
    "astype",
    "getitem",
    "setitem",
    "setitem_inplace",
    "take_along_axis",
    "normalize_index",
]


# ------------------------------------------------------------------ the NumPy surface
# NumPy's shape functions, composed of the primitives above (reshape, transpose,
# broadcast_to, concatenate, flip, getitem, setitem), so every one is differentiable to
# any order with no new rule. Names, arguments and defaults are NumPy's.

from . import axes as _axes  # noqa: E402


def _ndim_at_least(x, n, fn):
    if x.ndim < n:
        raise ValueError(f"{fn}: needs an array of at least {n} dimension(s), got shape {x.shape}")


def ravel(x, order="C"):
    """The elements as a 1-D array (row-major), as ``numpy.ravel``.

    >>> import gpugrad as gg
    >>> gg.ravel(gg.dlarray([[1.0, 2.0], [3.0, 4.0]])).numpy()
    array([1., 2., 3., 4.])
    """
    if order not in ("C", "A", "K"):
        raise ValueError(f"ravel: only order='C' (row-major) is supported, got {order!r}")
    x = _dl(x)
    return reshape(x, (x.size,))


def copy(x):
    """A copy with its own buffer that keeps the trace (its gradient goes to ``x``).

    >>> import gpugrad as gg
    >>> x = gg.dlarray([1.0, 2.0]); y = gg.copy(x); y[0] = 5.0
    >>> x.numpy()
    array([1., 2.])
    """
    x = _dl(x)
    return make(_copy_raw(x._data), x._fmt, x._node, x._idx, x._taint)


@host_call  # a gg.dlaccelerate replay copies the new data
def _copy_raw(raw):
    return raw.copy()


def _take_axis(x, idx, axis):
    """``x`` gathered with the integer array ``idx`` along ``axis`` (differentiable)."""
    xp = _xp()
    return getitem(x, (slice(None),) * axis + (xp.asanyarray(idx),))


def take(a, indices, axis=None, out=None, mode="raise"):
    """Elements at ``indices`` along ``axis`` (flattened when None), as ``numpy.take``
    (``mode`` ``"raise"``, ``"wrap"`` or ``"clip"``).

    >>> import gpugrad as gg
    >>> gg.take(gg.dlarray([[1.0, 2.0], [3.0, 4.0]]), [3, 0]).numpy()
    array([4., 1.])
    """
    if out is not None:
        raise TypeError("take: out= is not supported")
    x = _dl(a)
    if axis is None:
        x = ravel(x)
        axis = 0
    axis = _axes.normalize_axis_index(axis, x.ndim, "take")
    ind = indices._data if type(indices) is dlarray else indices
    ind = np.asanyarray(backend.to_host(ind) if backend.is_device_array(ind) else ind)
    if ind.dtype.kind == "f":
        if not bool((ind == np.round(ind)).all()):
            raise IndexError("take: indices must be integers")
    elif ind.dtype.kind not in "iu":
        raise IndexError(f"take: indices must be integers, got dtype {ind.dtype}")
    ind = ind.astype(np.int64)
    n = x.shape[axis]
    if mode == "wrap":
        ind = ind % n
    elif mode == "clip":
        ind = np.clip(ind, 0, n - 1)
    elif mode == "raise":
        if ind.size and (ind.min() < -n or ind.max() >= n):
            raise IndexError(f"take: index out of bounds for axis {axis} with size {n}")
    else:
        raise ValueError(f"take: mode must be 'raise', 'wrap' or 'clip', got {mode!r}")
    if ind.ndim == 0:
        return getitem(x, (slice(None),) * axis + (int(ind),))
    return _take_axis(x, ind, axis)


def repeat(a, repeats, axis=None):
    """Repeat elements (``numpy.repeat``): each element ``repeats`` times along ``axis``
    (the flattened array when None).

    >>> import gpugrad as gg
    >>> gg.repeat(gg.dlarray([1.0, 2.0]), 2).numpy()
    array([1., 1., 2., 2.])
    """
    x = _dl(a)
    if axis is None:
        x = ravel(x)
        axis = 0
    axis = _axes.normalize_axis_index(axis, x.ndim, "repeat")
    reps = np.asanyarray(repeats)
    if reps.dtype.kind not in "iu" or (reps.size and reps.min() < 0):
        raise ValueError(f"repeat: repeats must be non-negative integers, got {repeats!r}")
    idx = np.repeat(np.arange(x.shape[axis]), reps)
    return _take_axis(x, idx, axis)


def tile(A, reps):  # noqa: N803 - NumPy's argument name
    """Repeat the whole array ``reps`` times per axis, as ``numpy.tile``.

    >>> import gpugrad as gg
    >>> gg.tile(gg.dlarray([1.0, 2.0]), 2).numpy()
    array([1., 2., 1., 2.])
    """
    x = _dl(A)
    reps = (int(reps),) if np.ndim(reps) == 0 else tuple(int(r) for r in reps)
    if any(r < 0 for r in reps):
        raise ValueError(f"tile: reps must be non-negative, got {reps}")
    d = max(len(reps), x.ndim)
    reps = (1,) * (d - len(reps)) + reps
    shape = (1,) * (d - x.ndim) + x.shape
    # (s0, s1, ...) -> (1, s0, 1, s1, ...) -> broadcast (r0, s0, r1, s1, ...) -> merge
    inter = reshape(x, tuple(v for s in shape for v in (1, s)))
    inter = broadcast_to(inter, tuple(v for r, s in zip(reps, shape) for v in (r, s)))
    return reshape(inter, tuple(r * s for r, s in zip(reps, shape)))


def roll(a, shift, axis=None):
    """Roll elements along ``axis`` (the flattened array when None), as ``numpy.roll``.

    >>> import gpugrad as gg
    >>> gg.roll(gg.dlarray([1.0, 2.0, 3.0]), 1).numpy()
    array([3., 1., 2.])
    """
    x = _dl(a)
    if axis is None:
        return reshape(roll(ravel(x), shift, 0), x.shape)
    shifts = (shift,) if np.ndim(shift) == 0 else tuple(shift)
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    if len(shifts) == 1:
        shifts = shifts * len(axes)
    elif len(axes) == 1:
        axes = axes * len(shifts)
    if len(shifts) != len(axes):
        raise ValueError("roll: shift and axis must have the same length")
    total = {}
    for s, ax in zip(shifts, axes):
        ax = _axes.normalize_axis_index(ax, x.ndim, "roll")
        total[ax] = total.get(ax, 0) + int(s)
    for ax, s in total.items():
        n = x.shape[ax]
        if n and s % n:
            x = _take_axis(x, (np.arange(n) - s) % n, ax)
    return x


def rot90(m, k=1, axes=(0, 1)):
    """Rotate by 90 degrees ``k`` times in the plane of ``axes``, as ``numpy.rot90``.

    >>> import gpugrad as gg
    >>> gg.rot90(gg.dlarray([[1.0, 2.0], [3.0, 4.0]])).numpy()
    array([[2., 4.],
           [1., 3.]])
    """
    x = _dl(m)
    axes = tuple(axes)
    if len(axes) != 2:
        raise ValueError("rot90: len(axes) must be 2")
    a0, a1 = (_axes.normalize_axis_index(a, x.ndim, "rot90") for a in axes)
    if a0 == a1:
        raise ValueError("rot90: axes must be different")
    k %= 4
    if k == 0:
        return x
    if k == 2:
        return flip(flip(x, a0), a1)
    order = list(range(x.ndim))
    order[a0], order[a1] = order[a1], order[a0]
    if k == 1:
        return transpose(flip(x, a1), tuple(order))
    return flip(transpose(x, tuple(order)), a1)


def fliplr(m):
    """Reverse the columns (axis 1), as ``numpy.fliplr``."""
    x = _dl(m)
    _ndim_at_least(x, 2, "fliplr")
    return flip(x, 1)


def flipud(m):
    """Reverse the rows (axis 0), as ``numpy.flipud``."""
    x = _dl(m)
    _ndim_at_least(x, 1, "flipud")
    return flip(x, 0)


def rollaxis(a, axis, start=0):
    """Roll ``axis`` backwards until it lies before ``start``, as ``numpy.rollaxis``
    (prefer ``moveaxis``)."""
    x = _dl(a)
    n = x.ndim
    axis = _axes.normalize_axis_index(axis, n, "rollaxis")
    if start < 0:
        start += n
    if not 0 <= start < n + 1:
        raise _axes.AxisError(f"rollaxis: start {start} is out of range for {n} dimension(s)")
    if axis < start:
        start -= 1
    if axis == start:
        return x
    order = list(range(n))
    order.remove(axis)
    order.insert(start, axis)
    return transpose(x, tuple(order))


def atleast_1d(*arys):
    """Each input viewed with at least one dimension (one array, or a tuple of them), as
    NumPy."""
    res = [reshape(_dl(a), (1,)) if _dl(a).ndim == 0 else _dl(a) for a in arys]
    return res[0] if len(res) == 1 else tuple(res)


def atleast_2d(*arys):
    """Each input with at least two dimensions: ``(n,)`` becomes ``(1, n)``, as NumPy."""
    res = []
    for a in arys:
        x = _dl(a)
        if x.ndim < 2:
            x = reshape(x, (1, x.size))
        res.append(x)
    return res[0] if len(res) == 1 else tuple(res)


def atleast_3d(*arys):
    """Each input with at least three dimensions: ``(n,)`` becomes ``(1, n, 1)`` and
    ``(m, n)`` becomes ``(m, n, 1)``, as NumPy.

    >>> import gpugrad as gg
    >>> gg.atleast_3d(gg.dlarray([1.0, 2.0])).shape
    (1, 2, 1)
    """
    res = []
    for a in arys:
        x = _dl(a)
        if x.ndim == 0:
            x = reshape(x, (1, 1, 1))
        elif x.ndim == 1:
            x = reshape(x, (1, x.shape[0], 1))
        elif x.ndim == 2:
            x = reshape(x, x.shape + (1,))
        res.append(x)
    return res[0] if len(res) == 1 else tuple(res)


def _seq(tup, fn):
    if type(tup) is dlarray or isinstance(tup, np.ndarray):
        raise TypeError(f"{fn}: expects a sequence of arrays (list or tuple), got one array")
    return list(tup)


def vstack(tup):
    """Stack arrays vertically (row-wise), as ``numpy.vstack``.

    >>> import gpugrad as gg
    >>> gg.vstack([gg.dlarray([1.0, 2.0]), gg.dlarray([3.0, 4.0])]).shape
    (2, 2)
    """
    arrs = [atleast_2d(a) for a in _seq(tup, "vstack")]
    return concatenate(arrs, axis=0)


row_stack = vstack


def hstack(tup):
    """Stack arrays horizontally (column-wise), as ``numpy.hstack``."""
    arrs = [atleast_1d(a) for a in _seq(tup, "hstack")]
    return concatenate(arrs, axis=0 if arrs and arrs[0].ndim == 1 else 1)


def dstack(tup):
    """Stack arrays along the third axis, as ``numpy.dstack``."""
    arrs = [atleast_3d(a) for a in _seq(tup, "dstack")]
    return concatenate(arrs, axis=2)


def column_stack(tup):
    """Stack 1-D arrays as columns of a 2-D array, as ``numpy.column_stack``.

    >>> import gpugrad as gg
    >>> gg.column_stack([gg.dlarray([1.0, 2.0]), gg.dlarray([3.0, 4.0])]).numpy()
    array([[1., 3.],
           [2., 4.]])
    """
    arrs = []
    for a in _seq(tup, "column_stack"):
        x = _dl(a)
        arrs.append(reshape(x, (x.size, 1)) if x.ndim < 2 else x)
    return concatenate(arrs, axis=1)


def append(arr, values, axis=None):
    """``arr`` with ``values`` appended (both flattened when ``axis`` is None), as
    ``numpy.append``."""
    x, v = _dl(arr), _dl(values)
    if axis is None:
        return concatenate([ravel(x), ravel(v)], axis=0)
    return concatenate([x, v], axis=axis)


def array_split(ary, indices_or_sections, axis=0):
    """Split into sub-arrays (sections may differ in size by one), as
    ``numpy.array_split``; returns a list.

    >>> import gpugrad as gg
    >>> [p.shape for p in gg.array_split(gg.dlarray([1.0, 2.0, 3.0]), 2)]
    [(2,), (1,)]
    """
    x = _dl(ary)
    axis = _axes.normalize_axis_index(axis, x.ndim, "array_split")
    n = x.shape[axis]
    if np.ndim(indices_or_sections) == 0:
        sections = int(indices_or_sections)
        if sections <= 0:
            raise ValueError("array_split: number of sections must be larger than 0")
        each, extra = divmod(n, sections)
        sizes = [each + 1] * extra + [each] * (sections - extra)
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    lead = (slice(None),) * axis
    return [getitem(x, lead + (slice(bounds[i], bounds[i + 1]),)) for i in range(len(bounds) - 1)]


def split(ary, indices_or_sections, axis=0):
    """Split into equal sections (or at the given indices), as ``numpy.split``."""
    x = _dl(ary)
    if np.ndim(indices_or_sections) == 0:
        ax = _axes.normalize_axis_index(axis, x.ndim, "split")
        if x.shape[ax] % int(indices_or_sections):
            raise ValueError("split: array split does not result in an equal division")
    return array_split(x, indices_or_sections, axis)


def hsplit(ary, indices_or_sections):
    """Split along axis 1 (axis 0 for 1-D input), as ``numpy.hsplit``."""
    x = _dl(ary)
    _ndim_at_least(x, 1, "hsplit")
    return split(x, indices_or_sections, 1 if x.ndim > 1 else 0)


def vsplit(ary, indices_or_sections):
    """Split along axis 0 (input of at least 2 dimensions), as ``numpy.vsplit``."""
    x = _dl(ary)
    _ndim_at_least(x, 2, "vsplit")
    return split(x, indices_or_sections, 0)


def dsplit(ary, indices_or_sections):
    """Split along axis 2 (input of at least 3 dimensions), as ``numpy.dsplit``."""
    x = _dl(ary)
    _ndim_at_least(x, 3, "dsplit")
    return split(x, indices_or_sections, 2)


def broadcast_arrays(*args):
    """The inputs broadcast to one shape (a tuple), as ``numpy.broadcast_arrays``."""
    arrs = [_dl(a) for a in args]
    shape = np.broadcast_shapes(*(a.shape for a in arrs))
    return tuple(broadcast_to(a, shape) for a in arrs)


_PAD_INDEX_MODES = ("edge", "reflect", "symmetric", "wrap")


def pad(array, pad_width, mode="constant", **kwargs):
    """Pad an array, as ``numpy.pad``, with ``mode`` ``"constant"`` (``constant_values``,
    a scalar), ``"edge"``, ``"reflect"``, ``"symmetric"`` or ``"wrap"``. Differentiable;
    padded elements that copy input elements pass their gradient to them.

    >>> import gpugrad as gg
    >>> gg.pad(gg.dlarray([1.0, 2.0]), (1, 2)).numpy()
    array([0., 1., 2., 0., 0.])
    >>> gg.pad(gg.dlarray([1.0, 2.0, 3.0]), 2, mode="reflect").numpy()
    array([3., 2., 1., 2., 3., 2., 1.])
    """
    x = _dl(array)
    widths = np.broadcast_to(np.asanyarray(pad_width, dtype=np.int64), (x.ndim, 2)).tolist()
    if np.asanyarray(pad_width).dtype.kind not in "iu" or any(v < 0 for w in widths for v in w):
        raise ValueError(f"pad: pad_width must be non-negative integers, got {pad_width!r}")
    if mode == "constant":
        extra = set(kwargs) - {"constant_values"}
        if extra:
            raise TypeError(f"pad: unexpected keyword(s) {sorted(extra)} for mode='constant'")
        c = kwargs.get("constant_values", 0)
        if np.ndim(c) != 0:
            raise ValueError("pad: only a scalar constant_values is supported")
        c = c._data if type(c) is dlarray else c
        shape = tuple(s + a + b for s, (a, b) in zip(x.shape, widths))
        base = make(_xp().full(shape, c, dtype=x.dtype))
        idx = tuple(slice(a, a + s) for s, (a, _) in zip(x.shape, widths))
        out = setitem(base, idx, x)
        out._fmt = x._fmt
        return out
    if mode not in _PAD_INDEX_MODES:
        raise ValueError(
            f"pad: mode must be one of 'constant', {', '.join(map(repr, _PAD_INDEX_MODES))}, "
            f"got {mode!r}"
        )
    if kwargs.get("reflect_type", "even") != "even" or set(kwargs) - {"reflect_type"}:
        raise ValueError(f"pad: unsupported keyword(s) {kwargs!r} for mode={mode!r}")
    for ax, (a, b) in enumerate(widths):
        if a == 0 and b == 0:
            continue
        n = x.shape[ax]
        if n == 0:
            raise ValueError(f"pad: can't extend empty axis {ax} using mode {mode!r}")
        # why: NumPy's own pad of the index vector is exactly the map from output to
        # input positions for these modes, so values and gradients follow it
        x = _take_axis(x, np.pad(np.arange(n), (a, b), mode=mode), ax)
    return x


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _order(fn, raw, *args, **kwargs):
    """``xp.argsort`` / ``xp.argpartition`` of ``raw`` (flattened when ``axis`` is None)."""
    if kwargs.get("axis", -1) is None:
        raw, kwargs = raw.ravel(), {k: v for k, v in kwargs.items() if k != "axis"}
    return getattr(_xp(), fn)(raw, *args, **kwargs)


def argsort(a, axis=-1, kind=None, order=None):
    """Indices that sort ``a`` along ``axis`` (integer dlarray, not differentiable)."""
    x = _dl(a)
    if axis is None:
        return make(_order("argsort", x._data, axis=None, kind=kind))
    axis = _axes.normalize_axis_index(axis, x.ndim, "argsort")
    return make(_order("argsort", x._data, axis=axis, kind=kind))


def sort(a, axis=-1, kind=None, order=None):
    """Sorted copy along ``axis`` (flattened when None), as ``numpy.sort``; the gradient
    goes back to each element's original position (ties: to the stable order).

    >>> import gpugrad as gg
    >>> gg.sort(gg.dlarray([3.0, 1.0, 2.0])).numpy()
    array([1., 2., 3.])
    """
    if order is not None:
        raise ValueError("sort: order= (structured arrays) is not supported")
    x = _dl(a)
    if axis is None:
        x = ravel(x)
        axis = 0
    axis = _axes.normalize_axis_index(axis, x.ndim, "sort")
    idx = _order("argsort", x._data, axis=axis, kind="stable")
    return take_along_axis(x, idx, axis)


def argpartition(a, kth, axis=-1, kind="introselect", order=None):
    """Indices that partition ``a`` (integer dlarray, not differentiable)."""
    x = _dl(a)
    if axis is None:
        return make(_order("argpartition", x._data, kth, axis=None))
    axis = _axes.normalize_axis_index(axis, x.ndim, "argpartition")
    return make(_order("argpartition", x._data, kth, axis=axis))


def partition(a, kth, axis=-1, kind="introselect", order=None):
    """Partially sorted copy (element ``kth`` in its sorted place, smaller ones before
    it, larger after), as ``numpy.partition``; differentiable like ``sort``.

    >>> import gpugrad as gg
    >>> float(gg.partition(gg.dlarray([3.0, 1.0, 2.0]), 1)[1])
    2.0
    """
    x = _dl(a)
    if axis is None:
        x = ravel(x)
        axis = 0
    axis = _axes.normalize_axis_index(axis, x.ndim, "partition")
    idx = _order("argpartition", x._data, kth, axis=axis)
    return take_along_axis(x, idx, axis)


def select(condlist, choicelist, default=0):
    """Elements from ``choicelist`` where the matching condition first holds, else
    ``default``, as ``numpy.select`` (differentiable in the choices and the default).

    >>> import gpugrad as gg
    >>> x = gg.dlarray([-1.0, 0.5, 3.0])
    >>> gg.select([x < 0, x > 1], [-x, x * 10], default=x).numpy()
    array([ 1. ,  0.5, 30. ])
    """
    from .elementwise import where  # noqa: PLC0415 - elementwise imports nothing from here

    condlist, choicelist = list(condlist), list(choicelist)
    if len(condlist) != len(choicelist):
        raise ValueError("select: list of cases must be same length as list of conditions")
    out = default
    for cond, choice in zip(reversed(condlist), reversed(choicelist)):
        c = cond._data if type(cond) is dlarray else _xp().asanyarray(cond)
        if c.dtype.kind != "b":
            raise TypeError(f"select: condlist entries must be bool arrays, got dtype {c.dtype}")
        out = where(make(c), choice, out)
    if type(out) is not dlarray:
        out = dlarray(out)
    return out


__all__ += [
    "ravel",
    "copy",
    "take",
    "repeat",
    "tile",
    "roll",
    "rot90",
    "fliplr",
    "flipud",
    "rollaxis",
    "atleast_1d",
    "atleast_2d",
    "atleast_3d",
    "vstack",
    "row_stack",
    "hstack",
    "dstack",
    "column_stack",
    "append",
    "array_split",
    "split",
    "hsplit",
    "vsplit",
    "dsplit",
    "broadcast_arrays",
    "pad",
    "argsort",
    "sort",
    "argpartition",
    "partition",
    "select",
]
