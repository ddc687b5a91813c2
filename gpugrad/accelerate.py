"""``gg.dlaccelerate``: trace a function once per kind of input, replay it afterwards.

The first call with a new *cache key* runs the function eagerly while a recorder
notes every primitive it computes: each forward, each raw first-order derivative
rule of the backward walk, each cotangent sum and broadcast reduction, and each
piece of raw-array code marked ``@host_call`` (random draws, optimizer steps,
running statistics). The notes become one straight-line Python function over the
primitives' raw array functions; later calls with the same key run that function
and skip the engine's bookkeeping (nodes, formats, memory accounting), which is most
of the cost of a small function.

Tracing happens at the primitive level, not the array level: a primitive's raw
forward may create arrays and fill them in place; replaying its call repeats that,
where an array-level tape would bake the first call's arrays in as constants.

The cache key: the structure of the arguments (containers, dict keys, Layer classes
and identities), each dlarray's shape, dtype, format and traced-ness, other
arguments by value (or identity for objects), the same for the values the function
reaches through its closure and the module globals it names, the function's code,
the device and the training mode. Arrays are read afresh on every call.

Guards (never silently wrong):

* a traced value leaving for Python (``float(x)``, ``bool(x)``, ``x.item()``,
  ``x.numpy()``, ``np.asarray(x)``, ``gg.extractdata(x)``) while tracing makes that
  key run eagerly from then on, with one warning naming the line;
* random draws are replayed as draws (fresh numbers, the same ones eager would draw);
* on ``cuda``/``cuda-sim`` device arrays carry no taint: a device array the recorder
  meets must be an input, a recorded result, closure data read live, or *clean* (made
  by a ``gg.backend.xp()`` call on shapes and host values only); any other makes the
  key run eagerly with a warning (see ``gpugrad/_provenance.py`` for the rule);
* dlarrays the function reaches without taking them as arguments (closures, object
  attributes) are read live, with their shape and dtype checked on every replay;
* the first replay of a key whose trace has no side effects is checked against an
  eager run (values within ``CheckTolerance``); a difference makes that key eager
  with a warning. ``CheckMode = "tolerance"`` checks every replay, side effects
  included (eager runs on copies of the arguments and closure).

>>> import gpugrad as gg
>>> @gg.accelerate
... def rosenbrock(x):
...     y = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
...     return y, gg.dlgradient(y, x)
>>> for start in ([-1.0, 2.0], [0.5, 0.5], [1.0, 1.0]):
...     y, g = gg.dlfeval(rosenbrock, gg.dlarray(start))
>>> float(y), g.numpy().tolist()
(0.0, [0.0, 0.0])
>>> rosenbrock.HitRate, rosenbrock.Occupancy
(66.66666666666667, 2.0)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import operator
import os
import sys
import threading
import types
import warnings
from collections import OrderedDict

import numpy as np

from . import _accel_graph, _provenance, backend, tape
from . import random as _random
from ._taint import Tainted, plain, taint
from .array import dlarray
from .ops import core
from .tree import is_container as tree_is_container
from .tree import leaves, map_arrays

__all__ = ["dlaccelerate", "accelerate", "AcceleratedFunction"]

_LITERAL = (int, bool, type(None))  # interned: exact literals, never a recorded value
_VALUE_TYPES = frozenset((int, float, complex, bool, str, bytes, type(None), range))
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_TRACE_LOCK = threading.Lock()
# why: taint tracking (gpugrad/_taint.py) is what keeps raw code outside the
# primitives from being baked into a replay; it only works on NumPy arrays
_TAINT = True
_FRAME = tape.FRAME
_BACKEND = backend._state


class _Stale(Exception):
    """A replay found a captured array with a new shape or dtype: trace again."""


class _Eager:
    """Cache entry of a key that runs eagerly (a value escaped while tracing)."""

    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason


# ------------------------------------------------------------------ the recorder


def _user_site():
    """``file:line`` of the innermost frame outside gpugrad (for warnings)."""
    f = sys._getframe(1)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not path.startswith(_PACKAGE_DIR):
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return "<unknown>"


def _level():
    """``stacklevel`` of the innermost caller outside gpugrad (warnings point there)."""
    f = sys._getframe(2)
    level = 2
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_PACKAGE_DIR):
        f = f.f_back
        level += 1
    return level


def _rebuild(template, values):
    it = iter(values)
    return map_arrays(lambda _: next(it), template)


class _Recorder:
    """Turns the calls made during one traced run into Python source."""

    def __init__(self, live):
        self.thread = threading.get_ident()
        self.depth = 0  # >0 inside a recorded call: its inner calls are part of it
        self.names = {}  # id(object) -> its name in the generated code
        self.keep = []  # every named object stays alive, so ids are not reused
        self.lines = []
        self.prologue = []
        self.ns = {"_mk": core.make, "_Stale": _Stale, "_rebuild": _rebuild}
        self.counter = itertools.count()
        self.consts = {}  # id -> constant name
        self.live = live  # id(raw) -> dlarray reachable from the function (read live)
        self.escaped = None
        self.data_escape = False
        self.unsupported = None
        self.mutates = False
        self.calls = 0
        self.primitives = set()  # names of the primitives the trace calls
        self.host_state = []  # why a graph cannot hold this trace (host-side effects)
        # host calls a graph stages (random draws, in-place updates): see _accel_graph
        self.staged = []
        self.live_used = []  # the dlarrays whose arrays the replay reads live
        self.clean = {}  # id -> device array made from shapes and host values (cuda path)
        self.device_path = False  # set by _provenance.Tracking on cuda and cuda-sim

    # names ---------------------------------------------------------------
    def _name(self, obj, prefix="s"):
        name = f"{prefix}{next(self.counter)}"
        self.names[id(obj)] = name
        self.keep.append(obj)
        return name

    def const(self, obj):
        name = self.consts.get(id(obj))
        if name is None:
            name = f"k{next(self.counter)}"
            self.consts[id(obj)] = name
            self.ns[name] = obj
        return name

    def is_dynamic(self, raw):
        return id(raw) in self.names or id(raw) in self.live

    def expr(self, v):
        """Source text giving ``v`` at replay time."""
        t = type(v)
        if t in _LITERAL:
            return repr(v)
        name = self.names.get(id(v))
        if name is not None:
            return name
        if t is tuple:
            return "(" + "".join(self.expr(x) + ", " for x in v) + ")"
        if t is list:
            return "[" + ", ".join(self.expr(x) for x in v) + "]"
        if t is dict:
            return "{" + ", ".join(f"{self.const(k)}: {self.expr(x)}" for k, x in v.items()) + "}"
        if t is dlarray:
            inner = self.expr(v._data)
            if inner.startswith("k"):
                return self.const(v)  # a constant dlarray: the object itself (read live)
            return f"_mk({inner}, {v._fmt!r})"
        owner = self.live.get(id(v))
        if owner is not None:
            self.live_used.append(owner)
            name = self._name(v, "c")
            self.prologue.append(f"{name} = {self.const(owner)}._data")
            self.prologue.append(
                f"if {name}.shape != {self.const(v.shape)} or {name}.dtype != "
                f"{self.const(v.dtype)}: raise _Stale"
            )
            return name
        if type(v) is Tainted:
            # why: an array computed from traced data by code the recorder did not see;
            # baking it in as a constant would replay the first call's values forever
            self.escape_data("an array computed from traced data")
        elif (
            backend.is_device_array(v) and not isinstance(v, np.ndarray) and id(v) not in self.clean
        ):
            # why: device arrays carry no taint; one of unknown provenance may hold
            # traced data (see gpugrad/_provenance.py), so only clean ones are constants
            self.escape_data(
                "a device array of unknown provenance (made outside the recorded calls, "
                "and not by a gg.backend.xp() call on shapes and host values only; "
                "on cuda, raw CuPy code on x._data is not replayed)"
            )
        if hasattr(v, "__gg_flatten__") and not isinstance(v, type):
            vals = []
            map_arrays(lambda d: vals.append(self.expr(d)), v)
            if any(not x.startswith("k") for x in vals):
                return f"_rebuild({self.const(v)}, [{', '.join(vals)}])"
        return self.const(v)

    def target(self, out, follow):
        """Assignment target for a call's result; registers the values it holds."""
        t = type(out)
        if out is None:
            return "_"
        if t in _LITERAL:
            return "_"  # host calls' static ints (a value escaping to one is guarded)
        if t is tuple or t is list:
            if not out:
                return "_"
            return "(" + "".join(self.target(o, follow) + ", " for o in out) + ")"
        if self.names.get(id(out), "").startswith("o"):
            return "_"  # an input object handed back (e.g. the net of sgdmupdate)
        name = self._name(out)
        if t is dlarray:
            follow.append((name, out))
        elif t is dict:
            for k, v in out.items():
                follow.append((f"{name}[{self.const(k)}]", v))
        return name

    def emit(self, fn, args, kwargs, out):
        parts = [self.expr(a) for a in args]
        inline = _inline_code(fn, parts, kwargs, self)
        if inline is None:
            parts += [f"{k}={self.expr(v)}" for k, v in kwargs.items()]
            inline = f"{self.const(fn)}({', '.join(parts)})"
        follow = []
        tgt = self.target(out, follow)
        self.lines.append(f"{tgt} = {inline}")
        while follow:
            src, v = follow.pop()
            if type(v) is dlarray:
                if id(v._data) not in self.names:
                    name = self._name(v._data)
                    self.lines.append(f"{name} = {src}._data")
            elif type(v) is dict or type(v) is tuple or type(v) is list:
                items = v.items() if type(v) is dict else enumerate(v)
                for k, x in items:
                    follow.append(
                        (f"{src}[{k!r}]" if type(k) is int else f"{src}[{self.const(k)}]", x)
                    )
            elif type(v) not in _LITERAL and id(v) not in self.names:
                name = self._name(v)
                self.lines.append(f"{name} = {src}")
        self.calls += 1

    def _mine(self):
        return self.depth == 0 and threading.get_ident() == self.thread

    # hooks ----------------------------------------------------------------
    def wrap(self, fn, name=None):
        """A recording version of a raw array function (a primitive's fwd/fast)."""

        def recorded(*args, **kwargs):
            if self.depth or threading.get_ident() != self.thread:
                return fn(*args, **kwargs)
            self.depth += 1
            try:
                before = _random.get_state()
                out = fn(*plain(args), **plain(kwargs))
                self._drew(before, fn)
                pure = _random.get_state() == before  # (read at depth 1: not recorded)
            finally:
                self.depth -= 1
            out = _taint_out(out)
            self.emit(fn, args, kwargs, out)
            if self.device_path and pure:
                _provenance.note_recorded(self, args, kwargs, out)
            if name is not None:
                self.primitives.add(name)
            return out

        return recorded

    def host_call(self, fn, args, kwargs, mutates):
        if not self._mine():
            return fn(*args, **kwargs)
        self.depth += 1
        suspended = _suspend(args, kwargs)
        try:
            before = _random.get_state()
            out = fn(*plain(args), **plain(kwargs))
            drew = _random.get_state() != before
            pure = not mutates and not drew
        finally:
            self.depth -= 1
            _resume(suspended)
        if mutates:
            self.mutates = True
        out = _taint_out(out)
        line = len(self.lines)
        self.emit(fn, args, kwargs, out)
        if self.device_path and pure:
            _provenance.note_recorded(self, args, kwargs, out)
        if mutates or drew:  # a graph stages it (gpugrad/_accel_graph.py) or says why not
            self.staged.append(
                _accel_graph.StagedCall(line, self.const(fn), fn, mutates, drew, out)
            )
        return out

    def _drew(self, before, fn):
        """Note a call that advanced gg.random's generator (a graph would freeze it)."""
        if _random.get_state() != before:
            name = getattr(fn, "__qualname__", type(fn).__name__)
            self.host_state.append(f"a random draw in {name} (drawn on the host; not staged)")

    def escape(self, raw, how):
        if self._mine() and self.escaped is None and self.is_dynamic(raw):
            self.escaped = f"{how} at {_user_site()}"

    def refuse(self, what):
        """Code a replay cannot repeat faithfully (a custom derivative's foreign body
        and pullback, a gradient hook, distributed gradient hooks): run eagerly."""
        if threading.get_ident() == self.thread and self.unsupported is None:
            self.unsupported = f"{what} runs eagerly under gg.dlaccelerate"

    def escape_data(self, how):
        """Raw code outside the recorded calls computed on traced data (a ``Tainted``
        array reached a Python value, or is about to be baked in as a constant)."""
        if self._mine() and self.escaped is None:
            self.data_escape = True
            self.escaped = (
                f"{how} (gpugrad code on traced data outside its primitives) at {_user_site()}"
            )


