"""Shape and indexing primitives: reshape, transpose, broadcast_to, concatenate, flip,
getitem, setitem (functional index update), scatter_add, astype; composites on top."""

from __future__ import annotations

import numpy as np

from .. import backend, tape
from .._alloc import shape_arg
from ..array import dlarray
from .axes import normalize_axes, normalize_axis_index
from .core import _STATE, Primitive, _record1, bind, coerce, make

_FRAME = tape.FRAME


def _xp():
    return _STATE["xp"]


def _dl(x):
    return x if type(x) is dlarray else dlarray(x)


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
    """Permute axes (reverse them when ``axes`` is None), as ``numpy.transpose``."""
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
    """Move one axis to a new position."""
    x = _dl(x)
    nd = x.ndim
    source = normalize_axis_index(source, nd, "moveaxis")
    destination = normalize_axis_index(destination, nd, "moveaxis")
    order = [i for i in range(nd) if i != source]
    order.insert(destination, source)
    return transpose(x, tuple(order))


def swapaxes(x, a, b):
    """Interchange two axes."""
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
    """Broadcast to ``shape`` (a read-only view; the gradient is summed back)."""
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
    """Join arrays along an existing axis."""
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
    """Join arrays along a new axis."""
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
    """Reverse the order of elements along ``axis`` (all axes when None)."""
    x = _dl(x)
    axis = normalize_axes(axis, x.ndim, "flip")
    return bind(_FLIP, (x,), {"axis": axis}, x._fmt)


def squeeze(x, axis=None):
    """Remove axes of length one."""
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
    """Insert an axis of length one at ``axis``."""
    x = _dl(x)
    nd = x.ndim + 1
    axis = normalize_axis_index(axis, nd, "expand_dims")
    shape = list(x.shape)
    shape.insert(axis, 1)
    return reshape(x, tuple(shape))


def flatten(x):
    """A 1-D copy of the elements (row-major)."""
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
    bool types carry none (the result is a constant, as in PyTorch and JAX)."""
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
        i = np.asarray(i)
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
        if backend.device() == "cuda" and not backend.is_device_array(i):
            i = backend.xp().asarray(i)
        return i
    raise IndexError(f"{where}: unsupported index {i!r}")


def _scatter_add_fwd(g, idx, shape):
    out = _STATE["xp"].zeros(shape, dtype=g.dtype)
    if type(idx) is int or _is_basic(idx):
        out[idx] = g
    elif _STATE["xp"] is np:
        np.add.at(out, idx, g)
    else:
        import cupyx  # noqa: PLC0415 - only reached on cuda

        cupyx.scatter_add(out, idx, g)
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
            out = raw[idx]
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
    if traced and tape.FRAME.get().recording:
        new = setitem(x, idx, v)
        x._data, x._node, x._idx = new._data, new._node, new._idx
        x._taint = x._taint or new._taint
        return
    idx = normalize_index(idx, "dlarray index assignment")
    raw = v._data if type(v) is dlarray else coerce(v)
    data = x._data
    node = x._node
    if not hasattr(data, "__setitem__"):
        data = _xp().asarray(data).copy()
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
    """Gather values along ``axis`` (as ``numpy.take_along_axis``); differentiable in ``x``."""
    x = _dl(x)
    ind = indices._data if type(indices) is dlarray else np.asarray(indices)
    ind = ind.astype(np.int64)
    axis = normalize_axis_index(axis, x.ndim, "take_along_axis")
    if ind.ndim != x.ndim:
        raise ValueError(
            f"take_along_axis: indices must have the same number of dimensions as x "
            f"({x.ndim}), got {ind.ndim}"
        )
    grids = list(np.indices(ind.shape, sparse=True))
    grids[axis] = ind
    xp = _xp()
    idx = tuple(xp.asarray(gr) for gr in grids)
    return getitem(x, idx)


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
