"""The layers added for issue 12 (GRU, Embedding, Conv1D, TransposedConv2D, GroupNorm,
Residual, Parallel) and the ``groupnorm`` function: forward values against PyTorch
(float64, CPU) or NumPy, gradients against finite differences, constructor checks."""

import copy

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.testing import check_gradient
from tests._torch import TF, torch

R = np.random.default_rng(12)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=np.float64)))


def _with(layer, **params):
    """A shallow copy of ``layer`` with some parameters replaced (for check_gradient)."""
    new = copy.copy(layer)
    for k, v in params.items():
        setattr(new, k, v)
    return new


def _randomize(layer):
    for p in gg.tree.leaves(layer.parameters()):
        p._data[...] = R.standard_normal(p.shape) * 0.5
    return layer


# ------------------------------------------------------------------ dtypes


def _new_layers(dtype):
    return [
        gg.nn.GRU(3, 4, dtype=dtype),
        gg.nn.Embedding(5, 2, dtype=dtype),
        gg.nn.Conv1D((3, 2, 4), dtype=dtype),
        gg.nn.TransposedConv2D((2, 2, 3, 4), dtype=dtype),
        gg.nn.GroupNorm(2, 4, dtype=dtype),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_layers_make_parameters_in_the_requested_dtype(dtype):
    for layer in _new_layers(dtype):
        assert {p.dtype for p in gg.tree.leaves(layer.parameters())} == {np.dtype(dtype)}


def test_new_layers_follow_the_default_parameter_dtype_as_dense_does():
    default = gg.nn.Dense(2, 2).weight.dtype
    for layer in _new_layers(None):
        assert {p.dtype for p in gg.tree.leaves(layer.parameters())} == {default}, layer


# ------------------------------------------------------------------ GRU


@pytest.mark.parametrize(
    "mode", ["after-multiplication", "before-multiplication", "recurrent-bias-after-multiplication"]
)
def test_gru_layer_shapes_and_finite_differences(mode):
    gg.random.seed(0)
    gru = _randomize(gg.nn.GRU(3, 4, reset_gate_mode=mode, dtype=np.float64))
    nb = 24 if mode.startswith("recurrent") else 12
    assert {k: v.shape for k, v in gru.parameters().items()} == {
        "weight": (12, 3),
        "recurrent_weight": (12, 4),
        "bias": (nb,),
    }
    x = R.standard_normal((2, 5, 3))
    assert gru(x).shape == (2, 5, 4)

    def f(x, w, r, b):
        return _with(gru, weight=w, recurrent_weight=r, bias=b)(x)

    check_gradient(f, x, gru.weight, gru.recurrent_weight, gru.bias)


def test_gru_layer_matches_torch():
    gg.random.seed(1)
    gru = _randomize(
        gg.nn.GRU(3, 4, reset_gate_mode="recurrent-bias-after-multiplication", dtype=np.float64)
    )
    x = R.standard_normal((2, 6, 3))
    y = gru(x).numpy()
    ref = torch.nn.GRU(3, 4, batch_first=True).double()
    b = gru.bias.numpy()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(_t(gru.weight.numpy()))
        ref.weight_hh_l0.copy_(_t(gru.recurrent_weight.numpy()))
        ref.bias_ih_l0.copy_(_t(b[:12]))
        ref.bias_hh_l0.copy_(_t(b[12:]))
        expected = ref(_t(x))[0].numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)
    # the plain mode is torch's GRU without the recurrent bias
    plain = _with(gru, bias=gg.dlarray(b[:12]), reset_gate_mode="after-multiplication")
    with torch.no_grad():
        ref.bias_hh_l0.zero_()
        expected = ref(_t(x))[0].numpy()
    np.testing.assert_allclose(plain(x).numpy(), expected, rtol=1e-12, atol=1e-14)


