"""Checking derivatives against finite differences.

``check_gradient(f, *args, order=1)`` compares the gradient gpugrad computes for
``f`` with central finite differences in float64 along random directions
(complex inputs get complex directions). ``order=2`` checks the derivative of
the gradient too (so ``enable_higher_derivatives`` is exercised). Use it for
your own functions as the test suite does for every primitive.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .array import dlarray
from .matlab import dlfeval, dlgradient
from .ops import core
from .ops.elementwise import conj, real
from .ops.reduce import sum as gsum

#: primitive names whose derivatives a ``check_gradient`` call exercised, by order
CHECKED = {1: set(), 2: set()}


def primitives_in_graph(y):
    """Names of the primitives recorded on the path to ``y`` (iterative walk).

    >>> import gpugrad as gg
    >>> x = gg.dlarray([1.0])
    >>> x.attach_grad()
    >>> with gg.autograd.record():
    ...     y = gg.sum(gg.exp(x) * 2.0)
    >>> sorted(gg.testing.primitives_in_graph(y))
    ['exp', 'multiply', 'sum']
    """
    names = set()
    seen = set()
    stack = [y._node] if isinstance(y, dlarray) and y._node is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.prim is not None and node.prim.name != "leaf":
            names.add(node.prim.name)
        stack.extend(p[0] for p in node.parents if p is not None)
    return names


def _to64(a):
    raw = np.asarray(backend.to_host(a._data if isinstance(a, dlarray) else a))
    if raw.dtype.kind == "c":
        return raw.astype(np.complex128)
    if raw.dtype.kind in "fiu":
        return raw.astype(np.float64)
    return raw


def _direction(rng, shape, complex_):
    v = rng.standard_normal(shape)
    if complex_:
        v = v + 1j * rng.standard_normal(shape)
    return v


def _scalarize(out, weights):
    """A real scalar from ``f``'s output: a fixed random projection of a non-scalar
    output (so every output element is checked), the real part of a complex one."""
    if not isinstance(out, dlarray):
        out = dlarray(out)
    if out.dtype.kind == "c":
        out = real(out * conj(weights(out.shape, True)))
    elif out.size != 1:
        out = out * weights(out.shape, False)
    return gsum(out) if out.size != 1 or out.ndim else out


def check_gradient(
    f,
    *args,
    order=1,
    argnums=None,
    eps=1e-6,
    rtol=1e-5,
    atol=1e-7,
    seed=0,
    directions=2,
):
    """Assert that gpugrad's derivatives of ``f`` match central finite differences.

    ``args`` are converted to float64/complex128 dlarrays; ``argnums`` selects which
    are differentiated (default: all float/complex ones). A non-scalar output is
    reduced with fixed random weights. Raises ``AssertionError`` with the
    numbers on a mismatch; returns the largest relative error found.

    >>> import gpugrad as gg
    >>> gg.testing.check_gradient(lambda x: gg.sin(x) * x, [0.3, 1.2], order=2) < 1e-5
    True
    """
    if order not in (1, 2):
        raise ValueError(f"check_gradient: order must be 1 or 2, got {order!r}")
    rng = np.random.default_rng(seed)
    base = [_to64(a) for a in args]
    if argnums is None:
        argnums = tuple(i for i, b in enumerate(base) if b.dtype.kind in "fc")
    elif isinstance(argnums, int):
        argnums = (argnums,)
    if not argnums:
        raise ValueError("check_gradient: no float or complex argument to differentiate")
    weight_cache = {}
    wrng = np.random.default_rng(seed + 1)

    def weights(shape, complex_):
        key = (shape, complex_)
        if key not in weight_cache:
            weight_cache[key] = _direction(wrng, shape, complex_)
        return core.make(backend.xp().asarray(weight_cache[key]))

    def scalar_f(*xs):
        return _scalarize(f(*xs), weights)

    # second order: check the gradient of x -> <grad f(x), u> for fixed random u
    if order == 2:
        us = {i: _direction(rng, base[i].shape, base[i].dtype.kind == "c") for i in argnums}

        def first(*xs):
            y = scalar_f(*xs)
            CHECKED[2].update(primitives_in_graph(y))
            gs = dlgradient(y, *[xs[i] for i in argnums], enable_higher_derivatives=True)
            gs = gs if isinstance(gs, tuple) else (gs,)
            total = None
            for i, g in zip(argnums, gs):
                u = core.make(backend.xp().asarray(us[i]))
                term = gsum(real(conj(g) * u))
                total = term if total is None else total + term
            # why: a gradient that no longer depends on x (e.g. of max or relu) has a
            # zero second derivative; keep the result traced so that is what is checked
            for i in argnums:
                total = total + 0.0 * gsum(real(xs[i]))
            return total

        target = first
    else:
        target = scalar_f

    def value(points):
        xs = [dlarray(backend.xp().asarray(p)) for p in points]
        return float(np.real(backend.to_host(dlfeval(lambda *a: target(*a), *xs)._data)))

    def analytic(points):
        def fn(*xs):
            y = target(*xs)
            CHECKED[order].update(primitives_in_graph(y))
            gs = dlgradient(y, *[xs[i] for i in argnums])
            return gs if isinstance(gs, tuple) else (gs,)

        xs = [dlarray(backend.xp().asarray(p)) for p in points]
        return [np.asarray(backend.to_host(g._data)) for g in dlfeval(fn, *xs)]

    grads = analytic(base)
    worst = 0.0
    for _ in range(directions):
        vs = {i: _direction(rng, base[i].shape, base[i].dtype.kind == "c") for i in argnums}
        plus = [b + eps * vs[i] if i in vs else b for i, b in enumerate(base)]
        minus = [b - eps * vs[i] if i in vs else b for i, b in enumerate(base)]
        numeric = (value(plus) - value(minus)) / (2 * eps)
        predicted = sum(float(np.real(np.sum(np.conj(g) * vs[i]))) for i, g in zip(argnums, grads))
        err = abs(numeric - predicted)
        scale = max(abs(numeric), abs(predicted), 1.0)
        worst = max(worst, err / scale)
        if err > atol + rtol * scale:
            raise AssertionError(
                f"check_gradient (order {order}): directional derivative {predicted!r} from "
                f"gpugrad differs from finite differences {numeric!r} (error {err:.3g})"
            )
    return worst
