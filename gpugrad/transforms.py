"""Function transforms users know from autograd, JAX and ``torch.func``:
:func:`value_and_grad` (with ``has_aux``), :func:`elementwise_grad`, :func:`jvp`
(forward mode), :func:`hvp` and :func:`hessian`.

All are built on the one reverse-mode engine through :func:`gg.gradient
<gpugrad.gradient>` and :func:`gg.value_with_pullback <gpugrad.value_with_pullback>`;
nothing here differentiates by itself. ``jvp`` is the transpose of the
vector-Jacobian product (the "double VJP" trick: ``u -> J^T u`` is linear, and its
gradient at any ``u`` applied to the tangent is ``J t``), so it costs two reverse
passes rather than one forward pass. ``hvp`` is reverse-over-reverse; ``hessian``
stacks one ``hvp`` per input element. Everything composes with itself and with the
other faces (they may be used inside ``dlfeval``, ``gradient`` or ``record()``, and
their results are then differentiable again).

>>> import gpugrad as gg
>>> f = lambda x: gg.sum(x ** 3)
>>> gg.hessian(f)(gg.dlarray([1.0, 2.0])).numpy()
array([[ 6.,  0.],
       [ 0., 12.]])
>>> y, t = gg.jvp(lambda x: x * x, (gg.dlarray([1.0, 2.0]),), (gg.dlarray([1.0, 0.0]),))
>>> t.numpy()
array([2., 0.])
"""

from __future__ import annotations

import functools

import numpy as np

from . import backend, tape
from .array import dlarray
from .functional import _as_array_arg, gradient, value_with_gradient, value_with_pullback
from .matlab import untrace
from .ops import reshape, stack
from .ops import sum as _sum
from .tree import map_arrays

__all__ = ["value_and_grad", "elementwise_grad", "jvp", "hvp", "hessian"]


def _check_callable(f, where):
    if not callable(f):
        raise TypeError(f"{where}: f must be callable, got {type(f).__name__}")


def value_and_grad(f, argnums=0, has_aux=False):
    """A function giving ``(value, gradient)`` of the real scalar ``f`` (JAX's
    ``value_and_grad``): ``argnums`` (default 0, the first argument, as in JAX; a
    tuple gives a tuple of gradients). With ``has_aux=True``, ``f`` returns
    ``(value, aux)`` and the result is ``((value, aux), gradient)``; ``aux`` is not
    differentiated. Arguments may be containers, as for :func:`gpugrad.gradient`.

    >>> import gpugrad as gg
    >>> (v, aux), g = gg.value_and_grad(lambda x: (x * x, "note"), has_aux=True)(3.0)
    >>> float(v), aux, float(g)
    (9.0, 'note', 6.0)
    """
    _check_callable(f, "value_and_grad")
    if not has_aux:

        @functools.wraps(f)
        def vg(*args, **kwargs):
            return value_with_gradient(f, argnums)(*args, **kwargs)

        return vg

    @functools.wraps(f)
    def vg_aux(*args, **kwargs):
        box = {}

        def main(*a, **k):
            out = f(*a, **k)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError(
                    "value_and_grad(has_aux=True): f must return a pair (value, aux), got "
                    f"{type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                )
            box["aux"] = out[1]
            return out[0]

        outer = tape.FRAME.get().recording
        value, grads = value_with_gradient(main, argnums)(*args, **kwargs)
        aux = box["aux"] if outer else map_arrays(untrace, box["aux"])
        return (value, aux), grads

    return vg_aux


def elementwise_grad(f, argnums=0):
    """The derivative of an elementwise ``f`` at every element: the gradient of
    ``sum(f(x))`` (HIPS autograd's ``elementwise_grad``). For a non-elementwise
    ``f`` it is the vector-Jacobian product with ones.

    >>> import gpugrad as gg
    >>> gg.elementwise_grad(gg.tanh)(gg.dlarray([0.0, 1.0])).numpy().round(6)
    array([1.      , 0.419974])
    """
    _check_callable(f, "elementwise_grad")

    @functools.wraps(f)
    def eg(*args, **kwargs):
        return gradient(lambda *a, **k: _sum(f(*a, **k)), argnums)(*args, **kwargs)

    return eg


def _as_tuple(x, where, name):
    if isinstance(x, (tuple, list)):
        return tuple(x)
    raise TypeError(
        f"{where}: {name} must be a tuple (one item per argument of f), got {type(x).__name__}"
    )


def _inner(a, b):
    """``sum(a * conj?)`` for real values: the scalar product of two structures."""
    total = None
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        t = _sum(x * y)
        total = t if total is None else total + t
    return total


def _check_tangent(p, t, k, where):
    t = _as_array_arg(t)
    if not isinstance(t, dlarray):
        raise TypeError(f"{where}: tangent {k} must be an array, got {type(t).__name__}")
    if t.shape != p.shape:
        raise ValueError(
            f"{where}: tangent {k} has shape {t.shape}, but primal {k} has shape {p.shape}"
        )
    if t.dtype.kind == "c" or p.dtype.kind == "c":
        raise TypeError(f"{where}: complex primals or tangents are not supported")
    return t


def jvp(f, primals, tangents):
    """Forward-mode Jacobian-vector product (JAX's ``jvp``): ``(f(*primals), J t)``
    for tuples ``primals`` and ``tangents`` of arrays of the same shapes. ``f`` may
    return an array or a tuple of arrays (then ``J t`` is a tuple). Real values only.

    Computed as the transpose of the vector-Jacobian product (two reverse passes).

    >>> import gpugrad as gg
    >>> y, t = gg.jvp(gg.sin, (gg.dlarray(0.0),), (gg.dlarray(2.0),))
    >>> float(y), float(t)
    (0.0, 2.0)
    """
    where = "jvp"
    _check_callable(f, where)
    primals = tuple(_as_array_arg(p) for p in _as_tuple(primals, where, "primals"))
    tangents = _as_tuple(tangents, where, "tangents")
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp: {len(primals)} primal(s) but {len(tangents)} tangent(s); give one "
            "tangent per primal"
        )
    for k, p in enumerate(primals):
        if not isinstance(p, dlarray):
            raise TypeError(f"{where}: primal {k} must be an array, got {type(p).__name__}")
    tangents = tuple(
        _check_tangent(p, t, k, where) for k, (p, t) in enumerate(zip(primals, tangents))
    )
    y, pb = value_with_pullback(f, *primals)
    multi = isinstance(y, (tuple, list))
    ys = tuple(y) if multi else (y,)
    for o in ys:
        if o.dtype.kind == "c":
            raise TypeError(f"{where}: complex outputs are not supported")

    def transposed(*us):
        # u -> <J^T u, t> is linear in u; its gradient is J t (the pullback, called
        # while recording, is itself recorded, so it is differentiable in u)
        vs = pb(tuple(us) if multi else us[0])
        vs = vs if len(primals) > 1 else (vs,)
        total = _inner(vs, tangents)
        if total is None or total._node is None:
            return _sum(us[0] * 0.0)  # f does not depend on its inputs: J t = 0
        return total

    xp = backend.xp()
    zeros = [dlarray(xp.zeros(o.shape, o.dtype)) for o in ys]
    jt = gradient(transposed)(*zeros)
    return y, (tuple(jt) if multi else jt)


