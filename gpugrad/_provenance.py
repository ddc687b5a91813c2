"""Provenance of device arrays while ``gg.dlaccelerate`` traces on the cuda path.

On ``cpu`` and ``emu`` the traced code sees its arrays as ``Tainted`` NumPy views
(``gpugrad/_taint.py``), so an array computed from traced data by code the recorder
did not see carries the mark. CuPy arrays (and the ``cuda-sim`` façade's) cannot be
marked, so on ``cuda`` and ``cuda-sim`` the recorder turns the question around and
accepts an array it meets only when it knows where the array came from:

* *named*: an input of the call, or the result of a recorded primitive or host
  call (replayed), or the data of a dlarray the function reaches through its
  closure (read live on every replay);
* *clean*: made during the trace, outside the recorded calls, by a call of the
  ``xp`` namespace (``xp.zeros((), dtype)``, ``xp.ones(shape)``, ``xp.eye(n)``,
  ``xp.asarray(host_value)``...) whose device-array arguments are all clean
  themselves. Such an array is a function of shapes, dtypes and host values only,
  so the replay holds it as a constant. While a trace records, ``backend.xp()`` is
  a thin wrapper (:class:`TracingXP`) that notes these results.

Any other device array (the result of ``x._data * 2``, ``x._data[mask]``,
``cupy.exp(x._data)`` with ``cupy`` imported directly, or of an ``xp`` call that
read a traced array) may hold traced data: the recorder refuses to bake it in, and
that call pattern runs eagerly with a warning, as on ``cpu``. An ``xp`` call at
depth 0 that writes in place (``out=``, ``xp.copyto``, ``ufunc.at`` ...) into a
named array, or into a clean one from unclean data, is refused the same way. On
``cuda-sim`` every device-to-host read or synchronisation outside the recorded calls
(``x._data.get()``, ``float(x._data)``, ``bool(x._data.any())``) escapes too; on a
real GPU CuPy gives no hook for those, so raw CuPy reads of ``x._data`` inside an
accelerated function are not detected there (the dlarray methods ``float(x)``,
``x.item()``, ``x.numpy()`` are, on every device).
"""

from __future__ import annotations

import threading
import types

import numpy as np

from . import backend
from .array import dlarray
from .ops import core

# namespace functions whose first argument is written in place
_WRITES_FIRST = frozenset(("copyto", "put", "place", "putmask", "fill_diagonal", "at"))


def _device_arrays(value, out, depth=0):
    """Append the device arrays in ``value`` (through tuples, lists, dicts) to ``out``;
    False when ``value`` holds something that could carry traced data unseen (a
    dlarray)."""
    t = type(value)
    if t is tuple or t is list:
        if depth > 3:
            return True
        return all(_device_arrays(v, out, depth + 1) for v in value)
    if t is dict:
        return all(_device_arrays(v, out, depth + 1) for v in value.values())
    if backend.is_device_array(value):
        out.append(value)
        return True
    return type(value) is not dlarray


class _Fn:
    """An ``xp`` function (or a ufunc's method) that notes clean results while a trace
    records; otherwise it only forwards the call."""

    __slots__ = ("_f", "_name")

    def __init__(self, f, name):
        self._f = f
        self._name = name

    def __call__(self, *args, **kwargs):
        rec = core.RECORDER
        if rec is None or rec.depth or threading.get_ident() != rec.thread:
            return self._f(*args, **kwargs)
        out = self._f(*args, **kwargs)
        note_call(rec, self._name, args, kwargs, out)
        return out

    def __getattr__(self, name):
        attr = getattr(self._f, name)
        if callable(attr) and not isinstance(attr, type):
            return _Fn(attr, name)
        return attr

    def __repr__(self):
        return f"<traced {self._f!r}>"


def note_call(rec, name, args, kwargs, out):
    """Mark ``out`` clean when the call read no traced or unknown device array; refuse
    an unseen in-place write into a named array or a clean one."""
    inputs = []
    known = _device_arrays(args, inputs) and _device_arrays(kwargs, inputs)
    clean = rec.clean
    is_clean = known and all(id(a) in clean for a in inputs)
    targets = []
    if kwargs.get("out") is not None:
        _device_arrays(kwargs["out"], targets)
    if name in _WRITES_FIRST and args:
        _device_arrays(args[0], targets)
    for t in targets:
        if rec.is_dynamic(t):
            rec.escape_data(f"xp.{name} wrote into a traced array")
        elif not is_clean:
            clean.pop(id(t), None)
    if is_clean:
        results = []
        _device_arrays(out, results)
        for r in results:
            clean[id(r)] = r  # kept alive: its id is not reused during the trace


