"""gg.nn layers: parameters(), Layer as a container for dlfeval / dlgradient /
gg.gradient / value_with_pullback / MXNet-style attach_grad, Sequential,
applied_for_backpropagation, MATLAB's initializers, and input validation.
(The optimizers are in test_optim.py.)"""

import numpy as np
import pytest

import gpugrad as gg
from tests._torch import torch

# float64 layer parameters: these tests compare with float64 references
pytestmark = pytest.mark.usefixtures("float64")

R = np.random.default_rng(5)


def _model():
    gg.random.seed(0)
    return gg.nn.Sequential(
        gg.nn.Conv2D((3, 3, 1, 4), padding="same", activation=gg.relu),
        gg.nn.MaxPool2D(2, 2),
        gg.nn.Flatten(),
        gg.nn.Dense(16, 8, activation=gg.relu),
        gg.nn.Dense(8, 3),
    )


def _shapes(tree):
    if isinstance(tree, dict):
        return {k: _shapes(v) for k, v in tree.items()}
    return tree.shape


def test_parameters_are_nested_dicts():
    model = _model()
    params = model.parameters()
    assert list(params) == ["0", "1", "2", "3", "4"]
    assert _shapes(params["0"]) == {"filter": (3, 3, 1, 4), "bias": (4,)}
    assert params["1"] == {} and params["2"] == {}
    assert _shapes(params["3"]) == {"weight": (8, 16), "bias": (8,)}
    dense = gg.nn.Dense(3, 2)
    assert set(dense.parameters()) == {"weight", "bias"}
    assert (dense.bias.numpy() == 0).all()
    limit = np.sqrt(6 / 5)
    assert np.abs(dense.weight.numpy()).max() <= limit


def test_initialization_is_seeded():
    gg.random.seed(1)
    a = gg.nn.Dense(4, 4).weight.numpy()
    gg.random.seed(1)
    b = gg.nn.Dense(4, 4).weight.numpy()
    np.testing.assert_array_equal(a, b)


def test_dlgradient_over_a_layer_is_shaped_like_parameters():
    model = _model()
    x = gg.dlarray(R.standard_normal((2, 4, 4, 1)))
    labels = np.array([0, 2])

    def f(m, x):
        loss = gg.nn.softmax_cross_entropy(m(x), labels)
        return loss, gg.dlgradient(loss, m)

    loss, grads = gg.dlfeval(f, model, x)
    assert _shapes(grads) == _shapes(model.parameters())
    # check one entry against finite differences
    w = model.parameters()["4"]["weight"]
    eps = 1e-6
    w._data[0, 0] += eps
    up = float(gg.nn.softmax_cross_entropy(model(x), labels))
    w._data[0, 0] -= 2 * eps
    down = float(gg.nn.softmax_cross_entropy(model(x), labels))
    w._data[0, 0] += eps
    np.testing.assert_allclose(
        grads["4"]["weight"].numpy()[0, 0], (up - down) / (2 * eps), rtol=1e-5
    )


def test_gg_gradient_accepts_a_layer():
    dense = gg.nn.Dense(3, 2)
    x = gg.dlarray(R.standard_normal((4, 3)))
    g = gg.gradient(lambda m: gg.sum(m(x) ** 2))(dense)
    assert set(g) == {"weight", "bias"} and g["weight"].shape == (2, 3)


def test_sequential_matches_manual_chain_and_torch():
    model = _model()
    x = R.standard_normal((2, 4, 4, 1))
    y = model(gg.dlarray(x)).numpy()
    y2 = gg.nn.sequenced(gg.dlarray(x), *model.layers).numpy()
    np.testing.assert_allclose(y, y2)
    p = model.parameters()
    tf = torch.nn.functional
    t = lambda a: torch.tensor(np.asarray(a.numpy() if hasattr(a, "numpy") else a))  # noqa: E731
    h = tf.conv2d(
        t(x).permute(0, 3, 1, 2),
        t(p["0"]["filter"]).permute(3, 2, 0, 1),
        t(p["0"]["bias"]),
        padding=1,
    )
    h = tf.max_pool2d(tf.relu(h), 2).permute(0, 2, 3, 1).reshape(2, -1)
    h = tf.relu(tf.linear(h, t(p["3"]["weight"]), t(p["3"]["bias"])))
    h = tf.linear(h, t(p["4"]["weight"]), t(p["4"]["bias"]))
    np.testing.assert_allclose(y, h.numpy(), atol=1e-12)


