"""Collectives on dlarrays, raw arrays and trees; ``all_reduce`` is differentiable."""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from .. import backend, tape
from ..array import dlarray
from ..errors import TraceError
from ..ops.core import Primitive, make
from ..ops.elementwise import divide, equal, multiply
from ..ops.shape import astype
from ._world import comm

OPS = ("sum", "mean", "max", "min")


def _check_op(op, where):
    if op not in OPS:
        raise ValueError(f"{where}: op must be one of {OPS}, got {op!r}")


def _is_raw(x):
    cupy = backend._state["cupy"]
    return isinstance(x, np.ndarray) or (cupy is not None and isinstance(x, cupy.ndarray))


def _raw_reduce(raw, op, where="all_reduce"):
    """A new array: ``raw`` reduced over ranks with ``op`` (sum/mean/max/min)."""
    xp = backend.xp()
    dt = raw.dtype
    if dt.kind == "c" and op in ("max", "min"):
        raise TypeError(
            f"{where}: op={op!r} is not defined for complex values ({dt}); use 'sum' or 'mean'"
        )
    if dt.kind == "b":
        if op in ("sum", "mean"):
            raise TypeError(
                f"{where}: op={op!r} on a bool array; cast it to a number first, e.g. "
                "gg.astype(x, 'int64')"
            )
        buf = xp.array(raw, dtype=np.uint8, copy=True)
        comm().allreduce_(buf, op)
        return buf.astype(np.bool_)
    buf = xp.array(raw, copy=True, order="C")
    if buf.ndim == 0:
        buf = buf.reshape(1)
        shape = ()
    else:
        shape = buf.shape
    # why: complex is reduced as (re, im) pairs of reals, as NCCL can only do that
    flat = buf.view(buf.real.dtype) if dt.kind == "c" else buf
    reduced = "sum" if op == "mean" else op
    comm().allreduce_(flat, reduced)
    if op == "mean":
        if dt.kind in "iu":
            raise TypeError(f"{where}: op='mean' on integers ({dt}); cast to float first")
        buf /= comm().size
    return buf.reshape(shape)


def _all_reduce_fwd(raw, op):
    return _raw_reduce(raw, op)


def _all_reduce_vjp(g, ans, x, op):
    # sum and mean are linear: the transpose of an all-reduce is the same all-reduce
    return (ALL_REDUCE(g, op=op),)


ALL_REDUCE = Primitive("all_reduce", _all_reduce_fwd, _all_reduce_vjp)


def _extremum_vjp(g, ans, x, op):
    # the gradient goes to the elements (on any rank) equal to the result, shared
    # equally between ties, as gg.max does within one array
    mask = astype(equal(x, ans), g.dtype)
    count = ALL_REDUCE(mask, op="sum")
    return (divide(multiply(mask, ALL_REDUCE(g, op="sum")), count),)


ALL_REDUCE_EXTREMUM = Primitive(
    "all_reduce_extremum", _all_reduce_fwd, _extremum_vjp, save=(0,), save_ans=True
)


# ------------------------------------------------------------------ trees


