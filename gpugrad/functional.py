"""Swift for TensorFlow face: ``gradient``, ``value_with_gradient``,
``value_with_pullback``, ``custom_derivative``/``derivative``,
``differentiable_function``, ``without_derivative`` and ``with_derivative``.

A thin shell over the one tape engine: ``gradient(f)`` opens a trace scope like
``dlfeval``, marks the selected arguments as leaves and runs the engine's walk.
When the enclosing scope is itself recording (``gradient(gradient(f))``, inside
``dlfeval`` or ``autograd.record()``) the walk is recorded too, so the returned
gradients are differentiable again; otherwise results come back untraced.

>>> import gpugrad as gg
>>> df = gg.gradient(lambda x: gg.sin(x) * x)
>>> round(float(df(gg.dlarray(0.5))), 6)
0.918217
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import backend, tape
from .array import as_raw, dlarray
from .errors import TraceError
from .matlab import check_scalar_output, trace_leaf, untrace
from .ops import core
from .ops.core import Primitive, bind, make
from .tree import is_container, leaves, map_arrays, map_gradient, structure_of_gradient

__all__ = [
    "gradient",
    "value_with_gradient",
    "value_with_pullback",
    "custom_derivative",
    "derivative",
    "differentiable_function",
    "without_derivative",
    "stop_gradient",
    "with_derivative",
]


# ------------------------------------------------------------------ argument handling


def _is_number_or_raw(a):
    return isinstance(
        a, (bool, int, float, complex, np.ndarray, np.generic)
    ) or backend.is_device_array(a)


def _as_array_arg(a):
    """Numbers and raw arrays become dlarrays, also inside lists, tuples, dicts,
    dataclasses and ``gg.nn.Layer`` objects (so every leaf is differentiated);
    dlarrays and other objects (strings, ``None``, ...) pass through. Integer
    leaves become float64, as ``gg.dlarray`` (MATLAB ``double``) makes them."""
    if isinstance(a, dlarray):
        return a
    if _is_number_or_raw(a):
        return dlarray(a)
    if is_container(a):
        return map_leaves(_as_array_arg, a)
    return a


def map_leaves(fn, obj):
    """Rebuild the container ``obj`` with ``fn(v)`` for every leaf that is a dlarray,
    a number or a raw array (``tree.map_arrays`` only visits dlarrays)."""
    if isinstance(obj, dlarray) or _is_number_or_raw(obj):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        items = [map_leaves(fn, o) for o in obj]
        if isinstance(obj, tuple):
            return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
        return items
    if isinstance(obj, dict):
        return type(obj)((k, map_leaves(fn, v)) for k, v in obj.items())
    if hasattr(obj, "__gg_flatten__") and not isinstance(obj, type):
        return map_arrays(fn, obj)  # a Layer holds dlarrays already
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {
            f.name: map_leaves(fn, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
        return dataclasses.replace(obj, **changes)
    return obj


def _snapshot(obj):
    """A copy of the structure ``obj`` whose dlarrays are new objects standing for the
    values they hold now: what the gradient is taken with respect to, even if the
    function then updates an argument in place (``a[1] = 3.0``, ``a *= 2``) or
    mutates a container argument."""
    return map_arrays(lambda x: make(x._data, x._fmt, x._node, x._idx, x._taint), obj)


def _flat(obj):
    return [obj] if isinstance(obj, dlarray) else leaves(obj)


def _select(argnums, nargs, where):
    """(positions, single) for ``argnums`` (None: all positional arguments)."""
    if argnums is None:
        if nargs == 0:
            raise TypeError(f"{where}: the function was called without positional arguments")
        return tuple(range(nargs)), nargs == 1
    if isinstance(argnums, (int, np.integer)):
        positions, single = (int(argnums),), True
    else:
        try:
            positions, single = tuple(int(i) for i in argnums), False
        except TypeError:
            raise TypeError(
                f"{where}: argnums must be None, an int or a tuple of ints, got {argnums!r}"
            ) from None
    for i in positions:
        if not -nargs <= i < nargs:
            raise ValueError(
                f"{where}: argnums={argnums!r} is out of range for a call with {nargs} "
                "positional argument(s)"
            )
    return tuple(i % nargs for i in positions), single


def _is_differentiable(x):
    return isinstance(x, dlarray) and x.dtype.kind in "fc" and x._node is not None


def _check_y(y, where):
    """``y`` must be a real scalar; returns ``None`` for a constant (untraced) scalar."""
    if isinstance(y, (int, float, np.floating, np.integer)) and not isinstance(y, bool):
        return None
    if isinstance(y, dlarray) and y._node is None and not y._taint:
        if y.size != 1:
            raise TraceError(
                f"{where}: the function must return a scalar, but it returned shape {y.shape}; "
                "reduce it first, e.g. gg.sum(y), or use gg.value_with_pullback for a "
                "vector-Jacobian product"
            )
        if y.dtype.kind not in "fiu":
            raise TraceError(f"{where}: the function must return a real scalar, got {y.dtype}")
        return None
    if isinstance(y, dlarray) and y.size != 1:
        raise TraceError(
            f"{where}: the function must return a scalar, but it returned shape {y.shape}; "
            "reduce it first, e.g. gg.sum(y), or use gg.value_with_pullback for a "
            "vector-Jacobian product"
        )
    if not isinstance(y, dlarray):
        raise TraceError(
            f"{where}: the function must return a real scalar dlarray, got {type(y).__name__}"
        )
    check_scalar_output(y, where)
    return y


def _pull(roots, flat, create_graph, retain):
    """The engine walk: cotangents for each dlarray of ``flat`` (zeros where the roots
    do not depend on it; ``None`` for values that cannot be differentiated)."""
    xp = backend.xp()
    diff = [x for x in flat if _is_differentiable(x)]
    results = (
        core.backward(
            roots,
            [(x._node, x._idx) for x in diff],
            create_graph=create_graph,
            retain=retain,
        )
        if roots and diff
        else [None] * len(diff)
    )
    table = {id(x): g for x, g in zip(diff, results)}
    out = []
    for x in flat:
        if not isinstance(x, dlarray) or x.dtype.kind not in "fc":
            out.append(None)
            continue
        g = table.get(id(x))
        if g is None:
            g = make(xp.zeros(x.shape, x.dtype), x._fmt)
        elif create_graph:
            g = make(g._data, x._fmt, g._node, g._idx, g._taint)
        else:
            g = make(g._data, x._fmt)
        out.append(g)
    return out


class _Traced:
    """Opens a trace scope whose leaves are the selected arguments (like ``dlfeval``)."""

    def __init__(self, kind, args, positions):
        frame = tape.FRAME.get()
        self.outer_recording = frame.recording
        self.trace = tape.Trace(kind, frame.trace)
        targs = [_as_array_arg(a) if i in positions else a for i, a in enumerate(args)]
        for i in positions:
            targs[i] = map_arrays(lambda x: trace_leaf(x, self.trace, frame), targs[i])
        self.args = targs
        self.scope = tape.scope(trace=self.trace, recording=True)

    def finish(self, obj):
        """What leaves the scope: traced when the enclosing scope records, else untraced."""
        return obj if self.outer_recording else map_arrays(untrace, obj)


def _grads_structured(targ, table):
    if isinstance(targ, dlarray):
        return table[id(targ)]
    return map_gradient(lambda a: table[id(a)], targ)


def _value_and_grad(f, args, kwargs, argnums, where):
    positions, single = _select(argnums, len(args), where)
    tr = _Traced(where, args, positions)
    # why: the gradient is for the values the caller passed, even if f updates an
    # argument in place (which rebinds that dlarray object to the updated value)
    snap = {i: _snapshot(tr.args[i]) for i in positions}
    flat = [x for i in positions for x in _flat(snap[i])]
    try:
        with tr.scope:
            y = f(*tr.args, **kwargs)
            ty = _check_y(y, where)
            roots = []
            if ty is not None:
                seed = make(backend.xp().ones(ty.shape, ty.dtype))
                roots = [(ty._node, ty._idx, seed)]
            cts = _pull(roots, flat, create_graph=tr.outer_recording, retain=tr.outer_recording)
    finally:
        tr.trace.closed = True
    table = {id(x): g for x, g in zip(flat, cts)}
    grads = tuple(_grads_structured(snap[i], table) for i in positions)
    value = y if isinstance(y, dlarray) else dlarray(y)
    return tr.finish(value), (grads[0] if single else grads)


def gradient(
    f: Callable[..., Any], argnums: int | Sequence[int] | None = None
) -> Callable[..., Any]:
    """A function giving the gradient of the real scalar ``f`` at its arguments: one
    value for one differentiated argument, else a tuple (``argnums=None``: all
    positional arguments; an int or tuple selects). Arguments may be dlarrays,
    numbers, NumPy arrays or lists, tuples, dicts and dataclasses of them (a
    ``gg.nn.Layer`` gets a dict shaped like its ``parameters()``); every numeric leaf
    is differentiated and its gradient sits at the same place of the same structure.
    Integer leaves become float64, as ``gg.dlarray`` (MATLAB ``double``) makes them;
    other leaves (strings, ``None``) are passed through. Nested use
    (``gradient(gradient(f))``) and use inside ``dlfeval``/``record()`` give
    differentiable gradients.

    The gradient is with respect to the values the caller passed in, also when ``f``
    updates an argument in place (``a[1] = 3.0`` or ``a *= 2`` rebind ``a`` to the
    updated value, as in NumPy).

    >>> import gpugrad as gg, numpy as np
    >>> float(gg.gradient(lambda x: x ** 3)(2.0))
    12.0
    >>> g = gg.gradient(lambda p: gg.sum(p["w"] * p["b"]))({"w": np.array([1.0, 2.0]), "b": 3})
    >>> g["w"].numpy(), float(g["b"])
    (array([3., 3.]), 3.0)
    >>> def f(a):
    ...     a[1] = 3.0  # the gradient stays with respect to the a passed in
    ...     return gg.sum(a * a)
    >>> gg.gradient(f)(np.array([1.0, 2.0, 3.0])).numpy()
    array([2., 0., 6.])
    """
    if not callable(f):
        raise TypeError(f"gradient: f must be callable, got {type(f).__name__}")
    transform = getattr(f, "__gg_transform__", None)  # gg.dlaccelerate(f): accelerated
    if transform is not None:
        return transform(gradient, argnums)

    @functools.wraps(f)
    def grad_f(*args, **kwargs):
        return _value_and_grad(f, args, kwargs, argnums, "gradient")[1]

    return grad_f


def value_with_gradient(
    f: Callable[..., Any], argnums: int | Sequence[int] | None = None
) -> Callable[..., tuple[Any, Any]]:
    """A function giving ``(value, gradients)`` of the real scalar ``f`` (gradients as
    :func:`gradient` gives them).

    >>> import gpugrad as gg
    >>> v, g = gg.value_with_gradient(lambda x, y: x * y)(3.0, 4.0)
    >>> float(v), float(g[0]), float(g[1])
    (12.0, 4.0, 3.0)
    """
    if not callable(f):
        raise TypeError(f"value_with_gradient: f must be callable, got {type(f).__name__}")
    transform = getattr(f, "__gg_transform__", None)  # gg.dlaccelerate(f): accelerated
    if transform is not None:
        return transform(value_with_gradient, argnums)

    @functools.wraps(f)
    def vg(*args, **kwargs):
        return _value_and_grad(f, args, kwargs, argnums, "value_with_gradient")

    return vg


def value_with_pullback(
    f: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[Any, Callable[..., Any]]:
    """``(value, pullback)`` of ``f`` at ``args``; ``pullback(v)`` is the
    vector-Jacobian product ``v^T J`` for every positional argument (one value for
    one argument, else a tuple). ``v`` has the shape of the value (a tuple of
    cotangents when ``f`` returns a tuple). The pullback can be called many times;
    called where recording is on, its result is differentiable again.

    >>> import gpugrad as gg
    >>> y, pb = gg.value_with_pullback(lambda x: x * x, gg.dlarray([1.0, 2.0]))
    >>> pb(gg.dlarray([1.0, 0.0])).numpy().tolist()
    [2.0, 0.0]
    """
    if not callable(f):
        raise TypeError(f"value_with_pullback: f must be callable, got {type(f).__name__}")
    where = "value_with_pullback"
    positions, single = _select(None, len(args), where)
    tr = _Traced(where, args, positions)
    snap = {i: _snapshot(tr.args[i]) for i in positions}  # the values passed in
    try:
        with tr.scope:
            y = f(*tr.args, **kwargs)
    finally:
        tr.trace.closed = True
    if not (isinstance(y, dlarray) or is_container(y)):
        raise TypeError(
            f"{where}: f must return a dlarray or a container (tuple, list, dict, "
            f"dataclass) of them, got {type(y).__name__}"
        )
    outs = _flat(y)
    if not outs:
        raise TypeError(f"{where}: f returned a {type(y).__name__} without any dlarray in it")
    flat = [x for i in positions for x in _flat(snap[i])]

    def pullback(v):
        if isinstance(y, dlarray):
            vs = [v]
        else:
            vs = _flatten_like(y, v, "pullback")
        if len(vs) != len(outs):
            raise ValueError(
                f"pullback: expected {len(outs)} cotangent(s), one per output of f, got {len(vs)}"
            )
        roots = []
        for k, (o, c) in enumerate(zip(outs, vs)):
            if c is None:
                continue
            c = c if isinstance(c, dlarray) else dlarray(c)
            if c.shape != o.shape:
                raise ValueError(
                    f"pullback: the cotangent for output {k} has shape {c.shape}, but the "
                    f"output has shape {o.shape}"
                )
            if o._node is not None:
                roots.append((o._node, o._idx, c))
        create = tr.outer_recording or tape.FRAME.get().recording
        cts = _pull(roots, flat, create_graph=create, retain=True)
        table = {id(x): g for x, g in zip(flat, cts)}
        res = tuple(_grads_structured(snap[i], table) for i in positions)
        return res[0] if single else res

    return tr.finish(y), pullback


def _flatten_like(struct, value, where):
    """The parts of ``value`` that sit where ``struct`` has its dlarrays, in the order
    of ``leaves(struct)`` (``None`` where ``value`` has ``None``): cotangents given in
    the structure of the value (or argument) they belong to."""
    if isinstance(struct, dlarray):
        return [value]
    if value is None:
        return [None] * len(_flat(struct))
    if isinstance(struct, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(struct):
            raise ValueError(
                f"{where}: expected a {type(struct).__name__} of {len(struct)} item(s) shaped "
                f"like the value, got {type(value).__name__}"
                + (f" of {len(value)}" if isinstance(value, (list, tuple)) else "")
            )
        return [c for s, v in zip(struct, value) for c in _flatten_like(s, v, where)]
    if isinstance(struct, dict):
        if not isinstance(value, dict) or set(value) - set(struct):
            raise ValueError(
                f"{where}: expected a dict with keys {sorted(map(str, struct))} shaped like "
                f"the value, got {type(value).__name__}"
                + (f" with keys {sorted(map(str, value))}" if isinstance(value, dict) else "")
            )
        return [c for k, s in struct.items() for c in _flatten_like(s, value.get(k), where)]
    if hasattr(struct, "__gg_flatten__") and not isinstance(struct, type):
        gs = structure_of_gradient(struct)
        table = {id(x): c for x, c in zip(_flat(gs), _flatten_like(gs, value, where))}
        return [table.get(id(x)) for x in _flat(struct)]
    if dataclasses.is_dataclass(struct) and not isinstance(struct, type):
        return [
            c
            for f in dataclasses.fields(struct)
            if f.init
            for c in _flatten_like(getattr(struct, f.name), getattr(value, f.name, None), where)
        ]
    return []


# ------------------------------------------------------------------ custom derivatives


class _Everything:
    """``save`` set of custom primitives: every input is saved (any arity)."""

    def __contains__(self, item):
        return True

    def __bool__(self):
        return True


_ALL = _Everything()
_STATE_KEY = "_gg_custom_state"
_ids = itertools.count()


def _name_of(fn):
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _to_dlarray(v):
    if isinstance(v, dlarray):
        return v
    return make(as_raw(v))


class CustomDerivativeFunction:
    """A function with a registered derivative (made by ``@gg.custom_derivative``).

    Called untraced, its body runs with untraced dlarray copies of the arguments
    (any NumPy/CuPy or foreign code may run inside). Called on traced values, the
    registered derivative ``(*args) -> (value, pullback)`` gives the value and the
    pullback the backward pass uses; under higher derivatives the derivative is
    called again on the traced inputs, so the pullback is itself differentiated.
    """

    def __init__(self, fn, name=None):
        if not callable(fn):
            raise TypeError(f"custom_derivative: expected a function, got {type(fn).__name__}")
        self.fn = fn
        self._derivative = None
        self.name = name or _name_of(fn)
        functools.update_wrapper(self, fn)
        self._prim = Primitive(
            f"custom:{self.name}#{next(_ids)}",
            self._fwd,
            self._vjp,
            register=False,
            multiple_outputs=True,
        )
        self._prim.save = _ALL

    def __repr__(self):
        return f"<custom_derivative {self.name}>"

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return functools.partial(self, obj)

    # registration -------------------------------------------------------
    def derivative(self, vjp):
        """Register ``vjp(*args) -> (value, pullback)`` as the derivative (decorator)."""
        if not callable(vjp):
            raise TypeError(
                f"derivative of {self.name}: expected a function (*args) -> (value, pullback), "
                f"got {type(vjp).__name__}"
            )
        self._derivative = vjp
        return vjp

    # calling --------------------------------------------------------------
    def _run_body(self, args, kwargs):
        copies = map_arrays(lambda a: make(a._data, a._fmt), args)
        with tape.scope(recording=False):
            return self.fn(*copies, **kwargs)

    def __call__(self, *args, **kwargs):
        if core.RECORDER is not None:
            # why: the body and the pullback are foreign code a gg.dlaccelerate trace
            # cannot see into (a pullback closing over the first call's NumPy data
            # would be replayed with it): such a call runs eagerly
            core.RECORDER.refuse(f"custom_derivative function {self.name!r}")
        frame = tape.FRAME.get()
        # raw arrays (anywhere in the arguments) reach the derivative as dlarrays;
        # Python numbers stay numbers
        args = tuple(map_leaves(_raw_to_dlarray, a) for a in args)
        flat = leaves(args)
        traced = frame.recording and any(a._node is not None and a.dtype.kind in "fc" for a in flat)
        if not traced:
            out = self._run_body(args, kwargs)
            if isinstance(out, dlarray) or is_container(out):
                return map_leaves(_to_dlarray, out)
            return dlarray(out)
        if self._derivative is None:
            raise TraceError(
                f"custom_derivative function {self.name!r} is being differentiated but has no "
                f"registered derivative; register one with @{self.fn.__name__}.derivative or "
                f"@gg.derivative(of={self.fn.__name__}) on a function (*args) -> (value, pullback)"
            )
        # why: one primitive over the flat dlarray leaves, so arguments and results may
        # be lists, tuples, dicts or dataclasses of dlarrays; the structures travel in
        # the node's parameters
        state = {"args": args}
        params = dict(kwargs)
        params[_STATE_KEY] = state
        outs = bind(self._prim, flat, params)
        for o, fmt in zip(outs, state["fmts"]):
            if fmt and o.ndim == len(fmt):
                o._fmt = fmt
        it = iter(outs)
        return map_arrays(lambda _: next(it), state["value"])

    def _call_derivative(self, args, kwargs):
        res = self._derivative(*args, **kwargs)
        if not (isinstance(res, tuple) and len(res) == 2 and callable(res[1])):
            raise TypeError(
                f"derivative of {self.name}: must return a pair (value, pullback) with a callable "
                f"pullback, got {type(res).__name__}"
            )
        return res

    @staticmethod
    def _rebuild(state, flat):
        it = iter(flat)
        return map_arrays(lambda _: next(it), state["args"])

    def _fwd(self, *raws, **params):
        state = params.pop(_STATE_KEY)
        args = self._rebuild(state, [make(r) for r in raws])
        with tape.scope(recording=False):
            value, pb = self._call_derivative(args, params)
        value = map_leaves(_to_dlarray, value)
        if not (isinstance(value, dlarray) or is_container(value)):
            value = _to_dlarray(value)
        outs = _flat(value)
        if not outs:
            raise TypeError(
                f"derivative of {self.name}: the value is a {type(value).__name__} without "
                "any array in it"
            )
        state["pullback"] = pb
        state["value"] = value
        state["fmts"] = [o._fmt for o in outs]
        return tuple(o._data for o in outs)

    def _vjp(self, g, ans, *inputs, **params):
        state = params.pop(_STATE_KEY)
        if tape.FRAME.get().recording:
            # why: higher derivatives need a pullback built from the traced inputs
            _, pb = self._call_derivative(self._rebuild(state, inputs), params)
        else:
            pb = state["pullback"]
        value = state["value"]
        if isinstance(value, dlarray):
            cts = pb(g[0])
        else:
            it = iter(g)
            cts = pb(map_arrays(lambda _: next(it), value))
        args = state["args"]
        n = len(args)
        if n == 1 and not isinstance(cts, (tuple, list)):
            cts = (cts,)
        if n == 1 and isinstance(args[0], (list, tuple)) and isinstance(cts, (list, tuple)):
            m = len(args[0])
            if (m != 1 and len(cts) == m) or (
                m == 1 and len(cts) == 1 and not isinstance(cts[0], (list, tuple, type(None)))
            ):
                cts = (cts,)  # the cotangent of the one (list or tuple) argument
        if not isinstance(cts, (tuple, list)) or len(cts) != n:
            got = len(cts) if isinstance(cts, (tuple, list)) else 1
            raise ValueError(
                f"the pullback of {self.name} returned {got} cotangent(s), but {self.name} "
                f"takes {n} argument(s); return one cotangent per argument (None for none)"
            )
        out = []
        for k, (c, a) in enumerate(zip(cts, args)):
            where = f"the pullback of {self.name} (cotangent for argument {k})"
            for x, ci in zip(_flat(a), _flatten_like(a, c, where)):
                if ci is None:
                    out.append(None)
                    continue
                ci = _to_dlarray(ci)
                if ci.shape != x.shape:
                    raise ValueError(
                        f"the pullback of {self.name} returned a cotangent of shape {ci.shape} "
                        f"for argument {k}, which has shape {x.shape}; cotangents must have the "
                        "shape of their argument"
                    )
                out.append(ci)
        return tuple(out)


def _raw_to_dlarray(v):
    if isinstance(v, dlarray) or isinstance(v, (bool, int, float, complex)):
        return v
    return make(as_raw(v))


def custom_derivative(fn):
    """Decorator: ``fn``'s body runs untraced (NumPy, CuPy or foreign code is fine);
    its derivative is registered with ``@fn.derivative`` or
    ``@gg.derivative(of=fn)`` on a function ``(*args) -> (value, pullback)``.
    Pullbacks receive and return dlarrays (one cotangent per argument).

    >>> import numpy as np, gpugrad as gg
    >>> @gg.custom_derivative
    ... def square(x):
    ...     return np.asarray(x) ** 2
    >>> @square.derivative
    ... def _(x):
    ...     return square(x), lambda v: 2 * x * v
    >>> float(gg.gradient(square)(3.0))
    6.0
    """
    return CustomDerivativeFunction(fn)


def derivative(of):
    """``@gg.derivative(of=f)``: register the decorated ``(*args) -> (value, pullback)``
    function as the derivative of the ``@gg.custom_derivative`` function ``f``."""
    if not isinstance(of, CustomDerivativeFunction):
        raise TypeError(
            f"derivative(of=...): {_name_of(of)!r} is not a @gg.custom_derivative function; "
            "decorate it with @gg.custom_derivative first"
        )
    return of.derivative


def differentiable_function(vjp):
    """A differentiable function built from ``vjp(*args) -> (value, pullback)``
    (Swift's ``differentiableFunction(from:)``).

    >>> import gpugrad as gg
    >>> f = gg.differentiable_function(lambda x: (x * 2, lambda v: (v * 2,)))
    >>> float(gg.gradient(f)(1.0))
    2.0
    """
    if not callable(vjp):
        raise TypeError(f"differentiable_function: expected a function, got {type(vjp).__name__}")

    def body(*args, **kwargs):
        res = vjp(*args, **kwargs)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(
                f"differentiable_function({_name_of(vjp)}): the function must return "
                "(value, pullback)"
            )
        return res[0]

    out = CustomDerivativeFunction(body, name=_name_of(vjp))
    out.derivative(vjp)
    return out


# ------------------------------------------------------------------ stop / hook


def without_derivative(x):
    """Identity whose derivative is zero: an untraced copy of ``x`` (containers too).

    >>> import gpugrad as gg
    >>> float(gg.gradient(lambda x: x * gg.without_derivative(x))(3.0))
    3.0
    """
    if isinstance(x, dlarray):
        return make(x._data, x._fmt)
    x = _as_array_arg(x)
    return map_arrays(untrace, x)


stop_gradient = without_derivative


def _hook_fwd(x, hook):
    return x


def _hook_vjp(g, ans, x, hook):
    r = hook(g)
    if r is None:
        return (g,)
    r = _to_dlarray(r)
    if r.shape != g.shape:
        raise ValueError(
            f"with_derivative: hook {_name_of(hook)!r} returned a gradient of shape {r.shape}, "
            f"but the gradient at this value has shape {g.shape}"
        )
    return (r,)


_HOOK = Primitive("with_derivative", _hook_fwd, _hook_vjp, register=False)


def with_derivative(x, hook):
    """Identity; during backpropagation ``hook(dx)`` is called with the gradient
    arriving at ``x`` and, if it returns a value, that value replaces the gradient.

    >>> import gpugrad as gg
    >>> f = lambda x: (x * 1.0).with_derivative(lambda d: d * 10)
    >>> float(gg.gradient(f)(1.0))
    10.0
    """
    if not callable(hook):
        raise TypeError(f"with_derivative: hook must be callable, got {type(hook).__name__}")
    x = _as_array_arg(x)
    if not isinstance(x, dlarray):
        raise TypeError(f"with_derivative: x must be a dlarray, got {type(x).__name__}")
    if core.RECORDER is not None:  # the hook is Python code a replay would not call
        core.RECORDER.refuse("a with_derivative hook")
    return bind(_HOOK, (x,), {"hook": hook}, x._fmt)


dlarray.with_derivative = lambda self, hook: with_derivative(self, hook)
