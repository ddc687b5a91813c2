"""MATLAB face of the process group (``spmd`` blocks: the script under ``mpiexec``).

Ranks are 0-based as everywhere in gpugrad: ``spmd_index()`` is MATLAB's
``spmdIndex - 1``.
"""

from __future__ import annotations

import operator

import numpy as np

from ..array import dlarray
from ..ops import elementwise as _ew
from . import _collectives
from ._world import comm, rank, size

_KNOWN = {
    operator.add: "sum",
    np.add: "sum",
    _ew.add: "sum",
    np.maximum: "max",
    _ew.maximum: "max",
    max: "max",
    np.minimum: "min",
    _ew.minimum: "min",
    min: "min",
}


def _dest(dest, where):
    if dest is None:
        return None
    n = size()
    if isinstance(dest, bool) or not isinstance(dest, (int, np.integer)) or not 0 <= dest < n:
        raise ValueError(f"{where}: dest must be None or a rank in [0, {n}), got {dest!r}")
    return int(dest)


def spmd_plus(x, dest=None):
    """The sum of ``x`` over all ranks (MATLAB's ``spmdPlus``, formerly ``gplus``);
    with ``dest`` only that rank gets it (the others get ``None``). Differentiable
    (see ``gpugrad.distributed.all_reduce``); works on dlarrays, arrays, numbers and
    trees.

    >>> import gpugrad as gg
    >>> gg.spmd_plus(gg.dlarray([1.0, 2.0])).numpy()  # one process
    array([1., 2.])
    """
    d = _dest(dest, "spmd_plus")
    out = _collectives.all_reduce(x, "sum")
    return out if d is None or d == rank() else None


def spmd_size() -> int:
    """The number of ranks (MATLAB's ``spmdSize``).

    >>> import gpugrad as gg
    >>> gg.spmd_size()
    1
    """
    return size()


def spmd_index() -> int:
    """This rank's 0-based index (MATLAB's ``spmdIndex - 1``).

    >>> import gpugrad as gg
    >>> gg.spmd_index()
    0
    """
    return rank()


def spmd_reduce(fn, x, dest=None):
    """Reduce ``x`` over ranks with the binary function ``fn`` (MATLAB's
    ``spmdReduce``), folding in rank order. Sums, maxima and minima (``gg.add``,
    ``np.add``, ``operator.add``, ``gg.maximum``, ``max``, ...) run as one collective
    (differentiable); any other ``fn`` (e.g. ``operator.and_``) is applied to the
    gathered values.

    >>> import operator, gpugrad as gg
    >>> gg.spmd_reduce(operator.and_, True)
    True
    """
    if not callable(fn):
        raise TypeError(f"spmd_reduce: fn must be a binary function, got {type(fn).__name__}")
    d = _dest(dest, "spmd_reduce")
    op = _KNOWN.get(fn)
    if op is not None:
        out = _collectives.all_reduce(x, op)
    else:
        if type(x) is dlarray:
            values = list(_collectives.all_gather(x))
        else:
            values = comm().allgather_obj(x)
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
    return out if d is None or d == rank() else None


def spmd_broadcast(x, root=0):
    """Rank ``root``'s ``x`` on every rank (MATLAB's ``spmdBroadcast``; 0-based).

    >>> import gpugrad as gg
    >>> gg.spmd_broadcast(3.0)
    3.0
    """
    return _collectives.broadcast(x, root)


gplus = spmd_plus
spmdPlus = spmd_plus  # noqa: N816
spmdSize = spmd_size  # noqa: N816
spmdIndex = spmd_index  # noqa: N816
spmdReduce = spmd_reduce  # noqa: N816
spmdBroadcast = spmd_broadcast  # noqa: N816
