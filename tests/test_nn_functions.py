"""Deep-learning functions (gg.fullyconnect, gg.dlconv, gg.lstm, losses, ...): values
against PyTorch in float64, first- and second-order finite-difference checks, and
input validation errors."""

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.testing import check_gradient
from tests._torch import TF, torch

R = np.random.default_rng(11)


def rnd(*shape, scale=1.0):
    return R.standard_normal(shape) * scale


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


# ------------------------------------------------------------------ fullyconnect


def test_fullyconnect_matches_torch_and_formats():
    x, w, b = rnd(3, 5), rnd(4, 3), rnd(4)
    y = gg.fullyconnect(gg.dlarray(x, "CB"), gg.dlarray(w), gg.dlarray(b))
    assert gg.dims(y) == "CB" and y.shape == (4, 5)
    ref = TF.linear(t(x.T), t(w), t(b)).numpy().T
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)
    # spatial input is flattened in MATLAB's column-major order
    xs = rnd(2, 2, 3, 5)
    w2 = rnd(4, 12)
    y2 = gg.fullyconnect(gg.dlarray(xs, "SSCB"), gg.dlarray(w2), gg.dlarray(b))
    ref2 = w2 @ xs.reshape(12, 5, order="F") + b[:, None]
    np.testing.assert_allclose(y2.numpy(), ref2, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2])
def test_fullyconnect_gradients(order):
    x, w, b = rnd(3, 4), rnd(2, 3), rnd(2)
    check_gradient(lambda x, w, b: gg.fullyconnect(x, w, b, data_format="CB"), x, w, b, order=order)


@pytest.mark.parametrize("order", [1, 2])
def test_linear_relu_layer_gradients(order):
    w = rnd(3, 4)
    layer = gg.nn.Dense(4, 3, activation=gg.relu)

    def f(x, w, b):
        layer.weight, layer.bias = w, b
        return layer(x)

    check_gradient(f, rnd(5, 4), w, rnd(3), order=order)


# ------------------------------------------------------------------ convolution

CONV_CASES = [
    dict(stride=1, padding=0, dilation=1, groups=1),
    dict(stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2), groups=2),
    dict(stride=2, padding="same", dilation=1, groups=1),
]


def _torch_conv(x, w, b, stride, pad, dilation, groups):
    tx = t(x).permute(3, 2, 0, 1)
    tw = t(w).permute(3, 2, 0, 1)
    tx = TF.pad(tx, (pad[2], pad[3], pad[0], pad[1]))
    y = TF.conv2d(tx, tw, t(b), stride=stride, dilation=dilation, groups=groups)
    return y.permute(2, 3, 1, 0).numpy()


@pytest.mark.parametrize("case", CONV_CASES)
def test_dlconv_matches_torch(case):
    x, w, b = rnd(7, 6, 4, 2), rnd(3, 3, 4 // case["groups"], 6), rnd(6)
    y = gg.dlconv(
        gg.dlarray(x, "SSCB"),
        gg.dlarray(w),
        gg.dlarray(b),
        case["stride"],
        case["padding"],
        case["dilation"],
        groups=case["groups"],
    )
    assert gg.dims(y) == "SSCB"
    stride = case["stride"] if isinstance(case["stride"], tuple) else (case["stride"],) * 2
    dil = case["dilation"] if isinstance(case["dilation"], tuple) else (case["dilation"],) * 2
    pad = case["padding"]
    if pad == "same":
        pad = gg.nn.functional._padding("same", "t", (3, 3), dil, stride, (7, 6))
    elif isinstance(pad, int):
        pad = (pad,) * 4
    ref = _torch_conv(x, w, b, stride, pad, dil, case["groups"])
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-10)


