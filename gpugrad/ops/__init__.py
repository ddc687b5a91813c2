"""The ops layer: primitives (forward on raw arrays + VJP in gpugrad ops) and the
composites built on them. Importing it installs the ops as ``dlarray``'s
operators and methods: the one place where the array type meets the ops."""

from __future__ import annotations

from .. import array as _array
from ..array import dlarray
from ..tape import LEAF
from . import core
from .core import REGISTRY, Primitive, bind, make
from .elementwise import *  # noqa: F403
from .elementwise import (  # noqa: A004
    _ADD,
    _DIV,
    _MUL,
    _SUB,
    _bind2,
    abs,
    add,
    divide,
    multiply,
    negative,
    power,
    subtract,
)
from .heavy import dot, matmul, matmul_t, relu, relu_bwd
from .reduce import *  # noqa: F403
from .reduce import max, min, sum  # noqa: A004
from .shape import *  # noqa: F403
from .shape import astype, getitem, reshape, setitem_inplace, transpose

# isort: split
from . import linalg  # noqa: E402  (registers the linear-algebra primitives)

core.OPS.sum = sum
core.OPS.reshape = reshape
core.OPS.real = real  # noqa: F405
core.OPS.astype = astype
core.OPS.stack = stack  # noqa: F405
_array.OPS.from_sequence = core.from_sequence
_array.OPS.transpose = transpose
_array.OPS.copy_raw = core.host_call(_array.OPS.copy_raw)


def _swap(fn):
    return lambda self, other: fn(other, self)


# why: operators call the binding directly; one Python frame less per op on the
# tiny-op workloads where the tape overhead is what a user measures
def _d_add(self, other):
    return _bind2(_ADD, self, other)


def _d_radd(self, other):
    return _bind2(_ADD, other, self)


def _d_sub(self, other):
    return _bind2(_SUB, self, other)


def _d_rsub(self, other):
    return _bind2(_SUB, other, self)


def _d_mul(self, other):
    return _bind2(_MUL, self, other)


def _d_rmul(self, other):
    return _bind2(_MUL, other, self)


def _d_truediv(self, other):
    return _bind2(_DIV, self, other)


def _d_rtruediv(self, other):
    return _bind2(_DIV, other, self)


def _install():
    d = dlarray
    d.__add__ = _d_add
    d.__radd__ = _d_radd
    d.__sub__ = _d_sub
    d.__rsub__ = _d_rsub
    d.__mul__ = _d_mul
    d.__rmul__ = _d_rmul
    d.__truediv__ = _d_truediv
    d.__rtruediv__ = _d_rtruediv
    d.__pow__ = power
    d.__rpow__ = _swap(power)
    d.__matmul__ = matmul
    d.__rmatmul__ = _swap(matmul)
    d.__neg__ = negative
    d.__pos__ = lambda self: self
    d.__abs__ = abs
    d.__eq__ = equal  # noqa: F405
    d.__ne__ = not_equal  # noqa: F405
    d.__lt__ = less  # noqa: F405
    d.__le__ = less_equal  # noqa: F405
    d.__gt__ = greater  # noqa: F405
    d.__ge__ = greater_equal  # noqa: F405
    d.__and__ = logical_and  # noqa: F405
    d.__or__ = logical_or  # noqa: F405
    d.__xor__ = logical_xor  # noqa: F405
    d.__invert__ = logical_not  # noqa: F405
    d.__getitem__ = getitem
    d.__setitem__ = setitem_inplace
    d.__hash__ = object.__hash__

    def _inplace(fn):
        def op(self, other):
            res = fn(self, other)
            node = self._node
            if (
                res._node is None
                and (node is None or node.prim is LEAF)
                and res.shape == self.shape
            ):
                # why: an untraced update (e.g. MXNet's `w -= lr * w.grad`) keeps the
                # array's identity and leaf status, and its dtype, as NumPy's in-place ops do
                data = res._data
                self._data = (
                    data.astype(self.dtype, copy=False) if data.dtype != self.dtype else data
                )
                return self
            _rebind(self, res)
            return self

        op.__name__ = f"__i{fn.__name__}__"
        return op

    d.__iadd__ = _inplace(add)
    d.__isub__ = _inplace(subtract)
    d.__imul__ = _inplace(multiply)
    d.__itruediv__ = _inplace(divide)

    d.T = property(lambda self: transpose(self))
    d.mT = property(lambda self: swapaxes(self, -1, -2))  # noqa: F405
    d.real = property(lambda self: real(self))  # noqa: F405
    d.imag = property(lambda self: imag(self))  # noqa: F405
    d.conj = lambda self: conj(self)  # noqa: F405
    d.sum = lambda self, axis=None, keepdims=False: sum(self, axis, keepdims)
    d.mean = lambda self, axis=None, keepdims=False: mean(self, axis, keepdims)  # noqa: F405
    d.prod = lambda self, axis=None, keepdims=False: prod(self, axis, keepdims)  # noqa: F405
    d.max = lambda self, axis=None, keepdims=False: max(self, axis, keepdims)
    d.min = lambda self, axis=None, keepdims=False: min(self, axis, keepdims)
    d.norm = lambda self, ord=2, axis=None, keepdims=False: norm(self, ord, axis, keepdims)  # noqa: F405
    d.reshape = lambda self, *shape: reshape(self, *shape)
    d.transpose = lambda self, *axes: transpose(
        self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None)
    )
    d.flatten = lambda self: flatten(self)  # noqa: F405
    d.squeeze = lambda self, axis=None: squeeze(self, axis)  # noqa: F405
    d.astype = lambda self, dtype: astype(self, dtype)
    d.exp = lambda self: exp(self)  # noqa: F405
    d.log = lambda self: log(self)  # noqa: F405
    d.abs = lambda self: abs(self)
    d.dot = lambda self, other: dot(self, other)
    _install_numpy_methods(d, _inplace)


