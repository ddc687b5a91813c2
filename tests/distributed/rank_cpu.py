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
