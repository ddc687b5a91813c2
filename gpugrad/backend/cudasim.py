"""``cuda-sim``: the ``cuda`` code path on a machine without a GPU.

``GPUGRAD_DEVICE=cuda-sim`` makes gpugrad take every branch it takes on ``cuda``, with
``xp`` a CuPy-compatible façade built here instead of CuPy. Its arrays
(:class:`ndarray`) wrap NumPy arrays that stand for device memory, and follow CuPy's
rules rather than NumPy's:

- no implicit device->host conversion: ``np.asarray(a)`` / ``a.__array__()`` raise
  CuPy's ``TypeError`` ("Implicit conversion to a NumPy array is not allowed...");
  ``a.get()``, ``xp.asnumpy(a)`` and ``gg.to_host`` are the explicit transfers.
  ``float(a)``, ``int(a)``, ``bool(a)``, ``a.item()``, ``a.tolist()``, ``repr(a)`` work
  as in CuPy, but each is a device->host copy that synchronises, and is counted;
- NumPy arrays are not accepted as operands (``device + host`` raises CuPy's
  ``TypeError: Unsupported type <class 'numpy.ndarray'>``), except by the transfer
  functions (``xp.asarray``, ``xp.array``), indices and ``a[...] = host`` (counted);
- reductions return 0-d device arrays, never NumPy scalars;
- only names that exist in the installed ``cupy`` / ``cupyx`` are reachable (the
  façade is built from ``dir(cupy)``; CuPy imports without a GPU), and calls are
  checked against CuPy's signatures where CuPy's function has one;
- NumPy functions called on device arrays dispatch to the façade
  (``__array_function__``/``__array_ufunc__``, as CuPy does); NumPy-only helpers
  (``np.add.at``, ``np.lib.stride_tricks.as_strided``) raise;
- ``xp.RawModule(code=...)`` compiles the ``.cu`` source with the CPU emulator
  (:mod:`gpugrad.backend.emu`); a launch takes device arrays, NumPy scalars and Python
  scalars as CuPy's launcher does (a NumPy array raises), then the emulator checks each
  argument against the kernel's parameter types.

Every host<->device transfer and synchronisation is counted with the call site that
caused it (:func:`counts`, :func:`events`, :func:`reset`; ``gg.debug.transfers()``).
Under ``cupyx.allow_synchronize(False)`` (the façade's) a synchronisation raises
``cupyx.DeviceSynchronized``, as CuPy's sync detector does.

>>> from gpugrad.backend import cudasim
>>> cp = cudasim.namespace()
>>> a = cp.arange(4.0)
>>> s = a.sum()
>>> type(s).__name__, s.shape          # a 0-d device array, not a NumPy scalar
('ndarray', ())
>>> float(s)                           # allowed, as in CuPy, but a counted sync
6.0
>>> import numpy as np
>>> np.asarray(a)
Traceback (most recent call last):
TypeError: Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import threading
import types
import weakref

import numpy as np

_HERE = os.path.abspath(__file__)
_PKG = os.path.dirname(os.path.dirname(_HERE))  # .../gpugrad

IMPLICIT_MSG = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)

# ----------------------------------------------------------------------------- counting

# why: reentrant: a device array's finalizer (_Pool._free) takes it, and a garbage
# collection may run that finalizer while this thread holds it (in _record, say)
_lock = threading.RLock()
_COUNTS = {"h2d": 0, "d2h": 0, "sync": 0, "h2d_bytes": 0, "d2h_bytes": 0, "launches": 0}
_EVENTS: list = []
_TRACKERS: list = []
_MAX_EVENTS = 10000
_tls = threading.local()


def _current_op() -> str:
    """The gpugrad primitive being run (forward: ``bind``; backward: ``run_vjp``), or
    ``""`` outside any."""
    f = sys._getframe(3)
    while f is not None:
        name = f.f_code.co_name
        if name in ("bind", "run_vjp") and f.f_code.co_filename.endswith(_CORE):
            loc = f.f_locals
            prim = loc.get("prim") if name == "bind" else getattr(loc.get("node"), "prim", None)
            label = getattr(prim, "name", "")
            return label if name == "bind" else f"{label} (backward)"
        f = f.f_back
    return ""


_CORE = os.path.join("gpugrad", "ops", "core.py")
_HELPERS = (_HERE, os.path.join(os.path.dirname(_HERE), "__init__.py"))  # to_host & co.


def _call_site() -> str:
    """``file:line (function)`` of the first frame outside this module, the backend's
    helpers (``to_host``) and NumPy, so an event names the line that caused it."""
    f = sys._getframe(2)
    while f is not None:
        fn = f.f_code.co_filename
        if fn not in _HELPERS and f"{os.sep}numpy{os.sep}" not in fn:
            rel = os.path.relpath(fn, os.path.dirname(_PKG)) if fn.startswith(_PKG) else fn
            return f"{rel}:{f.f_lineno} ({f.f_code.co_name})"
        f = f.f_back
    return "?"


def _record(kind: str, nbytes: int = 0, what: str = "") -> None:
    sync = kind in ("d2h", "sync")
    if sync and not _sync_allowed():
        raise _sync_error()(
            f"cuda-sim: a device synchronisation ({what or kind}) at {_call_site()} while "
            "synchronisation is disallowed (cupyx.allow_synchronize(False))"
        )
    site = _call_site()
    op = _current_op() if _TRACKERS else ""
    with _lock:
        for t in _TRACKERS:
            t._add(kind, what, nbytes, site, op)
        _COUNTS[kind] += 1
        if kind == "d2h":
            _COUNTS["sync"] += 1
            _COUNTS["d2h_bytes"] += nbytes
        elif kind == "h2d":
            _COUNTS["h2d_bytes"] += nbytes
        if len(_EVENTS) < _MAX_EVENTS:
            _EVENTS.append((kind, what, nbytes, site))


def counts() -> dict:
    """Transfers and synchronisations since the last :func:`reset`: ``h2d``, ``d2h``
    (each also a ``sync``), ``sync``, bytes each way and kernel ``launches``."""
    with _lock:
        return dict(_COUNTS)


def events() -> list:
    """``(kind, what, nbytes, call site)`` of each transfer/sync since :func:`reset`."""
    with _lock:
        return list(_EVENTS)


def summary(top: int = 5) -> dict:
    """For a report (``gg.kernels.report()``, section ``"transfers (cuda-sim)"``): the
    :func:`counts` since :func:`reset` (``gg.kernels.reset_report()`` resets them too)
    and the ``top`` call sites by number of transfers/syncs.

    >>> sorted(summary())
    ['counts', 'top_sites']
    """
    by_site: dict = {}
    for kind, _, _, site in events():
        by_site[(kind, site)] = by_site.get((kind, site), 0) + 1
    ranked = sorted(by_site.items(), key=lambda kv: -kv[1])[:top]
    return {"counts": counts(), "top_sites": [(k, s, n) for (k, s), n in ranked]}


def reset() -> None:
    with _lock:
        for k in _COUNTS:
            _COUNTS[k] = 0
        _EVENTS.clear()


class Transfers:
    """Counts of one ``with`` block (``gg.debug.transfers()``): ``h2d``, ``d2h``,
    ``syncs`` (every d2h is one), ``launches`` (kernels through the RawModule loader) and
    ``events`` (``(kind, what, nbytes, call site, op)``); ``by_site()``, ``by_op()``. ``counted`` is False on a device
    where nothing can be counted (``cpu``, ``emu``, a real ``cuda``). With
    ``allow_sync=False`` a synchronisation inside the block raises
    ``cupyx.DeviceSynchronized`` naming the call site."""

    def __init__(self, allow_sync: bool = True):
        self.allow_sync = allow_sync
        self.events: list = []
        self.h2d = self.d2h = self.syncs = self.launches = 0
        self.counted = False
        self._ctx = None
        self._launch0 = 0

    def _add(self, kind, what, nbytes, site, op):
        self.events.append((kind, what, nbytes, site, op))
        if kind == "h2d":
            self.h2d += 1
        elif kind == "d2h":
            self.d2h += 1
            self.syncs += 1
        else:
            self.syncs += 1

    def __enter__(self):
        from gpugrad import backend

        self.counted = backend.device() == "cuda-sim"
        with _lock:
            _TRACKERS.append(self)
            self._launch0 = _COUNTS["launches"]
        if not self.allow_sync:
            self._ctx = allow_synchronize(False)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        with _lock:
            _TRACKERS.remove(self)
            self.launches = _COUNTS["launches"] - self._launch0
        return False

    def by_site(self) -> dict:
        """``{(kind, call site): count}``: where the transfers and syncs come from."""
        out: dict = {}
        for kind, _, _, site, _ in self.events:
            out[(kind, site)] = out.get((kind, site), 0) + 1
        return out

    def by_op(self) -> dict:
        """``{(kind, op): count}`` per gpugrad primitive (``"matmul"``, ``"lstm
        (backward)"``; ``""`` outside any primitive)."""
        out: dict = {}
        for kind, _, _, _, op in self.events:
            out[(kind, op)] = out.get((kind, op), 0) + 1
        return out

    def __repr__(self):
        if not self.counted:
            return "<transfers: not counted on this device (only on cuda-sim)>"
        return (
            f"<transfers h2d={self.h2d} d2h={self.d2h} syncs={self.syncs} launches={self.launches}>"
        )


def _sync_allowed() -> bool:
    return getattr(_tls, "allowed", True)


def _sync_error():
    try:
        import cupyx  # the real class, so `except cupyx.DeviceSynchronized` works

        return cupyx.DeviceSynchronized
    except Exception:  # pragma: no cover - CuPy is required for cuda-sim anyway
        return RuntimeError


@contextlib.contextmanager
def allow_synchronize(allow: bool):
    """``cupyx.allow_synchronize``: with ``False``, a synchronisation raises
    ``cupyx.DeviceSynchronized`` (thread-local)."""
    old = _sync_allowed()
    _tls.allowed = bool(allow)
    try:
        yield
    finally:
        _tls.allowed = old


# ----------------------------------------------------------------------------- memory


class _Pool:
    """``cupy.get_default_memory_pool()``: bytes of live device arrays (``used_bytes``)
    and their high-water mark since the last ``free_all_blocks`` (``total_bytes``)."""

    def __init__(self):
        self.used = 0
        self.total = 0
        self.limit = 0

    def _alloc(self, arr: np.ndarray):
        n = arr.nbytes
        if not n:
            return
        with _lock:
            self.used += n
            self.total = max(self.total, self.used)
        weakref.finalize(arr, self._free, n)

    def _free(self, n):
        with _lock:
            self.used -= n

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.total

    def free_bytes(self):
        return self.total - self.used

    def free_all_blocks(self, stream=None):
        self.total = self.used

    def n_free_blocks(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        self.limit = int(size or 0)

    def get_limit(self):
        return self.limit


_POOL = _Pool()
_PINNED = _Pool()
_OWNERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id(buffer) -> its array


# ----------------------------------------------------------------------------- arrays


def _wrap(r):
    """NumPy results -> device arrays (NumPy scalars become 0-d arrays, as in CuPy)."""
    if isinstance(r, np.ndarray):
        return ndarray._from(r)
    if isinstance(r, np.generic):
        return ndarray._from(np.asarray(r))
    if type(r) is tuple:
        return tuple(_wrap(v) for v in r)
    if type(r) is list:
        return [_wrap(v) for v in r]
    if isinstance(r, tuple) and hasattr(r, "_fields"):  # namedtuple (slogdet, eigh, ...)
        return type(r)(*(_wrap(v) for v in r))
    return r


def _unsupported(v):
    return TypeError(f"Unsupported type {type(v)}")


def _un(v, where: str = ""):
    """Device arrays -> their NumPy buffers; a NumPy array raises as in CuPy."""
    if type(v) is ndarray:
        return v._a
    if isinstance(v, np.ndarray):
        raise TypeError(
            f"Unsupported type {type(v)}"
            + (f" (cuda-sim: {where} got a host NumPy array; move it with xp.asarray)")
        )
    if type(v) in (tuple, list):
        return type(v)(_un(x, where) for x in v)
    if type(v) is dict:
        return {k: _un(x, where) for k, x in v.items()}
    return v


def _un_host_ok(v):
    """Unwrap device arrays; host data passes (the caller counts the transfer)."""
    if type(v) is ndarray:
        return v._a
    if type(v) in (tuple, list):
        return type(v)(_un_host_ok(x) for x in v)
    return v


def _has_host(v) -> bool:
    if type(v) is ndarray:
        return False
    if isinstance(v, np.ndarray):
        return True
    if type(v) in (tuple, list):
        return any(_has_host(x) for x in v)
    return False


def _index(key):
    """Unwrap an index; host index arrays and lists are copied to the device (counted),
    boolean masks need the count of True values on the host (a sync, as in CuPy)."""
    if type(key) is not tuple:
        key = (key,)
    out = []
    for k in key:
        if type(k) is ndarray:
            if k._a.dtype == np.bool_ and k._a.ndim > 0:
                _record("sync", 0, "boolean-mask indexing (result size)")
            out.append(k._a)
        elif isinstance(k, np.ndarray) or (type(k) is list):
            host = np.asarray(k)
            _record("h2d", host.nbytes, "host index array")
            if host.dtype == np.bool_:
                _record("sync", 0, "boolean-mask indexing (result size)")
            out.append(host)
        else:
            out.append(k)
    return tuple(out)


def _binop(name):
    def op(self, other):
        if isinstance(other, np.ndarray):
            if name.startswith("__r") or name.startswith("__i"):
                raise _unsupported(other)
            raise _unsupported(other)
        if type(other) not in (ndarray,) and not isinstance(
            other, (int, float, complex, bool, np.generic)
        ):
            return NotImplemented
        r = getattr(self._a, name)(_un(other))
        if r is NotImplemented:
            return r
        if name.startswith("__i"):
            return self
        return _wrap(r)

    op.__name__ = name
    return op


def _unop(name):
    def op(self):
        return _wrap(getattr(self._a, name)())

    op.__name__ = name
    return op


class ndarray:
    """A device array of the simulated CuPy (a NumPy buffer standing for GPU memory)."""

    __slots__ = ("_a", "_base", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        a = np.empty(shape, dtype=dtype, order=order)
        _POOL._alloc(a)
        self._a = a
        self._base = None
        _OWNERS[id(a)] = self

    @classmethod
    def _from(cls, a: np.ndarray):
        obj = object.__new__(cls)
        if a.base is None and a.flags.owndata:
            _POOL._alloc(a)
            _OWNERS[id(a)] = obj
        obj._a = a
        obj._base = None
        return obj

    @property
    def base(self):
        """The device array owning the memory of a view (as in CuPy: the same object
        every time, kept alive by the view), else None. It was a new wrapper on every
        access, counted as a new allocation, so id(x.base) -- gpugrad's in-place version
        key -- changed between accesses."""
        b = self._a.base
        if not isinstance(b, np.ndarray):
            return None
        w = self._base
        if w is None:
            while isinstance(b.base, np.ndarray):
                b = b.base
            w = _OWNERS.get(id(b))  # alive, so it still holds b: the id is b's
            if w is None:
                w = object.__new__(ndarray)  # its bytes were counted when it was made
                w._a, w._base = b, None
                _OWNERS[id(b)] = w
            self._base = w
        return w

    # -- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._from(self._a.T))
    mT = property(lambda self: ndarray._from(np.swapaxes(self._a, -1, -2)))

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    @property
    def real(self):
        return _wrap(self._a.real)

    @real.setter
    def real(self, v):
        self._a.real = _un(v, "ndarray.real")

    @property
    def imag(self):
        return _wrap(self._a.imag)

    @imag.setter
    def imag(self, v):
        self._a.imag = _un(v, "ndarray.imag")

    @property
    def data(self):
        return _MemoryPointer(self._a)

    @property
    def flat(self):
        return _Flat(self)

    @property
    def device(self):
        return namespace().cuda.Device(0)

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self._a.shape,
            "typestr": self._a.dtype.str,
            "data": (self._a.ctypes.data, False),
            "strides": None if self._a.flags.c_contiguous else self._a.strides,
            "version": 3,
        }

    # -- CuPy's refusals and counted conversions
    def __array__(self, dtype=None, copy=None):
        raise TypeError(IMPLICIT_MSG)

    def __dlpack__(self, *args, **kwargs):
        raise BufferError(
            "cuda-sim: a simulated device array has no real device memory to export by "
            "DLPack; use .get() for a host copy"
        )

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0

    def toDlpack(self):  # noqa: N802 - CuPy's name
        return self.__dlpack__()

    def get(self, stream=None, order="C", out=None, blocking=True):
        """Device -> host copy (a synchronisation), as ``cupy.ndarray.get``."""
        _record("d2h", self._a.nbytes, "ndarray.get")
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            np.copyto(out, self._a)
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        """Host -> device copy into this array, as ``cupy.ndarray.set``."""
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self._a.shape:
            raise ValueError("Shape mismatch")
        _record("h2d", arr.nbytes, "ndarray.set")
        np.copyto(self._a, arr)

    def _scalar(self, what):
        _record("d2h", self._a.itemsize, what)
        return self._a

    def item(self):
        return self._scalar("ndarray.item").item()

    def tolist(self):
        _record("d2h", self._a.nbytes, "ndarray.tolist")
        return self._a.tolist()

    def tobytes(self, order="C"):
        _record("d2h", self._a.nbytes, "ndarray.tobytes")
        return self._a.tobytes(order)

    def __float__(self):
        return float(self._scalar("float(device array)"))

    def __int__(self):
        return int(self._scalar("int(device array)"))

    def __complex__(self):
        return complex(self._scalar("complex(device array)"))

    def __bool__(self):
        if self._a.size != 1:
            return bool(self._a)  # NumPy's (and CuPy's) ValueError for size != 1
        return bool(self._scalar("bool(device array)"))

    def __index__(self):
        if self._a.size != 1 or self._a.dtype.kind not in "iub":
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self._scalar("operator.index(device array)"))

    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return self._a.shape[0]

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __repr__(self):
        _record("d2h", self._a.nbytes, "repr(device array)")
        return repr(self._a)

    def __str__(self):
        _record("d2h", self._a.nbytes, "str(device array)")
        return str(self._a)

    def __format__(self, spec):
        _record("d2h", self._a.nbytes, "format(device array)")
        return format(self._a, spec)

    def __reduce__(self):
        _record("d2h", self._a.nbytes, "pickle(device array)")
        return (_rebuild, (np.array(self._a),))

    def __copy__(self):
        return ndarray._from(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._from(self._a.copy())

    # -- indexing
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            _record("h2d", value.nbytes, "ndarray.__setitem__ from host")
        elif type(value) in (list, tuple):
            if _has_host(value):
                raise _unsupported(value)
        self._a[_index(key)] = _un_host_ok(value)

    # -- NumPy protocol: dispatch to the façade (CuPy does the same)
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            raise TypeError(
                f"cuda-sim: numpy.{ufunc.__name__}.{method} was called with a device array; "
                f"NumPy's ufunc methods run on the host. Use the array namespace "
                f"(xp.{ufunc.__name__}.{method}, cupyx.scatter_add for add.at)"
            )
        fn = getattr(_NS, ufunc.__name__, None)
        if fn is None:
            return NotImplemented
        for v in inputs:
            if isinstance(v, np.ndarray):
                raise _unsupported(v)
        return fn(*inputs, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        mod = func.__module__ or "numpy"
        target = _NS
        for part in mod.split(".")[1:]:
            target = getattr(target, part, None)
            if target is None:
                return NotImplemented
        fn = getattr(target, func.__name__, None)
        if fn is None or not callable(fn):
            return NotImplemented
        return fn(*args, **kwargs)

    # -- methods
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return _wrap(self._a.astype(dtype, order=order, copy=copy))

    def view(self, dtype=None, array_class=None):
        if array_class is not None:
            raise TypeError("cuda-sim: ndarray.view(array_class=...) is not simulated")
        return _wrap(self._a.view() if dtype is None else self._a.view(dtype))

    def fill(self, value):
        if isinstance(value, np.ndarray):
            raise _unsupported(value)
        self._a.fill(_un(value))

    def scatter_add(self, slices, value):
        _scatter("add", self, slices, value)

    def scatter_max(self, slices, value):
        _scatter("maximum", self, slices, value)

    def scatter_min(self, slices, value):
        _scatter("minimum", self, slices, value)

    def reduced_view(self, dtype=None):
        return self

    def __getattr__(self, name):
        # the rest of cupy.ndarray's methods, run by NumPy (only names CuPy has)
        if name.startswith("__") or name not in _NDARRAY_METHODS:
            raise AttributeError(
                f"'cupy.ndarray' object has no attribute {name!r}"
                + (
                    " (cuda-sim: only CuPy's ndarray API is simulated)"
                    if hasattr(np.ndarray, name)
                    else ""
                )
            )
        meth = getattr(self._a, name)
        check = _METHOD_SIGS.get(name)

        def call(*args, **kwargs):
            if check is not None:
                try:
                    check.bind(self, *args, **kwargs)
                except TypeError as exc:
                    raise TypeError(f"cupy.ndarray.{name}: {exc}") from None
            return _wrap(meth(*_un(args, f"ndarray.{name}"), **_un(kwargs, f"ndarray.{name}")))

        return call


for _name in (
    "__add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ "
    "__floordiv__ __rfloordiv__ __mod__ __rmod__ __pow__ __rpow__ __matmul__ __rmatmul__ "
    "__and__ __rand__ __or__ __ror__ __xor__ __rxor__ __lshift__ __rlshift__ __rshift__ "
    "__rrshift__ __divmod__ __rdivmod__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ "
    "__iadd__ __isub__ __imul__ __itruediv__ __ifloordiv__ __imod__ __ipow__ __iand__ "
    "__ior__ __ixor__ __ilshift__ __irshift__"
).split():
    setattr(ndarray, _name, _binop(_name))
for _name in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(ndarray, _name, _unop(_name))


def _rebuild(host):
    return ndarray._from(host)


class _Flat:
    """``cupy.flatiter``: indexing into the flattened array."""

    def __init__(self, arr):
        self._arr = arr

    def __getitem__(self, key):
        k = _index(key)
        return _wrap(self._arr._a.flat[k[0] if len(k) == 1 else k])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            _record("h2d", value.nbytes, "flatiter.__setitem__ from host")
        self._arr._a.flat[key] = _un_host_ok(value)

    def __len__(self):
        return self._arr._a.size


class _MemoryPointer:
    def __init__(self, a):
        self.ptr = a.ctypes.data
        self.mem = a
        self.device_id = 0

    def __int__(self):
        return self.ptr


def _scatter(op, a, slices, value):
    if type(a) is not ndarray:
        raise TypeError(f"cupyx.scatter_{op}: a must be a cupy.ndarray, got {type(a)}")
    if isinstance(value, np.ndarray):
        raise _unsupported(value)
    getattr(np, op).at(a._a, _index(slices), _un(value))


# ----------------------------------------------------------------------------- functions

# names whose CuPy function returns host values (not 0-d arrays)
_HOST_RESULT = frozenset(
    "ndim shape size isscalar may_share_memory shares_memory result_type can_cast "
    "promote_types min_scalar_type common_type iscomplexobj isrealobj isfortran issubdtype "
    "get_array_module binary_repr base_repr array_repr array_str broadcast_shapes "
    "get_printoptions set_printoptions printoptions finfo iinfo dtype mintypecode "
    "typename format_float_positional format_float_scientific".split()
)
# names that accept host data (the transfer functions)
_FROM_HOST = frozenset("array asarray asanyarray ascontiguousarray asfortranarray".split())
# names whose result size depends on the data: CuPy reads a count back (a sync)
_DATA_SHAPE = frozenset("nonzero argwhere flatnonzero unique extract compress".split())


def _signature(obj):
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _function(qual: str, name: str, np_fn, cp_fn):
    sig = _signature(cp_fn) if inspect.isfunction(cp_fn) else None
    host_result = name in _HOST_RESULT
    from_host = name in _FROM_HOST
    random_dtype = qual == "cupy.random." and sig is not None and "dtype" in sig.parameters

    @functools.wraps(np_fn)
    def call(*args, **kwargs):
        if sig is not None:
            try:
                sig.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{qual}{name}: {exc} (CuPy's signature is {sig})") from None
        if from_host:
            return _transfer_in(name, np_fn, args, kwargs)
        if name in _DATA_SHAPE:
            _record("sync", 0, f"{qual}{name} (data-dependent size)")
        cast = None
        if random_dtype and "dtype" in kwargs:  # cupy.random's draws take dtype=
            cast = kwargs.pop("dtype")
        r = np_fn(*_un(args, qual + name), **_un(kwargs, qual + name))
        if cast is not None:
            r = np.asarray(r).astype(cast, copy=False)
        if host_result:
            return r
        if isinstance(r, (bool, int, float, complex)) and not isinstance(r, np.generic):
            return ndarray._from(np.asarray(r))
        return _wrap(r)

    call.__wrapped_cupy__ = cp_fn
    return call


def _transfer_in(name, np_fn, args, kwargs):
    if not args:
        return _wrap(np_fn(*args, **kwargs))
    src = args[0]
    kwargs = {k: v for k, v in kwargs.items() if k not in ("blocking",)}
    if type(src) is ndarray:
        r = np_fn(src._a, *args[1:], **kwargs)
        return ndarray._from(r) if r is not src._a else src
    host = np_fn(_un_host_ok(src), *args[1:], **kwargs)
    if np.isscalar(host) or isinstance(host, np.generic):
        host = np.asarray(host)
    if not _contains_device(src):
        _record("h2d", host.nbytes, f"cupy.{name} from host")
    if host is src:
        host = host.copy()
    return ndarray._from(np.array(host, copy=False) if host.flags.owndata else host.copy())


def _contains_device(v) -> bool:
    if type(v) is ndarray:
        return True
    if type(v) in (tuple, list):
        return any(_contains_device(x) for x in v)
    return False


class ufunc:
    """``cupy.ufunc`` run by the NumPy ufunc of the same name."""

    def __init__(self, np_ufunc, name):
        self._u = np_ufunc
        self.__name__ = self.name = name
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def __call__(self, *args, **kwargs):
        bad = set(kwargs) - {"out", "dtype", "casting"}
        if bad:
            raise TypeError(f"cupy.{self.name}: unexpected keyword arguments {sorted(bad)}")
        for v in args:
            if isinstance(v, np.ndarray):
                raise _unsupported(v)
        out = kwargs.get("out")
        r = self._u(*_un(args), **_un(kwargs))
        if out is not None:
            return out
        return _wrap(r)

    def _method(self, method, *args, **kwargs):
        for v in args:
            if isinstance(v, np.ndarray):
                raise _unsupported(v)
        r = getattr(self._u, method)(*_un(args), **_un(kwargs))
        return None if method == "at" else _wrap(r)

    def reduce(self, *a, **k):
        return self._method("reduce", *a, **k)

    def accumulate(self, *a, **k):
        return self._method("accumulate", *a, **k)

    def reduceat(self, *a, **k):
        return self._method("reduceat", *a, **k)

    def outer(self, *a, **k):
        return self._method("outer", *a, **k)

    def at(self, a, indices, b=None):
        if type(a) is not ndarray:
            raise _unsupported(a)
        if isinstance(b, np.ndarray):
            raise _unsupported(b)
        args = (a._a, _index(indices)) + (() if b is None else (_un(b),))
        self._u.at(*args)

    def __repr__(self):
        return f"<ufunc '{self.name}' (cuda-sim)>"


class _Namespace(types.ModuleType):
    """A module whose missing names raise as a missing CuPy attribute would."""

    def __getattr__(self, name):
        raise AttributeError(
            f"module {self.__name__!r} has no attribute {name!r} (cuda-sim reaches only the "
            "names the installed CuPy has, and of those only the ones NumPy can run)"
        )


_MISSING = object()


def _build(cp_mod, np_mod, qual: str, ns: types.ModuleType, skip=()) -> list[str]:
    """Fill ``ns`` with ``cp_mod``'s public names, run by ``np_mod``; return the names of
    ``cp_mod`` that could not be simulated (NumPy lacks them)."""
    missing = []
    for name in dir(cp_mod):
        if name.startswith("_") or name in skip or hasattr(ns, name):
            continue
        cp_obj = getattr(cp_mod, name, None)
        np_obj = getattr(np_mod, name, _MISSING)
        if np_obj is _MISSING and np_mod is np:
            np_obj = getattr(np.exceptions, name, _MISSING)
        if isinstance(cp_obj, types.ModuleType):
            continue
        if np_obj is _MISSING and (cp_obj is None or isinstance(cp_obj, (float, int, str))):
            np_obj = cp_obj  # constants (NaN, Inf, ...)
        if np_obj is _MISSING:
            missing.append(name)
            continue
        if isinstance(np_obj, np.ufunc):
            setattr(ns, name, ufunc(np_obj, name))
        elif isinstance(np_obj, type) or not callable(np_obj):
            setattr(ns, name, np_obj)  # dtypes, exceptions, constants
        else:
            setattr(ns, name, _function(qual, name, np_obj, cp_obj))
    return missing


# ----------------------------------------------------------------------------- kernels


class _SimFunction:
    """``cupy.RawModule.get_function(name)``: launches through the CPU emulator."""

    def __init__(self, emu_kernel):
        self._k = emu_kernel
        self.name = emu_kernel.name
        self.shared_size_bytes = emu_kernel.shared_size_bytes
        self.max_threads_per_block = emu_kernel.max_threads_per_block
        self.num_regs = 0
        self.local_size_bytes = 0

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._k.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, v):
        self._k.max_dynamic_shared_size_bytes = v

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, **kw):
        if not isinstance(args, tuple):  # CuPy's launcher takes a tuple
            raise TypeError(f"kernel {self.name}: args must be a tuple, got {type(args)}")
        kw.pop("enable_cooperative_groups", None)
        if kw:
            raise TypeError(f"kernel {self.name}: unexpected keyword arguments {sorted(kw)}")
        conv = []
        for i, v in enumerate(args):
            if type(v) is ndarray:
                conv.append(v._a)
            elif isinstance(v, np.ndarray):
                raise TypeError(
                    f"kernel {self.name}: argument {i}: Unsupported type {type(v)} (a host "
                    "NumPy array cannot be a kernel argument; CuPy's launcher raises)"
                )
            elif isinstance(v, np.float64):
                conv.append(np.asarray(v))  # the emulator rejects Python-float subclasses
            elif isinstance(v, np.generic):
                conv.append(v)
            elif isinstance(v, bool):  # CuPy packs Python scalars as these C types
                conv.append(np.bool_(v))
            elif isinstance(v, int):
                conv.append(np.asarray(np.int64(v)))
            elif isinstance(v, float):
                conv.append(np.asarray(np.float64(v)))
            elif isinstance(v, complex):
                conv.append(np.complex128(v))
            else:
                raise TypeError(f"kernel {self.name}: argument {i}: Unsupported type {type(v)}")
        with _lock:
            _COUNTS["launches"] += 1
        self._k(grid, block, tuple(conv), shared_mem=shared_mem)


class RawModule:
    """``cupy.RawModule(code=..., options=...)`` compiled by the CPU emulator."""

    def __init__(
        self,
        code=None,
        *,
        path=None,
        options=(),
        backend="nvrtc",
        translate_cucomplex=False,
        enable_cooperative_groups=False,
        name_expressions=None,
        jitify=False,
    ):
        if (code is None) == (path is None):
            raise TypeError("Exactly one of `code` and `path` keyword arguments must be given.")
        if path is not None:
            with open(path) as fh:
                code = fh.read()
        self.code = code
        self.options = tuple(options)
        self._mod = None
        self._name = path or "<RawModule>"
        first = code.split("\n", 1)[0]
        if first.startswith("#line") and '"' in first:
            self._name = first.split('"')[1]

    def compile(self, log_stream=None):
        if self._mod is None:
            from gpugrad.backend import emu

            opts = tuple(o for o in self.options if o not in ("-std=c++17", "--std=c++17"))
            self._mod = emu.EmuModule(self.code, name=self._name, options=opts)
        return self._mod

    def get_function(self, name):
        return _SimFunction(self.compile().get_function(name))


class RawKernel:
    """``cupy.RawKernel(code, name)``."""

    def __init__(self, code, name, options=(), **kw):
        self._fn = None
        self._mod = RawModule(code=code, options=options)
        self.name = name

    def __call__(self, grid, block, args, **kw):
        if self._fn is None:
            self._fn = self._mod.get_function(self.name)
        self._fn(grid, block, args, **kw)


# ----------------------------------------------------------------------------- cuda runtime

SIM_PROPS = {
    "name": b"cuda-sim (H100-shaped)",
    "totalGlobalMem": 80 * 2**30,
    "multiProcessorCount": 132,
    "sharedMemPerBlock": 48 * 1024,
    "major": 9,
    "minor": 0,
    "clockRate": 1980000,
    "memoryClockRate": 2619000,
    "memoryBusWidth": 5120,
    "l2CacheSize": 50 * 2**20,
    "warpSize": 32,
    "maxThreadsPerBlock": 1024,
}
SIM_ATTRS = {
    "MultiProcessorCount": 132,
    "MaxSharedMemoryPerBlock": 48 * 1024,
    "MaxSharedMemoryPerBlockOptin": 227 * 1024,
    "MaxThreadsPerBlock": 1024,
    "WarpSize": 32,
    "ComputeCapabilityMajor": 9,
    "ComputeCapabilityMinor": 0,
    "L2CacheSize": 50 * 2**20,
    "ClockRate": 1980000,
    "MemoryClockRate": 2619000,
    "GlobalMemoryBusWidth": 5120,
    "CooperativeLaunch": 1,
}


def _build_cuda():
    cuda = _Namespace("cupy.cuda")

    class Device:
        def __init__(self, device=None):
            self.id = int(device or 0)
            if self.id != 0:
                raise RuntimeError(
                    "cudaErrorInvalidDevice: invalid device ordinal (cuda-sim has one)"
                )

        attributes = property(lambda self: dict(SIM_ATTRS))
        compute_capability = "90"
        pci_bus_id = "0000:00:00.0"
        mem_info = property(
            lambda self: (SIM_PROPS["totalGlobalMem"] - _POOL.used, SIM_PROPS["totalGlobalMem"])
        )

        def use(self):
            pass

        def synchronize(self):
            _record("sync", 0, "Device.synchronize")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __eq__(self, other):
            return isinstance(other, Device) and other.id == self.id

        __hash__ = object.__hash__

        def __repr__(self):
            return f"<CUDA Device {self.id} (cuda-sim)>"

    class Stream:
        null = None

        def __init__(self, null=False, non_blocking=False, ptr=0):
            self.ptr = 0 if null else id(self)

        def synchronize(self):
            _record("sync", 0, "Stream.synchronize")

        def use(self):
            return self

        def record(self, event=None):
            event = event or Event()
            return event

        def wait_event(self, event):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self, mode=None):
            raise RuntimeError("cuda-sim does not simulate CUDA graph capture")

        @property
        def done(self):
            return True

    Stream.null = Stream(null=True)

    class Event:
        def __init__(self, block=False, disable_timing=False, interprocess=False):
            import time

            self._t = time.perf_counter

        def record(self, stream=None):
            self.t = self._t()

        def synchronize(self):
            _record("sync", 0, "Event.synchronize")

        @property
        def done(self):
            return True

    def get_elapsed_time(start, end):
        return (end.t - start.t) * 1000.0

    runtime = _Namespace("cupy.cuda.runtime")
    runtime.getDevice = lambda: 0
    runtime.getDeviceCount = lambda: 1
    runtime.getDeviceProperties = lambda i: dict(SIM_PROPS)
    runtime.deviceSynchronize = lambda: _record("sync", 0, "runtime.deviceSynchronize")
    runtime.memGetInfo = lambda: Device(0).mem_info
    runtime.runtimeGetVersion = lambda: 12090
    runtime.driverGetVersion = lambda: 12090
    runtime.setDevice = lambda i: Device(i)
    runtime.CUDARuntimeError = RuntimeError
    nvrtc = _Namespace("cupy.cuda.nvrtc")
    nvrtc.getVersion = lambda: (12, 9)
    cuda.Device, cuda.Stream, cuda.Event, cuda.runtime, cuda.nvrtc = (
        Device,
        Stream,
        Event,
        runtime,
        nvrtc,
    )
    cuda.get_elapsed_time = get_elapsed_time
    cuda.get_current_stream = lambda device=None: Stream.null
    cuda.get_device_id = lambda: 0
    cuda.is_available = lambda: True
    cuda.MemoryPool = _Pool
    cuda.PinnedMemoryPool = _Pool
    cuda.Function = _SimFunction
    return cuda


# ----------------------------------------------------------------------------- assembly

_NS = None
_X = None
_NDARRAY_METHODS: frozenset = frozenset()
_METHOD_SIGS: dict = {}
_NOT_SIMULATED: dict = {}

_REDUCTION_METHODS = "sum prod max min mean var std all any argmax argmin cumsum cumprod".split()


def namespace():
    """The simulated ``cupy`` module (built once; needs CuPy installed for its namespace)."""
    global _NS
    if _NS is None:
        with _lock:
            if _NS is None:
                _NS = _make()
    return _NS


def cupyx_namespace():
    """The simulated ``cupyx`` module (``scatter_add``, ``scipy.special``, ...)."""
    namespace()
    return _X


def _make():
    global _NDARRAY_METHODS, _METHOD_SIGS, _X
    import cupy
    import cupyx
    import cupyx.scipy.special

    _NDARRAY_METHODS = frozenset(n for n in dir(cupy.ndarray) if not n.startswith("_"))
    for m in _REDUCTION_METHODS:
        fn = getattr(cupy, m, None)
        sig = _signature(fn) if inspect.isfunction(fn) else None
        if sig is not None:
            _METHOD_SIGS[m] = sig

    ns = _Namespace("cupy")
    ns.__doc__ = "cuda-sim: a CuPy-compatible façade over NumPy (gpugrad.backend.cudasim)"
    ns.__version__ = cupy.__version__
    ns.ndarray = ndarray
    ns.ufunc = ufunc
    ns.RawModule = RawModule
    ns.RawKernel = RawKernel
    ns.cuda = _build_cuda()
    ns.get_default_memory_pool = lambda: _POOL
    ns.get_default_pinned_memory_pool = lambda: _PINNED
    ns.is_available = lambda: True

    def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
        if type(a) is ndarray:
            return a.get(order=order, out=out)
        return np.asarray(a, order=order)

    def get_array_module(*args):
        return ns if any(type(a) is ndarray for a in args) else np

    def fuse(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f

    ns.asnumpy, ns.get_array_module, ns.fuse = asnumpy, get_array_module, fuse
    _NOT_SIMULATED["cupy"] = _build(
        cupy, np, "cupy.", ns, skip=("ElementwiseKernel", "ReductionKernel", "fromDlpack")
    )
    for sub in ("linalg", "fft", "random", "lib", "testing"):
        cp_sub = getattr(cupy, sub, None)
        np_sub = getattr(np, sub, None)
        if cp_sub is None or np_sub is None:
            continue
        s = _Namespace(f"cupy.{sub}")
        _NOT_SIMULATED[f"cupy.{sub}"] = _build(cp_sub, np_sub, f"cupy.{sub}.", s)
        setattr(ns, sub, s)
    # cupy.lib.stride_tricks.as_strided exists in CuPy: views of device memory
    st = _Namespace("cupy.lib.stride_tricks")
    _build(cupy.lib.stride_tricks, np.lib.stride_tricks, "cupy.lib.stride_tricks.", st)
    ns.lib.stride_tricks = st

    x = _Namespace("cupyx")
    x.scatter_add = lambda a, slices, value: _scatter("add", a, slices, value)
    x.scatter_max = lambda a, slices, value: _scatter("maximum", a, slices, value)
    x.scatter_min = lambda a, slices, value: _scatter("minimum", a, slices, value)
    x.allow_synchronize = allow_synchronize
    x.DeviceSynchronized = _sync_error()
    x.errstate = np.errstate
    x.seterr, x.geterr = np.seterr, np.geterr
    scipy_ns = _Namespace("cupyx.scipy")
    special = _Namespace("cupyx.scipy.special")
    try:
        import scipy.special as sps

        _NOT_SIMULATED["cupyx.scipy.special"] = _build(
            cupyx.scipy.special, sps, "cupyx.scipy.special.", special
        )
    except ImportError:  # pragma: no cover - scipy is a test dependency
        pass
    scipy_ns.special = special
    x.scipy = scipy_ns
    _X = x
    from . import dispatch  # noqa: PLC0415 - the report knows cuda-sim once it is built

    dispatch.register_report_section(REPORT_SECTION, _report_section, reset=reset)
    return ns


REPORT_SECTION = "transfers (cuda-sim)"


def _report_section():
    """The :func:`summary` in ``gg.kernels.report()`` (counted only on cuda-sim)."""
    from gpugrad import backend  # noqa: PLC0415 - backend imports this module lazily

    if backend.device() != "cuda-sim":
        return f"not counted on {backend.device()} (only on cuda-sim)"
    return summary()


def not_simulated() -> dict:
    """Per CuPy module, the public names the façade cannot run (NumPy lacks them)."""
    namespace()
    return {k: list(v) for k, v in _NOT_SIMULATED.items()}


def __getattr__(name):  # ``cudasim.cuda`` after the namespace is built
    if name == "cuda":
        return namespace().cuda
    raise AttributeError(name)
