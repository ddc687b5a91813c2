"""Elementwise primitives and comparisons. Each rule sits beside its forward."""

from __future__ import annotations

import functools as _functools
import operator

import numpy as np

from .. import tape
from ..array import check_same_device, dlarray
from . import core
from .core import (
    _STATE,
    Primitive,
    _record1,
    _record2,
    bind,
    cj,
    coerce,
    host_call,
    make,
    op_error,
    operand,
)
from .core import from_sequence as _from_sequence

_FRAME = tape.FRAME


def _xp():
    return _STATE["xp"]


# ------------------------------------------------------------------ fast binding


def _bind1(prim, x):
    """Unary fast path; keeps the input's format."""
    if type(x) is not dlarray:
        return bind(prim, (x,), None, "")
    raw = x._data
    out = prim.fwd(raw)
    if x._node is not None:
        frame = _FRAME.get()
        if frame.recording:
            return _record1(prim, x, raw, out, None, x._fmt, frame, x._taint)
    return make(out, x._fmt, None, 0, x._taint)


def _out_fmt(a, b, out):
    fa = a._fmt if type(a) is dlarray else ""
    if fa and len(fa) == getattr(out, "ndim", 0):
        return fa
    fb = b._fmt if type(b) is dlarray else ""
    if fb and len(fb) == getattr(out, "ndim", 0):
        return fb
    return ""


_PY = (int, float, complex, bool)


def _bind2(prim, a, b, params=None):
    """Binary fast path with broadcasting, device and format checks."""
    ta = type(a) is dlarray
    tb = type(b) is dlarray
    if not (ta and tb) and (type(a) in _SEQ or type(b) in _SEQ):
        return _bind2_seq(prim, a, b, params)
    ra = a._data if ta else operand(a, prim.name)
    rb = b._data if tb else operand(b, prim.name)
    tra, trb = type(ra), type(rb)
    if tra is not trb and tra not in _PY and trb not in _PY and tra.__module__ != trb.__module__:
        check_same_device(ra, rb, prim.name)
    try:
        out = prim.fwd(ra, rb, **params) if params else prim.fwd(ra, rb)
    except ValueError as exc:
        if "broadcast" in str(exc):
            raise ValueError(
                f"{prim.name}: operands with shapes {getattr(ra, 'shape', ())} and "
                f"{getattr(rb, 'shape', ())} do not broadcast (NumPy broadcasting rules)"
            ) from None
        raise op_error(prim.name, (ra, rb), exc) from None
    except TypeError as exc:
        raise op_error(prim.name, (ra, rb), exc) from None
    fmt = _out_fmt(a, b, out) if (ta and a._fmt) or (tb and b._fmt) else ""
    taint = (ta and a._taint) or (tb and b._taint)
    if (ta and a._node is not None) or (tb and b._node is not None):
        frame = _FRAME.get()
        if frame.recording:
            return _record2(prim, a, b, ra, rb, out, params, fmt, frame, taint)
    return make(out, fmt, None, 0, taint)


_SEQ = (list, tuple)


def _bind2_seq(prim, a, b, params):
    """``_bind2`` with a list/tuple operand: stacked (traced) when it holds dlarrays."""
    if type(a) in _SEQ:
        sa = _from_sequence(a)
        a = a if sa is None else sa
    if type(b) in _SEQ:
        sb = _from_sequence(b)
        b = b if sb is None else sb
    if type(a) in _SEQ:
        a = make(coerce(a))
    if type(b) in _SEQ:
        b = make(coerce(b))
    return _bind2(prim, a, b, params)


def _is_complex(x):
    return x.dtype.kind == "c"


# ------------------------------------------------------------------ conj first (VJPs use it)


def conj(x):
    """Complex conjugate (the identity, with no op recorded, for real arrays).

    >>> import gpugrad as gg
    >>> gg.conj(gg.dlarray([1 + 2j])).numpy()
    array([1.-2.j])
    """
    if type(x) is dlarray and x._data.dtype.kind != "c":
        return x
    if type(x) in (int, float, bool):
        return x
    return _bind1(_CONJ, x)


_CONJ = Primitive("conj", lambda x: _xp().conj(x), lambda g, ans, x: (conj(g),))


# ------------------------------------------------------------------ unary primitives


def _unary(name, fwd, vjp, *, save=(0,), save_ans=False, doc="", fast=None):
    prim = Primitive(name, fwd, vjp, save=save, save_ans=save_ans, fast=fast)

    def op(x):
        return _bind1(prim, x)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = (
        f"Elementwise ``{name}``.{(' ' + doc) if doc else ''}\n\n"
        f"    >>> import gpugrad as gg\n"
        f"    >>> y = gg.{name}(gg.dlarray([0.5]))\n"
    )
    op.primitive = prim
    return op


negative = _unary(
    "negative", lambda x: -x, lambda g, ans, x: (-g,), save=(), fast=lambda g, ans, x: (-g,)
)
exp = _unary(
    "exp",
    lambda x: _xp().exp(x),
    lambda g, ans, x: (g * conj(ans),),
    save=(),
    save_ans=True,
    fast=lambda g, ans, x: (g * cj(ans),),
)
# Zero cotangents (issue 11): a rule whose factor is infinite (sqrt and log at 0,
# x**p with p < 1 at 0, ...) gives 0, never NaN, for a zero cotangent, so masking
# with gg.where (the untaken branch gets a zero cotangent) and functions such as
# sqrt(relu(x)) have finite gradients; the factors are built so that their own
# derivatives (second order) have no 0/0 either.


_np = np  # why: the module deletes its ``np`` name at the end (``__all__`` hygiene)


def _zs(g, d):
    """``g * d`` that is 0 where the cotangent ``g`` is 0, even where ``d`` is inf/NaN."""
    return g * where(g == 0, 0.0, d)