@pytest.mark.parametrize("channels", [2, 9])  # 9: the tap-major backward-data path
def test_dlconv_gradients_match_torch(channels):
    x, w, b = rnd(6, 5, channels, 3), rnd(3, 2, channels, 4), rnd(4)

    def loss(x, w, b):
        y = gg.dlconv(x, w, b, stride=2, padding=1, dilation=(2, 1))
        return gg.sum(y * y)

    _, grads = gg.dlfeval(
        lambda *a: (None, gg.dlgradient(loss(*a), *a)),
        gg.dlarray(x, "SSCB"),
        gg.dlarray(w),
        gg.dlarray(b),
    )
    tx, tw, tb = (t(v).requires_grad_() for v in (x, w, b))
    ty = TF.conv2d(
        TF.pad(tx.permute(3, 2, 0, 1), (1, 1, 1, 1)),
        tw.permute(3, 2, 0, 1),
        tb,
        stride=2,
        dilation=(2, 1),
    )
    (ty * ty).sum().backward()
    for g, tv in zip(grads, (tx, tw, tb)):
        np.testing.assert_allclose(g.numpy(), tv.grad.numpy(), atol=1e-9)


@pytest.mark.parametrize("order", [1, 2])
def test_dlconv_finite_differences(order):
    x, w, b = rnd(5, 5, 4, 2), rnd(3, 2, 2, 4), rnd(4)

    def f(x, w, b):
        return gg.dlconv(
            x,
            w,
            b,
            stride=(2, 1),
            padding=(1, 0, 0, 1),
            dilation=(1, 2),
            groups=2,
            data_format="SSCB",
        )

    check_gradient(f, x, w, b, order=order)


@pytest.mark.parametrize("order", [1, 2])
def test_conv_relu_layer_gradients(order):
    layer = gg.nn.Conv2D((2, 2, 2, 3), padding="same", activation=gg.relu)

    def f(x, w, b):
        layer.filter, layer.bias = w, b
        return layer(x)

    check_gradient(f, rnd(2, 4, 4, 2), rnd(2, 2, 2, 3), rnd(3), order=order)
    layer = gg.nn.Conv2D((3, 3, 8, 2), padding="same", activation=gg.relu)
    check_gradient(f, rnd(2, 3, 4, 8), rnd(3, 3, 8, 2), rnd(2), order=order)


def test_dltranspconv_matches_torch_and_gradients():
    x, w, b = rnd(4, 3, 3, 2), rnd(3, 2, 5, 3), rnd(5)
    y = gg.dltranspconv(gg.dlarray(x, "SSCB"), gg.dlarray(w), gg.dlarray(b), stride=2, cropping=1)
    ref = TF.conv_transpose2d(
        t(x).permute(3, 2, 0, 1), t(w).permute(3, 2, 0, 1), t(b), stride=2, padding=1
    )
    np.testing.assert_allclose(y.numpy(), ref.permute(2, 3, 1, 0).numpy(), atol=1e-10)
    check_gradient(
        lambda x, w: gg.dltranspconv(x, w, None, stride=2, data_format="SSCB"),
        rnd(3, 2, 3, 1),
        rnd(2, 2, 2, 3),
        order=2,
    )


# ------------------------------------------------------------------ pooling


def test_maxpool_avgpool_match_torch():
    x = rnd(6, 7, 3, 2)
    tx = t(x).permute(3, 2, 0, 1)
    y = gg.maxpool(gg.dlarray(x, "SSCB"), 3, stride=2, padding=1)
    ref = TF.max_pool2d(tx, 3, stride=2, padding=1).permute(2, 3, 1, 0).numpy()
    np.testing.assert_allclose(y.numpy(), ref)
    y = gg.avgpool(gg.dlarray(x, "SSCB"), (2, 3), stride=(2, 1))
    ref = TF.avg_pool2d(tx, (2, 3), stride=(2, 1)).permute(2, 3, 1, 0).numpy()
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_pool_gradients(order, stride):
    x = rnd(5, 4, 2, 2)
    check_gradient(
        lambda x: gg.maxpool(x, 2, stride=stride, padding=1, data_format="SSCB"), x, order=order
    )
    check_gradient(
        lambda x: gg.avgpool(x, 2, stride=stride, padding=(1, 0), data_format="SSCB"),
        x,
        order=order,
    )


