"""MATLAB-style face: ``dlfeval``, ``dlgradient``, ``dljacobian`` and friends.

A thin shell over the engine: ``dlfeval`` opens a trace scope and marks its
arguments as leaves; ``dlgradient`` checks its arguments and runs the walk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from . import backend, tape
from .array import dlarray
from .errors import TraceError
from .ops import core, moveaxis, reshape, stack
from .ops.core import make
from .tree import leaves, map_arrays, map_gradient

_T = TypeVar("_T")

# ------------------------------------------------------------------ tracing helpers


def trace_leaf(x, trace, frame):
    """A traced copy of ``x`` that is a leaf of ``trace`` (linked to ``x``'s own node
    when an enclosing scope is recording, so outer gradients still flow)."""
    if x.dtype.kind not in "fc":
        return x  # bool data is carried along, never differentiated
    parent = (x._node, x._idx) if (x._node is not None and frame.recording) else None
    node = tape.make_leaf((x._data.shape, x._data.dtype), trace, parent)
    return make(x._data, x._fmt, node, 0, x._taint)


def untrace(x):
    return make(x._data, x._fmt)


def open_trace(kind, args):
    """Start a trace scope; return (scope, traced args)."""
    frame = tape.FRAME.get()
    trace = tape.Trace(kind, frame.trace)
    sc = tape.scope(trace=trace, recording=True)
    traced = map_arrays(lambda x: trace_leaf(x, trace, frame), args)
    return sc, trace, traced


def dlfeval(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Evaluate ``fn(*args, **kwargs)`` with tracing on, so ``dlgradient`` can be used
    inside it. Every dlarray in the arguments (found through lists, tuples, dicts,
    dataclasses and ``gg.nn.Layer`` objects) is traced. Returns what ``fn`` returns,
    with every dlarray untraced.

    >>> import gpugrad as gg
    >>> def f(x):
    ...     y = gg.sum(x ** 2)
    ...     return y, gg.dlgradient(y, x)
    >>> y, g = gg.dlfeval(f, gg.dlarray([1.0, 2.0]))
    >>> g.numpy()
    array([2., 4.])
    """
    if not callable(fn):
        raise TypeError(f"dlfeval: fn must be callable, got {type(fn).__name__}")
    accelerated = getattr(fn, "__gg_dlfeval__", None)  # gg.dlaccelerate(fn): replays
    if accelerated is not None:
        return accelerated(args, kwargs)
    frame = tape.FRAME.get()
    trace = tape.Trace("dlfeval", frame.trace)
    if not kwargs and all(type(a) is dlarray for a in args):
        targs = [trace_leaf(a, trace, frame) for a in args]  # the common case, no walk
        tkwargs = {}
    else:
        targs, tkwargs = map_arrays(lambda x: trace_leaf(x, trace, frame), (args, kwargs))
    token = tape.FRAME.set(tape.Frame(trace, True, frame.training))
    try:
        out = fn(*targs, **tkwargs)
    finally:
        tape.FRAME.reset(token)
        trace.closed = True
    return map_arrays(untrace, out)


# ------------------------------------------------------------------ dlgradient

_OPTIONS = {
    "retaindata": "retain_data",
    "enablehigherderivatives": "enable_higher_derivatives",
    "allowcomplex": "allow_complex",
}


def _split_name_value(xs, where):
    """MATLAB spelling: ``dlgradient(y, x, "RetainData", true)``."""
    plain = []
    opts = {}
    i = 0
    while i < len(xs):
        item = xs[i]
        if isinstance(item, str):
            key = _OPTIONS.get(item.replace("_", "").lower())
            if key is None:
                raise ValueError(
                    f"{where}: unknown option {item!r}; expected one of "
                    "'RetainData', 'EnableHigherDerivatives', 'AllowComplex'"
                )
            if i + 1 >= len(xs):
                raise ValueError(f"{where}: option {item!r} has no value")
            opts[key] = bool(xs[i + 1])
            i += 2
        else:
            plain.append(item)
            i += 1
    return plain, opts


