"""Linear algebra: NumPy's products and matrix functions.

Products (``outer inner tensordot kron cross vdot``) and matrix slicing (``trace diag
diagonal tril triu``) are composites of the shape ops and ``matmul``. ``einsum`` is one
primitive whose VJP is again an ``einsum`` (so every order works). The factorizations
and solvers (``inv solve det slogdet cholesky qr svd eigh``) are primitives whose VJPs
are the known matrix rules written with gpugrad ops (``matmul``, ``inv``, ``solve``,
...), so second derivatives come from differentiating the rules.

Conventions, as PyTorch and JAX: ``cholesky`` and ``eigh`` read one triangle of a
matrix that is taken to be symmetric (Hermitian), and their gradient is the symmetric
one (the gradient of the function of ``(A + A^H) / 2``). Gradients of ``svd`` and
``eigh`` are undefined where singular values or eigenvalues repeat (the rules divide
by their differences), as everywhere else. ``qr``, ``svd`` and ``eigh`` gradients are
for real matrices; a complex one raises a clear error.
"""

from __future__ import annotations

import numpy as np

from ..array import dlarray
from . import axes as _axes
from .core import _STATE, Primitive, bind, host_call, make
from .elementwise import conj, real, where
from .heavy import matmul
from .reduce import max as _max
from .reduce import min as _min
from .reduce import norm as _norm2
from .reduce import sum as _sum
from .shape import (
    broadcast_to,
    concatenate,
    expand_dims,
    getitem,
    moveaxis,
    ravel,
    reshape,
    setitem,
    swapaxes,
    transpose,
)

LinAlgError = np.linalg.LinAlgError


def _xp():
    return _STATE["xp"]


def _dl(x):
    return x if type(x) is dlarray else dlarray(x)


def _mT(x):  # noqa: N802 - the matrix transpose, as NumPy's .mT
    return swapaxes(x, -1, -2)


def _mH(x):  # noqa: N802 - the conjugate transpose
    return conj(swapaxes(x, -1, -2))


def _const(raw):
    return make(raw)


# ============================================================ products


def outer(a, b, out=None):
    """Outer product of the flattened inputs, as ``numpy.outer``.

    >>> import gpugrad as gg
    >>> gg.outer(gg.dlarray([1.0, 2.0]), gg.dlarray([3.0, 4.0, 5.0])).shape
    (2, 3)
    """
    if out is not None:
        raise TypeError("outer: out= is not supported")
    a, b = ravel(_dl(a)), ravel(_dl(b))
    return reshape(a, (a.size, 1)) * reshape(b, (1, b.size))


def tensordot(a, b, axes=2):
    """Sum products over the given axes, as ``numpy.tensordot`` (``axes`` an int N: the
    last N of ``a`` with the first N of ``b``; or a pair of axis sequences).

    >>> import gpugrad as gg, numpy as np
    >>> gg.tensordot(gg.dlarray(np.ones((2, 3, 4))), gg.dlarray(np.ones((3, 4, 5)))).shape
    (2, 5)
    """
    a, b = _dl(a), _dl(b)
    if np.ndim(axes) == 0:
        n = int(axes)
        if n < 0 or n > min(a.ndim, b.ndim):
            raise ValueError(f"tensordot: axes={n} exceeds the dimensions of the operands")
        axes_a = list(range(a.ndim - n, a.ndim))
        axes_b = list(range(n))
    else:
        axes_a, axes_b = axes
        axes_a = [axes_a] if np.ndim(axes_a) == 0 else list(axes_a)
        axes_b = [axes_b] if np.ndim(axes_b) == 0 else list(axes_b)
        if len(axes_a) != len(axes_b):
            raise ValueError("tensordot: shape-mismatch for sum (axes lists differ in length)")
        axes_a = [_axes.normalize_axis_index(x, a.ndim, "tensordot") for x in axes_a]
        axes_b = [_axes.normalize_axis_index(x, b.ndim, "tensordot") for x in axes_b]
    for i, j in zip(axes_a, axes_b):
        if a.shape[i] != b.shape[j]:
            raise ValueError(
                f"tensordot: shape-mismatch for sum: axis {i} of a has length {a.shape[i]}, "
                f"axis {j} of b has length {b.shape[j]}"
            )
    free_a = [i for i in range(a.ndim) if i not in axes_a]
    free_b = [j for j in range(b.ndim) if j not in axes_b]
    k = int(np.prod([a.shape[i] for i in axes_a], dtype=np.int64))
    m = int(np.prod([a.shape[i] for i in free_a], dtype=np.int64))
    n = int(np.prod([b.shape[j] for j in free_b], dtype=np.int64))
    a2 = reshape(transpose(a, tuple(free_a + axes_a)), (m, k))
    b2 = reshape(transpose(b, tuple(axes_b + free_b)), (k, n))
    out_shape = tuple(a.shape[i] for i in free_a) + tuple(b.shape[j] for j in free_b)
    return reshape(matmul(a2, b2), out_shape)


