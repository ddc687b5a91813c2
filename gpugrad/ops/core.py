"""Primitives: a named forward on raw arrays plus a VJP written with gpugrad ops.

One VJP signature for all: ``vjp(g, ans, *inputs, **params) -> tuple`` with one
cotangent (or ``None``) per input. ``inputs[i]`` is the input as a dlarray when
the primitive saved it, else a ``Meta`` with its shape and dtype (or the Python
scalar itself). ``ans`` is the output (a dlarray) when saved, else ``None``.
Because VJPs use gpugrad ops, recording them (``create_graph``) gives higher
derivatives for free.

Complex numbers: a cotangent is ``dL/da + i dL/db`` for ``x = a + ib`` (MATLAB's
steepest-ascent convention), so the rule for holomorphic ``f`` is
``g * conj(f'(x))``.
"""

from __future__ import annotations

import functools
import operator
import re
import weakref

import numpy as np

from .. import backend, tape
from ..array import as_raw, dlarray

REGISTRY: dict[str, Primitive] = {}
# registered or not (the accelerator wraps every fwd); weak, because checkpoints and
# custom derivatives make a primitive per call, which must die with its closure
ALL_PRIMITIVES: weakref.WeakSet = weakref.WeakSet()

# The accelerator hook (``gpugrad.accelerate``). While ``gg.dlaccelerate`` traces a
# call, ``RECORDER`` is its recorder and every primitive's ``fwd``/``fast`` and the
# engine glue below are swapped for recording versions (swapped back at the end), so
# the engine itself pays nothing for it. Raw-array code outside the primitives that a
# replay must repeat (random draws, optimizer and running-statistics updates) is
# marked with ``@host_call``: one ``None`` check when nothing is traced.
RECORDER = None


def host_call(fn=None, *, mutates=False):
    """Mark ``fn`` as raw-array code that an accelerator trace records as one opaque
    call, replayed by calling ``fn`` again (``mutates``: it updates its arguments or
    other state in place, e.g. an optimizer step)."""
    if fn is None:
        return lambda f: host_call(f, mutates=mutates)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        rec = RECORDER
        if rec is None:
            return fn(*args, **kwargs)
        return rec.host_call(fn, args, kwargs, mutates)

    return wrapper


_STATE = backend._state
_FRAME = tape.FRAME
_Node = tape.Node
_LEAF = tape.LEAF
_MEMORY = tape.MEMORY
_Meta = tape.Meta
_VERSIONS = tape.VERSIONS


def X():
    """The active array namespace (numpy or cupy)."""
    return _STATE["xp"]


class Primitive:
    """A differentiable primitive.

    ``save`` lists the input positions the VJP needs; ``save_ans`` whether it
    needs the output. Only what is saved is kept alive (and counted by
    ``gg.memory``).
    """

    __slots__ = (
        "name",
        "fwd",
        "vjp",
        "fast",
        "save",
        "save_ans",
        "multiple_outputs",
        "differentiable",
        "needs",
        "__weakref__",
    )

    def __init__(
        self,
        name,
        fwd,
        vjp=None,
        *,
        save=(),
        save_ans=False,
        multiple_outputs=False,
        register=True,
        fast=None,
        needs=False,
    ):
        self.name = name
        self.fwd = fwd
        self.vjp = vjp
        # optional first-order rule on raw arrays (same signature as vjp, raw in and
        # out): the fast path when the backward is not recorded. It must compute
        # exactly what vjp computes; the gradient tests run both.
        self.fast = fast
        # needs=True: the VJP takes ``needs=`` (one bool per input: is its cotangent
        # used by this walk?) and may return None where it is not, so a heavy op skips
        # e.g. the input gradient of a first layer (PyTorch's needs_input_grad)
        if needs and fast is not None:
            raise ValueError(f"primitive {name!r}: a needs-aware VJP has no fast rule")
        self.needs = needs
        self.save = frozenset(save)
        self.save_ans = save_ans
        self.multiple_outputs = multiple_outputs
        self.differentiable = vjp is not None
        ALL_PRIMITIVES.add(self)
        if register:
            if name in REGISTRY:
                raise ValueError(f"primitive {name!r} is defined twice")
            REGISTRY[name] = self

    def __repr__(self):
        return f"<primitive {self.name}>"

    def __call__(self, *args, **params):
        return bind(self, args, params)


