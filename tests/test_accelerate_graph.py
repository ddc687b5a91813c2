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


def test_a_step_with_an_optimizer_update_is_not_captured_and_says_why(emu):
    net = _mlp()
    twin = _mlp()
    for a, b in zip(net.layers, twin.layers):
        b.weight._data[...] = a.weight._data
        b.bias._data[...] = a.bias._data
    opt, opt2 = gg.optim.SGD(net, learning_rate=0.1), gg.optim.SGD(twin, learning_rate=0.1)
    x = gg.dlarray(np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6))
    y = np.array([0, 1, 2, 1])

    def step(m, o):
        loss, grads = gg.dlfeval(_lossgrad, m, x, y)
        o.update(m, grads)
        return loss

    acc = gg.dlaccelerate(step)
    for _ in range(5):
        _same(acc(net, opt), step(twin, opt2))
    (report,) = acc.graph_report()
    assert not report["captured"] and "mutates=True" in report["reason"]
    assert acc.GraphLaunches == 0 and acc.KernelLaunches > 0


def test_random_draws_are_not_captured_and_stay_fresh(emu):
    def noisy(x):
        return gg.sum(x * gg.random.normal(size=x.shape, dtype=np.float32))

    acc = gg.dlaccelerate(noisy)
    x = gg.dlarray(np.ones(3, np.float32))
    values = [float(acc(x)) for _ in range(5)]
    assert len(set(values)) == 5
    assert "random draw" in acc.graph_report()[0]["reason"]


def test_dropout_masks_are_not_captured(emu):
    # the mask is drawn inside a host call of gpugrad.nn (a nested gg.random draw)
    def f(x):
        return gg.sum(gg.dropout(x, 0.5, training=True))

    acc = gg.dlaccelerate(f)
    x = gg.dlarray(np.ones(64, np.float32))
    values = [float(acc(x)) for _ in range(5)]
    assert len(set(values)) > 1
    assert "random draw in _dropout_mask" in acc.graph_report()[0]["reason"]


def test_a_function_returning_its_argument_is_not_captured(emu):
    def f(x, w):
        return x, gg.sum(x * w)

    acc = gg.dlaccelerate(f)
    w = gg.dlarray(np.ones(3, np.float32))
    for k in range(4):
        x = gg.dlarray(np.full(3, k, np.float32))
        got = acc(x, w)
        assert got[0] is x and float(got[1]) == 3 * k
    assert "returns one of its arguments" in acc.graph_report()[0]["reason"]


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
