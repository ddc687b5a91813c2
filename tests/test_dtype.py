"""float32 layer parameters by default: gg.set_default_dtype / gg.get_default_dtype,
layer parameters follow it while creation functions stay float64 as in NumPy and MATLAB,
net.astype(dtype), and no silent promotion of float32 data by float64 parameters (a
layer casts wider input down, raises on narrower)."""

import numpy as np
import pytest

import gpugrad as gg


def test_default_is_float32_for_layers_and_float64_for_creation():
    assert gg.get_default_dtype() == np.float32
    for layer in (
        gg.nn.Dense(3, 2),
        gg.nn.Conv2D((3, 3, 1, 2)),
        gg.nn.LSTM(3, 2),
        gg.nn.BatchNorm(2),
        gg.nn.LayerNorm(2),
    ):
        for p in gg.tree.leaves(layer.parameters()):
            assert p.dtype == np.float32, type(layer).__name__
    assert gg.nn.BatchNorm(2).running_var.dtype == np.float32
    for made in (
        gg.zeros(2),
        gg.ones(2),
        gg.full(2, 3.0),
        gg.eye(2),
        gg.arange(3),
        gg.linspace(0, 1, 3),
        gg.random.normal(shape=2),
        gg.random.uniform(shape=2),
    ):
        assert made.dtype == np.float64  # NumPy's and MATLAB's default
    assert gg.full(2, 1j).dtype == np.complex128
    # explicit dtypes win; dlarray keeps the data's dtype (Python floats: float64)
    assert gg.zeros(2, dtype=np.float64).dtype == np.float64
    assert gg.dlarray([1.0]).dtype == np.float64
    assert gg.dlarray(np.ones(2, np.float32)).dtype == np.float32
    assert gg.random.randint(0, 3, shape=2).dtype == np.float64  # integers: MATLAB double


def test_set_default_dtype_returns_the_previous_and_checks(float64):
    assert gg.get_default_dtype() == np.float64
    assert gg.nn.Dense(2, 2).weight.dtype == np.float64
    previous = gg.set_default_dtype("float32")
    assert previous == np.float64 and gg.nn.Dense(2, 2).weight.dtype == np.float32
    assert gg.zeros(1).dtype == np.float64  # creation does not follow it
    gg.set_default_dtype(previous)
    for bad in (np.int32, "complex64", "nonsense", np.bool_):
        with pytest.raises(TypeError, match="set_default_dtype: dtype must be float16, float32"):
            gg.set_default_dtype(bad)
    assert gg.get_default_dtype() == np.float64


def test_a_float32_training_step_stays_float32():
    gg.random.seed(0)
    net = gg.nn.Sequential(gg.nn.Dense(4, 8, activation=gg.relu), gg.nn.Dense(8, 3))
    x = gg.dlarray(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    labels = gg.dlarray(np.array([0, 1, 2, 1, 0]))

    def step(m):
        loss = gg.nn.softmax_cross_entropy(m(x), labels)
        return loss, gg.dlgradient(loss, m)

    loss, grads = gg.dlfeval(step, net)
    assert loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in gg.tree.leaves(grads))
    gg.optim.Adam(net).update(net, grads)
    assert all(p.dtype == np.float32 for p in gg.tree.leaves(net.parameters()))


def test_float64_data_into_a_float32_layer_is_cast_down_differentiably():
    layer = gg.nn.Dense(3, 2)
    x = gg.dlarray(np.ones((2, 3)))
    y = layer(x)
    assert y.dtype == np.float32
    assert layer(np.ones((2, 3))).dtype == np.float32  # NumPy input too
    assert layer.forward(x).dtype == np.float32 and layer.predict(x).dtype == np.float32
    assert gg.forward(layer, x).dtype == np.float32
    g = gg.gradient(lambda v: gg.sum(layer(v)))(x)
    assert g.dtype == np.float64  # the input's gradient comes back in the input's dtype
    np.testing.assert_allclose(g.numpy(), np.tile(layer.weight.numpy().sum(0), (2, 1)), rtol=1e-6)


def test_float32_data_into_a_float64_layer_raises():
    layer = gg.nn.Dense(3, 2, dtype=np.float64)
    x = gg.ones((2, 3), dtype=np.float32)
    msg = r"Dense: the input is float32 but the layer's parameters are float64; .*astype"
    for call in (layer, layer.forward, layer.predict, lambda v: gg.predict(layer, v)):
        with pytest.raises(TypeError, match=msg):
            call(x)


def test_astype_casts_parameters_and_state_in_place():
    net = gg.nn.Sequential(gg.nn.Dense(3, 2), gg.nn.BatchNorm(2), gg.nn.LSTM(2, 2))
    weight = net[0].weight
    assert net.astype(np.float64) is net
    assert net[0].weight is weight and weight.dtype == np.float64
    assert net[1].running_mean.dtype == np.float64
    assert all(p.dtype == np.float64 for p in gg.tree.leaves(net.parameters()))
    x = gg.dlarray(np.ones((4, 3)))
    assert net[1](net[0](x)).dtype == np.float64
    net.astype("float32")
    assert weight.dtype == np.float32
    with pytest.raises(TypeError, match="astype: dtype must be a float type"):
        net.astype(np.int64)


def test_layers_without_parameters_keep_the_inputs_dtype():
    for dt in (np.float32, np.float64):
        x = gg.dlarray(np.ones((2, 4, 4, 1), dt))
        assert gg.nn.Flatten()(x).dtype == dt
        assert gg.nn.MaxPool2D(2)(x).dtype == dt
        assert gg.nn.Dropout(0.5).forward(x).dtype == dt
