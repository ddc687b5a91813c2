"""Run on 2 ranks (tests/test_distributed.py): mpiexec -n 2 python -m mpi4py rank_cpu.py.

Each check prints ``OK <name>`` on every rank; an assertion error aborts the job."""

import copy
import sys

import numpy as np

import gpugrad as gg
import gpugrad.distributed as dist

N = 16


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, 4)), rng.standard_normal((N, 3))


def mlp(seed):
    gg.random.seed(seed)
    return gg.nn.Sequential(
        gg.nn.Dense(4, 16, activation=gg.relu),
        gg.nn.Dense(16, 8, activation=gg.tanh),
        gg.nn.Dense(8, 3),
    )


def loss_fn(net, x, t):
    loss = gg.mean((net(x) - t) ** 2)
    return loss, gg.dlgradient(loss, net)


def grads_of(net, x, t):
    with gg.autograd.train_mode():  # BatchNorm uses batch statistics
        return gg.dlfeval(loss_fn, net, gg.dlarray(x), gg.dlarray(t))[1]


def flat(tree):
    return [p.numpy() for p in gg.tree.leaves(tree)]


def max_diff(a, b):
    return max(float(abs(u - v).max()) for u, v in zip(flat(a), flat(b)))


def same_on_all_ranks(tree):
    for v in flat(tree):
        both = dist.all_gather(v)
        assert all(np.array_equal(both[0], both[r]) for r in range(dist.size())), "ranks differ"


def ok(name):
    print(f"OK {name} rank={dist.rank()}", flush=True)