# The raw functions whose call a replay writes out inline (the same Python operator the
# function applies, so the result is bitwise the same): no call overhead per op.
_INLINE = {}


def _inline_templates():
    if _INLINE:
        return _INLINE
    reg = core.REGISTRY
    binary = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/", "power": "**"}
    for name, op in binary.items():
        _INLINE[id(reg[name].fwd)] = lambda a, k, r, op=op: (
            f"({a[0]} {op} {a[1]})" if len(a) == 2 and not k else None
        )
    _INLINE[id(operator.add)] = _INLINE[id(reg["add"].fwd)]
    _INLINE[id(reg["negative"].fwd)] = lambda a, k, r: f"(-{a[0]})" if len(a) == 1 else None

    def power_const(a, k, r):
        if len(a) == 2 and not k:
            return f"({a[0]} ** {a[1]})"
        if len(a) == 1 and set(k) == {"p"}:
            return f"({a[0]} ** {r.expr(k['p'])})"
        return None

    _INLINE[id(reg["power_const"].fwd)] = power_const

    def getitem(a, k, r):
        if len(a) == 2 and not k:
            return f"{a[0]}[{a[1]}]"
        if len(a) == 1 and set(k) == {"idx"}:
            return f"{a[0]}[{r.expr(k['idx'])}]"
        return None

    _INLINE[id(reg["getitem"].fwd)] = getitem
    return _INLINE