def test_applied_for_backpropagation():
    dense = gg.nn.Dense(3, 2, activation=gg.tanh)
    x = gg.dlarray(R.standard_normal((4, 3)))
    y, backprop = dense.applied_for_backpropagation(x)
    dy = gg.dlarray(R.standard_normal((4, 2)))
    grads, gx = backprop(dy)
    w = dense.weight.numpy()
    pre = x.numpy() @ w.T
    d = dy.numpy() * (1 - np.tanh(pre) ** 2)
    np.testing.assert_allclose(y.numpy(), np.tanh(pre))
    np.testing.assert_allclose(gx.numpy(), d @ w)
    np.testing.assert_allclose(grads["weight"].numpy(), d.T @ x.numpy())
    np.testing.assert_allclose(grads["bias"].numpy(), d.sum(0))


def test_lstm_layer_matches_torch():
    gg.random.seed(2)
    layer = gg.nn.LSTM(3, 4)
    x = R.standard_normal((2, 5, 3))
    y = layer(gg.dlarray(x))
    assert y.shape == (2, 5, 4)
    ref = torch.nn.LSTM(3, 4, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.tensor(layer.weight.numpy()))
        ref.weight_hh_l0.copy_(torch.tensor(layer.recurrent_weight.numpy()))
        ref.bias_ih_l0.copy_(torch.tensor(layer.bias.numpy()))
        ref.bias_hh_l0.zero_()
    np.testing.assert_allclose(y.numpy(), ref(torch.tensor(x))[0].detach().numpy(), atol=1e-12)
    g = gg.gradient(lambda m: gg.sum(m(gg.dlarray(x)) ** 2))(layer)
    assert _shapes(g) == _shapes(layer.parameters())


def test_other_layers():
    x = gg.dlarray(R.standard_normal((2, 4, 4, 3)))
    assert gg.nn.AvgPool2D(2, 2)(x).shape == (2, 2, 2, 3)
    assert gg.nn.Flatten()(x).shape == (2, 48)
    ln = gg.nn.LayerNorm(3)
    out = ln(x).numpy()
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)
    bn = gg.nn.BatchNorm(3)
    with gg.autograd.train_mode():
        out = bn(x).numpy()
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), 0, atol=1e-12)
    assert not np.allclose(bn.running_mean, 0)
    assert set(bn.parameters()) == {"offset", "scale"}
    drop = gg.nn.Dropout(0.5)
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy())
    with pytest.raises(ValueError, match="channels last"):
        gg.nn.Conv2D((3, 3, 2, 4))(x)
    with pytest.raises(ValueError, match=r"\[batch, 5\]"):
        gg.nn.Dense(5, 2)(gg.dlarray(R.standard_normal((2, 3))))


# ------------------------------------------------------------------ initializers


