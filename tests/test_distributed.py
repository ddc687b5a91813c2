"""gpugrad.distributed: 2-rank jobs (mpiexec from the mpich wheel, each under a timeout)
running the check scripts in tests/distributed/, plus single-process tests of the same
API (a script not launched is one rank of one) and of the engine's leaf hook."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import gpugrad as gg
import gpugrad.distributed as dist
from gpugrad import tape
from gpugrad.distributed import _comm, _world, data, run


def _eager_because(reason):
    """The eager-run warning's reason: on the cuda path a host read of the device array
    (the host value handed to the collective, the test sink's copy) is met first."""
    if gg.backend.is_cuda():
        return f"{reason}|a device-to-host read"
    return reason


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "distributed")


def _env(device):
    env = dict(os.environ)
    env.update(PYTHONPATH=ROOT, GPUGRAD_DEVICE=device, OPENBLAS_NUM_THREADS="1")
    for var in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        env.pop(var, None)
    return env


def _spawn(script, device="cpu", timeout=150):
    cmd = run.command(2, [os.path.join(SCRIPTS, script)])
    proc = subprocess.run(
        cmd, env=_env(device), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for r in (0, 1):
        assert f"DONE rank={r}" in out, out[-4000:]
    return out


def test_two_ranks_train_like_one_process():
    out = _spawn("rank_cpu.py")
    names = [
        "training overlap=True",
        "training overlap=False",
        "unequal shards",
        "no_sync",
        "batchnorm",
        "spmd_plus gradient",
        "collectives",
        "faces",
        "checkpoint",
        "higher order and complex",
        "mismatched plans detected",
        "optimizer state broadcast and checked",
        "accelerate",
    ]
    for name in names:  # one line per rank (lines of the two ranks may interleave)
        assert out.count(f"OK {name}") == 2, (name, out[-3000:])


def test_nccl_code_path_against_the_mpi_double():
    """emu; cuda-sim when the suite runs there (GPUGRAD_DEVICE=cuda-sim: device arrays
    that refuse implicit host copies, the simulated runtime's streams and events)."""
    device = "cuda-sim" if gg.device() == "cuda-sim" else "emu"
    out = _spawn("rank_emu_nccl.py", device=device)
    assert out.count(f"OK {device} nccl") == 2, out[-3000:]


def test_auto_backend_is_nccl_on_the_cuda_path(monkeypatch):
    """``init("auto")`` when launched: NCCL on cuda, cuda-sim and emu (cuda-sim took MPI:
    the rule read ``device() == "cuda"``), MPI on cpu. One process with a stand-in
    for MPI's world communicator."""
    pytest.importorskip("cupy")  # cuda-sim checks against the installed CuPy

    class World:
        def Get_rank(self):
            return 0

        def Get_size(self):
            return 2

    monkeypatch.setattr(_comm, "_mpi", lambda: type("MPI", (), {"COMM_WORLD": World()}))
    monkeypatch.setattr(_world, "launched", lambda env=None: True)
    monkeypatch.setenv("GPUGRAD_LOCAL_RANK", "0")
    old = gg.device()
    try:
        for device, want in (("cuda-sim", "nccl"), ("emu", "nccl"), ("cpu", "mpi")):
            gg.set_device(device)
            _world._reset_for_tests()
            assert dist.init() == 0 and dist.backend_name() == want, device
            c = _world.comm()
            if want == "nccl":  # NCCL itself is the MPI double off a real GPU
                assert isinstance(c, _comm.NcclComm) and isinstance(c.nccl, _comm.MpiNcclDouble)
            else:
                assert isinstance(c, _comm.MpiComm)
    finally:
        gg.set_device(old)
        _world._reset_for_tests()


def test_a_raising_rank_aborts_the_job_quickly():
    script = os.path.join(SCRIPTS, "rank_raises.py")
    cmd = [sys.executable, "-m", "gpugrad.distributed.run", "-n", "2", "--timeout", "60", script]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env=_env("cpu"), cwd=ROOT, capture_output=True, text=True, timeout=90
    )
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 124), out
    assert "rank 1 fails on purpose" in out and "UNREACHABLE" not in out, out
    assert elapsed < 45, elapsed  # aborted by -m mpi4py, not killed by the timeout