def test_gru_layer_initializers_and_errors():
    gg.random.seed(2)
    gru = gg.nn.GRU(6, 5)
    r = gru.recurrent_weight.numpy()  # (15, 5) orthogonal columns
    np.testing.assert_allclose(r.T @ r, np.eye(5), atol=1e-5)
    assert np.abs(gru.weight.numpy()).max() <= np.sqrt(6 / (6 + 15)) + 1e-7
    assert (gru.bias.numpy() == 0).all()
    with pytest.raises(ValueError, match="GRU: hidden_size must be a positive integer"):
        gg.nn.GRU(3, 0)
    with pytest.raises(ValueError, match="GRU: reset_gate_mode must be one of"):
        gg.nn.GRU(3, 2, reset_gate_mode="after")
    with pytest.raises(ValueError, match=r"GRU: input has 4 features but the layer expects 6"):
        gru(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"GRU: input must be \[batch, time, 6\]"):
        gru(np.ones((2, 6)))


# ------------------------------------------------------------------ Embedding


def test_embedding_values_gradients_and_torch():
    gg.random.seed(3)
    emb = gg.nn.Embedding(7, 3)
    w = emb.weight.numpy()
    assert w.shape == (3, 7)
    assert 0.003 < w.std() < 0.03  # narrow-normal: standard deviation 0.01
    idx = np.array([[1, 6, 1], [0, 2, 5]])
    y = emb(idx)
    np.testing.assert_array_equal(y.numpy(), w.T[idx])
    np.testing.assert_array_equal(y.numpy(), TF.embedding(torch.from_numpy(idx), _t(w.T)).numpy())


def test_embedding_gradient_reaches_only_looked_up_rows():
    gg.random.seed(4)
    emb = gg.nn.Embedding(6, 2, dtype=np.float64)
    idx = np.array([4, 1, 4])

    def loss(layer):
        return gg.sum(layer(idx) ** 2)

    g = gg.gradient(loss)(emb)["weight"].numpy()
    expected = np.zeros((2, 6))
    w = emb.weight.numpy()
    expected[:, 1] = 2 * w[:, 1]
    expected[:, 4] = 4 * w[:, 4]
    np.testing.assert_allclose(g, expected, rtol=1e-12)
    check_gradient(lambda w: _with(emb, weight=w)(idx), emb.weight, order=2)


def test_embedding_errors():
    emb = gg.nn.Embedding(5, 2)
    with pytest.raises(
        ValueError, match=r"Embedding: indices must be vocabulary indices in \[0, 5\)"
    ):
        emb(np.array([0, 5]))
    with pytest.raises(ValueError, match="Embedding: indices must be integer"):
        emb(np.array([0.5]))
    with pytest.raises(ValueError, match="Embedding: embedding_dim must be a positive integer"):
        gg.nn.Embedding(5, -1)


# ------------------------------------------------------------------ Conv1D