def _map_leaves(fn, obj):
    """Rebuild ``obj`` with ``fn(leaf)`` for every dlarray, raw array and number in it
    (through lists, tuples, dicts, dataclasses and ``gg.nn.Layer`` objects)."""
    if type(obj) is dlarray or _is_raw(obj) or isinstance(obj, (numbers.Number, np.generic)):
        if isinstance(obj, bool):
            return obj
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        items = [_map_leaves(fn, o) for o in obj]
        if isinstance(obj, tuple):
            return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
        return items
    if isinstance(obj, dict):
        return type(obj)((k, _map_leaves(fn, v)) for k, v in obj.items())
    flatten = getattr(obj, "__gg_flatten__", None)
    if flatten is not None and not isinstance(obj, type):
        children, aux = flatten()
        return obj.__gg_unflatten__(aux, [_map_leaves(fn, c) for c in children])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: _map_leaves(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
        return dataclasses.replace(obj, **changes)
    return obj


def _leaf_list(obj):
    out = []

    def visit(x):
        out.append(x)
        return x

    _map_leaves(visit, obj)
    return out


def _traced(x):
    return type(x) is dlarray and x._node is not None and tape.FRAME.get().recording


def _raw_of(x):
    if type(x) is dlarray:
        return x._data
    if _is_raw(x):
        return x
    return np.asarray(x)


def _rewrap(like, raw):
    if type(like) is dlarray:
        return make(raw, like._fmt)
    if isinstance(like, np.ndarray):
        return backend.to_host(raw)  # a host array in, a host array out (on cuda too)
    if _is_raw(like):
        return raw
    value = raw.item() if hasattr(raw, "item") else raw
    return type(like)(value) if isinstance(like, numbers.Number) else value


def pack_reduce(raws, op, scale=None):
    """Reduce many raw arrays with one collective per dtype (packed into one flat
    buffer each); returns the reduced arrays (new memory) in the same order."""
    xp = backend.xp()
    groups = {}
    for i, r in enumerate(raws):
        groups.setdefault(np.dtype(r.dtype), []).append(i)
    out = [None] * len(raws)
    c = comm()
    for dt, idx in groups.items():
        if dt.kind == "c" and op in ("max", "min"):
            raise TypeError(f"all_reduce: op={op!r} is not defined for complex values ({dt})")
        parts = [xp.ravel(xp.asarray(raws[i])) for i in idx]
        if scale is not None:
            parts = [p * scale for p in parts]
        buf = xp.concatenate(parts) if len(parts) > 1 else xp.array(parts[0], copy=True)
        if dt.kind == "b":
            flat = buf.view(np.uint8)
        else:
            flat = buf.view(buf.real.dtype) if dt.kind == "c" else buf
        c.allreduce_(flat, "sum" if op == "mean" else op)
        if op == "mean":
            buf /= c.size
        at = 0
        for i in idx:
            n = int(np.prod(raws[i].shape))
            out[i] = buf[at : at + n].reshape(raws[i].shape)
            at += n
    return out


def all_reduce(x, op="sum"):
    """Reduce ``x`` over all ranks with ``op`` (``"sum"``, ``"mean"``, ``"max"``,
    ``"min"``); every rank gets the result. ``x`` is a dlarray, a raw array, a number
    or a tree of them (dict/list/tuple/dataclass/``gg.nn.Layer``); the result has the
    same structure. Complex values are reduced as pairs of reals (sum and mean only).

    Differentiable: the derivative of the reduction is the same reduction of the
    cotangent, so ``dlgradient`` of a function that calls ``all_reduce`` on rank ``r``
    gives the derivative of the *sum over ranks* of every rank's function with
    respect to rank ``r``'s inputs (max/min send the gradient to the elements that
    attain the result, on whichever rank). Higher derivatives work.

    >>> import gpugrad as gg, gpugrad.distributed as dist
    >>> dist.all_reduce(gg.dlarray([1.0, 2.0]), op="mean").numpy()  # one process
    array([1., 2.])
    >>> dist.all_reduce({"loss": 0.5, "n": 3})
    {'loss': 0.5, 'n': 3}
    """
    _check_op(op, "all_reduce")
    if type(x) is dlarray:
        prim = ALL_REDUCE if op in ("sum", "mean") else ALL_REDUCE_EXTREMUM
        if x.dtype.kind == "c" and op in ("max", "min"):
            raise TypeError(
                f"all_reduce: op={op!r} is not defined for complex values ({x.dtype}); "
                "use 'sum' or 'mean'"
            )
        return prim(x, op=op)
    if _is_raw(x):
        return _rewrap(x, _raw_reduce(x, op))
    if isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, bool):
        return _rewrap(x, _raw_reduce(np.asarray(x), op))
    leaves = _leaf_list(x)
    traced = [v for v in leaves if _traced(v)]
    plain = [v for v in leaves if not _traced(v)]
    reduced = {}
    if traced:
        for v in traced:
            reduced[id(v)] = all_reduce(v, op)
    if plain:
        raws = pack_reduce([_raw_of(v) for v in plain], op)
        for v, r in zip(plain, raws):
            reduced[id(v)] = _rewrap(v, r)
    return _map_leaves(lambda v: reduced[id(v)], x)


