"""MXNet face (``gg.autograd``): ``record()``/``pause()`` scopes, ``attach_grad``,
``x.grad``, ``y.backward()`` and ``autograd.grad``.

A thin shell over the one tape engine: ``record()`` installs a trace scope with
recording on, ``attach_grad`` makes the array itself a leaf, and ``backward``
runs the engine's walk and writes the results into ``x.grad``. Python control
flow inside ``record()`` differentiates as executed (define-by-run).

>>> import gpugrad as gg
>>> x = gg.dlarray([1.0, 2.0, 3.0])
>>> x.attach_grad()
>>> with gg.autograd.record():
...     y = 2 * x * x
>>> y.backward()
>>> x.grad.numpy().tolist()
[4.0, 8.0, 12.0]
"""

from __future__ import annotations

import weakref

from . import backend, tape
from . import phase as _phase
from .array import dlarray
from .errors import TraceError
from .ops import core
from .ops.core import make

__all__ = [
    "record",
    "pause",
    "train_mode",
    "predict_mode",
    "is_recording",
    "is_training",
    "set_recording",
    "set_training",
    "grad",
]

_GRAD_REQS = ("write", "add", "null")

# leaf node -> the dlarray that owns it (so backward can write x.grad)
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# id(variable) -> (weakref to the variable, its gradient as a traced dlarray) after
# backward(create_graph=True).
# why: keyed by the variable, not its leaf node: the traced gradient's graph reaches
# the leaf node, so a node-keyed WeakKeyDictionary keeps every graph alive forever
# (value -> key cycle). The variable itself is never referenced by a graph.
_TRACED_GRADS: dict = {}


def _traced_grad(x):
    entry = _TRACED_GRADS.get(id(x))
    if entry is None or entry[0]() is not x:
        return None
    return entry[1]


def _set_traced_grad(x, g):
    key = id(x)
    if g is None:
        _TRACED_GRADS.pop(key, None)
        return
    ref = weakref.ref(x, lambda _, key=key: _drop_traced(key))
    _TRACED_GRADS[key] = (ref, g)


def _drop_traced(key):
    entry = _TRACED_GRADS.get(key)
    if entry is not None and entry[0]() is None:
        del _TRACED_GRADS[key]


# ------------------------------------------------------------------ scopes


class _Scope:
    """``with`` scope that sets recording and/or training (and restores them)."""

    def __init__(self, recording, training):
        self._recording = recording
        self._training = training
        self._tokens = []

    def __enter__(self):
        frame = tape.FRAME.get()
        trace = frame.trace
        if self._recording:
            trace = tape.Trace("record", frame.trace)
        new = tape.Frame(
            trace,
            frame.recording if self._recording is None else self._recording,
            frame.training if self._training is None else self._training,
        )
        self._tokens.append(tape.FRAME.set(new))
        return self

    def __exit__(self, *exc):
        tape.FRAME.reset(self._tokens.pop())
        return False


def record(train_mode=True):
    """Scope in which operations on arrays with ``attach_grad()`` are recorded for
    ``backward``; Dropout and BatchNorm run in training mode unless
    ``train_mode=False`` (MXNet's default). A layer's own ``net.eval()``/``net.train()``
    and a ``net.predict(x)``/``net.forward(x)`` call take precedence (``gpugrad.phase``).

    >>> import gpugrad as gg
    >>> with gg.autograd.record():
    ...     a = gg.autograd.is_training()
    >>> with gg.autograd.record(train_mode=False):
    ...     b = gg.autograd.is_training()
    >>> a, b
    (True, False)
    """
    return _Scope(True, bool(train_mode))


def pause(train_mode=False):
    """Scope in which nothing is recorded (inside a ``record()`` block).

    >>> import gpugrad as gg
    >>> from gpugrad import autograd
    >>> x = gg.dlarray([1.0, 2.0])
    >>> x.attach_grad()
    >>> with autograd.record():
    ...     y = x * x
    ...     with autograd.pause():
    ...         scale = gg.sum(x)  # a constant for the backward pass
    ...     z = gg.sum(y * scale)
    >>> z.backward()
    >>> x.grad.numpy()  # 2 x * scale, without the derivative of scale
    array([ 6., 12.])
    """
    return _Scope(False, bool(train_mode))


def train_mode():
    """Scope in which layers behave as in training (dropout drops)."""
    return _Scope(None, True)


def predict_mode():
    """Scope in which layers behave as in inference."""
    return _Scope(None, False)


def is_recording() -> bool:
    """Whether operations are being recorded now.

    >>> from gpugrad import autograd
    >>> autograd.is_recording()
    False
    >>> with autograd.record():
    ...     autograd.is_recording()
    True
    """
    return tape.FRAME.get().recording


