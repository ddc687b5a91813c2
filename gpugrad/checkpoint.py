"""Checkpointing: recompute intermediate values in the pullback instead of keeping them.

A checkpoint is one node. Its forward runs the function with recording off, saving
only its inputs, the traced dlarrays it captured (closure cells, default arguments,
referenced globals, ``self`` / layer parameters) and the random state. Its VJP
restores the random state, re-runs the function on fresh leaves in a recording
sub-trace, checks that the recomputed outputs have the saved structure, shapes and
dtypes, and backpropagates through the recomputed graph. Under
``enable_higher_derivatives`` the fresh leaves are linked to the saved inputs, so
the gradient is itself differentiable.

Chains of layers (``checkpoint_sequential``) are scheduled on that one node:
uniform segments (sqrt(n) by default, Chen et al. 2016) or, under a memory budget,
the binomial schedule of Griewank & Walther (Revolve), which uses the fewest
recomputations for a given number of snapshots.

>>> import gpugrad as gg
>>> w = gg.dlarray([0.5, -1.0])
>>> def loss(w):
...     y = gg.checkpoint(lambda v: gg.sum(gg.tanh(v * w) ** 2), gg.dlarray([1.0, 2.0]))
...     return gg.dlgradient(y, w)
>>> g = gg.dlfeval(loss, w)
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import types
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np

from . import backend, tape
from . import random as _random
from .array import dlarray
from .errors import CheckpointError
from .ops import core
from .ops.core import Primitive, make
from .tree import leaves, map_arrays

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = [
    "CheckpointError",
    "CheckpointStats",
    "checkpoint",
    "checkpoint_sequential",
    "install_layer_method",
    "is_recomputing",
    "optimal_recomputations",
    "parse_bytes",
    "recompute_in_gradient",
    "revolve_schedule",
]


_RECOMPUTE = tape.RECOMPUTE  # kind of the sub-trace a pullback re-runs its function in
_PROBE = tape.PROBE  # kind of the sub-trace checkpoint_sequential measures layers in


def is_recomputing() -> bool:
    """True while checkpointing re-runs a forward pass: the recomputation inside a
    pullback, or ``checkpoint_sequential``'s memory probe. Side effects that the first
    run already had (a BatchNorm's running statistics) must not happen again. (The
    flag lives on the tape's frame, ``gg.tape.is_recomputing``.)"""
    return tape.is_recomputing()


# ------------------------------------------------------------------ captured arrays

_SKIP_MODULES = ("gpugrad", "numpy", "cupy", "builtins", "torch", "functools", "math")
_ATOMS = (str, bytes, int, float, complex, bool, type(None), type, types.ModuleType, range)


def _code_names(code, out):
    out.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_names(const, out)


def _is_library(obj):
    module = getattr(obj, "__module__", None) or ""
    return module != __name__ and module.split(".", 1)[0] in _SKIP_MODULES


def _scan(obj, found, seen, depth):
    """Collect every dlarray reachable from ``obj`` (closures, defaults, referenced
    globals, bound ``self``, partial arguments, containers, object attributes)."""
    if type(obj) is dlarray:
        found.append(obj)
        return
    if isinstance(obj, _ATOMS) or depth > 8 or id(obj) in seen:
        return
    if isinstance(obj, np.ndarray) or backend.is_device_array(obj):
        return
    seen.add(id(obj))
    depth += 1
    if hasattr(obj, "__gg_flatten__") and not isinstance(obj, type):
        found.extend(leaves(obj))
        for value in getattr(obj, "__dict__", {}).values():  # e.g. a wrapped layer's closure
            if not isinstance(value, (dlarray, list, tuple, dict)):
                _scan(value, found, seen, depth)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            _scan(item, found, seen, depth)
        return
    if isinstance(obj, dict):
        for item in obj.values():
            _scan(item, found, seen, depth)
        return
    if isinstance(obj, functools.partial):
        _scan(obj.func, found, seen, depth)
        _scan(obj.args, found, seen, depth)
        _scan(obj.keywords, found, seen, depth)
        return
    if inspect.ismethod(obj):
        _scan(obj.__self__, found, seen, depth)
        _scan(obj.__func__, found, seen, depth)
        return
    if isinstance(obj, types.FunctionType):
        if _is_library(obj) and depth > 1:
            return
        for cell in obj.__closure__ or ():
            try:
                _scan(cell.cell_contents, found, seen, depth)
            except ValueError:  # an empty cell
                pass
        _scan(obj.__defaults__, found, seen, depth)
        _scan(obj.__kwdefaults__, found, seen, depth)
        names = set()
        _code_names(obj.__code__, names)
        module_globals = obj.__globals__
        for name in names:
            if name in module_globals:
                _scan(module_globals[name], found, seen, depth)
        return
    if callable(obj) and _is_library(obj):
        return
    attrs = getattr(obj, "__dict__", None)
    if attrs is not None and not _is_library(type(obj)):
        for value in attrs.values():
            _scan(value, found, seen, depth)


def captured_arrays(f):
    """The traced, differentiable dlarrays that ``f`` can reach without taking them as
    arguments (each once)."""
    found = []
    _scan(f, found, set(), 0)
    out = []
    ids = set()
    for a in found:
        if a._node is not None and a.dtype.kind in "fc" and id(a) not in ids:
            ids.add(id(a))
            out.append(a)
    return out


# ------------------------------------------------------------------ helpers


def _name(f):
    return getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or type(f).__name__


def _checksum(raw):
    """A cheap fingerprint of an array's bytes (to detect in-place mutation)."""
    if isinstance(raw, np.ndarray):
        data = raw if raw.flags.c_contiguous else np.ascontiguousarray(raw)
        return zlib.adler32(memoryview(data).cast("B")) if data.size else 0
    if backend.is_device_array(raw):  # cuda and cuda-sim
        xp = backend.xp()
        words = xp.ascontiguousarray(raw).reshape(-1).view(xp.uint8).astype(xp.uint64)
        ramp = xp.arange(words.size, dtype=xp.uint64) % xp.uint64(65521) + xp.uint64(1)
        # why: stays on the device (int() here was two host syncs per input and call);
        # _mutated compares all inputs with one device->host copy
        return xp.stack([words.sum(), (words * ramp).sum()])
    return None


def _mutated(raws, sums):
    """Positions of the inputs whose checksum changed since ``sums`` was taken (one
    device->host copy for all device inputs together)."""
    changed, on_device = [], []
    for i, (r, before) in enumerate(zip(raws, sums)):
        if before is None:
            continue
        after = _checksum(r)
        if backend.is_device_array(before):
            on_device.append((i, (after != before).any()))
        elif after != before:
            changed.append(i)
    if on_device:
        flags = backend.to_host(backend.xp().stack([d for _, d in on_device]))
        changed += [i for (i, _), flag in zip(on_device, flags) if flag]
    return sorted(changed)


def _structure(obj):
    """A hashable description of a (possibly nested) output, dlarrays as slots."""
    if type(obj) is dlarray:
        return "dlarray"
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_structure(o) for o in obj))
    if isinstance(obj, dict):
        return (type(obj).__name__, tuple((k, _structure(v)) for k, v in obj.items()))
    children = leaves(obj)
    if children:
        return (type(obj).__name__, len(children))
    return type(obj).__name__