def average_gradients(tree, weight=None):
    """Gradients averaged over ranks: ``sum(g) / size()`` with ``weight=None``, else
    the weighted sum ``sum(weight_r * g_r)``. For unequal shards pass
    ``weight = local_batch / global_batch`` (MATLAB's worker normalization factor):
    the result is then exactly the full-batch gradient of a mean loss. One collective
    per dtype (the tree is packed). Traced gradients (taken with
    ``enable_higher_derivatives=True``) stay differentiable.

    >>> import gpugrad as gg, gpugrad.distributed as dist
    >>> g = {"w": gg.dlarray([2.0, 4.0])}
    >>> dist.average_gradients(g, weight=0.5)["w"].numpy()  # one process
    array([1., 2.])
    """
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, (numbers.Real, np.floating)):
            raise TypeError(
                f"average_gradients: weight must be a real number (local/global batch), "
                f"got {type(weight).__name__}"
            )
        weight = float(weight)
    leaves = _leaf_list(tree)
    traced = [v for v in leaves if _traced(v)]
    plain = [v for v in leaves if not _traced(v)]
    out = {}
    for v in traced:
        if weight is None:
            out[id(v)] = all_reduce(v, "mean")
        else:
            out[id(v)] = all_reduce(v * weight, "sum")
    if plain:
        raws = [_raw_of(v) for v in plain]
        for r in raws:
            if r.dtype.kind not in "fc":
                raise TypeError(
                    f"average_gradients: gradients must be float or complex, got {r.dtype}"
                )
        if weight is None:
            reduced = pack_reduce(raws, "mean")
        else:
            reduced = pack_reduce(raws, "sum", scale=weight)
        for v, r in zip(plain, reduced):
            out[id(v)] = _rewrap(v, r)
    return _map_leaves(lambda v: out[id(v)], tree)


def _refuse_traced(x, where):
    if _traced(x):
        raise TraceError(
            f"{where}: is not differentiable, and x is traced; apply it to values outside "
            "the differentiated function (gg.extractdata(x)) or use all_reduce"
        )


def broadcast(x, root=0):
    """Rank ``root``'s ``x`` on every rank (a dlarray, raw array, number, or any
    picklable value; trees of arrays go leaf by leaf). Every rank must pass an ``x`` of
    the same shape and dtype (its values are ignored except on ``root``).

    >>> import gpugrad as gg, gpugrad.distributed as dist
    >>> dist.broadcast(gg.dlarray([1.0, 2.0])).numpy()
    array([1., 2.])
    """
    c = comm()
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < c.size:
        raise ValueError(f"broadcast: root must be a rank in [0, {c.size}), got {root!r}")
    leaves = _leaf_list(x)
    if not leaves:
        return c.bcast_obj(x, int(root))
    for v in leaves:
        _refuse_traced(v, "broadcast")
    sigs = [(np.shape(_raw_of(v)), str(_raw_of(v).dtype)) for v in leaves]
    _same_everywhere(sigs, "broadcast", "shapes and dtypes of x")
    xp = backend.xp()
    out = {}
    for v in leaves:
        raw = _raw_of(v)
        buf = xp.array(raw, copy=True, order="C")
        if buf.ndim == 0:
            buf = buf.reshape(1)
        c.bcast_(buf, int(root))
        out[id(v)] = _rewrap(v, buf.reshape(np.shape(raw)))
    return _map_leaves(lambda v: out[id(v)], x)


def all_gather(x):
    """Every rank's ``x`` stacked along a new first axis (length ``size()``), on every
    rank; trees leaf by leaf. Shapes and dtypes must agree across ranks.

    >>> import gpugrad as gg, gpugrad.distributed as dist
    >>> dist.all_gather(gg.dlarray([1.0, 2.0])).shape
    (1, 2)
    """
    c = comm()
    leaves = _leaf_list(x)
    if not leaves:
        return c.allgather_obj(x)
    for v in leaves:
        _refuse_traced(v, "all_gather")
    sigs = [(np.shape(_raw_of(v)), str(_raw_of(v).dtype)) for v in leaves]
    _same_everywhere(sigs, "all_gather", "shapes and dtypes of x")
    xp = backend.xp()
    out = {}
    for v in leaves:
        raw = _raw_of(v)
        gathered = c.allgather(xp.ascontiguousarray(xp.asarray(raw)))
        out[id(v)] = make(gathered) if type(v) is dlarray else _rewrap(v, gathered)
    return _map_leaves(lambda v: out[id(v)], x)


def _same_everywhere(obj, where, what):
    """Raise on every rank (no hang) when ranks disagree on ``obj``."""
    c = comm()
    if c.size == 1:
        return
    seen = c.allgather_obj(obj)
    bad = [r for r, o in enumerate(seen) if o != seen[0]]
    if bad:
        raise ValueError(
            f"{where}: ranks disagree on the {what}: rank 0 has {seen[0]!r}, "
            f"rank {bad[0]} has {seen[bad[0]]!r}"
        )