def cj(a):
    """Conjugate of a raw array or scalar (the identity for real ones)."""
    dt = getattr(a, "dtype", None)
    if dt is None:
        return a.conjugate() if isinstance(a, complex) else a
    return a.conj() if dt.kind == "c" else a


def make(raw, fmt="", node=None, idx=0, taint=False):
    """A dlarray around ``raw`` without the checks of ``dlarray(...)`` (internal)."""
    out = dlarray.__new__(dlarray)
    out._data = raw
    out._fmt = fmt
    out._node = node
    out._idx = idx
    out._taint = taint
    out._grad = None
    return out


_PASS = (int, float, complex, bool)


def coerce(a):
    """Raw operand for a non-dlarray argument (Python scalars pass through)."""
    if type(a) in _PASS or a is None:
        return a
    if isinstance(a, np.generic):
        return a
    return as_raw(a)


def from_sequence(seq):
    """A list/tuple (nested) that holds a traced dlarray, stacked into one dlarray with
    a recorded (differentiable) stack; ``None`` when ``seq`` holds none (then NumPy's
    conversion is right). ``gg.mean([x, x + 2])`` and ``gg.dlarray([x, 2 * x])``
    are traced through this. Outside recording (nothing to trace) it is ``None``, so
    plain nested lists cost nothing extra."""
    if not _FRAME.get().recording or not _has_traced(seq):
        return None
    items = []
    for e in seq:
        if type(e) is not dlarray:
            s = from_sequence(e) if type(e) in _SEQ else None
            e = s if s is not None else make(as_raw(e))
        items.append(e)
    shapes = {i.shape for i in items}
    if len(shapes) > 1:
        raise ValueError(
            "cannot make an array from a sequence whose items have different shapes "
            f"{sorted(shapes)}; the items of a list or tuple of dlarrays must have one shape"
        )
    return OPS.stack(items)


_SEQ = (list, tuple)


def operand(a, where):
    """``coerce`` for an operand of an arithmetic op: a number or a numeric array,
    else a TypeError naming the op (not NumPy's ufunc-loop message)."""
    if a is None or isinstance(a, (str, bytes)):
        raise TypeError(f"{where}: operand must be a number or a numeric array, got {a!r}")
    try:
        raw = coerce(a)
    except TypeError as exc:
        raise TypeError(f"{where}: operand must be a number or a numeric array: {exc}") from None
    if getattr(raw, "dtype", None) is not None and raw.dtype.kind not in "biufc":
        raise TypeError(
            f"{where}: operand must be a number or a numeric array, got {type(a).__name__} "
            f"of dtype {raw.dtype}"
        )
    return raw


def _has_traced(seq):
    for e in seq:
        if type(e) is dlarray:
            if e._node is not None:
                return True
        elif type(e) in _SEQ and _has_traced(e):
            return True
    return False


_NAMED = re.compile(r"^[\w.]+(?: [\w.]+)?: ")


def op_error(name, raws, exc):
    """NumPy's/Python's error from an op's forward, reworded to name the op and say
    what its operands were (a message that already names a function is kept)."""
    msg = str(exc)
    if _NAMED.match(msg) or isinstance(exc, np.linalg.LinAlgError):
        return exc  # already named, or a type callers catch (LinAlgError)
    if not isinstance(exc, ValueError) or any(r is None or isinstance(r, str) for r in raws):
        desc = ", ".join(
            f"{type(r).__name__}" + (f" of dtype {r.dtype}" if hasattr(r, "dtype") else "")
            for r in raws
        )
        return TypeError(f"{name}: operands must be numeric arrays or numbers, got ({desc}): {msg}")
    shapes = ", ".join(str(getattr(r, "shape", ())) for r in raws)
    if "broadcast" in msg:
        return ValueError(
            f"{name}: operands with shapes {shapes} do not broadcast (NumPy broadcasting rules)"
        )
    return ValueError(f"{name}: invalid operands of shapes {shapes}: {msg}")