def check_scalar_output(y, where):
    if not isinstance(y, dlarray):
        raise TraceError(
            f"{where}: y must be a traced dlarray computed from the traced inputs, "
            f"got {type(y).__name__}"
        )
    if y._node is None:
        if y._taint:
            raise TraceError(
                f"{where}: y is computed from a gradient that was taken without "
                "enable_higher_derivatives=True, so it is not traced; pass "
                "enable_higher_derivatives=True to the dlgradient call that computed it"
            )
        raise TraceError(
            f"{where}: y is not traced: it does not depend on any traced input. Compute y "
            "from the dlarrays passed to dlfeval (values made by gg.extractdata, "
            "gg.without_derivative or created inside the function are constants)"
        )
    if y.size != 1:
        raise TraceError(
            f"{where}: y must be a scalar, but it has shape {y.shape}; reduce it first, "
            "e.g. gg.sum(y)"
        )
    if y.dtype.kind == "c":
        raise TraceError(
            f"{where}: y must be real, but it is {y.dtype}; differentiate a real scalar such "
            "as gg.real(y) or gg.abs(y)"
        )
    if y.dtype.kind != "f":
        raise TraceError(f"{where}: y must be a real floating-point scalar, got dtype {y.dtype}")


def check_variable(x, label, frame, where, allow_complex=True):
    if not isinstance(x, dlarray):
        raise TraceError(f"{where}: {label} must be a dlarray, got {type(x).__name__}")
    if x.dtype.kind not in "fc":
        raise TraceError(
            f"{where}: {label} has dtype {x.dtype}, which cannot be differentiated; "
            "use a float or complex dlarray"
        )
    if x._node is None:
        raise TraceError(
            f"{where}: {label} is not traced. Only the dlarrays passed to dlfeval (or "
            "gg.gradient) are traced; a dlarray created inside the function is a constant. "
            "Pass it as an argument to dlfeval"
        )
    trace = x._node.trace
    if trace is not None and trace.kind != "record" and not trace.is_active_in(frame.trace):
        raise TraceError(
            f"{where}: {label} was traced by a dlfeval call that has already returned; "
            "pass it to the current dlfeval"
        )
    if not allow_complex and x.dtype.kind == "c":
        raise TraceError(
            f"{where}: {label} is complex ({x.dtype}) but allow_complex=False; pass "
            "allow_complex=True or differentiate with respect to real and imaginary parts"
        )