@pytest.mark.parametrize(
    ("stride", "padding", "dilation"),
    [(1, "valid", 1), (2, "same", 1), (1, "same", 2), (3, (2, 1), 1), (2, 1, 2)],
)
def test_conv1d_matches_torch(stride, padding, dilation):
    gg.random.seed(5)
    conv = _randomize(
        gg.nn.Conv1D((3, 2, 4), stride=stride, padding=padding, dilation=dilation, dtype=np.float64)
    )
    x = R.standard_normal((2, 11, 2))
    y = conv(x).numpy()
    if padding == "valid":
        pad = (0, 0)
    elif padding == "same":
        out = -(-11 // stride)
        total = max((out - 1) * stride + dilation * 2 + 1 - 11, 0)
        pad = (total // 2, total - total // 2)
    else:
        pad = padding if isinstance(padding, tuple) else (padding, padding)
    xt = TF.pad(_t(x).permute(0, 2, 1), pad)
    wt = _t(conv.filter.numpy()).permute(2, 1, 0)
    ref = TF.conv1d(xt, wt, _t(conv.bias.numpy()), stride=stride, dilation=dilation)
    np.testing.assert_allclose(y, ref.permute(0, 2, 1).numpy(), rtol=1e-10, atol=1e-12)


def test_conv1d_finite_differences_and_relu():
    gg.random.seed(6)
    conv = _randomize(gg.nn.Conv1D((2, 3, 2), stride=2, padding="same", dtype=np.float64))
    x = R.standard_normal((2, 7, 3))

    def f(x, w, b):
        return _with(conv, filter=w, bias=b)(x)

    check_gradient(f, x, conv.filter, conv.bias, order=2)
    fused = _with(conv, activation=gg.relu)
    np.testing.assert_allclose(fused(x).numpy(), np.maximum(conv(x).numpy(), 0), rtol=1e-12)


def test_conv1d_errors():
    with pytest.raises(ValueError, match=r"Conv1D: filter_shape must be \(width, in_channels"):
        gg.nn.Conv1D((3, 3, 2, 2))
    with pytest.raises(ValueError, match="Conv1D: padding must be 'valid', 'same'"):
        gg.nn.Conv1D((3, 2, 2), padding="full")
    with pytest.raises(ValueError, match="Conv1D: stride must be a positive integer"):
        gg.nn.Conv1D((3, 2, 2), stride=0)
    conv = gg.nn.Conv1D((5, 2, 2))
    with pytest.raises(ValueError, match="Conv1D: the filter of width 5"):
        conv(np.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="Conv1D: input has 3 features"):
        conv(np.ones((1, 8, 3)))


# ------------------------------------------------------------------ TransposedConv2D


@pytest.mark.parametrize(
    ("strides", "padding"), [((1, 1), "valid"), ((2, 2), "same"), ((2, 3), (1, 0)), (2, 1)]
)
def test_transposed_conv2d_matches_torch(strides, padding):
    gg.random.seed(7)
    layer = _randomize(gg.nn.TransposedConv2D((3, 4, 2, 5), strides, padding, dtype=np.float64))
    x = R.standard_normal((2, 4, 3, 5))
    y = layer(x).numpy()
    st = strides if isinstance(strides, tuple) else (strides, strides)
    full = TF.conv_transpose2d(
        _t(x).permute(0, 3, 1, 2),
        _t(layer.filter.numpy()).permute(3, 2, 0, 1),
        _t(layer.bias.numpy()),
        stride=st,
    )
    if padding == "valid":
        crop = (0, 0, 0, 0)
    elif padding == "same":
        crop = tuple(
            v for d, k in ((0, 3), (1, 4)) for v in ((k - st[d]) // 2, k - st[d] - (k - st[d]) // 2)
        )
    elif isinstance(padding, tuple):
        crop = (padding[0], padding[0], padding[1], padding[1])
    else:
        crop = (padding,) * 4
    h, w = full.shape[2], full.shape[3]
    ref = full[:, :, crop[0] : h - crop[1], crop[2] : w - crop[3]].permute(0, 2, 3, 1).numpy()
    assert y.shape == ref.shape
    if padding == "same":
        assert y.shape[1:3] == (4 * st[0], 3 * st[1])
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)


def test_transposed_conv2d_finite_differences_and_errors():
    gg.random.seed(8)
    layer = _randomize(gg.nn.TransposedConv2D((2, 2, 3, 2), 2, dtype=np.float64))
    x = R.standard_normal((2, 3, 2, 2))

    def f(x, w, b):
        return _with(layer, filter=w, bias=b)(x)

    check_gradient(f, x, layer.filter, layer.bias, order=2)
    with pytest.raises(ValueError, match="TransposedConv2D: padding='same' needs a filter"):
        gg.nn.TransposedConv2D((1, 1, 2, 2), strides=2, padding="same")
    with pytest.raises(
        ValueError, match=r"TransposedConv2D: input must be \[batch, height, width, 2\]"
    ):
        layer(np.ones((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="TransposedConv2D: filter_shape must be"):
        gg.nn.TransposedConv2D((2, 2, 3))


# ------------------------------------------------------------------ groupnorm / GroupNorm


def _groupnorm_ref(x_nc, groups, scale, offset, eps=1e-5):
    return TF.group_norm(_t(x_nc), groups, _t(scale), _t(offset), eps).numpy()


@pytest.mark.parametrize("groups", [1, 2, 6, "all-channels", "channel-wise"])
def test_groupnorm_function_matches_torch(groups):
    x = R.standard_normal((4, 5, 6, 3))  # SSCB: H, W, C, N
    off, sc = R.standard_normal(6), R.standard_normal(6)
    y = gg.groupnorm(gg.dlarray(x, "SSCB"), groups, off, sc)
    assert gg.dims(y) == "SSCB"
    g = {"all-channels": 1, "channel-wise": 6}.get(groups, groups)
    ref = _groupnorm_ref(x.transpose(3, 2, 0, 1), g, sc, off)
    np.testing.assert_allclose(y.numpy(), ref.transpose(2, 3, 1, 0), rtol=1e-10, atol=1e-12)
    # unformatted with data_format comes back in the caller's layout
    nhwc = x.transpose(3, 0, 1, 2)
    y2 = gg.groupnorm(nhwc, groups, off, sc, data_format="BSSC")
    np.testing.assert_allclose(y2.numpy(), ref.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)


def test_groupnorm_normalizes_each_time_step_of_a_sequence():
    x = R.standard_normal((4, 2, 3))  # CBT
    y = gg.groupnorm(gg.dlarray(x, "CBT"), 2, np.zeros(4), np.ones(4), epsilon=1e-12).numpy()
    for b in range(2):
        for t in range(3):
            for grp in (slice(0, 2), slice(2, 4)):
                v = x[grp, b, t]
                np.testing.assert_allclose(y[grp, b, t], (v - v.mean()) / v.std(), rtol=1e-6)


@pytest.mark.parametrize("order", [1, 2])
def test_groupnorm_finite_differences(order):
    x = R.standard_normal((3, 2, 4, 2))
    off, sc = R.standard_normal(4), R.standard_normal(4)
    check_gradient(
        lambda x, o, s: gg.groupnorm(x, 2, o, s, data_format="SSCB"), x, off, sc, order=order
    )


def test_groupnorm_errors():
    x = gg.dlarray(np.ones((2, 6, 3)), "SCB")
    with pytest.raises(
        ValueError, match="groupnorm: num_groups must be a positive integer dividing the 6"
    ):
        gg.groupnorm(x, 4, np.zeros(6), np.ones(6))
    with pytest.raises(ValueError, match="groupnorm: num_groups must be"):
        gg.groupnorm(x, "all", np.zeros(6), np.ones(6))
    with pytest.raises(
        ValueError, match=r"groupnorm: offset must have one entry per channel \(6\)"
    ):
        gg.groupnorm(x, 2, np.zeros(5), np.ones(6))
    with pytest.raises(ValueError, match="groupnorm: epsilon must be > 0"):
        gg.groupnorm(x, 2, np.zeros(6), np.ones(6), epsilon=0)
    with pytest.raises(ValueError, match="groupnorm: the input is an unformatted dlarray"):
        gg.groupnorm(np.ones((2, 6)), 2, np.zeros(6), np.ones(6))


def test_groupnorm_layer_matches_torch_and_finite_differences():
    gg.random.seed(9)
    norm = _randomize(gg.nn.GroupNorm(3, 6, dtype=np.float64))
    x = R.standard_normal((2, 4, 5, 6))
    y = norm(x).numpy()
    ref = _groupnorm_ref(x.transpose(0, 3, 1, 2), 3, norm.scale.numpy(), norm.offset.numpy())
    np.testing.assert_allclose(y, ref.transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-12)
    x2 = R.standard_normal((3, 6))  # [batch, channels]
    ref2 = _groupnorm_ref(x2, 3, norm.scale.numpy(), norm.offset.numpy())
    np.testing.assert_allclose(norm(x2).numpy(), ref2, rtol=1e-10, atol=1e-12)
    check_gradient(
        lambda x, o, s: _with(norm, offset=o, scale=s)(x), x[:, :2, :2], norm.offset, norm.scale
    )
    fresh = gg.nn.GroupNorm("channel-wise", 4)
    assert (fresh.scale.numpy() == 1).all() and (fresh.offset.numpy() == 0).all()
    with pytest.raises(ValueError, match="GroupNorm: num_groups must divide num_features=6, got 4"):
        gg.nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="GroupNorm: the last axis of the input"):
        norm(np.ones((2, 5)))


# ------------------------------------------------------------------ Residual / Parallel


def test_residual_adds_the_input_and_its_gradient():
    gg.random.seed(10)
    dense = gg.nn.Dense(3, 3, dtype=np.float64)
    block = gg.nn.Residual(dense, gg.tanh)
    x = R.standard_normal((4, 3))
    w, b = dense.weight.numpy(), dense.bias.numpy()
    np.testing.assert_allclose(block(x).numpy(), x + np.tanh(x @ w.T + b), rtol=1e-12)
    params = block.parameters()
    assert list(params) == ["0", "1"] and params["1"] == {}
    assert params["0"]["weight"] is dense.weight

    def loss(net, x):
        return gg.sum(net(x) ** 2)

    gnet, gx = gg.gradient(loss)(block, x)
    assert set(gnet) == {"0", "1"} and gnet["0"]["weight"].shape == (3, 3)
    check_gradient(
        lambda x, w: _with(block, layers=[_with(dense, weight=w), gg.tanh])(x), x, dense.weight
    )
    with pytest.raises(ValueError, match="Residual: the layers map shape"):
        gg.nn.Residual(gg.nn.Dense(3, 2))(x)
    with pytest.raises(TypeError, match="Residual: layer 0 must be a gg.nn.Layer"):
        gg.nn.Residual(3)


def test_parallel_combines_branches():
    gg.random.seed(11)
    a, b = gg.nn.Dense(3, 2, dtype=np.float64), gg.nn.Dense(3, 4, dtype=np.float64)
    x = R.standard_normal((5, 3))
    ya, yb = a(x).numpy(), b(x).numpy()
    np.testing.assert_allclose(gg.nn.Parallel(a, b)(x).numpy(), np.concatenate([ya, yb], 1))
    c = gg.nn.Dense(3, 2, dtype=np.float64)
    summed = gg.nn.Parallel(a, c, combine="sum")
    np.testing.assert_allclose(summed(x).numpy(), ya + c(x).numpy())
    pair = gg.nn.Parallel(a, gg.relu, combine=None)(x)
    assert isinstance(pair, tuple) and pair[1].shape == (5, 3)
    stacked = gg.nn.Parallel(a, c, combine=lambda outs: gg.stack(outs, axis=0))(x)
    assert stacked.shape == (2, 5, 2)
    grads = gg.gradient(lambda net: gg.sum(net(x)))(summed)
    np.testing.assert_allclose(grads["0"]["bias"].numpy(), [5.0, 5.0])
    np.testing.assert_allclose(grads["1"]["bias"].numpy(), [5.0, 5.0])
    with pytest.raises(ValueError, match="Parallel: combine must be"):
        gg.nn.Parallel(a, combine="mean")
    with pytest.raises(ValueError, match="Parallel: give at least one layer"):
        gg.nn.Parallel()


def test_new_layers_train_inside_dlfeval_with_an_optimizer():
    gg.random.seed(12)
    net = gg.nn.Sequential(
        gg.nn.Embedding(10, 4, dtype=np.float64),
        gg.nn.Conv1D((3, 4, 6), padding="same", activation=gg.relu, dtype=np.float64),
        gg.nn.GroupNorm(2, 6, dtype=np.float64),
        gg.nn.Residual(gg.nn.GRU(6, 6, dtype=np.float64)),
        gg.nn.Flatten(),
        gg.nn.Dense(5 * 6, 2, dtype=np.float64),
    )
    idx = np.array([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5], [1, 1, 2, 2, 3], [0, 9, 0, 9, 0]])
    labels = np.array([0, 1, 0, 1])
    opt = gg.optim.Adam(net, learning_rate=0.05)

    def step(net):
        loss = gg.nn.softmax_cross_entropy(net(idx), labels)
        return loss, gg.dlgradient(loss, net)

    first = None
    for _ in range(30):
        loss, grads = gg.dlfeval(step, net)
        first = float(loss) if first is None else first
        opt.update(net, grads)
    assert float(loss) < 0.2 * first


# ------------------------------------------------------------------ display


def _display_net():
    gg.random.seed(13)
    return gg.nn.Sequential(
        gg.nn.Conv2D((3, 3, 1, 4), padding="same", activation=gg.relu, dtype=np.float64),
        gg.nn.MaxPool2D(2, 2),
        gg.nn.BatchNorm(4, dtype=np.float64),
        gg.nn.Residual(gg.nn.Conv2D((3, 3, 4, 4), padding="same", dtype=np.float64), gg.relu),
        gg.nn.Flatten(),
        gg.nn.Parallel(gg.nn.Dense(64, 8, dtype=np.float64), gg.nn.Dense(64, 2, dtype=np.float64)),
    )


def test_print_shows_layers_settings_and_parameter_counts():
    net = _display_net()
    text = repr(net)
    assert str(net) == text
    lines = text.splitlines()
    assert lines[0] == "Sequential("
    assert lines[1] == (
        "  (0): Conv2D(filter=(3, 3, 1, 4), bias=(4,), strides=(1, 1), dilations=(1, 1), "
        "padding='same', activation=relu)  # 40 parameters"
    )
    assert "  (1): MaxPool2D(pool_size=(2, 2), strides=(2, 2), padding='valid')" in lines
    assert "  (3): Residual(" in lines and "    (1): relu" in lines
    assert "    combine='concatenate', axis=-1" in lines
    assert "  )  # 650 parameters" in lines
    total = 40 + 8 + 148 + 64 * 8 + 8 + 64 * 2 + 2
    assert lines[-1] == f")  # {total} parameters in total"
    assert gg.nn.summary.count_parameters(net) == total
    assert repr(gg.nn.Flatten()) == "Flatten()"


def test_summary_table_has_output_shapes_and_leaves_the_net_untouched():
    net = _display_net()
    bn = net[2]
    before = (bn.running_mean.copy(), bn.running_var.copy())
    attrs = [set(vars(layer)) for layer in (net, net[0], net[3], net[3][0])]
    table = net.summary(input_shape=(2, 8, 8, 1))
    # top-level rows only (nested rows are indented further)
    rows = {
        line.split()[0] + " " + line.split()[1]: line
        for line in table.splitlines()[3:-2]
        if line.startswith("  ") and not line.startswith("    ")
    }
    assert "(2, 10)" in table.splitlines()[2] and table.splitlines()[2].startswith("Sequential")
    assert "(2, 8, 8, 4)" in rows["0 (Conv2D)"] and rows["0 (Conv2D)"].endswith(" 40")
    assert "(2, 4, 4, 4)" in rows["1 (MaxPool2D)"]
    assert "(2, 64)" in rows["4 (Flatten)"]
    assert "(2, 2)" in table and "(2, 8)" in table
    assert (
        table.splitlines()[-1]
        == f"Total parameters: {gg.nn.summary.count_parameters(net):,} (float64)"
    )
    host = gg.backend.to_host  # raw arrays of the device
    np.testing.assert_array_equal(host(bn.running_mean), host(before[0]))
    np.testing.assert_array_equal(host(bn.running_var), host(before[1]))
    assert [set(vars(layer)) for layer in (net, net[0], net[3], net[3][0])] == attrs

    # without an input there are no shapes, and a custom layer shows its attributes
    class Head(gg.nn.Layer):
        def __init__(self):
            self.lstm = gg.nn.LSTM(8, 5)
            self.out = gg.nn.Dense(5, 3)

        def forward(self, x):
            return self.out(self.lstm(x)[:, -1])

    head = Head()
    assert "  (lstm): LSTM(" in repr(head)
    table = head.summary(np.ones((2, 4, 8)))
    assert "lstm (LSTM)" in table and "(2, 4, 5)" in table and "(2, 3)" in table
    with pytest.raises(ValueError, match="summary: give x or input_shape, not both"):
        head.summary(np.ones((1, 1, 8)), input_shape=(1, 1, 8))