def _recip(x):
    """``1 / x`` (inf at 0) whose derivative has no 0/0 or 0/NaN: the division never
    sees 0 or NaN (a NaN forward value in an untaken ``where`` branch)."""
    # why: the masks are gpugrad comparisons, which gg.dlaccelerate replays
    z = equal(x, 0)
    n = isnan(x)
    r = 1 / where(logical_or(z, n), 1.0, x)
    return where(z, _np.inf, where(n, _np.nan, r))


def _zs_raw(g, r):
    """Raw form of :func:`_zs`: ``r`` (already ``g * d``) with 0 where ``g`` is 0."""
    return _xp().where(g == 0, 0, r)


def _log_fast(g, ans, x):
    with _np.errstate(divide="ignore", invalid="ignore"):
        return (_zs_raw(g, g / cj(x)),)


log = _unary(
    "log",
    lambda x: _xp().log(x),
    lambda g, ans, x: (_zs(g, _recip(conj(x))),),
    fast=_log_fast,
)
log1p = _unary("log1p", lambda x: _xp().log1p(x), lambda g, ans, x: (g / conj(x + 1),))
expm1 = _unary(
    "expm1",
    lambda x: _xp().expm1(x),
    lambda g, ans, x: (g * conj(ans + 1),),
    save=(),
    save_ans=True,
)


def _sqrt_fast(g, ans, x):
    with _np.errstate(divide="ignore", invalid="ignore"):
        return (_zs_raw(g, g / cj(ans * 2)),)


sqrt = _unary(
    "sqrt",
    lambda x: _xp().sqrt(x),
    lambda g, ans, x: (_zs(g, _recip(conj(ans * 2))),),
    save=(),
    save_ans=True,
    fast=_sqrt_fast,
)
sin = _unary(
    "sin",
    lambda x: _xp().sin(x),
    lambda g, ans, x: (g * conj(cos(x)),),
    fast=lambda g, ans, x: (g * cj(_xp().cos(x)),),
)
cos = _unary(
    "cos",
    lambda x: _xp().cos(x),
    lambda g, ans, x: (-g * conj(sin(x)),),
    fast=lambda g, ans, x: (-g * cj(_xp().sin(x)),),
)
tan = _unary(
    "tan",
    lambda x: _xp().tan(x),
    lambda g, ans, x: (g * conj(ans * ans + 1),),
    save=(),
    save_ans=True,
)
asin = _unary("asin", lambda x: _xp().arcsin(x), lambda g, ans, x: (g / conj(sqrt(1 - x * x)),))
acos = _unary("acos", lambda x: _xp().arccos(x), lambda g, ans, x: (-g / conj(sqrt(1 - x * x)),))
atan = _unary("atan", lambda x: _xp().arctan(x), lambda g, ans, x: (g / conj(x * x + 1),))
sinh = _unary("sinh", lambda x: _xp().sinh(x), lambda g, ans, x: (g * conj(cosh(x)),))
cosh = _unary("cosh", lambda x: _xp().cosh(x), lambda g, ans, x: (g * conj(sinh(x)),))
tanh = _unary(
    "tanh",
    lambda x: _xp().tanh(x),
    lambda g, ans, x: (g * conj(1 - ans * ans),),
    save=(),
    save_ans=True,
    fast=lambda g, ans, x: (g * cj(1 - ans * ans),),
)


def _sigmoid_fwd(x):
    xp = _xp()
    # why: exp(-x) overflows for very negative x; this form is stable both ways
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


sigmoid = _unary(
    "sigmoid",
    _sigmoid_fwd,
    lambda g, ans, x: (g * (ans * (1 - ans)),),
    save=(),
    save_ans=True,
    doc="The logistic function 1 / (1 + exp(-x)).",
)


def _sign_fwd(x):
    return _xp().sign(x)


sign = _unary("sign", _sign_fwd, lambda g, ans, x: (None,), save=(), doc="Derivative zero.")


def _abs_vjp(g, ans, x):
    if _is_complex(x):
        # why: d|z| in the steepest-ascent convention is z/|z|; 0 at z = 0
        safe = where(ans == 0, 1.0, ans)
        return (g * where(ans == 0, 0.0, x / safe),)
    return (g * sign(x),)


abs = _unary("abs", lambda x: _xp().abs(x), _abs_vjp, save=(0,), save_ans=True)  # noqa: A001


def _real_vjp(g, ans, x):
    return (g,)


real = _unary("real", lambda x: _xp().real(x), _real_vjp, save=())


def _imag_vjp(g, ans, x):
    if x.dtype.kind != "c":
        return (None,)
    return (g * 1j,)


imag = _unary("imag", lambda x: _xp().imag(x), _imag_vjp, save=())


def _angle_vjp(g, ans, x):
    if x.dtype.kind != "c":
        return (None,)
    mag2 = real(x * conj(x))
    safe = where(mag2 == 0, 1.0, mag2)
    return (g * where(mag2 == 0, 0.0, (x * 1j) / safe),)


angle = _unary("angle", lambda x: _xp().angle(x), _angle_vjp)


def square(x):
    """``x * x``."""
    x = x if type(x) is dlarray else dlarray(x)
    return x * x


# ------------------------------------------------------------------ binary primitives


def _same(g, ans, a, b):
    return g, g


def _negated(g, ans, a, b):
    return g, -g


_ADD = Primitive("add", lambda a, b: a + b, _same, fast=_same)
_SUB = Primitive("subtract", lambda a, b: a - b, _negated, fast=_negated)
_MUL = Primitive(
    "multiply",
    lambda a, b: a * b,
    lambda g, ans, a, b: (g * conj(b), g * conj(a)),
    save=(0, 1),
    fast=lambda g, ans, a, b: (g * cj(b), g * cj(a)),
)