def check_training(overlap):
    """2 ranks on half-batches == 1 process on the full batch (SGD with momentum)."""
    x, t = data()
    r = dist.rank()
    net = dist.DataParallel(mlp(100 + r), bucket_mb=0.0002, overlap=overlap)  # ~26 floats
    ref = copy.deepcopy(net.module)  # rank 0's parameters, broadcast by DataParallel
    assert len(net.bucket_plan or [0]) >= 1
    half = slice(r * N // 2, (r + 1) * N // 2)
    vel = ref_vel = None
    for _ in range(6):
        g = grads_of(net, x[half], t[half])
        net, vel = gg.sgdmupdate(net, g, vel, learn_rate=0.05)
        rg = grads_of(ref, x, t)
        ref, ref_vel = gg.sgdmupdate(ref, rg, ref_vel, learn_rate=0.05)
    d = max_diff(net.parameters(), ref.parameters())
    assert d < 1e-12, d
    same_on_all_ranks(net.parameters())
    assert len(net.bucket_plan) >= 4, net.bucket_plan
    stats = net.stats
    if overlap:
        assert stats["launched_in_walk"] > 0, stats
    else:
        assert stats["launched_in_walk"] == 0, stats
    ok(f"training overlap={overlap} maxdiff={d:.1e} buckets={len(net.bucket_plan)}")


def check_unequal_shards():
    x, t = data()
    r = dist.rank()
    cut = 5  # rank 0: 5 samples, rank 1: 11
    part = slice(0, cut) if r == 0 else slice(cut, N)
    n_local = part.stop - part.start
    net = dist.DataParallel(mlp(7))
    net.weight = n_local / N
    ref = copy.deepcopy(net.module)
    m = v = rm = rv = None
    for it in range(1, 4):
        g = grads_of(net, x[part], t[part])
        net, m, v = gg.adamupdate(net, g, m, v, it, learn_rate=0.01)
        rg = grads_of(ref, x, t)
        ref, rm, rv = gg.adamupdate(ref, rg, rm, rv, it, learn_rate=0.01)
    d = max_diff(net.parameters(), ref.parameters())
    assert d < 1e-12, d
    # the same through average_gradients on a plain network
    plain = mlp(7)
    g_local = grads_of(plain, x[part], t[part])
    g_avg = dist.average_gradients(g_local, weight=n_local / N)
    d2 = max_diff(g_avg, grads_of(plain, x, t))
    assert d2 < 1e-12, d2
    ok(f"unequal shards maxdiff={d:.1e}/{d2:.1e}")


def check_no_sync():
    x, t = data()
    r = dist.rank()
    net = dist.DataParallel(mlp(3), bucket_mb=0.0002)
    ref = copy.deepcopy(net.module)
    # two micro-batches of 8; each rank takes half of each
    micro = [(slice(0, 8), slice(r * 4, r * 4 + 4)), (slice(8, 16), slice(8 + r * 4, 12 + r * 4))]
    for _ in range(2):  # twice: the stash must be emptied by the synced step
        with net.no_sync():
            g1 = grads_of(net, x[micro[0][1]], t[micro[0][1]])
        local = grads_of(net.module, x[micro[0][1]], t[micro[0][1]])
        assert max_diff(g1, local) == 0.0  # unreduced under no_sync
        g = grads_of(net, x[micro[1][1]], t[micro[1][1]])
        want = [
            a + b
            for a, b in zip(
                flat(grads_of(ref, x[micro[0][0]], t[micro[0][0]])),
                flat(grads_of(ref, x[micro[1][0]], t[micro[1][0]])),
            )
        ]
        d = max(float(abs(u - w).max()) for u, w in zip(flat(g), want))
        assert d < 1e-12, d
    ok(f"no_sync maxdiff={d:.1e}")


def bn_net(seed):
    gg.random.seed(seed)
    return gg.nn.Sequential(gg.nn.Dense(4, 6), gg.nn.BatchNorm(6), gg.relu, gg.nn.Dense(6, 3))


def check_batchnorm():
    x, t = data()
    r = dist.rank()
    half = slice(r * N // 2, (r + 1) * N // 2)
    # aggregate: the running statistics equal one process's on the whole batch
    net = bn_net(5)
    ref = copy.deepcopy(net)
    dp = dist.DataParallel(net, state="aggregate")
    grads_of(dp, x[half], t[half])
    grads_of(ref, x, t)
    bn, rbn = dp.module.layers[1], ref.layers[1]
    d = max(
        float(abs(bn.running_mean - rbn.running_mean).max()),
        float(abs(bn.running_var - rbn.running_var).max()),
    )
    assert d < 1e-12, d
    assert not np.allclose(rbn.running_mean, 0)
    for _ in range(2):
        g = grads_of(dp, x[half], t[half])
        dp, _v = gg.sgdmupdate(dp, g, None)
    same_on_all_ranks({"m": gg.dlarray(bn.running_mean), "v": gg.dlarray(bn.running_var)})
    # broadcast: rank 0's statistics everywhere
    net = bn_net(6)
    ref0 = copy.deepcopy(net)
    dp = dist.DataParallel(net, state="broadcast")
    grads_of(dp, x[half], t[half])
    grads_of(ref0, x[: N // 2], t[: N // 2])  # what rank 0 saw
    bn, rbn = dp.module.layers[1], ref0.layers[1]
    d2 = max(
        float(abs(bn.running_mean - rbn.running_mean).max()),
        float(abs(bn.running_var - rbn.running_var).max()),
    )
    assert d2 < 1e-12, d2
    dp.check_synchronized()
    # None: local statistics (not checked by the wrapper; a check of the layer names them)
    dp = dist.DataParallel(bn_net(8), state=None)
    grads_of(dp, x[half], t[half])
    dp.check_synchronized()
    _expect(
        RuntimeError,
        "BatchNorm 0 running_mean differs",
        lambda: dist.check_synchronized(dp.module),
    )
    ok(f"batchnorm aggregate={d:.1e} broadcast={d2:.1e}")


def check_spmd_plus_gradient():
    r = dist.rank()
    x = gg.dlarray(np.arange(3.0) + 10 * r)
    v = gg.dlarray(np.array([1.0, -2.0, 0.5]) * (r + 1))
    c = float(r + 1)
    total_c = sum(range(1, dist.size() + 1))

    def f(x):
        y = gg.sum(c * gg.spmd_plus(x**2))
        g = gg.dlgradient(y, x, enable_higher_derivatives=True)
        h = gg.dlgradient(gg.sum(g * v), x)
        return y, g, h

    y, g, h = gg.dlfeval(f, x)
    xs = dist.all_gather(x.numpy())
    assert np.allclose(y.numpy(), c * (xs**2).sum(), rtol=0, atol=1e-12)
    # d/dx_r of sum over ranks s of c_s * sum(spmd_plus(x^2)) = 2 x_r * sum(c)
    assert np.allclose(g.numpy(), 2 * x.numpy() * total_c, rtol=0, atol=1e-12), g.numpy()
    assert np.allclose(h.numpy(), 2 * v.numpy() * total_c, rtol=0, atol=1e-12), h.numpy()

    # max: the gradient goes to the rank holding the maximum
    def fm(x):
        y = gg.sum(dist.all_reduce(x, "max"))
        return gg.dlgradient(y, x)

    z = gg.dlarray(np.array([1.0, 5.0]) if r == 0 else np.array([3.0, 2.0]))
    gm = gg.dlfeval(fm, z).numpy()
    want = np.array([0.0, 2.0]) if r == 0 else np.array([2.0, 0.0])
    assert np.array_equal(gm, want), gm
    ok("spmd_plus gradient (first and second order, max)")


def check_collectives():
    r, n = dist.rank(), dist.size()
    a = np.array([1.0, 2.0]) * (r + 1)
    assert np.array_equal(dist.all_reduce(a), [3.0, 6.0])
    assert np.array_equal(dist.all_reduce(a, "mean"), [1.5, 3.0])
    assert np.array_equal(dist.all_reduce(a, "max"), [2.0, 4.0])
    assert np.array_equal(dist.all_reduce(a, "min"), [1.0, 2.0])
    z = gg.dlarray(np.array([1 + 2j, 3 - 1j]) * (r + 1))
    assert np.array_equal(dist.all_reduce(z).numpy(), np.array([3 + 6j, 9 - 3j]))
    tree = {"w": gg.dlarray(a), "n": r + 1, "b": [np.float32(r)]}
    out = dist.all_reduce(tree)
    assert out["n"] == 3 and np.array_equal(out["w"].numpy(), [3.0, 6.0]) and out["b"][0] == 1
    assert gg.spmd_plus(r + 1) == 3 and gg.spmd_size() == n and gg.spmd_index() == r
    assert gg.spmd_plus(1.0, dest=1) == (2.0 if r == 1 else None)
    b = dist.broadcast(gg.dlarray(np.full(3, float(r))), root=1)
    assert np.array_equal(b.numpy(), [1.0, 1.0, 1.0])
    assert dist.broadcast({"lr": 0.1 * (r + 1)}, root=0)["lr"] == 0.1
    gathered = dist.all_gather(gg.dlarray(np.array([r, r + 10.0])))
    assert np.array_equal(gathered.numpy(), [[0.0, 10.0], [1.0, 11.0]])
    import operator

    assert gg.spmd_reduce(operator.and_, r == 0) is False
    assert gg.spmd_reduce(gg.maximum, float(r)) == 1.0
    assert dist.all_have_data(True) and not dist.all_have_data(r == 0)
    parts = dist.shard(7, batch_size=3, shuffle=True, seed=1, epoch=2)
    steps = dist.all_gather(np.array(len(parts)))
    assert steps[0] == steps[1] == 3
    every = np.concatenate([p for ps in dist._world.comm().allgather_obj(list(parts)) for p in ps])
    assert set(every.tolist()) == set(range(7))
    try:
        dist.all_gather(np.zeros(r + 1))
    except ValueError as exc:
        assert "disagree" in str(exc)
    else:
        raise AssertionError("shape mismatch not detected")
    ok("collectives")


def check_faces():
    """MXNet backward and Swift gg.gradient also return averaged gradients."""
    x, t = data()
    r = dist.rank()
    half = slice(r * N // 2, (r + 1) * N // 2)
    net = dist.DataParallel(mlp(11), bucket_mb=0.0002)
    ref = copy.deepcopy(net.module)
    want = grads_of(ref, x, t)
    net.attach_grad()
    for _ in range(2):
        with gg.autograd.record():
            loss = gg.mean((net(gg.dlarray(x[half])) - gg.dlarray(t[half])) ** 2)
        loss.backward()
        d = max_diff(net.module.grad, want)
        assert d < 1e-12, d
    net2 = dist.DataParallel(mlp(12), bucket_mb=0.0002)
    ref2 = copy.deepcopy(net2.module)
    g = gg.gradient(lambda m: gg.mean((m(gg.dlarray(x[half])) - gg.dlarray(t[half])) ** 2))(net2)
    d2 = max_diff(g, grads_of(ref2, x, t))
    assert d2 < 1e-12, d2
    ok(f"faces backward={d:.1e} gradient={d2:.1e}")


def check_checkpoint():
    x, t = data()
    r = dist.rank()
    half = slice(r * N // 2, (r + 1) * N // 2)
    net = dist.DataParallel(mlp(13), bucket_mb=0.0002)
    ref = copy.deepcopy(net.module)

    def ck_loss(net, x, t):
        y = gg.checkpoint(lambda v: net(v), x)
        loss = gg.mean((y - t) ** 2)
        return gg.dlgradient(loss, net)

    for _ in range(2):
        g = gg.dlfeval(ck_loss, net, gg.dlarray(x[half]), gg.dlarray(t[half]))
        d = max_diff(g, grads_of(ref, x, t))
        assert d < 1e-12, d
    assert net.stats["launched_in_walk"] > 0
    ok(f"checkpoint maxdiff={d:.1e}")


def check_higher_order_and_complex():
    """enable_higher_derivatives: the same combined values, reduced through the
    differentiable all_reduce; complex parameters are combined as (re, im) pairs."""
    x, t = data()
    r = dist.rank()
    half = slice(r * N // 2, (r + 1) * N // 2)
    net = dist.DataParallel(mlp(21), bucket_mb=0.0002)
    ref = copy.deepcopy(net.module)

    def traced_grads(m, x, t):
        loss = gg.mean((m(x) - t) ** 2)
        g = gg.dlgradient(loss, m, enable_higher_derivatives=True)
        return g, gg.dlgradient(gg.sum(g["2"]["bias"] ** 2), m)

    g, gg2 = gg.dlfeval(traced_grads, net, gg.dlarray(x[half]), gg.dlarray(t[half]))
    d = max_diff(g, grads_of(ref, x, t))
    assert d < 1e-12, d
    # the second derivative runs through the recorded all_reduce (finite values, equal
    # on every rank because the combined gradient is)
    assert all(np.isfinite(v).all() for v in flat(gg2))

    class Phase(gg.nn.Layer):
        def __init__(self, seed):
            rng = np.random.default_rng(seed)
            self.w = gg.dlarray(rng.standard_normal((4, 3)) + 1j * rng.standard_normal((4, 3)))
            self.unused = gg.dlarray(rng.standard_normal(2))  # gets a zero gradient

        def forward(self, x):
            return gg.real(x @ self.w) + gg.imag(x @ self.w) ** 2

    cnet = dist.DataParallel(Phase(r))
    cref = copy.deepcopy(cnet.module)
    assert cnet.module.w.dtype == np.complex128
    for _ in range(2):  # the second step runs with the bucket plan (overlap)
        cg = grads_of(cnet, x[half], t[half])
        d2 = max_diff(cg, grads_of(cref, x, t))
        assert d2 < 1e-12, d2
        assert np.array_equal(cg["unused"].numpy(), [0.0, 0.0])

    def traced(m, x, t):
        loss = gg.mean((m(x) - t) ** 2)
        return gg.dlgradient(loss, m, enable_higher_derivatives=True)

    tg = gg.dlfeval(traced, cnet, gg.dlarray(x[half]), gg.dlarray(t[half]))
    assert max_diff(tg, cg) < 1e-12
    ok(f"higher order and complex maxdiff={d:.1e}/{d2:.1e}")


def check_mismatches():
    x, t = data()
    r = dist.rank()
    try:
        dist.DataParallel(gg.nn.Dense(4, 3 + r))
    except ValueError as exc:
        assert "disagree" in str(exc), exc
    else:
        raise AssertionError("parameter mismatch not detected")
    net = dist.DataParallel(mlp(1), bucket_mb=0.0002 if r == 0 else 25)
    try:
        grads_of(net, x, t)
    except RuntimeError as exc:
        assert "bucket plan differs" in str(exc), exc
    else:
        raise AssertionError("bucket plan mismatch not detected")
    dbg = dist.DataParallel(mlp(1), bucket_mb=0.0002, debug=True)
    for _ in range(2):
        grads_of(dbg, x, t)
    ok("mismatched plans detected")


def _gathered_state(opt):
    """Every rank's (step, slot arrays) of a gg.optim optimizer."""
    sd = opt.state_dict()
    mine = (
        sd["step"],
        {
            slot: {repr(e["path"]): e["value"].numpy() for e in entries}
            for slot, entries in sd["slots"].items()
        },
    )
    return dist._world.comm().allgather_obj(mine)


def _expect(exc_type, text, fn):
    try:
        fn()
    except exc_type as exc:
        assert text in str(exc), exc
    else:
        raise AssertionError(f"no {exc_type.__name__} with {text!r}")


def check_optimizer_state():
    """Ranks start with different optimizer state; DataParallel(optimizer=...) makes it
    rank 0's (also where rank 0 has none yet), checked by hash; training then stays
    bit-identical on every rank."""
    x, t = data()
    r = dist.rank()
    makers = {
        "SGD": lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9),
        "Adam": lambda m: gg.optim.Adam(m, learning_rate=0.01),
        "AdamW": lambda m: gg.optim.AdamW(m, learning_rate=0.01, weight_decay=0.1),
        "RMSProp": lambda m: gg.optim.RMSProp(m, learning_rate=0.01, momentum=0.5, centered=True),
    }
    for name, make_opt in makers.items():
        net = mlp(30 + r)  # different parameters on each rank
        opt = make_opt(net)
        for k in range(r * 2 + 1):  # rank 0: 1 local step, rank 1: 3 (different state)
            g = grads_of(net, x[k : k + 4] * (r + 1), t[k : k + 4])
            opt.update(net, g)
        if name == "Adam" and r == 0:
            opt = make_opt(net)  # rank 0 has no state yet: rank 1's must be dropped
        before = _gathered_state(opt)
        assert before[0] != before[1] or name == "Adam"
        dp = dist.DataParallel(net, bucket_mb=0.0002, optimizer=opt)
        after = _gathered_state(opt)
        assert after[1][0] == after[0][0] == before[0][0], (name, after[0][0], after[1][0])
        for slot, entries in after[0][1].items():
            assert after[1][1][slot].keys() == entries.keys(), (name, slot)
            for path, value in entries.items():
                assert np.array_equal(after[1][1][slot][path], value), (name, slot, path)
                assert np.array_equal(before[0][1][slot][path], value), (name, slot, path)
        if name == "Adam":
            assert after[1][0] == 0 and not any(after[1][1].values())
        for _ in range(3):
            g = grads_of(dp, x[r * 8 : r * 8 + 8], t[r * 8 : r * 8 + 8])
            opt.update(dp, g)
        same_on_all_ranks(dp.parameters())
        dp.check_synchronized()
    # MATLAB-style state of adamupdate: overwritten in place with rank 0's
    net = mlp(40 + r)
    m = v = None
    for it in (1, 2):
        g = grads_of(net, x[: 4 + r] * (r + 1), t[: 4 + r])
        net, m, v = gg.adamupdate(net, g, m, v, it, learn_rate=0.01)
    first = flat(m)[0].copy()
    m_before = dist.all_gather(flat(m)[0])
    assert not np.array_equal(m_before[0], m_before[1])
    dp = dist.DataParallel(net, optimizer=(m, v))
    assert np.array_equal(flat(m)[0], m_before[0]) and (r == 0) == np.array_equal(
        first, m_before[0]
    )
    for it in (3, 4):
        g = grads_of(dp, x[r * 8 : r * 8 + 8], t[r * 8 : r * 8 + 8])
        dp, m, v = gg.adamupdate(dp, g, m, v, it, learn_rate=0.01)
    dist.check_synchronized(dp, m, v)
    same_on_all_ranks([m, v])
    # mismatches raise on every rank, with the reason
    n1 = mlp(1)
    _expect(
        ValueError,
        "learning_rate",
        lambda: dist.broadcast_optimizer_state(gg.optim.SGD(n1, learning_rate=0.1 * (r + 1))),
    )
    _expect(
        ValueError,
        "different kinds",
        lambda: dist.broadcast_optimizer_state(gg.optim.SGD(n1) if r == 0 else gg.optim.Adam(n1)),
    )
    _expect(
        ValueError,
        "must be empty on every rank",
        lambda: dist.broadcast_optimizer_state(None if r == 0 else [gg.dlarray([1.0])]),
    )
    n2 = dist.DataParallel(mlp(2))
    if r == 1:
        n2.module.layers[1].bias._data[0] += 1e-15
    _expect(RuntimeError, "argument 0['1']['bias'] differs", lambda: dist.check_synchronized(n2))
    ok("optimizer state broadcast and checked")


def check_accelerate():
    """A DataParallel step under gg.dlaccelerate: traced once, replayed after, bitwise
    equal to eager DataParallel and within 1e-12 of one process on the full batch."""
    import warnings

    x, t = data()
    r = dist.rank()
    half = slice(r * N // 2, (r + 1) * N // 2)
    warnings.simplefilter("error")  # an eager fallback would warn
    eager = dist.DataParallel(mlp(50 + r), bucket_mb=0.0002)
    accel = dist.DataParallel(copy.deepcopy(eager.module), bucket_mb=0.0002)
    ref = copy.deepcopy(eager.module)
    acc = gg.dlaccelerate(loss_fn)
    vel_e = vel_a = vel_r = None
    steps = 5
    for _ in range(steps):
        _, ge = gg.dlfeval(loss_fn, eager, gg.dlarray(x[half]), gg.dlarray(t[half]))
        eager, vel_e = gg.sgdmupdate(eager, ge, vel_e, learn_rate=0.05)
        _, ga = gg.dlfeval(acc, accel, gg.dlarray(x[half]), gg.dlarray(t[half]))
        accel, vel_a = gg.sgdmupdate(accel, ga, vel_a, learn_rate=0.05)
        _, gr = gg.dlfeval(loss_fn, ref, gg.dlarray(x), gg.dlarray(t))
        ref, vel_r = gg.sgdmupdate(ref, gr, vel_r, learn_rate=0.05)
    assert (acc.hits, acc.traces, acc.eager_calls) == (steps - 1, 1, 0), (acc.hits, acc.traces)
    assert max_diff(accel.parameters(), eager.parameters()) == 0.0
    d = max_diff(accel.parameters(), ref.parameters())
    assert d < 1e-12, d
    same_on_all_ranks(accel.parameters())
    assert accel.stats["walks"] == steps and accel.stats["launched_in_walk"] > 0, accel.stats
    assert accel.stats["launched_in_walk"] == eager.stats["launched_in_walk"], accel.stats

    # BatchNorm statistics aggregated in the replay; no_sync accumulation replayed
    bn_e = dist.DataParallel(bn_net(60 + r), bucket_mb=0.0002)
    bn_a = dist.DataParallel(copy.deepcopy(bn_e.module), bucket_mb=0.0002)
    acc_bn = gg.dlaccelerate(loss_fn)
    for k in range(4):
        for net, f in ((bn_e, loss_fn), (bn_a, acc_bn)):
            with gg.autograd.train_mode():
                if k == 2:
                    with net.no_sync():
                        gg.dlfeval(f, net, gg.dlarray(x[half]), gg.dlarray(t[half]))
                _, g = gg.dlfeval(f, net, gg.dlarray(x[half]), gg.dlarray(t[half]))
            gg.sgdmupdate(net, g, None, learn_rate=0.05)
    assert acc_bn.eager_calls == 0 and acc_bn.hits >= 3, (acc_bn.hits, acc_bn.traces)
    assert max_diff(bn_a.parameters(), bn_e.parameters()) == 0.0
    for name in ("running_mean", "running_var"):
        a = getattr(bn_a.module.layers[1], name)
        assert np.array_equal(a, getattr(bn_e.module.layers[1], name)), name
    bn_a.check_synchronized()

    # ranks that decide differently (rank 1 traces while rank 0 replays) still pair
    # their collectives: shard sizes 4,4,4,4 on rank 0 and 4,6,4,6 on rank 1
    net = dist.DataParallel(mlp(70 + r), bucket_mb=0.0002)
    ref = copy.deepcopy(net.module)
    acc2 = gg.dlaccelerate(loss_fn)
    sizes = [(4, 4), (4, 6), (4, 4), (4, 6)]
    for a, b in sizes:
        mine = slice(0, a) if r == 0 else slice(a, a + b)
        net.weight = (a if r == 0 else b) / (a + b)
        _, g = gg.dlfeval(acc2, net, gg.dlarray(x[mine]), gg.dlarray(t[mine]))
        gg.sgdmupdate(net, g, None, learn_rate=0.05)
        _, gr = gg.dlfeval(loss_fn, ref, gg.dlarray(x[: a + b]), gg.dlarray(t[: a + b]))
        gg.sgdmupdate(ref, gr, None, learn_rate=0.05)
    assert acc2.traces == (1 if r == 0 else 2) and acc2.eager_calls == 0, acc2.traces
    d2 = max_diff(net.parameters(), ref.parameters())
    assert d2 < 1e-12, d2
    same_on_all_ranks(net.parameters())

    # CheckMode="tolerance" (every replay checked against an eager run on copies): with
    # the same shapes on every rank, every rank runs each step twice alike
    tol_e = dist.DataParallel(mlp(80 + r), bucket_mb=0.0002)
    tol_a = dist.DataParallel(copy.deepcopy(tol_e.module), bucket_mb=0.0002)
    acc_t = gg.dlaccelerate(loss_fn)
    acc_t.CheckMode = "tolerance"
    for _ in range(3):
        for net, f in ((tol_e, loss_fn), (tol_a, acc_t)):
            _, g = gg.dlfeval(f, net, gg.dlarray(x[half]), gg.dlarray(t[half]))
            gg.sgdmupdate(net, g, None, learn_rate=0.05)
    assert (acc_t.hits, acc_t.eager_calls) == (2, 0), (acc_t.hits, acc_t.eager_calls)
    assert max_diff(tol_a.parameters(), tol_e.parameters()) == 0.0

    # all_reduce of dlarrays (spmd_plus, max) in an accelerated function: replayed
    def f(x):
        y = gg.sum(gg.spmd_plus(x**2)) + gg.sum(dist.all_reduce(x, "max"))
        return y, gg.dlgradient(y, x)

    acc_f = gg.dlaccelerate(f)
    for k in range(3):
        x0 = gg.dlarray(np.array([1.0, -2.0]) * (k + 1) + r)
        ya, ga = gg.dlfeval(acc_f, x0)
        ye, ge = gg.dlfeval(f, x0)
        assert np.array_equal(ya.numpy(), ye.numpy()) and np.array_equal(ga.numpy(), ge.numpy())
    assert (acc_f.hits, acc_f.eager_calls) == (2, 0), (acc_f.hits, acc_f.eager_calls)

    # a collective the trace would not repeat: that call pattern runs eagerly (warned)
    def with_raw_collective(net, x, t):
        count = dist.all_reduce(np.array([float(x.shape[0])]))
        loss = gg.sum((net(x) - t) ** 2) / float(count[0])
        return loss, gg.dlgradient(loss, net)

    acc3 = gg.dlaccelerate(with_raw_collective)
    warnings.simplefilter("ignore")
    for a in (4, 4, 4):
        mine = slice(0, a) if r == 0 else slice(a, a + 2 + a)
        _, g = gg.dlfeval(acc3, net, gg.dlarray(x[mine]), gg.dlarray(t[mine]))
    assert acc3.eager_calls == 2 and acc3.hits == 0, (acc3.eager_calls, acc3.hits)
    warnings.simplefilter("default")
    ok(f"accelerate maxdiff={d:.1e}/{d2:.1e} hits={acc.hits}")


def main():
    dist.init()
    assert dist.size() == 2 and dist.backend_name() == "mpi", (dist.size(), dist.backend_name())
    assert dist.local_rank() == dist.rank()
    checks = [
        lambda: check_training(True),
        lambda: check_training(False),
        check_unequal_shards,
        check_no_sync,
        check_batchnorm,
        check_spmd_plus_gradient,
        check_collectives,
        check_faces,
        check_checkpoint,
        check_higher_order_and_complex,
        check_mismatches,
        check_optimizer_state,
        check_accelerate,
    ]
    only = sys.argv[1:]
    for i, check in enumerate(checks):
        if not only or str(i) in only:
            check()
    dist.barrier()
    print(f"DONE rank={dist.rank()}", flush=True)


if __name__ == "__main__":
    # the checks compare float64 training to 1e-12 (set here, not at import: pytest
    # imports this file to collect doctests)
    gg.set_default_dtype("float64")
    main()
