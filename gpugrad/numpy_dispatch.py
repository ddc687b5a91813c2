"""NumPy functions and ufuncs called on dlarrays run the gpugrad function of the
same name, so they are traced like any other op (NEP 13 ``__array_ufunc__`` and
NEP 18 ``__array_function__``).

``np.sum(x)``, ``np.exp(x)``, ``np.maximum(x, 0)``, ``a_numpy_array * x`` and
``np.linalg.norm(x)`` call ``gg.sum``, ``gg.exp``, ``gg.maximum``, ``gg.multiply``
and ``gg.linalg.norm`` (or ``gg.norm``). The gpugrad function is looked up by name
when the call happens (NumPy's ``arcsin`` also finds ``gg.asin``, ``absolute``
finds ``gg.abs``...), so every function gpugrad has is reachable.

Keywords: ``out=None``, ``where=True``, ``keepdims`` and ``axis`` are accepted as
NumPy does; ``dtype=`` casts the result; ``out=`` a NumPy array is written only
for untraced values. Where gpugrad has no function of that name, NumPy computes it
on the values; that is refused with a :class:`~gpugrad.TraceError` naming the
missing gpugrad function when a traced value inside a trace would lose its
derivative (a float or complex result). Results that carry no derivative
(``np.shape``, ``np.allclose``, ``np.argsort``, ...) are NumPy's.

>>> import numpy as np, gpugrad as gg
>>> round(float(gg.gradient(lambda x: np.sum(np.sin(x) * x))(gg.dlarray(0.5))), 6)
0.918217
>>> np.mean(gg.dlarray([1.0, 2.0, 6.0]), keepdims=True).numpy()
array([3.])
"""

from __future__ import annotations

import numpy as np

from . import backend, tape
from .array import dlarray
from .errors import TraceError

# NumPy names whose gpugrad function has another name (tried after the NumPy name)
ALIASES = {
    "absolute": ("abs",),
    "true_divide": ("divide",),
    "arcsin": ("asin",),
    "arccos": ("acos",),
    "arctan": ("atan",),
    "arctan2": ("atan2",),
    "arcsinh": ("asinh",),
    "arccosh": ("acosh",),
    "arctanh": ("atanh",),
    "conjugate": ("conj",),
    "amax": ("max",),
    "amin": ("min",),
    "concat": ("concatenate",),
    "invert": ("logical_not",),
    "positive": (),
    "fabs": ("abs",),
}

# ufunc methods that are reductions or scans of another gpugrad function
_METHODS = {
    ("add", "reduce"): "sum",
    ("multiply", "reduce"): "prod",
    ("maximum", "reduce"): "max",
    ("minimum", "reduce"): "min",
    ("logical_and", "reduce"): "all",
    ("logical_or", "reduce"): "any",
    ("add", "accumulate"): "cumsum",
    ("multiply", "accumulate"): "cumprod",
    ("multiply", "outer"): "outer",
}

# gpugrad names that are not NumPy's function of that name (np.gradient is finite
# differences, gg.gradient the autodiff transform): never dispatched to
NOT_NUMPY = frozenset({"gradient", "hessian", "jvp", "hvp", "checkpoint", "device"})

_DEFAULTS = {"casting": "same_kind", "order": ("K", "C", "A"), "subok": True, "signature": None}


def _gg():
    import gpugrad

    return gpugrad


def lookup(name, module=""):
    """The gpugrad function for NumPy's ``module.name`` (``None`` if there is none)."""
    gg = _gg()
    space = gg
    if module.startswith("numpy.linalg"):
        space = getattr(gg, "linalg", None)
        if space is None:
            return gg.norm if name == "norm" else None
    elif module.startswith("numpy.") and module.split(".")[1] not in ("_core", "core", "lib"):
        return None  # numpy.fft, numpy.random, ...: no gpugrad counterpart by name
    if name in NOT_NUMPY:
        return None
    for n in (name,) + ALIASES.get(name, ()):
        fn = getattr(space, n, None)
        if callable(fn) and not isinstance(fn, type):
            return fn
    if name == "positive":
        return lambda x: x
    return None


