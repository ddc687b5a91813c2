"""Reductions: sum, prod, max, min (primitives); mean, norm, logsumexp (composites)."""

from __future__ import annotations

import builtins

from ..array import dlarray
from .core import _STATE, Primitive, bind, make
from .elementwise import abs as _abs
from .elementwise import conj, exp, log, real, sqrt
from .shape import broadcast_to, concatenate, flip, getitem, moveaxis, reshape


def _xp():
    return _STATE["xp"]


def normalize_axis(axis, ndim, where="axis"):
    """``None`` or a tuple of distinct non-negative axes."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int):
            raise TypeError(f"{where}: axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < builtins.max(ndim, 1):
            raise ValueError(
                f"{where}: axis {a} is out of range for an array with {ndim} dimension(s)"
            )
        a = a % ndim if ndim else 0
        if a in out:
            raise ValueError(f"{where}: axis {a} repeated in {axis!r}")
        out.append(a)
    return tuple(sorted(out))


def _kept_shape(shape, axes):
    if axes is None:
        return (1,) * len(shape)
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _reduced_fmt(fmt, axes, keepdims):
    if not fmt:
        return ""
    if keepdims:
        return fmt
    if axes is None:
        return ""
    return "".join(c for i, c in enumerate(fmt) if i not in axes)


def _expand(g, x, axes, keepdims):
    """Bring a reduced cotangent back to broadcastable keepdims form."""
    if not keepdims:
        g = reshape(g, _kept_shape(x.shape, axes))
    return g


# ------------------------------------------------------------------ sum


def _sum_fwd(x, axis, keepdims):
    return _xp().sum(x, axis=axis, keepdims=keepdims)


def _sum_vjp(g, ans, x, axis, keepdims):
    return (broadcast_to(_expand(g, x, axis, keepdims), x.shape),)


def _sum_fast(g, ans, x, axis, keepdims):
    if not keepdims:
        g = _xp().reshape(g, _kept_shape(x.shape, axis))
    return (_xp().broadcast_to(g, x.shape),)


_SUM = Primitive("sum", _sum_fwd, _sum_vjp, fast=_sum_fast)


def _reduce(prim, x, axis, keepdims, where):
    if type(x) is not dlarray:
        x = dlarray(x, copy=False)
    axes = normalize_axis(axis, x.ndim, where)
    fmt = _reduced_fmt(x._fmt, axes, keepdims)
    return bind(prim, (x,), {"axis": axes, "keepdims": bool(keepdims)}, fmt)


def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (``None``: all elements, MATLAB's ``"all"``).

    >>> import gpugrad as gg
    >>> float(gg.sum(gg.dlarray([1.0, 2.0, 3.0])))
    6.0
    """
    return _reduce(_SUM, x, axis, keepdims, "sum")


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (``None``: all elements)."""
    if type(x) is not dlarray:
        x = dlarray(x, copy=False)
    axes = normalize_axis(axis, x.ndim, "mean")
    n = x.size if axes is None else _prod_int(x.shape[a] for a in axes)
    return sum(x, axes, keepdims) / builtins.max(n, 1)


def _prod_int(values):
    n = 1
    for v in values:
        n *= v
    return n


# ------------------------------------------------------------------ prod


def _prod_fwd(x, axis, keepdims):
    return _xp().prod(x, axis=axis, keepdims=keepdims)


def _prod_others(x, axis):
    """Product of all other elements along the reduced axes, without dividing (so
    zeros are handled), written with differentiable ops for higher derivatives."""
    nd = x.ndim
    axes = tuple(range(nd)) if axis is None else axis
    rest = [i for i in range(nd) if i not in axes]
    moved = x.transpose(tuple(rest) + tuple(axes)) if nd else x
    lead = tuple(x.shape[i] for i in rest)
    n = _prod_int(x.shape[i] for i in axes)
    flat = reshape(moved, lead + (n,))
    ones = make(_xp().ones(lead + (1,), x.dtype))
    left = [ones]  # left[i] = prod(flat[..., :i])
    for i in range(1, n):
        left.append(left[-1] * getitem(flat, (Ellipsis, slice(i - 1, i))))
    right = [ones]  # right[j] = prod(flat[..., n-j:])
    for j in range(1, n):
        right.append(right[-1] * getitem(flat, (Ellipsis, slice(n - j, n - j + 1))))
    parts = [left[i] * right[n - 1 - i] for i in range(n)]
    others = concatenate(parts, axis=-1) if n > 1 else ones
    others = reshape(others, lead + tuple(x.shape[i] for i in axes))
    inverse = [0] * nd
    for pos, ax in enumerate(tuple(rest) + tuple(axes)):
        inverse[ax] = pos
    return others.transpose(tuple(inverse)) if nd else others


def _prod_vjp(g, ans, x, axis, keepdims):
    g = _expand(g, x, axis, keepdims)
    if bool(_xp().all(x._data != 0)):
        a = _expand(ans, x, axis, keepdims)
        return (g * conj(a / x),)
    return (g * conj(_prod_others(x, axis)),)


_PROD = Primitive("prod", _prod_fwd, _prod_vjp, save=(0,), save_ans=True)


def prod(x, axis=None, keepdims=False):
    """Product over ``axis``; the gradient is exact where elements are zero.

    >>> import gpugrad as gg
    >>> float(gg.prod(gg.dlarray([2.0, 3.0])))
    6.0
    """
    return _reduce(_PROD, x, axis, keepdims, "prod")


# ------------------------------------------------------------------ max / min


def _extreme_vjp(g, ans, x, axis, keepdims):
    kept = ans._data if keepdims else ans._data.reshape(_kept_shape(x.shape, axis))
    mask = x._data == kept
    # why: ties share the gradient equally, so it still sums to g
    count = mask.sum(axis=axis, keepdims=True)
    weight = make(mask / count)
    return (_expand(g, x, axis, keepdims) * weight,)


_MAX = Primitive(
    "max",
    lambda x, axis, keepdims: _xp().max(x, axis=axis, keepdims=keepdims),
    _extreme_vjp,
    save=(0,),
    save_ans=True,
)
_MIN = Primitive(
    "min",
    lambda x, axis, keepdims: _xp().min(x, axis=axis, keepdims=keepdims),
    _extreme_vjp,
    save=(0,),
    save_ans=True,
)


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over ``axis``; ties share the gradient."""
    return _reduce(_MAX, x, axis, keepdims, "max")