def is_training() -> bool:
    """Whether layers run in training mode now: the innermost choice (``record``,
    ``pause``, ``train_mode``, ``predict_mode``, ``set_training``,
    ``gg.learning_phase``), else True exactly under a gradient trace; False outside
    ``record()`` when nobody chose (see ``gpugrad.phase``)."""
    return _phase.is_training()


def set_recording(flag) -> bool:
    """Turn recording on or off for the current context; returns the previous state.

    >>> from gpugrad import autograd
    >>> previous = autograd.set_recording(True)
    >>> autograd.is_recording(), previous
    (True, False)
    >>> _ = autograd.set_recording(previous)
    """
    frame = tape.FRAME.get()
    flag = bool(flag)
    trace = frame.trace
    if flag and trace is None:
        trace = tape.Trace("record", None)
    # why: as in MXNet, recording alone does not train (is_training() stays False)
    training = False if frame.training is None else frame.training
    tape.FRAME.set(tape.Frame(trace, flag, training))
    return frame.recording


def set_training(flag) -> bool:
    """Turn training mode on or off for the current context; returns the previous state."""
    frame = tape.FRAME.get()
    previous = _phase.is_training()
    tape.FRAME.set(tape.Frame(frame.trace, frame.recording, bool(flag)))
    return previous


# ------------------------------------------------------------------ dlarray methods


def attach_grad(self, grad_req="write"):
    """Make this array a variable: operations on it inside ``record()`` are recorded
    and ``backward`` stores its gradient in ``x.grad`` (``grad_req``: ``"write"``
    overwrites, ``"add"`` accumulates, ``"null"`` computes none)."""
    if grad_req not in _GRAD_REQS:
        raise ValueError(f"attach_grad: grad_req must be one of {_GRAD_REQS}, got {grad_req!r}")
    if self.dtype.kind not in "fc":
        raise TypeError(
            f"attach_grad: an array of dtype {self.dtype} cannot have a gradient; "
            "use a float or complex array"
        )
    node = tape.make_leaf((self._data.shape, self._data.dtype), None, grad_req=grad_req)
    self._node = node
    self._idx = 0
    self._taint = False
    self._grad = backend.xp().zeros(self._data.shape, self._data.dtype)
    _OWNERS[node] = weakref.ref(self)


def _get_grad(self):
    g = _traced_grad(self) if self._node is not None else None
    if g is not None:
        return g
    if self._grad is None:
        return None
    return make(self._grad, self._fmt)


def detach(self):
    """An untraced copy (a constant for the tape)."""
    return make(self._data, self._fmt)


def _seed(head_grad, y, where):
    if head_grad is None:
        return make(backend.xp().ones(y.shape, y.dtype))
    h = head_grad if isinstance(head_grad, dlarray) else dlarray(head_grad)
    if h.shape != y.shape:
        raise ValueError(
            f"{where}: head_grads has shape {h.shape}, but the head has shape {y.shape}"
        )
    return h


def _attached_leaves(root):
    """The attached variables (leaf nodes with an owner) that ``root`` depends on."""
    found = []
    seen = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.is_leaf:
            ref = _OWNERS.get(n)
            if ref is not None and ref() is not None and n.params != "null":
                found.append((n, ref()))
        for p in n.parents:
            if p is not None:
                stack.append(p[0])
    return found


def _released(root):
    """Whether the graph behind ``root`` was freed by an earlier backward."""
    seen = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.saved is tape.RELEASED:
            return True
        stack.extend(p[0] for p in n.parents if p is not None)
    return False


_NOT_RECORDED = (
    "backward: this value was not recorded, so it has no gradient graph. Call "
    "x.attach_grad() on the inputs and compute the value inside "
    "`with gg.autograd.record():`"
)


def _link_fwd(g, v):
    return g


# why: with create_graph=True a gradient that does not depend on the variable (the
# derivative of x*2, clip, sign, dropout) is a constant; as in MXNet it must still be
# differentiable (derivative zero), not "not recorded": it is linked to the variable
# by an identity whose derivative is zero
_CONST_GRAD = core.Primitive(
    "constant_gradient", _link_fwd, lambda g, ans, c, v: (None, None), register=False
)


def _linked(g, v):
    """``g`` (a gradient computed with create_graph=True) recorded as depending on ``v``."""
    if g._node is not None or v._node is None:
        return g
    with tape.scope(recording=True):
        out = core.bind(_CONST_GRAD, (g, v))
    return make(out._data, v._fmt, out._node, out._idx, g._taint)


def _run(roots, targets, create_graph, retain_graph, where):
    try:
        return core.backward(roots, targets, create_graph=create_graph, retain=retain_graph)
    except TraceError as exc:
        msg = str(exc)
        if "released" in msg and "retain_graph" not in msg:
            raise TraceError(
                f"{where}: the graph was already freed by an earlier backward; pass "
                "retain_graph=True to the first call to backpropagate through it twice"
            ) from exc
        raise