# ------------------------------------------------------------------ activations, normalization


def test_activations_match_torch():
    x = rnd(4, 3)
    xd = gg.dlarray(x, "CB")
    np.testing.assert_allclose(gg.leakyrelu(xd, 0.2).numpy(), TF.leaky_relu(t(x), 0.2).numpy())
    np.testing.assert_allclose(gg.gelu(xd).numpy(), TF.gelu(t(x)).numpy(), atol=1e-7)
    np.testing.assert_allclose(
        gg.gelu(xd, "tanh").numpy(), TF.gelu(t(x), approximate="tanh").numpy(), atol=1e-12
    )
    s = gg.softmax(gg.dlarray(x * 100, "CB"))
    np.testing.assert_allclose(s.numpy(), TF.softmax(t(x * 100), dim=0).numpy(), atol=1e-12)
    assert gg.dims(s) == "CB"


@pytest.mark.parametrize("order", [1, 2])
def test_activation_and_norm_gradients(order):
    x = rnd(3, 4)
    check_gradient(lambda x: gg.softmax(x, data_format="CB"), x, order=order)
    check_gradient(lambda x: gg.leakyrelu(x, 0.1), x, order=order)
    check_gradient(lambda x: gg.gelu(x, "tanh"), x, order=order)
    check_gradient(
        lambda x, o, s: gg.layernorm(x, o, s, data_format="CB"), x, rnd(3), rnd(3), order=order
    )
    check_gradient(
        lambda x, o, s: gg.batchnorm(x, o, s, data_format="CB"), x, rnd(3), rnd(3), order=order
    )


def test_batchnorm_layernorm_match_torch():
    x = rnd(3, 3, 4, 5)
    off, sc = rnd(4), rnd(4)
    rm, rv = np.zeros(4), np.ones(4)
    y, nm, nv = gg.batchnorm(gg.dlarray(x, "SSCB"), off, sc, rm, rv, training=True)
    tm, tv = t(rm), t(rv)
    ref = TF.batch_norm(t(x).permute(3, 2, 0, 1), tm, tv, t(sc), t(off), training=True)
    np.testing.assert_allclose(y.numpy(), ref.permute(2, 3, 1, 0).numpy(), atol=1e-10)
    np.testing.assert_allclose(nm.numpy(), tm.numpy(), atol=1e-12)
    np.testing.assert_allclose(nv.numpy(), tv.numpy(), atol=1e-12)
    yi = gg.batchnorm(gg.dlarray(x, "SSCB"), off, sc, nm, nv, training=False)
    refi = TF.batch_norm(t(x).permute(3, 2, 0, 1), tm, tv, t(sc), t(off), training=False)
    np.testing.assert_allclose(yi.numpy(), refi.permute(2, 3, 1, 0).numpy(), atol=1e-10)
    xc = rnd(6, 4)
    y = gg.layernorm(gg.dlarray(xc, "CB"), rnd(6) * 0, np.ones(6))
    ref = TF.layer_norm(t(xc.T), (6,)).numpy().T
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-10)


# ------------------------------------------------------------------ recurrent