def _inline_code(fn, parts, kwargs, rec):
    template = _inline_templates().get(id(fn))
    return None if template is None else template(parts, kwargs, rec)


def _taint_out(out):
    """A recorded call's result as the traced code sees it: arrays as ``Tainted``."""
    t = type(out)
    if t is dlarray:
        out._data = taint(out._data)
        return out
    if t is dict:
        for k, v in out.items():
            out[k] = _taint_out(v)
        return out
    if t is tuple:
        return tuple(_taint_out(x) for x in out)
    if t is list:
        return [_taint_out(x) for x in out]
    return taint(out)


def _suspend(args, kwargs):
    """Plain arrays in the dlarrays a host call reaches through its arguments (a Layer,
    an optimizer's model), so what it stores (optimizer moments, running statistics) is
    never a ``Tainted`` view; ``_resume`` puts the views back."""
    swapped = []
    for d in leaves((args, kwargs)):
        view = d._data
        if type(view) is Tainted:
            d._data = view.view(np.ndarray)
            swapped.append((d, view, d._data))
    return swapped


def _resume(swapped):
    for d, view, plain_view in swapped:
        if d._data is plain_view:
            d._data = view  # unchanged, or updated in place
        else:
            d._data = taint(d._data)  # rebound to a new array computed from the data


def _taint_inputs(value, rec, swapped, name=None):
    """``value`` with its plain arrays replaced by ``Tainted`` views (dlarrays in place,
    recorded in ``swapped`` for ``_untaint``); the views take the originals' names."""
    t = type(value)
    if t is dlarray:
        raw = value._data
        if type(raw) is np.ndarray:
            view = raw.view(Tainted)
            value._data = view
            swapped.append((value, raw, view))
            name = rec.names.get(id(raw))
            if name is not None:
                rec.names[id(view)] = name
                rec.keep.append(view)
            owner = rec.live.get(id(raw))
            if owner is not None:
                rec.live[id(view)] = owner
                rec.keep.append(view)
        return value
    if t is np.ndarray:
        view = value.view(Tainted)
        name = rec.names.get(id(value))
        if name is not None:
            rec.names[id(view)] = name
        rec.keep.append(view)
        return view
    if t is tuple:
        return tuple(_taint_inputs(x, rec, swapped) for x in value)
    if t is list:
        return [_taint_inputs(x, rec, swapped) for x in value]
    if t is dict:
        return {k: _taint_inputs(x, rec, swapped) for k, x in value.items()}
    if tree_is_container(value):
        for d in leaves(value):
            _taint_inputs(d, rec, swapped)
    return value


def _untaint_state(swapped, objs, result):
    """After a trace: the inputs, the arrays they reach and the result hold plain arrays."""
    for d, raw, view in swapped:
        if d._data is view:
            d._data = raw
    for d in leaves(objs):
        if type(d._data) is Tainted:
            d._data = d._data.view(np.ndarray)
        if type(d._grad) is Tainted:
            d._grad = d._grad.view(np.ndarray)
        elif type(d._grad) is dlarray and type(d._grad._data) is Tainted:
            d._grad._data = d._grad._data.view(np.ndarray)
    return _untaint_result(result)


def _untaint_result(v):
    t = type(v)
    if t is dlarray:
        if type(v._data) is Tainted:
            v._data = v._data.view(np.ndarray)
        return v
    if t is Tainted:
        return v.view(np.ndarray)
    if t is tuple:
        return tuple(_untaint_result(x) for x in v)
    if t is list:
        return [_untaint_result(x) for x in v]
    if t is dict:
        return {k: _untaint_result(x) for k, x in v.items()}
    if tree_is_container(v):
        for d in leaves(v):
            _untaint_result(d)
    return v


def _glue_wrappers(rec):
    add, unbroadcast, zeros, writable = (
        operator.add,
        core.unbroadcast,
        core.zeros_for,
        core._writable,
    )
    rec_add, rec_unb, rec_zeros, rec_writable = (
        rec.wrap(add),
        rec.wrap(unbroadcast),
        rec.wrap(zeros),
        rec.wrap(writable),
    )

    def glue_add(a, b):
        if type(a) is dlarray or type(b) is dlarray:
            return a + b  # a recorded walk: the ops inside are recorded
        return rec_add(a, b)

    def glue_unbroadcast(g, meta, recorded=True):
        if recorded:
            return unbroadcast(g, meta, True)
        return rec_unb(g, meta, False)

    def glue_zeros(meta, recorded=True):
        if recorded:
            return core.make(rec_zeros(meta, False))
        return rec_zeros(meta, False)

    return glue_add, glue_unbroadcast, glue_zeros, rec_writable


_ESCAPES = {
    "item": "x.item()",
    "__float__": "float(x)",
    "__int__": "int(x)",
    "__complex__": "complex(x)",
    "__bool__": "bool(x)",
    "__index__": "x as an index",
    "numpy": "x.numpy()",
}


def _escape_method(name, original):
    how = _ESCAPES[name]

    def method(self, *args, **kwargs):
        rec = core.RECORDER
        if rec is not None:
            rec.escape(self._data, how)
        return original(self, *args, **kwargs)

    method.__name__ = name
    return method


def _array_escape(original):
    def __array__(self, *args, **kwargs):
        rec = core.RECORDER
        if rec is not None:
            rec.escape(self._data, "np.asarray()")
        return original(self, *args, **kwargs)

    return __array__