def _div_vjp(g, ans, a, b):
    ga = g / conj(b)
    return ga, -ga * conj(ans)


def _div_fast(g, ans, a, b):
    ga = g / cj(b)
    return ga, -ga * cj(ans)


_DIV = Primitive("divide", lambda a, b: a / b, _div_vjp, save=(1,), save_ans=True, fast=_div_fast)


def _pow_vjp(g, ans, a, b):
    # why: b * a**(b-1) is 0 * inf at a = 0, b = 0 (x**0 is constant: derivative 0)
    d = where(b == 0, 0.0, b * a ** (b - 1))
    ga = _zs(g, conj(d))
    # why: log(a) is -inf at 0; d(a**b)/db there is 0 for b > 0
    loga = log(where(a == 0, 1.0, a))
    gb = g * conj(ans * loga)
    return ga, gb


_POW = Primitive("power", lambda a, b: a**b, _pow_vjp, save=(0, 1), save_ans=True)


def _powc_fwd(a, p):
    return a**p


def _powc_vjp(g, ans, a, p):  # p arrives as the keyword parameter
    if isinstance(p, (int, float)):
        if p == 2:
            return (g * conj(a * 2),)
        if p == 0:
            return (None,)  # x**0 is the constant 1 (also at x = 0)
        d = conj(a ** (p - 1) * p)
        return (g * d,) if p >= 1 else (_zs(g, d),)  # p < 1: infinite at 0
    d = where(make(p == 0), 0.0, a ** (p - 1) * p)
    return (_zs(g, conj(d)),)


def _powc_fast(g, ans, a, p):
    scalar = type(p) is int or type(p) is float
    if scalar and p == 0:
        return (None,)
    if scalar and p == 2:  # the common square: nothing to mask, no error state to set
        d = a * 2
        return (g * d.conj() if d.dtype.kind == "c" else g * d,)
    with _np.errstate(divide="ignore", invalid="ignore"):
        d = a ** (p - 1) * p
        if not scalar:
            d = _xp().where(p == 0, 0, d)
        r = g * d.conj() if d.dtype.kind == "c" else g * d
        return (r if scalar and p >= 1 else _zs_raw(g, r),)


_POWC = Primitive("power_const", _powc_fwd, _powc_vjp, save=(0,), fast=_powc_fast)


def _atan2_vjp(g, ans, y, x):
    # why: at the origin the derivative is undefined; 0 (a subgradient), not 0/0
    den = x * x + y * y
    z = den == 0
    r = where(z, 0.0, 1 / where(z, 1.0, den))
    return g * x * r, -g * y * r


_ATAN2 = Primitive("atan2", lambda y, x: _xp().arctan2(y, x), _atan2_vjp, save=(0, 1))


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _tie_masks(a, b, ans, dtype):
    """Where each traced input (``None``: untraced) gives the max/min, and the 0.5
    scale at ties when both are traced."""
    ma = None if a is None else a == ans
    mb = None if b is None else b == ans
    scale = None
    if ma is not None and mb is not None:
        scale = _xp().where(ma & mb, 0.5, 1.0).astype(dtype)
    return ma, mb, scale


def _minmax_vjp(g, ans, a, b):
    # why: at ties the gradient is split evenly, so it sums to g (as PyTorch does);
    # the taken input is selected, not multiplied by a 0/1 weight, so an infinite
    # cotangent (sqrt(maximum(x, 0)) at 0) gives 0, not NaN, to the other input
    ma, mb, scale = _tie_masks(
        a._data if type(a) is dlarray else None,
        b._data if type(b) is dlarray else None,
        ans._data,
        g.dtype,
    )
    scale = make(scale) if scale is not None else None
    zero = make(_xp().zeros((), g.dtype))
    out = []
    for m in (ma, mb):
        if m is None:
            out.append(None)
            continue
        gi = where(make(m), g, zero)
        out.append(gi * scale if scale is not None else gi)
    return tuple(out)


_MAX2 = Primitive(
    "maximum", lambda a, b: _xp().maximum(a, b), _minmax_vjp, save=(0, 1), save_ans=True
)
_MIN2 = Primitive(
    "minimum", lambda a, b: _xp().minimum(a, b), _minmax_vjp, save=(0, 1), save_ans=True
)


def _where_fwd(c, a, b):
    return _xp().where(c, a, b)


def _where_vjp(g, ans, c, a, b):
    zero = make(_xp().zeros((), g.dtype))
    cond = make(c._data) if type(c) is dlarray else make(_xp().asanyarray(c))
    return None, where(cond, g, zero), where(cond, zero, g)


_WHERE = Primitive("where", _where_fwd, _where_vjp, save=(0,))


def add(a, b):
    """``a + b`` with broadcasting.

    >>> import gpugrad as gg
    >>> gg.add(gg.dlarray([[1.0], [2.0]]), gg.dlarray([10.0, 20.0])).numpy()
    array([[11., 21.],
           [12., 22.]])
    """
    return _bind2(_ADD, a, b)


def subtract(a, b):
    """``a - b`` with broadcasting.

    >>> import gpugrad as gg
    >>> gg.subtract(gg.dlarray([3.0, 4.0]), 1.0).numpy()
    array([2., 3.])
    """
    return _bind2(_SUB, a, b)


def multiply(a, b):
    """``a * b`` with broadcasting.

    >>> import gpugrad as gg
    >>> gg.multiply(gg.dlarray([1.0, 2.0]), gg.dlarray([3.0, 4.0])).numpy()
    array([3., 8.])
    """
    return _bind2(_MUL, a, b)


def divide(a, b):
    """``a / b`` with broadcasting.

    >>> import gpugrad as gg
    >>> gg.divide(1.0, gg.dlarray([2.0, 4.0])).numpy()
    array([0.5 , 0.25])
    """
    return _bind2(_DIV, a, b)


