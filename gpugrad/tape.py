"""The tape engine: nodes, trace scopes, the reverse walk and memory accounting.

Define-by-run: an op applied to a traced dlarray while recording is on appends a
``Node`` (the primitive, links to its parents, what it saved). Scopes
(``dlfeval``, ``autograd.record()``, ``gradient(...)``) live in a ContextVar, so
threads and nested calls each see their own. ``backward`` is one iterative walk in
reverse creation order, pruned to the nodes on a path from the roots to the
requested targets; broadcasting is undone there, in one place.

Inside the engine ``None`` means "no gradient"; zeros are made only at the API
boundary.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from contextvars import ContextVar

from .errors import TraceError

# --------------------------------------------------------------------------- scopes


class Trace:
    """One tracing scope (a ``dlfeval`` call, a ``gradient`` call, a ``record()`` block)."""

    __slots__ = ("kind", "parent", "closed", "__weakref__")

    def __init__(self, kind: str, parent: Trace | None):
        self.kind = kind
        self.parent = parent
        self.closed = False

    def is_active_in(self, current: Trace | None) -> bool:
        """True if this trace is ``current`` or one of its enclosing scopes."""
        t = current
        while t is not None:
            if t is self:
                return True
            t = t.parent
        return False


class Frame:
    """What the current context is doing: the innermost trace, whether ops are
    recorded, whether layers run in training mode (``None`` while nobody chose:
    see ``gpugrad.phase``)."""

    __slots__ = ("trace", "recording", "training")

    def __init__(self, trace: Trace | None, recording: bool, training: bool):
        self.trace = trace
        self.recording = recording
        self.training = training

    @property
    def recomputing(self) -> bool:
        """True while checkpointing re-runs a forward pass (the recomputation inside a
        pullback, or ``checkpoint_sequential``'s memory probe): side effects the first
        run already had (a BatchNorm's running statistics) must not happen again."""
        trace = self.trace
        while trace is not None:
            if trace.kind in RECOMPUTE_KINDS:
                return True
            trace = trace.parent
        return False


# kinds of the sub-traces checkpointing re-runs functions in: a pullback's
# recomputation and checkpoint_sequential's memory probe
RECOMPUTE = "checkpoint"
PROBE = "checkpoint-probe"
RECOMPUTE_KINDS = (RECOMPUTE, PROBE)


def is_recomputing() -> bool:
    """Whether the current context re-runs a forward pass for checkpointing."""
    return FRAME.get().recomputing


_ROOT = Frame(None, False, None)
FRAME: ContextVar[Frame] = ContextVar("gpugrad_frame", default=_ROOT)


def current() -> Frame:
    return FRAME.get()


def is_recording() -> bool:
    return FRAME.get().recording


class scope:
    """Context manager that installs a Frame (and restores the previous one)."""

    __slots__ = ("frame", "_token")

    def __init__(self, trace=..., recording=None, training=None):
        old = FRAME.get()
        self.frame = Frame(
            old.trace if trace is ... else trace,
            old.recording if recording is None else recording,
            old.training if training is None else training,
        )

    def __enter__(self):
        self._token = FRAME.set(self.frame)
        return self.frame

    def __exit__(self, *exc):
        FRAME.reset(self._token)
        return False


# --------------------------------------------------------------------------- nodes

_seq = itertools.count()


class Meta(tuple):
    """``(shape, dtype)`` of an input: what the walker needs to undo broadcasting, and
    what a VJP sees for an input its primitive did not save."""

    __slots__ = ()

    def __new__(cls, shape, dtype):
        return tuple.__new__(cls, (shape, dtype))

    # why: itemgetter keeps the lookups in C; VJP rules read them on every walk
    shape = property(operator.itemgetter(0), doc="shape of the input")
    dtype = property(operator.itemgetter(1), doc="dtype of the input")

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n


RELEASED = object()


class Node:
    """One recorded application of a primitive.

    ``parents[i]`` is ``(node, output_index)`` for a traced input, else ``None``.
    ``saved`` holds what the VJP needs (input dlarrays / raw ans), or ``RELEASED``.
    """

    __slots__ = (
        "prim",
        "params",
        "parents",
        "in_meta",
        "out_meta",
        "saved",
        "seq",
        "trace",
        "acct",
        "tainted",
        "versions",
        "__weakref__",
    )

    def __init__(self, prim, params, parents, in_meta, out_meta, saved, trace):
        self.prim = prim
        self.params = params
        self.parents = parents
        self.in_meta = in_meta
        self.out_meta = out_meta
        self.saved = saved
        self.seq = next(_seq)
        self.trace = trace
        self.acct = None
        self.tainted = False
        self.versions = None  # ((raw, version), ...) of saved buffers written in place

    @property
    def is_leaf(self):
        return self.prim is None or self.prim.name == "leaf"

    def release(self):
        self.saved = RELEASED
        self.acct = None  # its finalizer returns the bytes to MEMORY


class LeafPrim:
    """Marker primitive of leaf nodes (traced inputs); an identity to its parent, if any."""

    name = "leaf"
    multiple_outputs = False

    @staticmethod
    def vjp(g, ans, *inputs, **params):
        return (g,)


LEAF = LeafPrim()


def make_leaf(meta, trace, parent=None, grad_req="write"):
    """A leaf node. With ``parent`` (the input was already traced by an enclosing
    scope) it is an identity link, so outer scopes still see through it."""
    meta = tuple.__new__(Meta, meta)
    node = Node(LEAF, None, (parent,) if parent is not None else (), (meta,), (meta,), (), trace)
    node.params = grad_req
    return node


# --------------------------------------------------------------------------- versions

# id(buffer) -> how many times gpugrad wrote into it in place (x[i] = v outside a
# trace, optimizer updates). Only buffers written at least once are here; a node
# saving one notes its version, and the backward walk checks it is unchanged, so a
# gradient is never computed from values the forward did not use (PyTorch's check).
VERSIONS: dict = {}


def _buffer(raw):
    base = getattr(raw, "base", None)
    while base is not None and getattr(base, "base", None) is not None:
        base = base.base
    return raw if base is None else base


def _forget_version(key):
    VERSIONS.pop(key, None)


def bump_version(raw):
    """Note an in-place write into ``raw``'s buffer (before or after the write)."""
    buf = _buffer(raw)
    key = id(buf)
    if key not in VERSIONS:
        try:
            weakref.finalize(buf, _forget_version, key)
        except TypeError:  # no weak references: keep the entry (ids of live objects)
            pass
        VERSIONS[key] = 0
    VERSIONS[key] += 1


def _saved_raws(saved):
    ans, ins = saved
    return (*ans, *ins) if isinstance(ans, tuple) else (ans, *ins)


def _key(raw):
    # why: no type checks: a Meta, a scalar or None is never a key of VERSIONS (its
    # entries are live buffers, and live objects have distinct ids)
    base = getattr(raw, "base", None)
    return id(raw) if base is None else id(_buffer(raw))


def snapshot_versions(saved):
    """``((raw, version), ...)`` for the saved raw arrays whose buffer was already
    written in place, or None (a buffer not listed was at version 0)."""
    out = None
    get = VERSIONS.get
    for raw in _saved_raws(saved):
        v = get(_key(raw))
        if v is not None:
            out = (*(out or ()), (raw, v))
    return out


def check_versions(node):
    """Raise if a buffer ``node`` saved was written in place after it was recorded
    (the node keeps it alive, so its id cannot have been reused)."""
    for raw in _saved_raws(node.saved):
        now = VERSIONS.get(_key(raw))
        if now is None:
            continue
        v = 0
        for r, then in node.versions or ():
            if r is raw:
                v = then
        if now != v:
            raise TraceError(
                f"backward: an array that op '{node.prim.name}' saved for the gradient was "
                f"modified in place after it was recorded (version {v}, now {now}), so its "
                "gradient would be computed from values the forward pass did not use; "
                "modify a copy instead (or recompute the value after the change)"
            )


# --------------------------------------------------------------------------- memory


class Account(list):
    """The keys a node's saved arrays hold in ``MEMORY``; dropping it (release, or
    the node dying) returns the bytes. Only nodes that save arrays have one, so
    the other nodes die without a Python-level finalizer."""

    __slots__ = ()

    def __del__(self):
        MEMORY.forget(self)


class MemoryCounter:
    """Deterministic accounting of the bytes traces keep alive for the backward pass.

    Arrays are counted once however many nodes save them (keyed by identity);
    the data of leaf nodes (traced inputs) is not counted: the caller holds it,
    and neither are scalars (Python numbers and NumPy scalar objects), which are
    host objects, not array buffers.
    """

    def __init__(self):
        self.current = 0
        self.arrays = {}  # id(raw) -> [count, nbytes, op]
        self.trackers = []

    def remember(self, op: str, raws) -> Account:
        keys = Account()
        added = 0
        arrays = self.arrays
        for raw in raws:
            key = id(raw)
            entry = arrays.get(key)
            if entry is None:
                nbytes = raw.nbytes
                arrays[key] = [1, nbytes, op]
                added += nbytes
            else:
                entry[0] += 1
            keys.append(key)
        if added:
            self.current += added
            for t in self.trackers:
                t._update(self)
        return keys

    def remember_one(self, op: str, raw) -> Account:
        """``remember`` for one array (the common case, kept lean)."""
        key = id(raw)
        entry = self.arrays.get(key)
        if entry is None:
            nbytes = raw.nbytes
            self.arrays[key] = [1, nbytes, op]
            self.current += nbytes
            if self.trackers:
                for t in self.trackers:
                    t._update(self)
        else:
            entry[0] += 1
        acct = Account()
        acct.append(key)
        return acct

    @property
    def by_op(self):
        """Bytes kept now, by the op that saved each array (derived from the arrays
        themselves, so it always agrees with ``current``)."""
        out = {}
        for _count, nbytes, op in list(self.arrays.values()):
            out[op] = out.get(op, 0) + nbytes
        return out

    def forget(self, keys):
        arrays = self.arrays
        for key in keys:
            entry = arrays.get(key)
            if entry is None:
                continue
            entry[0] -= 1
            if entry[0] == 0:
                del arrays[key]
                self.current -= entry[1]


MEMORY = MemoryCounter()


# --------------------------------------------------------------------------- backward


_by_seq = operator.attrgetter("seq")


def _collect(roots, targets):
    """The nodes whose VJP the walk must run, in reverse creation order, and
    ``reach`` (node -> whether it leads to a target), or ``None`` when every
    collected node does (each path from the roots ends at a target: no pruning)."""
    target_nodes = {n for n, _ in targets}
    nodes = []
    seen = set()
    stack = [r[0] for r in roots]
    prune = False
    tainted = False
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        nodes.append(n)
        start = len(stack)
        for p in n.parents:
            if p is not None:
                stack.append(p[0])
        if len(stack) == start:
            if n not in target_nodes:
                prune = True  # a path ends at an input that was not asked for
        elif n.tainted:
            tainted = True
    nodes.sort(key=_by_seq)  # ascending: parents before children
    if not prune:
        if tainted:
            raise TraceError(_TAINTED)
        nodes.reverse()
        return nodes, None
    reach = {}
    order = []
    for n in nodes:
        for p in n.parents:
            if p is not None and reach[p[0]]:
                if n.tainted:
                    raise TraceError(_TAINTED)
                reach[n] = True
                order.append(n)
                break
        else:
            reach[n] = n in target_nodes
    order.reverse()
    return order, reach


_TAINTED = (
    "dlgradient: the value being differentiated depends on a gradient that "
    "was computed without enable_higher_derivatives=True; pass "
    "enable_higher_derivatives=True to the first dlgradient call"
)


_NODATA = (Meta, int, float, complex, bool, type(None))


def _holds_data(saved):
    """Whether a node's saved values include an array (what releasing frees)."""
    if saved[0] is not None:
        return True
    for r in saved[1]:
        if type(r) not in _NODATA:
            return True
    return False


def _released_error(prim):
    return TraceError(
        f"backward: the trace data of op '{prim.name}' was released by an "
        "earlier gradient computation; pass retain_data=True (dlgradient) or "
        "retain_graph=True (backward) to the first call to differentiate twice"
    )


# --------------------------------------------------------------------------- leaf hooks

# leaf node -> sink (gpugrad.distributed's gradient reducer), or None when nothing is
# hooked. In a walk asking for a hooked leaf, ``sink.begin()`` runs first,
# ``sink.ready(node, cotangent)`` the moment the leaf's cotangent is final (``None``:
# nothing reached it), and after the walk ``sink.done()`` returns ``{node: cotangent}``
# to hand back instead. Unused, a walk pays one ``is None`` test per node.
LEAF_HOOKS = None


def _leaf_plan(hooks, targets, order, cts):
    """Map each consumer node of a hooked target to the targets it feeds; count the
    consumers per target (edges the walk will process) and fire those with none."""
    pending = {}
    for n, _ in targets:
        if n in hooks:
            pending[n] = 0
    if not pending:
        return None
    plan = {}
    for n in order:
        fed = [p[0] for p in n.parents if p is not None and p[0] in pending]
        if fed:
            fed = list(dict.fromkeys(fed))
            plan[n] = fed
            for t in fed:
                pending[t] += 1
    plan[None] = pending
    for sink in {id(hooks[t]): hooks[t] for t in pending}.values():
        sink.begin()
    for t, count in pending.items():
        if count == 0:
            slot = cts.get(t)
            hooks[t].ready(t, None if slot is None else slot[0])
    return plan


def _leaf_fire(plan, node, cts):
    pending = plan[None]
    for t in plan[node]:
        pending[t] -= 1
        if pending[t] == 0:
            slot = cts.get(t)
            LEAF_HOOKS[t].ready(t, None if slot is None else slot[0])


def _leaf_done(plan, cts):
    sinks = {id(LEAF_HOOKS[t]): LEAF_HOOKS[t] for t in plan[None]}
    for sink in sinks.values():
        for t, g in sink.done().items():
            cts.setdefault(t, [None])[0] = g


def backward(roots, targets, *, create_graph=False, retain=False, glue):
    """Reverse walk.

    roots: list of (node, out_index, cotangent); targets: list of (node, out_index).
    Returns the targets' cotangents (``None`` where nothing arrived).

    The ops layer's ``glue`` runs a node's VJP (``run_vjp``), undoes broadcasting
    (``unbroadcast``) and makes zeros for a missing cotangent of a multi-output
    node. With ``create_graph`` cotangents are dlarrays and the VJPs are recorded;
    without it they are raw arrays (the first-order fast path), and a primitive's
    raw ``fast`` rule is called directly when it has one.
    """
    unbroadcast = glue.unbroadcast
    run_vjp = glue.run_vjp
    add = glue.add  # operator.add (an accelerator trace records it)
    order, reach = _collect(roots, targets)
    cts = {}
    for n, i, g in roots:
        slot = cts.get(n)
        if slot is None:
            slot = cts[n] = [None] * len(n.out_meta)
        slot[i] = g if slot[i] is None else add(slot[i], g)
    plan = None if LEAF_HOOKS is None else _leaf_plan(LEAF_HOOKS, targets, order, cts)
    token = None
    if create_graph:
        outer = FRAME.get()
        token = FRAME.set(Frame(outer.trace, True, outer.training))
    try:
        for node in order:
            slot = cts.get(node)
            if slot is None:
                if plan is not None and node in plan:
                    _leaf_fire(plan, node, cts)
                continue
            prim = node.prim
            if prim is LEAF:
                in_cts = slot
            else:
                saved = node.saved
                if saved is RELEASED:
                    raise _released_error(prim)
                if VERSIONS:
                    check_versions(node)
                if prim.multiple_outputs:
                    g = tuple(
                        c if c is not None else glue.zeros(m, create_graph)
                        for c, m in zip(slot, node.out_meta)
                    )
                else:
                    g = slot[0]
                fast = prim.fast
                if fast is not None and not create_graph:
                    params = node.params
                    if params:
                        in_cts = fast(g, saved[0], *saved[1], **params)
                    else:
                        in_cts = fast(g, saved[0], *saved[1])
                else:
                    if token is None:
                        # why: a VJP on dlarrays (custom pullbacks may close over
                        # traced values) must not record in a first-order walk
                        outer = FRAME.get()
                        token = FRAME.set(Frame(outer.trace, False, outer.training))
                    needs = None
                    if prim.needs:
                        needs = tuple(
                            p is not None and (reach is None or reach[p[0]]) for p in node.parents
                        )
                    in_cts = run_vjp(node, g, create_graph, needs)
                if not retain and _holds_data(saved):
                    # why: memory returns as the walk goes, not only at its end; a node
                    # that saved nothing stays usable for another pending graph
                    node.saved = RELEASED
                    node.acct = None  # returns the saved bytes (Account finalizer)
            for p, gi, meta in zip(node.parents, in_cts, node.in_meta):
                if p is None or gi is None:
                    continue
                pn = p[0]
                if reach is not None and not reach[pn]:
                    continue
                if gi.shape != meta[0] or gi.dtype != meta[1]:
                    gi = unbroadcast(gi, meta, create_graph)
                pslot = cts.get(pn)
                if pslot is None:
                    pslot = cts[pn] = [None] * len(pn.out_meta)
                    pslot[p[1]] = gi
                else:
                    pi = p[1]
                    pslot[pi] = gi if pslot[pi] is None else add(pslot[pi], gi)
            if plan is not None and node in plan:
                _leaf_fire(plan, node, cts)
        if plan is not None:
            _leaf_done(plan, cts)
    finally:
        if token is not None:
            FRAME.reset(token)
    out = []
    for n, i in targets:
        slot = cts.get(n)
        out.append(None if slot is None else slot[i])
    return out