def dlgradient(
    y: dlarray,
    *xs: Any,
    retain_data: bool = False,
    enable_higher_derivatives: bool = False,
    allow_complex: bool = True,
) -> Any:
    """Gradient of the traced real scalar ``y`` with respect to each ``x``.

    One value for one ``x``, a tuple otherwise; each ``x`` may be a container of
    dlarrays and gets a gradient of the same structure. Must be called inside
    ``dlfeval``. ``retain_data`` keeps the trace for later calls;
    ``enable_higher_derivatives`` traces the backward pass so the gradient can be
    differentiated again. Complex ``x = a + ib`` gets ``dy/da + i dy/db``. MATLAB
    name-value spelling works too: ``dlgradient(y, x, "RetainData", True)``.

    In-place updates: MATLAB has value semantics, so after ``x(2) = 3`` the name
    ``x`` stands for the updated value. Here likewise ``x[1] = 3.0`` or ``x *= 2``
    inside the function rebinds the dlarray ``x`` to the updated (traced) value, and
    ``dlgradient(y, x)`` is the gradient with respect to that value (0-based:
    ``x[1]`` then gets ``dy/dx[1]`` of the new value). For the gradient with respect
    to the value passed to ``dlfeval``, keep a copy first (``x0 = gg.dlarray(x)``) and
    differentiate with respect to ``x0``. The caller's array is never changed.

    >>> import gpugrad as gg
    >>> def g(x):
    ...     x0 = gg.dlarray(x)
    ...     x[1] = 3.0
    ...     return gg.dlgradient(gg.sum(x * x), x, x0)
    >>> gx, gx0 = gg.dlfeval(g, gg.dlarray([1.0, 2.0]))
    >>> gx.numpy(), gx0.numpy()
    (array([2., 6.]), array([2., 0.]))

    >>> def f(x):
    ...     return gg.dlgradient(gg.sum(gg.real((2 + 3j) * x)), x)
    >>> gg.dlfeval(f, gg.dlarray([1 + 1j])).numpy()
    array([2.-3.j])
    """
    if any(type(x) is str for x in xs):
        xs, opts = _split_name_value(list(xs), "dlgradient")
        retain_data = opts.get("retain_data", retain_data)
        enable_higher_derivatives = opts.get("enable_higher_derivatives", enable_higher_derivatives)
        allow_complex = opts.get("allow_complex", allow_complex)
    frame = tape.FRAME.get()
    if frame.trace is None:
        raise TraceError(
            "dlgradient must be called inside a function evaluated by dlfeval, e.g. "
            "gg.dlfeval(model_loss, x) where model_loss calls gg.dlgradient(loss, x)"
        )
    if not xs:
        raise TypeError("dlgradient: give at least one x to differentiate with respect to")
    check_scalar_output(y, "dlgradient")
    flat = []
    for pos, x in enumerate(xs):
        for leaf in leaves(x) if not isinstance(x, dlarray) else [x]:
            flat.append(leaf)
            label = f"x (argument {pos + 2})" if len(xs) > 1 else "x"
            check_variable(leaf, label, frame, "dlgradient", allow_complex)
        if not isinstance(x, dlarray) and not leaves(x):
            raise TraceError(
                f"dlgradient: argument {pos + 2} is a {type(x).__name__} without any dlarray in it"
            )
    grads = gradients_of(
        y, flat, create_graph=enable_higher_derivatives, retain=retain_data, taint=True
    )
    if len(xs) == 1 and type(xs[0]) is dlarray:
        return grads[0]
    table = {id(x): g for x, g in zip(flat, grads)}
    out = tuple(
        table[id(x)] if isinstance(x, dlarray) else map_gradient(lambda a: table[id(a)], x)
        for x in xs
    )
    return out[0] if len(out) == 1 else out


def gradients_of(y, flat, *, create_graph, retain, taint=False, seed=None):
    """The engine call shared by every face: cotangents of the traced ``y`` for each
    traced dlarray in ``flat`` (zeros where ``y`` does not depend on it)."""
    xp = backend.xp()
    if seed is None:
        yd = y._data
        # why: np.ones(()) costs a microsecond, and so does every rule's arithmetic on a
        # 0-d array; a NumPy scalar seed is just as good. 0-d NumPy arrays count too:
        # under a dlaccelerate trace a scalar result is a 0-d (Tainted) array, and an
        # array seed there made the replayed rules 0-d array arithmetic (Rosenbrock:
        # 3.5 of its 7 us)
        seed = (
            yd.dtype.type(1)
            if isinstance(yd, (np.generic, np.ndarray)) and yd.ndim == 0
            else xp.ones(y.shape, y.dtype)
        )
    elif type(seed) is dlarray:
        seed = seed._data
    targets = [(x._node, x._idx) for x in flat]
    if create_graph:
        roots = [(y._node, y._idx, make(seed))]
        results = core.backward(roots, targets, create_graph=True, retain=True)
    else:
        # the first-order walk works on raw arrays; wrap each result once, below
        results = tape.backward([(y._node, y._idx, seed)], targets, retain=retain, glue=core._Glue)
    out = []
    for x, g in zip(flat, results):
        if g is None:
            g = make(xp.zeros(x.shape, x.dtype), x._fmt)
        elif create_graph:
            g = make(g._data, x._fmt, g._node, g._idx, g._taint)
        else:
            g = make(core._writable(g), x._fmt, None, 0, taint)
        out.append(g)
    return out


# ------------------------------------------------------------------ Jacobian family


