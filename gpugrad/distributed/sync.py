"""Keeping the ranks in step: rank 0's optimizer state on every rank, and a check (by
hash) that the ranks hold the same parameters, running statistics and optimizer state.

Data-parallel training keeps every rank's model identical because every rank starts
from the same parameters and optimizer state and applies the same combined gradient.
``DataParallel`` broadcasts the parameters at construction; the optimizer state goes
the same way with ``DataParallel(net, optimizer=opt)``, ``net.attach_optimizer(opt)``
or :func:`broadcast_optimizer_state` (e.g. after one rank loaded a checkpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import numbers

import numpy as np

from .. import backend, tape
from ..array import dlarray
from ..nn.layers import BatchNorm, Layer
from ..ops.core import make
from ._world import comm


def _is_optimizer(obj):
    """A gg.optim optimizer (or anything saved the same way: ``state_dict`` and
    ``load_state_dict``)."""
    return (
        not isinstance(obj, type)
        and callable(getattr(obj, "state_dict", None))
        and callable(getattr(obj, "load_state_dict", None))
    )


def batchnorms(obj, seen=None):
    """Every BatchNorm layer inside ``obj`` (through layers, lists, tuples, dicts)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    out = []
    if isinstance(obj, BatchNorm):
        out.append(obj)
    if isinstance(obj, Layer):
        for v in vars(obj).values():
            out += batchnorms(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += batchnorms(v, seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            out += batchnorms(v, seen)
    return out


def _named_arrays(obj, name, out):
    """Append ``(name, raw array or number)`` for every array and number in the tree
    ``obj`` (dict/list/tuple/dataclass/Layer parameters), in a fixed order."""
    if type(obj) is dlarray:
        out.append((name, obj._data))
    elif backend.is_device_array(obj) or isinstance(obj, np.ndarray):
        out.append((name, obj))
    elif isinstance(obj, (numbers.Number, np.generic)):
        out.append((name, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _named_arrays(v, f"{name}[{k!r}]", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _named_arrays(v, f"{name}[{i}]", out)
    elif isinstance(obj, Layer):
        _named_arrays(obj.parameters(), name, out)
        for k, bn in enumerate(batchnorms(obj)):
            out.append((f"{name} BatchNorm {k} running_mean", bn.running_mean))
            out.append((f"{name} BatchNorm {k} running_var", bn.running_var))
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _named_arrays(getattr(obj, f.name), f"{name}.{f.name}", out)


def _digest(value):
    h = hashlib.sha1()
    if isinstance(value, (str, numbers.Number, np.generic)) and not backend.is_device_array(value):
        h.update(repr(value).encode())
    else:
        host = np.ascontiguousarray(backend.to_host(value))
        h.update(f"{host.shape}{host.dtype}".encode())
        h.update(host.tobytes())
    return h.hexdigest()


def _optimizer_entries(opt, name, where):
    """``(name, value)`` pairs of an optimizer's settings, step and state buffers."""
    try:
        state = opt.state_dict()
    except TypeError as exc:
        raise TypeError(
            f"{where}: {exc} (the optimizer state is exchanged as gg.save stores it)"
        ) from exc
    out = [(f"{name}.optimizer", state["optimizer"]), (f"{name}.step", state["step"])]
    for k, v in sorted(state["hyperparameters"].items()):
        out.append((f"{name}.{k}", repr(v)))
    for slot, entries in sorted(state["slots"].items()):
        for e in sorted(entries, key=lambda e: repr(e["path"])):
            out.append((f"{name}.{slot}{e['path']}", e["value"]._data))
    return out


def _entries(obj, name, where):
    from .parallel import DataParallel

    if isinstance(obj, DataParallel):
        obj = obj.module
    if _is_optimizer(obj):
        return _optimizer_entries(obj, name, where)
    if isinstance(obj, (list, tuple)) and any(_is_optimizer(o) for o in obj):
        out = []
        for i, o in enumerate(obj):
            out += _entries(o, f"{name}[{i}]", where)
        return out
    out = []
    _named_arrays(obj, name, out)
    return out


def check_synchronized(*objs):
    """Check that every rank holds the same values; returns a hex digest of them.

    Each argument is a Layer (its parameters and BatchNorm running statistics), a
    ``DataParallel``, a gg.optim optimizer (its settings, step count and state), or a
    tree of dlarrays, arrays and numbers (e.g. MATLAB-style ``vel`` or
    ``averageGrad``/``averageSqGrad``). Every value is hashed on its rank and the
    hashes are compared; a difference raises a RuntimeError on every rank naming the
    first value that differs and the ranks. Data-parallel training keeps all of this
    bit-identical across ranks, so this is a cheap check to run now and then (it moves
    one hash per value, not the values).

    >>> import gpugrad as gg, gpugrad.distributed as dist
    >>> net = gg.nn.Dense(2, 1)
    >>> opt = gg.optim.Adam(net)
    >>> len(dist.check_synchronized(net, opt))  # one process: always in step
    40
    """
    where = "check_synchronized"
    entries = []
    for k, obj in enumerate(objs):
        entries += _entries(obj, f"argument {k}", where)
    names = [n for n, _ in entries]
    digests = [_digest(v) for _, v in entries]
    total = hashlib.sha1("".join(digests).encode()).hexdigest()
    c = comm()
    if c.size == 1:
        return total
    seen = c.allgather_obj((names, digests))
    for r, (other_names, other) in enumerate(seen):
        if other_names != names:
            theirs = set(other_names)
            missing = [n for n in names if n not in theirs]
            extra = [n for n in other_names if n not in set(names)]
            raise RuntimeError(
                f"{where}: rank {c.rank} and rank {r} hold different structures "
                f"(only on rank {c.rank}: {missing[:3]}; only on rank {r}: {extra[:3]})"
            )
        for name, a, b in zip(names, digests, other):
            if a != b:
                raise RuntimeError(
                    f"{where}: {name} differs between rank {c.rank} and rank {r}: the ranks "
                    "are out of step (a rank-dependent update, seed or data-dependent "
                    "branch?)"
                )
    return total


# ------------------------------------------------------------------ broadcasting the state


def _tree_info(state, where):
    """What every rank must agree on before a tree's leaves are broadcast."""
    out = []
    _named_arrays(state, "state", out)
    sig, error = [], None
    for name, v in out:
        if isinstance(v, (numbers.Number, np.generic)) and not backend.is_device_array(v):
            error = (
                f"{where}: {name} is a {type(v).__name__}; the state is updated in place, so "
                "its values must be dlarrays or arrays"
            )
            break
        sig.append((name, tuple(v.shape), str(v.dtype)))
    return {"kind": "tree", "sig": sig, "error": error}


def _optimizer_info(opt, where):
    try:
        state = opt.state_dict()
    except TypeError as exc:
        return {"kind": type(opt).__name__, "error": f"{where}: {exc}", "state": None}
    skeleton = {
        slot: [(list(e["path"]), tuple(e["value"].shape), str(e["value"].dtype)) for e in entries]
        for slot, entries in state["slots"].items()
    }
    return {
        "kind": type(opt).__name__,
        "error": None,
        "hyper": {k: repr(v) for k, v in state["hyperparameters"].items()},
        "step": state["step"],
        "skeleton": skeleton,
        "state": state,  # kept on this rank only (not sent)
    }


def _parts(state):
    """The optimizers and trees inside ``state`` (a top-level list/tuple may mix them)."""
    if _is_optimizer(state):
        return [state]
    if isinstance(state, (list, tuple)) and any(_is_optimizer(o) for o in state):
        out = []
        for o in state:
            out += _parts(o)
        return out
    return [state]


def _bcast_into(raw, root):
    """Broadcast into ``raw`` in place (through a contiguous copy if it is not)."""
    c = comm()
    if raw.flags.c_contiguous and raw.ndim:
        c.bcast_(raw, root)
        return
    buf = backend.xp().array(raw, copy=True, order="C").reshape(-1)
    c.bcast_(buf, root)
    raw[...] = buf.reshape(raw.shape)


def broadcast_optimizer_state(state, root=0):
    """Make every rank's optimizer state rank ``root``'s, in place, and check it equal.

    ``state`` is a gg.optim optimizer (``SGD``, ``Adam``, ``AdamW``, ``RMSProp``: its
    step count and state buffers are replaced by rank ``root``'s, also when the ranks
    hold state for different parameters or none yet; its settings, such as the learning
    rate, must already agree and are checked), a MATLAB-style state tree (``vel`` of
    ``sgdmupdate``, ``averageGrad``/``averageSqGrad`` of ``adamupdate``: dlarrays,
    overwritten in place, so the caller's variables stay valid; ``None``, MATLAB's
    empty state, on every rank is fine), or a list/tuple of these. Every rank must
    call it with the same kind of state. Returns ``state``.

    ``DataParallel(net, optimizer=opt)`` and ``net.attach_optimizer(opt)`` call this;
    call it yourself after one rank loaded a checkpoint
    (``opt.load_state_dict(...)`` on rank 0 only).

    >>> import gpugrad as gg, gpugrad.distributed as dist
    >>> w = gg.dlarray([1.0, 2.0])
    >>> w, vel = gg.sgdmupdate(w, gg.dlarray([1.0, 1.0]), None)
    >>> dist.broadcast_optimizer_state(vel) is vel  # one process: nothing moves
    True
    """
    where = "broadcast_optimizer_state"
    c = comm()
    if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or not 0 <= root < c.size:
        raise ValueError(f"{where}: root must be a rank in [0, {c.size}), got {root!r}")
    root = int(root)
    parts = _parts(state)
    infos = [_optimizer_info(p, where) if _is_optimizer(p) else _tree_info(p, where) for p in parts]
    local = [{k: v for k, v in i.items() if k != "state"} for i in infos]
    errors = [i["error"] for i in local if i["error"]]
    if c.size == 1:
        if errors:
            raise TypeError(errors[0])
        return state
    seen = c.allgather_obj(local)  # every rank decides from the same table: no hang
    for r, other in enumerate(seen):
        for i in other:
            if i["error"]:
                raise TypeError(f"{i['error']} (on rank {r})")
    kinds = [[i["kind"] for i in other] for other in seen]
    if any(k != kinds[0] for k in kinds):
        raise ValueError(
            f"{where}: the ranks pass different kinds of state: "
            + ", ".join(f"rank {r}: {k}" for r, k in enumerate(kinds))
        )
    for j, info in enumerate(seen[root]):
        if info["kind"] == "tree":
            for r, other in enumerate(seen):
                if other[j]["sig"] != info["sig"]:
                    raise ValueError(
                        f"{where}: the state on rank {r} is not shaped like rank {root}'s "
                        f"(rank {root}: {info['sig'][:4]}, rank {r}: {other[j]['sig'][:4]}); "
                        "MATLAB's empty state (None) must be empty on every rank"
                    )
        else:
            for r, other in enumerate(seen):
                for k, v in info["hyper"].items():
                    if other[j]["hyper"].get(k) != v:
                        raise ValueError(
                            f"{where}: {info['kind']}.{k} is {v} on rank {root} but "
                            f"{other[j]['hyper'].get(k)} on rank {r}; give every rank the same "
                            "optimizer settings"
                        )
    for part, info, mine in zip(parts, seen[root], infos):
        if info["kind"] == "tree":
            leaves = []
            _named_arrays(part, "state", leaves)
            for _, raw in leaves:
                tape.bump_version(raw)  # in place: a trace that saved it must not use it
                _bcast_into(raw, root)
            continue
        xp = backend.xp()
        slots = {}
        for slot, entries in info["skeleton"].items():
            own = {}
            if c.rank == root:
                own = {repr(e["path"]): e["value"]._data for e in mine["state"]["slots"][slot]}
            slots[slot] = []
            for path, shape, dtype in entries:
                buf = own.get(repr(path)) if c.rank == root else xp.empty(shape, dtype)
                buf = xp.ascontiguousarray(buf)
                _bcast_into(buf, root)
                slots[slot].append({"path": path, "value": make(buf)})
        if c.rank != root:
            part.load_state_dict(
                {
                    "optimizer": info["kind"],
                    "hyperparameters": {},  # checked equal above
                    "step": info["step"],
                    "slots": slots,
                }
            )
    check_synchronized(*parts)
    return state