def test_launcher_timeout_kills_a_hung_job(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\ntime.sleep(60)\n")
    t0 = time.perf_counter()
    rc = run.run(1, [str(script)], timeout=2, env=_env("cpu"))
    assert rc == 124 and time.perf_counter() - t0 < 20


# ------------------------------------------------------------------ one process


def test_not_launched_is_one_process_without_mpi():
    assert dist.init() == 0 and dist.rank() == 0 and dist.size() == 1
    assert dist.local_rank() == 0 and dist.backend_name() == "single"
    dist.barrier()
    x = gg.dlarray([1.0, -2.0])
    for op in ("sum", "mean", "max", "min"):
        assert np.array_equal(dist.all_reduce(x, op).numpy(), [1.0, -2.0])
    assert dist.all_gather(np.ones(2)).shape == (1, 2)
    assert dist.broadcast({"a": 1.5}) == {"a": 1.5}
    assert gg.spmd_plus(2.0) == 2.0 and gg.spmd_size() == 1 and gg.spmd_index() == 0
    assert gg.gplus is gg.spmd_plus and gg.spmdPlus is gg.spmd_plus


def test_importing_gpugrad_does_not_import_mpi():
    code = "import sys, gpugrad, gpugrad.distributed as d; d.init(); print('mpi4py' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env("cpu"), capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_launcher_environment_detection():
    assert not _world.launched({})
    assert _world.launched({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert not _world.launched({"PMI_RANK": "0", "PMI_SIZE": "1"})
    assert _world.launched({"OMPI_COMM_WORLD_SIZE": "4"})
    assert _world.launched({"SLURM_PROCID": "1", "SLURM_NTASKS": "8"})
    assert _world._local_rank_from({"MPI_LOCALRANKID": "3"}, None) == 3
    assert (
        _world._local_rank_from({"SLURM_LOCALID": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, None)
        == 1
    )
    assert _world._torchrun_only({"RANK": "0", "WORLD_SIZE": "2"})


def test_torchrun_environment_without_mpi_is_refused(monkeypatch):
    monkeypatch.setattr(_world, "_state", {"comm": None, "local_rank": 0, "backend": None})
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="mpiexec"):
        dist.init()


def test_bad_arguments_name_the_function():
    with pytest.raises(ValueError, match="all_reduce: op must be"):
        dist.all_reduce(np.ones(2), op="avg")
    with pytest.raises(TypeError, match="complex"):
        dist.all_reduce(gg.dlarray([1j]), op="max")
    with pytest.raises(ValueError, match="broadcast: root"):
        dist.broadcast(np.ones(2), root=3)
    with pytest.raises(TypeError, match="average_gradients: weight"):
        dist.average_gradients({"w": np.ones(2)}, weight="half")
    with pytest.raises(ValueError, match="bucket_mb"):
        dist.DataParallel(gg.nn.Dense(2, 2), bucket_mb=0)
    with pytest.raises(ValueError, match="state"):
        dist.DataParallel(gg.nn.Dense(2, 2), state="sync")
    with pytest.raises(TypeError, match="gg.nn.Layer"):
        dist.DataParallel(lambda x: x)
    with pytest.raises(ValueError, match="init: backend"):
        dist.init("gloo")
    with pytest.raises(ValueError, match="shard: batch_size"):
        dist.shard(10, batch_size=0)
    with pytest.raises(ValueError, match="spmd_plus: dest"):
        gg.spmd_plus(1.0, dest=2)


def test_all_reduce_gradient_checks_first_and_second_order():
    x = gg.dlarray(np.array([0.3, -1.2, 2.0]))
    z = gg.dlarray(np.array([0.3 + 1j, -1.2 - 0.5j]))
    gg.testing.check_gradient(lambda v: dist.all_reduce(v, "sum") ** 2, x, order=2)
    gg.testing.check_gradient(lambda v: gg.sin(dist.all_reduce(v, "mean")), x, order=2)
    gg.testing.check_gradient(lambda v: dist.all_reduce(v * v, "max") ** 3, x, order=2)
    gg.testing.check_gradient(lambda v: gg.exp(dist.all_reduce(v, "min")), x, order=2)
    gg.testing.check_gradient(lambda v: gg.abs(dist.all_reduce(v, "sum")) ** 2, z, order=2)


def test_data_parallel_in_one_process_matches_the_plain_network():
    rng = np.random.default_rng(0)
    x, t = gg.dlarray(rng.standard_normal((6, 3))), gg.dlarray(rng.standard_normal((6, 2)))
    gg.random.seed(0)
    net = gg.nn.Sequential(gg.nn.Dense(3, 5, activation=gg.relu), gg.nn.Dense(5, 2))
    dp = dist.DataParallel(net, bucket_mb=0.0001)

    def loss_fn(m):
        loss = gg.mean((m(x) - t) ** 2)
        return gg.dlgradient(loss, m)

    for _ in range(3):
        got = gg.dlfeval(loss_fn, dp)
        want = gg.dlfeval(loss_fn, net)
        for a, b in zip(gg.tree.leaves(got), gg.tree.leaves(want)):
            assert np.array_equal(a.numpy(), b.numpy())
    assert sorted(i for b in dp.bucket_plan for i in b) == [0, 1, 2, 3]
    assert dp.stats["launched_in_walk"] > 0


def test_shard_gives_every_rank_the_same_steps(monkeypatch):
    for nranks in (2, 3):
        parts = []
        for r in range(nranks):
            monkeypatch.setattr(data, "size", lambda n=nranks: n)
            monkeypatch.setattr(data, "rank", lambda r=r: r)
            parts.append(data.shard(11, batch_size=4, shuffle=True, seed=3, epoch=1))
        steps = {len(p) for p in parts}
        assert steps == {3}
        for k in range(3):
            assert abs(sum(p.weights[k] for p in parts) - 1) < 1e-15
            together = np.concatenate([p[k] for p in parts])
            assert len(together) == parts[0].global_sizes[k]
        every = np.concatenate([np.concatenate(list(p)) for p in parts])
        assert set(every.tolist()) == set(range(11))
        dropped = data.shard(11, batch_size=4, drop_last=True)
        assert len(dropped) == 2
    # a different epoch reshuffles
    monkeypatch.setattr(data, "size", lambda: 1)
    monkeypatch.setattr(data, "rank", lambda: 0)
    a = data.shard(20, 20, shuffle=True, seed=0, epoch=0)[0]
    b = data.shard(20, 20, shuffle=True, seed=0, epoch=1)[0]
    assert sorted(a) == sorted(b) and not np.array_equal(a, b)


class _Sink:
    def __init__(self):
        self.events = []

    def begin(self):
        self.events.append("begin")

    def ready(self, node, g):
        self.events.append((node, None if g is None else gg.backend.to_host(g).copy()))

    def done(self):
        self.events.append("done")
        return {node: g * 10 for node, g in self.events[1:-1] if g is not None}


def test_leaf_hook_fires_once_per_leaf_with_the_final_gradient(monkeypatch):
    import weakref

    monkeypatch.setattr(tape, "LEAF_HOOKS", weakref.WeakKeyDictionary())
    sink = _Sink()
    names = {}

    def f(a, b, c):
        for name, v in zip("abc", (a, b, c)):
            tape.LEAF_HOOKS[v._node] = sink
            names[v._node] = name
        y = gg.sum(a * a) + gg.sum(a * b) + gg.sum(gg.sin(b))
        return gg.dlgradient(y, a, b, c)

    a, b, c = gg.dlarray([1.0, 2.0]), gg.dlarray([0.5, -1.0]), gg.dlarray([3.0])
    ga, gb, gc = gg.dlfeval(f, a, b, c)
    assert sink.events[0] == "begin" and sink.events[-1] == "done"
    fired = [(names[n], g) for n, g in sink.events[1:-1]]
    # each leaf exactly once; c (no consumer) first, with None
    assert [n for n, _ in fired][0] == "c" and sorted(n for n, _ in fired) == ["a", "b", "c"]
    got = dict(fired)
    want_a = 2 * a.numpy() + b.numpy()
    want_b = a.numpy() + np.cos(b.numpy())
    assert got["c"] is None
    assert np.allclose(got["a"], want_a) and np.allclose(got["b"], want_b)
    # done()'s values are what the walk hands back
    assert np.allclose(ga.numpy(), 10 * want_a) and np.allclose(gb.numpy(), 10 * want_b)
    assert np.array_equal(gc.numpy(), [0.0])


def test_leaf_hook_fires_before_the_walk_ends(monkeypatch):
    """The first layer's weights are ready only at the end; the last layer's early."""
    import weakref

    monkeypatch.setattr(tape, "LEAF_HOOKS", weakref.WeakKeyDictionary())
    order = []

    class Sink:
        def begin(self):
            pass

        def ready(self, node, g):
            order.append(names[node])

        def done(self):
            order.append("done")
            return {}

    names = {}
    sink = Sink()

    def f(w1, w2, w3, x):
        for name, v in zip(("w1", "w2", "w3"), (w1, w2, w3)):
            tape.LEAF_HOOKS[v._node] = sink
            names[v._node] = name
        y = gg.sum(gg.tanh(gg.tanh(x @ w1) @ w2) @ w3)
        return gg.dlgradient(y, w1, w2, w3)

    ws = [gg.dlarray(np.full((2, 2), 0.1 * k)) for k in (1, 2, 3)]
    gg.dlfeval(f, *ws, gg.dlarray(np.ones((3, 2))))
    assert order == ["w3", "w2", "w1", "done"]


def test_data_parallel_example_trains_like_one_process(tmp_path):
    """examples/data_parallel.py, one epoch: 2 ranks with the step under gg.dlaccelerate
    follow 1 process's eager loss curve."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "example_data_parallel", os.path.join(ROOT, "examples", "data_parallel.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, one = module.main(["--epochs", "1", "--limit", "400"])
    saved = tmp_path / "losses.npy"
    script = [os.path.join(ROOT, "examples", "data_parallel.py"), "--epochs", "1", "--limit", "400"]
    proc = subprocess.run(
        run.command(2, [*script, "--accelerate", "--save-losses", str(saved)]),
        env=_env("cpu"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "5 of 7 steps replayed" in proc.stdout, proc.stdout[-2000:]  # the last batch traces
    two = np.load(saved)
    assert len(two) == len(one) == 7
    np.testing.assert_allclose(two, one, rtol=2e-4, atol=1e-6)  # float32 sums in another order
    assert two[-1] < two[0]


# ------------------------------------------------------------------ optimizer state, sync


def test_optimizer_state_in_one_process_is_kept_and_checked():
    net = gg.nn.Sequential(gg.nn.Dense(3, 4), gg.nn.BatchNorm(4), gg.nn.Dense(4, 2))
    opt = gg.optim.Adam(net, learning_rate=0.01)
    grads = {k: {n: gg.ones_like(p) for n, p in v.items()} for k, v in net.parameters().items()}
    opt.update(net, grads)
    before = opt.state_dict()
    dp = dist.DataParallel(net, optimizer=opt)
    after = opt.state_dict()
    assert after["step"] == before["step"] == 1
    for a, b in zip(before["slots"]["first_moment"], after["slots"]["first_moment"]):
        assert np.array_equal(a["value"].numpy(), b["value"].numpy())
    digest = dp.check_synchronized()
    assert digest == dist.check_synchronized(net, opt) and len(digest) == 40
    opt.update(net, grads)
    assert dist.check_synchronized(net, opt) != digest  # the digest follows the state
    vel = [gg.dlarray([1.0, 2.0])]
    assert dist.broadcast_optimizer_state(vel) is vel and vel[0].numpy().tolist() == [1.0, 2.0]
    assert dist.broadcast_optimizer_state(None) is None


def test_optimizer_state_errors_name_the_function():
    net = gg.nn.Dense(2, 1)
    with pytest.raises(TypeError, match="broadcast_optimizer_state: .*schedule|broadcast_opt"):
        dist.broadcast_optimizer_state(gg.optim.SGD(net, learning_rate=lambda step: 0.1))
    with pytest.raises(TypeError, match=r"broadcast_optimizer_state: state\[0\] is a float"):
        dist.broadcast_optimizer_state([0.5])
    with pytest.raises(ValueError, match="broadcast_optimizer_state: root"):
        dist.broadcast_optimizer_state(None, root=1)


# ------------------------------------------------------------------ gg.dlaccelerate


def _loss_fn(net, x, t):
    loss = gg.mean((net(x) - t) ** 2)
    return loss, gg.dlgradient(loss, net)


def test_data_parallel_step_is_replayed_by_dlaccelerate(float64):
    rng = np.random.default_rng(1)
    x, t = gg.dlarray(rng.standard_normal((6, 3))), gg.dlarray(rng.standard_normal((6, 2)))
    gg.random.seed(2)
    net = gg.nn.Sequential(gg.nn.Dense(3, 8, activation=gg.tanh), gg.nn.Dense(8, 2))
    import copy

    eager = dist.DataParallel(net, bucket_mb=0.0001)
    accel = dist.DataParallel(copy.deepcopy(net), bucket_mb=0.0001)
    acc = gg.dlaccelerate(_loss_fn)
    for _ in range(4):
        _, ge = gg.dlfeval(_loss_fn, eager, x, t)
        gg.sgdmupdate(eager, ge, None, learn_rate=0.1)
        _, ga = gg.dlfeval(acc, accel, x, t)
        gg.sgdmupdate(accel, ga, None, learn_rate=0.1)
    assert (acc.hits, acc.traces, acc.eager_calls) == (3, 1, 0)
    for a, b in zip(gg.tree.leaves(eager.parameters()), gg.tree.leaves(accel.parameters())):
        assert np.array_equal(a.numpy(), b.numpy())
    assert accel.stats["walks"] == 4
    assert accel.stats["launched_in_walk"] == eager.stats["launched_in_walk"] > 0


def test_collectives_under_dlaccelerate_run_once_per_call(monkeypatch):
    """A replayed all_reduce marks the trace side-effecting (its first replay is not
    run twice to check it); a plain-array collective makes the key eager."""
    calls = []
    single = dist._comm.SingleComm
    inner = single.allreduce_
    monkeypatch.setattr(
        single, "allreduce_", lambda self, b, op: calls.append(op) or inner(self, b, op)
    )

    def f(x):
        y = gg.sum(dist.all_reduce(x * x, "sum")) + gg.sum(dist.all_reduce(x, "max"))
        return y, gg.dlgradient(y, x)

    acc = gg.dlaccelerate(f)
    for v in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]):
        y, g = gg.dlfeval(acc, gg.dlarray(v))
        assert np.allclose(g.numpy(), 2 * np.array(v) + 1)
    assert acc.hits == 2 and acc.eager_calls == 0
    # sum: forward + backward; max: forward + 2 in its derivative; once per call (no
    # eager re-run of the first replay)
    assert len(calls) == 3 * 5, calls

    def h(x):
        n = dist.all_reduce(np.array([2.0]))
        return gg.sum(x) * float(n[0])

    acc_h = gg.dlaccelerate(h)
    with pytest.warns(RuntimeWarning, match=_eager_because("collective outside a recorded call")):
        acc_h(gg.dlarray([1.0]))
    acc_h(gg.dlarray([1.0]))
    assert acc_h.eager_calls == 1 and acc_h.hits == 0


def test_a_gradient_hook_that_cannot_be_replayed_runs_eagerly(monkeypatch):
    import weakref

    monkeypatch.setattr(tape, "LEAF_HOOKS", weakref.WeakKeyDictionary())

    class Tenfold(_Sink):  # no ``replayable``: its work is not recorded
        def begin(self):
            self.events = ["begin"]

    sink = Tenfold()

    class Key:
        pass

    key = Key()
    tape.LEAF_HOOKS[key] = sink  # registered before the trace (as DataParallel's are)

    def f(a):
        tape.LEAF_HOOKS[a._node] = sink
        return gg.dlgradient(gg.sum(a * a), a)

    acc = gg.dlaccelerate(f)
    with pytest.warns(
        RuntimeWarning, match=_eager_because("gradient hooks that a replay cannot repeat")
    ):
        g = gg.dlfeval(acc, gg.dlarray([1.0, 2.0]))
    g = gg.dlfeval(acc, gg.dlarray([1.0, 2.0]))
    assert np.array_equal(g.numpy(), [20.0, 40.0])  # the sink's done() ran: x10
    assert acc.eager_calls == 1 and acc.hits == 0