def _assert_glorot(w, fan_in, fan_out):
    """Uniform on [-limit, limit], limit = sqrt(6 / (fan_in + fan_out)): every value
    within the limit, the extremes close to it, and the variance limit^2 / 3."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    w = np.asarray(w)
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.98 * limit
    np.testing.assert_allclose(w.var(), limit**2 / 3, rtol=0.1)
    assert abs(w.mean()) < 0.1 * limit


def test_dense_and_conv_glorot_fans_are_matlabs():
    gg.random.seed(3)
    dense = gg.nn.Dense(300, 200)
    assert dense.weight.shape == (200, 300)
    _assert_glorot(dense.weight.numpy(), 300, 200)
    np.testing.assert_array_equal(dense.bias.numpy(), np.zeros(200))
    # a conv filter [h, w, in, out] has fan_in = h*w*in and fan_out = h*w*out (Keras, MATLAB)
    conv = gg.nn.Conv2D((3, 5, 16, 32))
    assert conv.filter.shape == (3, 5, 16, 32)
    _assert_glorot(conv.filter.numpy(), 3 * 5 * 16, 3 * 5 * 32)
    np.testing.assert_array_equal(conv.bias.numpy(), np.zeros(32))
    assert gg.nn.Dense(3, 2, dtype=np.float32).weight.dtype == np.float32


def test_lstm_initializers_are_matlabs():
    gg.random.seed(4)
    h = 16
    layer = gg.nn.LSTM(40, h)
    # input weights: glorot with fan_in = input size, fan_out = 4 * hidden
    assert layer.weight.shape == (4 * h, 40)
    _assert_glorot(layer.weight.numpy(), 40, 4 * h)
    # recurrent weights: orthogonal (orthonormal columns of a [4h, h] matrix)
    r = layer.recurrent_weight.numpy()
    assert r.shape == (4 * h, h)
    np.testing.assert_allclose(r.T @ r, np.eye(h), atol=1e-12)
    assert np.abs(r).max() < 0.9  # not a padded identity
    # bias: unit forget gate (gate order input, forget, cell candidate, output)
    expected = np.zeros(4 * h)
    expected[h : 2 * h] = 1.0
    np.testing.assert_array_equal(layer.bias.numpy(), expected)


def test_orthogonal_initializer():
    gg.random.seed(5)
    wide = gg.nn.layers.orthogonal((3, 7)).numpy()
    np.testing.assert_allclose(wide @ wide.T, np.eye(3), atol=1e-12)
    square = gg.nn.layers.orthogonal((5, 5)).numpy()
    np.testing.assert_allclose(square @ square.T, np.eye(5), atol=1e-12)
    gg.random.seed(5)
    np.testing.assert_array_equal(gg.nn.layers.orthogonal((3, 7)).numpy(), wide)


def _big_model():
    return gg.nn.Sequential(
        gg.nn.Conv2D((3, 3, 2, 4), padding="same", activation=gg.relu),
        gg.nn.Flatten(),
        gg.nn.Dense(4 * 4 * 4, 8),
        gg.nn.LayerNorm(8),
    ), gg.nn.LSTM(3, 5)


def test_same_seed_gives_the_same_model():
    gg.random.seed(11)
    first = [p.numpy() for p in gg.tree.leaves(_big_model())]
    gg.random.seed(11)
    again = [p.numpy() for p in gg.tree.leaves(_big_model())]
    gg.random.seed(12)
    other = [p.numpy() for p in gg.tree.leaves(_big_model())]
    assert len(first) == 9
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    random_ones = [i for i, a in enumerate(first) if np.unique(a).size > 2]
    assert len(random_ones) == 4  # conv filter, dense weight, LSTM input and recurrent
    for i in random_ones:
        assert not np.allclose(first[i], other[i])


# ------------------------------------------------------------------ containers and faces


class _Block(gg.nn.Layer):
    """A user layer holding a sub-layer, a list of layers, a dict of a layer and a
    parameter, a plain parameter and settings that are not parameters."""

    def __init__(self):
        self.inp = gg.nn.Dense(3, 4, activation=gg.tanh)
        self.stack = [gg.nn.Dense(4, 4, activation=gg.tanh), gg.nn.Dense(4, 4)]
        self.heads = {"out": gg.nn.Dense(4, 2), "gain": gg.dlarray(np.array([1.5, 0.5]))}
        self.shift = gg.dlarray(0.25)
        self.config = {"name": "block", "sizes": [3, 4]}
        self.mask = gg.dlarray(np.array([True, False]))

    def forward(self, x):
        x = self.inp(x)
        for layer in self.stack:
            x = layer(x)
        return self.heads["out"](x) * self.heads["gain"] + self.shift


def test_user_layer_with_lists_and_dicts_of_layers():
    gg.random.seed(6)
    block = _Block()
    params = block.parameters()
    assert _shapes(params) == {
        "inp": {"weight": (4, 3), "bias": (4,)},
        "stack": {"0": {"weight": (4, 4), "bias": (4,)}, "1": {"weight": (4, 4), "bias": (4,)}},
        "heads": {"out": {"weight": (2, 4), "bias": (2,)}, "gain": (2,)},
        "shift": (),
    }
    x = gg.dlarray(R.standard_normal((5, 3)))

    def loss_of(m):
        return gg.sum(m(x) ** 2)

    def f(m):
        loss = loss_of(m)
        return loss, gg.dlgradient(loss, m)

    _, grads = gg.dlfeval(f, block)
    assert _shapes(grads) == _shapes(params)
    # finite differences for a parameter inside the list and the one inside the dict
    for path in [("stack", "1", "weight"), ("heads", "gain")]:
        p, g = params, grads
        for k in path:
            p, g = p[k], g[k]
        eps = 1e-6
        p._data.flat[1] += eps
        up = float(loss_of(block))
        p._data.flat[1] -= 2 * eps
        down = float(loss_of(block))
        p._data.flat[1] += eps
        np.testing.assert_allclose(g.numpy().flat[1], (up - down) / (2 * eps), rtol=1e-6)
    before = [p.numpy().copy() for p in gg.tree.leaves(params)]
    gg.optim.Adam(block, learning_rate=0.01).update(block, grads)
    after = gg.tree.leaves(block.parameters())
    assert all(not np.array_equal(b, a.numpy()) for b, a in zip(before, after))
    assert block.config == {"name": "block", "sizes": [3, 4]}


def test_value_with_gradient_and_pullback_over_a_layer():
    model = _model()
    x = gg.dlarray(R.standard_normal((2, 4, 4, 1)))
    labels = np.array([1, 0])

    def loss(m, x):
        return gg.nn.softmax_cross_entropy(m(x), labels)

    def f(m, x):
        y = loss(m, x)
        return y, gg.dlgradient(y, m, x)

    value, (gm, gx) = gg.dlfeval(f, model, x)
    v2, (gm2, gx2) = gg.value_with_gradient(loss)(model, x)
    v3, pullback = gg.value_with_pullback(loss, model, x)
    gm3, gx3 = pullback(gg.dlarray(2.0))
    gm4 = gg.gradient(loss, argnums=0)(model, x)
    np.testing.assert_allclose(float(v2), float(value))
    np.testing.assert_allclose(float(v3), float(value))
    for other, scale in [(gm2, 1), (gm3, 2), (gm4, 1)]:
        assert _shapes(other) == _shapes(model.parameters())
        for a, b in zip(gg.tree.leaves(gm), gg.tree.leaves(other)):
            np.testing.assert_allclose(scale * a.numpy(), b.numpy(), atol=1e-12)
    np.testing.assert_allclose(gx.numpy(), gx2.numpy(), atol=1e-12)
    np.testing.assert_allclose(2 * gx.numpy(), gx3.numpy(), atol=1e-12)


def test_mxnet_style_attach_grad_record_backward():
    model = _model()
    x = gg.dlarray(R.standard_normal((2, 4, 4, 1)))
    labels = np.array([2, 1])
    expected = gg.gradient(lambda m: gg.nn.softmax_cross_entropy(m(x), labels))(model)
    with pytest.raises(ValueError, match="attach_grad"):
        _ = model.grad
    assert model.attach_grad() is model
    with gg.autograd.record():
        loss = gg.nn.softmax_cross_entropy(model(x), labels)
    loss.backward()
    grads = model.grad
    assert _shapes(grads) == _shapes(model.parameters())
    for a, b in zip(gg.tree.leaves(expected), gg.tree.leaves(grads)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)
    before = model.parameters()["4"]["weight"].numpy().copy()
    gg.optim.SGD(model, learning_rate=0.5).update(model, grads)
    np.testing.assert_allclose(
        model.parameters()["4"]["weight"].numpy(), before - 0.5 * expected["4"]["weight"].numpy()
    )


def test_applied_for_backpropagation_on_a_sequential():
    model = _model()
    x = gg.dlarray(R.standard_normal((2, 4, 4, 1)))
    y, backprop = model.applied_for_backpropagation(x)
    assert not y.traced
    np.testing.assert_allclose(y.numpy(), model(x).numpy())
    dy = R.standard_normal(y.shape)
    grads, gx = backprop(gg.dlarray(dy))
    expected_params, expected_x = gg.gradient(lambda m, x: gg.sum(m(x) * gg.dlarray(dy)))(model, x)
    assert _shapes(grads) == _shapes(model.parameters())
    for a, b in zip(gg.tree.leaves(expected_params), gg.tree.leaves(grads)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)
    np.testing.assert_allclose(gx.numpy(), expected_x.numpy(), atol=1e-12)
    again, gx_again = backprop(2 * dy)  # a pullback may be called again, with a NumPy array
    np.testing.assert_allclose(again["0"]["filter"].numpy(), 2 * grads["0"]["filter"].numpy())
    np.testing.assert_allclose(gx_again.numpy(), 2 * gx.numpy())
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(2, 3\)"):
        backprop(np.ones((3, 2)))


def test_sequential_takes_plain_functions():
    gg.random.seed(8)
    model = gg.nn.Sequential(gg.nn.Dense(3, 4), gg.relu, gg.nn.Dense(4, 2))
    assert _shapes(model.parameters()) == {
        "0": {"weight": (4, 3), "bias": (4,)},
        "1": {},
        "2": {"weight": (2, 4), "bias": (2,)},
    }
    x = R.standard_normal((5, 3))
    p = model.parameters()
    h = np.maximum(x @ p["0"]["weight"].numpy().T + p["0"]["bias"].numpy(), 0)
    expected = h @ p["2"]["weight"].numpy().T + p["2"]["bias"].numpy()
    np.testing.assert_allclose(model(gg.dlarray(x)).numpy(), expected, atol=1e-12)
    g = gg.gradient(lambda m: gg.sum(m(gg.dlarray(x))))(model)
    assert _shapes(g) == _shapes(model.parameters())


def test_batchnorm_running_statistics_survive_traced_training_steps():
    x = gg.dlarray(R.standard_normal((16, 3)) * 2 + 5)
    direct, traced, by_gradient = gg.nn.BatchNorm(3), gg.nn.BatchNorm(3), gg.nn.BatchNorm(3)

    def f(m):
        y = gg.sum(m(x) ** 3)
        return y, gg.dlgradient(y, m)

    with gg.autograd.train_mode():
        for _ in range(3):
            direct(x)
            gg.dlfeval(f, traced)
            gg.gradient(lambda m: gg.sum(m(x) ** 3))(by_gradient)
    xs = x.numpy()
    k = 1 - 0.9**3  # three updates with momentum 0.1 from mean 0 / variance 1
    expected_mean = k * xs.mean(0)
    expected_var = 0.9**3 + k * xs.var(0, ddof=1)
    for layer in (direct, traced, by_gradient):
        # gg.to_host: the statistics are device arrays on cuda
        np.testing.assert_allclose(gg.to_host(layer.running_mean), expected_mean, rtol=1e-12)
        np.testing.assert_allclose(gg.to_host(layer.running_var), expected_var, rtol=1e-12)
    # inference uses them
    out = traced(x).numpy()
    np.testing.assert_allclose(out, (xs - expected_mean) / np.sqrt(expected_var + 1e-5))


def test_batchnorm_statistics_count_once_under_recomputation():
    x = gg.dlarray(R.standard_normal((8, 2, 2, 3)) + 3)
    plain, recomputed = gg.nn.BatchNorm(3), gg.nn.BatchNorm(3)
    gg.random.seed(0)
    conv = gg.nn.Conv2D((1, 1, 3, 3))

    def loss(m):
        return gg.sum(m(x) ** 2)

    with gg.autograd.train_mode():
        g_plain = gg.gradient(loss)(gg.nn.Sequential(conv, plain))
        g_rec = gg.gradient(loss)(gg.nn.Sequential(conv, recomputed).discarding_activations())
    # the recomputation in the pullback gives the same gradients but no second update
    for a, b in zip(gg.tree.leaves(g_plain), gg.tree.leaves(g_rec)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)
    host = gg.to_host  # the statistics are device arrays on cuda
    assert not np.allclose(host(plain.running_mean), 0)
    np.testing.assert_allclose(host(recomputed.running_mean), host(plain.running_mean), rtol=1e-12)
    np.testing.assert_allclose(host(recomputed.running_var), host(plain.running_var), rtol=1e-12)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: gg.nn.Dense(0, 2), r"Dense: input_size must be a positive integer, got 0"),
        (lambda: gg.nn.Dense(3, 2.5), r"Dense: output_size must be a positive integer, got 2.5"),
        (lambda: gg.nn.Conv2D((3, 3, 4)), r"Conv2D: filter_shape must be \(height, width, "),
        (lambda: gg.nn.Conv2D(3), r"Conv2D: filter_shape must be .*got 3"),
        (lambda: gg.nn.Conv2D((3, 0, 1, 4)), r"Conv2D: filter_shape width must be a positive"),
        (lambda: gg.nn.Conv2D((3, 3, 1, 4), padding="full"), r"Conv2D: padding must be 'valid'"),
        (lambda: gg.nn.Conv2D((3, 3, 1, 4), padding=(1, 2, 3)), r"Conv2D: padding must be"),
        (lambda: gg.nn.Conv2D((3, 3, 1, 4), padding=-1), r"Conv2D: padding must be"),
        (lambda: gg.nn.Conv2D((3, 3, 1, 4), strides=0), r"Conv2D: strides must be"),
        (lambda: gg.nn.MaxPool2D(2, padding="bogus"), r"MaxPool2D: padding must be 'valid'"),
        (lambda: gg.nn.AvgPool2D((2, 2, 2)), r"AvgPool2D: pool_size must be"),
        (lambda: gg.nn.LSTM(3, 0), r"LSTM: hidden_size must be a positive integer"),
        (lambda: gg.nn.Dropout(1.0), r"Dropout: rate must be in \[0, 1\), got 1.0"),
        (
            lambda: gg.nn.Dropout("half"),
            r"Dropout: rate must be a finite real number, got \'half\'",
        ),
        (lambda: gg.nn.BatchNorm(0), r"BatchNorm: num_features must be a positive integer"),
        (lambda: gg.nn.BatchNorm(3, momentum="a"), r"BatchNorm: momentum must be a finite real"),
        (lambda: gg.nn.BatchNorm(3, momentum=1.5), r"BatchNorm: momentum must be in \[0, 1\]"),
        (lambda: gg.nn.LayerNorm(4, epsilon=0), r"LayerNorm: epsilon must be > 0, got 0"),
        (lambda: gg.nn.Sequential(gg.nn.Dense(2, 2), 3), r"Sequential: layer 1 must be"),
    ],
)
def test_bad_layer_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_layer_inputs():
    with pytest.raises(
        ValueError, match=r"Dense: input has 3 features but the layer's input_size is 5"
    ):
        gg.nn.Dense(5, 2)(gg.dlarray(np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"Dense: input must be \[batch, 5\] \(2-D\)"):
        gg.nn.Dense(5, 2)(gg.dlarray(np.zeros((2, 5, 1))))
    with pytest.raises(ValueError, match=r"LSTM: input has 2 features but the layer's input_size"):
        gg.nn.LSTM(3, 4)(gg.dlarray(np.zeros((2, 5, 2))))
    with pytest.raises(ValueError, match=r"LSTM: input must be \[batch, time, 3\] \(3-D\)"):
        gg.nn.LSTM(3, 4)(gg.dlarray(np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"MaxPool2D: input must be .*got shape \(2, 3\)"):
        gg.nn.MaxPool2D(2)(gg.dlarray(np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"BatchNorm: .*num_features=3 entries, got shape"):
        gg.nn.BatchNorm(3)(gg.dlarray(np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"LayerNorm: .*num_features=3 entries"):
        gg.nn.LayerNorm(3)(gg.dlarray(np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"Conv2D: the 5x5 filter is larger"):
        gg.nn.Conv2D((5, 5, 1, 2))(gg.dlarray(np.zeros((1, 3, 3, 1))))
