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


@pytest.mark.parametrize(
    "channels, groups", [(2, 1), (9, 1), (4, 2)]
)  # 9: the tap-major backward-data path
def test_dlconv_gradients_match_torch(channels, groups):
    x, w, b = rnd(6, 5, channels, 3), rnd(3, 2, channels // groups, 4), rnd(4)

    def loss(x, w, b):
        y = gg.dlconv(x, w, b, stride=2, padding=1, dilation=(2, 1), groups=groups)
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
        groups=groups,
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
    y, tgt = np.abs(rnd(3, 4)) + 0.2, R.uniform(0, 1, (3, 4))  # crossentropy: targets in [0, 1]
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
    raw = gg.extractdata(gg.dlarray(x, copy=False))  # on the active device
    fast = gg.to_host(F._maxpool_index_tiled(raw, pool, ho, wo))
    slow = gg.to_host(F._maxpool_index(raw, pool, pool, (0, 0, 0, 0), ho, wo))
    np.testing.assert_array_equal(fast, slow)
    fmt = "SSCB" if len(shape) == 4 else "SSC"
    y = gg.maxpool(gg.dlarray(x, fmt), pool, stride=pool)
    np.testing.assert_array_equal(y.numpy(), x.reshape(-1)[slow])
    # the window bases are cached per shape: each call still returns its own int64 array
    fast[...] = -1
    again = gg.to_host(F._maxpool_index_tiled(raw, pool, ho, wo))
    assert again.dtype == np.int64
    np.testing.assert_array_equal(again, slow)
    lead = F._maxpool_index_tiled(raw[None], pool, ho, wo, lead=1)  # a leading axis
    np.testing.assert_array_equal(gg.to_host(lead)[0], slow)


@pytest.mark.parametrize("order", [1, 2])
def test_maxpool_of_nhwc_memory_matches_the_sscb_path(order):
    # an 'SSCB' view of NHWC memory (a convolution's output) is pooled in memory order;
    # values and first/second-order gradients equal the contiguous-'SSCB' path bit for bit
    from gpugrad.nn import functional as F

    nhwc = np.round(rnd(3, 6, 4, 5) * 1.5)  # ties: the first maximum of each window wins
    nhwc[0, 1, 1, 2], nhwc[1, 2, 2, 1] = np.nan, -np.inf
    w = rnd(3, 2, 5, 3)

    def pooled(x, view):
        x = gg.transpose(x, (1, 2, 3, 0)) if view else x
        assert F._nhwc_contiguous(gg.extractdata(x)) == view
        y = gg.maxpool(x, 2, stride=2, data_format="SSCB")
        return gg.sum(y * w) ** order, y

    got, want = (
        gg.value_and_grad(pooled, has_aux=True)(gg.dlarray(a), view)
        for a, view in ((nhwc, True), (np.transpose(nhwc, (1, 2, 3, 0)), False))
    )
    np.testing.assert_array_equal(got[0][1].numpy(), want[0][1].numpy())
    np.testing.assert_array_equal(got[1].numpy(), np.transpose(want[1].numpy(), (3, 0, 1, 2)))
    nhwc_pool = lambda x: gg.maxpool(  # noqa: E731
        gg.transpose(x, (1, 2, 3, 0)), 2, stride=2, data_format="SSCB"
    )
    check_gradient(nhwc_pool, rnd(2, 4, 6, 3), order=order)


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


# ------------------------------------------------------------------ coverage of every section-6
# function: finite differences of order 1 and 2, and PyTorch values and gradients (float64)


def _gg_value_and_grads(fn, *arrays):
    """``fn``'s scalar value and its gradients for every argument (gpugrad)."""

    def body(*xs):
        y = fn(*xs)
        return y, gg.dlgradient(y, *xs)

    y, grads = gg.dlfeval(body, *(gg.dlarray(a) for a in arrays))
    grads = grads if isinstance(grads, tuple) else (grads,)
    return float(y), [g.numpy() for g in grads]


def _torch_value_and_grads(fn, *arrays):
    ts = [t(a).requires_grad_() for a in arrays]
    y = fn(*ts)
    y.backward()
    return y.item(), [v.grad.numpy() for v in ts]


def _assert_same(gg_fn, torch_fn, *arrays, atol=1e-9):
    value, grads = _gg_value_and_grads(gg_fn, *arrays)
    ref_value, ref_grads = _torch_value_and_grads(torch_fn, *arrays)
    np.testing.assert_allclose(value, ref_value, rtol=1e-10, atol=atol)
    for g, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(g, ref, rtol=1e-9, atol=atol)


def test_fullyconnect_gradients_match_torch():
    x, w, b, u = rnd(3, 5), rnd(4, 3), rnd(4), rnd(4, 5)
    _assert_same(
        lambda x, w, b: gg.sum(gg.fullyconnect(x, w, b, data_format="CB") * u),
        lambda x, w, b: (TF.linear(x.T, w, b).T * t(u)).sum(),
        x,
        w,
        b,
    )


@pytest.mark.parametrize("cropping", [0, (1, 0, 0, 1), "same"])
def test_dltranspconv_gradients_match_torch(cropping):
    x, w, b = rnd(4, 3, 3, 2), rnd(3, 3, 2, 3), rnd(2)
    y = gg.dltranspconv(gg.dlarray(x, "SSCB"), w, b, stride=2, cropping=cropping)
    full = (2 * (4 - 1) + 3, 2 * (3 - 1) + 3)
    if cropping == "same":
        assert y.shape[:2] == (8, 6)  # H * stride
        crop = (0, 1, 0, 1)  # total crop 3 - 2 = 1, the odd one at the bottom/right
    else:
        crop = (0, 0, 0, 0) if cropping == 0 else cropping
    u = rnd(*y.shape)

    def ref(x, w, b):
        full_y = TF.conv_transpose2d(x.permute(3, 2, 0, 1), w.permute(3, 2, 0, 1), b, stride=2)
        cut = full_y[:, :, crop[0] : full[0] - crop[1], crop[2] : full[1] - crop[3]]
        return (cut.permute(2, 3, 1, 0) * t(u)).sum()

    _assert_same(
        lambda x, w, b: gg.sum(
            gg.dltranspconv(x, w, b, stride=2, cropping=cropping, data_format="SSCB") * u
        ),
        ref,
        x,
        w,
        b,
    )


@pytest.mark.parametrize("order", [1, 2])
def test_dltranspconv_finite_differences(order):
    check_gradient(
        lambda x, w, b: gg.dltranspconv(
            x, w, b, stride=(2, 1), cropping=(1, 0, 0, 1), data_format="SSCB"
        ),
        rnd(3, 3, 2, 2),
        rnd(2, 3, 2, 2),
        rnd(2),
        order=order,
    )


def test_pooling_with_padding_and_same_matches_torch():
    x = rnd(6, 7, 3, 2)
    tx = t(x).permute(3, 2, 0, 1)
    y = gg.avgpool(gg.dlarray(x, "SSCB"), 3, stride=2, padding=1)
    ref = TF.avg_pool2d(tx, 3, stride=2, padding=1, count_include_pad=True)
    np.testing.assert_allclose(y.numpy(), ref.permute(2, 3, 1, 0).numpy(), atol=1e-12)
    # "same" with stride 2 on 7 columns: total padding 2 -> (1, 1); 6 rows: total 1 -> (0, 1)
    y = gg.maxpool(gg.dlarray(x, "SSCB"), 3, stride=2, padding="same")
    ref = TF.max_pool2d(TF.pad(tx, (1, 1, 0, 1), value=-np.inf), 3, stride=2)
    np.testing.assert_allclose(y.numpy(), ref.permute(2, 3, 1, 0).numpy())
    _assert_same(
        lambda v: gg.sum(gg.maxpool(v, (2, 3), stride=(1, 2), padding=1, data_format="SSCB") ** 2),
        lambda v: (TF.max_pool2d(v.permute(3, 2, 0, 1), (2, 3), (1, 2), 1) ** 2).sum(),
        x,
    )


@pytest.mark.parametrize("order", [1, 2])
def test_pooling_same_padding_finite_differences(order):
    x = rnd(5, 6, 2, 2)
    check_gradient(
        lambda x: gg.maxpool(x, 3, stride=2, padding="same", data_format="SSCB"), x, order=order
    )
    check_gradient(
        lambda x: gg.avgpool(x, 3, stride=2, padding="same", data_format="SSCB"), x, order=order
    )


def test_activations_gradients_match_torch():
    x, u = rnd(4, 3), rnd(4, 3)
    cases = [
        (lambda v: gg.relu(v), TF.relu),
        (lambda v: gg.leakyrelu(v, 0.2), lambda v: TF.leaky_relu(v, 0.2)),
        (lambda v: gg.gelu(v, "tanh"), lambda v: TF.gelu(v, approximate="tanh")),
        (gg.sigmoid, torch.sigmoid),
        (gg.tanh, torch.tanh),
        (lambda v: gg.softmax(v, data_format="CB"), lambda v: TF.softmax(v, dim=0)),
    ]
    for gg_fn, torch_fn in cases:
        _assert_same(
            lambda v, f=gg_fn: gg.sum(f(v) * u), lambda v, f=torch_fn: (f(v) * t(u)).sum(), x
        )
    # the exact gelu uses an erf fit good to ~1e-7
    _assert_same(
        lambda v: gg.sum(gg.gelu(v) * u), lambda v: (TF.gelu(v) * t(u)).sum(), x, atol=1e-6
    )


@pytest.mark.parametrize("order", [1, 2])
def test_exact_gelu_sigmoid_tanh_finite_differences(order):
    x = rnd(3, 4) * 2
    check_gradient(gg.gelu, x, order=order)
    check_gradient(gg.sigmoid, x, order=order)
    check_gradient(gg.tanh, x, order=order)
    check_gradient(gg.relu, x, order=order)


def test_softmax_over_the_channel_axis_of_images():
    x = rnd(3, 2, 4, 2)
    y = gg.softmax(gg.dlarray(x, "SSCB"))
    assert gg.dims(y) == "SSCB"
    np.testing.assert_allclose(y.numpy(), TF.softmax(t(x), dim=2).numpy(), atol=1e-12)
    # an unformatted input in the user's layout gives the result back in that layout
    y = gg.softmax(gg.dlarray(x.transpose(3, 2, 0, 1)), data_format="BCSS")
    np.testing.assert_allclose(y.numpy(), TF.softmax(t(x), dim=2).numpy().transpose(3, 2, 0, 1))


@pytest.mark.parametrize("order", [1, 2])
def test_batchnorm_layernorm_images_finite_differences(order):
    x, off, sc = rnd(3, 2, 3, 4), rnd(3), rnd(3)
    rm, rv = rnd(3), np.abs(rnd(3)) + 0.5
    check_gradient(
        lambda x, o, s: gg.batchnorm(x, o, s, data_format="SSCB"), x, off, sc, order=order
    )
    check_gradient(
        lambda x, o, s: gg.batchnorm(x, o, s, rm, rv, training=False, data_format="SSCB"),
        x,
        off,
        sc,
        order=order,
    )
    check_gradient(
        lambda x, o, s: gg.layernorm(x, o, s, data_format="SSCB"), x, off, sc, order=order
    )


def test_batchnorm_layernorm_gradients_match_torch():
    x, off, sc = rnd(3, 3, 4, 5), rnd(4), rnd(4)
    u = rnd(3, 3, 4, 5)
    tu = t(u).permute(3, 2, 0, 1)
    _assert_same(
        lambda x, o, s: gg.sum(gg.batchnorm(x, o, s, data_format="SSCB") * u),
        lambda x, o, s: (
            TF.batch_norm(x.permute(3, 2, 0, 1), None, None, s, o, training=True) * tu
        ).sum(),
        x,
        off,
        sc,
    )
    xc, u2 = rnd(6, 4), rnd(6, 4)
    _assert_same(
        lambda x, o, s: gg.sum(gg.layernorm(x, o, s, data_format="CB") * u2),
        lambda x, o, s: (TF.layer_norm(x.T, (6,), s, o).T * t(u2)).sum(),
        xc,
        rnd(6),
        rnd(6),
    )


def test_batchnorm_running_statistics_follow_the_training_flag():
    x = gg.dlarray(rnd(3, 3, 4, 5) + 2, "SSCB")
    off, sc, rm, rv = rnd(4), rnd(4), rnd(4), np.abs(rnd(4)) + 0.5
    # not training (outside record()): normalize with the running statistics
    y = gg.batchnorm(x, off, sc, rm, rv)
    assert isinstance(y, gg.dlarray)
    shape = (1, 1, 4, 1)
    ref = (x.numpy() - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + 1e-5)
    np.testing.assert_allclose(y.numpy(), ref * sc.reshape(shape) + off.reshape(shape))
    # training (inside record()): batch statistics, and the updated running statistics
    with gg.autograd.record():
        y, new_mean, new_var = gg.batchnorm(x, off, sc, rm, rv)
    tm, tv = t(rm), t(rv)
    ref = TF.batch_norm(t(x.numpy()).permute(3, 2, 0, 1), tm, tv, t(sc), t(off), training=True)
    np.testing.assert_allclose(y.numpy(), ref.permute(2, 3, 1, 0).numpy(), atol=1e-10)
    np.testing.assert_allclose(new_mean.numpy(), tm.numpy(), atol=1e-12)
    np.testing.assert_allclose(new_var.numpy(), tv.numpy(), atol=1e-12)
    # training=False overrides the flag
    with gg.autograd.record():
        assert isinstance(gg.batchnorm(x, off, sc, rm, rv, training=False), gg.dlarray)


def _torch_recurrent(kind, x, h0, w, r, b, rb, c0=None):
    """PyTorch's nn.LSTM / nn.GRU with MATLAB's weights: the gate blocks are in the
    same order (LSTM i, f, g, o; GRU reset, update, candidate), states (H, N)."""
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(
        x.shape[0], h0.shape[0], dtype=torch.float64
    )
    with torch.no_grad():
        module.weight_ih_l0.copy_(w)
        module.weight_hh_l0.copy_(r)
        module.bias_ih_l0.copy_(b)
        module.bias_hh_l0.copy_(rb)
    seq = x.permute(2, 1, 0)  # (C, N, T) -> (T, N, C)
    if kind == "lstm":
        y, (h, c) = module(seq, (h0.T[None], c0.T[None]))
        return y.permute(2, 1, 0), h[0].T, c[0].T, module
    y, h = module(seq, h0.T[None])
    return y.permute(2, 1, 0), h[0].T, None, module


def test_lstm_gradients_match_torch():
    c, n, steps, hid = 3, 2, 4, 3
    x, h0, c0 = rnd(c, n, steps), rnd(hid, n), rnd(hid, n)
    w, r, b = rnd(4 * hid, c) * 0.5, rnd(4 * hid, hid) * 0.5, rnd(4 * hid) * 0.5
    uy, uh, uc = rnd(hid, n, steps), rnd(hid, n), rnd(hid, n)

    def loss(x, h0, c0, w, r, b):
        y, h, cc = gg.lstm(x, h0, c0, w, r, b, data_format="CBT")
        return gg.sum(y * uy) + gg.sum(h * uh) + gg.sum(cc * uc)

    value, grads = _gg_value_and_grads(loss, x, h0, c0, w, r, b)
    tx, th0, tc0 = (t(v).requires_grad_() for v in (x, h0, c0))
    ty, th, tc, module = _torch_recurrent("lstm", tx, th0, t(w), t(r), t(b), t(b) * 0, tc0)
    ref = (ty * t(uy)).sum() + (th * t(uh)).sum() + (tc * t(uc)).sum()
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=1e-10)
    refs = [tx.grad, th0.grad, tc0.grad, module.weight_ih_l0.grad, module.weight_hh_l0.grad]
    refs.append(module.bias_ih_l0.grad)
    for g, rg in zip(grads, refs):
        np.testing.assert_allclose(g, rg.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", ["after-multiplication", "recurrent-bias-after-multiplication"])
def test_gru_gradients_match_torch(mode):
    c, n, steps, hid = 3, 2, 4, 2
    x, h0 = rnd(c, n, steps), rnd(hid, n)
    w, r = rnd(3 * hid, c) * 0.5, rnd(3 * hid, hid) * 0.5
    b = rnd(6 * hid if mode.startswith("recurrent") else 3 * hid) * 0.5
    uy, uh = rnd(hid, n, steps), rnd(hid, n)

    def loss(x, h0, w, r, b):
        y, h = gg.gru(x, h0, w, r, b, reset_gate_mode=mode, data_format="CBT")
        assert h.shape == (hid, n)
        return gg.sum(y * uy) + gg.sum(h * uh)

    value, grads = _gg_value_and_grads(loss, x, h0, w, r, b)
    tx, th0 = t(x).requires_grad_(), t(h0).requires_grad_()
    rb = t(b[3 * hid :]) if mode.startswith("recurrent") else torch.zeros(3 * hid)
    ty, th, _, module = _torch_recurrent("gru", tx, th0, t(w), t(r), t(b[: 3 * hid]), rb)
    ref = (ty * t(uy)).sum() + (th * t(uh)).sum()
    ref.backward()
    np.testing.assert_allclose(value, ref.item(), rtol=1e-10)
    gb = module.bias_ih_l0.grad.numpy()
    if mode.startswith("recurrent"):
        gb = np.concatenate([gb, module.bias_hh_l0.grad.numpy()])
    refs = [tx.grad, th0.grad, module.weight_ih_l0.grad, module.weight_hh_l0.grad]
    for g, rg in zip(grads, [v.numpy() for v in refs] + [gb]):
        np.testing.assert_allclose(g, rg, rtol=1e-9, atol=1e-10)


def test_gru_before_multiplication_matches_its_definition():
    c, n, steps, hid = 2, 3, 3, 2
    x, h0 = rnd(c, n, steps), rnd(hid, n)
    w, r, b = rnd(3 * hid, c), rnd(3 * hid, hid), rnd(3 * hid)
    y, h = gg.gru(gg.dlarray(x, "CBT"), h0, w, r, b, reset_gate_mode="before-multiplication")

    def sig(v):
        return 1 / (1 + np.exp(-v))

    state = h0
    for step in range(steps):
        p = w @ x[:, :, step] + b[:, None]
        reset = sig(p[:hid] + r[:hid] @ state)
        update = sig(p[hid : 2 * hid] + r[hid : 2 * hid] @ state)
        cand = np.tanh(p[2 * hid :] + r[2 * hid :] @ (reset * state))
        state = (1 - update) * cand + update * state
        np.testing.assert_allclose(y.numpy()[:, :, step], state, atol=1e-12)
    np.testing.assert_allclose(h.numpy(), state, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize(
    "mode",
    ["after-multiplication", "before-multiplication", "recurrent-bias-after-multiplication"],
)
def test_gru_finite_differences(order, mode):
    nb = 12 if mode.startswith("recurrent") else 6

    def f(x, h0, w, r, b):
        y, h = gg.gru(x, h0, w, r, b, reset_gate_mode=mode, data_format="CBT")
        return gg.sum(y * y) + gg.sum(h)

    check_gradient(f, rnd(2, 2, 3), rnd(2, 2), rnd(6, 2), rnd(6, 2), rnd(nb), order=order)


@pytest.mark.parametrize("order", [1, 2])
def test_embed_finite_differences_and_torch(order):
    w = rnd(3, 5)
    idx = gg.dlarray(np.array([[0, 4, 2, 4]]), "CB")  # a repeated index accumulates
    check_gradient(lambda w: gg.embed(idx, w), w, order=order)
    u = rnd(3, 4)
    lookup = torch.tensor([0, 4, 2, 4])
    _assert_same(
        lambda w: gg.sum(gg.embed(idx, w) * u),
        lambda w: (TF.embedding(lookup, w.T).T * t(u)).sum(),
        w,
    )


def test_dropout_mask_comes_from_the_library_random_state():
    x = gg.dlarray(np.ones((40, 30)))

    def masked_grad(v):
        with gg.autograd.train_mode():
            y = gg.dropout(v, 0.3)
        return y, gg.dlgradient(gg.sum(y), v)

    gg.random.seed(11)
    y1, g1 = gg.dlfeval(masked_grad, x)
    gg.random.seed(11)
    y2, _ = gg.dlfeval(masked_grad, x)
    y3, _ = gg.dlfeval(masked_grad, x)  # the state advanced: another mask
    np.testing.assert_array_equal(y1.numpy(), y2.numpy())
    assert (y1.numpy() != y3.numpy()).any()
    # the gradient is the same mask, scaled by 1 / (1 - rate)
    np.testing.assert_allclose(g1.numpy(), y1.numpy())
    assert set(np.unique(y1.numpy())) == {0.0, 1 / 0.7}


@pytest.mark.parametrize("order", [1, 2])
def test_dropout_finite_differences(order):
    def f(x):
        gg.random.seed(4)  # the same mask at every evaluation
        with gg.autograd.train_mode():
            return gg.dropout(x, 0.4) * x

    check_gradient(f, rnd(6, 5), order=order)


def test_losses_match_torch():
    y = np.abs(rnd(4, 6)) + 0.1
    y = y / y.sum(axis=0)
    tgt = np.eye(4)[:, R.integers(0, 4, 6)]
    z = rnd(4, 6) * 2

    def loss(fn, **kw):
        return lambda p: fn(p, tgt, data_format="CB", **kw)

    _assert_same(loss(gg.crossentropy), lambda p: -(t(tgt) * torch.log(p)).sum() / 6, y)
    _assert_same(loss(gg.mse), lambda p: TF.mse_loss(p, t(tgt), reduction="sum") / 2 / 6, z)
    _assert_same(loss(gg.l2loss), lambda p: TF.mse_loss(p, t(tgt), reduction="sum") / 6, z)
    _assert_same(loss(gg.l1loss), lambda p: TF.l1_loss(p, t(tgt), reduction="sum") / 6, z)
    _assert_same(
        loss(gg.huber, transition_point=0.5),
        lambda p: TF.huber_loss(p, t(tgt), reduction="sum", delta=0.5) / 6,
        z,
    )
    _assert_same(
        loss(gg.l2loss, normalization="all-elements"),
        lambda p: TF.mse_loss(p, t(tgt), reduction="mean"),
        z,
    )
    # softmax_cross_entropy with integer labels and with probability labels
    lab = np.array([0, 3, 1, 1, 2])
    probs = R.dirichlet(np.ones(4), 5)
    logits = rnd(5, 4)
    _assert_same(
        lambda v: gg.nn.softmax_cross_entropy(v, lab),
        lambda v: TF.cross_entropy(v, torch.tensor(lab)),
        logits,
    )
    _assert_same(
        lambda v: gg.nn.softmax_cross_entropy(v, probs),
        lambda v: TF.cross_entropy(v, t(probs)),
        logits,
    )


@pytest.mark.parametrize("order", [1, 2])
def test_softmax_cross_entropy_probability_labels_finite_differences(order):
    probs = R.dirichlet(np.ones(3), 4)
    check_gradient(lambda z: gg.nn.softmax_cross_entropy(z, probs), rnd(4, 3), order=order)


def test_losses_over_sequences_normalize_by_batch():
    y = gg.dlarray(np.abs(rnd(3, 2, 4)), "CBT")
    tgt = gg.dlarray(rnd(3, 2, 4), "CBT")
    d = y.numpy() - tgt.numpy()
    np.testing.assert_allclose(float(gg.mse(y, tgt)), (d**2).sum() / 2 / 2)
    np.testing.assert_allclose(float(gg.l1loss(y, tgt, normalization="none")), np.abs(d).sum())


def test_onehotencode_matches_torch():
    labels = np.array([[2, 0, 1, 2]])
    y = gg.onehotencode(labels, 0, 4, fmt="CB")
    assert gg.dims(y) == "CB"
    ref = TF.one_hot(torch.tensor(labels[0]), 4).T.numpy()
    np.testing.assert_array_equal(y.numpy(), ref)
    # feature_dim at the end appends the class axis
    y = gg.onehotencode(labels[0], 1)
    np.testing.assert_array_equal(y.numpy(), TF.one_hot(torch.tensor(labels[0])).numpy())


@pytest.mark.parametrize("relu", [False, True])
def test_conv_and_linear_skip_the_input_gradient_nobody_asked_for(monkeypatch, relu):
    from gpugrad.nn import _prims

    calls = []
    real_bwd_data, real_matmul_t = _prims.conv_bwd_data, _prims.matmul_t
    monkeypatch.setattr(
        _prims, "conv_bwd_data", lambda *a, **k: calls.append("bwd_data") or real_bwd_data(*a, **k)
    )
    monkeypatch.setattr(
        _prims, "matmul_t", lambda *a, **k: calls.append("matmul_t") or real_matmul_t(*a, **k)
    )
    rng = np.random.default_rng(3)
    x = gg.dlarray(rng.standard_normal((6, 6, 2, 3)), "SSCB")
    w, b = gg.dlarray(rng.standard_normal((3, 3, 2, 4))), gg.dlarray(rng.standard_normal(4))
    fw, fb = gg.dlarray(rng.standard_normal((5, 144))), gg.dlarray(rng.standard_normal(5))

    def loss(x, w, b, fw, fb):
        y = gg.dlconv(x, w, b, padding="same")
        y = gg.relu(y) if relu else y
        return gg.sum(gg.fullyconnect(y, fw, fb) ** 2)

    def params_only(x, w, b, fw, fb):
        return gg.dlgradient(loss(x, w, b, fw, fb), w, b, fw, fb)

    def with_input(x, w, b, fw, fb):
        return gg.dlgradient(loss(x, w, b, fw, fb), x, w, b, fw, fb)

    skipped = gg.dlfeval(params_only, x, w, b, fw, fb)
    # conv's input gradient is not computed; fullyconnect's input gradient (it feeds
    # the conv weights) and its weight gradient are
    assert calls.count("bwd_data") == 0 and calls.count("matmul_t") == 2
    calls.clear()
    full = gg.dlfeval(with_input, x, w, b, fw, fb)
    assert calls.count("bwd_data") == 1
    assert float(gg.sum(gg.abs(full[0]))) > 0
    for got, want in zip(skipped, full[1:]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