def inner(a, b):
    """Inner product over the last axes, as ``numpy.inner`` (no conjugation).

    >>> import gpugrad as gg
    >>> float(gg.inner(gg.dlarray([1.0, 2.0]), gg.dlarray([3.0, 4.0])))
    11.0
    """
    a, b = _dl(a), _dl(b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    return tensordot(a, b, axes=([-1], [-1]))


def vdot(a, b):
    """``sum(conj(a) * b)`` over the flattened inputs, as ``numpy.vdot``.

    >>> import gpugrad as gg
    >>> gg.vdot(gg.dlarray([1j, 2.0]), gg.dlarray([1j, 3.0])).item()
    (7+0j)
    """
    return _sum(conj(ravel(_dl(a))) * ravel(_dl(b)))


def kron(a, b):
    """Kronecker product, as ``numpy.kron``.

    >>> import gpugrad as gg, numpy as np
    >>> gg.kron(gg.dlarray(np.eye(2)), gg.dlarray([[1.0, 2.0]])).numpy()
    array([[1., 2., 0., 0.],
           [0., 0., 1., 2.]])
    """
    a, b = _dl(a), _dl(b)
    nd = max(a.ndim, b.ndim)
    sa = (1,) * (nd - a.ndim) + a.shape
    sb = (1,) * (nd - b.ndim) + b.shape
    # a -> (a0, 1, a1, 1, ...), b -> (1, b0, 1, b1, ...): their product interleaves
    a4 = reshape(a, tuple(v for s in sa for v in (s, 1)))
    b4 = reshape(b, tuple(v for s in sb for v in (1, s)))
    return reshape(a4 * b4, tuple(x * y for x, y in zip(sa, sb)))


def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """Cross product of 3-vectors (or 2-vectors, whose result is the z component), as
    ``numpy.cross``, broadcasting over the other axes.

    >>> import gpugrad as gg
    >>> gg.cross(gg.dlarray([1.0, 0.0, 0.0]), gg.dlarray([0.0, 1.0, 0.0])).numpy()
    array([0., 0., 1.])
    """
    a, b = _dl(a), _dl(b)
    if axis is not None:
        axisa = axisb = axisc = axis
    a = moveaxis(a, _axes.normalize_axis_index(axisa, a.ndim, "cross"), -1)
    b = moveaxis(b, _axes.normalize_axis_index(axisb, b.ndim, "cross"), -1)
    na, nb = a.shape[-1], b.shape[-1]
    if na not in (2, 3) or nb not in (2, 3):
        raise ValueError(
            f"cross: incompatible dimensions for cross product (dimension must be 2 or 3), "
            f"got {na} and {nb}"
        )

    def comp(v, i):
        return getitem(v, (Ellipsis, i))

    a0, a1, b0, b1 = comp(a, 0), comp(a, 1), comp(b, 0), comp(b, 1)
    z = a0 * b1 - a1 * b0
    if na == 2 and nb == 2:
        return z
    a2 = comp(a, 2) if na == 3 else None
    b2 = comp(b, 2) if nb == 3 else None
    x = (a1 * b2 if b2 is not None else 0.0) - (a2 * b1 if a2 is not None else 0.0)
    y = (a2 * b0 if a2 is not None else 0.0) - (a0 * b2 if b2 is not None else 0.0)
    shape = z.shape
    out = concatenate([reshape(broadcast_to(c, shape), shape + (1,)) for c in (x, y, z)], -1)
    return moveaxis(out, -1, _axes.normalize_axis_index(axisc, out.ndim, "cross"))


# ============================================================ einsum


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _einsum_raw(expr, *ops):
    xp = _xp()
    if xp is np:
        return np.einsum(expr, *ops, optimize=True)
    return xp.einsum(expr, *ops)


def _einsum_fwd(*ops, ins, out):
    return _einsum_raw(",".join(ins) + "->" + out, *ops)


def _einsum_vjp(g, ans, *ops, ins, out):
    grads = []
    for i, term in enumerate(ins):
        if type(ops[i]) is not dlarray:
            grads.append(None)
            continue
        sizes = dict(zip(term, ops[i].shape))
        terms = [out] + [t for j, t in enumerate(ins) if j != i]
        operands = [g] + [conj(o) for j, o in enumerate(ops) if j != i]
        seen = set("".join(terms))
        free = iter(c for c in _LETTERS if c not in seen and c not in term)
        target = []
        for c in term:
            if c in target:
                # a repeated label (a diagonal): embed on the diagonal with an identity
                d = next(free)
                operands.append(_const(_xp().eye(sizes[c], dtype=g.dtype)))
                terms.append(c + d)
                target.append(d)
                continue
            if c not in seen:
                # a label summed over in this operand alone: the gradient is broadcast
                operands.append(_const(_xp().ones(sizes[c], dtype=g.dtype)))
                terms.append(c)
                seen.add(c)
            target.append(c)
        grads.append(_einsum_bind(tuple(terms), "".join(target), operands))
    return tuple(grads)


_EINSUM = Primitive("einsum", _einsum_fwd, _einsum_vjp, save=tuple(range(64)))


def _einsum_bind(ins, out, operands):
    return bind(_EINSUM, tuple(operands), {"ins": tuple(ins), "out": out})


def einsum(subscripts, *operands, optimize=True):
    """Einstein summation, as ``numpy.einsum`` with a subscripts string (explicit
    ``->`` or implicit output, ``...`` broadcasting, repeated labels for diagonals).
    Differentiable in every operand to any order (the VJP is an einsum).

    >>> import gpugrad as gg, numpy as np
    >>> a = gg.dlarray(np.arange(6.0).reshape(2, 3))
    >>> gg.einsum("ij,kj->ik", a, a).numpy()
    array([[ 5., 14.],
           [14., 50.]])
    >>> float(gg.einsum("ii", gg.dlarray(np.eye(3))))
    3.0
    """
    if not isinstance(subscripts, str):
        raise TypeError(
            "einsum: only the subscripts-string form is supported, e.g. einsum('ij,jk->ik', a, b)"
        )
    ops = [_dl(o) for o in operands]
    spec = subscripts.replace(" ", "")
    if "->" in spec:
        lhs, rhs = spec.split("->")
    else:
        lhs, rhs = spec, None
    terms = lhs.split(",")
    if len(terms) != len(ops):
        raise ValueError(
            f"einsum: the subscripts name {len(terms)} operand(s) but {len(ops)} were given"
        )
    used = set(c for c in spec if c.isalpha())
    bad = set(spec) - set(_LETTERS) - set(",->.")
    if bad:
        raise ValueError(f"einsum: invalid subscript character(s) {sorted(bad)} in {subscripts!r}")
    fresh = [c for c in _LETTERS if c not in used]
    n_ell = 0
    for t, o in zip(terms, ops):
        if "..." in t:
            n_ell = max(n_ell, o.ndim - (len(t) - 3))
    ell = "".join(fresh[:n_ell])
    expanded = []
    for t, o in zip(terms, ops):
        if "..." in t:
            k = o.ndim - (len(t) - 3)
            t = t.replace("...", ell[n_ell - k :] if k else "")
        if len(t) != o.ndim:
            raise ValueError(
                f"einsum: operand with shape {o.shape} has {o.ndim} dimension(s) but its "
                f"subscripts {t!r} name {len(t)}"
            )
        expanded.append(t)
    if rhs is None:
        counts = {}
        for c in "".join(expanded):
            counts[c] = counts.get(c, 0) + 1
        rhs = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    else:
        rhs = rhs.replace("...", ell)
        for c in rhs:
            if not any(c in t for t in expanded):
                raise ValueError(f"einsum: output subscript {c!r} does not appear in the inputs")
    # labels of size 1 broadcast against the others (as NumPy does): make sizes agree
    sizes = {}
    for t, o in zip(expanded, ops):
        for c, s in zip(t, o.shape):
            if s != 1:
                if sizes.get(c, s) != s:
                    raise ValueError(
                        f"einsum: label {c!r} has lengths {sizes[c]} and {s} in different operands"
                    )
                sizes[c] = s
    for i, (t, o) in enumerate(zip(expanded, ops)):
        target = tuple(sizes.get(c, 1) if s == 1 else s for c, s in zip(t, o.shape))
        if target != o.shape:
            ops[i] = broadcast_to(o, target)
    return _einsum_bind(tuple(expanded), rhs, ops)


# ============================================================ matrix slicing


def diagonal(a, offset=0, axis1=0, axis2=1):
    """Diagonal of the ``(axis1, axis2)`` planes, placed last, as ``numpy.diagonal``.

    >>> import gpugrad as gg, numpy as np
    >>> gg.diagonal(gg.dlarray(np.arange(9.0).reshape(3, 3)), 1).numpy()
    array([1., 5.])
    """
    x = _dl(a)
    if x.ndim < 2:
        raise ValueError(f"diagonal: needs an array of at least 2 dimensions, got {x.shape}")
    a1 = _axes.normalize_axis_index(axis1, x.ndim, "diagonal")
    a2 = _axes.normalize_axis_index(axis2, x.ndim, "diagonal")
    if a1 == a2:
        raise ValueError("diagonal: axis1 and axis2 cannot be the same")
    rest = [i for i in range(x.ndim) if i not in (a1, a2)]
    x = transpose(x, tuple(rest) + (a1, a2))
    n1, n2 = x.shape[-2], x.shape[-1]
    offset = int(offset)
    if offset >= 0:
        k = max(0, min(n1, n2 - offset))
        rows, cols = np.arange(k), np.arange(k) + offset
    else:
        k = max(0, min(n1 + offset, n2))
        rows, cols = np.arange(k) - offset, np.arange(k)
    xp = _xp()
    return getitem(x, (Ellipsis, xp.asanyarray(rows), xp.asanyarray(cols)))


def trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    """Sum of the diagonal, as ``numpy.trace``.

    >>> import gpugrad as gg, numpy as np
    >>> float(gg.trace(gg.dlarray(np.arange(4.0).reshape(2, 2))))
    3.0
    """
    if out is not None:
        raise TypeError("trace: out= is not supported")
    d = diagonal(a, offset, axis1, axis2)
    if dtype is not None:
        d = d.astype(dtype)
    return _sum(d, axis=-1)


def diag(v, k=0):
    """A 2-D array with ``v`` on diagonal ``k`` (``v`` 1-D), or the ``k``-th diagonal of a
    2-D ``v``, as ``numpy.diag``.

    >>> import gpugrad as gg
    >>> gg.diag(gg.dlarray([1.0, 2.0])).numpy()
    array([[1., 0.],
           [0., 2.]])
    """
    x = _dl(v)
    if x.ndim == 2:
        return diagonal(x, k)
    if x.ndim != 1:
        raise ValueError(f"diag: input must be 1-D or 2-D, got shape {x.shape}")
    n = x.shape[0] + abs(int(k))
    rows = np.arange(x.shape[0]) + max(0, -int(k))
    cols = np.arange(x.shape[0]) + max(0, int(k))
    base = _const(_xp().zeros((n, n), dtype=x.dtype))
    return setitem(base, (rows, cols), x)


def diagflat(v, k=0):
    """``diag`` of the flattened input, as ``numpy.diagflat``."""
    return diag(ravel(_dl(v)), k)


def _tri_mask(shape, k, lower):
    xp = _xp()
    n, m = shape[-2], shape[-1]
    mask = xp.tri(n, m, k, dtype=bool)
    return make(mask if lower else ~xp.tri(n, m, k - 1, dtype=bool))


def tril(m, k=0):
    """Lower triangle (elements above diagonal ``k`` zeroed) of the last two axes, as
    ``numpy.tril``.

    >>> import gpugrad as gg, numpy as np
    >>> gg.tril(gg.dlarray(np.ones((2, 2)))).numpy()
    array([[1., 0.],
           [1., 1.]])
    """
    x = _dl(m)
    if x.ndim < 2:
        raise ValueError(f"tril: needs an array of at least 2 dimensions, got {x.shape}")
    return where(_tri_mask(x.shape, int(k), True), x, make(_xp().zeros((), x.dtype)))


def triu(m, k=0):
    """Upper triangle (elements below diagonal ``k`` zeroed), as ``numpy.triu``.

    >>> import gpugrad as gg, numpy as np
    >>> gg.triu(gg.dlarray(np.ones((2, 2)))).numpy()
    array([[1., 1.],
           [0., 1.]])
    """
    x = _dl(m)
    if x.ndim < 2:
        raise ValueError(f"triu: needs an array of at least 2 dimensions, got {x.shape}")
    return where(_tri_mask(x.shape, int(k), False), x, make(_xp().zeros((), x.dtype)))


# ============================================================ factorizations and solvers


def _square(a, fn):
    a = _dl(a)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise LinAlgError(
            f"linalg.{fn}: expected a square matrix (or a stack of them, shape (..., M, M)), "
            f"got shape {a.shape}"
        )
    if a.dtype.kind not in "fc":
        a = a.astype(np.float64)
    return a


def _real_grad(x, fn):
    if x.dtype.kind == "c":
        raise NotImplementedError(
            f"linalg.{fn}: the gradient for complex matrices is not implemented; "
            "differentiate real and imaginary parts through a real formulation"
        )


def _eye_like(n, dtype):
    return _const(_xp().eye(n, dtype=dtype))


def _scalar_to_matrix(v):
    return expand_dims(expand_dims(v, -1), -1)


# ----------------------------------------------------------------- inv


def _inv_vjp(g, ans, a):
    ah = _mH(ans)
    return (-matmul(matmul(ah, g), ah),)


_INV = Primitive("inv", lambda a: _xp().linalg.inv(a), _inv_vjp, save=(), save_ans=True)


def inv(a):
    """Matrix inverse (batched over leading axes), as ``numpy.linalg.inv``.
    VJP: ``-A^-H g A^-H``.

    >>> import gpugrad as gg, numpy as np
    >>> gg.linalg.inv(gg.dlarray([[2.0, 0.0], [0.0, 4.0]])).numpy()
    array([[0.5 , 0.  ],
           [0.  , 0.25]])
    """
    return bind(_INV, (_square(a, "inv"),))


# ----------------------------------------------------------------- solve


def _solve_fwd(a, b, vector):
    if vector:
        return _xp().linalg.solve(a, b[..., None])[..., 0]
    return _xp().linalg.solve(a, b)


def _solve_vjp(g, ans, a, b, vector):
    # why: the same vector/matrix reading as the forward (a batched solve with a vector b
    # has a 2-D cotangent, which the public solve would read as a matrix)
    gb = bind(_SOLVE, (_mH(a), g), {"vector": vector})
    if vector:
        ga = -expand_dims(gb, -1) * expand_dims(conj(ans), -2)
    else:
        ga = -matmul(gb, _mH(ans))
    return ga, gb


_SOLVE = Primitive("solve", _solve_fwd, _solve_vjp, save=(0,), save_ans=True)


def solve(a, b):
    """Solve ``a @ x = b``, as ``numpy.linalg.solve`` (NumPy 2 rules: ``b`` is a vector
    when 1-D, else a stack of matrices). VJP: ``gb = solve(A^H, g)``, ``gA = -gb x^H``.

    >>> import gpugrad as gg
    >>> gg.linalg.solve(gg.dlarray([[2.0, 0.0], [0.0, 4.0]]), gg.dlarray([1.0, 1.0])).numpy()
    array([0.5 , 0.25])
    """
    a = _square(a, "solve")
    b = _dl(b)
    vector = b.ndim == 1
    if b.dtype.kind not in "fc":
        b = b.astype(np.float64)
    if b.shape[-1 if vector else -2] != a.shape[-1]:
        raise ValueError(
            f"linalg.solve: a has shape {a.shape} but b has shape {b.shape}; b needs "
            f"{a.shape[-1]} rows"
        )
    return bind(_SOLVE, (a, b), {"vector": vector})


# ----------------------------------------------------------------- det / slogdet


def _det_vjp(g, ans, a):
    try:
        ainv = inv(a)
    except LinAlgError:
        raise LinAlgError(
            "linalg.det: the gradient at a singular matrix is not supported (its inverse "
            "does not exist)"
        ) from None
    return (_scalar_to_matrix(g * conj(ans)) * _mH(ainv),)


_DET = Primitive("det", lambda a: _xp().linalg.det(a), _det_vjp, save=(0,), save_ans=True)


def det(a):
    """Determinant, as ``numpy.linalg.det``. VJP: ``g conj(det) A^-H`` (a singular
    matrix raises ``LinAlgError`` in the backward pass).

    >>> import gpugrad as gg
    >>> round(float(gg.linalg.det(gg.dlarray([[2.0, 1.0], [1.0, 3.0]]))), 10)
    5.0
    """
    return bind(_DET, (_square(a, "det"),))


def _slogdet_fwd(a):
    sign, logabs = _xp().linalg.slogdet(a)
    return sign, logabs


def _slogdet_vjp(g, ans, a):
    gsign, glog = g
    ainv_h = _mH(inv(a))
    if a.dtype.kind == "c":
        # sign = exp(i theta), theta = Im(log det A): d theta = Im(tr(A^-1 dA))
        sign = ans[0]
        c = real(conj(gsign) * sign * 1j)
        return (_scalar_to_matrix(glog + c * 1j) * ainv_h,)
    return (_scalar_to_matrix(glog) * ainv_h,)


_SLOGDET = Primitive(
    "slogdet", _slogdet_fwd, _slogdet_vjp, save=(0,), save_ans=True, multiple_outputs=True
)


def slogdet(a):
    """``(sign, logabsdet)`` of the determinant, as ``numpy.linalg.slogdet`` (a tuple).
    VJP of ``logabsdet``: ``g A^-H``; the real sign has zero derivative.

    >>> import gpugrad as gg
    >>> s, l = gg.linalg.slogdet(gg.dlarray([[-2.0, 0.0], [0.0, 3.0]]))
    >>> float(s), round(float(l), 6)
    (-1.0, 1.791759)
    """
    return bind(_SLOGDET, (_square(a, "slogdet"),))


# ----------------------------------------------------------------- cholesky


def _phi(x):
    """Lower triangle with the diagonal halved."""
    n = x.shape[-1]
    return tril(x) - 0.5 * x * _eye_like(n, x.dtype)


def _cholesky_vjp(g, ans, a):
    # Murray (2016) / PyTorch: gA = L^-H phi(L^H gL) L^-1, symmetrized
    linv = inv(ans)
    s = matmul(matmul(_mH(linv), _phi(matmul(_mH(ans), g))), linv)
    return (0.5 * (s + _mH(s)),)


_CHOLESKY = Primitive(
    "cholesky", lambda a: _xp().linalg.cholesky(a), _cholesky_vjp, save=(), save_ans=True
)


def cholesky(a):
    """Lower Cholesky factor ``L`` with ``a = L L^H``, as ``numpy.linalg.cholesky``
    (reads the lower triangle). The gradient is the symmetric one (as PyTorch/JAX).

    >>> import gpugrad as gg
    >>> gg.linalg.cholesky(gg.dlarray([[4.0, 2.0], [2.0, 5.0]])).numpy()
    array([[2., 0.],
           [1., 2.]])
    """
    return bind(_CHOLESKY, (_square(a, "cholesky"),))


# ----------------------------------------------------------------- qr


def _copyltu(m):
    """Lower triangle copied to the upper: ``tril(M) + tril(M, -1)^T``."""
    return tril(m) + _mT(tril(m, -1))


def _qr_vjp(g, ans, a, mode):
    _real_grad(a, "qr")
    q, r = ans
    gq, gr = g
    m, n = a.shape[-2], a.shape[-1]
    if m < n or (mode == "complete" and m != n):
        raise NotImplementedError(
            f"linalg.qr: the gradient is implemented for mode='reduced' with rows >= columns; "
            f"got mode={mode!r} and shape {a.shape}"
        )
    # (TensorFlow's QrGrad, m >= n): gA = (gQ + Q copyltu(M)) R^-T, M = R gR^T - gQ^T Q
    mm = matmul(r, _mT(gr)) - matmul(_mT(gq), q)
    b = gq + matmul(q, _copyltu(mm))
    return (_mT(solve(r, _mT(b))),)


def _qr_fwd(a, mode):
    q, r = _xp().linalg.qr(a, mode=mode)
    return q, r


_QR = Primitive("qr", _qr_fwd, _qr_vjp, save=(0,), save_ans=True, multiple_outputs=True)


def qr(a, mode="reduced"):
    """QR factorization ``(Q, R)``, as ``numpy.linalg.qr`` (``mode`` ``"reduced"``,
    ``"complete"`` or ``"r"``). Gradients for real ``(..., M, N)`` with ``M >= N``.

    >>> import gpugrad as gg, numpy as np
    >>> q, r = gg.linalg.qr(gg.dlarray([[3.0, 1.0], [4.0, 2.0]]))
    >>> np.allclose((q @ r).numpy(), [[3.0, 1.0], [4.0, 2.0]])
    True
    """
    a = _dl(a)
    if a.ndim < 2:
        raise LinAlgError(f"linalg.qr: expected a matrix of at least 2 dimensions, got {a.shape}")
    if a.dtype.kind not in "fc":
        a = a.astype(np.float64)
    if mode not in ("reduced", "complete", "r"):
        raise ValueError(f"linalg.qr: mode must be 'reduced', 'complete' or 'r', got {mode!r}")
    if mode == "r":
        return bind(_QR, (a,), {"mode": "reduced"})[1]
    return bind(_QR, (a,), {"mode": mode})


# ----------------------------------------------------------------- svd


def _svd_fwd(a, full_matrices):
    u, s, vh = _xp().linalg.svd(a, full_matrices=full_matrices)
    return u, s, vh


def _pairwise_inverse(d):
    """``F[i, j] = 1 / d[i, j]`` off the diagonal, 0 on it."""
    n = d.shape[-1]
    eye = make(_xp().eye(n, dtype=bool))
    return where(eye, 0.0, 1.0 / where(eye, 1.0, d))


def _svd_vjp(g, ans, a, full_matrices):
    _real_grad(a, "svd")
    u, s, vh = ans
    gu, gs, gvh = g
    m, n = a.shape[-2], a.shape[-1]
    k = min(m, n)
    if full_matrices and m != n:
        extra_u = gu._data[..., k:]
        extra_v = gvh._data[..., k:, :]
        if bool(_xp().any(extra_u != 0)) or bool(_xp().any(extra_v != 0)):
            raise NotImplementedError(
                "linalg.svd: the gradient through the extra singular vectors of "
                "full_matrices=True is not defined; use full_matrices=False"
            )
        u, gu = getitem(u, (Ellipsis, slice(0, k))), getitem(gu, (Ellipsis, slice(0, k)))
        vh = getitem(vh, (Ellipsis, slice(0, k), slice(None)))
        gvh = getitem(gvh, (Ellipsis, slice(0, k), slice(None)))
    # Townsend (2016): with F_ij = 1 / (s_j^2 - s_i^2),
    # gA = U [F o (U^T gU - gU^T U) S + diag(gs) + S F o (V^T gV - gV^T V)] V^T
    #      + (I - U U^T) gU S^-1 V^T + U S^-1 gV^T (I - V V^T)
    v, gv = _mT(vh), _mT(gvh)
    s2 = s * s
    f = _pairwise_inverse(expand_dims(s2, -2) - expand_dims(s2, -1))
    ut_gu = matmul(_mT(u), gu)
    vt_gv = matmul(_mT(v), gv)
    s_row = expand_dims(s, -2)  # multiplies columns: X S
    s_col = expand_dims(s, -1)  # multiplies rows: S X
    inner_ = (
        (f * (ut_gu - _mT(ut_gu))) * s_row
        + expand_dims(gs, -1) * _eye_like(k, a.dtype)
        + s_col * (f * (vt_gv - _mT(vt_gv)))
    )
    ga = matmul(matmul(u, inner_), vh)
    if m > k:
        proj = gu - matmul(u, ut_gu)  # (I - U U^T) gU
        ga = ga + matmul(proj / s_row, vh)
    if n > k:
        proj = _mT(gv - matmul(v, vt_gv))  # gV^T (I - V V^T)
        ga = ga + matmul(u / s_row, proj)
    return (ga,)


_SVD = Primitive("svd", _svd_fwd, _svd_vjp, save=(0,), save_ans=True, multiple_outputs=True)


def svd(a, full_matrices=True, compute_uv=True, hermitian=False):
    """Singular value decomposition ``(U, S, Vh)`` (or ``S`` alone with
    ``compute_uv=False``), as ``numpy.linalg.svd``. Gradients for real matrices with
    distinct nonzero singular values; with ``full_matrices=True`` and a non-square
    matrix the extra columns of ``U``/``Vh`` must not be used.

    >>> import gpugrad as gg
    >>> gg.linalg.svd(gg.dlarray([[3.0, 0.0], [0.0, -2.0]]), compute_uv=False).numpy()
    array([3., 2.])
    """
    a = _dl(a)
    if a.ndim < 2:
        raise LinAlgError(f"linalg.svd: expected a matrix of at least 2 dimensions, got {a.shape}")
    if a.dtype.kind not in "fc":
        a = a.astype(np.float64)
    if not compute_uv:
        return bind(_SVD, (a,), {"full_matrices": False})[1]
    return bind(_SVD, (a,), {"full_matrices": bool(full_matrices)})


def svdvals(x):
    """Singular values, as ``numpy.linalg.svdvals``."""
    return svd(x, compute_uv=False)


# ----------------------------------------------------------------- eigh


def _eigh_fwd(a, UPLO):  # noqa: N803 - NumPy's argument name
    w, v = _xp().linalg.eigh(a, UPLO=UPLO)
    return w, v


def _eigh_vjp(g, ans, a, UPLO):  # noqa: N803
    _real_grad(a, "eigh")
    w, v = ans
    gw, gv = g
    n = a.shape[-1]
    # gA = V (diag(gw) + F o (V^T gV)) V^T, F_ij = 1 / (w_j - w_i); then symmetrized
    f = _pairwise_inverse(expand_dims(w, -2) - expand_dims(w, -1))
    inner_ = expand_dims(gw, -1) * _eye_like(n, a.dtype) + f * matmul(_mT(v), gv)
    ga = matmul(matmul(v, inner_), _mT(v))
    return (0.5 * (ga + _mT(ga)),)


_EIGH = Primitive("eigh", _eigh_fwd, _eigh_vjp, save=(0,), save_ans=True, multiple_outputs=True)


def eigh(a, UPLO="L"):  # noqa: N803 - NumPy's argument name
    """Eigenvalues (ascending) and eigenvectors of a symmetric (Hermitian) matrix, as
    ``numpy.linalg.eigh`` (reads the ``UPLO`` triangle). The gradient is the symmetric
    one; it exists for real matrices with distinct eigenvalues.

    >>> import gpugrad as gg
    >>> w, v = gg.linalg.eigh(gg.dlarray([[2.0, 1.0], [1.0, 2.0]]))
    >>> w.numpy()
    array([1., 3.])
    """
    if UPLO not in ("L", "U"):
        raise ValueError(f"linalg.eigh: UPLO must be 'L' or 'U', got {UPLO!r}")
    return bind(_EIGH, (_square(a, "eigh"),), {"UPLO": UPLO})


def eigvalsh(a, UPLO="L"):  # noqa: N803
    """Eigenvalues of a symmetric (Hermitian) matrix, as ``numpy.linalg.eigvalsh``."""
    return eigh(a, UPLO)[0]


# ============================================================ composites


def norm(x, ord=None, axis=None, keepdims=False):  # noqa: A002
    """Vector or matrix norm, as ``numpy.linalg.norm``: vector norms (``ord`` None/2,
    1, inf, -inf, 0, p) over one axis; matrix norms (``'fro'``, ``'nuc'``, 1, -1, 2, -2,
    inf, -inf) over two axes (a 2-D input with ``axis=None``).

    >>> import gpugrad as gg
    >>> float(gg.linalg.norm(gg.dlarray([[1.0, 2.0], [3.0, 4.0]]), "fro") ** 2)
    30.0
    """
    x = _dl(x)
    if x.dtype.kind not in "fc":
        x = x.astype(np.float64)
    if axis is None:
        if ord is None:
            return _keep(_fro(x, None), x, tuple(range(x.ndim)), keepdims)
        if x.ndim == 1:
            axis = (0,)
        elif x.ndim == 2:
            axis = (0, 1)
        else:
            raise ValueError("linalg.norm: improper number of dimensions to norm")
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    axes = tuple(_axes.normalize_axis_index(a, x.ndim, "linalg.norm") for a in axes)
    if len(axes) == 1:
        return vector_norm(x, ord=2 if ord is None else ord, axis=axes[0], keepdims=keepdims)
    if len(axes) != 2 or axes[0] == axes[1]:
        raise ValueError(f"linalg.norm: improper axis {axis!r} for a norm")
    res = matrix_norm(_last_two(x, axes), ord="fro" if ord is None else ord)
    return _keep(res, x, axes, keepdims)


def _last_two(x, axes):
    rest = [i for i in range(x.ndim) if i not in axes]
    return transpose(x, tuple(rest) + tuple(axes))


def _keep(res, x, axes, keepdims):
    if not keepdims:
        return res
    return reshape(res, tuple(1 if i in axes else s for i, s in enumerate(x.shape)))


def _absval(x):
    from .elementwise import abs as _abs  # noqa: PLC0415 - the name abs is a builtin here

    return _abs(x)


def _fro(x, axes, keepdims=False):
    # why: the one 2-norm (gg.norm), so its rule at the zero vector is shared
    return _norm2(x, 2, axes, keepdims)


def vector_norm(x, ord=2, axis=None, keepdims=False):  # noqa: A002
    """Vector norm over ``axis`` (all elements when None), as
    ``numpy.linalg.vector_norm``."""
    x = _dl(x)
    if x.dtype.kind not in "fc":
        x = x.astype(np.float64)
    axes = _axes.normalize_axes(axis, x.ndim, "linalg.vector_norm")
    if ord == 2:
        res = _fro(x, axes, keepdims)
    elif ord == 1:
        res = _sum(_absval(x), axes, keepdims)
    elif ord == np.inf:
        res = _max(_absval(x), axes, keepdims)
    elif ord == -np.inf:
        res = _min(_absval(x), axes, keepdims)
    elif ord == 0:
        res = make(_xp().sum(x._data != 0, axis=axes, keepdims=keepdims).astype(x._data.real.dtype))
    else:
        p = float(ord)
        res = _sum(_absval(x) ** p, axes, keepdims) ** (1.0 / p)
    return res


def matrix_norm(x, ord="fro", keepdims=False):  # noqa: A002
    """Matrix norm over the last two axes, as ``numpy.linalg.matrix_norm``."""
    x = _dl(x)
    if x.ndim < 2:
        raise ValueError(f"linalg.matrix_norm: needs at least 2 dimensions, got {x.shape}")
    if x.dtype.kind not in "fc":
        x = x.astype(np.float64)
    if ord == "fro":
        res = _fro(x, (-2, -1))
    elif ord == "nuc":
        res = _sum(svdvals(x), -1)
    elif ord in (2, -2):
        s = svdvals(x)
        res = _max(s, -1) if ord == 2 else _min(s, -1)
    elif ord in (1, -1):
        col = _sum(_absval(x), -2)
        res = _max(col, -1) if ord == 1 else _min(col, -1)
    elif ord in (np.inf, -np.inf):
        row = _sum(_absval(x), -1)
        res = _max(row, -1) if ord == np.inf else _min(row, -1)
    else:
        raise ValueError(f"linalg.matrix_norm: invalid norm order {ord!r} for matrices")
    if keepdims:
        res = expand_dims(expand_dims(res, -1), -1)
    return res


def matrix_power(a, n):
    """``a`` multiplied by itself ``n`` times (``n < 0``: of the inverse), as
    ``numpy.linalg.matrix_power``."""
    a = _square(a, "matrix_power")
    n = int(n)
    if n == 0:
        return make(_xp().broadcast_to(_xp().eye(a.shape[-1], dtype=a.dtype), a.shape).copy())
    if n < 0:
        a, n = inv(a), -n
    result, base = None, a
    while n:
        if n & 1:
            result = base if result is None else matmul(result, base)
        n >>= 1
        if n:
            base = matmul(base, base)
    return result


def multi_dot(arrays):
    """Chained matrix product, as ``numpy.linalg.multi_dot`` (left to right)."""
    arrays = [_dl(a) for a in arrays]
    if len(arrays) < 2:
        raise ValueError("linalg.multi_dot: expecting at least two arrays")
    out = arrays[0]
    for a in arrays[1:]:
        out = matmul(out, a)
    return out


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _pinv_keep(s, rcond):
    return s > rcond * _xp().max(s, axis=-1, keepdims=True)


def pinv(a, rcond=None, hermitian=False):
    """Moore-Penrose pseudo-inverse through the SVD, as ``numpy.linalg.pinv``
    (singular values below ``rcond * max(s)`` are dropped; differentiable where the
    rank does not change)."""
    a = _dl(a)
    if a.dtype.kind not in "fc":
        a = a.astype(np.float64)
    m, n = a.shape[-2], a.shape[-1]
    if rcond is None:
        rcond = 10 * max(m, n) * np.finfo(a._data.real.dtype).eps
    u, s, vh = svd(a, full_matrices=False)
    keep = make(_pinv_keep(s._data, rcond))  # recorded: a replay recomputes the rank
    s_inv = where(keep, 1.0 / where(keep, s, 1.0), 0.0)
    return matmul(_mH(vh) * expand_dims(s_inv, -2), _mH(u))


def matrix_rank(a, tol=None, hermitian=False):
    """Numerical rank (an integer dlarray, not differentiable), as
    ``numpy.linalg.matrix_rank``."""
    raw = _dl(a)._data
    return make(_xp().asanyarray(_xp().linalg.matrix_rank(raw, tol=tol)))


def cond(x, p=None):
    """Condition number, as ``numpy.linalg.cond`` (``p`` None/2/-2 via the singular
    values, else ``norm(x, p) * norm(inv(x), p)``)."""
    x = _dl(x)
    if p in (None, 2, -2):
        s = svdvals(x)
        hi, lo = _max(s, -1), _min(s, -1)
        return hi / lo if p in (None, 2) else lo / hi
    return matrix_norm(x, p) * matrix_norm(inv(x), p)


def matrix_transpose(x):
    """Transpose of the last two axes, as ``numpy.linalg.matrix_transpose``."""
    return _mT(_dl(x))


def vecdot(x1, x2, axis=-1):
    """``sum(conj(x1) * x2)`` over ``axis``, as ``numpy.linalg.vecdot``."""
    return _sum(conj(_dl(x1)) * _dl(x2), axis)


__all__ = [
    "LinAlgError",
    "outer",
    "inner",
    "vdot",
    "tensordot",
    "kron",
    "cross",
    "einsum",
    "diagonal",
    "trace",
    "diag",
    "diagflat",
    "tril",
    "triu",
    "inv",
    "solve",
    "det",
    "slogdet",
    "cholesky",
    "qr",
    "svd",
    "svdvals",
    "eigh",
    "eigvalsh",
    "norm",
    "vector_norm",
    "matrix_norm",
    "matrix_power",
    "multi_dot",
    "pinv",
    "matrix_rank",
    "cond",
    "matrix_transpose",
    "vecdot",
]
