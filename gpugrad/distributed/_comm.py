"""Communicators: the transports under ``gpugrad.distributed``, one interface.

``SingleComm``  one process (not launched): every collective is the identity.
``MpiComm``     mpi4py on host buffers (the CPU path; CuPy arrays are staged through
                host memory).
``NcclComm``    NCCL through ``cupy.cuda.nccl`` on device buffers, on a dedicated
                communication stream ordered against the compute stream by events;
                the NCCL unique id is broadcast over MPI. On ``emu`` the same code runs
                against ``MpiNcclDouble``, an MPI-backed stand-in for
                ``cupy.cuda.nccl.NcclCommunicator`` (same methods, raw pointers), with
                host stand-ins for the stream and the events; on ``cuda-sim`` against
                the same double, with the simulated runtime's streams and events.

Every communicator works on contiguous raw arrays of the active device, in place.
Collectives are blocking unless named ``i...``, which return a handle with
``wait()`` (and ``test()``).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from .. import backend
from ..accelerate import collective as _note_collective

# NCCL's enum values (nccl.h; stable ABI): the same numbers cupy.cuda.nccl exports
NCCL_DTYPES = {
    np.dtype(np.int8): 0,
    np.dtype(np.uint8): 1,
    np.dtype(np.int32): 2,
    np.dtype(np.uint32): 3,
    np.dtype(np.int64): 4,
    np.dtype(np.uint64): 5,
    np.dtype(np.float16): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.float64): 8,
}
NCCL_OPS = {"sum": 0, "prod": 1, "max": 2, "min": 3}
_NCCL_TO_NP = {v: k for k, v in NCCL_DTYPES.items()}


_COLLECTIVES = (
    "allreduce_",
    "iallreduce_",
    "bcast_",
    "allgather",
    "barrier",
    "bcast_obj",
    "allgather_obj",
)


def _guarded(cls):
    """Tell gg.dlaccelerate about each collective (``gpugrad.accelerate.collective``): a trace
    must repeat it on replay, or run that call pattern eagerly, so that every rank runs
    the same collectives whether it traces, replays or runs eagerly."""
    for name in _COLLECTIVES:
        fn = cls.__dict__.get(name)
        if fn is not None:
            setattr(cls, name, _guard(fn, name))
    return cls


def _guard(fn, name):
    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        _note_collective(name)
        return fn(self, *args, **kwargs)

    return method


class _Done:
    """The handle of a collective that has already completed."""

    def wait(self):
        return None

    def test(self):
        return True


DONE = _Done()


@_guarded
class SingleComm:
    """One process: collectives return their input unchanged."""

    name = "single"
    rank = 0
    size = 1

    def allreduce_(self, buf, op):
        return buf

    def iallreduce_(self, buf, op):
        return DONE

    def bcast_(self, buf, root):
        return buf

    def allgather(self, buf):
        return buf[None]

    def barrier(self):
        return None

    def bcast_obj(self, obj, root=0):
        return obj

    def allgather_obj(self, obj):
        return [obj]

    def abort(self, code=1):
        raise SystemExit(code)


def _mpi():
    from mpi4py import MPI  # only when launched: importing gpugrad never loads MPI

    return MPI


_MPI_OPS = {}


def mpi_op(op):
    if not _MPI_OPS:
        MPI = _mpi()
        _MPI_OPS.update(sum=MPI.SUM, max=MPI.MAX, min=MPI.MIN, prod=MPI.PROD)
    return _MPI_OPS[op]


class _MpiRequest:
    def __init__(self, req, after=None):
        self.req = req
        self.after = after

    def test(self):
        done = self.req.Test()
        if done and self.after is not None:
            self.after()
            self.after = None
        return done

    def wait(self):
        self.req.Wait()
        if self.after is not None:
            self.after()
            self.after = None


def _is_host(buf):
    return isinstance(buf, np.ndarray)


@_guarded
class MpiComm:
    """mpi4py on host buffers (NumPy in place; CuPy staged through host memory)."""

    name = "mpi"

    def __init__(self, mpi_comm):
        self.comm = mpi_comm
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()

    def allreduce_(self, buf, op):
        MPI = _mpi()
        if _is_host(buf):
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=mpi_op(op))
            return buf
        host = backend.to_host(buf)
        self.comm.Allreduce(MPI.IN_PLACE, host, op=mpi_op(op))
        buf.set(host)
        return buf

    def iallreduce_(self, buf, op):
        MPI = _mpi()
        if _is_host(buf):
            return _MpiRequest(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=mpi_op(op)))
        host = np.ascontiguousarray(backend.to_host(buf))
        req = self.comm.Iallreduce(MPI.IN_PLACE, host, op=mpi_op(op))
        return _MpiRequest(req, after=lambda: buf.set(host))

    def bcast_(self, buf, root):
        if _is_host(buf):
            self.comm.Bcast(buf, root=root)
            return buf
        host = np.ascontiguousarray(backend.to_host(buf))
        self.comm.Bcast(host, root=root)
        buf.set(host)
        return buf

    def allgather(self, buf):
        host = np.ascontiguousarray(backend.to_host(buf))
        out = np.empty((self.size,) + host.shape, host.dtype)
        self.comm.Allgather(host, out)
        if _is_host(buf):
            return out
        return backend.xp().asarray(out)

    def barrier(self):
        self.comm.Barrier()

    def bcast_obj(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj):
        return self.comm.allgather(obj)

    def abort(self, code=1):
        self.comm.Abort(code)


# ------------------------------------------------------------------ NCCL path


class MpiNcclDouble:
    """A test double of ``cupy.cuda.nccl.NcclCommunicator`` built on MPI, for the
    ``emu`` device: the same methods on raw host pointers (``stream`` is ignored; the
    call completes before it returns). It lets the NCCL code path (buckets, pointers,
    dtype/op enums, stream and event ordering) run in CI without a GPU."""

    def __init__(self, mpi_comm):
        self.mpi = mpi_comm
        self.calls = {"allReduce": 0, "bcast": 0, "allGather": 0}

    def rank_id(self):
        return self.mpi.Get_rank()

    def size(self):
        return self.mpi.Get_size()

    @staticmethod
    def _view(ptr, count, datatype):
        dt = _NCCL_TO_NP[datatype]
        raw = (ctypes.c_char * (count * dt.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dt, count=count)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802
        MPI = _mpi()
        self.calls["allReduce"] += 1
        ops = {0: MPI.SUM, 1: MPI.PROD, 2: MPI.MAX, 3: MPI.MIN}
        recv = self._view(recvbuf, count, datatype)
        if sendbuf == recvbuf:
            self.mpi.Allreduce(MPI.IN_PLACE, recv, op=ops[op])
        else:
            self.mpi.Allreduce(self._view(sendbuf, count, datatype), recv, op=ops[op])

    def bcast(self, buff, count, datatype, root, stream):
        self.calls["bcast"] += 1
        self.mpi.Bcast(self._view(buff, count, datatype), root=root)

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):  # noqa: N802
        self.calls["allGather"] += 1
        send = self._view(sendbuf, count, datatype).copy()
        self.mpi.Allgather(send, self._view(recvbuf, count * self.size(), datatype))


class _HostStream:
    """The emu stand-in for a CUDA stream (everything on the host is in order)."""

    ptr = 0

    def wait_event(self, event):
        return None

    def record(self, event=None):
        return event if event is not None else _HostEvent()

    def synchronize(self):
        return None


class _HostEvent:
    def synchronize(self):
        return None

    @property
    def done(self):
        return True


class _NcclRequest:
    def __init__(self, event, after=None):
        self.event = event
        self.after = after

    def test(self):
        return self.event.done

    def wait(self):
        # the compute stream waits on the communication: no host sync
        backend_stream().wait_event(self.event)
        if self.after is not None:
            self.after()
            self.after = None


def backend_stream():
    """The compute stream (CuPy's current stream on cuda, a host stand-in on emu)."""
    cupy = backend._state["cupy"]
    if cupy is None:
        return _HostStream()
    return cupy.cuda.get_current_stream()


@_guarded
class NcclComm:
    """NCCL on device buffers: each collective runs on ``self.stream`` after an event
    recorded on the compute stream, and the compute stream waits on an event recorded
    after it (``wait()``), so communication overlaps compute without host syncs.

    ``mpi`` (an ``MpiComm``) carries the objects: the NCCL id at start, plans, checks.
    """

    name = "nccl"

    def __init__(self, mpi, nccl_comm=None):
        self.mpi = mpi
        self.rank = mpi.rank
        self.size = mpi.size
        cupy = backend._state["cupy"]
        if nccl_comm is None:
            # cuda-sim: its streams and events, the MPI double for NCCL (not simulated)
            if cupy is None or backend.device() == "cuda-sim":
                nccl_comm = MpiNcclDouble(mpi.comm)
            else:
                from cupy.cuda import nccl

                uid = nccl.get_unique_id() if mpi.rank == 0 else None
                uid = mpi.bcast_obj(uid, 0)
                nccl_comm = nccl.NcclCommunicator(mpi.size, uid, mpi.rank)
        self.nccl = nccl_comm
        self.stream = _HostStream() if cupy is None else cupy.cuda.Stream(non_blocking=True)
        self._cupy = cupy

    def _event(self, stream):
        if self._cupy is None:
            return _HostEvent()
        return stream.record()

    def _launch(self, buf, op):
        """Enqueue an in-place allreduce of ``buf`` on the comm stream; its done event."""
        if buf.dtype.kind == "c":
            buf = buf.view(buf.real.dtype)
        if buf.dtype not in NCCL_DTYPES:
            raise TypeError(f"all_reduce (nccl): dtype {buf.dtype} is not supported by NCCL")
        ready = self._event(backend_stream())
        self.stream.wait_event(ready)
        ptr = _ptr(buf)
        self.nccl.allReduce(
            ptr, ptr, buf.size, NCCL_DTYPES[buf.dtype], NCCL_OPS[op], self.stream.ptr
        )
        return self._event(self.stream)

    def allreduce_(self, buf, op):
        backend_stream().wait_event(self._launch(buf, op))
        return buf

    def iallreduce_(self, buf, op):
        return _NcclRequest(self._launch(buf, op))

    def bcast_(self, buf, root):
        b = buf.view(buf.real.dtype) if buf.dtype.kind == "c" else buf
        if b.dtype == np.bool_:
            b = b.view(np.uint8)
        self.stream.wait_event(self._event(backend_stream()))
        self.nccl.bcast(_ptr(b), b.size, NCCL_DTYPES[b.dtype], root, self.stream.ptr)
        backend_stream().wait_event(self._event(self.stream))
        return buf

    def allgather(self, buf):
        xp = backend.xp()
        b = xp.ascontiguousarray(buf)
        flat = b.view(b.real.dtype) if b.dtype.kind == "c" else b
        if flat.dtype == np.bool_:
            flat = flat.view(np.uint8)
        out = xp.empty((self.size,) + flat.shape, flat.dtype)
        self.stream.wait_event(self._event(backend_stream()))
        self.nccl.allGather(
            _ptr(flat), _ptr(out), flat.size, NCCL_DTYPES[flat.dtype], self.stream.ptr
        )
        backend_stream().wait_event(self._event(self.stream))
        return out.view(b.dtype).reshape((self.size,) + b.shape)

    def barrier(self):
        self.stream.synchronize()
        self.mpi.barrier()

    def bcast_obj(self, obj, root=0):
        return self.mpi.bcast_obj(obj, root)

    def allgather_obj(self, obj):
        return self.mpi.allgather_obj(obj)

    def abort(self, code=1):
        self.mpi.abort(code)


def _ptr(buf):
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("nccl: buffers must be C-contiguous")
        return buf.ctypes.data
    return buf.data.ptr