def bind(prim, args, params=None, fmt=""):
    """Apply ``prim`` to ``args``; record a node if an input is traced and recording is on."""
    raws = []
    traced = False
    taint = False
    for a in args:
        if type(a) is dlarray:
            raws.append(a._data)
            if a._node is not None:
                traced = True
            if a._taint:
                taint = True
        elif type(a) in _SEQ and _FRAME.get().recording and _has_traced(a):
            # why: a list of traced values must not lose its trace in np.asarray
            args = tuple(
                (s if (s := from_sequence(b)) is not None else b) if type(b) in _SEQ else b
                for b in args
            )
            return bind(prim, args, params, fmt)
        else:
            raws.append(coerce(a))
    try:
        out = prim.fwd(*raws, **params) if params else prim.fwd(*raws)
    except (TypeError, ValueError, AttributeError) as exc:
        raise op_error(prim.name, raws, exc) from None
    if traced and prim.differentiable:
        frame = _FRAME.get()
        if frame.recording:
            return _record(prim, args, raws, out, params, fmt, frame, taint)
    if prim.multiple_outputs:
        return tuple(make(o, fmt, None, 0, taint) for o in out)
    return make(out, fmt, None, 0, taint)


_NOSHAPE = frozenset((int, float, complex, bool, type(None)))
_UNCOUNTED = _NOSHAPE  # Python numbers have no buffer to count
_tnew = tuple.__new__


def _finish(prim, params, parents, in_meta, ins, counted, out, fmt, frame, taint):
    """Build the node for a recorded op and wrap its output(s)."""
    if not prim.multiple_outputs:
        return _single(prim, params, parents, in_meta, ins, counted, out, fmt, frame, taint)
    if prim.save_ans:
        counted.extend(o for o in out if type(o) not in _UNCOUNTED)
        saved = (out, ins)
    else:
        saved = (None, ins)
    out_meta = tuple(_tnew(_Meta, (o.shape, o.dtype)) for o in out)
    node = _Node(prim, params, parents, in_meta, out_meta, saved, frame.trace)
    if _VERSIONS:
        node.versions = tape.snapshot_versions(saved)
    if counted:
        node.acct = _MEMORY.remember(prim.name, counted)
    if taint:
        node.tainted = True
    return tuple(make(o, fmt, node, i) for i, o in enumerate(out))


# why: a single-output node only needs its output count in the walk; the output's own
# shape is never read there (zeros for a missing cotangent are only made for
# multi-output nodes, whose metas are kept)
_ONE = (None,)
_dl_new = dlarray.__new__


def _record(prim, args, raws, out, params, fmt, frame, taint):
    """Record ``prim`` applied to ``args`` (``raws`` their raw values) giving ``out``.

    A node keeps, per input: its parent link (or ``None`` for an untraced input), its
    ``Meta`` (shape and dtype, to undo broadcasting) and, in ``saved``, what its VJP
    receives: the raw value when the primitive saves it, else the ``Meta``.
    """
    save = prim.save
    parents = []
    in_meta = []
    ins = []
    counted = []
    i = 0
    for a, r in zip(args, raws):
        node = a._node if type(a) is dlarray else None
        parents.append(None if node is None else (node, a._idx))
        meta = None if type(r) in _NOSHAPE else _tnew(_Meta, (r.shape, r.dtype))
        in_meta.append(meta)
        if i in save:
            ins.append(r)
            if type(r) not in _UNCOUNTED and (node is None or node.prim is not _LEAF):
                counted.append(r)
        else:
            ins.append(meta)
        i += 1
    return _finish(
        prim, params, tuple(parents), tuple(in_meta), tuple(ins), counted, out, fmt, frame, taint
    )


def _record1(prim, a, r, out, params, fmt, frame, taint):
    """``_record`` for one traced dlarray input and one output (the unary fast path)."""
    node = a._node
    meta = None if type(r) in _NOSHAPE else _tnew(_Meta, (r.shape, r.dtype))
    counted = None
    if prim.save:
        ins = (r,)
        if type(r) not in _UNCOUNTED and node.prim is not _LEAF:
            counted = [r]
    else:
        ins = (meta,)
    return _single(prim, params, ((node, a._idx),), (meta,), ins, counted, out, fmt, frame, taint)


