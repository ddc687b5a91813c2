"""gg.dlaccelerate's graph capture, on the emulator: the capture logic that makes a CUDA
graph on cuda runs on emu with the kernel launches recorded and checked, so a captured
replay must equal eager execution, copy its inputs into static buffers and count one
graph launch per call (see gpugrad/_accel_graph.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import _accel_graph, backend
from gpugrad.tree import map_arrays

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def emu():
    before = backend.device()
    backend.set_device("emu")
    try:
        yield
    finally:
        backend.set_device(before)


def _leaves(obj):
    out = []
    map_arrays(lambda d: out.append(d.numpy()), obj)
    return out


def _same(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


def _lossgrad(m, x, y):
    loss = gg.nn.softmax_cross_entropy(m(x), y)
    return loss, gg.dlgradient(loss, m)


class _Lstm(gg.nn.Layer):
    def __init__(self):
        self.lstm = gg.nn.LSTM(5, 8, dtype=np.float32)
        self.head = gg.nn.Dense(8, 3, dtype=np.float32)

    def forward(self, x):
        return self.head(self.lstm(x)[:, -1, :])


def _mlp():
    return gg.nn.Sequential(
        gg.nn.Dense(6, 8, activation=gg.relu, dtype=np.float32),
        gg.nn.Dense(8, 3, dtype=np.float32),
    )


def _run_steps(net, shape, steps=6):
    acc = gg.dlaccelerate(_lossgrad)
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 1])
    counts = []
    for _ in range(steps):
        x = gg.dlarray(rng.standard_normal(shape).astype(np.float32))
        got = gg.dlfeval(acc, net, x, y)
        want = gg.dlfeval(_lossgrad, net, x, y)
        _same(got, want)
        counts.append((acc.KernelLaunches, acc.GraphLaunches))
    return acc, counts


@pytest.mark.parametrize("model", ["mlp", "lstm", "lstm_per_step"])
def test_a_captured_replay_equals_eager_and_is_one_graph_launch(emu, model, monkeypatch):
    from gpugrad.backend import kernels as _kernels

    if model == "lstm_per_step":  # one cell kernel per time step instead
        monkeypatch.setattr(_kernels, "lstm_persistent_enabled", False)
    net, shape = (_mlp(), (4, 6)) if model == "mlp" else (_Lstm(), (4, 7, 5))
    acc, counts = _run_steps(net, shape)
    (report,) = acc.graph_report()
    assert report["captured"] and report["reason"] is None
    kernels = report["kernels"]
    # trace, checked first replay, a plain replay (kernels launched one by one), then
    # the capture and one graph launch per call
    assert counts[2] == (kernels, 0)
    assert counts[3:] == [(0, 1), (0, 2), (0, 3)]
    assert report["graph_launches"] == 3
    launched = [sig[0] for sig in next(iter(acc._cache.values())).graph.graph.launches]
    if model == "lstm":  # the persistent LSTM's cooperative launches are in the graph
        assert "lstm_fwd_persistent_f32" in launched and "lstm_bwd_persistent_f32" in launched
    elif model == "lstm_per_step":  # the per-step cell kernels, forward and backward
        assert kernels >= 2 * 7 and not any("persistent" in name for name in launched)
    else:
        assert kernels >= 3


def test_inputs_are_copied_into_static_buffers_and_outputs_out_of_the_graph(emu):
    net = _mlp()
    acc = gg.dlaccelerate(_lossgrad)
    y = np.array([0, 1, 2, 1])
    rng = np.random.default_rng(1)
    xs = [gg.dlarray(rng.standard_normal((4, 6)).astype(np.float32)) for _ in range(5)]
    outs = [gg.dlfeval(acc, net, x, y) for x in xs]
    entry = next(iter(acc._cache.values()))
    graph = entry.graph
    assert type(graph) is _accel_graph.Captured
    (pos, buf), (_, ybuf) = graph.copies  # x and the labels: passed per call
    np.testing.assert_array_equal(buf, xs[-1].numpy())
    assert buf is not xs[-1]._data and np.array_equal(ybuf, y)
    # the parameters are read in place (the Layer is not copied)
    params = {id(p._data) for layer in net.layers for p in (layer.weight, layer.bias)}
    assert {id(raw) for _, raw in graph.in_place} == params
    # an earlier call's outputs are not overwritten by later launches
    for x, out in zip(xs, outs):
        _same(out, gg.dlfeval(_lossgrad, net, x, y))


def test_a_rebound_parameter_is_captured_again(emu):
    net = _mlp()
    acc, _ = _run_steps(net, (4, 6), steps=4)
    net.layers[0].weight._data = net.layers[0].weight._data * 0.5  # a new buffer
    x = gg.dlarray(np.ones((4, 6), np.float32))
    y = np.array([0, 1, 2, 1])
    _same(gg.dlfeval(acc, net, x, y), gg.dlfeval(_lossgrad, net, x, y))
    _same(gg.dlfeval(acc, net, x, y), gg.dlfeval(_lossgrad, net, x, y))
    assert acc.graph_report()[0]["captured"]


# ------------------------------------------------------------------ whole training steps
# The optimizer update, BatchNorm's running statistics and random draws are staged: their
# host work (step counts, bias corrections, draws) runs before each launch and the graph
# reads the numbers from static buffers (gpugrad/_accel_graph.py, "staged host calls").

_Y = np.array([0, 1, 2, 1])


def _copy_params(dst, src):
    for a, b in zip(gg.tree.leaves(dst), gg.tree.leaves(src)):
        a._data[...] = b._data


def _cnn_bn():
    return gg.nn.Sequential(
        gg.nn.Conv2D((2, 2, 1, 3), padding="same", dtype=np.float32),
        gg.nn.BatchNorm(3, dtype=np.float32),
        gg.nn.Flatten(),
        gg.nn.Dense(3 * 4 * 4, 3, dtype=np.float32),
    )


def _dropout_mlp():
    return gg.nn.Sequential(
        gg.nn.Dense(6, 8, activation=gg.relu, dtype=np.float32),
        gg.nn.Dropout(0.5),
        gg.nn.Dense(8, 3, dtype=np.float32),
    )


def _batches(shape, steps):
    rng = np.random.default_rng(2)
    return [gg.dlarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(steps)]


def _optimizer_step(net, opt):
    def step(x):
        loss, grads = gg.dlfeval(_lossgrad, net, x, _Y)
        opt.update(net, grads)
        return loss

    return step


def _sgdm_step(net):
    def step(vel, x):
        loss, grads = gg.dlfeval(_lossgrad, net, x, _Y)
        net2, vel = gg.sgdmupdate(net, grads, vel, 0.05, 0.9)
        assert net2 is net
        return loss, vel

    return step


def _train(kind, accelerated, init=None, steps=6):
    """Losses, final state (parameters, optimizer state, BatchNorm statistics), the
    step function and the graph counters after each call."""
    make = {"mlp_adam": _mlp, "mlp_rmsprop": _mlp, "cnn_bn_sgdm": _cnn_bn}.get(kind, _dropout_mlp)
    net = make()
    if init is not None:
        for a, b in zip(gg.tree.leaves(net), init):
            a._data[...] = b
    init = [p.numpy().copy() for p in gg.tree.leaves(net)]
    if kind == "cnn_bn_sgdm":
        fn, xs = _sgdm_step(net), _batches((4, 4, 4, 1), steps)
    else:
        if kind == "mlp_adam":
            opt = gg.optim.Adam(net, learning_rate=0.01)
        elif kind == "mlp_rmsprop":
            opt = gg.optim.RMSProp(net, 0.01, momentum=0.5, centered=True, weight_decay=0.1)
        else:
            opt = gg.optim.SGD(net, learning_rate=0.05, momentum=0.9)
        fn, xs = _optimizer_step(net, opt), _batches((4, 6), steps)
    run = gg.dlaccelerate(fn) if accelerated else fn
    losses, counts, vel = [], [], None
    gg.random.seed(7)
    for x in xs:
        if kind == "cnn_bn_sgdm":
            loss, vel = run(vel, x)
        else:
            loss = run(x)
        losses.append(loss.numpy())
        if accelerated:
            counts.append((run.KernelLaunches, run.GraphLaunches))
    state = {"params": [p.numpy() for p in gg.tree.leaves(net)]}
    if kind == "cnn_bn_sgdm":
        state["vel"] = [v.numpy() for v in gg.tree.leaves(vel)]
        state["bn"] = [net.layers[1].running_mean.copy(), net.layers[1].running_var.copy()]
    elif kind == "mlp_adam":
        state["moments"] = [a.copy() for m in opt.moments.values() for a in m[:2]]
        state["step"] = [np.array(opt.step)]
    elif kind == "mlp_rmsprop":
        state["slots"] = [a.copy() for t in opt._slots().values() for a in t.values()]
        state["step"] = [np.array(opt.step)]
    else:
        state["velocity"] = [v.copy() for v in opt.velocity.values()]
        state["step"] = [np.array(opt.step)]
    return {"init": init, "losses": losses, "state": state, "run": run, "counts": counts}


@pytest.mark.parametrize("kind", ["mlp_adam", "mlp_rmsprop", "cnn_bn_sgdm", "dropout_sgd"])
def test_a_whole_training_step_is_one_graph_launch_bit_identical_to_eager(emu, kind):
    got = _train(kind, True)
    want = _train(kind, False, got["init"])
    acc = got["run"]
    report = acc.graph_report()[-1]  # cnn: the first call (vel=None) is its own trace
    assert report["captured"] and report["reason"] is None, report
    assert report["kernels"] >= 3
    first = 4 if kind == "cnn_bn_sgdm" else 3  # the call that captures
    assert got["counts"][first:] == [(0, k) for k in range(1, 7 - first)]
    assert report["graph_launches"] == 6 - first
    for a, b in zip(got["losses"], want["losses"]):
        np.testing.assert_array_equal(a, b)
    assert got["state"].keys() == want["state"].keys()
    for name, values in got["state"].items():
        assert len(values) == len(want["state"][name]) and values
        for a, b in zip(values, want["state"][name]):
            np.testing.assert_array_equal(a, b)
    if kind == "dropout_sgd":  # a fresh mask each step: the losses all differ
        assert len({float(v) for v in got["losses"]}) == len(got["losses"])


def test_changed_settings_reach_a_captured_step(emu):
    # a new learning rate is a staged number (no new capture); a new weight decay picks
    # another code path, so the graph is captured again. Both stay equal to eager.
    nets = [_mlp(), _mlp()]
    _copy_params(nets[1], nets[0])
    opts = [gg.optim.SGD(n, learning_rate=0.1, momentum=0.9) for n in nets]
    acc = gg.dlaccelerate(_optimizer_step(nets[0], opts[0]))
    eager = _optimizer_step(nets[1], opts[1])
    for i, x in enumerate(_batches((4, 6), 9)):
        if i == 5:
            for o in opts:
                o.learning_rate = 0.02
        if i == 7:
            for o in opts:
                o.weight_decay = 0.1
        np.testing.assert_array_equal(acc(x).numpy(), eager(x).numpy())
    assert acc.graph_report()[0]["captured"]
    assert next(iter(acc._cache.values())).stale_graphs == 1
    for a, b in zip(gg.tree.leaves(nets[0]), gg.tree.leaves(nets[1])):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_an_uncapturable_step_falls_back_and_logs_why(emu, caplog):
    # an in-place update without a graph split (__gg_graph__): plain replays, reason logged
    from gpugrad.ops.core import host_call

    @host_call(mutates=True)
    def shrink(net, factor):
        for p in gg.tree.leaves(net):
            p._data *= factor

    nets = [_mlp(), _mlp()]
    _copy_params(nets[1], nets[0])
    opts = [gg.optim.SGD(n, learning_rate=0.1) for n in nets]

    def step(net, opt, x):
        loss, grads = gg.dlfeval(_lossgrad, net, x, _Y)
        opt.update(net, grads)
        shrink(net, 0.99)
        return loss

    acc = gg.dlaccelerate(step)
    with caplog.at_level("INFO", logger="gpugrad.accelerate"):
        for x in _batches((4, 6), 5):
            np.testing.assert_array_equal(
                acc(nets[0], opts[0], x).numpy(), step(nets[1], opts[1], x).numpy()
            )
    (report,) = acc.graph_report()
    assert not report["captured"] and "shrink changes state" in report["reason"]
    assert "no graph split" in report["reason"]
    assert acc.GraphLaunches == 0 and acc.KernelLaunches > 0
    assert any("shrink changes state" in r.getMessage() for r in caplog.records)
    for a, b in zip(gg.tree.leaves(nets[0]), gg.tree.leaves(nets[1])):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_capture_that_fails_midway_on_emu_keeps_that_calls_results(emu):
    # Adam's state is dropped just before the call that captures: its graph step cannot
    # be built, the capture run finishes as a plain replay (no second update), no graph
    nets = [_mlp(), _mlp()]
    _copy_params(nets[1], nets[0])
    opts = [gg.optim.Adam(n, learning_rate=0.01) for n in nets]
    acc = gg.dlaccelerate(_optimizer_step(nets[0], opts[0]))
    eager = _optimizer_step(nets[1], opts[1])
    for i, x in enumerate(_batches((4, 6), 6)):
        if i == 3:
            for o in opts:
                o.moments.clear()
        np.testing.assert_array_equal(acc(x).numpy(), eager(x).numpy())
    (report,) = acc.graph_report()
    assert not report["captured"] and "state buffers are not made yet" in report["reason"]
    assert opts[0].step == opts[1].step == 6
    for a, b in zip(gg.tree.leaves(nets[0]), gg.tree.leaves(nets[1])):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_random_draws_are_staged_and_stay_fresh(emu):
    def noisy(x):
        return gg.sum(x * gg.random.normal(size=x.shape, dtype=np.float32))

    acc = gg.dlaccelerate(noisy)
    x = gg.dlarray(np.ones(3, np.float32))
    gg.random.seed(3)
    values = [float(acc(x)) for _ in range(5)]
    gg.random.seed(3)
    assert values == [float(noisy(x)) for _ in range(5)]
    assert len(set(values)) == 5
    assert acc.graph_report()[0]["captured"] and acc.GraphLaunches == 2


def test_a_seed_inside_the_step_is_staged_with_the_draws(emu):
    def f(x):
        gg.random.seed(11)  # runs before each launch, then the draw: the same numbers
        return gg.sum(x * gg.random.uniform(shape=x.shape, dtype=np.float32))

    acc = gg.dlaccelerate(f)
    x = gg.dlarray(np.arange(3, dtype=np.float32))
    values = [float(acc(x)) for _ in range(4)]
    assert values == [float(f(x))] * 4
    assert acc.graph_report()[0]["captured"] and acc.GraphLaunches == 1
    gg.random.seed(11)
    gg.random.uniform(shape=(3,), dtype=np.float32)
    want = gg.random.uniform(shape=(3,), dtype=np.float32).numpy()
    acc(x)  # a launch: it reseeded and drew once, as an eager call does
    np.testing.assert_array_equal(gg.random.uniform(shape=(3,), dtype=np.float32).numpy(), want)


def test_a_draw_with_a_computed_parameter_is_not_captured(emu):
    def f(x):
        # the scale is computed in the call: the draw cannot run before the graph
        return gg.sum(gg.random.normal(0.0, gg.exp(x), dtype=np.float32))

    acc = gg.dlaccelerate(f)
    x = gg.dlarray(np.zeros(3, np.float32))
    gg.random.seed(4)
    values = [float(acc(x)) for _ in range(4)]
    gg.random.seed(4)
    assert values == [float(f(x)) for _ in range(4)]
    assert "depends on values computed in the call" in acc.graph_report()[0]["reason"]


def test_a_function_returning_its_argument_returns_the_callers_object(emu):
    def f(x, w):
        return x, gg.sum(x * w)

    acc = gg.dlaccelerate(f)
    w = gg.dlarray(np.ones(3, np.float32))
    for k in range(5):
        x = gg.dlarray(np.full(3, k, np.float32))
        got = acc(x, w)
        assert got[0] is x and float(got[1]) == 3 * k
    assert acc.graph_report()[0]["captured"] and acc.GraphLaunches == 2


def test_use_graphs_false_keeps_plain_replays(emu):
    net = _mlp()
    acc = gg.dlaccelerate(_lossgrad)
    acc.UseGraphs = False
    x = gg.dlarray(np.ones((4, 6), np.float32))
    for _ in range(4):
        gg.dlfeval(acc, net, x, np.array([0, 1, 2, 1]))
    report = acc.graph_report()[0]
    assert not report["captured"] and acc.GraphLaunches == 0 and acc.KernelLaunches > 0


def test_the_emulator_check_names_a_launch_that_differs_from_the_capture():
    sig = _accel_graph.launch_signature
    a = np.zeros(4, np.float32)
    checker = _accel_graph._LaunchChecker([sig("k", (1,), (32,), (a, np.float32(2.0)), 0)])
    checker("k", (1,), (32,), (a, np.float32(3.0)), 0)  # a host-computed scalar changed
    assert "differs from the captured one" in checker.problem
    checker = _accel_graph._LaunchChecker([])
    checker("k", (1,), (32,), (a,), 0)
    assert "not in the captured graph" in checker.problem


def test_the_gpu_bench_row_counts_launches_before_and_after_capture(emu):
    # bench/gpu.py's "accelerate" row, at a small size on the emulator
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = module.lstm_step_launches(steps=3, batch=2, features=3, hidden=4, calls=6)
    assert got["captured"] and got["reason"] is None
    # the persistent LSTM: one cooperative launch each way, plus the head's matmuls
    assert got["before"] == got["kernels_in_graph"] == got["eager"] >= 2 and got["after"] == 0
    assert got["graph_launches"] == 3


def test_no_graph_on_cpu():
    before = backend.device()
    backend.set_device("cpu")  # also when the suite runs on another device
    try:
        _no_graph_on_cpu()
    finally:
        backend.set_device(before)


def _no_graph_on_cpu():
    acc = gg.dlaccelerate(lambda x: x * 2.0)
    for _ in range(4):
        acc(gg.dlarray([1.0, 2.0]))
    assert acc.graph_report() == [
        {"captured": False, "reason": None, "kernels": None, "graph_launches": 0}
    ]
    assert acc.GraphLaunches == 0


@pytest.mark.parametrize("device", ["cpu", "emu"])
@pytest.mark.parametrize("as_array", [np.array, gg.dlarray])
def test_adamupdate_reads_an_array_iteration_at_every_replay(device, as_array):
    # the iteration given as an array is keyed by shape and dtype only: every call after
    # the two traces (m, v None, then arrays) replays (on emu: as a graph whose staged
    # host work reads the new iteration), bit for bit equal to eager adamupdate
    before = backend.device()
    backend.set_device(device)
    try:
        nets = [_mlp(), _mlp()]
        _copy_params(nets[1], nets[0])
        xs = _batches((4, 6), 7)

        def step(net, m, v, x, it):
            loss, grads = gg.dlfeval(_lossgrad, net, x, _Y)
            net, m, v = gg.adamupdate(net, grads, m, v, it, 0.01)
            return loss, m, v

        acc = gg.dlaccelerate(step)
        state = [[None, None], [None, None]]
        for it, x in enumerate(xs, start=1):
            got = acc(nets[0], *state[0], x, as_array(it))
            want = step(nets[1], *state[1], x, it)
            state = [list(got[1:]), list(want[1:])]
            _same(got, want)
            _same(nets[0], nets[1])
        assert acc.traces == 2 and acc.hits == 5, acc
        if device == "emu":
            (_, report) = acc.graph_report()
            assert report["captured"] and report["graph_launches"] >= 2, report
    finally:
        backend.set_device(before)


def test_adamupdate_with_an_int_iteration_traces_each_new_value():
    # a Python int is part of the cache key (MATLAB's rule): correct, but no replay
    net = _mlp()

    def step(m, v, it):
        loss, grads = gg.dlfeval(_lossgrad, net, _batches((4, 6), 1)[0], _Y)
        return gg.adamupdate(net, grads, m, v, it, 0.01)[1:]

    acc = gg.dlaccelerate(step)
    m = v = None
    for it in range(1, 4):
        m, v = acc(m, v, it)
    assert acc.hits == 0 and acc.traces == 3
    with pytest.raises(ValueError, match="adamupdate: iteration must be a positive integer"):
        gg.adamupdate(net, gg.tree.map_arrays(gg.zeros_like, net.parameters()), m, v, np.ones(2))
