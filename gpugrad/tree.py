"""Containers that carry dlarrays: lists, tuples, dicts, dataclasses and objects with
``__gg_flatten__`` / ``__gg_unflatten__`` (``gg.nn.Layer``). Used by every face to
find, trace, untrace and rebuild the dlarrays inside user structures."""

from __future__ import annotations

import dataclasses

from .array import dlarray


def map_arrays(fn, obj):
    """Rebuild ``obj`` with ``fn(x)`` in place of every dlarray inside it."""
    t = type(obj)
    if t is dlarray:
        return fn(obj)
    if t is tuple:  # the commonest container: what a dlfeval function returns
        return tuple([fn(o) if type(o) is dlarray else map_arrays(fn, o) for o in obj])
    if isinstance(obj, (list, tuple)):
        items = [map_arrays(fn, o) for o in obj]
        if isinstance(obj, tuple):
            if hasattr(obj, "_fields"):  # namedtuple
                return type(obj)(*items)
            return tuple(items)
        return items
    if isinstance(obj, dict):
        return type(obj)((k, map_arrays(fn, v)) for k, v in obj.items())
    flatten = getattr(obj, "__gg_flatten__", None)
    if flatten is not None and not isinstance(obj, type):
        children, aux = flatten()
        return obj.__gg_unflatten__(aux, [map_arrays(fn, c) for c in children])
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: map_arrays(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
        return dataclasses.replace(obj, **changes)
    return obj


def leaves(obj):
    """Every dlarray inside ``obj`` in a fixed order."""
    out = []

    def visit(x):
        out.append(x)
        return x

    map_arrays(visit, obj)
    return out


def is_container(obj) -> bool:
    return (
        isinstance(obj, (list, tuple, dict))
        or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))
        or (hasattr(obj, "__gg_flatten__") and not isinstance(obj, type))
    )


def structure_of_gradient(obj):
    """What a gradient for ``obj`` looks like: a Layer's gradient is a dict shaped like
    its ``parameters()``; other containers keep their type."""
    to_grad = getattr(obj, "__gg_gradient_structure__", None)
    if to_grad is not None:
        return to_grad()
    return obj


def map_gradient(fn, obj):
    """Like ``map_arrays`` over the gradient structure of ``obj``."""
    return map_arrays(fn, structure_of_gradient(obj))
