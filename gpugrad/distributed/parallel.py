"""``DataParallel``: a Layer whose gradients come back averaged over ranks.

The engine calls the reducer the moment each parameter's gradient is final
(``tape.LEAF_HOOKS``), so gradient buckets are reduced while the rest of the
backward walk still runs. Buckets are planned once (rank 0's order of readiness,
grouped by dtype, cut at ``bucket_mb``), checked equal on every rank, and always
launched in bucket order, so no rank can wait on a collective the others have not
started.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import time
import weakref

import numpy as np

from .. import backend, tape
from ..array import dlarray
from ..nn.layers import BatchNorm, Layer
from ..ops import core
from ..ops.core import host_call, make
from ..tree import leaves
from . import _collectives
from ._world import comm
from .sync import batchnorms, broadcast_optimizer_state, check_synchronized

_FIRST_BUCKET_BYTES = 1 << 20  # a small first bucket starts communication early


def _hooks():
    if tape.LEAF_HOOKS is None:
        tape.LEAF_HOOKS = weakref.WeakKeyDictionary()
    return tape.LEAF_HOOKS


class _Reducer:
    """The engine-hook sink of one DataParallel (shared by its traced copies)."""

    def __init__(self, metas, bucket_bytes, overlap, debug):
        self.metas = metas  # [(shape, dtype)] per parameter, in leaves() order
        self.bucket_bytes = bucket_bytes
        self.overlap = overlap
        self.debug = debug
        self.index = weakref.WeakKeyDictionary()  # leaf node -> parameter position
        self.sync = True
        self.weight = None
        self.stash = None  # local gradients accumulated under no_sync()
        self.plan = None  # [[param positions]] per bucket, launch order
        self.buffers = None
        self.offsets = None  # param position -> (bucket, start)
        self.stats = {"walks": 0, "launched_in_walk": 0, "launched_at_end": 0, "wait_s": 0.0}
        self._walk = None
        self._nodes = {}

    # ------------------------------------------------------------ plan
    def _make_plan(self, order):
        order = list(dict.fromkeys(order))
        order += [i for i in range(len(self.metas)) if i not in set(order)]
        buckets = []
        cur, cur_dtype, cur_bytes = [], None, 0
        cap = min(_FIRST_BUCKET_BYTES, self.bucket_bytes)
        for i in order:
            shape, dtype = self.metas[i]
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if cur and (dtype != cur_dtype or cur_bytes + nbytes > cap):
                buckets.append(cur)
                cur, cur_bytes = [], 0
                cap = self.bucket_bytes
            cur.append(i)
            cur_dtype = dtype
            cur_bytes += nbytes
        if cur:
            buckets.append(cur)
        return buckets

    def _plan_hash(self, plan):
        text = repr([[(i, self.metas[i][0], str(self.metas[i][1])) for i in b] for b in plan])
        return hashlib.sha1(text.encode()).hexdigest()

    def _install_plan(self, order):
        c = comm()
        order = c.bcast_obj(list(order), 0)  # rank 0's order: the same plan everywhere
        plan = self._make_plan(order)
        check_plan(self._plan_hash(plan), "DataParallel")
        self.plan = plan
        xp = backend.xp()
        self.buffers = []
        self.offsets = {}
        for b, members in enumerate(self.plan):
            dtype = self.metas[members[0]][1]
            n = 0
            for i in members:
                self.offsets[i] = (b, n)
                n += int(np.prod(self.metas[i][0]))
            self.buffers.append(xp.empty(n, dtype))

    # ------------------------------------------------------------ engine protocol
    # why: the engine calls begin/ready/done; each hands its work to a method marked
    # @host_call, so a gg.dlaccelerate trace records the bucket fills, launches and
    # waits as calls, in the walk's order, and a replay issues the same collectives in
    # the same order as an eager step (every rank, whichever it runs)
    replayable = True

    def begin(self):
        self._nodes = {}
        self._begin_walk()

    @host_call(mutates=True)
    def _begin_walk(self):
        nb = 0 if self.plan is None else len(self.plan)
        self._walk = {
            "grads": {},
            "order": [],
            "left": None if self.plan is None else [len(b) for b in self.plan],
            "next": 0,
            "handles": [None] * nb,
            "traced": False,
            "filled": set(),
        }
        self.stats["walks"] += 1

    def ready(self, node, g):
        i = self.index.get(node)
        if self._walk is None or i is None:
            return
        self._nodes[i] = node
        self._ready_at(i, g)

    @host_call(mutates=True)
    def _ready_at(self, i, g):
        w = self._walk
        w["order"].append(i)
        if type(g) is dlarray:
            w["traced"] = True
        w["grads"][i] = g
        # why: a parameter that got no gradient (g is None) is filled after the walk,
        # when it is also known whether this walk is a traced (higher-order) one
        if (
            g is not None
            and self.sync
            and self.overlap
            and self.plan is not None
            and not w["traced"]
        ):
            self._fill(i, g)
            w["filled"].add(i)
            b = self.offsets[i][0]
            w["left"][b] -= 1
            self._launch_ready(w)
            for h in w["handles"]:
                if h is not None:
                    h.test()  # lets MPI progress a pending reduction
                    break

    def _fill(self, i, g):
        b, start = self.offsets[i]
        shape, dtype = self.metas[i]
        n = int(np.prod(shape))
        dst = self.buffers[b][start : start + n]
        if self.stash is not None and self.stash[i] is not None:
            g = self.stash[i] if g is None else g + self.stash[i]
        if g is None:
            dst[...] = 0
        elif self.weight is None:
            dst[...] = g.reshape(-1)
        else:
            dst[...] = g.reshape(-1) * self.weight

    def _launch_ready(self, w, at_end=False):
        c = comm()
        left = w["left"]
        while w["next"] < len(self.plan) and left[w["next"]] == 0:
            b = w["next"]
            buf = self.buffers[b]
            flat = buf.view(buf.real.dtype) if buf.dtype.kind == "c" else buf
            w["handles"][b] = c.iallreduce_(flat, "sum")
            w["next"] += 1
            self.stats["launched_at_end" if at_end else "launched_in_walk"] += 1

    def done(self):
        w, nodes = self._walk, self._nodes
        self._nodes = {}
        if w is None or not nodes:
            self._walk = None
            return {}
        if w["traced"]:  # enable_higher_derivatives: the differentiable all_reduce
            self._walk = None
            rec = core.RECORDER
            if rec is not None:
                # a weight, or gradients stashed by no_sync, would be baked into a trace
                rec.refuse("DataParallel with enable_higher_derivatives=True")
            if not self.sync:
                self._accumulate(w["grads"])
                return {}
            return self._done_traced(w, nodes)
        positions = tuple(sorted(nodes))
        grads = self._finish(positions)
        return {nodes[i]: g for i, g in zip(positions, grads)}

    @host_call(mutates=True)
    def _finish(self, positions):
        """The gradients of the parameters at ``positions`` (new arrays): combined over
        ranks, or this rank's own under ``no_sync`` (then stashed too)."""
        w = self._walk
        self._walk = None
        if not self.sync:
            self._accumulate(w["grads"])
            xp = backend.xp()
            return tuple(
                xp.zeros(*self.metas[i]) if w["grads"].get(i) is None else w["grads"][i]
                for i in positions
            )
        if self.plan is None:
            self._install_plan(w["order"])
            w["left"] = [len(b) for b in self.plan]
            w["handles"] = [None] * len(self.plan)
        if self.debug:
            check_plan(self._plan_hash(self.plan) + repr(list(positions)), "DataParallel (debug)")
        for i in range(len(self.metas)):
            if i in w["filled"]:
                continue
            self._fill(i, w["grads"].get(i))
            w["left"][self.offsets[i][0]] -= 1
        self._launch_ready(w, at_end=True)
        t0 = time.perf_counter()
        for h in w["handles"]:
            h.wait()
        self.stats["wait_s"] += time.perf_counter() - t0
        self.stash = None
        size = comm().size
        out = []
        for i in positions:
            b, start = self.offsets[i]
            shape = self.metas[i][0]
            n = int(np.prod(shape))
            part = self.buffers[b][start : start + n]
            # new arrays: the buckets are reused by the next step
            g = part / size if self.weight is None else part.copy()
            out.append(g.reshape(shape))
        return tuple(out)

    def _accumulate(self, grads):
        if self.stash is None:
            self.stash = [None] * len(self.metas)
        for i, g in grads.items():
            if g is None:
                continue
            raw = g._data if type(g) is dlarray else g
            self.stash[i] = raw.copy() if self.stash[i] is None else self.stash[i] + raw

    def _done_traced(self, w, nodes):
        out = {}
        for i in sorted(nodes):
            g = w["grads"][i]
            if g is None:
                g = make(backend.xp().zeros(*self.metas[i]))
            elif type(g) is not dlarray:
                g = make(g)
            if self.stash is not None and self.stash[i] is not None:
                g = g + make(self.stash[i])
            if self.weight is None:
                out[nodes[i]] = _collectives.all_reduce(g, "mean")
            else:
                out[nodes[i]] = _collectives.all_reduce(g * self.weight, "sum")
        self.stash = None
        return out

    def register(self, params):
        if len(params) != len(self.metas):
            raise ValueError(
                f"DataParallel: the wrapped network now has {len(params)} parameters, "
                f"but it had {len(self.metas)} when it was wrapped; wrap the new network"
            )
        hooks = _hooks()
        for i, p in enumerate(params):
            node = p._node
            if node is not None and node.prim is tape.LEAF:
                hooks[node] = self
                self.index[node] = i


