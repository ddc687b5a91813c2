"""The library's random state, seeded by ``gg.random.seed``.

One NumPy generator on the host for every device (draws are copied to the GPU on
``cuda``): its state can be captured and restored exactly with ``get_state()`` /
``set_state()``. (CuPy's generators cannot snapshot their state.)

Checkpointing replays draws without touching the shared generator: while a
checkpointed function first runs, every draw it makes records the generator state
it started from (:func:`recording`, per context, so per thread); the recomputation
replays those states on a private generator (:func:`replaying`). Draws made
meanwhile by other threads (data augmentation, other training threads) cannot
change the recomputed dropout masks. A lock makes "note the state, draw" one step.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar

import numpy as np

from . import _defaults, backend
from ._alloc import allocate, shape_arg
from .array import dlarray
from .errors import CheckpointError
from .ops import core as _core
from .ops.core import host_call, make

_state = {"gen": None}
_LOCK = threading.RLock()


class _Stream:
    """Where draws come from in this context: ``source`` (recorded states to replay,
    or None for the shared generator) and ``sinks`` (lists recording each state)."""

    __slots__ = ("source", "sinks")

    def __init__(self, source, sinks):
        self.source = source
        self.sinks = sinks


_STREAM: ContextVar[_Stream | None] = ContextVar("gpugrad_random_stream", default=None)


class _StreamScope:
    def __init__(self, stream):
        self._stream = stream
        self._token = None

    def __enter__(self):
        self._token = _STREAM.set(self._stream)
        return self._stream.sinks[-1] if self._stream.sinks else None

    def __exit__(self, *exc):
        _STREAM.reset(self._token)
        return False


def recording():
    """Scope that records the state of every draw made in this context; ``as`` gives
    the list of states (for :func:`replaying`)."""
    old = _STREAM.get()
    draws: list = []
    if old is None:
        return _StreamScope(_Stream(None, (draws,)))
    return _StreamScope(_Stream(old.source, old.sinks + (draws,)))


def replaying(states):
    """Scope in which draws replay ``states`` (recorded by :func:`recording`) in order,
    on a private generator: the shared state is neither read nor advanced."""
    old = _STREAM.get()
    sinks = () if old is None else old.sinks
    return _StreamScope(_Stream(iter(states), sinks))


def _generator():
    if _state["gen"] is None:
        seed(None)
    return _state["gen"]


def _draw(fn):
    """``fn(generator)`` on the shared generator, or on a replayed state."""
    stream = _STREAM.get()
    if stream is not None and _core.RECORDER is not None:
        # why: a checkpoint's recomputation replays the states its first run recorded;
        # a gg.dlaccelerate replay would draw afresh there (a different dropout mask)
        _core.RECORDER.refuse("a random draw inside a checkpointed function")
    if stream is None:
        with _LOCK:
            return fn(_generator())
    if stream.source is not None:
        try:
            state = next(stream.source)
        except StopIteration:
            raise CheckpointError(
                "checkpoint: the recomputation drew more random numbers than the first "
                "run; a checkpointed function must be deterministic given its inputs and "
                "the random state"
            ) from None
        gen = np.random.Generator(np.random.PCG64())
        gen.bit_generator.state = state
        out = fn(gen)
    else:
        with _LOCK:
            gen = _generator()
            state = gen.bit_generator.state
            out = fn(gen)
    for sink in stream.sinks:
        sink.append(state)
    return out


@host_call  # a seed inside gg.dlaccelerate re-seeds on every replay
def seed(n=None):
    """Seed the random state (``None``: fresh entropy; else a non-negative int).

    >>> import gpugrad as gg
    >>> gg.random.seed(0); a = gg.random.normal(shape=(2,)).numpy()
    >>> gg.random.seed(0); b = gg.random.normal(shape=(2,)).numpy()
    >>> bool((a == b).all())
    True
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
        raise TypeError(f"gg.random.seed: n must be None or a non-negative int, got {n!r}")
    gen = np.random.Generator(np.random.PCG64(None if n is None else int(n)))
    with _LOCK:
        _state["gen"] = gen


@host_call
def get_state():
    """An opaque snapshot of the random state (for exact replay).

    >>> import gpugrad as gg
    >>> state = gg.random.get_state()
    >>> a = gg.random.uniform(shape=(2,))
    >>> gg.random.set_state(state)
    >>> bool((gg.random.uniform(shape=(2,)).numpy() == a.numpy()).all())
    True
    """
    with _LOCK:
        return _generator().bit_generator.state


@host_call
def set_state(snapshot):
    """Restore a snapshot taken by :func:`get_state`.

    >>> import gpugrad as gg
    >>> state = gg.random.get_state()
    >>> a = gg.random.normal(shape=(3,))
    >>> gg.random.set_state(state)
    >>> bool((gg.random.normal(shape=(3,)).numpy() == a.numpy()).all())
    True
    """
    with _LOCK:
        _generator().bit_generator.state = snapshot


def _shape(shape, size, where):
    shape = size if shape is None else shape
    if shape is None:
        return ()
    return shape_arg(shape, where)


