"""Run on 2 ranks with GPUGRAD_DEVICE=emu or cuda-sim: the NCCL code path (device
buckets, NCCL dtype/op enums, raw pointers, comm stream and events) against the
MPI-backed double; on cuda-sim with device arrays that refuse implicit host copies."""

import copy

import numpy as np

import gpugrad as gg
import gpugrad.distributed as dist
from gpugrad.distributed import _comm, _world


def main():
    assert gg.device() in ("emu", "cuda-sim"), gg.device()
    dist.init()
    c = _world.comm()
    assert dist.backend_name() == "nccl" and isinstance(c, _comm.NcclComm), dist.backend_name()
    assert isinstance(c.nccl, _comm.MpiNcclDouble)
    r = dist.rank()
    # collectives through NCCL pointers: float32/float64/complex/int
    a = (np.arange(4, dtype=np.float32) + 1) * (r + 1)
    assert np.array_equal(dist.all_reduce(a), a / (r + 1) * 3)
    assert np.array_equal(dist.all_reduce(a, "max"), a / (r + 1) * 2)
    z = np.array([1 + 1j, 2 - 3j]) * (r + 1)
    assert np.array_equal(dist.all_reduce(z, "mean"), z / (r + 1) * 1.5)
    assert dist.all_reduce(np.int64(r + 5)) == 11
    assert np.array_equal(dist.broadcast(np.full(3, float(r)), root=1), [1.0, 1.0, 1.0])
    g = dist.all_gather(np.array([r, 2 * r], np.int32))
    assert np.array_equal(g, [[0, 0], [1, 2]])
    # a host array in, a host array out; device arrays stay on the device
    assert type(dist.all_reduce(a)) is np.ndarray and type(g) is np.ndarray
    xp = gg.backend.xp()
    on_dev = dist.all_reduce(xp.asarray(a))
    assert gg.backend.is_device_array(on_dev) == gg.backend.is_cuda()
    assert np.array_equal(gg.backend.to_host(on_dev), a / (r + 1) * 3)
    before = dict(c.nccl.calls)
    assert before["allReduce"] >= 4 and before["bcast"] >= 1 and before["allGather"] >= 1

    # DataParallel training on the NCCL path equals one process on the full batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    t = rng.standard_normal((8, 2)).astype(np.float32)
    gg.random.seed(r)
    net = dist.DataParallel(
        gg.nn.Sequential(
            gg.nn.Dense(5, 8, activation=gg.relu, dtype=np.float32),
            gg.nn.Dense(8, 2, dtype=np.float32),
        ),
        bucket_mb=0.0001,
    )
    ref = copy.deepcopy(net.module)

    def loss_fn(net, x, t):
        loss = gg.mean((net(x) - t) ** 2)
        return gg.dlgradient(loss, net)

    half = slice(4 * r, 4 * r + 4)
    vel = rvel = None
    for _ in range(4):
        gr = gg.dlfeval(loss_fn, net, gg.dlarray(x[half]), gg.dlarray(t[half]))
        net, vel = gg.sgdmupdate(net, gr, vel, learn_rate=0.05)
        rg = gg.dlfeval(loss_fn, ref, gg.dlarray(x), gg.dlarray(t))
        ref, rvel = gg.sgdmupdate(ref, rg, rvel, learn_rate=0.05)
    ps = [p.numpy() for p in gg.tree.leaves(net.parameters())]
    rs = [p.numpy() for p in gg.tree.leaves(ref.parameters())]
    d = max(float(abs(p - q).max()) for p, q in zip(ps, rs))
    assert d < 1e-5, d  # float32
    for p in ps:
        both = dist.all_gather(p)
        assert np.array_equal(both[0], both[1])
    assert net.stats["launched_in_walk"] > 0, net.stats
    assert c.nccl.calls["allReduce"] > before["allReduce"] + 4
    # the same step under gg.dlaccelerate: replayed through the NCCL path, bitwise eager
    acc = gg.dlaccelerate(loss_fn)
    net_a = dist.DataParallel(copy.deepcopy(net.module), bucket_mb=0.0001)
    vel_a = copy.deepcopy(vel)
    calls = c.nccl.calls["allReduce"]
    for _ in range(3):
        ge = gg.dlfeval(loss_fn, net, gg.dlarray(x[half]), gg.dlarray(t[half]))
        net, vel = gg.sgdmupdate(net, ge, vel, learn_rate=0.05)
        ga = gg.dlfeval(acc, net_a, gg.dlarray(x[half]), gg.dlarray(t[half]))
        net_a, vel_a = gg.sgdmupdate(net_a, ga, vel_a, learn_rate=0.05)
    # on cuda-sim dlaccelerate may still run the step eagerly (the cuda replay is issue
    # #13's); the results and the NCCL calls below must hold either way
    if gg.device() == "emu":
        assert (acc.hits, acc.eager_calls) == (2, 0), (acc.hits, acc.eager_calls)
    assert acc.hits + acc.eager_calls == 2, (acc.hits, acc.eager_calls)
    for p, q in zip(gg.tree.leaves(net.parameters()), gg.tree.leaves(net_a.parameters())):
        assert np.array_equal(p.numpy(), q.numpy())
    assert c.nccl.calls["allReduce"] >= calls + 6 * len(net_a.bucket_plan)
    print(f"OK {gg.device()} nccl maxdiff={d:.1e} calls={c.nccl.calls} rank={r}", flush=True)
    dist.barrier()
    print(f"DONE rank={r}", flush=True)


if __name__ == "__main__":
    # the checks compare float64 training to 1e-12 (set here, not at import: pytest
    # imports this file to collect doctests)
    gg.set_default_dtype("float64")
    main()
