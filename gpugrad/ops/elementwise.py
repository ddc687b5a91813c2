"""Elementwise primitives and comparisons. Each rule sits beside its forward."""

from __future__ import annotations

import numpy as np

from .. import tape
from ..array import check_same_device, dlarray
from .core import _STATE, Primitive, _record1, _record2, bind, cj, coerce, make, op_error, operand

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
log = _unary("log", lambda x: _xp().log(x), lambda g, ans, x: (g / conj(x),))
log1p = _unary("log1p", lambda x: _xp().log1p(x), lambda g, ans, x: (g / conj(x + 1),))
expm1 = _unary(
    "expm1",
    lambda x: _xp().expm1(x),
    lambda g, ans, x: (g * conj(ans + 1),),
    save=(),
    save_ans=True,
)
sqrt = _unary(
    "sqrt", lambda x: _xp().sqrt(x), lambda g, ans, x: (g / conj(ans * 2),), save=(), save_ans=True
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
    ga = g * conj(b * a ** (b - 1))
    # why: log(a) is -inf at 0; d(a**b)/db there is 0 for b > 0
    loga = log(where(a == 0, 1.0, a))
    gb = g * conj(ans * loga)
    return ga, gb


_POW = Primitive("power", lambda a, b: a**b, _pow_vjp, save=(0, 1), save_ans=True)


def _powc_fwd(a, p):
    return a**p


def _powc_vjp(g, ans, a, p):  # p arrives as the keyword parameter
    if isinstance(p, (int, float)) and p == 2:
        return (g * conj(a * 2),)
    return (g * conj(a ** (p - 1) * p),)


def _powc_fast(g, ans, a, p):
    two = (type(p) is int or type(p) is float) and p == 2
    d = a * 2 if two else a ** (p - 1) * p
    return (g * d.conj() if d.dtype.kind == "c" else g * d,)


_POWC = Primitive("power_const", _powc_fwd, _powc_vjp, save=(0,), fast=_powc_fast)


def _atan2_vjp(g, ans, y, x):
    den = x * x + y * y
    return g * x / den, -g * y / den


_ATAN2 = Primitive("atan2", lambda y, x: _xp().arctan2(y, x), _atan2_vjp, save=(0, 1))


def _minmax_vjp(g, ans, a, b):
    # why: at ties the gradient is split evenly, so it sums to g (as PyTorch does)
    wa = (a._data == ans._data) * 1.0 if type(a) is dlarray else None
    wb = (b._data == ans._data) * 1.0 if type(b) is dlarray else None
    if wa is not None and wb is not None:
        both = wa * wb
        wa = wa - 0.5 * both
        wb = wb - 0.5 * both
    ga = g * make(wa) if wa is not None else None
    gb = g * make(wb) if wb is not None else None
    return ga, gb


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
    cond = make(c._data) if type(c) is dlarray else make(_xp().asarray(c))
    return None, where(cond, g, zero), where(cond, zero, g)


_WHERE = Primitive("where", _where_fwd, _where_vjp, save=(0,))


def add(a, b):
    """``a + b`` with broadcasting."""
    return _bind2(_ADD, a, b)


def subtract(a, b):
    """``a - b`` with broadcasting."""
    return _bind2(_SUB, a, b)


def multiply(a, b):
    """``a * b`` with broadcasting."""
    return _bind2(_MUL, a, b)


def divide(a, b):
    """``a / b`` with broadcasting."""
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
    """Four-quadrant arctangent of ``y / x`` (real inputs)."""
    return _bind2(_ATAN2, y, x)


def maximum(a, b):
    """Elementwise maximum; at ties the gradient is shared equally."""
    return _bind2(_MAX2, a, b)


def minimum(a, b):
    """Elementwise minimum; at ties the gradient is shared equally."""
    return _bind2(_MIN2, a, b)


def where(condition, a, b):
    """``a`` where ``condition`` holds, else ``b`` (the condition is not differentiated).

    >>> import gpugrad as gg
    >>> gg.where(gg.dlarray([True, False]), 1.0, 2.0).numpy()
    array([1., 2.])
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


def clip(x, lo=None, hi=None):
    """Limit values to ``[lo, hi]``; the gradient is zero where clipped."""
    if lo is not None:
        x = maximum(x, lo) if not isinstance(x, (int, float)) else max(x, lo)
    if hi is not None:
        x = minimum(x, hi)
    return x


# ------------------------------------------------------------------ comparisons (not differentiable)


def _compare(name, fn):
    def op(a, b):
        ra = a._data if type(a) is dlarray else coerce(a)
        rb = b._data if type(b) is dlarray else coerce(b)
        out = fn(ra, rb)
        fmt = _out_fmt(a, b, out) if type(a) is dlarray or type(b) is dlarray else ""
        return make(out, fmt)

    op.__name__ = name
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


def logical_not(x):
    return make(~x._data if type(x) is dlarray else ~coerce(x), getattr(x, "_fmt", ""))


def isfinite(x):
    raw = x._data if type(x) is dlarray else coerce(x)
    return make(_xp().isfinite(raw))


def isnan(x):
    raw = x._data if type(x) is dlarray else coerce(x)
    return make(_xp().isnan(raw))


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("np", "annotations", "tape")]
del np
