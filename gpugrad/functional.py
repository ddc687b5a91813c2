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

import functools
import itertools

import numpy as np

from . import backend, tape
from .array import as_raw, dlarray
from .errors import TraceError
from .matlab import check_scalar_output, trace_leaf, untrace
from .ops import core
from .ops.core import Primitive, bind, make
from .tree import leaves, map_arrays, map_gradient

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


def _as_array_arg(a):
    """Numbers and raw arrays become dlarrays; containers and dlarrays pass through."""
    if isinstance(a, dlarray):
        return a
    if isinstance(
        a, (bool, int, float, complex, np.ndarray, np.generic)
    ) or backend.is_device_array(a):
        return dlarray(a)
    return a


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
    try:
        with tr.scope:
            y = f(*tr.args, **kwargs)
            ty = _check_y(y, where)
            flat = []
            for i in positions:
                a = tr.args[i]
                flat.extend([a] if isinstance(a, dlarray) else leaves(a))
            roots = []
            if ty is not None:
                seed = make(backend.xp().ones(ty.shape, ty.dtype))
                roots = [(ty._node, ty._idx, seed)]
            cts = _pull(roots, flat, create_graph=tr.outer_recording, retain=tr.outer_recording)
    finally:
        tr.trace.closed = True
    table = {id(x): g for x, g in zip(flat, cts)}
    grads = tuple(_grads_structured(tr.args[i], table) for i in positions)
    value = y if isinstance(y, dlarray) else dlarray(y)
    return tr.finish(value), (grads[0] if single else grads)


def gradient(f, argnums=None):
    """A function giving the gradient of the real scalar ``f`` at its arguments: one
    value for one differentiated argument, else a tuple (``argnums=None``: all
    positional arguments; an int or tuple selects). Arguments may be dlarrays,
    numbers, NumPy arrays or containers of dlarrays (a ``gg.nn.Layer`` gets a dict
    shaped like its ``parameters()``). Nested use (``gradient(gradient(f))``) and
    use inside ``dlfeval``/``record()`` give differentiable gradients.

    >>> import gpugrad as gg
    >>> float(gg.gradient(lambda x: x ** 3)(2.0))
    12.0
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


def value_with_gradient(f, argnums=None):
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


def value_with_pullback(f, *args, **kwargs):
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
    try:
        with tr.scope:
            y = f(*tr.args, **kwargs)
    finally:
        tr.trace.closed = True
    multi = isinstance(y, (tuple, list))
    outs = list(y) if multi else [y]
    for k, o in enumerate(outs):
        if not isinstance(o, dlarray):
            raise TypeError(
                f"{where}: f must return a dlarray (or a tuple of them), got "
                f"{type(o).__name__}" + (f" at position {k}" if multi else "")
            )
    flat_per_arg = [
        [tr.args[i]] if isinstance(tr.args[i], dlarray) else leaves(tr.args[i]) for i in positions
    ]
    flat = [x for group in flat_per_arg for x in group]

    def pullback(v):
        vs = list(v) if multi else [v]
        if len(vs) != len(outs):
            raise ValueError(
                f"pullback: expected {len(outs)} cotangent(s), one per output of f, got {len(vs)}"
            )
        roots = []
        for k, (o, c) in enumerate(zip(outs, vs)):
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
        res = tuple(_grads_structured(tr.args[i], table) for i in positions)
        return res[0] if single else res

    value = tuple(tr.finish(o) for o in outs) if multi else tr.finish(y)
    return value, pullback


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
            f"custom:{self.name}#{next(_ids)}", self._fwd, self._vjp, register=False
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
        copies = [make(a._data, a._fmt) if isinstance(a, dlarray) else a for a in args]
        with tape.scope(recording=False):
            return self.fn(*copies, **kwargs)

    def __call__(self, *args, **kwargs):
        frame = tape.FRAME.get()
        traced = frame.recording and any(
            isinstance(a, dlarray) and a._node is not None and a.dtype.kind in "fc" for a in args
        )
        if not traced:
            out = self._run_body(args, kwargs)
            return out if isinstance(out, dlarray) else dlarray(out)
        if self._derivative is None:
            raise TraceError(
                f"custom_derivative function {self.name!r} is being differentiated but has no "
                f"registered derivative; register one with @{self.fn.__name__}.derivative or "
                f"@gg.derivative(of={self.fn.__name__}) on a function (*args) -> (value, pullback)"
            )
        state = {"fmt": ""}
        params = dict(kwargs)
        params[_STATE_KEY] = state
        out = bind(self._prim, args, params)
        if state["fmt"] and out.ndim == len(state["fmt"]):
            out._fmt = state["fmt"]
        return out

    def _call_derivative(self, args, kwargs):
        res = self._derivative(*args, **kwargs)
        if not (isinstance(res, tuple) and len(res) == 2 and callable(res[1])):
            raise TypeError(
                f"derivative of {self.name}: must return a pair (value, pullback) with a callable "
                f"pullback, got {type(res).__name__}"
            )
        return res

    def _fwd(self, *raws, **params):
        state = params.pop(_STATE_KEY)
        copies = [
            make(r) if hasattr(r, "shape") and not isinstance(r, np.generic) else r for r in raws
        ]
        with tape.scope(recording=False):
            value, pb = self._call_derivative(copies, params)
        value = _to_dlarray(value)
        state["pullback"] = pb
        state["fmt"] = value._fmt
        return value._data

    def _vjp(self, g, ans, *inputs, **params):
        state = params.pop(_STATE_KEY)
        if tape.FRAME.get().recording:
            # why: higher derivatives need a pullback built from the traced inputs
            _, pb = self._call_derivative(list(inputs), params)
        else:
            pb = state["pullback"]
        cts = pb(g)
        n = len(inputs)
        if n == 1 and not isinstance(cts, (tuple, list)):
            cts = (cts,)
        if not isinstance(cts, (tuple, list)) or len(cts) != n:
            got = len(cts) if isinstance(cts, (tuple, list)) else 1
            raise ValueError(
                f"the pullback of {self.name} returned {got} cotangent(s), but {self.name} "
                f"takes {n} argument(s); return one cotangent per argument (None for none)"
            )
        out = []
        for k, (c, x) in enumerate(zip(cts, inputs)):
            if c is None:
                out.append(None)
                continue
            c = _to_dlarray(c)
            shape = getattr(x, "shape", ())
            if c.shape != tuple(shape):
                raise ValueError(
                    f"the pullback of {self.name} returned a cotangent of shape {c.shape} for "
                    f"argument {k}, which has shape {tuple(shape)}; cotangents must have the "
                    "shape of their argument"
                )
            out.append(c)
        return tuple(out)


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
    return bind(_HOOK, (x,), {"hook": hook}, x._fmt)


dlarray.with_derivative = lambda self, hook: with_derivative(self, hook)