def min(x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over ``axis``; ties share the gradient."""
    return _reduce(_MIN, x, axis, keepdims, "min")


# ------------------------------------------------------------------ composites


def norm(x, ord=2, axis=None, keepdims=False):  # noqa: A002
    """Vector 2-norm (or ``ord``-norm) over ``axis``; ``axis=None`` is over all elements.

    >>> import gpugrad as gg
    >>> float(gg.norm(gg.dlarray([3.0, 4.0])))
    5.0
    """
    if type(x) is not dlarray:
        x = dlarray(x, copy=False)
    if ord == 2:
        sq = real(x * conj(x)) if x.dtype.kind == "c" else x * x
        return sqrt(sum(sq, axis, keepdims))
    if ord == 1:
        return sum(_abs(x), axis, keepdims)
    if ord in (float("inf"), "inf"):
        return max(_abs(x), axis, keepdims)
    return sum(_abs(x) ** ord, axis, keepdims) ** (1.0 / ord)


def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x)))`` over ``axis``, computed stably.

    >>> import gpugrad as gg
    >>> round(float(gg.logsumexp(gg.dlarray([0.0, 0.0]))), 6)
    0.693147
    """
    if type(x) is not dlarray:
        x = dlarray(x, copy=False)
    axes = normalize_axis(axis, x.ndim, "logsumexp")
    m = make(_xp().max(x._data, axis=axes, keepdims=True))  # a constant shift
    m = make(_xp().where(_xp().isfinite(m._data), m._data, 0))
    out = log(sum(exp(x - m), axes, keepdims=True)) + m
    if not keepdims:
        out = reshape(
            out, tuple(s for i, s in enumerate(x.shape) if axes is not None and i not in axes)
        )
    out._fmt = _reduced_fmt(x._fmt, axes, keepdims)
    return out


def cumsum(x, axis=0):
    """Cumulative sum along ``axis``."""
    return bind(_CUMSUM, (x,), {"axis": axis}, getattr(x, "_fmt", ""))


def _cumsum_vjp(g, ans, x, axis):
    return (flip(cumsum(flip(g, axis), axis), axis),)


_CUMSUM = Primitive("cumsum", lambda x, axis: _xp().cumsum(x, axis=axis), _cumsum_vjp)

__all__ = [
    "sum",
    "mean",
    "prod",
    "max",
    "min",
    "norm",
    "logsumexp",
    "cumsum",
    "normalize_axis",
    "moveaxis",
]