def check_plan(digest, where):
    """Raise on every rank when the ranks' plan digests differ (instead of a hang)."""
    c = comm()
    if c.size == 1:
        return
    seen = c.allgather_obj(digest)
    bad = [r for r, d in enumerate(seen) if d != seen[0]]
    if bad:
        raise RuntimeError(
            f"{where}: the gradient bucket plan differs between ranks (rank {bad[0]} differs "
            "from rank 0): every rank must wrap the same network with the same bucket_mb, "
            "and differentiate with respect to the same parameters"
        )


@host_call(mutates=True)  # a gg.dlaccelerate replay repeats the exchange
def _aggregate_statistics(bn, mu, var, m):
    """MATLAB's aggregation of per-rank batch statistics (weights f_r = m_r / M):
    ``mean = sum f_r mean_r``, ``var = sum f_r (var_r + (mean_r - mean)^2)``; then
    the usual running update with the global count ``M``."""
    xp = backend.xp()
    mu_r = mu._data.reshape(-1)
    var_r = var._data.reshape(-1)
    local = xp.concatenate([xp.asarray([float(m)], mu_r.dtype), mu_r, var_r])
    table = comm().allgather(local)  # (size, 1 + 2F), the same on every rank
    f = table[:, 0] / table[:, 0].sum()
    nf = mu_r.shape[0]
    means = table[:, 1 : 1 + nf]
    variances = table[:, 1 + nf :]
    mean = (f[:, None] * means).sum(axis=0)
    var_g = (f[:, None] * (variances + (means - mean) ** 2)).sum(axis=0)
    total = int(round(float(table[:, 0].sum())))
    BatchNorm._update_running_statistics(bn, make(mean), make(var_g), total)