def _install_numpy_methods(d, _inplace):
    """The operators and methods NumPy users expect (``%``, ``//``, ``round()``, ...)."""
    from . import elementwise as ew
    from . import reduce as rd
    from . import shape as sh

    d.__mod__ = ew.remainder
    d.__rmod__ = _swap(ew.remainder)
    d.__floordiv__ = ew.floor_divide
    d.__rfloordiv__ = _swap(ew.floor_divide)
    d.__divmod__ = ew.divmod
    d.__rdivmod__ = _swap(ew.divmod)
    d.__imod__ = _inplace(ew.remainder)
    d.__ifloordiv__ = _inplace(ew.floor_divide)
    d.__ipow__ = _inplace(power)
    d.__round__ = lambda self, ndigits=None: ew.round(self, ndigits or 0)
    d.round = lambda self, decimals=0: ew.round(self, decimals)
    d.clip = lambda self, a_min=None, a_max=None: ew.clip(self, a_min, a_max)
    d.ravel = lambda self, order="C": sh.ravel(self, order)
    d.copy = lambda self: sh.copy(self)
    d.tolist = lambda self: self.numpy().tolist()
    d.var = lambda self, axis=None, dtype=None, out=None, ddof=0, keepdims=False: rd.var(
        self, axis, dtype, out, ddof, keepdims
    )
    d.std = lambda self, axis=None, dtype=None, out=None, ddof=0, keepdims=False: rd.std(
        self, axis, dtype, out, ddof, keepdims
    )
    d.argmax = lambda self, axis=None, out=None, keepdims=False: rd.argmax(
        self, axis, out, keepdims
    )
    d.argmin = lambda self, axis=None, out=None, keepdims=False: rd.argmin(
        self, axis, out, keepdims
    )
    d.any = lambda self, axis=None, out=None, keepdims=False: rd.any(self, axis, out, keepdims)
    d.all = lambda self, axis=None, out=None, keepdims=False: rd.all(self, axis, out, keepdims)
    d.cumsum = lambda self, axis=None: rd.cumsum(self, axis)
    d.cumprod = lambda self, axis=None: rd.cumprod(self, axis)
    d.repeat = lambda self, repeats, axis=None: sh.repeat(self, repeats, axis)
    d.take = lambda self, indices, axis=None, out=None, mode="raise": sh.take(
        self, indices, axis, out, mode
    )
    d.argsort = lambda self, axis=-1, kind=None, order=None: sh.argsort(self, axis, kind, order)
    d.swapaxes = lambda self, axis1, axis2: swapaxes(self, axis1, axis2)  # noqa: F405
    d.trace = lambda self, offset=0, axis1=0, axis2=1, dtype=None, out=None: linalg.trace(
        self, offset, axis1, axis2, dtype, out
    )
    d.diagonal = lambda self, offset=0, axis1=0, axis2=1: linalg.diagonal(
        self, offset, axis1, axis2
    )


def _rebind(x, res):
    """In-place arithmetic on a traced value: the dlarray object now stands for the result."""
    if res.shape != x.shape:
        raise ValueError(
            f"in-place operation: result shape {res.shape} differs from the array's shape {x.shape}"
        )
    x._data, x._node, x._idx, x._taint = res._data, res._node, res._idx, res._taint
    if res._fmt:
        x._fmt = res._fmt


_install()

__all__ = ["REGISTRY", "Primitive", "bind", "make", "matmul", "matmul_t", "dot", "relu", "relu_bwd"]
