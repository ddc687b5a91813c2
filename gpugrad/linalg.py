"""``gg.linalg``: NumPy's ``numpy.linalg`` on dlarrays, differentiable.

Factorizations and solvers (``inv solve det slogdet cholesky qr svd eigh``) are
primitives with the known matrix VJPs, written with gpugrad ops so that second
derivatives work; the rest are composites. Names, arguments and defaults follow
``numpy.linalg`` (NumPy 2: ``trace``/``diagonal`` act on the last two axes here, unlike
the top-level ``gg.trace``/``gg.diagonal``). Conventions for the gradients are in
``gpugrad.ops.linalg``'s docstring.

>>> import gpugrad as gg, numpy as np
>>> a = gg.dlarray([[3.0, 1.0], [1.0, 2.0]])
>>> g = gg.gradient(lambda a: gg.linalg.slogdet(a)[1])(a)
>>> np.allclose(g.numpy(), np.linalg.inv(a.numpy()).T)
True
"""

from __future__ import annotations

from .ops import linalg as _ops
from .ops.linalg import (
    LinAlgError,
    cholesky,
    cond,
    det,
    eigh,
    eigvalsh,
    inv,
    matrix_norm,
    matrix_power,
    matrix_rank,
    matrix_transpose,
    multi_dot,
    norm,
    outer,
    pinv,
    qr,
    slogdet,
    solve,
    svd,
    svdvals,
    tensordot,
    vecdot,
    vector_norm,
)


def trace(x, offset=0, dtype=None):
    """Sum of the diagonals of the last two axes, as ``numpy.linalg.trace``."""
    return _ops.trace(x, offset, -2, -1, dtype)


def diagonal(x, offset=0):
    """Diagonals of the last two axes, as ``numpy.linalg.diagonal``."""
    return _ops.diagonal(x, offset, -2, -1)


def cross(x1, x2, axis=-1):
    """Cross product of 3-vectors along ``axis``, as ``numpy.linalg.cross``."""
    return _ops.cross(x1, x2, axis=axis)


__all__ = [
    "LinAlgError",
    "cholesky",
    "cond",
    "cross",
    "det",
    "diagonal",
    "eigh",
    "eigvalsh",
    "inv",
    "matrix_norm",
    "matrix_power",
    "matrix_rank",
    "matrix_transpose",
    "multi_dot",
    "norm",
    "outer",
    "pinv",
    "qr",
    "slogdet",
    "solve",
    "svd",
    "svdvals",
    "tensordot",
    "trace",
    "vecdot",
    "vector_norm",
]
