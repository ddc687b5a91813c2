"""gg.dlaccelerate on the cuda path (the cuda-sim device, in process): calls replay
instead of running eagerly, the graph twin captures them, values and gradients equal
eager execution, and raw array code on traced device data still runs eagerly with a
warning (gpugrad/_provenance.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.backend import cudasim
from gpugrad.ops import core as _core

pytest.importorskip("cupy")  # cuda-sim builds its namespace from the installed CuPy


@pytest.fixture
def on_sim():
    old = gg.device()
    gg.set_device("cuda-sim")
    try:
        yield gg.backend.xp()
    finally:
        gg.set_device(old)


def _rosen(x):
    y = gg.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    return y, gg.dlgradient(y, x)


def _host(obj):
    return [gg.backend.to_host(d._data) for d in gg.tree.leaves(obj)]


def test_calls_replay_on_cuda_sim_and_equal_eager(on_sim):
    acc = gg.dlaccelerate(_rosen)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no escape warning: the trace is replayed
        for _ in range(4):
            x = gg.dlarray(rng.standard_normal(5))
            got, want = gg.dlfeval(acc, x), gg.dlfeval(_rosen, x)
            for a, b in zip(_host(got), _host(want)):
                np.testing.assert_array_equal(a, b)
    assert gg.backend.is_device_array(got[0]._data)
    assert acc.hits == 3 and acc.eager_calls == 0 and acc.HitRate == 75.0


def _mlp():
    return gg.nn.Sequential(
        gg.nn.Dense(6, 8, activation=gg.relu, dtype=np.float32),
        gg.nn.Dense(8, 3, dtype=np.float32),
    )


def _lossgrad(m, x, y):
    loss = gg.nn.softmax_cross_entropy(m(x), y)
    return loss, gg.dlgradient(loss, m)


def test_graph_capture_engages_on_cuda_sim(on_sim):
    net = _mlp()
    acc = gg.dlaccelerate(_lossgrad)
    y = np.array([0, 1, 2, 1])
    rng = np.random.default_rng(1)
    for _ in range(6):
        x = gg.dlarray(rng.standard_normal((4, 6)).astype(np.float32))
        got, want = gg.dlfeval(acc, net, x, y), gg.dlfeval(_lossgrad, net, x, y)
        for a, b in zip(_host(got), _host(want)):
            np.testing.assert_array_equal(a, b)
    (report,) = acc.graph_report()
    assert report["captured"] and report["reason"] is None and report["kernels"] >= 3
    # trace, checked first replay, plain replay, capture, then one graph launch a call
    assert acc.GraphLaunches == 3 == report["graph_launches"] and acc.KernelLaunches == 0
    assert acc.eager_calls == 0


def _runs_eagerly_with(acc, match, want_fn):
    with pytest.warns(RuntimeWarning, match=match):
        acc(gg.dlarray([1.0, 2.0]))
    for v in ([3.0, -1.0], [0.5, 4.0]):
        x = gg.dlarray(v)
        np.testing.assert_array_equal(acc(x).numpy(), want_fn(x).numpy())
    assert acc.hits == 0 and acc.eager_calls == 2


@pytest.mark.parametrize("how", ["xp call", "operator", "foreign namespace"])
def test_raw_device_code_on_traced_data_escapes(on_sim, how):
    xp = on_sim
    foreign = cudasim.namespace()  # as if `import cupy` in user code

    def f(x):
        if how == "xp call":
            raw = xp.exp(x._data)
        elif how == "operator":
            raw = x._data * 2
        else:
            raw = foreign.sqrt(foreign.abs(x._data))
        return x + _core.make(raw)

    _runs_eagerly_with(gg.dlaccelerate(f), "unknown provenance", f)


def test_a_device_to_host_read_of_traced_data_escapes(on_sim):
    def f(x):
        if float(x._data.sum()) > 0:  # raw CuPy read: a sync the façade reports
            return x * 2
        return x * 3

    _runs_eagerly_with(gg.dlaccelerate(f), "device-to-host read", f)


def test_an_xp_write_into_a_traced_array_escapes(on_sim):
    def f(x):
        xp = gg.backend.xp()  # asked for inside: the namespace the trace watches
        y = x * 1
        xp.multiply(y._data, 2, out=y._data)  # in place, outside the primitives
        return y + 1

    _runs_eagerly_with(gg.dlaccelerate(f), "wrote into a traced array", f)


def test_constants_made_from_shapes_and_host_values_replay(on_sim):
    def f(x):
        xp = gg.backend.xp()
        scale = gg.dlarray(np.array([1.0, 2.0]))  # host data, uploaded inside
        ones = _core.make(xp.ones(x.shape, x.dtype))
        return x * scale + ones

    acc = gg.dlaccelerate(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for v in ([1.0, 2.0], [3.0, -1.0], [0.5, 4.0]):
            x = gg.dlarray(v)
            np.testing.assert_array_equal(acc(x).numpy(), f(x).numpy())
    assert acc.hits == 2
