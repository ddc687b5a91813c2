"""Every hand-written kernel run under the CUDA CPU emulator against NumPy.

Shapes are odd on purpose (1, 7, 33, 65, 127: non-multiples of every tile) and the
shared-memory kernels (matmul, conv2d) run with forward, reverse and random thread
schedules, which expose missing barriers. Errors are measured against float64
NumPy references relative to the magnitude of the terms summed, so float32 results
must agree to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpugrad import backend

emu = pytest.importorskip("gpugrad.backend.emu", reason="the CUDA emulator is not built yet")
kernels = pytest.importorskip("gpugrad.backend.kernels")

from _common import (  # noqa: E402 - tests/kernels/_common.py
    RTOL,
    SCHEDULES,
    assert_close,
    conv_inputs,
    conv_refs,
    on_emu,  # noqa: F401 - module-scoped autouse fixture: this module runs on emu
)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- matmul


def matmul_ref(a, b, trans_a, trans_b, bias, relu, alpha, mask):
    a64 = a.astype(np.float64)
    if mask is not None:
        a64 = np.where(mask > 0, a64, 0.0)
    opa = a64.T if trans_a else a64
    opb = b.astype(np.float64).T if trans_b else b.astype(np.float64)
    ref = alpha * (opa @ opb)
    scale = abs(alpha) * (np.abs(opa) @ np.abs(opb))
    if bias is not None:
        ref = ref + bias
        scale = scale + np.abs(bias)
    if relu:
        ref = np.maximum(ref, 0.0)
    return ref, scale


def run_matmul(
    rng,
    m,
    n,
    k,
    dtype,
    trans_a=False,
    trans_b=False,
    bias=False,
    relu=False,
    alpha=1.0,
    mask=False,
    tile=None,
):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    bias_v = rng.standard_normal(n).astype(dtype) if bias else None
    mask_v = rng.standard_normal(a.shape).astype(dtype) if mask else None
    got = kernels.matmul(
        a,
        b,
        trans_a=trans_a,
        trans_b=trans_b,
        bias=bias_v,
        relu=relu,
        alpha=alpha,
        mask=mask_v,
        tile=tile,
    )
    assert got.dtype == dtype and got.shape == (m, n)
    ref, scale = matmul_ref(a, b, trans_a, trans_b, bias_v, relu, alpha, mask_v)
    assert_close(got, ref, scale, dtype)


ODD_SHAPES = [
    (1, 1, 1),
    (7, 33, 65),
    (33, 7, 127),
    (65, 127, 33),
    (127, 65, 7),
    (1, 129, 17),
    (130, 1, 9),
    (5, 6, 0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)]
)
@pytest.mark.parametrize("m,n,k", ODD_SHAPES)
def test_matmul_odd_shapes(rng, m, n, k, trans_a, trans_b, dtype):
    run_matmul(rng, m, n, k, dtype, trans_a, trans_b)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    "dtype,tile",
    [
        (np.float32, "large"),
        (np.float32, "mid"),
        (np.float32, "small"),
        (np.float64, "large"),
        (np.float64, "small"),
    ],
)
@pytest.mark.parametrize("m,n,k", [(136, 132, 40), (131, 137, 37)])  # aligned float4 / scalar
def test_matmul_every_tile_every_schedule(rng, m, n, k, dtype, tile, schedule):
    with emu.schedule(schedule, seed=7):
        for trans_a, trans_b in [(False, False), (True, True)]:
            run_matmul(rng, m, n, k, dtype, trans_a, trans_b, bias=True, relu=True, tile=tile)
        run_matmul(rng, m, n, k, dtype, True, False, mask=True, alpha=0.5, tile=tile)
        run_matmul(rng, m, n, k, dtype, False, True, mask=True, relu=True, tile=tile)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(7, 33, 65), (65, 127, 33), (33, 1, 127)])
def test_matmul_epilogue_and_mask_prologue(rng, m, n, k, dtype):
    for trans_a in (False, True):
        run_matmul(rng, m, n, k, dtype, trans_a, False, bias=True)
        run_matmul(rng, m, n, k, dtype, trans_a, True, bias=True, relu=True, alpha=-1.5)
        run_matmul(rng, m, n, k, dtype, trans_a, False, mask=True)
        run_matmul(rng, m, n, k, dtype, trans_a, True, mask=True, bias=True, relu=True)


def test_matmul_relu_backward_fusion_matches_unfused(rng):
    # dX = (dY * [Y > 0]) @ W, computed with the mask prologue on trans/no-trans operands
    y = rng.standard_normal((33, 65)).astype(np.float32)
    dy = rng.standard_normal((33, 65)).astype(np.float32)
    w = rng.standard_normal((65, 7)).astype(np.float32)
    fused = kernels.matmul(dy, w, mask=y)
    unfused = kernels.matmul(kernels.relu_bwd(dy, y), w)
    np.testing.assert_allclose(fused, unfused, rtol=1e-6, atol=1e-6)
    fused_t = kernels.matmul(dy, dy, trans_a=True, mask=y)  # (dY*[Y>0])^T dY
    ref = np.where(y > 0, dy, 0).astype(np.float64).T @ dy
    assert_close(fused_t, ref, np.abs(dy).T @ np.abs(dy), np.float32)


def test_matmul_unaligned_and_strided_inputs(rng):
    buf = rng.standard_normal(33 * 65 + 1).astype(np.float32)
    a = buf[1:].reshape(33, 65)  # 4-byte offset: the scalar load path
    b = rng.standard_normal((40, 65)).astype(np.float32)[:, ::1].T  # non-contiguous view
    got = kernels.matmul(a, b)
    ref = a.astype(np.float64) @ b
    assert_close(got, ref, np.abs(a) @ np.abs(b), np.float32)


def test_matmul_errors(monkeypatch):
    a = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        kernels.matmul(a, np.ones((4, 2), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        kernels.matmul(a, np.ones((3, 2), np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.matmul(a.astype(np.int64), a.T.astype(np.int64))
    with pytest.raises(ValueError, match="2-D"):
        kernels.matmul(np.ones(3, np.float32), a)
    with pytest.raises(ValueError, match="bias"):
        kernels.matmul(a, a.T, bias=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="mask"):
        kernels.matmul(a, a.T, mask=np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="tile"):
        kernels.matmul(a, a.T, tile="huge")
    monkeypatch.setattr(kernels, "INT32_MAX", 10)
    with pytest.raises(ValueError, match="32-bit"):
        kernels.matmul(a, a.T)


def test_launch_counts_and_listing(rng):
    kernels.reset_launches()
    a = rng.standard_normal((5, 3)).astype(np.float32)
    kernels.matmul(a, a, trans_b=True)
    kernels.relu_fwd(a)
    kernels.relu_fwd(a)
    counts = kernels.launches()
    assert counts["relu_fwd_f32"] == 2
    assert sum(v for name, v in counts.items() if name.startswith("matmul_")) == 1
    rows = kernels.list()
    names = {row["name"] for row in rows}
    for op in (
        "matmul",
        "conv2d_fwd",
        "conv2d_bwd_data",
        "conv2d_bwd_filter",
        "relu_fwd",
        "relu_bwd",
        "lstm_fwd",
        "lstm_bwd",
    ):
        assert any(name.startswith(op) for name in names), op
    assert all({"name", "file", "op"} <= set(row) for row in rows)
    source = {row["file"] for row in rows}
    assert all((backend.kernel_dir() / f).is_file() for f in source)


def test_launch_plans_are_shared_pure_functions():
    big = kernels.plan_matmul(4096, 4096, 4096, "f32", 132)
    assert big.kernel == "matmul_fwd_f32" and big.grid == (32 * 32, 1, 1)
    assert kernels.plan_matmul(1024, 1024, 64, "f32", 132).kernel == "matmul_mid_f32"
    assert kernels.plan_matmul(64, 10, 32, "f32", 132).kernel == "matmul_small_f32"
    skinny = kernels.plan_matmul(64, 10, 784, "f32", 132, trans_b=True)  # split-K
    assert skinny.kernel == "matmul_mid_nt_f32" and skinny.grid[2] > 1
    plan, chunk = kernels.plan_conv_filter("k", 144, 16, 32 * 32 * 32, 1, 16, 132)
    assert chunk % 16 == 0 and plan.grid[2] * chunk >= 32 * 32 * 32 > (plan.grid[2] - 1) * chunk


# --------------------------------------------------------------------------- relu


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 3, 4, 7, 33, 65, 127, 1024, 4099])
def test_relu_fwd_bwd(rng, n, dtype):
    x = rng.standard_normal(n).astype(dtype)
    x[::5] = 0.0
    dy = rng.standard_normal(n).astype(dtype)
    np.testing.assert_array_equal(kernels.relu_fwd(x), np.maximum(x, 0))
    np.testing.assert_array_equal(kernels.relu_bwd(dy, x), np.where(x > 0, dy, 0))
    # unaligned views take the scalar path
    buf = np.concatenate([[0], x]).astype(dtype)
    np.testing.assert_array_equal(kernels.relu_fwd(buf[1:]), np.maximum(x, 0))


def test_relu_shapes_nan_and_zero():
    x = np.array([[-1.0, 0.0, -0.0], [np.nan, 2.0, np.inf]], np.float32)
    y = kernels.relu_fwd(x)
    assert y.shape == x.shape and np.isnan(y[1, 0])
    np.testing.assert_array_equal(y[0], [0, 0, 0])
    dx = kernels.relu_bwd(np.ones_like(x), x)
    np.testing.assert_array_equal(dx, [[0, 0, 0], [0, 1, 1]])  # derivative 0 at 0
    assert kernels.relu_fwd(np.zeros((0, 3), np.float32)).shape == (0, 3)
    with pytest.raises(ValueError, match="shape"):
        kernels.relu_bwd(np.ones(3, np.float32), np.ones(4, np.float32))


# --------------------------------------------------------------------------- lstm


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_fwd_ref(gates_pre, c_prev):
    z = gates_pre.astype(np.float64)
    hid = c_prev.shape[1]
    i, f = sigmoid(z[:, :hid]), sigmoid(z[:, hid : 2 * hid])
    g, o = np.tanh(z[:, 2 * hid : 3 * hid]), sigmoid(z[:, 3 * hid :])
    c = f * c_prev + i * g
    return o * np.tanh(c), c, np.concatenate([i, f, g, o], axis=1)


def lstm_bwd_ref(dh, dc, gates, c_prev, c):
    hid = c.shape[1]
    i, f, g, o = (gates[:, k * hid : (k + 1) * hid] for k in range(4))
    tc = np.tanh(c)
    dct = (0 if dc is None else dc) + dh * o * (1 - tc**2)
    dpre = np.concatenate(
        [
            dct * g * i * (1 - i),
            dct * c_prev * f * (1 - f),
            dct * i * (1 - g**2),
            dh * tc * o * (1 - o),
        ],
        axis=1,
    )
    return dpre, dct * f


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bsz,hid", [(1, 1), (3, 7), (7, 33), (2, 65)])
def test_lstm_cell_fwd_bwd_vs_numpy(rng, bsz, hid, dtype):
    gates_pre = (2 * rng.standard_normal((bsz, 4 * hid))).astype(dtype)
    gates_pre[0, 0] = 80.0  # saturated gates must not give NaN
    gates_pre[-1, -1] = -80.0
    c_prev = rng.standard_normal((bsz, hid)).astype(dtype)
    h, c, gates = kernels.lstm_cell_fwd(gates_pre, c_prev)
    h_ref, c_ref, gates_ref = lstm_fwd_ref(gates_pre, c_prev)
    tol = dict(rtol=RTOL[dtype], atol=RTOL[dtype])
    np.testing.assert_allclose(h, h_ref, **tol)
    np.testing.assert_allclose(c, c_ref, **tol)
    np.testing.assert_allclose(gates, gates_ref, **tol)
    dh = rng.standard_normal((bsz, hid)).astype(dtype)
    dc = rng.standard_normal((bsz, hid)).astype(dtype)
    for dc_in in (dc, None):
        dpre, dc_prev = kernels.lstm_cell_bwd(dh, dc_in, gates, c_prev, c)
        dpre_ref, dc_prev_ref = lstm_bwd_ref(dh, dc_in, gates, c_prev, c)
        np.testing.assert_allclose(dpre, dpre_ref, **tol)
        np.testing.assert_allclose(dc_prev, dc_prev_ref, **tol)


def test_lstm_cell_bwd_matches_finite_differences(rng):
    bsz, hid = 2, 3
    gates_pre = rng.standard_normal((bsz, 4 * hid))
    c_prev = rng.standard_normal((bsz, hid))
    wh = rng.standard_normal((bsz, hid))  # L = <h, wh> + <c, wc>
    wc = rng.standard_normal((bsz, hid))

    def loss(gp, cp):
        h, c, _ = kernels.lstm_cell_fwd(gp, cp)
        return float(np.sum(h * wh) + np.sum(c * wc))

    _, c, gates = kernels.lstm_cell_fwd(gates_pre, c_prev)
    dpre, dc_prev = kernels.lstm_cell_bwd(wh, wc, gates, c_prev, c)
    eps = 1e-6
    for x, grad in ((gates_pre, dpre), (c_prev, dc_prev)):
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            saved = x[idx]
            x[idx] = saved + eps
            up = loss(gates_pre, c_prev)
            x[idx] = saved - eps
            down = loss(gates_pre, c_prev)
            x[idx] = saved
            fd[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_lstm_errors():
    with pytest.raises(ValueError, match="gates_pre"):
        kernels.lstm_cell_fwd(np.ones((2, 7)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="c_prev"):
        kernels.lstm_cell_fwd(np.ones((2, 8)), np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="dh"):
        kernels.lstm_cell_bwd(
            np.ones((2, 3)), None, np.ones((2, 8)), np.ones((2, 2)), np.ones((2, 2))
        )


# --------------------------------------------------------------------------- conv2d


CONV_CASES = [
    # N, H, W, Cin, KH, KW, Cout, stride, padding, dilation, groups
    (2, 7, 9, 3, 3, 3, 5, 1, 1, 1, 1),
    (1, 11, 8, 4, 3, 2, 8, (2, 1), ((0, 2), (1, 0)), (1, 2), 2),
    (2, 9, 9, 8, 3, 3, 8, 2, ((1, 1), (1, 1)), 2, 1),  # channels % 4 == 0: vector path
    (1, 5, 6, 6, 1, 1, 9, 1, 0, 1, 3),
    (3, 6, 7, 8, 3, 3, 12, (1, 2), ((2, 0), (0, 1)), 1, 4),
    (1, 33, 5, 4, 5, 3, 4, 3, 2, 1, 1),
    (2, 7, 7, 4, 3, 3, 8, 1, 1, 1, 4),  # depthwise, channel multiplier 2
    (2, 10, 9, 1, 1, 1, 65, 1, 0, 1, 1),  # Cout > one 64-wide tile
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_conv2d_fwd_bwd(rng, case, dtype, schedule):
    x, w, bias, dy, geo, hyper = conv_inputs(rng, case, dtype)
    (y_ref, y_scale), (dx_ref, dx_scale), (dw_ref, dw_scale) = conv_refs(x, w, dy, geo)
    with emu.schedule(schedule, seed=3):
        y = kernels.conv2d_fwd(x, w, **hyper)
        y_br = kernels.conv2d_fwd(x, w, bias, relu=True, **hyper)
        dx = kernels.conv2d_bwd_data(dy, w, x.shape, **hyper)
        dw = kernels.conv2d_bwd_filter(dy, x, w.shape, **hyper)
    assert y.dtype == dx.dtype == dw.dtype == dtype
    assert_close(y, y_ref, y_scale, dtype)
    assert_close(y_br, np.maximum(y_ref + bias, 0), y_scale + np.abs(bias), dtype)
    assert_close(dx, dx_ref, dx_scale, dtype)
    assert_close(dw, dw_ref, dw_scale, dtype)
    if dtype == np.float64:  # adjoint identity <conv(x), dy> = <x, dx> = <w, dw>
        inner = np.vdot(y, dy)
        assert np.isclose(np.vdot(x, dx), inner, rtol=1e-10)
        assert np.isclose(np.vdot(w, dw), inner, rtol=1e-10)


def test_conv2d_bwd_filter_split_k_is_deterministic(rng):
    x = rng.standard_normal((4, 17, 15, 4)).astype(np.float32)
    w_shape = (3, 3, 4, 6)
    dy = rng.standard_normal((4, 17, 15, 6)).astype(np.float32)
    plan, _ = kernels.plan_conv_filter("k", 36, 6, 4 * 17 * 15, 1, 6, kernels.EMU_NUM_SMS)
    assert plan.grid[2] > 1  # really split
    with emu.schedule("random", seed=11):
        first = kernels.conv2d_bwd_filter(dy, x, w_shape, padding=1)
        second = kernels.conv2d_bwd_filter(dy, x, w_shape, padding=1)
    np.testing.assert_array_equal(first, second)


def test_conv2d_errors():
    x = np.ones((1, 5, 5, 4), np.float32)
    with pytest.raises(ValueError, match="channels"):
        kernels.conv2d_fwd(x, np.ones((3, 3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="groups"):
        kernels.conv2d_fwd(x, np.ones((3, 3, 2, 3), np.float32), groups=2)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.conv2d_fwd(x, np.ones((7, 7, 4, 4), np.float32))
    with pytest.raises(ValueError, match="NHWC"):
        kernels.conv2d_fwd(x[0], np.ones((3, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="dy must have shape"):
        kernels.conv2d_bwd_data(
            np.ones((1, 4, 4, 4), np.float32), np.ones((3, 3, 4, 4), np.float32), x.shape
        )
    with pytest.raises(TypeError, match="w has dtype"):
        kernels.conv2d_fwd(x, np.ones((3, 3, 4, 4)))
    with pytest.raises(ValueError, match="bias"):
        kernels.conv2d_fwd(x, np.ones((3, 3, 4, 4), np.float32), np.ones(3, np.float32))


# --------------------------------------------------------------------------- sanitizer

ASAN_SCRIPT = """
import numpy as np
from gpugrad import backend
from gpugrad.backend import kernels as K
backend.set_device("emu")
rng = np.random.default_rng(0)
for dt, tiles in ((np.float32, ("large", "mid", "small")), (np.float64, ("large", "small"))):
    for m, n, k in [(1, 1, 1), (131, 137, 37), (136, 132, 40)]:
        for ta in (0, 1):
            for tb in (0, 1):
                for tile in tiles:
                    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
                    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
                    K.matmul(a, b, trans_a=ta, trans_b=tb, bias=np.ones(n, dt), relu=True,
                             mask=a, tile=tile)
    x = rng.standard_normal(1027).astype(dt)
    K.relu_fwd(x[1:]), K.relu_bwd(x[1:], x[:-1]), K.relu_fwd(x)
    c_prev = rng.standard_normal((3, 5)).astype(dt)
    h, c, gates = K.lstm_cell_fwd(rng.standard_normal((3, 20)).astype(dt), c_prev)
    K.lstm_cell_bwd(h, c, gates, c_prev, c)
    for N, H, W, C, kh, kw, co, st, pad, dil, g in [
        (2, 7, 9, 3, 3, 3, 5, 1, 1, 1, 1), (1, 11, 8, 4, 3, 2, 8, (2, 1), ((0, 2), (1, 0)), (1, 2), 2),
        (2, 9, 9, 8, 3, 3, 8, 2, 1, 2, 1), (2, 10, 9, 4, 1, 1, 65, 1, 0, 1, 1)]:
        hy = dict(stride=st, padding=pad, dilation=dil, groups=g)
        x = rng.standard_normal((N, H, W, C)).astype(dt)
        w = rng.standard_normal((kh, kw, C // g, co)).astype(dt)
        y = K.conv2d_fwd(x, w, np.ones(co, dt), relu=True, **hy)
        K.conv2d_bwd_data(y, w, x.shape, **hy), K.conv2d_bwd_filter(y, x, w.shape, **hy)
print("ASAN-CLEAN")
"""


def test_kernels_clean_under_address_sanitizer():
    """Every kernel on edge shapes, built with ASan: no out-of-bounds access."""
    import os

    try:
        env = emu.asan_env(dict(os.environ, GPUGRAD_EMU_SANITIZE="1"))
    except Exception as exc:  # no libasan for this compiler
        pytest.skip(f"AddressSanitizer runtime not available: {exc}")
    result = emu.run_in_subprocess(ASAN_SCRIPT, asan=True, env=env, timeout=600)
    assert result.returncode == 0 and "ASAN-CLEAN" in result.stdout, result.stderr[-6000:]


def test_compile_error_shows_the_log_with_file_and_line(monkeypatch):
    info = kernels.KernelInfo("broken_f32", "broken.cu", "test", "f32")
    monkeypatch.setitem(kernels._TABLE, info.name, info)
    source = 'extern "C" __global__ void broken_f32(float* x) {\n  x[0] = not_declared;\n}\n'
    monkeypatch.setitem(kernels._sources, "broken.cu", source)
    with pytest.raises(kernels.KernelCompileError, match=r"broken\.cu") as caught:
        kernels.get_kernel("broken_f32")((1, 1, 1), (1, 1, 1), (np.zeros(1, np.float32),))
    message = str(caught.value)
    assert "not_declared" in message and "broken.cu:2" in message, message
    assert kernels.launches().get("broken_f32", 0) == 0
