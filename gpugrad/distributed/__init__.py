"""Data-parallel training across processes, GPUs and machines on MPI and NCCL.

Launch the same script once per rank (``mpiexec -n 4 python -m mpi4py train.py``, or
``python -m gpugrad.distributed.run -n 4 train.py``); not launched, it runs as one
process, unchanged. MPI (mpi4py; ``pip install 'gpugrad[distributed]'``) starts the
ranks, exchanges ids and carries host buffers; NCCL (``cupy.cuda.nccl``) carries GPU
buffers. Importing this module does not load MPI; :func:`init` (called by every
function on first use) does, and only when launched with several ranks.

``DataParallel(net, optimizer=opt)`` keeps the training loop unchanged: rank 0's
parameters and optimizer state on every rank (checked by hash;
:func:`check_synchronized` checks again at any time), gradients combined over ranks
during the backward walk, also when the step runs under ``gg.dlaccelerate``.

>>> import gpugrad as gg, gpugrad.distributed as dist
>>> dist.init(), dist.rank(), dist.size()
(0, 0, 1)
>>> dist.all_reduce(gg.dlarray([1.0, 2.0])).numpy()
array([1., 2.])
"""

from ._collectives import all_gather, all_reduce, average_gradients, broadcast
from ._world import backend_name, barrier, init, launched, local_rank, rank, size
from .data import all_have_data, seed, shard
from .parallel import DataParallel
from .spmd import spmd_broadcast, spmd_index, spmd_plus, spmd_reduce, spmd_size
from .sync import broadcast_optimizer_state, check_synchronized

__all__ = [
    "init",
    "rank",
    "size",
    "local_rank",
    "barrier",
    "launched",
    "backend_name",
    "all_reduce",
    "broadcast",
    "all_gather",
    "average_gradients",
    "DataParallel",
    "broadcast_optimizer_state",
    "check_synchronized",
    "shard",
    "seed",
    "all_have_data",
    "spmd_plus",
    "spmd_size",
    "spmd_index",
    "spmd_reduce",
    "spmd_broadcast",
]