def _differentiable(a):
    return a.dtype.kind in "fc"


# ------------------------------------------------------------------ the checkpoint node


def checkpoint(f: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call ``f(*args, **kwargs)`` without keeping its intermediate values for the
    backward pass: ``f`` runs once now (not recorded) and once more, recorded, inside
    the pullback. The random state is replayed, so dropout masks and other draws are
    identical in both runs. Traced dlarrays that ``f`` captures (closure variables,
    layer parameters) receive gradients as if they were arguments.

    Raises ``CheckpointError`` if the recomputation does not reproduce the first run
    (different output structure, shape or dtype) or if ``f`` mutates its input.

    >>> import gpugrad as gg
    >>> def f(x):
    ...     y = gg.checkpoint(lambda v: gg.sum(gg.exp(v)), x)
    ...     return gg.dlgradient(y, x)
    >>> gg.dlfeval(f, gg.dlarray([0.0, 0.0])).numpy()
    array([1., 1.])
    """
    if not callable(f):
        raise TypeError(f"checkpoint: f must be callable, got {type(f).__name__}")
    frame = tape.FRAME.get()
    if not frame.recording:
        return f(*args, **kwargs)
    arg_arrays = leaves((args, kwargs))
    arg_ids = {id(a) for a in arg_arrays}
    captured = [c for c in captured_arrays(f) if id(c) not in arg_ids]
    if not captured and not any(a._node is not None for a in arg_arrays):
        return f(*args, **kwargs)
    return _CheckpointCall(f, args, kwargs, arg_arrays, captured, frame).run()


def recompute_in_gradient(f: Callable[_P, _T]) -> Callable[_P, _T]:
    """``f`` with its intermediate values recomputed in the pullback instead of kept
    (Swift's ``withRecomputationInPullbacks``). See :func:`checkpoint`.

    >>> import gpugrad as gg
    >>> block = gg.recompute_in_gradient(lambda x: gg.tanh(gg.tanh(x)))
    >>> g = gg.dlfeval(lambda x: gg.dlgradient(gg.sum(block(x)), x), gg.dlarray([0.0]))
    >>> g.numpy()
    array([1.])
    """
    if not callable(f):
        raise TypeError(f"recompute_in_gradient: f must be callable, got {type(f).__name__}")

    @functools.wraps(f)
    def recomputed(*args, **kwargs):
        return checkpoint(f, *args, **kwargs)

    recomputed.__wrapped_checkpoint__ = f
    return recomputed


class _CheckpointCall:
    """One application of a checkpointed function: runs the forward and records the
    node whose VJP recomputes."""

    def __init__(self, f, args, kwargs, arg_arrays, captured, frame):
        self.f = f
        self.args = args
        self.kwargs = kwargs
        self.arg_arrays = arg_arrays
        self.captured = captured
        self.frame = frame

    def _call_with(self, new_args):
        """Call f with the dlarrays of its arguments replaced (in order) by ``new_args``."""
        it = iter(new_args)
        args, kwargs = map_arrays(lambda _a: next(it), (self.args, self.kwargs))
        return self.f(*args, **kwargs)

    def run(self):
        f = self.f
        name = _name(f)
        arg_arrays = self.arg_arrays
        raws = [a._data for a in arg_arrays]
        fmts = [a._fmt for a in arg_arrays]
        sums = [_checksum(r) for r in raws]
        training = self.frame.training
        # why: the draws' states are recorded per call (and per thread), so the
        # recomputation replays them whatever other threads draw meanwhile
        with tape.scope(recording=False), _random.recording() as rng:
            out = self._call_with([make(r, fm) for r, fm in zip(raws, fmts)])
        mutated = _mutated(raws, sums)
        if mutated:
            a = arg_arrays[mutated[0]]
            raise CheckpointError(
                f"checkpoint: {name} modified its input (shape {a.shape}) in place; a "
                "checkpointed function must not mutate its arguments, since they are "
                "saved to recompute it in the backward pass; work on a copy instead"
            )
        out_leaves = leaves(out)
        diff_pos = [i for i, o in enumerate(out_leaves) if _differentiable(o)]
        if not diff_pos:
            return out
        structure = _structure(out)
        out_meta = [(out_leaves[i].shape, out_leaves[i].dtype) for i in diff_pos]
        captured = self.captured
        captured_fmts = [c._fmt for c in captured]
        n_args = len(arg_arrays)
        call = self

        holder = [None]  # a weak reference to this call's node, set once it is recorded

        def vjp(g, ans, *inputs):
            frame = tape.FRAME.get()
            me = holder[0]() if holder[0] is not None else None
            eager = _EAGER.get(me.trace) if me is not None else None
            if eager is not None:
                _release_after(eager, me)
            sub = tape.Trace(_RECOMPUTE, frame.trace)
            fresh_nodes = []

            def fresh(saved, fmt):
                if not isinstance(saved, dlarray) or not _differentiable(saved):
                    return saved if isinstance(saved, dlarray) else None
                parent = None
                if frame.recording and saved._node is not None:
                    parent = (saved._node, saved._idx)
                node = tape.make_leaf((saved._data.shape, saved._data.dtype), sub, parent)
                fresh_nodes.append(node)
                return make(saved._data, fmt, node, 0, saved._taint)

            fresh_args = [fresh(s, fm) for s, fm in zip(inputs[:n_args], fmts)]
            fresh_captured = [fresh(s, fm) for s, fm in zip(inputs[n_args:], captured_fmts)]
            # why: f reads its captured arrays from its closure, so they are rebound in
            # place to fresh leaves of the sub-trace for the recomputation
            originals = [(c._node, c._idx) for c in captured]
            try:
                for c, fc in zip(captured, fresh_captured):
                    c._node, c._idx = fc._node, 0
                with (
                    tape.scope(trace=sub, recording=True, training=training),
                    _random.replaying(rng),
                ):
                    again = call._call_with(
                        [fa if fa is not None else make(r) for fa, r in zip(fresh_args, raws)]
                    )
            finally:
                for c, (node, idx) in zip(captured, originals):
                    c._node, c._idx = node, idx
            again_leaves = leaves(again)
            if _structure(again) != structure:
                raise CheckpointError(
                    f"checkpoint: recomputing {name} in the backward pass returned a different "
                    f"output structure ({_structure(again)!r} instead of {structure!r}); a "
                    "checkpointed function must be deterministic given its inputs and the "
                    "random state"
                )
            roots = []
            for k, i in enumerate(diff_pos):
                o = again_leaves[i]
                if (o.shape, o.dtype) != out_meta[k]:
                    raise CheckpointError(
                        f"checkpoint: recomputing {name} in the backward pass gave output {i} "
                        f"with shape {o.shape} and dtype {o.dtype}, but the first run gave "
                        f"shape {out_meta[k][0]} and dtype {out_meta[k][1]}; a checkpointed "
                        "function must be deterministic given its inputs and the random state"
                    )
                if o._node is not None and g[k] is not None:
                    roots.append((o._node, o._idx, g[k]))
            graph = _check_closed(roots, fresh_nodes, sub, name)
            targets = [(n, 0) for n in fresh_nodes]
            if not frame.recording:
                # why: this walk is ours and keeps nothing, so a nested checkpoint may
                # release what the walk has finished with before it recomputes
                _EAGER[sub] = sorted(graph, key=_seq_of)
            try:
                if roots:
                    grads = core.backward(roots, targets, create_graph=frame.recording)
                else:
                    grads = [None] * len(targets)
            finally:
                _EAGER.pop(sub, None)
            if eager is not None:
                me.release()
            by_node = dict(zip(fresh_nodes, grads))
            result = []
            for fa in fresh_args + fresh_captured:
                if isinstance(fa, dlarray) and fa._node in by_node:
                    result.append(by_node[fa._node])
                else:
                    result.append(None)
            return tuple(result)

        prim = Primitive(
            f"checkpoint({name})",
            None,
            vjp,
            save=range(n_args + len(captured)),
            multiple_outputs=True,
            register=False,
        )
        node_inputs = list(arg_arrays) + captured
        node_raws = raws + [c._data for c in captured]
        out_raws = tuple(out_leaves[i]._data for i in diff_pos)
        taint = any(a._taint for a in node_inputs)
        traced = core._record(prim, node_inputs, node_raws, out_raws, None, "", self.frame, taint)
        holder[0] = weakref.ref(traced[0]._node)
        replaced = {i: t for i, t in zip(diff_pos, traced)}
        counter = iter(range(len(out_leaves)))

        def relink(o):
            i = next(counter)
            t = replaced.get(i)
            return o if t is None else make(t._data, o._fmt, t._node, t._idx, t._taint)

        return map_arrays(relink, out)


def _check_closed(roots, fresh_nodes, sub, name):
    """Every traced value the recomputation used must be an argument or a captured
    array: a dependency the checkpoint could not see would get no gradient."""
    stop = set(fresh_nodes)
    seen = set()
    stack = [r[0] for r in roots]
    while stack:
        node = stack.pop()
        if node in seen or node in stop:
            continue
        seen.add(node)
        if node.trace is not sub:
            raise CheckpointError(
                f"checkpoint: {name} uses a traced dlarray that is neither one of its "
                "arguments nor reachable from its closure, default arguments or layer "
                "parameters, so its gradient cannot be routed; pass that array as an "
                "argument of the checkpointed function"
            )
        for p in node.parents:
            if p is not None:
                stack.append(p[0])
    return seen


# recompute sub-trace -> its recorded nodes (ascending), while a first-order walk over
# them that keeps nothing is running
_EAGER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _seq_of(node):
    return node.seq


def _release_after(nodes, me):
    """Release the nodes recorded after ``me`` in a walk that keeps nothing: the
    reverse walk has already finished with them (it runs in reverse creation order)."""
    keep = []
    for node in nodes:
        if node.seq > me.seq:
            if not node.is_leaf:
                node.release()
        else:
            keep.append(node)
    nodes[:] = keep


# ------------------------------------------------------------------ Revolve arithmetic


def _beta(s, t):
    """Griewank's beta(s, t) = C(s + t, s): the most steps that s snapshots and t sweeps
    can reverse."""
    if s < 0 or t < 0:
        return 0
    return math.comb(s + t, s)


def _repetitions(steps, snapshots):
    t = 0
    while _beta(snapshots, t) < steps:
        t += 1
    return t


def optimal_recomputations(steps, snapshots):
    """The fewest forward layer applications, beyond the ``steps`` taped ones, needed
    to reverse a chain of ``steps`` layers with ``snapshots`` stored states (the chain's
    input counts as one): ``t * l - beta(s + 1, t - 1)`` with ``t`` the smallest
    repetition number such that ``beta(s, t) >= l`` (Griewank & Walther 2000).

    >>> optimal_recomputations(10, 1), optimal_recomputations(10, 9)
    (45, 9)
    """
    steps, snapshots = int(steps), int(snapshots)
    if steps <= 1:
        return 0
    if snapshots < 1:
        raise ValueError(
            f"optimal_recomputations: a chain of {steps} layers needs at least 1 snapshot"
        )
    t = _repetitions(steps, snapshots)
    return t * steps - _beta(snapshots + 1, t - 1)


@functools.lru_cache(maxsize=65536)
def _evaluations(steps, snapshots):
    """Total layer applications (taped + advances) of the optimal schedule."""
    if steps <= 1:
        return steps
    if snapshots < 1:
        return math.inf
    return steps + optimal_recomputations(steps, snapshots)


@functools.lru_cache(maxsize=65536)
def _split(steps, snapshots):
    """How many layers the first (recomputed) segment of the binomial schedule holds:
    a minimizer of ``m + T(l - m, s - 1) + T(m, s)``, which is convex in ``m``."""
    if snapshots >= steps - 1:
        return 1
    if snapshots <= 1:
        return steps - 1

    def cost(m):
        return m + _evaluations(steps - m, snapshots - 1) + _evaluations(m, snapshots)

    lo, hi = 1, steps - 1
    while lo < hi:  # smallest m with cost(m + 1) >= cost(m)
        mid = (lo + hi) // 2
        if cost(mid + 1) >= cost(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def revolve_schedule(steps, snapshots):
    """The actions of the binomial checkpointing schedule that ``checkpoint_sequential``
    runs for a chain of ``steps`` layers and ``snapshots`` stored states, as a list of
    ``("advance", i)`` (layer ``i`` applied without recording) and ``("tape", i)``
    (layer ``i`` applied with recording, once each), in execution order.

    >>> actions = revolve_schedule(4, 2)
    >>> sum(kind == "advance" for kind, _ in actions) == optimal_recomputations(4, 2)
    True
    """
    steps, snapshots = int(steps), int(snapshots)
    if steps < 1:
        return []
    if snapshots < 1 and steps > 1:
        raise ValueError("revolve_schedule: a chain of more than one layer needs a snapshot")
    actions = []

    def run(start, stop, s):
        heads = []
        while stop - start > 1:
            m = _split(stop - start, s)
            actions.extend(("advance", i) for i in range(start, start + m))
            heads.append((start, start + m, s))
            start += m
            s -= 1
        actions.append(("tape", start))
        for head in reversed(heads):
            run(*head)

    run(0, steps, snapshots)
    return actions


# ------------------------------------------------------------------ sequential chains

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value, where="memory_budget"):
    """Bytes from an int or a string such as ``"256MB"`` (10**6), ``"1.5GiB"`` (2**30).

    >>> parse_bytes("1.5KiB"), parse_bytes("2 MB"), parse_bytes(100)
    (1536, 2000000, 100)
    """
    if isinstance(value, bool):
        raise TypeError(f"{where}: expected a number of bytes or a string like '256MB'")
    if isinstance(value, (int, np.integer)):
        n = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: must be finite, got {value}")
        n = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{where}: cannot read {value!r}; give bytes as an int or a string such as "
                "'256MB', '512KiB' or '1.5GiB'"
            )
        n = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise TypeError(
            f"{where}: expected a number of bytes or a string like '256MB', "
            f"got {type(value).__name__}"
        )
    if n <= 0:
        raise ValueError(f"{where}: must be positive, got {value!r}")
    return n


@dataclass
class ChainSizes:
    """Per-layer sizes of a chain, as the memory-budget planner uses them (measured by
    running each layer recorded once; the engine's accounting, in bytes).

    ``activation[i]`` is the size of layer ``i``'s input (``activation[n]`` the chain's
    output); ``tape[i]`` what layer ``i`` saves for the backward pass, its input
    excluded; ``input_saved[i]`` / ``output_saved[i]`` how much of its input / output
    it saves (0 when it keeps neither)."""

    activation: list
    tape: list
    input_saved: list
    output_saved: list


@dataclass
class CheckpointStats:
    """What ``checkpoint_sequential`` chose and did. ``layer_calls`` keeps counting
    during the backward pass (recomputations), so read it after the gradient."""

    schedule: str
    layers: int
    segments: int | None = None
    snapshots: int | None = None
    planned_recomputations: int = 0
    predicted_peak_bytes: int | None = None
    activation_bytes: int | None = None  # the largest layer input/output (budget planner)
    step_saved_bytes: int | None = None  # the largest one-layer tape (budget planner)
    layer_sizes: ChainSizes | None = None  # every layer's sizes (budget planner)
    probe_calls: int = 0
    layer_calls: int = 0
    plain_tail: int = 0  # layers after the segments, taped plainly (never recomputed)
    boundaries: list = field(default_factory=list)

    @property
    def recomputations(self):
        """Layer applications beyond one per layer (probe excluded)."""
        return self.layer_calls - self.probe_calls - self.layers


def _layer_list(layers):
    if hasattr(layers, "layers") and isinstance(layers.layers, (list, tuple)):
        return list(layers.layers)
    if callable(layers) and not isinstance(layers, (list, tuple)):
        return [layers]
    try:
        return list(layers)
    except TypeError as exc:
        raise TypeError(
            "checkpoint_sequential: layers must be a list of callables or a Sequential, "
            f"got {type(layers).__name__}"
        ) from exc


def _counted(layer, stats):
    def call(x):
        stats.layer_calls += 1
        return layer(x)

    call.__qualname__ = _name(layer)
    call.__wrapped_layer__ = layer
    return call


def _chain(layers, name):
    def run(x):
        for layer in layers:
            x = layer(x)
        return x

    run.__qualname__ = name
    return run


def _nbytes(obj):
    return sum(a._data.nbytes for a in leaves(obj))


def _revolve(layers, x, snapshots, offset):
    """Run ``layers`` on ``x`` with the binomial schedule (``snapshots`` stored states)."""
    if not tape.FRAME.get().recording:
        for layer in layers:
            x = layer(x)
        return x
    s = snapshots
    while len(layers) > 1:
        m = _split(len(layers), s)
        head = layers[:m]

        def run_head(z, head=head, s=s, offset=offset):
            return _revolve(head, z, s, offset)

        run_head.__qualname__ = f"checkpoint_sequential[{offset}:{offset + m}]"
        x = checkpoint(run_head, x)
        layers = layers[m:]
        offset += m
        s -= 1
    return layers[0](x)


def _layer_state(layers):
    """(buffer, copy) of every float state array (not a parameter) that the layers
    behind ``layers`` hold, e.g. BatchNorm's running statistics."""
    from .nn import Layer  # noqa: PLC0415 - nn is optional and loads after the core

    out = []
    for call in layers:
        layer = getattr(call, "__wrapped_layer__", call)
        if not isinstance(layer, Layer):
            continue
        for sub in layer.layers_tree():
            for v in vars(sub).values():
                if type(v) is not dlarray and getattr(v, "dtype", None) is not None:
                    if hasattr(v, "copy") and getattr(v.dtype, "kind", "") == "f":
                        out.append((v, v.copy()))
    return out


def _saved_bytes(obj, memory):
    """Bytes of ``obj``'s arrays that the engine counts now (each array once)."""
    seen = {}
    for v in leaves(obj):
        raw = getattr(v, "_data", None)
        if raw is not None and id(raw) in memory.arrays:
            seen[id(raw)] = raw.nbytes
    return sum(seen.values())


def _untraced(obj):
    return map_arrays(lambda v: make(v._data, v._fmt), obj)


def _probe_layer(layer, h, frame):
    """Run ``layer`` recorded on (a copy of the trace of) the untraced value ``h``, in a
    scope of its own whose nodes die on return: ``(output, tape, input_saved,
    output_saved)``, the output untraced."""
    memory = tape.MEMORY
    sub = tape.Trace(_RECOMPUTE, frame.trace)

    def leaf(v):
        if not _differentiable(v):
            return v
        node = tape.make_leaf((v._data.shape, v._data.dtype), sub)
        # why: ``* 1`` makes a non-leaf with a buffer of its own, so whether the layer
        # saves its input shows in the accounting (a leaf's data is never counted)
        return make(v._data, v._fmt, node, 0, v._taint) * 1

    with tape.scope(trace=sub, recording=True, training=frame.training):
        u = map_arrays(leaf, h)
        before = memory.current
        y = layer(u)
        delta = memory.current - before
    in_saved = _saved_bytes(u, memory)
    in_ids = {id(v._data) for v in leaves(u)}
    out_saved = _saved_bytes(
        [
            v
            for v in leaves(y)
            if getattr(v, "_data", None) is not None and id(v._data) not in in_ids
        ],
        memory,
    )
    return _untraced(y), delta - in_saved, in_saved, out_saved


# structural key of a chain -> its measured ChainSizes (the most recent few)
_SIZES: dict = {}
_SIZES_KEPT = 64


class _Unkeyable(Exception):
    pass


def _key_of(obj, depth=0):
    """A hashable description of what decides a layer's sizes: its type or code, and
    the shapes and dtypes (not the values) of the arrays it holds; raises
    ``_Unkeyable`` for what it cannot describe."""
    if depth > 8:
        raise _Unkeyable
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return obj
    if isinstance(obj, np.generic):  # a NumPy scalar may be a size: its value counts
        return ("scalar", obj.item(), str(obj.dtype))
    if isinstance(obj, dlarray) or (hasattr(obj, "shape") and hasattr(obj, "dtype")):
        return ("array", tuple(obj.shape), str(obj.dtype))
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, *(_key_of(o, depth + 1) for o in obj))
    if isinstance(obj, dict):
        return ("dict", *sorted((str(k), _key_of(v, depth + 1)) for k, v in obj.items()))
    from .nn import Layer  # noqa: PLC0415 - nn is optional and loads after the core

    if isinstance(obj, Layer):
        items = sorted(vars(obj).items())
        return ("layer", type(obj), tuple((k, _key_of(v, depth + 1)) for k, v in items))
    library = (types.FunctionType, types.BuiltinFunctionType, np.ufunc, type)
    if isinstance(obj, library) and _is_library(obj):
        return ("library", obj)  # gg.tanh, np.tanh, ...: the function itself
    if isinstance(obj, types.MethodType):
        return ("method", _key_of(obj.__func__, depth + 1), _key_of(obj.__self__, depth + 1))
    if isinstance(obj, types.FunctionType):
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(_key_of(cell.cell_contents, depth + 1))
            except ValueError:  # an empty cell
                cells.append("<empty>")
        defaults = _key_of(obj.__defaults__, depth + 1), _key_of(obj.__kwdefaults__, depth + 1)
        return ("function", obj.__code__, tuple(cells), defaults)
    raise _Unkeyable


def _chain_key(layers, x, frame):
    try:
        return (
            backend.device(),
            frame.training,
            _key_of(x),
            tuple(_key_of(layer) for layer in layers),
        )
    except (_Unkeyable, TypeError):  # TypeError: something unhashable inside
        return None


def _measure(counted, layers, x, frame, stats):
    """Every layer's sizes (:class:`ChainSizes`): each layer runs recorded once on its
    input, in a scope of its own whose tape is dropped before the next layer runs, so
    measuring never holds more than one layer's tape (nothing the cheapest schedule
    would not hold too); the random state and layer state such as running statistics
    are restored afterwards. Remembered per chain structure (layer types or code, array
    shapes and dtypes), so a training loop measures on its first step only."""
    key = _chain_key(layers, x, frame)
    if key is not None:
        try:
            sizes = _SIZES.get(key)
        except TypeError:  # unhashable after all
            key, sizes = None, None
        if sizes is not None:
            return sizes
    rng = _random.get_state()
    state = _layer_state(counted)
    sizes = ChainSizes([_nbytes(x)], [], [], [])
    h = _untraced(x)
    for layer in counted:
        h, taped, saved_in, saved_out = _probe_layer(layer, h, frame)
        sizes.tape.append(taped)
        sizes.input_saved.append(saved_in)
        sizes.output_saved.append(saved_out)
        sizes.activation.append(_nbytes(h))
    _random.set_state(rng)
    for buffer, copy in state:
        buffer[...] = copy
    stats.probe_calls = len(counted)
    if key is not None:
        _SIZES[key] = sizes
        while len(_SIZES) > _SIZES_KEPT:
            try:  # the oldest entry goes (another thread may be evicting too)
                del _SIZES[next(iter(_SIZES))]
            except (StopIteration, KeyError, RuntimeError):
                break
    return sizes


def _uniform(counted, x, k, stats):
    n = len(counted)
    stats.segments = k
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    start = 0
    for size in sizes:
        stats.boundaries.append(start)
        name = f"checkpoint_sequential[{start}:{start + size}]"
        x = checkpoint(_chain(counted[start : start + size], name), x)
        start += size
    return x


class _Model:
    """Predicted peaks of saved bytes for the schedules of one chain, from its
    per-layer sizes (:class:`ChainSizes`)."""

    def __init__(self, sizes, x_counted):
        a, t = sizes.activation, sizes.tape
        n = len(t)
        self.n, self.a, self.sizes = n, a, sizes
        self._memo = {}
        self.alive = int(x_counted) * a[0]  # the chain's input, kept by the caller's trace
        # why: inside a taped stretch the value between layers i-1 and i is counted once,
        # by i-1 (its output) or by i (its input)
        extra = [0] + [
            max(0, sizes.input_saved[i] - sizes.output_saved[i - 1]) for i in range(1, n)
        ]
        self.pt = [0] * (n + 1)
        self.pe = [0] * (n + 1)
        for i in range(n):
            self.pt[i + 1] = self.pt[i] + t[i]
            self.pe[i + 1] = self.pe[i] + extra[i]
        # why: the caller's loss keeps the chain's output (unless its last layer does),
        # while a plain tail's tape is still alive
        self.output = 0 if sizes.output_saved[n - 1] else a[n]

    def taped(self, start, stop, input_counted):
        """Saved bytes of layers ``start:stop`` taped in one run (their own tapes and the
        values between them; the input too unless something else keeps it)."""
        inner = self.pe[stop] - self.pe[start + 1] if stop > start + 1 else 0
        own = self.pt[stop] - self.pt[start] + inner
        return own if input_counted else own + self.sizes.input_saved[start]

    def plain(self):
        return self.alive + self.taped(0, self.n, True) + self.output

    def uniform(self, k, m):
        """k uniform segments over the first n - m layers, the last m taped plainly: all
        segment inputs stay saved; the tail is taped after them (the backward pass
        reaches it first and releases it before a segment is re-run), and each segment
        is re-taped in turn."""
        n, a = self.n, self.a
        head = n - m
        starts, at = [], 0
        for j in range(k):
            starts.append(at)
            at += head // k + (1 if j < head % k else 0)
        kept = self.alive + sum(a[p] for p in starts[1:])
        tail = self.taped(head, n, False) if m else 0
        peak = kept + tail + self.output
        for p, q in zip(starts, [*starts[1:], head]):
            peak = max(peak, kept + self.taped(p, q, True))
        return peak

    def best_uniform(self, m):
        """``(peak, k)`` of the uniform schedule with the smallest predicted peak among
        k = 1..n-m segments and a plain tail of ``m`` layers: :meth:`uniform` for every
        ``k`` at once (NumPy; the planner considers O(n^2) schedules)."""
        n = self.n
        head = n - m
        a = np.asarray(self.a, dtype=np.int64)
        pt = np.asarray(self.pt, dtype=np.int64)
        pe = np.asarray(self.pe, dtype=np.int64)
        k = np.arange(1, head + 1)[:, None]  # one row per segment count
        j = np.arange(head)[None, :]  # one column per segment
        q, r = head // k, head % k
        starts = j * q + np.minimum(j, r)
        ends = starts + q + (j < r)
        valid = j < k
        starts = np.where(valid, starts, 0)
        ends = np.where(valid, ends, 1)
        kept = self.alive + np.where(valid & (j > 0), a[starts], 0).sum(axis=1)
        inner = np.where(ends > starts + 1, pe[ends] - pe[np.minimum(starts + 1, n)], 0)
        taped = np.where(valid, pt[ends] - pt[starts] + inner, 0).max(axis=1)
        tail = self.taped(head, n, False) if m else 0
        peaks = np.maximum(kept + tail + self.output, kept + taped)
        best = int(np.argmin(peaks))
        return int(peaks[best]), best + 1

    def revolve(self, s):
        """The binomial schedule with s snapshots, followed action by action: the inputs of
        the checkpoints still alive, plus the one layer being taped."""
        return self.alive + self._level(0, self.n, s, self.output)

    def _level(self, start, stop, s, output=0):
        """Peak of ``_revolve`` on layers ``start:stop`` with ``s`` snapshots, beyond what
        was alive when it began (its input among that); memoized, since the schedules
        for different snapshot counts share their sub-chains."""
        key = (start, stop, s, output)
        peak = self._memo.get(key)
        if peak is not None:
            return peak
        a = self.a
        heads, at, kept = [], start, 0
        while stop - at > 1:
            m = _split(stop - at, s)
            if at != start:
                kept += a[at]  # this head's checkpoint saves its input
            heads.append((at, at + m, s, kept))
            at += m
            s -= 1
        peak = kept + self.taped(at, at + 1, at == start) + output
        for h_start, h_stop, h_s, h_kept in reversed(heads):
            peak = max(peak, h_kept + self._level(h_start, h_stop, h_s))
        self._memo[key] = peak
        return peak


def _candidates(sizes, x_counted):
    """(recomputations, predicted peak bytes, schedule, parameter) of every schedule for
    a chain of the given per-layer sizes (:class:`ChainSizes`): ``("none", None)`` the
    plain run; ``("uniform", (k, m))`` ``k`` uniform segments over the first ``n - m``
    layers and the last ``m`` layers taped plainly (they are not recomputed: the
    backward pass reaches them first and releases their tape before any segment is
    re-run); ``("revolve", s)`` the binomial schedule with ``s`` snapshots."""
    key = (
        tuple(sizes.activation),
        tuple(sizes.tape),
        tuple(sizes.input_saved),
        tuple(sizes.output_saved),
        bool(x_counted),
    )
    return list(_planned(key))


@functools.lru_cache(maxsize=64)
def _planned(key):
    # why: cached, since a training loop plans the same chain every step and the
    # O(n^2) schedules take a noticeable fraction of a second past ~100 layers
    activation, tape_bytes, input_saved, output_saved, x_counted = key
    sizes = ChainSizes(list(activation), list(tape_bytes), list(input_saved), list(output_saved))
    model = _Model(sizes, x_counted)
    n = model.n
    out = [(0, model.plain(), "none", None)]
    for m in range(0, n):
        peak, k = model.best_uniform(m)
        out.append((n - m, peak, "uniform", (k, m)))
    for s in range(1, max(n, 2)):
        out.append((optimal_recomputations(n, s), model.revolve(s), "revolve", s))
    return tuple(out)


def checkpoint_sequential(
    layers: Sequence[Callable[[Any], Any]],
    x: Any,
    segments: int | None = None,
    memory_budget: int | str | None = None,
    *,
    snapshots: int | None = None,
    return_stats: bool = False,
) -> Any:
    """Apply a chain of layers (or functions) to ``x`` keeping only some of the
    boundaries for the backward pass; the rest is recomputed in the pullback.

    - default: ``round(sqrt(n))`` uniform segments (Chen et al. 2016);
    - ``segments=k``: ``k`` uniform segments (``1 <= k <= n``), each one checkpoint;
    - ``memory_budget`` (bytes, or a string such as ``"256MB"``/``"1.5GiB"``): among
      no checkpointing, the uniform schedules and the binomial (Revolve, Griewank &
      Walther) schedules with 1..n-1 snapshots, the one with the fewest
      recomputations whose predicted peak of saved bytes (the engine's accounting)
      fits the budget. Each layer is first run recorded once, on its own (its tape
      dropped before the next one runs, the random state and layer state such as
      BatchNorm statistics restored afterwards), to measure its sizes
      (``stats.layer_sizes``; ``stats.probe_calls == n``); the schedule is planned
      from every layer's own sizes, so chains mixing layer widths or kinds stay within
      the budget, and measuring never holds more than the cheapest schedule would.
      The sizes are remembered per chain structure (layer types or code, array shapes
      and dtypes; not values), so later calls on the same structure, e.g. the next
      training step, do not measure again (``stats.probe_calls == 0``). When the plain
      run fits it runs (``stats.schedule == "none"``, no recomputation). The predicted
      peak includes the chain's output, which the loss keeps; whatever else the loss
      keeps needs room of its own. A budget below the smallest schedule's peak is a
      ``ValueError`` that says the minimum;
    - ``snapshots=s``: the binomial schedule with ``s`` stored states (input included).

    With ``return_stats=True`` returns ``(y, stats)`` (a :class:`CheckpointStats`);
    the stats of the last call are also kept in ``checkpoint_sequential.last_stats``.

    >>> import gpugrad as gg
    >>> layers = [gg.tanh] * 9
    >>> def f(x):
    ...     y = gg.checkpoint_sequential(layers, x)
    ...     return gg.dlgradient(gg.sum(y), x)
    >>> g = gg.dlfeval(f, gg.dlarray([0.0, 1.0]))
    """
    install_layer_method()
    layers = _layer_list(layers)
    n = len(layers)
    for i, layer in enumerate(layers):
        if not callable(layer):
            raise TypeError(f"checkpoint_sequential: layers[{i}] is not callable")
    given = [k for k, v in (("segments", segments), ("memory_budget", memory_budget)) if v]
    if snapshots is not None:
        given.append("snapshots")
    if len(given) > 1:
        raise ValueError(
            f"checkpoint_sequential: give only one of segments, memory_budget and snapshots "
            f"(got {', '.join(given)})"
        )
    if segments is not None:
        if isinstance(segments, bool) or not isinstance(segments, (int, np.integer)):
            raise TypeError(f"checkpoint_sequential: segments must be an int, got {segments!r}")
        if not 1 <= segments <= max(n, 1):
            raise ValueError(
                f"checkpoint_sequential: segments must be between 1 and the number of layers "
                f"({n}), got {segments}"
            )
    if snapshots is not None and (isinstance(snapshots, bool) or int(snapshots) < 1):
        raise ValueError(f"checkpoint_sequential: snapshots must be >= 1, got {snapshots!r}")
    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    frame = tape.FRAME.get()
    stats = CheckpointStats(schedule="uniform", layers=n)
    checkpoint_sequential.last_stats = stats
    counted = [_counted(layer, stats) for layer in layers]
    if n == 0:
        return (x, stats) if return_stats else x
    # why: the engine counts every saved array but a traced leaf's (the caller holds
    # those); a constant input saved by the first checkpoint is counted too
    x_counted = not (isinstance(x, dlarray) and x._node is not None and x._node.is_leaf)

    if budget is None and snapshots is None:
        k = int(segments) if segments is not None else max(1, round(math.sqrt(n)))
        y = _uniform(counted, x, k, stats)
        stats.planned_recomputations = n if frame.recording else 0
        return (y, stats) if return_stats else y

    stats.schedule = "revolve"
    if budget is not None:
        if not (frame.recording and isinstance(x, dlarray)):
            s = n  # nothing is kept for a backward pass: no schedule to fit
        else:
            # why: measured before anything runs in the chain, so that no layer of
            # unknown size runs while the chain's tape is held; the plain run (no
            # recomputation) is the first candidate
            sizes = _measure(counted, layers, x, frame, stats)
            stats.layer_sizes = sizes
            stats.activation_bytes = max(sizes.activation)
            stats.step_saved_bytes = max(sizes.tape)
            options = _candidates(sizes, x_counted)
            minimum = min(peak for _, peak, _, _ in options)
            if budget < minimum:
                raise ValueError(
                    f"checkpoint_sequential: memory_budget={memory_budget!r} ({budget} bytes) "
                    f"is too small for this chain: its largest layer output takes "
                    f"{max(sizes.activation)} bytes and the smallest schedule needs at least "
                    f"{minimum} bytes; raise memory_budget to at least {minimum}"
                )
            recomputations, peak, kind, param = min(
                (o for o in options if o[1] <= budget), key=lambda o: (o[0], o[1])
            )
            stats.predicted_peak_bytes = peak
            if kind == "none":
                stats.schedule = "none"
                for layer in counted:
                    x = layer(x)
                return (x, stats) if return_stats else x
            if kind == "uniform":
                k, m = param
                stats.schedule = "uniform"
                stats.planned_recomputations = recomputations
                stats.plain_tail = m
                y = _uniform(counted[: n - m], x, k, stats)
                for layer in counted[n - m :]:
                    y = layer(y)
                return (y, stats) if return_stats else y
            s = param
    else:
        s = int(snapshots)
    s = max(1, min(s, n - 1)) if n > 1 else 1
    stats.snapshots = s
    stats.planned_recomputations = optimal_recomputations(n, s) if frame.recording else 0
    y = _revolve(counted, x, s, 0)
    return (y, stats) if return_stats else y


checkpoint_sequential.last_stats = None


# ------------------------------------------------------------------ layers


def _discarding_class():
    from .nn import Layer  # noqa: PLC0415 - nn is optional and loads after the core

    class DiscardingActivations(Layer):
        """A layer whose activations are recomputed during backpropagation; its
        parameters are those of the wrapped layer."""

        def __init__(self, layer):
            self.layer = layer

        def __call__(self, *args, **kwargs):
            return checkpoint(self.layer, *args, **kwargs)

        def forward(self, x):
            return checkpoint(self.layer, x)

        def parameters(self):
            return self.layer.parameters()

        def __gg_flatten__(self):
            return [self.layer], ["layer"]

        def __gg_gradient_structure__(self):
            return self.layer.parameters()

        def discarding_activations(self):
            return self

        def __getattr__(self, name):
            if name == "layer":
                raise AttributeError(name)
            return getattr(self.layer, name)

        def __repr__(self):
            return f"{self.layer!r}.discarding_activations()"

    return DiscardingActivations


def install_layer_method():
    """Give ``gg.nn.Layer`` its ``discarding_activations()`` method (idempotent; does
    nothing while ``gpugrad.nn`` does not exist)."""
    try:
        from .nn import Layer  # noqa: PLC0415
    except ImportError:
        return False
    if getattr(Layer, "_gg_discarding_installed", False):
        return True
    cls = _discarding_class()

    def discarding_activations(self):
        """The same layer, with its activations recomputed during backpropagation
        (Swift's ``discardingActivations``)."""
        return cls(self)

    Layer.discarding_activations = discarding_activations
    Layer._gg_discarding_installed = True
    install_layer_method.cls = cls
    return True


try:
    install_layer_method()
except Exception:  # noqa: BLE001 - a broken gpugrad.nn must not break `import gpugrad`
    pass
