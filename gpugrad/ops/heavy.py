"""Heavy primitives whose forward and backward choose an implementation by device:
the hand-written CUDA kernels on ``cuda`` and ``emu``, NumPy/BLAS on ``cpu``.

A kernel-backed backward is itself a primitive with a VJP (``relu_bwd``, the
transposed ``matmul``), so higher derivatives stay right on every device.
"""

from __future__ import annotations

import numpy as np

from ..array import dlarray
from .core import _STATE, Primitive, bind, cj
from .elementwise import conj
from .shape import reshape

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _xp():
    return _STATE["xp"]


def kernels_for(*raws):
    """The kernel module when the active device runs kernels and every operand is a
    float32/float64 array of one dtype; else ``None`` (use the NumPy/CuPy path)."""
    if _STATE["device"] not in ("cuda", "emu"):
        return None
    dt = raws[0].dtype
    if dt not in _KERNEL_DTYPES or any(r.dtype != dt for r in raws):
        return None
    from ..backend import kernels  # noqa: PLC0415 - loads only on cuda/emu

    return kernels


# ------------------------------------------------------------------ matmul


def _op(a, t):
    return a.swapaxes(-1, -2) if t else a


def _matmul_fwd(a, b, trans_a=False, trans_b=False):
    if a.ndim == 2 and b.ndim == 2:
        k = kernels_for(a, b)
        if k is not None:
            return k.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    return _xp().matmul(_op(a, trans_a), _op(b, trans_b))


def _matmul_vjp(g, ans, a, b, trans_a=False, trans_b=False):
    ca, cb = conj(a), conj(b)
    if trans_a:
        ga = matmul_t(cb, g, trans_b, True)
    else:
        ga = matmul_t(g, cb, False, not trans_b)
    if trans_b:
        gb = matmul_t(g, ca, True, trans_a)
    else:
        gb = matmul_t(ca, g, not trans_a, False)
    return ga, gb


def _matmul_fast(g, ans, a, b, trans_a=False, trans_b=False):
    ca, cb = cj(a), cj(b)
    ga = _matmul_fwd(cb, g, trans_b, True) if trans_a else _matmul_fwd(g, cb, False, not trans_b)
    gb = _matmul_fwd(g, ca, True, trans_a) if trans_b else _matmul_fwd(ca, g, not trans_a, False)
    return ga, gb


_MATMUL = Primitive("matmul", _matmul_fwd, _matmul_vjp, save=(0, 1), fast=_matmul_fast)


def matmul_t(a, b, trans_a=False, trans_b=False):
    """``op(a) @ op(b)`` where ``op`` transposes the last two axes when asked
    (so backward passes need no explicit transposes)."""
    params = (
        {"trans_a": True, "trans_b": trans_b}
        if trans_a
        else ({"trans_a": False, "trans_b": True} if trans_b else None)
    )
    return bind(_MATMUL, (a, b), params)


def matmul(a, b):
    """Matrix product with NumPy ``matmul`` semantics (1-D operands, batch broadcasting).

    >>> import gpugrad as gg
    >>> gg.matmul(gg.dlarray([[1.0, 2.0]]), gg.dlarray([[3.0], [4.0]])).numpy()
    array([[11.]])
    """
    a = a if type(a) is dlarray else dlarray(a, copy=False)
    b = b if type(b) is dlarray else dlarray(b, copy=False)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension; use * for scalars")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
    if ka != kb:
        raise ValueError(
            f"matmul: inner dimensions differ: a has shape {a.shape} (last dimension {ka}), "
            f"b has shape {b.shape} ({'second-to-last' if b.ndim > 1 else 'only'} dimension {kb})"
        )
    if a.ndim == 1 and b.ndim == 1:
        return reshape(matmul_t(reshape(a, (1, ka)), reshape(b, (kb, 1))), ())
    if a.ndim == 1:
        out = matmul_t(reshape(a, (1, ka)), b)
        return reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = matmul_t(a, reshape(b, (kb, 1)))
        return reshape(out, out.shape[:-1])
    return matmul_t(a, b)


def dot(a, b):
    """``numpy.dot``: scalars multiply, 1-D·1-D is the inner product, N-D sums over
    the last axis of ``a`` and the second-to-last of ``b``."""
    a = a if type(a) is dlarray else dlarray(a, copy=False)
    b = b if type(b) is dlarray else dlarray(b, copy=False)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if b.ndim <= 2:
        return matmul(a, b)
    # general N-D: a[..., k] · b[..., k, n] -> a.shape[:-1] + b.shape[:-2] + b.shape[-1:]
    bt = b.transpose(tuple(range(b.ndim - 2)) + (b.ndim - 1, b.ndim - 2))
    b2 = reshape(bt, (-1, b.shape[-2]))  # (prod(b.shape[:-2]) * n, k)
    out = matmul_t(reshape(a, (-1, a.shape[-1])), b2, False, True)
    out = reshape(out, a.shape[:-1] + b.shape[:-2] + (b.shape[-1],))
    return out


# ------------------------------------------------------------------ relu


def _relu_fwd(x):
    k = kernels_for(x)
    if k is not None:
        return k.relu_fwd(x)
    return _xp().maximum(x, 0)


def _relu_bwd_fwd(g, y):
    k = kernels_for(g, y)
    if k is not None and g.shape == y.shape:
        return k.relu_bwd(g, y)
    xp = _xp()
    bits = _SAME_SIZE_INT.get(g.dtype) if xp is np and g.shape == y.shape and g.ndim else None
    if bits is not None:
        # why: the same select as np.where, bit for bit (g's bits, or +0.0), as an AND
        # with an all-ones/all-zeros mask: NumPy's where is a branchy loop, 5-8x slower
        # than these three vectorized passes on a random sign pattern
        mask = np.negative(np.greater(y, 0), dtype=bits)
        return np.bitwise_and(g.view(bits), mask, out=mask).view(g.dtype)
    # why: select (as the kernel does), so an infinite g (sqrt(relu(x)) at 0) gives 0
    return xp.where(y > 0, g, 0)


_SAME_SIZE_INT = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}


_RELU_BWD = Primitive(
    "relu_bwd",
    _relu_bwd_fwd,
    # why: the mask is piecewise constant, so d/dy is zero almost everywhere
    lambda gg, ans, g, y: (relu_bwd(gg, y), None),
    save=(1,),
    fast=lambda gg, ans, g, y: (_relu_bwd_fwd(gg, y), None),
)


def relu_bwd(g, y):
    """``g`` where ``y > 0``, else 0 (a selection, so an infinite ``g`` gives 0 where
    ``y <= 0``, as the CUDA kernel does): the relu backward, differentiable in ``g``."""
    return bind(_RELU_BWD, (g, y))


_RELU = Primitive(
    "relu",
    _relu_fwd,
    lambda g, ans, x: (relu_bwd(g, ans),),
    save_ans=True,
    fast=lambda g, ans, x: (_relu_bwd_fwd(g, ans),),
)


def relu(x):
    """Rectified linear unit ``max(x, 0)``; its derivative is 0 at 0.

    >>> import gpugrad as gg
    >>> gg.relu(gg.dlarray([-1.0, 0.0, 2.0])).numpy()
    array([0., 0., 2.])
    """
    if type(x) is not dlarray:
        x = dlarray(x, copy=False)
    return bind(_RELU, (x,), None, x._fmt)


__all__ = ["matmul", "matmul_t", "dot", "relu", "relu_bwd", "kernels_for"]
