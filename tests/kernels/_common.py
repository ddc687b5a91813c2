"""Shared helpers of the emulator kernel tests: schedules, tolerances, the ``on_emu``
fixture, the float64 references of conv2d.

Imported explicitly (``from _common import ...``), not through an autouse conftest:
importing ``on_emu`` into a test module switches that module to the emu device, and
the compile/SASS tests beside them must not switch.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpugrad import backend

# emulator thread schedules: forward and reverse block/thread order, and a seeded shuffle
# (a missing barrier shows up as a wrong result under one of them)
SCHEDULES = ("forward", "reverse", "random")
# relative to the sum of |terms| of each output (see assert_close)
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(scope="module", autouse=True)
def on_emu():
    """The importing module's tests run on the emu device (the previous one after)."""
    previous = backend.device()
    backend.set_device("emu")
    yield
    backend.set_device(previous)


def assert_close(got, ref, scale, dtype):
    """|got - ref| <= rtol * scale elementwise, scale = sum of |terms| of each output."""
    got = np.asarray(got, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = np.maximum(np.asarray(scale, np.float64), 1e-30)
    err = np.abs(got - ref) / scale
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else None
    assert not err.size or err.max() <= RTOL[dtype], (
        f"max relative error {err.max():.3g} at {worst}: got {got[worst]}, want {ref[worst]}"
    )


def macro_entry_points(file):
    """(source, {name: declaration}, table names) of a kernel file whose extern "C" entry
    points a macro defines: the emulator's scan (which expands the file's own macros)
    and the names gpugrad/backend/kernels.py launches from ``file``."""
    from gpugrad.backend import emu, kernels

    source = kernels.expand_includes(backend.kernel_dir() / file)
    assert emu._defines_kernels(source)
    decls, _ = emu._find_kernels(emu._mask(emu._kernel_scan_source(source)))
    table = {n for n, info in kernels._TABLE.items() if info.file == file}
    return source, {d.name: d for d in decls}, table


# --------------------------------------------------------------------------- conv2d


# Geometries that test_conv_kernels.py (conv2d.cu) and test_conv_tf32.py (conv2d_tf32.cu)
# both run: each stresses index math the two kernel files share (conv_common.cuh); every
# module adds the cases that target its own tiles.
CONV_GEOMETRIES = {
    # N, H, W, Cin, KH, KW, Cout, stride, padding, dilation, groups
    # Cg = 4: the k walk wraps into the next tap several times per k tile
    "cg4-k-walk-wraps-per-tile": (1, 6, 5, 4, 3, 3, 8, 1, 1, 1, 1),
    "cg12-s2-asym-pad": (2, 9, 8, 12, 3, 3, 8, 2, ((0, 1), (2, 0)), 1, 1),
    "s3-k5-phases-with-uneven-taps": (1, 13, 11, 8, 5, 5, 4, 3, 2, 1, 1),
    "s2-d2-phases-without-taps": (1, 10, 9, 4, 3, 3, 4, 2, 2, 2, 1),
    "s2x3-d3x1-groups": (2, 12, 13, 8, 2, 3, 8, (2, 3), ((1, 0), (0, 2)), (3, 1), 2),
    "cin3-scalar-first-layer": (1, 15, 14, 3, 7, 7, 8, 2, 3, 1, 1),
    "depthwise-cg1": (2, 7, 6, 4, 3, 3, 4, 2, 1, 1, 4),
    "cout65-and-1x1": (1, 6, 7, 8, 1, 1, 65, 1, 0, 1, 1),
}


def offset_view(a):
    """A copy of ``a`` one element past an aligned allocation (4 or 8 bytes off): every
    16-byte vector path of the kernels must fall back to its scalar one."""
    return np.concatenate([[0], a.ravel()]).astype(a.dtype)[1:].reshape(a.shape)


def conv_inputs(rng, case, dtype):
    """Random x, w, bias, dy of a conv case (N, H, W, Cin, KH, KW, Cout, stride,
    padding, dilation, groups), its geometry and the keyword arguments of the kernels."""
    from gpugrad.backend import kernels

    n, h, w_, cin, kh, kw, cout, stride, padding, dilation, groups = case
    hyper = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = rng.standard_normal((n, h, w_, cin)).astype(dtype)
    w = rng.standard_normal((kh, kw, cin // groups, cout)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    geo = kernels.conv_geometry("test", x.shape, w.shape, stride, padding, dilation, groups)
    dy = rng.standard_normal((n, geo.ho, geo.wo, cout)).astype(dtype)
    return x, w, bias, dy, geo, hyper


def conv_patches(x, geo):
    """Yield (r, s, view of the padded input [N, Ho, Wo, Cin] seen by tap (r, s))."""
    (sh, sw), (dh, dw) = geo.stride, geo.dilation
    t, b, l, r_ = geo.pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (t, b), (l, r_), (0, 0)))
    for r in range(geo.kh):
        for s in range(geo.kw):
            h0, w0 = r * dh, s * dw
            yield (
                r,
                s,
                xp[:, h0 : h0 + sh * (geo.ho - 1) + 1 : sh, w0 : w0 + sw * (geo.wo - 1) + 1 : sw],
            )


def conv_refs(x, w, dy, geo):
    """float64 forward, input gradient and filter gradient (and their |.| scales)."""
    g_in, g_out = geo.cin // geo.groups, geo.cout // geo.groups
    y = np.zeros((geo.n, geo.ho, geo.wo, geo.cout))
    y_scale = np.zeros_like(y)
    dw = np.zeros(w.shape)
    dw_scale = np.zeros(w.shape)
    t, b, l, r_ = geo.pad
    dxp = np.zeros((geo.n, geo.h + t + b, geo.w + l + r_, geo.cin))
    dxp_scale = np.zeros_like(dxp)
    (sh, sw), (dh, dw_) = geo.stride, geo.dilation
    for r, s, patch in conv_patches(x, geo):
        for g in range(geo.groups):
            ci, co = slice(g * g_in, (g + 1) * g_in), slice(g * g_out, (g + 1) * g_out)
            wk = w[r, s, :, co].astype(np.float64)
            y[..., co] += patch[..., ci] @ wk
            y_scale[..., co] += np.abs(patch[..., ci]) @ np.abs(wk)
            dw[r, s, :, co] += np.einsum("nhwc,nhwk->ck", patch[..., ci], dy[..., co])
            dw_scale[r, s, :, co] += np.einsum(
                "nhwc,nhwk->ck", np.abs(patch[..., ci]), np.abs(dy[..., co])
            )
            hs = slice(r * dh, r * dh + sh * (geo.ho - 1) + 1, sh)
            ws = slice(s * dw_, s * dw_ + sw * (geo.wo - 1) + 1, sw)
            dxp[:, hs, ws, ci] += dy[..., co] @ wk.T
            dxp_scale[:, hs, ws, ci] += np.abs(dy[..., co]) @ np.abs(wk.T)
    crop = (slice(None), slice(t, t + geo.h), slice(l, l + geo.w), slice(None))
    return (y, y_scale), (dxp[crop], dxp_scale[crop]), (dw, dw_scale)