class TracingXP(types.ModuleType):
    """``backend.xp()`` while a trace records on the cuda path: the real namespace,
    with its functions wrapped in :class:`_Fn` (submodules such as ``linalg`` too)."""

    def __init__(self, module):
        super().__init__(module.__name__)
        self.__dict__["_module"] = module
        self.__dict__["_cache"] = {}

    def __getattr__(self, name):
        cache = self.__dict__["_cache"]
        hit = cache.get(name)
        if hit is not None:
            return hit
        attr = getattr(self.__dict__["_module"], name)
        if isinstance(attr, types.ModuleType):
            wrapped = TracingXP(attr)
        elif callable(attr) and not isinstance(attr, type) and not isinstance(attr, np.dtype):
            wrapped = _Fn(attr, name)
        else:
            wrapped = attr
        cache[name] = wrapped
        return wrapped

    def __repr__(self):
        return f"<traced namespace {self.__dict__['_module'].__name__}>"


_PROXIES = {}  # id(module) -> its TracingXP (one per namespace, reused across traces)


def proxy(module):
    p = _PROXIES.get(id(module))
    if p is None or p.__dict__["_module"] is not module:
        p = _PROXIES[id(module)] = TracingXP(module)
    return p


_VALUE = (int, float, complex, bool, str, bytes, type(None), slice, np.dtype, np.generic, type)


def _clean_inputs(rec, value, depth=0):
    """Whether ``value`` holds nothing but clean device arrays and plain values."""
    t = type(value)
    if t is tuple or t is list:
        return depth < 4 and all(_clean_inputs(rec, v, depth + 1) for v in value)
    if t is dict:
        return depth < 4 and all(_clean_inputs(rec, v, depth + 1) for v in value.values())
    if t is dlarray:
        return id(value._data) in rec.clean and value._grad is None
    if backend.is_device_array(value):
        return id(value) in rec.clean
    return isinstance(value, _VALUE)


def note_recorded(rec, args, kwargs, out):
    """After a recorded call that drew no random numbers and changed no state: when it
    read clean arrays and plain values only, its results are clean too (the replay
    recomputes them, and reading them on the host decides nothing traced)."""
    if not (_clean_inputs(rec, args) and _clean_inputs(rec, kwargs)):
        return
    results = []
    stack = [out]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dlarray:
            results.append(v._data)
        elif t is tuple or t is list:
            stack.extend(v)
        elif t is dict:
            stack.extend(v.values())
        elif backend.is_device_array(v):
            results.append(v)
    for r in results:
        rec.clean[id(r)] = r


def derived(out, *sources):
    """``out`` (made by an array method on ``sources``, e.g. ``raw.astype(dt)``), marked
    clean while a trace records when every source is clean."""
    rec = core.RECORDER
    if rec is not None and rec.depth == 0 and threading.get_ident() == rec.thread:
        if all(id(s) in rec.clean for s in sources):
            rec.clean[id(out)] = out
    return out


def _read_arrays(frame, cls):
    """The façade arrays in the locals of the two frames that asked for a transfer."""
    found = []
    for _ in range(2):
        if frame is None:
            break
        for v in frame.f_locals.values():
            if type(v) is cls:
                found.append(v)
            elif type(v) is tuple:
                found.extend(x for x in v if type(x) is cls)
        frame = frame.f_back
    return found


def _sync_watch(rec):
    """On ``cuda-sim``: a transfer counter that escapes a device-to-host read or a
    synchronisation made outside the recorded calls, unless it reads clean arrays only
    (else None: a real GPU offers no such hook)."""
    if backend.device() != "cuda-sim":
        return None
    import sys

    from .backend import cudasim

    class Watch(cudasim.Transfers):
        def _add(self, kind, what, nbytes, site, op):
            if kind == "h2d" or rec.depth or threading.get_ident() != rec.thread:
                return
            # _add <- cudasim._record <- the façade method that reads (and its caller)
            read = _read_arrays(sys._getframe(2), cudasim.ndarray)
            if not read or any(id(a) not in rec.clean for a in read):
                rec.escape_data(
                    f"a device-to-host read ({what or kind}) of a device array outside the "
                    "recorded calls"
                )

    return Watch()


class Tracking:
    """Installs the provenance tracking for one traced call on the cuda path (nothing
    on ``cpu``/``emu``, where ``Tainted`` arrays do the job)."""

    def __init__(self, rec):
        self.rec = rec
        self.active = backend.is_cuda()
        self.watch = None

    def __enter__(self):
        if self.active:
            self.rec.device_path = True
            state = backend._state
            self.xp = state["xp"]
            state["xp"] = proxy(self.xp)
            self.watch = _sync_watch(self.rec)
            if self.watch is not None:
                self.watch.__enter__()
        return self

    def __exit__(self, *exc):
        if self.active:
            if self.watch is not None:
                self.watch.__exit__(*exc)
            backend._state["xp"] = self.xp
        return False