def _cast(raw, dtype, where):
    dt = _defaults.creation(dtype)  # float64 unless given, as NumPy and MATLAB
    if dt.kind not in "fc":
        raise TypeError(f"{where}: dtype must be a float or complex type, got {dt}")
    return _on_device(raw.astype(dt, copy=False))


def _on_device(raw):
    return backend.xp().asarray(raw) if backend.is_cuda() else raw


def _traced(*vals):
    return any(isinstance(v, dlarray) and v._node is not None for v in vals)


def _param_shape(shape, size, where, *vals):
    """The draw's shape: ``shape``/``size``, else the parameters' broadcast shape (NumPy)."""
    if shape is not None or size is not None:
        return _shape(shape, size, where)
    return np.broadcast_shapes(*(np.shape(v._data if isinstance(v, dlarray) else v) for v in vals))


def normal(loc=0.0, scale=1.0, shape=None, dtype=None, size=None):
    """Normally distributed values (a dlarray on the active device). A traced ``loc`` or
    ``scale`` is differentiated: the draw is ``loc + scale * z`` with ``z`` standard
    normal (the reparameterization PyTorch's ``rsample`` uses).

    >>> import gpugrad as gg
    >>> gg.random.seed(0)
    >>> x = gg.random.normal(loc=1.0, scale=0.1, shape=(2, 3))
    >>> x.shape, x.dtype
    ((2, 3), dtype('float64'))
    >>> s = gg.dlarray(2.0)
    >>> dz = gg.gradient(lambda s: gg.sum(gg.random.normal(0.0, s, shape=(4,))))(s)
    >>> dz.shape
    ()
    """
    if _traced(loc, scale):
        dims = _param_shape(shape, size, "gg.random.normal", loc, scale)
        return loc + scale * _normal(0.0, 1.0, dims, dtype, None)
    return _normal(loc, scale, shape, dtype, size)


def uniform(low=0.0, high=1.0, shape=None, dtype=None, size=None):
    """Uniformly distributed values in ``[low, high)``. A traced ``low`` or ``high`` is
    differentiated: the draw is ``low + (high - low) * u`` with ``u`` uniform in [0, 1).

    >>> import gpugrad as gg
    >>> x = gg.random.uniform(-1.0, 1.0, shape=(1000,))
    >>> bool(x.numpy().min() >= -1.0 and x.numpy().max() < 1.0)
    True
    """
    if _traced(low, high):
        dims = _param_shape(shape, size, "gg.random.uniform", low, high)
        return low + (high - low) * _uniform(0.0, 1.0, dims, dtype, None)
    return _uniform(low, high, shape, dtype, size)


@host_call  # a replay of gg.dlaccelerate draws afresh
def _normal(loc, scale, shape, dtype, size):
    where = "gg.random.normal"
    loc, scale = _host_value(loc), _host_value(scale)
    dims = _param_shape(shape, size, where, loc, scale)
    raw = allocate(where, dims, np.float64, lambda: _draw(lambda g: g.normal(loc, scale, dims)))
    return make(_cast(raw, dtype, where))


@host_call  # a replay of gg.dlaccelerate draws afresh
def _uniform(low, high, shape, dtype, size):
    where = "gg.random.uniform"
    low, high = _host_value(low), _host_value(high)
    dims = _param_shape(shape, size, where, low, high)
    raw = allocate(where, dims, np.float64, lambda: _draw(lambda g: g.uniform(low, high, dims)))
    return make(_cast(raw, dtype, where))


def _host_value(v):
    """An untraced dlarray parameter as host data (NumPy's generator draws on the host)."""
    return backend.to_host(v._data) if isinstance(v, dlarray) else v


@host_call  # a replay of gg.dlaccelerate draws afresh
def randint(low, high=None, shape=None, size=None):
    """Random integers in ``[low, high)`` (stored as float64, as MATLAB does).

    >>> import gpugrad as gg
    >>> x = gg.random.randint(0, 10, shape=(5,))
    >>> x.dtype, bool(((x.numpy() >= 0) & (x.numpy() < 10)).all())
    (dtype('float64'), True)
    """
    dims = _shape(shape, size, "gg.random.randint")
    return make(_on_device(_draw(lambda g: g.integers(low, high, dims)).astype(np.float64)))


@host_call  # a replay of gg.dlaccelerate draws afresh
def permutation(n):
    """A random permutation of ``range(n)`` as a NumPy/CuPy integer array.

    >>> import gpugrad as gg
    >>> sorted(gg.random.permutation(4).tolist())
    [0, 1, 2, 3]
    """
    return _on_device(_draw(lambda g: g.permutation(n)))


@host_call  # a replay of gg.dlaccelerate draws afresh
def raw_uniform(shape, dtype):
    """Raw uniform draws (for dropout masks); advances the same state."""
    where = "gg.random (weight initialization or a dropout mask)"
    dims = _shape(shape, None, where)
    raw = allocate(where, dims, np.float64, lambda: _draw(lambda g: g.random(dims)))
    return _on_device(raw.astype(dtype, copy=False))