def _traced(v):
    return type(v) is dlarray and v._node is not None


def power(a, b):
    """``a ** b``. An untraced exponent is a constant (no log(a) in the derivative).

    >>> import gpugrad as gg
    >>> gg.power(gg.dlarray([3.0]), 2).numpy()
    array([9.])
    """
    if type(a) is dlarray and (type(b) is int or type(b) is float):
        if type(b) is int and b < 0:
            b = float(b)
        return _bind_powc(a, b, None)
    if not _traced(b):
        p = b._data if type(b) is dlarray else operand(b, "power")
        if type(a) is not dlarray:
            a = make(operand(a, "power"))
        if type(p) is int:
            p = float(p) if p < 0 else p
        return _bind_powc(a, p, b)
    return _bind2(_POW, a, b)


def _bind_powc(a, p, b):
    try:
        out = _POWC.fwd(a._data, p)
    except (TypeError, ValueError) as exc:
        raise op_error("power", (a._data, p), exc) from None
    fmt = a._fmt if a._fmt and len(a._fmt) == getattr(out, "ndim", 0) else ""
    taint = a._taint or (type(b) is dlarray and b._taint)
    if a._node is not None:
        frame = _FRAME.get()
        if frame.recording:
            return _record1(_POWC, a, a._data, out, {"p": p}, fmt, frame, taint)
    return make(out, fmt, None, 0, taint)


def atan2(y, x):
    """Four-quadrant arctangent of ``y / x`` (real inputs).

    >>> import gpugrad as gg
    >>> gg.atan2(gg.dlarray([1.0]), gg.dlarray([-1.0])).numpy().round(4)
    array([2.3562])
    """
    return _bind2(_ATAN2, y, x)


def maximum(a, b):
    """Elementwise maximum; at ties the gradient is shared equally.

    >>> import gpugrad as gg
    >>> a, b = gg.dlarray([-1.0, 0.0, 2.0]), gg.dlarray([0.0, 0.0, 0.0])
    >>> gg.maximum(a, b).numpy()
    array([0., 0., 2.])
    >>> [g.numpy() for g in gg.gradient(lambda a, b: gg.sum(gg.maximum(a, b)))(a, b)]
    [array([0. , 0.5, 1. ]), array([1. , 0.5, 0. ])]
    """
    return _bind2(_MAX2, a, b)


def minimum(a, b):
    """Elementwise minimum; at ties the gradient is shared equally.

    >>> import gpugrad as gg
    >>> gg.minimum(gg.dlarray([1.0, 5.0]), gg.dlarray([3.0, 2.0])).numpy()
    array([1., 2.])
    """
    return _bind2(_MIN2, a, b)


def where(condition, a, b):
    """``a`` where ``condition`` holds, else ``b`` (the condition is not differentiated).

    The branch not taken gets a zero cotangent, and gpugrad's rules turn a zero
    cotangent into a zero gradient even where their factor is infinite or NaN
    (``sqrt``, ``log``, ``x ** p``, ``atan2``, ``norm``, ``relu``, ``maximum``), so
    ``where(x > 0, sqrt(x), 0)`` has finite derivatives of every order at ``x <= 0``.
    A product or quotient with an infinite factor is still ``0 * inf = NaN`` (as in
    PyTorch and JAX): mask the argument as well, e.g.
    ``where(x > 0, x * log(where(x > 0, x, 1.0)), 0.0)`` for ``x log x``.

    >>> import gpugrad as gg
    >>> gg.where(gg.dlarray([True, False]), 1.0, 2.0).numpy()
    array([1., 2.])
    >>> float(gg.gradient(lambda x: gg.where(x > 0, gg.sqrt(x), 0.0))(0.0))  # sqrt'(0) = inf
    0.0
    """
    if type(condition) is dlarray:
        cond = make(condition._data)
    else:
        cond = condition
    out_args = (cond, a, b)
    res = bind(_WHERE, out_args)
    fmt = _out_fmt(a, b, res._data)
    if fmt:
        res._fmt = fmt
    return res


def clip(a, a_min=None, a_max=None):
    """Limit values to ``[a_min, a_max]`` (``numpy.clip``'s arguments); the gradient is
    zero where clipped.

    >>> import gpugrad as gg
    >>> x = gg.dlarray([-2.0, 0.5, 2.0])
    >>> gg.clip(x, -1.0, 1.0).numpy(), gg.gradient(lambda v: gg.sum(gg.clip(v, -1.0, 1.0)))(x).numpy()
    (array([-1. ,  0.5,  1. ]), array([0., 1., 0.]))
    """
    x = a
    if a_min is not None:
        x = maximum(x, a_min) if not isinstance(x, (int, float)) else max(x, a_min)
    if a_max is not None:
        x = minimum(x, a_max)
    return x


# ------------------------------------------------------------------ comparisons (not differentiable)


def _compare(name, fn):
    def op(a, b):
        ra = a._data if type(a) is dlarray else coerce(a)
        rb = b._data if type(b) is dlarray else coerce(b)
        out = fn(ra, rb) if core.RECORDER is None else core.host_call(fn)(ra, rb)
        fmt = _out_fmt(a, b, out) if type(a) is dlarray or type(b) is dlarray else ""
        return make(out, fmt)

    op.__name__ = op.__qualname__ = name
    return op


equal = _compare("equal", lambda a, b: a == b)
not_equal = _compare("not_equal", lambda a, b: a != b)
less = _compare("less", lambda a, b: a < b)
less_equal = _compare("less_equal", lambda a, b: a <= b)
greater = _compare("greater", lambda a, b: a > b)
greater_equal = _compare("greater_equal", lambda a, b: a >= b)
logical_and = _compare("logical_and", lambda a, b: a & b)
logical_or = _compare("logical_or", lambda a, b: a | b)
logical_xor = _compare("logical_xor", lambda a, b: a ^ b)