def hvp(f, primals, tangents):
    """Hessian-vector product of the real scalar ``f``: ``H v`` at ``primals``
    (reverse over reverse). ``primals``/``tangents`` are one array each, or tuples
    (one per argument; the result is then a tuple).

    >>> import gpugrad as gg
    >>> gg.hvp(lambda x: gg.sum(x ** 3), gg.dlarray([1.0, 2.0]), gg.dlarray([1.0, 1.0])).numpy()
    array([ 6., 12.])
    """
    where = "hvp"
    _check_callable(f, where)
    single = not isinstance(primals, (tuple, list))
    ps = (primals,) if single else tuple(primals)
    ts = (tangents,) if single else _as_tuple(tangents, where, "tangents")
    if len(ps) != len(ts):
        raise ValueError(f"{where}: {len(ps)} primal(s) but {len(ts)} tangent(s)")
    ps = tuple(_as_array_arg(p) for p in ps)
    ts = tuple(_check_tangent(p, t, k, where) for k, (p, t) in enumerate(zip(ps, ts)))
    n = len(ps)

    def directional(*xs):
        g = gradient(f, argnums=tuple(range(n)))(*xs)
        total = _inner(g, ts)
        if total is None or total._node is None:
            return _sum(xs[0] * 0.0)  # the gradient is constant: H = 0
        return total

    out = gradient(directional, argnums=tuple(range(n)))(*ps)
    return out[0] if single else out


def hessian(f, argnums=0):
    """A function giving the Hessian of the real scalar ``f``: for one argument an
    array of shape ``x.shape + x.shape``; for a tuple ``argnums`` a tuple of tuples
    of blocks ``H[i][j]`` of shape ``x_i.shape + x_j.shape`` (JAX's layout). One
    Hessian-vector product per input element.

    >>> import gpugrad as gg
    >>> H = gg.hessian(lambda x, y: x * x * y, argnums=(0, 1))(3.0, 2.0)
    >>> [[float(b) for b in row] for row in H]
    [[4.0, 6.0], [6.0, 0.0]]
    """
    _check_callable(f, "hessian")
    single = isinstance(argnums, (int, np.integer))
    positions = (int(argnums),) if single else tuple(int(i) for i in argnums)

    @functools.wraps(f)
    def hess(*args, **kwargs):
        args = list(args)
        for i in positions:
            if not -len(args) <= i < len(args):
                raise ValueError(
                    f"hessian: argnums={argnums!r} is out of range for a call with "
                    f"{len(args)} positional argument(s)"
                )
            args[i] = _as_array_arg(args[i])
            if not isinstance(args[i], dlarray):
                raise TypeError(
                    f"hessian: argument {i} must be an array, got {type(args[i]).__name__}"
                )
        xs = [args[i] for i in positions]

        def g(*sel):
            full = list(args)
            for i, v in zip(positions, sel):
                full[i] = v
            return f(*full, **kwargs)

        xp = backend.xp()
        # columns[j][k]: H[:, (j, k)], one hvp per element k of argument j
        blocks = [[None] * len(xs) for _ in xs]
        for j, xj in enumerate(xs):
            cols = []
            for k in range(xj.size):
                ts = [dlarray(xp.zeros(x.shape, x.dtype)) for x in xs]
                e = xp.zeros(xj.size, xj.dtype)
                e[k] = 1
                ts[j] = dlarray(e.reshape(xj.shape))
                col = hvp(g, tuple(xs), tuple(ts))
                cols.append(col)
            for i, xi in enumerate(xs):
                if xj.size == 0 or xi.size == 0:
                    blocks[i][j] = dlarray(xp.zeros(xi.shape + xj.shape, xi.dtype))
                    continue
                # stacked along a last axis: xi.shape + (xj.size,) -> xi.shape + xj.shape
                h = stack([c[i] for c in cols], axis=-1) if xi.ndim else stack([c[i] for c in cols])
                blocks[i][j] = reshape(h, xi.shape + xj.shape)
        if single:
            return blocks[0][0]
        return tuple(tuple(row) for row in blocks)

    return hess