def _per_observation(u, x, dim, where):
    if not isinstance(dim, int):
        raise TypeError(f"{where}: dim must be an int (0-based operation axis), got {dim!r}")
    for name, v in (("u", u), ("x", x)):
        if not isinstance(v, dlarray):
            raise TypeError(f"{where}: {name} must be a dlarray")
        if not -v.ndim <= dim < v.ndim:
            raise ValueError(f"{where}: dim={dim} is out of range for {name} with shape {v.shape}")
    du, dx = dim % u.ndim, dim % x.ndim
    if u.shape[du] != x.shape[dx]:
        raise ValueError(
            f"{where}: u and x must have the same size along dim: {u.shape[du]} and {x.shape[dx]}"
        )
    return du, dx


def _component_rows(u, du):
    moved = moveaxis(u, du, -1)
    return reshape(moved, (-1, u.shape[du]))


def dljacobian(u, x, dim, *, enable_higher_derivatives=True):
    """Jacobian of ``u`` with respect to ``x`` per observation along ``dim``
    (MATLAB R2024b; ``dim`` is 0-based). Returns an array of shape
    ``(M, N, B)``: ``J[i, j, b] = d u_i(b) / d x_j(b)`` with ``M``/``N`` the
    number of elements of one observation of ``u``/``x`` and ``B`` the number of
    observations. Must be called inside ``dlfeval``; observations must not
    interact (as in MATLAB).

    >>> import gpugrad as gg
    >>> def jacobian(x):
    ...     return gg.dljacobian(x ** 2, x, 1)  # observations along axis 1
    >>> J = gg.dlfeval(jacobian, gg.dlarray([[1.0, 2.0], [3.0, 4.0]]))
    >>> J.shape, J.numpy()[:, :, 0]
    ((2, 2, 2), array([[2., 0.],
           [0., 6.]]))
    """
    frame = tape.FRAME.get()
    if frame.trace is None:
        raise TraceError("dljacobian must be called inside a function evaluated by dlfeval")
    du, dx = _per_observation(u, x, dim, "dljacobian")
    check_variable(x, "x", frame, "dljacobian")
    if u._node is None:
        raise TraceError("dljacobian: u is not traced; compute it from the traced x")
    rows = _component_rows(u, du)
    m = rows.shape[0]
    per_row = []
    for i in range(m):
        (g,) = gradients_of(rows[i].sum(), [x], create_graph=enable_higher_derivatives, retain=True)
        gx = moveaxis(g, dx, -1)
        per_row.append(reshape(gx, (-1, x.shape[dx])))
    return stack(per_row, axis=0)


def dldivergence(u, x, dim, *, enable_higher_derivatives=True):
    """Divergence ``sum_i d u_i / d x_i`` per observation along ``dim`` (MATLAB R2024b);
    ``u`` and ``x`` have the same number of elements per observation. Returns shape ``(B,)``.

    >>> import gpugrad as gg
    >>> def divergence(x):  # u = x.^2: the divergence is sum(2 x) per observation
    ...     return gg.dldivergence(x ** 2, x, 1)
    >>> gg.dlfeval(divergence, gg.dlarray([[1.0, 2.0], [3.0, 4.0]])).numpy()
    array([ 8., 12.])
    """
    du, dx = _per_observation(u, x, dim, "dldivergence")
    if u.size != x.size:
        raise ValueError(
            f"dldivergence: u and x must have the same number of elements per observation "
            f"(shapes {u.shape} and {x.shape})"
        )
    jac = dljacobian(u, x, dim, enable_higher_derivatives=enable_higher_derivatives)
    n = jac.shape[0]
    total = None
    for i in range(n):
        term = jac[i, i]
        total = term if total is None else total + term
    return total