def _record2(prim, a, b, ra, rb, out, params, fmt, frame, taint):
    """``_record`` for two inputs and one output (the binary fast path)."""
    na = a._node if type(a) is dlarray else None
    nb = b._node if type(b) is dlarray else None
    ma = None if type(ra) in _NOSHAPE else _tnew(_Meta, (ra.shape, ra.dtype))
    mb = None if type(rb) in _NOSHAPE else _tnew(_Meta, (rb.shape, rb.dtype))
    save = prim.save
    counted = None
    if save:
        counted = []
        if 0 in save:
            ia = ra
            if type(ra) not in _UNCOUNTED and (na is None or na.prim is not _LEAF):
                counted.append(ra)
        else:
            ia = ma
        if 1 in save:
            ib = rb
            if type(rb) not in _UNCOUNTED and (nb is None or nb.prim is not _LEAF):
                counted.append(rb)
        else:
            ib = mb
        ins = (ia, ib)
    else:
        ins = (ma, mb)
    parents = (
        None if na is None else (na, a._idx),
        None if nb is None else (nb, b._idx),
    )
    return _single(prim, params, parents, (ma, mb), ins, counted, out, fmt, frame, taint)


def _single(prim, params, parents, in_meta, ins, counted, out, fmt, frame, taint):
    """``_finish`` for a primitive with one output."""
    if prim.save_ans:
        if type(out) not in _UNCOUNTED:
            if counted is None:
                counted = [out]
            else:
                counted.append(out)
        saved = (out, ins)
    else:
        saved = (None, ins)
    node = _Node(prim, params, parents, in_meta, _ONE, saved, frame.trace)
    if _VERSIONS:
        node.versions = tape.snapshot_versions(saved)
    if counted:
        if len(counted) == 1:
            node.acct = _MEMORY.remember_one(prim.name, counted[0])
        else:
            node.acct = _MEMORY.remember(prim.name, counted)
    if taint:
        node.tainted = True
    out_dl = _dl_new(dlarray)
    out_dl._data = out
    out_dl._fmt = fmt
    out_dl._node = node
    out_dl._idx = 0
    out_dl._taint = False
    out_dl._grad = None
    return out_dl


# ------------------------------------------------------------------ backward glue


def wrap_ans(node, linked=True):
    """The saved output(s) of ``node`` as dlarrays, linked to it when the backward is
    recorded (so it can be differentiated through them)."""
    ans = node.saved[0]
    link = node if linked else None
    if node.prim.multiple_outputs:
        return tuple(make(a, "", link, i) for i, a in enumerate(ans))
    return make(ans, "", link, 0)


def wrap_inputs(node, linked=True):
    """The inputs as VJPs see them: saved ones as dlarrays (linked to their nodes
    when the backward is recorded, so second derivatives flow through them),
    unsaved ones as ``Meta``, Python scalars as themselves."""
    out = []
    parents = node.parents
    for i, r in enumerate(node.saved[1]):
        if r is None or type(r) in _NOSHAPE or type(r) is _Meta:
            out.append(r)
        else:
            p = parents[i] if linked else None
            out.append(make(r, "", p[0], p[1]) if p is not None else make(r))
    return out


def unbroadcast(g, meta, recorded=True):
    """Sum a cotangent over broadcast axes and cast it to the input's dtype. The one
    place broadcasting is undone (on dlarrays when the backward is recorded, else
    on raw arrays)."""
    if not recorded:
        return _unbroadcast_raw(g, meta)
    shape, dtype = meta
    gshape = g._data.shape
    if gshape != shape:
        axes = _broadcast_axes(gshape, shape)
        if axes:
            g = OPS.sum(g, axis=axes, keepdims=True)
        if g._data.shape != shape:
            g = OPS.reshape(g, shape)
    gd = g._data.dtype
    if gd != dtype:
        if dtype.kind == "f" and gd.kind == "c":
            g = OPS.real(g)
        if g._data.dtype != dtype and dtype.kind in "fc":
            g = OPS.astype(g, dtype)
    return g