# docstrings of the comparisons built above (help(), the docs site and doctest read them)
equal.__doc__ = """Elementwise ``a == b`` as a bool dlarray (NumPy broadcasting; not differentiable).

    >>> import gpugrad as gg
    >>> gg.equal(gg.dlarray([1.0, 2.0, 3.0]), 2.0).numpy()
    array([False,  True, False])
    """
not_equal.__doc__ = """Elementwise ``a != b`` as a bool dlarray (NumPy broadcasting; not differentiable).

    >>> import gpugrad as gg
    >>> gg.not_equal(gg.dlarray([1.0, 2.0]), gg.dlarray([1.0, 3.0])).numpy()
    array([False,  True])
    """
less.__doc__ = """Elementwise ``a < b`` as a bool dlarray (NumPy broadcasting; not differentiable).

    >>> import gpugrad as gg
    >>> gg.less(gg.dlarray([1.0, 2.0, 3.0]), 2.0).numpy()
    array([ True, False, False])
    """
less_equal.__doc__ = """Elementwise ``a <= b`` as a bool dlarray (NumPy broadcasting; not differentiable).

    >>> import gpugrad as gg
    >>> gg.less_equal(gg.dlarray([1.0, 2.0, 3.0]), 2.0).numpy()
    array([ True,  True, False])
    """
greater.__doc__ = """Elementwise ``a > b`` as a bool dlarray (NumPy broadcasting; not differentiable).

    Use it for masks; the gradient flows through what the mask selects, e.g. with
    :func:`where`:

    >>> import gpugrad as gg
    >>> x = gg.dlarray([-1.0, 0.5, 2.0])
    >>> gg.greater(x, 0).numpy()
    array([False,  True,  True])
    >>> gg.where(gg.greater(x, 0), x, 0.0).numpy()
    array([0. , 0.5, 2. ])
    """
greater_equal.__doc__ = """Elementwise ``a >= b`` as a bool dlarray (NumPy broadcasting; not differentiable).

    >>> import gpugrad as gg
    >>> gg.greater_equal(gg.dlarray([1.0, 2.0, 3.0]), 2.0).numpy()
    array([False,  True,  True])
    """
logical_and.__doc__ = """Elementwise logical AND of two bool arrays (NumPy broadcasting).

    >>> import gpugrad as gg
    >>> x = gg.dlarray([-2.0, 0.5, 3.0])
    >>> gg.logical_and(gg.greater(x, 0), gg.less(x, 1)).numpy()
    array([False,  True, False])
    """
logical_or.__doc__ = """Elementwise logical OR of two bool arrays (NumPy broadcasting).

    >>> import gpugrad as gg
    >>> x = gg.dlarray([-2.0, 0.5, 3.0])
    >>> gg.logical_or(gg.less(x, 0), gg.greater(x, 1)).numpy()
    array([ True, False,  True])
    """
logical_xor.__doc__ = """Elementwise logical exclusive OR of two bool arrays (NumPy broadcasting).

    >>> import gpugrad as gg
    >>> from gpugrad.ops.elementwise import logical_xor
    >>> logical_xor(gg.dlarray([True, True]), gg.dlarray([True, False])).numpy()
    array([False,  True])
    """


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _raw_unary(fn, raw):
    return fn(raw)


def logical_not(x):
    """Elementwise logical NOT of a bool array (keeps the format labels).

    >>> import gpugrad as gg
    >>> gg.logical_not(gg.dlarray([True, False])).numpy()
    array([False,  True])
    """
    return make(
        _raw_unary(operator.invert, x._data if type(x) is dlarray else coerce(x)),
        getattr(x, "_fmt", ""),
    )


def isfinite(x):
    """True where ``x`` is neither infinite nor NaN (a bool dlarray; not differentiable).

    >>> import gpugrad as gg
    >>> gg.isfinite(gg.dlarray([1.0, float("inf"), float("nan")])).numpy()
    array([ True, False, False])
    """
    raw = x._data if type(x) is dlarray else coerce(x)
    return make(_raw_unary(_xp().isfinite, raw))


def isnan(x):
    """True where ``x`` is NaN (a bool dlarray; not differentiable). To find the op that
    first produced a NaN in a forward or backward pass, use ``gg.debug.detect_anomaly``.

    >>> import gpugrad as gg
    >>> gg.isnan(gg.dlarray([1.0, float("nan")])).numpy()
    array([False,  True])
    """
    raw = x._data if type(x) is dlarray else coerce(x)
    return make(_raw_unary(_xp().isnan, raw))


# ------------------------------------------------------------------ the NumPy surface
# Rules follow NumPy's names and argument names. Where a composite of the primitives
# above is exact it is used (so higher derivatives come free); a new primitive only
# where a composite loses accuracy (log2, asinh, ...) or is wrong (cbrt of x < 0).

_np = np  # the module deletes its np at the end
_LN2 = float(_np.log(2.0))
_LN10 = float(_np.log(10.0))


def _raw(v):
    return v._data if type(v) is dlarray else coerce(v)


def _unary_prim(name, fwd, vjp, *, save=(0,), save_ans=False):
    prim = Primitive(name, fwd, vjp, save=save, save_ans=save_ans)

    def op(x):
        return _bind1(prim, x)

    op.primitive = prim
    return op


_asinh = _unary_prim(
    "asinh", lambda x: _xp().arcsinh(x), lambda g, ans, x: (g / conj(sqrt(x * x + 1)),)
)
_acosh = _unary_prim(
    "acosh",
    lambda x: _xp().arccosh(x),
    lambda g, ans, x: (g / conj(sqrt(x - 1) * sqrt(x + 1)),),
)
_atanh = _unary_prim("atanh", lambda x: _xp().arctanh(x), lambda g, ans, x: (g / conj(1 - x * x),))
_log2 = _unary_prim("log2", lambda x: _xp().log2(x), lambda g, ans, x: (g / conj(x * _LN2),))
_log10 = _unary_prim("log10", lambda x: _xp().log10(x), lambda g, ans, x: (g / conj(x * _LN10),))
_exp2 = _unary_prim(
    "exp2",
    lambda x: _xp().exp2(x),
    lambda g, ans, x: (g * conj(ans * _LN2),),
    save=(),
    save_ans=True,
)