class _Installed:
    """Swaps the recording hooks in for one traced call (and back out)."""

    def __init__(self, rec):
        self.rec = rec

    def __enter__(self):
        rec = self.rec
        _inline_templates()  # keyed by the original functions: before they are swapped
        self.prims = []
        for prim in list(core.ALL_PRIMITIVES):
            self.prims.append((prim, prim.fwd, prim.fast))
            prim.fwd = rec.wrap(prim.fwd, prim.name)
            if prim.fast is not None:
                prim.fast = rec.wrap(prim.fast, prim.name)
        add, unb, zeros, writable = _glue_wrappers(rec)
        self.glue = (core._Glue.__dict__["add"], core._Glue.__dict__["unbroadcast"])
        self.glue += (core._Glue.__dict__["zeros"], core._writable)
        core._Glue.add = staticmethod(add)
        core._Glue.unbroadcast = staticmethod(unb)
        core._Glue.zeros = staticmethod(zeros)
        core._writable = writable
        self.methods = {n: dlarray.__dict__[n] for n in (*_ESCAPES, "__array__")}
        for n in _ESCAPES:
            setattr(dlarray, n, _escape_method(n, self.methods[n]))
        dlarray.__array__ = _array_escape(self.methods["__array__"])
        core.RECORDER = rec
        self.tracking = _provenance.Tracking(rec).__enter__()  # device arrays (cuda path)
        return rec

    def __exit__(self, *exc):
        self.tracking.__exit__(*exc)
        core.RECORDER = None
        for prim, fwd, fast in self.prims:
            prim.fwd = fwd
            prim.fast = fast
        core._Glue.add, core._Glue.unbroadcast, core._Glue.zeros, core._writable = self.glue
        for n, m in self.methods.items():
            setattr(dlarray, n, m)
        return False


# ------------------------------------------------------------------ keys and inputs


def _hyper(obj):
    """The simple attributes of a Layer (its hyperparameters and mode flags)."""
    out = []
    for k, v in getattr(obj, "__dict__", {}).items():
        t = type(v)
        if t in _VALUE_TYPES:
            out.append((k, t, v))
        elif t is tuple and all(type(x) in _VALUE_TYPES for x in v):
            out.append((k, v))
        elif isinstance(v, np.ndarray) or callable(v):
            out.append((k, id(v)))
    return tuple(out)


def _flatten(v, key, objs, keep):
    """Append ``v``'s part of the cache key to ``key`` and its objects to ``objs``
    (every dlarray, raw array, container and other object, in a fixed order)."""
    t = type(v)
    if t is dlarray:
        d = v._data
        objs.append(v)
        key.append((d.shape, d.dtype, v._fmt, v._node is not None, v._grad is not None))
    elif t in _VALUE_TYPES:
        key.append(t)
        key.append(v)
    elif t is slice:
        key.append((t, v.start, v.stop, v.step))
    elif t is tuple or t is list:
        objs.append(v)
        key.append((t, len(v)))
        for x in v:
            _flatten(x, key, objs, keep)
    elif t is dict:
        objs.append(v)
        key.append((t, tuple(v)))
        for x in v.values():
            _flatten(x, key, objs, keep)
    elif isinstance(v, (types.ModuleType, type)):
        # before the probes below: a closure's module (``gg``) is read on every call,
        # and a module's __getattr__ (gpugrad's own) runs on a hasattr miss
        key.append(id(v))
        keep.append(v)
    elif isinstance(v, np.ndarray) or backend.is_device_array(v):
        objs.append(v)
        key.append(("array", v.shape, v.dtype))
    elif hasattr(v, "__gg_flatten__"):
        objs.append(v)
        keep.append(v)
        children, aux = v.__gg_flatten__()
        key.append((t, id(v), tuple(aux) if isinstance(aux, list) else aux, _hyper(v)))
        for x in children:
            _flatten(x, key, objs, keep)
    elif dataclasses.is_dataclass(v):
        objs.append(v)
        fields = [f.name for f in dataclasses.fields(v)]
        key.append((t, tuple(fields)))
        for f in fields:
            _flatten(getattr(v, f), key, objs, keep)
    else:
        objs.append(v)
        keep.append(v)
        key.append((t, id(v)))
        attrs = getattr(v, "__dict__", None)
        if attrs and not callable(v) and len(key) < 10000:
            # an object's array-holding attributes (e.g. ``self.w`` of a bound
            # method): rebinding one is a new key, and its arrays are read live
            for name, value in list(attrs.items()):
                if _holds_arrays(value):
                    key.append(name)
                    _flatten(value, key, objs, keep)


def _holds_arrays(value):
    """A dlarray, a Layer, or a list/tuple/dict with one of them at its top level (an
    optimizer's raw-array state, used only by its replayed update, is not keyed)."""
    t = type(value)
    if t is dlarray or hasattr(t, "__gg_flatten__"):
        return True
    if t is list or t is tuple:
        return any(type(x) is dlarray or hasattr(type(x), "__gg_flatten__") for x in value)
    if t is dict:
        return any(type(x) is dlarray or hasattr(type(x), "__gg_flatten__") for x in value.values())
    return False


def _is_library(fn):
    mod = getattr(fn, "__module__", None) or ""
    return mod.split(".")[0] in ("gpugrad", "numpy", "builtins", "functools")


def _sources(fn, out, seen, depth=0):
    """Where ``fn`` reads outside values: closure cells, named globals, bound self,
    partial arguments (recursing into plain functions it reaches that way)."""
    if id(fn) in seen or depth > 4:
        return
    seen.add(id(fn))
    if isinstance(fn, functools.partial):
        out.append(lambda p=fn: (p.args, p.keywords))
        _sources(fn.func, out, seen, depth + 1)
        return
    if isinstance(fn, types.MethodType):
        out.append(lambda m=fn: m.__self__)
        _sources(fn.__func__, out, seen, depth + 1)
        return
    if not isinstance(fn, types.FunctionType):
        if callable(fn) and not isinstance(fn, type):
            out.append(lambda o=fn: o)  # a callable object (e.g. a Layer): its state
        return
    if depth and _is_library(fn):
        return
    for cell in fn.__closure__ or ():
        out.append(lambda c=cell: c.cell_contents)
        try:
            inner = cell.cell_contents
        except ValueError:
            continue
        if isinstance(inner, (types.FunctionType, types.MethodType, functools.partial)):
            # (a callable object, e.g. a Layer, is read through the cell already: a
            # second source would flatten the whole model twice per call)
            _sources(inner, out, seen, depth + 1)
    if fn.__defaults__:
        out.append(lambda f=fn: f.__defaults__)
    g = fn.__globals__
    names = set()
    stack = [fn.__code__]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    for name in sorted(names):
        if name in g:
            value = g[name]
            if isinstance(value, (types.ModuleType, type, types.BuiltinFunctionType)):
                continue  # modules, classes and builtins are not rebound in practice
            out.append(lambda g=g, n=name: g.get(n))
            if isinstance(value, (types.FunctionType, functools.partial)):
                _sources(value, out, seen, depth + 1)


def _read(source):
    try:
        return source()
    except ValueError:  # an empty closure cell
        return None