def dllaplacian(u, x, dim):
    """Laplacian ``sum_j d^2 u_i / d x_j^2`` of each component of ``u`` per observation along
    ``dim`` (MATLAB R2024b). Returns shape ``(M, B)``.

    >>> import gpugrad as gg
    >>> def laplacian(x):  # u = sum(x.^3): the Laplacian is sum(6 x) per observation
    ...     return gg.dllaplacian(gg.sum(x ** 3, axis=0, keepdims=True), x, 1)
    >>> gg.dlfeval(laplacian, gg.dlarray([[1.0, 2.0], [3.0, 4.0]])).numpy()
    array([[24., 36.]])
    """
    frame = tape.FRAME.get()
    if frame.trace is None:
        raise TraceError("dllaplacian must be called inside a function evaluated by dlfeval")
    du, dx = _per_observation(u, x, dim, "dllaplacian")
    check_variable(x, "x", frame, "dllaplacian")
    rows = _component_rows(u, du)
    out = []
    for i in range(rows.shape[0]):
        (g,) = gradients_of(rows[i].sum(), [x], create_graph=True, retain=True)
        gflat = reshape(moveaxis(g, dx, -1), (-1, x.shape[dx]))
        lap = None
        for j in range(gflat.shape[0]):
            (h,) = gradients_of(gflat[j].sum(), [x], create_graph=True, retain=True)
            hj = reshape(moveaxis(h, dx, -1), (-1, x.shape[dx]))[j]
            lap = hj if lap is None else lap + hj
        out.append(lap)
    return stack(out, axis=0)


# ------------------------------------------------------------------ data and formats


def extractdata(x):
    """The underlying NumPy/CuPy array of a dlarray (no trace: values computed from it
    are constants).

    >>> import gpugrad as gg
    >>> gg.extractdata(gg.dlarray([1.0, 2.0]))
    array([1., 2.])
    """
    if not isinstance(x, dlarray):
        raise TypeError(f"extractdata: x must be a dlarray, got {type(x).__name__}")
    raw = x._data
    if core.RECORDER is not None:  # a value leaving the accelerator's trace
        core.RECORDER.escape(raw, "extractdata")
    if isinstance(raw, np.generic):
        return np.asarray(raw)
    return raw


def dims(x):
    """The format labels of ``x`` (``''`` when unformatted).

    >>> import gpugrad as gg
    >>> gg.dims(gg.dlarray(np.ones((2, 3)), "BC")), gg.dims(gg.dlarray([1.0]))
    ('CB', '')
    """
    if not isinstance(x, dlarray):
        raise TypeError(f"dims: x must be a dlarray, got {type(x).__name__}")
    return x._fmt


def finddim(x, label):
    """0-based axes of ``x`` whose format label is ``label`` (a list, empty if none).

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.ones((4, 4, 3, 2)), "SSCB")
    >>> gg.finddim(x, "S"), gg.finddim(x, "B"), gg.finddim(x, "T")
    ([0, 1], [3], [])
    """
    if not isinstance(x, dlarray):
        raise TypeError(f"finddim: x must be a dlarray, got {type(x).__name__}")
    if not isinstance(label, str) or any(c not in "SCBTU" for c in label.upper()):
        raise ValueError(f"finddim: label must be one of S, C, B, T, U, got {label!r}")
    labels = label.upper()
    return [i for i, c in enumerate(x._fmt) if c in labels]


def stripdims(x):
    """``x`` without format labels (same data, same trace).

    >>> import gpugrad as gg
    >>> x = gg.stripdims(gg.dlarray(np.ones((2, 3)), "CB"))
    >>> gg.dims(x), x.shape
    ('', (2, 3))
    """
    if not isinstance(x, dlarray):
        raise TypeError(f"stripdims: x must be a dlarray, got {type(x).__name__}")
    return make(x._data, "", x._node, x._idx, x._taint)


def to_device(x):
    """``x`` on the active device (a CuPy array inside on ``cuda``).

    >>> import gpugrad as gg
    >>> gg.to_device(np.ones(2)).device == gg.device()
    True
    """
    if isinstance(x, dlarray):
        if backend.is_cuda() and not backend.is_device_array(x._data):
            return make(backend.xp().asarray(x._data), x._fmt, x._node, x._idx, x._taint)
        return x
    return dlarray(x)


def to_host(x):
    """``x`` with its data in host (NumPy) memory.

    >>> import gpugrad as gg
    >>> type(gg.extractdata(gg.to_host(gg.ones(2)))).__name__
    'ndarray'
    """
    if isinstance(x, dlarray):
        if backend.is_device_array(x._data):
            return make(x._data.get(), x._fmt, x._node, x._idx, x._taint)
        return x
    return backend.to_host(x)