def _cbrt_fwd(x):
    if x.dtype.kind == "c":
        raise TypeError("cbrt: complex input is not supported (as numpy.cbrt); use x ** (1/3)")
    return _xp().cbrt(x)


# why: d cbrt(x) = 1 / (3 cbrt(x)^2), infinite at 0 as the function's slope is
_cbrt = _unary_prim(
    "cbrt", _cbrt_fwd, lambda g, ans, x: (g / (ans * ans * 3),), save=(), save_ans=True
)


def arcsinh(x):
    """Inverse hyperbolic sine, as ``numpy.arcsinh`` (alias ``asinh``).

    >>> import gpugrad as gg
    >>> float(gg.arcsinh(gg.dlarray(1.0)).round(6))
    0.881374
    """
    return _asinh(x)


def arccosh(x):
    """Inverse hyperbolic cosine (``x >= 1``), as ``numpy.arccosh`` (alias ``acosh``).

    >>> import gpugrad as gg
    >>> float(gg.arccosh(gg.dlarray(2.0)).round(6))
    1.316958
    """
    return _acosh(x)


def arctanh(x):
    """Inverse hyperbolic tangent (``|x| < 1``), as ``numpy.arctanh`` (alias ``atanh``).

    >>> import gpugrad as gg
    >>> float(gg.arctanh(gg.dlarray(0.5)).round(6))
    0.549306
    """
    return _atanh(x)


asinh = arcsinh
acosh = arccosh
atanh = arctanh
# NumPy's names for the inverse trigonometric functions
arcsin = asin
arccos = acos
arctan = atan
arctan2 = atan2


def log2(x):
    """Base-2 logarithm (exact at powers of two, as ``numpy.log2``).

    >>> import gpugrad as gg
    >>> float(gg.log2(gg.dlarray(8.0)))
    3.0
    """
    return _log2(x)


def log10(x):
    """Base-10 logarithm, as ``numpy.log10``.

    >>> import gpugrad as gg
    >>> float(gg.log10(gg.dlarray(1000.0)))
    3.0
    """
    return _log10(x)


def exp2(x):
    """``2 ** x``, as ``numpy.exp2``.

    >>> import gpugrad as gg
    >>> float(gg.exp2(gg.dlarray(10.0)))
    1024.0
    """
    return _exp2(x)


def cbrt(x):
    """Real cube root, negative for negative ``x`` (``x ** (1/3)`` would be NaN there).
    The derivative is infinite at 0, as the function's slope is.

    >>> import gpugrad as gg
    >>> float(gg.cbrt(gg.dlarray(-8.0)))
    -2.0
    """
    return _cbrt(x)


def reciprocal(x):
    """``1 / x``, as ``numpy.reciprocal`` for float input.

    >>> import gpugrad as gg
    >>> gg.reciprocal(gg.dlarray([2.0, 4.0])).numpy()
    array([0.5 , 0.25])
    """
    return 1.0 / x


def rsqrt(x):
    """``1 / sqrt(x)`` (PyTorch's ``rsqrt``).

    >>> import gpugrad as gg
    >>> float(gg.rsqrt(gg.dlarray(4.0)))
    0.5
    """
    return 1.0 / sqrt(x)


def _sinc_taylor(x):
    t = (x * _np.pi) * (x * _np.pi)
    return 1 - t / 6 + t * t / 120 - t * t * t / 5040


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _sinc_small(raw):
    return _xp().abs(raw) < 1e-3


def sinc(x):
    """Normalized sinc, ``sin(pi x) / (pi x)`` with ``sinc(0) = 1``, as ``numpy.sinc``.

    Near 0 a Taylor polynomial is used, so the first and second derivatives are
    right there too (0 and ``-pi**2 / 3`` at 0).

    >>> import gpugrad as gg
    >>> gg.sinc(gg.dlarray([0.0, 0.5])).numpy().round(6).tolist()
    [1.0, 0.63662]
    """
    x = x if type(x) is dlarray else make(_xp().asanyarray(coerce(x)))
    # why: sin(pi x)/(pi x) is 0/0 at 0; below 1e-3 the 7th-order Taylor polynomial
    # is exact to double precision (error < (pi 1e-3)^8 / 9!) and has exact derivatives
    small = make(_sinc_small(x._data))
    safe = where(small, 1.0, x)
    return where(small, _sinc_taylor(x), sin(safe * _np.pi) / (safe * _np.pi))


def deg2rad(x):
    """Degrees to radians, as ``numpy.deg2rad`` (alias ``radians``).

    >>> import gpugrad as gg
    >>> float(gg.deg2rad(gg.dlarray(180.0)).round(6))
    3.141593
    """
    return x * (_np.pi / 180.0)


def rad2deg(x):
    """Radians to degrees, as ``numpy.rad2deg`` (alias ``degrees``).

    >>> import numpy as np
    >>> import gpugrad as gg
    >>> float(gg.rad2deg(gg.dlarray(np.pi)))
    180.0
    """
    return x * (180.0 / _np.pi)


radians = deg2rad
degrees = rad2deg


