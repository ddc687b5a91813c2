"""gg.save / gg.load: layers, parameter trees and optimizers round-trip through the
documented .npz + JSON format (no pickle), a trained model reloads with identical
predictions and keeps training identically, files load on another device, and
damaged or foreign files give a clear error."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.tree import leaves

R = np.random.default_rng(44)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _every_layer_net():
    gg.random.seed(3)
    f64 = dict(dtype=np.float64)
    return gg.nn.Sequential(
        gg.nn.Conv2D((3, 3, 2, 4), padding="same", activation=gg.relu, **f64),
        gg.nn.BatchNorm(4, momentum=0.2, **f64),
        gg.nn.MaxPool2D(2, 2),
        gg.nn.Residual(gg.nn.Conv2D((3, 3, 4, 4), padding="same", **f64), gg.tanh),
        gg.nn.GroupNorm(2, 4, **f64),
        gg.nn.TransposedConv2D((2, 2, 3, 4), strides=2, **f64),
        gg.nn.AvgPool2D(2, 2),
        gg.nn.Flatten(),
        gg.nn.Dropout(0.3),
        gg.nn.Parallel(gg.nn.Dense(48, 5, **f64), gg.nn.LayerNorm(48, **f64), combine=None),
        lambda pair: pair[0],
    )


def _seq_net():
    gg.random.seed(4)
    f32 = dict(dtype=np.float32)
    return gg.nn.Sequential(
        gg.nn.Embedding(12, 6, **f32),
        gg.nn.Conv1D((3, 6, 6), padding="same", **f32),
        gg.nn.GRU(6, 5, reset_gate_mode="recurrent-bias-after-multiplication", **f32),
        gg.nn.LSTM(5, 4, **f32),
        gg.nn.Flatten(),
        gg.nn.Dense(4 * 7, 3, **f32),
    )


def _same_parameters(a, b):
    pa, pb = leaves(a.parameters()), leaves(b.parameters())
    assert len(pa) == len(pb) > 0
    for x, y in zip(pa, pb):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_layer_round_trip_keeps_structure_settings_and_values(tmp_path):
    net = _seq_net()
    path = tmp_path / "seq.npz"
    gg.save(net, path)
    same = gg.load(path)
    assert type(same) is gg.nn.Sequential and [type(x) for x in same] == [type(x) for x in net]
    assert same[2].reset_gate_mode == "recurrent-bias-after-multiplication"
    assert same[1].padding == "same" and same[0].weight.dtype == np.float32
    _same_parameters(net, same)
    idx = R.integers(0, 12, size=(3, 7))
    np.testing.assert_array_equal(same(idx).numpy(), net(idx).numpy())
    assert repr(same) == repr(net)


def test_a_function_in_a_sequential_must_be_a_gpugrad_function(tmp_path):
    net = _every_layer_net()  # ends with a lambda
    with pytest.raises(
        TypeError, match=r"gg.save: cannot store the function '<lambda>' at obj.layers\[10\]"
    ):
        gg.save(net, tmp_path / "x.npz")
    assert not os.listdir(tmp_path)  # nothing half-written


def test_trained_model_with_batchnorm_reloads_with_identical_predictions(tmp_path):
    net = _every_layer_net()
    net.layers[-1] = gg.nn.Flatten()  # a savable last layer: Parallel with combine=None -> tuple
    net.layers[-2] = gg.nn.Dense(48, 5, dtype=np.float64)
    x = R.standard_normal((6, 8, 8, 2))
    labels = np.array([0, 1, 2, 3, 4, 0])
    opt = gg.optim.Adam(net, learning_rate=0.01)

    def step(net, opt):
        # MXNet's face: record() trains (BatchNorm uses and updates batch statistics)
        net.attach_grad()
        with gg.autograd.record():
            loss = gg.nn.softmax_cross_entropy(net(x), labels)
        loss.backward()
        opt.update(net, net.grad)

    for _ in range(3):
        step(net, opt)
    bn = net[1]
    host = gg.backend.to_host  # BatchNorm's statistics are raw arrays of the device
    assert not np.allclose(host(bn.running_var), 1)  # the statistics moved during training
    path = tmp_path / "trained.npz"
    gg.save({"model": net, "optimizer": opt, "epoch": 3}, path)
    ckpt = gg.load(path)
    assert ckpt["epoch"] == 3
    model, opt2 = ckpt["model"], ckpt["optimizer"]
    assert isinstance(opt2, gg.optim.Adam) and opt2.step == 3
    np.testing.assert_array_equal(host(model[1].running_mean), host(bn.running_mean))
    np.testing.assert_array_equal(host(model[1].running_var), host(bn.running_var))
    test = R.standard_normal((4, 8, 8, 2))
    np.testing.assert_array_equal(model(test).numpy(), net(test).numpy())
    # and training goes on identically from the file
    for k in range(2):
        gg.random.seed(k)  # the same dropout masks for both
        step(net, opt)
        gg.random.seed(k)
        step(model, opt2)
    _same_parameters(net, model)
    np.testing.assert_array_equal(host(model[1].running_var), host(bn.running_var))


def test_parameter_tree_round_trip(tmp_path):
    shared = gg.dlarray(R.standard_normal(3))
    tree = {
        "w": gg.dlarray(R.standard_normal((2, 3, 4)), "SCB"),
        "c": gg.dlarray(R.standard_normal(3) + 1j * R.standard_normal(3)),
        "f32": gg.dlarray(np.arange(4, dtype=np.float32)),
        "raw": np.arange(6).reshape(2, 3),
        "mixed": [1, 2.5, "text", None, True, (shared, shared)],
        "scalar": np.float32(1.25),
        "number": 3 + 4j,
        7: "an int key",
        "dtype": np.dtype("float32"),
    }
    path = tmp_path / "tree.npz"
    gg.save(tree, path)
    back = gg.load(path)
    assert set(back) == set(tree)
    assert gg.dims(back["w"]) == "SCB" and back["w"].shape == tree["w"].shape
    np.testing.assert_array_equal(back["w"].numpy(), tree["w"].numpy())
    np.testing.assert_array_equal(back["c"].numpy(), tree["c"].numpy())
    assert back["f32"].dtype == np.float32
    # arrays land on the active device
    assert (
        isinstance(back["raw"], gg.backend.xp().ndarray) and back["raw"].dtype == tree["raw"].dtype
    )
    np.testing.assert_array_equal(gg.backend.to_host(back["raw"]), tree["raw"])
    assert back["mixed"][:5] == [1, 2.5, "text", None, True]
    a, b = back["mixed"][5]
    assert isinstance(back["mixed"][5], tuple) and a is b  # shared storage stays shared
    assert back["scalar"] == np.float32(1.25) and type(back["scalar"]) is np.float32
    assert back["number"] == 3 + 4j and back[7] == "an int key"
    assert back["dtype"] == np.float32


def test_the_format_is_npz_with_a_json_header_and_no_pickle(tmp_path):
    path = tmp_path / "net.npz"
    gg.save(gg.nn.Dense(3, 2, dtype=np.float64), path)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["__gpugrad__.npy", "a0.npy", "a1.npy"]
    with np.load(path, allow_pickle=False) as archive:
        header = json.loads(archive["__gpugrad__"].tobytes().decode("utf-8"))
        assert header["format"] == "gpugrad" and header["version"] == 1
        assert header["kind"] == "layer"
        root = header["root"]
        assert root["$layer"] == "Dense" and root["attrs"]["weight"]["$dlarray"] == "a0"
        assert archive["a0"].shape == (2, 3)


def test_optimizer_state_dict_round_trip(tmp_path):
    model = gg.nn.Dense(3, 2, dtype=np.float64)
    sched = gg.optim.Warmup(gg.optim.CosineDecay(0.1, 20), 4)
    opt = gg.optim.RMSProp(model, learning_rate=sched, momentum=0.5, centered=True)
    for _ in range(2):
        opt.update(model, {"weight": gg.ones((2, 3)), "bias": gg.ones((2,))})
    path = tmp_path / "opt.npz"
    gg.save(opt.state_dict(), path)
    state = gg.load(path)
    assert state["optimizer"] == "RMSProp" and state["step"] == 2
    fresh = gg.optim.RMSProp(model)
    fresh.load_state_dict(state)
    assert fresh.centered and fresh.momentum == 0.5
    assert fresh.current_learning_rate() == opt.current_learning_rate()
    same = gg.load(path, into=gg.optim.RMSProp())
    assert same.step == 2
    gg.save(opt, tmp_path / "whole.npz")
    loaded = gg.load(tmp_path / "whole.npz")
    assert isinstance(loaded, gg.optim.RMSProp) and repr(loaded.learning_rate) == repr(sched)


class Head(gg.nn.Layer):
    def __init__(self, hidden):
        self.body = gg.nn.Dense(4, hidden, activation=gg.relu, dtype=np.float64)
        self.out = gg.nn.Dense(hidden, 2, dtype=np.float64)

    def forward(self, x):
        return self.out(self.body(x))


def test_own_layer_classes_and_loading_into_a_built_model(tmp_path):
    gg.random.seed(5)
    net = Head(8)
    path = tmp_path / "head.npz"
    gg.save(net, path)
    with pytest.raises(ValueError, match=r"holds a layer of class 'Head'.*classes=\[Head\]"):
        gg.load(path)
    x = R.standard_normal((3, 4))
    back = gg.load(path, classes=[Head])
    assert type(back) is Head
    np.testing.assert_array_equal(back(x).numpy(), net(x).numpy())
    back2 = gg.load(path, classes={"Head": Head})
    np.testing.assert_array_equal(back2(x).numpy(), net(x).numpy())
    gg.random.seed(99)
    built = Head(8)
    assert not np.allclose(built(x).numpy(), net(x).numpy())
    weight_before = built.body.weight
    assert gg.load(path, into=built) is built
    assert built.body.weight is weight_before  # copied in place
    np.testing.assert_array_equal(built(x).numpy(), net(x).numpy())
    # a parameter tree into a model
    gg.save(net.parameters(), tmp_path / "params.npz")
    gg.random.seed(98)
    other = Head(8)
    gg.load(tmp_path / "params.npz", into=other)
    np.testing.assert_array_equal(other(x).numpy(), net(x).numpy())
    with pytest.raises(
        ValueError, match=r"gg.load: obj.body.weight has shape \(5, 4\) in the model"
    ):
        gg.load(path, into=Head(5))


def test_damaged_and_foreign_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.npz"
    gg.save({"w": gg.ones((3,))}, good)
    data = good.read_bytes()

    (tmp_path / "noise.npz").write_bytes(os.urandom(200))
    with pytest.raises(ValueError, match="noise.npz is not a file written by gg.save"):
        gg.load(tmp_path / "noise.npz")
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz is not a file written by gg.save"):
        gg.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "plain.npz", w=np.ones(3))
    with pytest.raises(
        ValueError, match="plain.npz is not a file written by gg.save .no '__gpugrad__'"
    ):
        gg.load(tmp_path / "plain.npz")

    def with_header(name, header, arrays=None):
        path = tmp_path / name
        text = header if isinstance(header, str) else json.dumps(header)
        np.savez(path, __gpugrad__=np.frombuffer(text.encode(), np.uint8), **(arrays or {}))
        return path

    with pytest.raises(ValueError, match="its header is not valid JSON"):
        gg.load(with_header("json.npz", "{not json"))
    newer = {"format": "gpugrad", "version": 99, "kind": "tree", "root": 1}
    with pytest.raises(
        ValueError, match="has format version 99; this gpugrad reads versions up to 1"
    ):
        gg.load(with_header("new.npz", newer))
    missing = {"format": "gpugrad", "version": 1, "kind": "tree", "root": {"$dlarray": "a0"}}
    with pytest.raises(ValueError, match="is corrupted: the header names an array 'a0'"):
        gg.load(with_header("missing.npz", missing))
    odd = {"format": "gpugrad", "version": 1, "kind": "tree", "root": {"$pickle": "x"}}
    with pytest.raises(ValueError, match="is corrupted: unknown entry kind '\\$pickle'"):
        gg.load(with_header("odd.npz", odd))
    crafted = {
        "format": "gpugrad",
        "version": 1,
        "kind": "tree",
        "root": {"$dict": {"activation": {"$function": "save"}}},
    }
    with pytest.raises(
        ValueError, match="names the function 'save', which is not an array function"
    ):
        gg.load(with_header("crafted.npz", crafted))
    with pytest.raises(TypeError, match="gg.save: cannot store the function 'dlfeval'"):
        gg.save({"f": gg.dlfeval}, tmp_path / "f.npz")
    with pytest.raises(FileNotFoundError):
        gg.load(tmp_path / "nothing.npz")
    with pytest.raises(
        TypeError, match=r"gg.save: cannot store a value of type object at obj\['x'\]"
    ):
        gg.save({"x": object()}, tmp_path / "obj.npz")


class _FakeDeviceArray:
    """Stands for a CuPy array: what gg.save sees of a model that lives on a GPU."""

    __module__ = "cupy._core.core"

    def __init__(self, host):
        self._host = host
        self.shape, self.dtype = host.shape, host.dtype

    def get(self):
        return self._host.copy()


def test_device_arrays_are_stored_as_host_arrays(tmp_path):
    # the device's own arrays on the cuda path (cuda-sim), a stand-in elsewhere
    device = gg.backend.xp().asarray if gg.backend.is_cuda() else _FakeDeviceArray
    host = R.standard_normal((2, 3))
    w = gg.dlarray(host)
    w._data = device(host)
    gg.save({"w": w, "buffer": device(host * 2)}, tmp_path / "dev.npz")
    back = gg.load(tmp_path / "dev.npz")
    assert isinstance(back["w"]._data, gg.backend.xp().ndarray)  # on the active device
    np.testing.assert_array_equal(back["w"].numpy(), host)
    np.testing.assert_array_equal(gg.backend.to_host(back["buffer"]), host * 2)


def test_a_model_saved_on_cpu_loads_on_the_emu_device(tmp_path):
    gg.random.seed(6)
    net = gg.nn.Sequential(
        gg.nn.Dense(4, 3, activation=gg.relu, dtype=np.float64), gg.nn.Dense(3, 2, dtype=np.float64)
    )
    x = R.standard_normal((5, 4))
    gg.save(net, tmp_path / "net.npz")
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, gpugrad as gg\n"
        "assert gg.device() == 'emu'\n"
        "net = gg.load(sys.argv[1])\n"
        "before = sum(gg.kernels.launches().values())\n"
        "y = net(np.load(sys.argv[2])).numpy()\n"
        "assert sum(gg.kernels.launches().values()) > before\n"
        "np.save(sys.argv[3], y)\n"
    )
    env = {**os.environ, "GPUGRAD_DEVICE": "emu"}
    out = tmp_path / "y.npy"
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "net.npz"),
            str(tmp_path / "x.npy"),
            str(out),
        ],
        check=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    np.testing.assert_allclose(np.load(out), net(x).numpy(), rtol=1e-12, atol=1e-14)