def _walk(obj):
    """The dlarrays in (nested lists/tuples of) arguments."""
    if type(obj) is dlarray:
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _walk(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _walk(o)


def _host(obj):
    if type(obj) is dlarray:
        return np.asarray(backend.to_host(obj._data))
    if isinstance(obj, list):
        return [_host(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_host(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _host(v) for k, v in obj.items()}
    return obj


def _carries_derivative(res):
    if isinstance(res, (list, tuple)):
        return any(_carries_derivative(r) for r in res)
    if isinstance(res, (float, complex)):
        return True
    return getattr(getattr(res, "dtype", None), "kind", "") in ("f", "c")


def _numpy_fallback(label, gg_name, call, args, kwargs):
    """Run NumPy on host copies; refuse when that would drop a derivative."""
    traced = tape.FRAME.get().recording and any(x._node is not None for x in _walk((args, kwargs)))
    res = call(*_host(args), **_host(kwargs))
    if traced and _carries_derivative(res):
        raise TraceError(
            f"{label} on a traced dlarray: gpugrad has no function gg.{gg_name}, so NumPy "
            "would compute it without a derivative. Write it with gpugrad functions, or "
            "use gg.extractdata(x) / gg.without_derivative(x) if no derivative is wanted"
        )
    return res


def _scrub(label, gg_name, kwargs):
    """Check NumPy-only keywords; return (kwargs for gpugrad, dtype, out)."""
    kwargs = dict(kwargs)
    out = kwargs.pop("out", None)
    if isinstance(out, tuple):
        out = None if all(o is None for o in out) else out
    where = kwargs.pop("where", True)
    if where is not True:
        raise TypeError(
            f"{label} on a dlarray: where= is not supported (gg.{gg_name} has no where "
            "argument); select the values first, e.g. with gg.where(mask, x, 0)"
        )
    if "initial" in kwargs and kwargs["initial"] is not np._NoValue:
        raise TypeError(f"{label} on a dlarray: initial= is not supported by gg.{gg_name}")
    kwargs.pop("initial", None)
    for k, ok in _DEFAULTS.items():
        if k in kwargs:
            v = kwargs.pop(k)
            if not (v == ok or (isinstance(ok, tuple) and v in ok)):
                raise TypeError(f"{label} on a dlarray: {k}={v!r} is not supported")
    dtype = kwargs.pop("dtype", None)
    return kwargs, dtype, out


def _finish(label, res, dtype, out):
    if dtype is not None:
        from .ops import astype

        dt = np.dtype(dtype)
        if type(res) is dlarray and res.dtype != dt:
            if dt.kind not in "fc":
                raise TypeError(
                    f"{label} on a dlarray: dtype={dt} is not supported (dlarrays hold float, "
                    "complex or bool data); convert the result with x.numpy().astype(...)"
                )
            res = astype(res, dt)
    if out is None:
        return res
    outs = out if isinstance(out, tuple) else (out,)
    results = res if isinstance(res, tuple) else (res,)
    if len(outs) != len(results):
        raise TypeError(f"{label} on a dlarray: out= needs {len(results)} array(s)")
    for o, r in zip(outs, results):
        if o is None:
            continue
        if type(r) is dlarray and r._node is not None and tape.FRAME.get().recording:
            raise TraceError(
                f"{label} on a traced dlarray: out= would write the result into a NumPy "
                "array without its derivative; drop out= and use the returned value"
            )
        if type(o) is dlarray:
            raise TypeError(
                f"{label}: out= a dlarray is not supported (dlarrays are values); use "
                "the returned value"
            )
        np.copyto(o, _host(r) if type(r) is dlarray else r, casting="same_kind")
    return out


def array_ufunc(ufunc, method, inputs, kwargs):
    name = ufunc.__name__
    label = f"np.{name}" + ("" if method == "__call__" else f".{method}")
    if method == "__call__":
        gg_name = name
        fn = lookup(name)
    else:
        gg_name = _METHODS.get((name, method), f"{name}.{method}")
        fn = lookup(gg_name) if (name, method) in _METHODS else None
    kw, dtype, out = _scrub(label, gg_name, kwargs)
    if fn is None:
        res = _numpy_fallback(label, gg_name, getattr(ufunc, method), inputs, kw)
        if isinstance(res, np.ndarray) and res.dtype.kind in "fcb" and out is None:
            res = dlarray(res)
        return _finish(label, res, dtype, out)
    if method == "reduce" and "axis" not in kw:
        kw["axis"] = 0  # NumPy's default for ufunc.reduce
    if method == "accumulate" and "axis" not in kw:
        kw["axis"] = 0
    try:
        res = fn(*inputs, **kw)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise TypeError(f"{label} on a dlarray calls gg.{gg_name}, which says: {exc}") from exc
    return _finish(label, res, dtype, out)


def array_function(func, types, args, kwargs):
    name = func.__name__
    module = getattr(func, "__module__", "") or ""
    label = f"{module.replace('numpy', 'np', 1) if 'linalg' in module else 'np'}.{name}"
    fn = lookup(name, module)
    kw, dtype, out = _scrub(label, name, kwargs)
    if fn is None:
        impl = getattr(func, "_implementation", func)
        res = _numpy_fallback(label, name, impl, args, kw)
        return _finish(label, res, dtype, out)
    if fn is _gg().norm and module.startswith("numpy.linalg"):
        if kw.pop("ord", None) is not None:
            raise TypeError(
                "np.linalg.norm on a dlarray: gpugrad has no gg.linalg.norm yet; gg.norm "
                "is used, which supports only the default ord"
            )
    try:
        res = fn(*args, **kw)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        if not _any_traced(args, kw):
            # a NumPy call form gg.<name> does not take (np.where(cond), ...): no
            # derivative is at stake, so NumPy answers
            impl = getattr(func, "_implementation", func)
            return _finish(label, impl(*_host(args), **_host(kw)), dtype, out)
        raise TypeError(f"{label} on a dlarray calls gg.{name}, which says: {exc}") from exc
    return _finish(label, res, dtype, out)


def _any_traced(args, kwargs):
    return tape.FRAME.get().recording and any(x._node is not None for x in _walk((args, kwargs)))