# why: rounding functions are piecewise constant: their derivative is zero wherever it
# exists (NumPy/autograd, PyTorch and JAX all give zero), so one primitive with a
# zero VJP serves all of them; a gradient through them is zeros, never an error
_STEP_FNS = {
    "floor": lambda xp, x: xp.floor(x),
    "ceil": lambda xp, x: xp.ceil(x),
    "trunc": lambda xp, x: xp.trunc(x),
    "rint": lambda xp, x: xp.rint(x),
    "floor_divide": lambda xp, a, b: xp.floor_divide(a, b),
}


def _step_fwd(*xs, kind, decimals=0):
    xp = _xp()
    if kind == "round":
        return xp.round(xs[0], decimals)
    return _STEP_FNS[kind](xp, *xs)


_STEP = Primitive(
    "piecewise_constant",
    _step_fwd,
    lambda g, ans, *xs, kind, decimals=0: (None,) * len(xs),
    save=(),
)


def _real_only(x, fn):
    if _raw_dtype_kind(x) == "c":
        raise TypeError(
            f"{fn}: complex input is not supported (as numpy.{fn}); got a complex array"
        )


def _raw_dtype_kind(v):
    raw = _raw(v)
    # why: not getattr's default, which converted every array (a CuPy one raises)
    dtype = getattr(raw, "dtype", None)
    return (_np.asanyarray(raw).dtype if dtype is None else dtype).kind


def _step(kind, x, **params):
    _real_only(x, kind)
    fmt = x._fmt if type(x) is dlarray else ""
    return bind(_STEP, (x,), {"kind": kind, **params}, fmt)


def floor(x):
    """Largest integer ``<= x`` (as floats); zero derivative.

    >>> import gpugrad as gg
    >>> gg.floor(gg.dlarray([-1.5, 1.5])).numpy()
    array([-2.,  1.])
    """
    return _step("floor", x)


def ceil(x):
    """Smallest integer ``>= x`` (as floats); zero derivative.

    >>> import gpugrad as gg
    >>> gg.ceil(gg.dlarray([-1.5, 1.5])).numpy()
    array([-1.,  2.])
    """
    return _step("ceil", x)


def trunc(x):
    """Round toward zero; zero derivative.

    >>> import gpugrad as gg
    >>> gg.trunc(gg.dlarray([-1.5, 1.5])).numpy()
    array([-1.,  1.])
    """
    return _step("trunc", x)


def rint(x):
    """Round to the nearest integer, halves to even; zero derivative."""
    return _step("rint", x)


def round(x, decimals=0):  # noqa: A001
    """Round to ``decimals`` decimals, halves to even (``numpy.round``); zero derivative.
    ``round(x)`` on a dlarray calls this too.

    >>> import gpugrad as gg
    >>> gg.round(gg.dlarray([0.5, 1.5, 2.567]), 1).numpy()
    array([0.5, 1.5, 2.6])
    """
    return _step("round", x, decimals=int(decimals))


around = round


def fix(x):
    """Round toward zero (``numpy.fix``); zero derivative."""
    return trunc(x)


def floor_divide(a, b):
    """``a // b`` (``floor(a / b)``, as ``numpy.floor_divide``); zero derivative.

    >>> import gpugrad as gg
    >>> (gg.dlarray([7.0, -7.0]) // 2).numpy()
    array([ 3., -4.])
    """
    _real_only(a, "floor_divide")
    _real_only(b, "floor_divide")
    return _bind2(_STEP, a, b, {"kind": "floor_divide"})


def _mod_fwd(a, b, kind):
    xp = _xp()
    return xp.remainder(a, b) if kind == "floor" else xp.fmod(a, b)


def _mod_vjp(g, ans, a, b, kind):
    # why: a - q b with q = floor(a/b) (or trunc) piecewise constant: d/da = 1,
    # d/db = -q (PyTorch's rule); q is taken from the result, so it is consistent
    # with the value NumPy computed
    q = make(_mod_quotient(_raw(a), _raw(b), _raw(ans)))
    return g, -g * q


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _mod_quotient(ra, rb, rans):
    return _xp().round((ra - rans) / rb)


_MOD = Primitive("remainder", _mod_fwd, _mod_vjp, save=(0, 1), save_ans=True)


def remainder(a, b):
    """``a % b`` with the sign of ``b`` (Python's and ``numpy.remainder``'s rule; alias
    ``mod``). Derivatives: 1 for ``a`` and ``-floor(a / b)`` for ``b``.

    >>> import gpugrad as gg
    >>> (gg.dlarray([7.0, -7.0]) % 3).numpy()
    array([1., 2.])
    """
    _real_only(a, "remainder")
    _real_only(b, "remainder")
    return _bind2(_MOD, a, b, {"kind": "floor"})


mod = remainder


def fmod(a, b):
    """C's ``fmod``: remainder with the sign of ``a`` (``numpy.fmod``). Derivatives: 1 for
    ``a`` and ``-trunc(a / b)`` for ``b``.

    >>> import gpugrad as gg
    >>> gg.fmod(gg.dlarray([7.0, -7.0]), 3).numpy()
    array([ 1., -1.])
    """
    _real_only(a, "fmod")
    _real_only(b, "fmod")
    return _bind2(_MOD, a, b, {"kind": "trunc"})


def divmod(a, b):  # noqa: A001
    """``(a // b, a % b)``, as ``numpy.divmod`` (and Python's ``divmod`` on a dlarray).

    >>> import gpugrad as gg
    >>> [q.numpy() for q in divmod(gg.dlarray([7.0]), 2)]
    [array([3.]), array([1.])]
    """
    return floor_divide(a, b), remainder(a, b)


def fabs(x):
    """Absolute value of real input (``numpy.fabs`` rejects complex input).

    >>> import gpugrad as gg
    >>> gg.fabs(gg.dlarray([-1.5, 2.0])).numpy()
    array([1.5, 2. ])
    """
    _real_only(x, "fabs")
    return abs(x)