def _broadcast_axes(gshape, shape):
    nd = len(gshape) - len(shape)
    return tuple(range(nd)) + tuple(
        i + nd for i, s in enumerate(shape) if s == 1 and gshape[i + nd] != 1
    )


def _unbroadcast_raw(g, meta):
    shape, dtype = meta
    gshape = getattr(g, "shape", ())
    if gshape != shape:
        axes = _broadcast_axes(gshape, shape)
        if axes:
            g = g.sum(axis=axes, keepdims=True)
        if g.shape != shape:
            g = g.reshape(shape)
    gd = g.dtype
    if gd != dtype:
        if dtype.kind == "f" and gd.kind == "c":
            g = g.real
        if g.dtype != dtype and dtype.kind in "fc":
            g = g.astype(dtype)
    return g


def run_vjp(node, g, recorded, needs=None):
    """Cotangents of ``node``'s inputs. Recorded: the primitive's VJP on dlarrays.
    Not recorded: its raw ``fast`` rule, or its VJP on unlinked dlarrays, unwrapped.
    ``needs`` (for primitives made with ``needs=True``) says which are used."""
    prim = node.prim
    params = node.params
    if needs is not None:
        params = {**params, "needs": needs} if params else {"needs": needs}
    ans, ins = node.saved
    if recorded:
        ans = wrap_ans(node, True) if ans is not None else None
        inputs = wrap_inputs(node, True)
        return prim.vjp(g, ans, *inputs, **params) if params else prim.vjp(g, ans, *inputs)
    fast = prim.fast
    if fast is not None:
        return fast(g, ans, *ins, **params) if params else fast(g, ans, *ins)
    gw = tuple(make(c) for c in g) if prim.multiple_outputs else make(g)
    ans = wrap_ans(node, False) if ans is not None else None
    inputs = wrap_inputs(node, False)
    cts = prim.vjp(gw, ans, *inputs, **params) if params else prim.vjp(gw, ans, *inputs)
    return tuple(None if c is None else (c._data if type(c) is dlarray else c) for c in cts)


class _Ops:
    """The composite ops the engine glue needs, filled in by ``ops/__init__``."""

    sum = reshape = real = astype = None
    stack = None


OPS = _Ops()


def zeros_for(meta, recorded=True):
    shape, dtype = meta
    if _STATE["device"] == "cpu":
        # why: a read-only view of one zero: the cotangent of an unused output is only
        # read (an LSTM's 13 MB gate sequence was zero-filled on every backward)
        z = np.broadcast_to(np.zeros((), dtype), shape)
    else:
        z = X().zeros(shape, dtype)
    try:
        _KNOWN_ZEROS[id(z)] = z
    except TypeError:  # pragma: no cover - an array type without weak references
        pass
    return make(z) if recorded else z


# why: a VJP that would test a cotangent for "all zero" (a device->host sync on a GPU)
# asks is_known_zero first: the zeros the engine made for an unused output
_KNOWN_ZEROS = weakref.WeakValueDictionary()


def is_known_zero(raw) -> bool:
    """True when ``raw`` is a zero cotangent the engine made for an unused output
    (known without looking at the data, so without a device synchronisation)."""
    return _KNOWN_ZEROS.get(id(raw)) is raw


class _Glue:
    add = staticmethod(operator.add)  # cotangent accumulation
    run_vjp = staticmethod(run_vjp)
    unbroadcast = staticmethod(unbroadcast)
    zeros = staticmethod(zeros_for)


def backward(roots, targets, *, create_graph=False, retain=False):
    """Run the reverse walk (see ``tape.backward``). Seeds and results are dlarrays;
    with ``create_graph`` the VJPs are recorded, so the results are traced."""
    if not create_graph:
        roots = [(n, i, g._data if type(g) is dlarray else g) for n, i, g in roots]
    results = tape.backward(
        roots, targets, create_graph=create_graph, retain=retain or create_graph, glue=_Glue
    )
    if create_graph:
        return results
    return [None if r is None else make(_writable(r)) for r in results]


def _writable(r):
    # why: raw rules may return read-only broadcast views; users get their own arrays
    if isinstance(r, np.ndarray) and not r.flags.writeable:
        return r.copy()
    return r