@host_call(mutates=True)
def _broadcast_statistics(bn, mu, var, m):
    BatchNorm._update_running_statistics(bn, mu, var, m)
    c = comm()
    c.bcast_(bn.running_mean, 0)
    c.bcast_(bn.running_var, 0)


_STATE_MODES = {"aggregate": _aggregate_statistics, "broadcast": _broadcast_statistics, None: None}


class DataParallel(Layer):
    """Wrap ``net`` for data-parallel training: a Layer whose gradients come back from
    ``dlgradient``, ``gg.gradient`` and ``backward`` already averaged over ranks, so
    the single-process training loop runs unchanged on every rank (each on its own
    shard of the batch).

    - At construction the parameters and BatchNorm running statistics are broadcast
      from rank 0 (in place) and checked equal on every rank (by hash; a difference
      names the parameter). ``optimizer``: a gg.optim optimizer, MATLAB-style state
      (``vel``, ``(averageGrad, averageSqGrad)``) or a list of them, whose state is
      broadcast from rank 0 and checked the same way (see
      :func:`broadcast_optimizer_state`); ``attach_optimizer`` does it later, for an
      optimizer made after the wrapper. ``check_synchronized()`` checks again.
    - Gradients are packed into buckets of at most ``bucket_mb`` MB (the first one
      1 MB) and each bucket's reduction starts as soon as the backward walk has
      finalized all its gradients (``overlap=True``), or after the walk
      (``overlap=False``). Bucket ``k`` always starts after bucket ``k-1`` on every
      rank. The plan is made at the first step from rank 0's order and checked equal
      on every rank; ``debug=True`` also checks, each step, that every rank reduces
      the same parameters.
    - ``weight``: ``None`` averages (``sum / size``); a number ``w`` gives
      ``sum(w_r * g_r)``: set ``net.weight = local_batch / global_batch`` for
      unequal shards to get exactly the full-batch gradient of a mean loss.
    - ``with net.no_sync():`` gradients stay local (returned unreduced) and are
      accumulated; the next synchronized backward returns the average over ranks of
      the accumulated sum plus its own gradient (gradient accumulation as in DDP).
      With the MXNet face use ``grad_req="write"`` for this.
    - ``state``: BatchNorm running statistics in training mode: ``"aggregate"``
      (MATLAB's formula over all ranks' batch statistics: the same as one process on
      the whole batch), ``"broadcast"`` (rank 0's statistics), or ``None`` (local).
    - Higher derivatives: with ``enable_higher_derivatives=True`` the gradients are
      reduced through the differentiable ``all_reduce`` instead (no overlap).
    - ``gg.dlaccelerate``: a step that differentiates a DataParallel is traced and
      replayed; the bucket fills, launches and waits are recorded as calls in the
      walk's order, so a replay reduces exactly as an eager step does, and ranks may
      trace, replay or run eagerly independently (the collectives are the same in
      every case). Steps with ``enable_higher_derivatives=True`` run eagerly.

    >>> import gpugrad as gg, gpugrad.distributed as dist
    >>> net = dist.DataParallel(gg.nn.Dense(3, 1))
    >>> def loss_fn(net, x):
    ...     loss = gg.sum(net(x))
    ...     return loss, gg.dlgradient(loss, net)
    >>> loss, grads = gg.dlfeval(loss_fn, net, gg.ones((4, 3)))
    >>> grads["bias"].numpy().tolist()  # averaged over the ranks (one here)
    [4.0]
    """

    def __init__(
        self, net, bucket_mb=25, overlap=True, state="aggregate", debug=False, optimizer=None
    ):
        if not isinstance(net, Layer):
            raise TypeError(f"DataParallel: net must be a gg.nn.Layer, got {type(net).__name__}")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or bucket_mb <= 0:
            raise ValueError(f"DataParallel: bucket_mb must be a number > 0, got {bucket_mb!r}")
        if state not in _STATE_MODES:
            raise ValueError(
                f"DataParallel: state must be 'aggregate', 'broadcast' or None, got {state!r}"
            )
        params = leaves(net)
        if not params:
            raise ValueError("DataParallel: net has no parameters")
        metas = [(tuple(p.shape), np.dtype(p.dtype)) for p in params]
        self.module = net
        self._reducer = _Reducer(metas, int(bucket_mb * (1 << 20)), bool(overlap), bool(debug))
        _hooks()
        self._sync_from_root(params)
        update = _STATE_MODES[state]
        self._local_statistics = state is None
        if update is not None and comm().size > 1:
            for bn in batchnorms(net):
                bn._update_running_statistics = functools.partial(update, bn)
        self._optimizers = []
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    def attach_optimizer(self, optimizer):
        """Broadcast ``optimizer``'s state from rank 0 (in place) and check it equal on
        every rank (:func:`broadcast_optimizer_state`); ``check_synchronized`` then
        covers it too. Returns ``optimizer``.

        >>> import gpugrad as gg, gpugrad.distributed as dist
        >>> net = dist.DataParallel(gg.nn.Dense(3, 1))
        >>> opt = net.attach_optimizer(gg.optim.Adam(net, learning_rate=0.01))
        >>> len(net.check_synchronized())
        40
        """
        broadcast_optimizer_state(optimizer)
        self._optimizers.append(optimizer)
        return optimizer

    def check_synchronized(self):
        """Check (by hash) that every rank holds the same parameters, BatchNorm running
        statistics and attached optimizer state; raises a RuntimeError naming the first
        difference on every rank (with ``state=None`` the running statistics are local
        and not checked). Returns the hex digest."""
        what = self.module.parameters() if self._local_statistics else self.module
        return check_synchronized(what, *self._optimizers)

    def _sync_from_root(self, params):
        c = comm()
        bns = batchnorms(self.module)
        sig = [(tuple(p.shape), str(p.dtype)) for p in params]
        sig += [(tuple(b.running_mean.shape), str(b.running_mean.dtype)) for b in bns]
        _collectives._same_everywhere(sig, "DataParallel", "parameter shapes and dtypes")
        if c.size == 1:
            return
        buffers = [p._data for p in params]
        buffers += [b.running_mean for b in bns] + [b.running_var for b in bns]
        for buf in buffers:
            if not buf.flags.c_contiguous:
                raise ValueError("DataParallel: parameters must be C-contiguous arrays")
            c.bcast_(buf, 0)
        check_synchronized(self.module)

    # ------------------------------------------------------------ layer protocol
    def forward(self, *args, **kwargs):
        """The wrapped network's output."""
        return self.module(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        """The wrapped network's parameters (the gradients have this shape)."""
        return self.module.parameters()

    def __gg_flatten__(self):
        return [self.module], ["module"]

    def __gg_unflatten__(self, aux, children):
        new = copy.copy(self)
        new.module = children[0]
        self._reducer.register(leaves(new.module))
        return new

    def __gg_gradient_structure__(self):
        return self.module.parameters()

    def attach_grad(self, grad_req="write"):
        """MXNet face: ``attach_grad`` on the wrapped network; ``loss.backward()`` then
        writes gradients combined over ranks into ``net.module.grad``."""
        self.module.attach_grad(grad_req)
        self._reducer.register(leaves(self.module))
        return self

    # ------------------------------------------------------------ controls
    @contextlib.contextmanager
    def no_sync(self):
        """Within this block gradients are not reduced (see the class docstring)."""
        old = self._reducer.sync
        self._reducer.sync = False
        try:
            yield self
        finally:
            self._reducer.sync = old

    @property
    def weight(self):
        """This rank's gradient weight (``None``: average over ranks)."""
        return self._reducer.weight

    @weight.setter
    def weight(self, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"DataParallel.weight must be a number or None, got {value!r}")
        self._reducer.weight = None if value is None else float(value)

    @property
    def stats(self):
        """Counters: walks, buckets launched during / after the walk, seconds waited."""
        return dict(self._reducer.stats)

    @property
    def bucket_plan(self):
        """Parameter positions per bucket, in launch order (``None`` before the first step)."""
        plan = self._reducer.plan
        return None if plan is None else [list(b) for b in plan]
