"""gg.nn layers and gg.optim: parameters(), Layer as a container for dlfeval /
dlgradient / gg.gradient, Sequential, applied_for_backpropagation, optimizers."""

import numpy as np
import pytest

import gpugrad as gg
from tests._torch import torch

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


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda m: gg.optim.SGD(m, learning_rate=0.1),
        lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9),
        lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9, nesterov=True),
        lambda m: gg.optim.Adam(m, learning_rate=0.02),
    ],
)
def test_optimizers_decrease_the_loss(make_opt):
    gg.random.seed(0)
    model = gg.nn.Sequential(gg.nn.Dense(2, 8, activation=gg.relu), gg.nn.Dense(8, 1))
    x = gg.dlarray(R.standard_normal((32, 2)))
    target = gg.dlarray(np.sin(x.numpy().sum(1, keepdims=True)))
    opt = make_opt(model)

    def f(m):
        loss = gg.mean((m(x) - target) ** 2)
        return loss, gg.dlgradient(loss, m)

    first = None
    for _ in range(60):
        loss, grads = gg.dlfeval(f, model)
        first = float(loss) if first is None else first
        opt.update(model, grads)
    assert float(loss) < 0.5 * first


def test_adam_and_sgdm_match_torch():
    p0 = R.standard_normal(5)
    grads = [R.standard_normal(5) for _ in range(3)]
    tp = torch.tensor(p0, requires_grad=True)
    topt = torch.optim.Adam([tp], lr=0.01)
    p, m, v = gg.dlarray(p0), None, None
    for i, g in enumerate(grads, 1):
        tp.grad = torch.tensor(g)
        topt.step()
        p, m, v = gg.adamupdate(p, gg.dlarray(g), m, v, i, learn_rate=0.01)
    np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), atol=1e-7)
    dense = gg.nn.Dense(1, 5)
    dense.bias._data[:] = p0
    opt = gg.optim.Adam(dense, learning_rate=0.01)
    for g in grads:
        opt.update(dense, {"weight": np.zeros((5, 1)), "bias": g})
    np.testing.assert_allclose(dense.bias.numpy(), tp.detach().numpy(), atol=1e-7)
    # sgdmupdate: vel = m * vel - lr * g; p += vel
    p, vel = gg.sgdmupdate({"w": gg.dlarray(p0)}, {"w": gg.dlarray(grads[0])}, None, 0.1, 0.9)
    np.testing.assert_allclose(p["w"].numpy(), p0 - 0.1 * grads[0])
    p, vel = gg.sgdmupdate(p, {"w": gg.dlarray(grads[1])}, vel, 0.1, 0.9)
    np.testing.assert_allclose(vel["w"].numpy(), 0.9 * -0.1 * grads[0] - 0.1 * grads[1])
    with pytest.raises(ValueError, match="shaped like"):
        opt.update(dense, {"weight": np.zeros((5, 1))})