def _deep_dlarrays(fn):
    """id(raw) -> dlarray for the dlarrays ``fn`` can reach (read live at replay)."""
    from .checkpoint import _scan

    found = []
    _scan(fn, found, set(), 0)
    return {id(d._data): d for d in found}


# ------------------------------------------------------------------ comparison


def _leaf_values(obj):
    out = []

    def visit(x):
        t = type(x)
        if t is dlarray:
            out.append(backend.to_host(x._data))
        elif isinstance(x, np.ndarray) or backend.is_device_array(x):
            out.append(backend.to_host(x))
        elif t in (tuple, list):
            for o in x:
                visit(o)
        elif t is dict:
            for o in x.values():
                visit(o)
        elif hasattr(x, "__gg_flatten__") and not isinstance(x, type):
            for o in x.__gg_flatten__()[0]:
                visit(o)
        elif t in (int, float, complex, bool):
            out.append(np.asarray(x))

    visit(obj)
    return out


def _differ(a, b, tol):
    """A description of the first difference beyond ``tol`` (relative), else None."""
    la, lb = _leaf_values(a), _leaf_values(b)
    if len(la) != len(lb):
        return f"{len(la)} values against {len(lb)}"
    for i, (x, y) in enumerate(zip(la, lb)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return f"value {i}: shape {x.shape} against {y.shape}"
        if x.dtype.kind == "b" or y.dtype.kind == "b":
            if not np.array_equal(x, y):
                return f"value {i}: booleans differ"
            continue
        same_nan = np.isnan(x) & np.isnan(y)
        err = np.where(same_nan, 0, np.abs(x - y))
        scale = np.maximum(1, np.abs(y))
        if err.size and not np.all(err <= tol * scale):
            return f"value {i}: largest difference {float(np.max(err)):.3g}"
    return None


# ------------------------------------------------------------------ distributed hooks
# (gpugrad.distributed, h-dist.) Every rank must run the same collectives in the same
# order whether it traces, replays or runs a step eagerly. DataParallel's reducer and
# BatchNorm exchange run their collectives inside ``@host_call`` methods (replayed),
# and ``all_reduce`` on dlarrays is a primitive (replayed); the communicators call
# ``collective`` before each collective.


def _leaf_hooks_replayable():
    """Whether every gradient-hook sink (``tape.LEAF_HOOKS``) records its work as host
    calls (``replayable = True``, as DataParallel's reducer does)."""
    return all(getattr(sink, "replayable", False) for sink in list(tape.LEAF_HOOKS.values()))


def collective(what):
    """Called by gpugrad.distributed before a collective. While a trace records: inside
    a recorded call (a primitive, a host call) the replay repeats it, and the trace is
    marked as having side effects (its first replay must not be re-run eagerly to check
    it: that would run the collective twice on this rank only); a collective the trace
    would not repeat (a plain array reduced outside any primitive) makes the call
    pattern run eagerly."""
    rec = core.RECORDER
    if rec is None or threading.get_ident() != rec.thread:
        return
    if rec.depth:
        rec.mutates = True
        rec.host_state.append(f"a collective ({what})")
    else:
        rec.refuse(f"a collective outside a recorded call ({what})")


# ------------------------------------------------------------------ the function


class _Entry:
    """One trace: the replay function, its source text, the primitives it calls."""

    __slots__ = (
        "fn",
        "mutates",
        "checked",
        "keep",
        "source",
        "calls",
        "primitives",
        # graph capture (gpugrad/_accel_graph.py)
        "host_state",
        "live_used",
        "graph",
        "replays",
        "kernels",
        "stale_graphs",
        "staged",
    )

    def __init__(self, fn, mutates, keep, source, calls, primitives):
        self.fn = fn
        self.mutates = mutates
        self.checked = False
        self.keep = keep
        self.source = source
        self.calls = calls
        self.primitives = frozenset(primitives)
        self.host_state = ()
        self.live_used = ()
        self.graph = None  # None: not tried yet; else _accel_graph.Captured or NoGraph
        self.replays = 0  # plain replays made
        self.kernels = None  # kernel launches of the last plain replay (cuda, emu)
        self.stale_graphs = 0  # graphs dropped because an in-place input was rebound
        self.staged = ()  # _accel_graph.StagedCall of each staged host call


class AcceleratedFunction:
    """A function that traces once per cache key and replays afterwards (made by
    :func:`dlaccelerate`). Called like the function it wraps, and accepted by
    ``gg.dlfeval``, ``gg.gradient`` and ``gg.value_with_gradient``.

    Attributes (MATLAB's names; snake_case aliases too): ``Enabled`` (False: always
    run eagerly), ``CacheSize`` (traces kept, least recently used evicted; 50),
    ``HitRate`` (percent of calls that replayed a trace), ``Occupancy`` (percent of
    ``CacheSize`` in use), ``CheckMode`` (``"none"`` or ``"tolerance"``: every replay
    is compared with an eager run and a difference beyond ``CheckTolerance`` warns),
    ``CheckTolerance`` (relative, 1e-4); ``clearCache()`` drops every trace.
    ``CheckFirstReplay`` (True): the first replay of a trace without side effects is
    compared with an eager run of the same call (Python side effects inside the
    function then happen once more); False skips that check.

    Graphs (devices ``cuda`` and ``emu``): from its second replay on, a trace is
    captured (optimizer updates, running statistics and random draws staged), on
    ``cuda`` into a CUDA graph launched once per call (on ``emu`` the same capture logic
    runs, with the emulator's kernel launches recorded and checked); ``UseGraphs`` (True) turns that off, ``GraphLaunches`` counts graph
    launches, ``KernelLaunches`` is the number of gpugrad kernels the last call launched
    one by one (0 after a graph launch), and ``graph_report()`` says per trace whether it
    was captured and why not. See ``gpugrad/_accel_graph.py``.
    """

    def __init__(self, fn, *, _mode="call"):
        if not callable(fn):
            raise TypeError(f"dlaccelerate: fn must be callable, got {type(fn).__name__}")
        self._fn = fn
        self._mode = _mode
        self._dlfeval_run = None
        self.Enabled = True
        self.CheckFirstReplay = True
        self._cache_size = 50
        self._check_mode = "none"
        self._check_tolerance = 1e-4
        self._cache = OrderedDict()
        self._calls = 0
        self._hits = 0
        self.traces = 0  # traces made (misses that recorded a trace)
        self.evictions = 0
        self.eager_calls = 0  # calls run eagerly (escaped keys, traced inputs, disabled)
        # graph capture on cuda (a CUDA graph) and emu (its emulator twin): see
        # gpugrad/_accel_graph.py and graph_report()
        self.UseGraphs = True
        self.GraphLaunches = 0  # replays made as one graph launch
        self.KernelLaunches = None  # kernel launches made one by one by the last replay
        self._warned = set()
        self._device = backend.device()
        srcs = []
        _sources(fn, srcs, set())
        self._srcs = srcs
        code = getattr(fn, "__code__", None) or getattr(
            getattr(fn, "__func__", None), "__code__", None
        )
        self._code = code
        try:
            functools.update_wrapper(self, fn, updated=())
        except (AttributeError, TypeError):  # pragma: no cover - odd callables
            pass

    # ---------------------------------------------------------------- properties
    @property
    def CacheSize(self):  # noqa: N802 - MATLAB's name
        return self._cache_size

    @CacheSize.setter
    def CacheSize(self, n):  # noqa: N802
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"AcceleratedFunction.CacheSize must be an integer >= 1, got {n!r}")
        self._cache_size = int(n)
        self._evict()

    @property
    def HitRate(self):  # noqa: N802
        return 100.0 * self._hits / self._calls if self._calls else 0.0

    @property
    def Occupancy(self):  # noqa: N802
        return 100.0 * len(self._cache) / self._cache_size

    @property
    def CheckMode(self):  # noqa: N802
        return self._check_mode

    @CheckMode.setter
    def CheckMode(self, mode):  # noqa: N802
        if mode not in ("none", "tolerance"):
            raise ValueError(
                f"AcceleratedFunction.CheckMode must be 'none' or 'tolerance', got {mode!r}"
            )
        self._check_mode = mode

    @property
    def CheckTolerance(self):  # noqa: N802
        return self._check_tolerance

    @CheckTolerance.setter
    def CheckTolerance(self, tol):  # noqa: N802
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
            raise ValueError(
                f"AcceleratedFunction.CheckTolerance must be a number >= 0, got {tol!r}"
            )
        self._check_tolerance = float(tol)

    enabled = property(lambda s: s.Enabled, lambda s, v: setattr(s, "Enabled", v))
    cache_size = property(lambda s: s.CacheSize, lambda s, v: setattr(s, "CacheSize", v))
    hit_rate = property(lambda s: s.HitRate)
    occupancy = property(lambda s: s.Occupancy)
    check_mode = property(lambda s: s.CheckMode, lambda s, v: setattr(s, "CheckMode", v))
    check_tolerance = property(
        lambda s: s.CheckTolerance, lambda s, v: setattr(s, "CheckTolerance", v)
    )

    @property
    def hits(self):
        """Calls that replayed a trace."""
        return self._hits

    @property
    def misses(self):
        """Calls that had no trace for their key (and traced, or ran eagerly)."""
        return self._calls - self._hits

    def clearCache(self):  # noqa: N802 - MATLAB's name
        """Drop every trace (and the arrays they hold); statistics restart."""
        self._cache.clear()
        self._calls = self._hits = 0

    clear_cache = clearCache

    def __repr__(self):
        name = getattr(self._fn, "__qualname__", type(self._fn).__name__)
        return (
            f"AcceleratedFunction({name}: {len(self._cache)} trace(s), "
            f"HitRate {self.HitRate:.1f}%, Enabled={self.Enabled})"
        )

    def __get__(self, obj, objtype=None):
        """As a method decorator: one accelerated function per bound instance."""
        if obj is None:
            return self
        cache = obj.__dict__.setdefault("_gg_accelerated", {})
        bound = cache.get(id(self))
        if bound is None:
            bound = cache[id(self)] = AcceleratedFunction(self._fn.__get__(obj, objtype))
            bound.__dict__.update(
                Enabled=self.Enabled,
                CheckFirstReplay=self.CheckFirstReplay,
                UseGraphs=self.UseGraphs,
                _cache_size=self._cache_size,
                _check_mode=self._check_mode,
                _check_tolerance=self._check_tolerance,
            )
        return bound

    # ---------------------------------------------------------------- calling
    def __call__(self, *args, **kwargs):
        return self._run(self._fn, args, kwargs, "call")

    def __gg_dlfeval__(self, args, kwargs):
        """``gg.dlfeval(accfun, ...)``: the dlfeval call itself is traced and replayed."""
        run = self._dlfeval_run
        if run is None:
            from .matlab import dlfeval

            fn = self._fn
            run = self._dlfeval_run = lambda *a, **k: dlfeval(fn, *a, **k)
        return self._run(run, args, kwargs, "dlfeval")

    def __gg_transform__(self, transform, argnums):
        """``gg.gradient(accfun)`` / ``gg.value_with_gradient(accfun)``: an accelerated
        function of the whole gradient computation."""
        out = AcceleratedFunction(transform(self._fn, argnums))
        out.Enabled = self.Enabled
        out.CheckFirstReplay = self.CheckFirstReplay
        out.UseGraphs = self.UseGraphs
        out._cache_size = self._cache_size
        out._check_mode = self._check_mode
        out._check_tolerance = self._check_tolerance
        return out

    def _eager(self, run, args, kwargs):
        self.eager_calls += 1
        return run(*args, **kwargs)

    def _run(self, run, args, kwargs, mode):
        if not self.Enabled or core.RECORDER is not None:
            # disabled, or called while another trace records (then it is inlined there)
            return self._eager(run, args, kwargs)
        frame = _FRAME.get()
        device = _BACKEND["device"]
        if device != self._device:  # a device switch invalidates every trace
            self._cache.clear()
            self._device = device
        key = [mode, self._code, frame.training, frame.recording, device, len(args)]
        objs = []
        keep = []
        for a in args:
            if type(a) is dlarray:  # the common case, inline
                d = a._data
                objs.append(a)
                key.append((d.shape, d.dtype, a._fmt, a._node is not None, a._grad is not None))
            else:
                _flatten(a, key, objs, keep)
        if kwargs:
            _flatten(kwargs, key, objs, keep)
        for src in self._srcs:
            _flatten(_read(src), key, objs, keep)
        if mode == "call" and frame.recording:
            if any(type(o) is dlarray and o._node is not None for o in objs):
                # the caller may differentiate the outputs; a replay records no nodes
                return self._eager(run, args, kwargs)
        if len(objs) > 1:
            raws = [o._data for o in objs if type(o) is dlarray]
            if len(raws) > 1 and len({id(r) for r in raws}) != len(raws):
                first = {}
                key.append(tuple(first.setdefault(id(r), i) for i, r in enumerate(raws)))
        key = tuple(key)
        self._calls += 1
        try:
            entry = self._cache.get(key)
        except TypeError:
            self._calls -= 1
            self._warn_once("unhashable", "an argument value is unhashable; not accelerated")
            return self._eager(run, args, kwargs)
        if entry is None:
            return self._trace(run, args, kwargs, key, objs, keep)
        if type(entry) is _Eager:
            self._cache.move_to_end(key)
            return self._eager(run, args, kwargs)
        try:
            if self._check_mode == "tolerance" or not (entry.checked or not self.CheckFirstReplay):
                out = self._checked_replay(entry, run, args, kwargs, objs, key, mode)
            else:
                out = self._replay(entry, objs, args, kwargs)
        except _Stale:
            del self._cache[key]
            return self._trace(run, args, kwargs, key, objs, keep)
        self._hits += 1
        self._cache.move_to_end(key)
        return out

    # ---------------------------------------------------------------- graphs
    def _replay(self, entry, objs, args, kwargs):
        """A replay: through the entry's graph when it has one (cuda, emu), else plain."""
        graph = entry.graph
        if graph is None and self.UseGraphs and entry.replays and _BACKEND["device"] != "cpu":
            if entry.stale_graphs >= 3:
                graph = _accel_graph.NoGraph("arrays it reads in place are rebound between calls")
            else:
                graph = _accel_graph.capture(entry, objs, args, kwargs)
            entry.graph = graph
            if type(graph) is _accel_graph.Captured:
                self.GraphLaunches += 1
                self.KernelLaunches = 0
                return graph.first(objs)
            if graph.ran:  # emu: the failed capture ran this call as a plain replay
                entry.replays += 1
                return graph.result
        if type(graph) is _accel_graph.Captured:
            try:
                out = graph.launch(objs)
            except _accel_graph.Stale:  # an in-place input was rebound: capture again
                entry.graph = None
                entry.stale_graphs += 1
            except _accel_graph.GraphUnsupported as exc:  # the emulator's check failed
                entry.graph = _accel_graph.NoGraph(exc.args[0])
                self._warn_once(
                    "graph:" + exc.args[0], f"graph dropped, plain replay: {exc.args[0]}"
                )
                if hasattr(exc, "result"):  # that run's results stand (no second update)
                    entry.replays += 1
                    return exc.result
            else:
                self.GraphLaunches += 1
                self.KernelLaunches = 0
                return out
        entry.replays += 1
        if _BACKEND["device"] == "cpu":
            return entry.fn(objs)
        with _accel_graph.hooked(_accel_graph.LaunchCounter()) as counter:
            out = entry.fn(objs)
        entry.kernels = self.KernelLaunches = counter.count
        return out

    def graph_report(self):
        """One dict per cached trace about graph capture (``cuda``; ``emu`` runs the same
        capture logic): ``captured`` (bool), ``reason`` (why not, else None),
        ``kernels`` (gpugrad kernel launches a plain replay makes, or the captured graph
        holds; CuPy's own elementwise kernels are not counted), ``graph_launches``.

        >>> import gpugrad as gg
        >>> acc = gg.dlaccelerate(lambda x: x * 2.0)
        >>> for _ in range(3):
        ...     _ = acc(gg.dlarray([1.0]))
        >>> acc.graph_report()[0]["captured"]  # on cpu there is nothing to capture
        False
        """
        out = []
        for entry in self._cache.values():
            if type(entry) is _Eager:
                continue
            graph = entry.graph
            captured = type(graph) is _accel_graph.Captured
            out.append(
                {
                    "captured": captured,
                    "reason": None if captured or graph is None else graph.reason,
                    "kernels": graph.kernels if captured else entry.kernels,
                    "graph_launches": graph.launches if captured else 0,
                }
            )
        return out

    def _warn_once(self, tag, message):
        if tag not in self._warned:
            self._warned.add(tag)
            name = getattr(self._fn, "__qualname__", type(self._fn).__name__)
            warnings.warn(f"dlaccelerate({name}): {message}", RuntimeWarning, stacklevel=_level())

    def _evict(self):
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
            self.evictions += 1

    # ---------------------------------------------------------------- tracing
    def _trace(self, run, args, kwargs, key, objs, keep):
        if not _TRACE_LOCK.acquire(blocking=False):  # another thread is tracing
            self._calls -= 1
            return self._eager(run, args, kwargs)
        try:
            rec = _Recorder(_deep_dlarrays(self._fn))
            if tape.LEAF_HOOKS and not _leaf_hooks_replayable():  # see "distributed hooks"
                rec.refuse("a step with gradient hooks that a replay cannot repeat")
            before = []
            for i, o in enumerate(objs):
                name = f"o{i}"
                rec.names[id(o)] = name
                rec.keep.append(o)
                rec.prologue.append(f"{name} = O[{i}]")
                t = type(o)
                if t is dlarray:
                    if id(o._data) not in rec.names:
                        raw_name = rec._name(o._data)
                        rec.prologue.append(f"{raw_name} = {name}._data")
                    if o._grad is not None and id(o._grad) not in rec.names:
                        grad_name = rec._name(o._grad, "g")  # MXNet's x.grad, read live
                        rec.prologue.append(f"{grad_name} = {name}._grad")
                    before.append((i, o, o._data, o._grad, o._node, o._fmt))
            # the traced code sees its array inputs as Tainted views (see gpugrad/_taint.py)
            swapped = []
            if _TAINT:
                args = _taint_inputs(args, rec, swapped)
                kwargs = _taint_inputs(kwargs, rec, swapped)
                _taint_inputs(objs, rec, swapped)
                for d in list(rec.live.values()):
                    _taint_inputs(d, rec, swapped)
                before = [(i, o, o._data, g, n, f) for i, o, _, g, n, f in before]
            try:
                with _Installed(rec):
                    result = run(*args, **kwargs)
            except BaseException:
                _untaint_state(swapped, objs, None)
                raise
            self.traces += 1
            reason = rec.escaped or rec.unsupported
            lines = []
            if reason is None:
                for i, o, data, grad, node, fmt in before:
                    if o._node is not node:
                        reason = "the function attaches or traces its input arrays"
                        break
                    if o._data is not data:
                        lines.append(f"o{i}._data = {rec.expr(o._data)}")
                    if o._grad is not grad:
                        lines.append(f"o{i}._grad = {rec.expr(o._grad)}")
                    if o._fmt != fmt:
                        lines.append(f"o{i}._fmt = {o._fmt!r}")
            if reason is None:
                try:
                    ret = self._output(rec, result)
                except _Unsupported as exc:
                    reason = str(exc)
            # why: writing the outputs out may find an array computed from traced data
            reason = reason or rec.escaped
            if reason is not None:
                self._cache[key] = _Eager(reason)
                self._evict()
                self._warn_once(
                    reason,
                    f"this call runs eagerly, not accelerated: {reason} (a traced "
                    "value is used as a Python value or decides a branch; compute it outside "
                    "the function, or pass it as a non-array argument)"
                    if rec.escaped and not rec.data_escape
                    else f"this call runs eagerly, not accelerated: {reason}",
                )
                return _untaint_state(swapped, objs, result)
            body = rec.prologue + rec.lines + lines + [f"return {ret}"]
            source = "def _replay(O):\n" + "".join(f"    {line}\n" for line in body)
            name = getattr(self._fn, "__qualname__", "function")
            exec(compile(source, f"<dlaccelerate {name}>", "exec"), rec.ns)
            # write-backs into the arguments are side effects too (no in-place check)
            mutates = rec.mutates or bool(lines)
            entry = _Entry(rec.ns["_replay"], mutates, keep, source, rec.calls, rec.primitives)
            entry.host_state = tuple(rec.host_state)
            entry.staged = tuple(c.at(1 + len(rec.prologue)) for c in rec.staged)
            entry.live_used = tuple({id(d): d for d in rec.live_used}.values())
            self._cache[key] = entry
            self._evict()
            return _untaint_state(swapped, objs, result)
        finally:
            _TRACE_LOCK.release()

    def _output(self, rec, result):
        """Source text rebuilding ``result`` at replay time."""
        t = type(result)
        if t in _LITERAL:
            return repr(result)
        name = rec.names.get(id(result))
        if name is not None and name.startswith("o"):
            return name  # an input object (its changes are written back)
        if t is dlarray:
            if result._node is not None:
                raise _Unsupported(
                    "it returns a traced dlarray (its trace cannot be replayed); return "
                    "values from gg.dlfeval, or differentiate inside the function"
                )
            inner = rec.expr(result._data)
            if inner.startswith("k"):
                inner = f"{inner}.copy()"  # a constant: a fresh array on every call
            return f"_mk({inner}, {result._fmt!r})"
        if t is tuple:
            return "(" + "".join(self._output(rec, x) + ", " for x in result) + ")"
        if t is list:
            return "[" + ", ".join(self._output(rec, x) for x in result) + "]"
        if t is dict:
            return (
                "{"
                + ", ".join(f"{rec.const(k)}: {self._output(rec, x)}" for k, x in result.items())
                + "}"
            )
        if t in (float, complex) or isinstance(result, np.generic):
            if id(result) in rec.names:
                return rec.names[id(result)]
            return rec.const(result)
        if hasattr(result, "__gg_flatten__") and not isinstance(result, type):
            vals = []
            map_arrays(lambda d: vals.append(self._output(rec, d)), result)
            return f"_rebuild({rec.const(result)}, [{', '.join(vals)}])"
        if isinstance(result, np.ndarray) or backend.is_device_array(result):
            inner = rec.expr(result)
            return f"{inner}.copy()" if inner.startswith("k") else inner
        return rec.const(result)

    # ---------------------------------------------------------------- checking
    def _cells(self):
        return [_read(lambda c=c: c.cell_contents) for c in self._closure()]

    def _closure(self):
        return getattr(self._fn, "__closure__", None) or ()

    def _checked_replay(self, entry, run, args, kwargs, objs, key, mode):
        """Replay and compare with an eager run: in place for a trace without side
        effects, on copies of the arguments and closure otherwise."""
        tol = self._check_tolerance
        start = _random.get_state()
        entry.checked = True
        if entry.mutates:
            if self._check_mode != "tolerance":
                return entry.fn(objs)
            copied = self._copied_call(args, kwargs, mode)
            if copied is None:
                return entry.fn(objs)
            eager_out, copies = copied
            after_eager = _random.get_state()
            _random.set_state(start)
            out = entry.fn(objs)
            real = (args, kwargs, self._cells())
            problem = _differ(out, eager_out, tol) or _differ(real, copies, tol)
            if problem is not None:
                for r, c in zip(_dl_leaves(real), _dl_leaves(copies)):
                    if r._data.shape == c._data.shape:  # put the eager state in place
                        r._data[...] = backend.xp().asarray(c._data)
        else:
            out = entry.fn(objs)
            after_replay = _random.get_state()
            _random.set_state(start)
            eager_out = run(*args, **kwargs)
            after_eager = _random.get_state()
            problem = _differ(out, eager_out, tol)
            if problem is None and after_replay != after_eager:
                problem = "the replay drew a different number of random values"
        if problem is None:
            return out
        if self._check_mode == "tolerance":
            warnings.warn(
                f"dlaccelerate: CheckMode found the replay and eager results differ ({problem}); "
                "the eager result is returned and this call pattern now runs eagerly",
                RuntimeWarning,
                stacklevel=_level(),
            )
        else:
            self._warn_once(
                "check:" + problem,
                f"the first replay differed from eager execution ({problem}); this call "
                "pattern runs eagerly from now on (a value computed outside gpugrad's "
                "primitives?)",
            )
        _random.set_state(after_eager)
        self._cache[key] = _Eager(problem)
        return eager_out

    def _copied_call(self, args, kwargs, mode):
        """Run eagerly on deep copies of the arguments and the function's closure:
        ``(outputs, (args, kwargs, closure values) of the copy afterwards)``, or None."""
        fn = self._fn
        if not isinstance(fn, types.FunctionType):
            return None
        try:
            cargs, ckwargs, cells = copy.deepcopy((args, kwargs, self._cells()))
        except Exception:  # noqa: BLE001 - anything not copyable: no check
            return None
        if cells:
            fn = types.FunctionType(
                fn.__code__,
                fn.__globals__,
                fn.__name__,
                fn.__defaults__,
                tuple(types.CellType(c) for c in cells),
            )
        if mode == "dlfeval":
            from .matlab import dlfeval

            out = dlfeval(fn, *cargs, **ckwargs)
        else:
            out = fn(*cargs, **ckwargs)
        return out, (cargs, ckwargs, cells)


def _dl_leaves(obj):
    out = []
    map_arrays(out.append, obj)
    return out


class _Unsupported(Exception):
    pass


def dlaccelerate(fn):
    """Accelerate ``fn``: trace it once per cache key, replay the trace afterwards
    (MATLAB's ``dlaccelerate``; ``gg.accelerate`` is the same, and works as a
    decorator). Returns an :class:`AcceleratedFunction`; see the module
    documentation (``gpugrad.accelerate``) for the key and the guards.

    >>> import gpugrad as gg
    >>> def loss(w, x):
    ...     y = gg.sum((x @ w) ** 2)
    ...     return y, gg.dlgradient(y, w)
    >>> acc = gg.dlaccelerate(loss)
    >>> x = gg.dlarray([[1.0, 2.0]])
    >>> for _ in range(4):
    ...     y, g = gg.dlfeval(acc, gg.dlarray([[1.0], [1.0]]), x)
    >>> g.numpy().ravel().tolist(), acc.HitRate
    ([6.0, 12.0], 75.0)
    """
    if isinstance(fn, AcceleratedFunction):
        return fn
    return AcceleratedFunction(fn)


accelerate = dlaccelerate
