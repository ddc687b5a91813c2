"""The process group: launcher detection, ``init``, ``rank``/``size``/``local_rank``."""

from __future__ import annotations

import os

from .. import backend
from . import _comm

# launcher variables: MPICH/Hydra (PMI_*), Open MPI, PMIx (srun --mpi=pmix), Slurm
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
_LOCAL_VARS = (
    "GPUGRAD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "MPI_LOCALRANKID",
    "SLURM_LOCALID",
    "LOCAL_RANK",
)
BACKENDS = ("auto", "mpi", "nccl", "single")

_state = {"comm": None, "local_rank": 0, "backend": None}


def launched(env=None) -> bool:
    """Whether this process was started by a parallel launcher with more than one rank
    (mpiexec/mpirun, srun), judged from the environment alone."""
    env = os.environ if env is None else env
    for var in _SIZE_VARS:
        value = env.get(var)
        if value is not None:
            try:
                return int(value) > 1
            except ValueError:
                return False
    return "PMIX_RANK" in env or "PMI_RANK" in env


def _torchrun_only(env):
    return (
        "WORLD_SIZE" in env and "RANK" in env and not launched(env) and int(env["WORLD_SIZE"]) > 1
    )


def _local_rank_from(env, mpi_comm):
    for var in _LOCAL_VARS:
        value = env.get(var)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                pass
    if mpi_comm is None:
        return 0
    MPI = _comm._mpi()
    return mpi_comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


def init(backend="auto"):
    """Join the process group (idempotent); returns this process's rank.

    Reads the launcher's environment: ``mpiexec``/``mpirun`` (MPICH's ``PMI_*``,
    Open MPI's ``OMPI_COMM_WORLD_*``), ``srun`` (``PMIX_RANK``, ``SLURM_*``). Not
    launched, the same script runs as one process (rank 0 of 1) without loading MPI.

    ``backend``: ``"auto"`` (NCCL on ``cuda``, ``cuda-sim`` and ``emu``; on the last
    two an MPI-backed test double stands in for NCCL; MPI on ``cpu``), ``"mpi"`` (host
    buffers), ``"nccl"``, or ``"single"`` (one process even when launched, e.g. to debug
    one rank). On ``cuda`` (and ``cuda-sim``) each process uses GPU
    ``local_rank() % device_count``.

    >>> import gpugrad.distributed as dist
    >>> dist.init(), dist.size()
    (0, 1)
    """
    if backend not in BACKENDS:
        raise ValueError(f"init: backend must be one of {BACKENDS}, got {backend!r}")
    st = _state
    if st["comm"] is not None:
        if backend not in ("auto", st["backend"]):
            raise RuntimeError(
                f"init: already initialized with backend {st['backend']!r}; "
                f"cannot switch to {backend!r} in the same process"
            )
        return st["comm"].rank
    env = os.environ
    if backend == "single" or not launched(env):
        if backend != "single" and _torchrun_only(env):
            raise RuntimeError(
                "init: a torchrun-style environment (RANK/WORLD_SIZE) was found but no MPI "
                "launcher; gpugrad bootstraps through MPI: launch with "
                "`mpiexec -n N python -m mpi4py script.py` (or srun --mpi=pmix)"
            )
        st.update(comm=_comm.SingleComm(), local_rank=0, backend="single")
        return 0
    try:
        MPI = _comm._mpi()
    except ImportError as exc:
        raise RuntimeError(
            "init: launched with several ranks but mpi4py is not installed; "
            "pip install 'gpugrad[distributed]'"
        ) from exc
    world = MPI.COMM_WORLD
    local = _local_rank_from(env, world)
    dev = backend_device()
    cuda_path = backend_is_cuda()  # cuda and cuda-sim: the same choices
    if cuda_path:
        cupy = backend_cupy()
        cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
    mpi = _comm.MpiComm(world)
    name = backend
    if name == "auto":
        name = "nccl" if cuda_path or dev == "emu" else "mpi"
    comm = _comm.NcclComm(mpi) if name == "nccl" else mpi
    st.update(comm=comm, local_rank=local, backend=name)
    return comm.rank


def backend_device():
    return backend.device()


def backend_is_cuda():
    return backend.is_cuda()


def backend_cupy():
    return backend._state["cupy"]


def comm():
    """The active communicator (``init()`` on first use)."""
    c = _state["comm"]
    if c is None:
        init()
        c = _state["comm"]
    return c


def rank() -> int:
    """This process's index in the group, 0-based (0 when not launched).

    >>> import gpugrad.distributed as dist
    >>> dist.rank()
    0
    """
    return comm().rank


def size() -> int:
    """The number of processes in the group (1 when not launched)."""
    return comm().size


def local_rank() -> int:
    """This process's index among the ranks on its machine: the GPU it uses."""
    comm()
    return _state["local_rank"]


def backend_name() -> str:
    """The transport in use: ``"single"``, ``"mpi"`` or ``"nccl"``."""
    comm()
    return _state["backend"]


def barrier() -> None:
    """Wait until every rank has reached this point."""
    comm().barrier()


def _reset_for_tests():
    _state.update(comm=None, local_rank=0, backend=None)