def _hypot_vjp(g, ans, a, b):
    # why: the slope a / hypot is 0/0 at the origin; 0 there (a subgradient)
    safe = where(ans == 0, 1.0, ans)
    ga = g * a / safe if type(a) is dlarray else None
    gb = g * b / safe if type(b) is dlarray else None
    return ga, gb


_HYPOT = Primitive("hypot", lambda a, b: _xp().hypot(a, b), _hypot_vjp, save=(0, 1), save_ans=True)


def hypot(a, b):
    """``sqrt(a**2 + b**2)`` without overflow, as ``numpy.hypot``; the gradient is 0 at
    the origin.

    >>> import gpugrad as gg
    >>> float(gg.hypot(gg.dlarray(3.0), 4.0))
    5.0
    """
    _real_only(a, "hypot")
    _real_only(b, "hypot")
    return _bind2(_HYPOT, a, b)


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _logaddexp_shift(ra, rb):
    xp = _xp()
    m = xp.maximum(ra, rb)
    return xp.where(xp.isfinite(m), m, 0.0), xp.asanyarray(ra >= rb)


def logaddexp(a, b):
    """``log(exp(a) + exp(b))`` without overflow or loss of precision, as
    ``numpy.logaddexp``; smooth (first and second derivatives right at ``a == b``).

    >>> import gpugrad as gg
    >>> float(gg.logaddexp(gg.dlarray(0.0), 0.0).round(6))
    0.693147
    """
    _real_only(a, "logaddexp")
    _real_only(b, "logaddexp")
    shift, a_is_max = _logaddexp_shift(_raw(a), _raw(b))
    # a constant shift (no gradient: it cancels); non-finite shifts are dropped
    m, a_is_max = make(shift), make(a_is_max)
    # why: log(exp(a-m) + exp(b-m)) = log1p(S - 1), and S - 1 written with expm1 on the
    # larger argument keeps the precision of numpy.logaddexp when one term is tiny
    rest = where(a_is_max, expm1(a - m) + exp(b - m), exp(a - m) + expm1(b - m))
    return log1p(rest) + m


def logaddexp2(a, b):
    """``log2(2**a + 2**b)``, as ``numpy.logaddexp2``.

    >>> import gpugrad as gg
    >>> float(gg.logaddexp2(gg.dlarray(3.0), 3.0))
    4.0
    """
    return logaddexp(a * _LN2, b * _LN2) / _LN2


def fmax(a, b):
    """Elementwise maximum that ignores NaN (``numpy.fmax``); ties share the gradient.

    >>> import numpy as np
    >>> import gpugrad as gg
    >>> gg.fmax(gg.dlarray([1.0, np.nan]), gg.dlarray([np.nan, 2.0])).numpy()
    array([1., 2.])
    """
    na, nb = isnan(a), isnan(b)  # recorded: a gg.dlaccelerate replay recomputes them
    return where(nb, a, where(na, b, maximum(a, b)))


def fmin(a, b):
    """Elementwise minimum that ignores NaN (``numpy.fmin``); ties share the gradient.

    >>> import numpy as np
    >>> import gpugrad as gg
    >>> gg.fmin(gg.dlarray([1.0, np.nan]), gg.dlarray([np.nan, 2.0])).numpy()
    array([1., 2.])
    """
    na, nb = isnan(a), isnan(b)  # recorded: a gg.dlaccelerate replay recomputes them
    return where(nb, a, where(na, b, minimum(a, b)))


def nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    """NaN and infinities replaced by finite numbers (``numpy.nan_to_num``, same
    arguments); the replaced elements get zero gradient, the others pass it through.

    >>> import numpy as np
    >>> import gpugrad as gg
    >>> gg.nan_to_num(gg.dlarray([np.nan, 1.0, -np.inf]), neginf=-9.0).numpy()
    array([ 0.,  1., -9.])
    """
    x = x if type(x) is dlarray else make(_xp().asanyarray(coerce(x)))
    xp = _xp()
    raw = x._data
    if raw.dtype.kind not in "fc":
        return x
    # recorded calls: a gg.dlaccelerate replay recomputes the replacements and masks
    fix = _functools.partial(xp.nan_to_num, nan=nan, posinf=posinf, neginf=neginf)
    fixed = make(_raw_unary(fix, raw))
    if raw.dtype.kind == "c":
        # real and imaginary parts are fixed separately, as NumPy does
        re, im = real(x), imag(x)
        rr, ri = isfinite(re), isfinite(im)
        return where(rr, re, real(fixed)) + where(ri, im, imag(fixed)) * 1j
    return where(isfinite(x), x, fixed)


def heaviside(x1, x2):
    """Heaviside step: 0 for ``x1 < 0``, ``x2`` where ``x1 == 0``, 1 for ``x1 > 0``
    (``numpy.heaviside``). Zero derivative in ``x1``; ``x2`` gets the gradient where
    ``x1 == 0``.

    >>> import gpugrad as gg
    >>> gg.heaviside(gg.dlarray([-1.0, 0.0, 2.0]), 0.5).numpy()
    array([0. , 0.5, 1. ])
    """
    _real_only(x1, "heaviside")
    _real_only(x2, "heaviside")
    xp = _xp()
    r1 = xp.asanyarray(_raw(x1))
    dtype = _np.result_type(r1, _raw(x2))
    one = make(xp.ones((), dtype))
    zero = make(xp.zeros((), dtype))
    # comparisons are recorded calls: a gg.dlaccelerate replay recomputes the masks
    out = where(less(r1, 0), zero, where(greater(r1, 0), one, x2))
    if r1.dtype.kind == "f":  # NaN stays NaN (a no-op where there is none)
        out = where(isnan(r1), make(xp.asanyarray(_np.nan, dtype)), out)
    return out


__all__ = [
    n
    for n in dir()
    if not n.startswith("_")
    and n not in ("np", "annotations", "tape", "operator", "core", "host_call")
]
del np