def _torch_lstm(x, h0, c0, w, r, b):
    # MATLAB gate order (i, f, g, o) is PyTorch's (i, f, g, o): same blocks
    cell = torch.nn.LSTM(x.shape[0], h0.shape[0], dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih_l0.copy_(t(w))
        cell.weight_hh_l0.copy_(t(r))
        cell.bias_ih_l0.copy_(t(b))
        cell.bias_hh_l0.zero_()
    y, (h, c) = cell(t(x).permute(2, 1, 0), (t(h0.T)[None], t(c0.T)[None]))
    return y.permute(2, 1, 0).detach().numpy(), h[0].T.detach().numpy(), c[0].T.detach().numpy()


def test_lstm_matches_torch():
    c, n, steps, hid = 3, 2, 5, 4
    x, h0, c0 = rnd(c, n, steps), rnd(hid, n), rnd(hid, n)
    w, r, b = rnd(4 * hid, c), rnd(4 * hid, hid), rnd(4 * hid)
    y, h, cc = gg.lstm(gg.dlarray(x, "CBT"), h0, c0, w, r, b)
    assert gg.dims(y) == "CBT" and gg.dims(h) == "CB"
    ry, rh, rc = _torch_lstm(x, h0, c0, w, r, b)
    np.testing.assert_allclose(y.numpy(), ry, atol=1e-10)
    np.testing.assert_allclose(h.numpy(), rh, atol=1e-10)
    np.testing.assert_allclose(cc.numpy(), rc, atol=1e-10)


@pytest.mark.parametrize("order", [1, 2])
def test_lstm_gradients(order):
    hid = 2
    args = (
        rnd(3, 2, 3),
        rnd(hid, 2),
        rnd(hid, 2),
        rnd(4 * hid, 3, scale=0.5),
        rnd(4 * hid, hid, scale=0.5),
        rnd(4 * hid, scale=0.5),
    )

    def f(x, h0, c0, w, r, b):
        y, h, c = gg.lstm(x, h0, c0, w, r, b, data_format="CBT")
        return gg.sum(y * y) + gg.sum(h * c)

    check_gradient(f, *args, order=order)


def test_gru_matches_torch_and_gradients():
    c, n, steps, hid = 3, 2, 4, 3
    x, h0 = rnd(c, n, steps), rnd(hid, n)
    w, r, b = rnd(3 * hid, c), rnd(3 * hid, hid), rnd(6 * hid)
    y, h = gg.gru(
        gg.dlarray(x, "CBT"), h0, w, r, b, reset_gate_mode="recurrent-bias-after-multiplication"
    )
    # PyTorch: gates (r, z, n) in the same order as MATLAB (reset, update, candidate)
    cell = torch.nn.GRU(c, hid, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih_l0.copy_(t(w))
        cell.weight_hh_l0.copy_(t(r))
        cell.bias_ih_l0.copy_(t(b[: 3 * hid]))
        cell.bias_hh_l0.copy_(t(b[3 * hid :]))
    ty, th = cell(t(x).permute(2, 1, 0), t(h0.T)[None])
    np.testing.assert_allclose(y.numpy(), ty.permute(2, 1, 0).detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(h.numpy(), th[0].T.detach().numpy(), atol=1e-10)
    check_gradient(
        lambda x, w, r, b: gg.gru(x, None, w, r, b, data_format="CBT")[0],
        rnd(2, 2, 3),
        rnd(6, 2),
        rnd(6, 2),
        rnd(6),
        order=2,
    )


def test_embed_values_and_gradients():
    w = rnd(3, 5)
    idx = np.array([[0, 4, 2]])
    y = gg.embed(gg.dlarray(idx, "CB"), w)
    assert gg.dims(y) == "CB" and y.shape == (3, 3)
    np.testing.assert_allclose(y.numpy(), w[:, [0, 4, 2]])
    check_gradient(lambda w: gg.embed(gg.dlarray(idx, "CB"), w), w, order=2)
    with pytest.raises(ValueError, match="0-based"):
        gg.embed(gg.dlarray(np.array([[5.0]]), "CB"), w)


# ------------------------------------------------------------------ dropout


def test_dropout_only_in_training():
    x = gg.ones((200, 50))
    assert (gg.dropout(x, 0.5).numpy() == 1).all()
    gg.random.seed(3)
    with gg.autograd.train_mode():
        y = gg.dropout(x, 0.25).numpy()
    kept = y != 0
    assert 0.65 < kept.mean() < 0.85
    np.testing.assert_allclose(y[kept], 1 / 0.75)


# ------------------------------------------------------------------ losses


def test_losses_match_matlab_definitions():
    y = np.abs(rnd(4, 6)) + 0.1
    y = y / y.sum(axis=0)
    tgt = np.eye(4)[:, R.integers(0, 4, 6)]
    yd, td = gg.dlarray(y, "CB"), gg.dlarray(tgt, "CB")
    np.testing.assert_allclose(float(gg.crossentropy(yd, td)), -(tgt * np.log(y)).sum() / 6)
    np.testing.assert_allclose(float(gg.mse(yd, td)), ((y - tgt) ** 2).sum() / 2 / 6)
    np.testing.assert_allclose(float(gg.l1loss(yd, td)), np.abs(y - tgt).sum() / 6)
    np.testing.assert_allclose(float(gg.l2loss(yd, td)), ((y - tgt) ** 2).sum() / 6)
    r = np.abs(3 * y - tgt)
    hub = np.where(r <= 1, 0.5 * r**2, r - 0.5).sum() / 6
    np.testing.assert_allclose(float(gg.huber(gg.dlarray(3 * y, "CB"), td)), hub)
    ref = TF.huber_loss(t(3 * y), t(tgt), reduction="sum").item() / 6
    np.testing.assert_allclose(float(gg.huber(gg.dlarray(3 * y, "CB"), td)), ref)


@pytest.mark.parametrize("order", [1, 2])
def test_loss_gradients(order):
    y, tgt = np.abs(rnd(3, 4)) + 0.2, np.abs(rnd(3, 4))
    for fn in (gg.crossentropy, gg.mse, gg.l2loss):
        check_gradient(lambda y, fn=fn: fn(y, tgt, data_format="CB"), y, order=order)
    check_gradient(lambda y: gg.l1loss(y, tgt, data_format="CB"), y + 5, order=order)
    check_gradient(lambda y: gg.huber(y, tgt, data_format="CB"), 3 * y, order=order)
    lab = np.array([0, 2, 1, 2])
    check_gradient(lambda z: gg.nn.softmax_cross_entropy(z, lab), rnd(4, 3), order=order)


def test_softmax_cross_entropy_matches_torch():
    z, lab = rnd(5, 4), np.array([0, 3, 1, 1, 2])
    ref = TF.cross_entropy(t(z), torch.tensor(lab)).item()
    np.testing.assert_allclose(float(gg.nn.softmax_cross_entropy(gg.dlarray(z), lab)), ref)


def test_onehotencode():
    y = gg.onehotencode(np.array([[0, 2, 1]]), 0, 3)
    np.testing.assert_array_equal(y.numpy(), np.eye(3)[:, [0, 2, 1]])
    y = gg.onehotencode(["b", "a"], 1, classes=["a", "b"])
    np.testing.assert_array_equal(y.numpy(), [[0, 1], [1, 0]])


# ------------------------------------------------------------------ errors


def test_errors_name_what_is_expected():
    x = gg.dlarray(rnd(5, 5, 3, 2), "SSCB")
    with pytest.raises(ValueError, match=r"4 input channels.*3 channels"):
        gg.dlconv(x, rnd(3, 3, 4, 2), rnd(2))
    with pytest.raises(ValueError, match="data_format='SSCB'"):
        gg.dlconv(gg.dlarray(rnd(5, 5, 3, 2)), rnd(3, 3, 3, 2), rnd(2))
    with pytest.raises(ValueError, match="contradicts"):
        gg.dlconv(x, rnd(3, 3, 3, 2), rnd(2), data_format="SSBC")
    for kw in ({"stride": 0}, {"dilation": -1}, {"padding": -1}):
        with pytest.raises(ValueError, match=">="):
            gg.dlconv(x, rnd(3, 3, 3, 2), rnd(2), **kw)
    with pytest.raises(ValueError, match="larger than the padded"):
        gg.dlconv(x, rnd(7, 3, 3, 2), rnd(2))
    with pytest.raises(ValueError, match="larger than the padded"):
        gg.maxpool(x, 6)
    with pytest.raises(ValueError, match=r"in = 3.*\(4, 5\)"):
        gg.fullyconnect(gg.dlarray(rnd(3, 2), "CB"), rnd(4, 5), rnd(4))
    with pytest.raises(ValueError, match="channels"):
        gg.lstm(gg.dlarray(rnd(3, 2, 4), "CBT"), None, None, rnd(8, 2), rnd(8, 2), rnd(8))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        gg.nn.softmax_cross_entropy(gg.dlarray(rnd(4, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        gg.nn.softmax_cross_entropy(gg.dlarray(rnd(4, 3)), np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        gg.onehotencode(np.array([0, 5]), 0, 3)
    with pytest.raises(ValueError, match="shape"):
        gg.mse(gg.dlarray(rnd(3, 2), "CB"), gg.dlarray(rnd(3, 3), "CB"))


@pytest.mark.parametrize("unique", [True, False])
def test_pool_scatter_gradients(unique):
    from gpugrad.nn import _prims

    idx = np.array([0, 3, 5]) if unique else np.array([0, 3, 3])

    def f(v):
        params = {"idx": idx, "unique": unique, "shape": (2, 3)}
        return _prims.bind(_prims._SCATTER, (v,), params)

    check_gradient(f, rnd(3), order=2)


def test_buffer_pool_reuses_only_unviewed_buffers():
    from gpugrad.nn._prims import BufferPool

    pool = BufferPool(max_bytes=4096, min_bytes=64)
    a = pool.empty((4, 8), np.float32)  # 128 bytes, pooled
    a_ptr = a.__array_interface__["data"][0]
    view = a[1:].T  # a view of a view still holds the pooled base
    del a
    b = pool.empty((32,), np.float32)
    assert b.__array_interface__["data"][0] != a_ptr
    del view
    c = pool.empty((2, 16), np.float32)
    assert c.__array_interface__["data"][0] == a_ptr and c.shape == (2, 16)
    assert c.dtype == np.float32 and c.flags.c_contiguous and c.flags.writeable
    # small and oversized requests are not pooled; the byte cap evicts free buffers only
    assert pool.empty((4,), np.float32).base is None
    assert pool.empty((2048,), np.float32).base is None
    del b, c
    d = pool.empty((1000,), np.float32)
    assert d.base is not None and pool.bytes <= pool.max_bytes
    e = pool.empty((1000,), np.float32)  # d is alive and no room is left: a plain array
    assert e.base is None and not np.shares_memory(d, e)


@pytest.mark.parametrize(
    "shape, pool", [((6, 8, 3, 2), (2, 2)), ((7, 5, 2), (2, 2)), ((6, 6, 2, 3), (3, 2))]
)
def test_maxpool_tiled_path_matches_general(shape, pool):
    from gpugrad.nn import functional as F

    x = np.round(rnd(*shape) * 1.5)  # many ties: the first maximum of each window wins
    x.flat[::7] = np.nan
    x = np.asfortranarray(x)  # a non-contiguous layout, like a transposed NHWC input
    ho, wo = shape[0] // pool[0], shape[1] // pool[1]
    fast = F._maxpool_index_tiled(x, pool, ho, wo)
    slow = F._maxpool_index(x, pool, pool, (0, 0, 0, 0), ho, wo)
    np.testing.assert_array_equal(fast, slow)
    fmt = "SSCB" if len(shape) == 4 else "SSC"
    y = gg.maxpool(gg.dlarray(x, fmt), pool, stride=pool)
    np.testing.assert_array_equal(y.numpy(), x.reshape(-1)[slow])


@pytest.mark.parametrize("order", [1, 2])
def test_maxpool_tiled_gradients(order):
    x = rnd(4, 6, 2, 2)
    check_gradient(lambda x: gg.maxpool(x, 2, stride=2, data_format="SSCB"), x, order=order)

    def loss_grad(v):
        loss = gg.sum(gg.maxpool(v, 2, stride=2))
        return loss, gg.dlgradient(loss, v)

    # ties: the whole gradient goes to the first maximum (row-major in the window)
    _, gx = gg.dlfeval(loss_grad, gg.dlarray(np.ones((2, 2, 1, 1)), "SSCB"))
    np.testing.assert_array_equal(gx.numpy()[:, :, 0, 0], [[1.0, 0.0], [0.0, 0.0]])
