"""Sharding a dataset over ranks so that every rank makes the same number of steps."""

from __future__ import annotations

import numpy as np

from .. import random as _random
from ._collectives import all_reduce
from ._world import rank, size


class Shards(list):
    """This rank's index arrays, one per step (a list), with ``weights[k]``: this
    rank's share of step ``k``'s global batch (``len(self[k]) / global batch``), the
    ``weight`` to give ``average_gradients`` or ``DataParallel.weight``."""

    def __init__(self, batches, weights, global_sizes):
        super().__init__(batches)
        self.weights = weights
        self.global_sizes = global_sizes


def _count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"shard: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def shard(n, batch_size, shuffle=False, seed=0, epoch=0, drop_last=False):
    """This rank's part of each global mini-batch of one epoch over ``n`` samples.

    Every rank draws the same order (a permutation seeded by ``seed + epoch`` when
    ``shuffle``), cuts it into global batches of ``batch_size`` (the last one smaller,
    or dropped with ``drop_last``) and takes its slice of each: ``batch_size // size``
    samples, one more on the first ``batch_size % size`` ranks (MATLAB's split). So
    every rank makes the same number of steps; a last batch with fewer samples than
    ranks is padded by wrapping around to the start of the order. Returns a
    :class:`Shards` list of index arrays with per-step ``weights``.

    >>> import gpugrad.distributed as dist
    >>> parts = dist.shard(5, batch_size=2)  # one process: the global batches
    >>> [p.tolist() for p in parts], parts.weights
    ([[0, 1], [2, 3], [4]], [1.0, 1.0, 1.0])
    """
    n = _count(n, "n")
    batch_size = _count(batch_size, "batch_size")
    seed = _count(seed, "seed", 0)
    epoch = _count(epoch, "epoch", 0)
    nranks, me = size(), rank()
    if batch_size < nranks:
        raise ValueError(
            f"shard: batch_size={batch_size} is smaller than the number of ranks ({nranks}); "
            "every rank needs at least one sample per step"
        )
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng(seed + epoch).permutation(n)
    steps = n // batch_size if drop_last else -(-n // batch_size)
    batches, weights, sizes = [], [], []
    for k in range(steps):
        chunk = order[k * batch_size : (k + 1) * batch_size]
        if len(chunk) < nranks:
            chunk = np.concatenate([chunk, np.resize(order, nranks - len(chunk))])
        b = len(chunk)
        per, extra = divmod(b, nranks)
        start = me * per + min(me, extra)
        mine = chunk[start : start + per + (me < extra)]
        batches.append(mine)
        weights.append(len(mine) / b)
        sizes.append(b)
    return Shards(batches, weights, sizes)


def seed(n):
    """Seed ``gg.random`` with ``n + rank()``: ranks draw different dropout masks and
    augmentations, reproducibly. (Parameters need no seed: ``DataParallel`` copies
    rank 0's.)

    >>> import gpugrad.distributed as dist
    >>> dist.seed(0)
    """
    _random.seed(_count(n, "seed", 0) + rank())


def all_have_data(flag) -> bool:
    """True when ``flag`` is true on every rank (MATLAB's ``spmdReduce(@and,
    hasdata(mbq))`` loop guard for iterators of unknown length).

    >>> import gpugrad.distributed as dist
    >>> dist.all_have_data(True)
    True
    """
    return bool(all_reduce(np.asarray(1 if flag else 0, np.int64), "min"))
