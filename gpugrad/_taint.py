"""Taint tracking for ``gg.dlaccelerate`` traces (NumPy devices).

While a trace records, every array that holds traced data (the function's array
inputs, the arrays it reaches through its closure, every output of a recorded
primitive or host call) is handed to the function's code as a ``Tainted`` view.
NumPy keeps the subclass through ufuncs, methods, indexing and the functions that
dispatch through ``__array_function__``, so raw-array code that runs *outside* the
recorded primitives (a composite op computing a mask with ``x._data < 0``, a sort
order, a ``bool(...)`` branch on data) produces ``Tainted`` results too. The
recorder then refuses to bake such a value into the replay as a constant: the call
runs eagerly instead (with a warning), because a replay would reuse the first
call's mask for every later input, a silently wrong result.

``Tainted`` only exists while a trace records; the arrays handed back to the caller,
and those stored on the inputs, are plain arrays again after the trace.
"""

from __future__ import annotations

import numpy as np

from .ops import core


def _escape(how):
    rec = core.RECORDER
    if rec is not None:
        rec.escape_data(how)


def taint(v):
    """``v`` with its arrays as ``Tainted`` views (containers rebuilt)."""
    t = type(v)
    if t is np.ndarray:
        return v.view(Tainted)
    if t is Tainted:
        return v
    if t is tuple:
        return tuple(taint(x) for x in v)
    if t is list:
        return [taint(x) for x in v]
    if isinstance(v, np.generic) and not isinstance(v, (np.str_, np.bytes_)):
        return np.asarray(v).view(Tainted)
    return v


def plain(v):
    """``v`` with ``Tainted`` views turned back into plain arrays (containers rebuilt)."""
    t = type(v)
    if t is Tainted:
        return v.view(np.ndarray)
    if t is tuple:
        return tuple(plain(x) for x in v) if any(_has(x) for x in v) else v
    if t is list:
        return [plain(x) for x in v] if any(_has(x) for x in v) else v
    if t is dict:
        return {k: plain(x) for k, x in v.items()} if any(_has(x) for x in v.values()) else v
    if t is slice and _has((v.start, v.stop, v.step)):
        return slice(plain(v.start), plain(v.stop), plain(v.step))
    return v


def _has(v):
    t = type(v)
    if t is Tainted:
        return True
    if t is tuple or t is list:
        return any(_has(x) for x in v)
    if t is dict:
        return any(_has(x) for x in v.values())
    if t is slice:
        return _has((v.start, v.stop, v.step))
    return False


def has_taint(v):
    """Whether ``v`` (an array, or a container of them) holds a ``Tainted`` array."""
    return _has(v)


class Tainted(np.ndarray):
    """An array view whose values come from traced data (see the module docstring)."""

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # why: keep 0-d results as arrays, so bool()/float() of a reduction is seen
        return arr.view(Tainted) if isinstance(arr, np.ndarray) else taint(arr)

    def __array_function__(self, func, types, args, kwargs):
        out = super().__array_function__(func, types, args, kwargs)
        if isinstance(out, (bool, float, complex)):
            _escape(f"numpy.{func.__name__} gave a Python value")
        return taint(out)

    def __getitem__(self, index):
        out = super().__getitem__(plain(index))
        return out if isinstance(out, np.ndarray) else taint(out)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __bool__(self):
        _escape("bool() of array data")
        return bool(self.view(np.ndarray))

    def __float__(self):
        _escape("float() of array data")
        return float(self.view(np.ndarray))

    def __int__(self):
        _escape("int() of array data")
        return int(self.view(np.ndarray))

    def __complex__(self):
        _escape("complex() of array data")
        return complex(self.view(np.ndarray))

    def __index__(self):
        _escape("array data used as an index")
        return self.view(np.ndarray).__index__()

    def item(self, *args):
        _escape("item() of array data")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        _escape("tolist() of array data")
        return self.view(np.ndarray).tolist()

    def tobytes(self, order="C"):
        _escape("tobytes() of array data")
        return self.view(np.ndarray).tobytes(order)


__all__ = ["Tainted", "taint", "plain", "has_taint"]