def backward(self, head_grads=None, retain_graph=False, create_graph=False):
    """Backpropagate from this value into the ``grad`` of every variable it depends
    on (a non-scalar value is summed, i.e. the head gradient is ones).
    ``retain_graph=True`` keeps the graph for another backward; ``create_graph=True``
    records the backward so ``x.grad`` can be differentiated again."""
    if self._node is None:
        raise TraceError(_NOT_RECORDED)
    seed = _seed(head_grads, self, "backward")
    pairs = _attached_leaves(self._node)
    if not pairs:
        if _released(self._node):
            raise TraceError(
                "backward: the graph was already freed by an earlier backward; pass "
                "retain_graph=True to the first call to backpropagate through it twice"
            )
        raise TraceError(
            "backward: the value does not depend on any array with attach_grad(); call "
            "x.attach_grad() before computing it inside `with gg.autograd.record():`"
        )
    targets = [(n, 0) for n, _ in pairs]
    results = _run(
        [(self._node, self._idx, seed)],
        targets,
        create_graph,
        retain_graph or create_graph,
        "backward",
    )
    xp = backend.xp()
    for (node, x), g in zip(pairs, results):
        if g is None:
            g = make(xp.zeros(x.shape, x.dtype))
        add = node.params == "add"
        if create_graph:
            prev = _traced_grad(x)
            if add:
                base = (
                    prev
                    if prev is not None
                    else make(x._grad if x._grad is not None else xp.zeros(x.shape, x.dtype))
                )
                g = base + g
            tg = _linked(make(g._data, x._fmt, g._node, g._idx, g._taint), x)
            _set_traced_grad(x, tg)
            x._grad = tg._data
        else:
            _set_traced_grad(x, None)
            if add and x._grad is not None:
                x._grad = core._Glue.add(x._grad, g._data)  # recorded by dlaccelerate
            else:
                x._grad = g._data


def grad(heads, variables, head_grads=None, retain_graph=None, create_graph=False):
    """Gradients of ``heads`` (summed) with respect to ``variables`` without touching
    ``x.grad``: one array for one variable, else a list. ``retain_graph`` defaults to
    ``create_graph``; with ``create_graph=True`` the results can be differentiated again,
    also when they do not depend on the variable (as in MXNet, their derivative is then
    zero rather than an error).

    >>> import gpugrad as gg
    >>> x = gg.dlarray([1.0, -2.0])
    >>> x.attach_grad()
    >>> with gg.autograd.record():
    ...     dx = gg.autograd.grad(gg.sum(x * 2), x, create_graph=True)  # constant 2
    >>> dx.backward()
    >>> x.grad.numpy().tolist()
    [0.0, 0.0]
    """
    single_head = isinstance(heads, dlarray)
    hs = [heads] if single_head else list(heads)
    single_var = isinstance(variables, dlarray)
    vs = [variables] if single_var else list(variables)
    if head_grads is None:
        hgs = [None] * len(hs)
    elif isinstance(head_grads, (list, tuple)) and not single_head:
        hgs = list(head_grads)
    else:
        hgs = [head_grads]
    if len(hgs) != len(hs):
        raise ValueError(f"grad: {len(hs)} head(s) but {len(hgs)} head gradient(s)")
    roots = []
    for h, hg in zip(hs, hgs):
        if not isinstance(h, dlarray):
            raise TypeError(f"grad: heads must be dlarrays, got {type(h).__name__}")
        if h._node is None:
            raise TraceError(_NOT_RECORDED.replace("backward", "grad", 1))
        roots.append((h._node, h._idx, _seed(hg, h, "grad")))
    for k, v in enumerate(vs):
        if not isinstance(v, dlarray) or v._node is None:
            raise TraceError(
                f"grad: variable {k} is not recorded; call attach_grad() on it before "
                "computing the heads inside `with gg.autograd.record():`"
            )
    if retain_graph is None:
        retain_graph = create_graph
    results = _run(roots, [(v._node, v._idx) for v in vs], create_graph, retain_graph, "grad")
    xp = backend.xp()
    out = []
    for v, g in zip(vs, results):
        if g is None:
            z = make(xp.zeros(v.shape, v.dtype), v._fmt)
            out.append(_linked(z, v) if create_graph else z)
        elif create_graph:
            out.append(_linked(make(g._data, v._fmt, g._node, g._idx, g._taint), v))
        else:
            out.append(make(g._data, v._fmt))
    return out[0] if single_var else out


def _install():
    d = dlarray
    d.attach_grad = attach_grad
    d.grad = property(_get_grad, doc="The gradient stored by backward (None before attach_grad).")
    d.detach = detach
    d.backward = backward


_install()
