"""conv2d.cu under the CUDA emulator: the incremental index walk, the 8x8 float32 tiles,
the sub-pixel backward-data phases and the wave-aligned backward-filter splits.

Cases pick the shapes where each mechanism can go wrong: channel counts that make the
k walk wrap once, twice or never per tile (Cg = 4, 12, 64, 3), output widths below
the k-tile (the pixel walk of the filter gradient wraps rows), strides 2 and 3 with
dilations for which some phases have no taps at all, asymmetric padding, groups,
misaligned views (scalar paths), and more rows/columns than one block tile. Results
are compared with float64 NumPy references (test_kernels_emu.py's), under forward,
reverse and random thread orders; gradients of ``gg.dlconv`` are checked against
finite differences to second order on the emu device.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpugrad as gg

emu = pytest.importorskip("gpugrad.backend.emu", reason="the CUDA emulator is not built yet")
kernels = pytest.importorskip("gpugrad.backend.kernels")

from _common import (  # noqa: E402 - tests/kernels/_common.py
    CONV_GEOMETRIES,
    assert_close,
    conv_inputs,
    conv_refs,
    offset_view,
    on_emu,  # noqa: F401 - module-scoped autouse fixture: this module runs on emu
)


def run_case(rng, case, dtype, schedule="forward", view=False):
    x, w, bias, dy, geo, hyper = conv_inputs(rng, case, dtype)
    if view:  # 4-byte (8-byte) offset views: every vector path must fall back
        x, dy = offset_view(x), offset_view(dy)
    (y_ref, y_scale), (dx_ref, dx_scale), (dw_ref, dw_scale) = conv_refs(x, w, dy, geo)
    with emu.schedule(schedule, seed=5):
        y = kernels.conv2d_fwd(x, w, bias, relu=True, **hyper)
        dx = kernels.conv2d_bwd_data(dy, w, x.shape, **hyper)
        dw = kernels.conv2d_bwd_filter(dy, x, w.shape, **hyper)
    assert_close(y, np.maximum(y_ref + bias, 0), y_scale + np.abs(bias), dtype)
    assert_close(dx, dx_ref, dx_scale, dtype)
    assert_close(dw, dw_ref, dw_scale, dtype)


CASES = {
    **CONV_GEOMETRIES,  # cg4-k-walk-wraps-per-tile: twice per 8-deep k tile here
    # N, H, W, Cin, KH, KW, Cout, stride, padding, dilation, groups
    "cg64-many-k-tiles-and-m-tiles": (2, 11, 7, 64, 3, 3, 16, 1, 1, 1, 1),
    "wo-below-k-tile": (3, 5, 3, 4, 3, 3, 4, 1, 1, 1, 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_cases(rng, name, dtype):
    run_case(rng, CASES[name], dtype)


@pytest.mark.parametrize("schedule", ["reverse", "random"])
@pytest.mark.parametrize("name", ["cg64-many-k-tiles-and-m-tiles", "s2x3-d3x1-groups"])
def test_conv_thread_orders(rng, name, schedule):
    run_case(rng, CASES[name], np.float32, schedule)


@pytest.mark.parametrize("name", ["cg12-s2-asym-pad", "s3-k5-phases-with-uneven-taps"])
def test_conv_misaligned_views_take_the_scalar_paths(rng, name):
    run_case(rng, CASES[name], np.float32, "random", view=True)


def test_bwd_filter_with_many_splits_and_row_wrapping_pixel_walk(rng):
    # P = 4*9*5 = 180 pixels, Wo = 5 < BK = 8: each k-tile spans two output rows
    x = rng.standard_normal((4, 9, 5, 8)).astype(np.float32)
    dy = rng.standard_normal((4, 9, 5, 4)).astype(np.float32)
    w_shape = (3, 3, 8, 4)
    geo = kernels.conv_geometry("t", x.shape, w_shape, 1, 1, 1, 1)
    _, _, (dw_ref, dw_scale) = conv_refs(x, np.zeros(w_shape), dy, geo)
    plan, chunk = kernels.plan_conv_filter("conv2d_bwd_filter_f32", 72, 4, 180, 1, 4, 132)
    assert plan.grid[2] > 1 and chunk % 16 == 0
    with emu.schedule("random", seed=2):
        dw = kernels.conv2d_bwd_filter(dy, x, w_shape, padding=1)
    assert_close(dw, dw_ref, dw_scale, np.float32)


# --------------------------------------------------------------------------- plans


def test_conv_tiles_by_dtype_and_backward_data_phases_on_grid_z():
    fwd = kernels.plan_conv("conv2d_fwd_f32", 200704, 64, 1)
    assert fwd.block == (128, 1, 1) and fwd.grid == (1568, 1, 1)  # 128x64 tiles
    f64 = kernels.plan_conv("conv2d_fwd_f64", 200704, 64, 1)
    assert f64.block == (256, 1, 1) and f64.grid == (3136, 1, 1)  # 64x64 tiles
    bwd = kernels.plan_conv("conv2d_bwd_data_f32", 64 * 28 * 28, 64, 2, phases=4)
    assert bwd.grid == (392, 2, 4)
    with pytest.raises(ValueError, match="dt="):
        kernels.plan_conv_filter("k", 9, 9, 9, 1, 9, 132, dt="f16")


@pytest.mark.parametrize("bps", [2, 3, 4])
@pytest.mark.parametrize(
    "rows, n, p, groups",
    [
        (576, 64, 64 * 56 * 56, 1),
        (1152, 128, 64 * 28 * 28, 1),
        (2304, 256, 64 * 14 * 14, 1),
        (72, 8, 32 * 32 * 32, 8),
        (27, 64, 32 * 112 * 112, 1),
    ],
)
def test_filter_splits_fill_whole_waves(rows, n, p, groups, bps):
    """With enough pixels the grid lands within 10 % of a whole number of waves (the
    old rule, 'about two waves of SMs', left the reference layer at 68 %)."""
    plan, chunk = kernels.plan_conv_filter(
        "conv2d_bwd_filter_f32", rows, n, p, groups, n * groups, 132, blocks_per_sm=bps
    )
    blocks = plan.grid[0] * plan.grid[1] * plan.grid[2]
    slots = 132 * bps
    waves = -(-blocks // slots)
    assert blocks / (waves * slots) >= 0.9, (blocks, slots)
    assert chunk % 16 == 0 and plan.grid[2] * chunk >= p > (plan.grid[2] - 1) * chunk
    assert chunk >= 4 * 8  # every split keeps at least 4 k-tiles


def test_filter_split_of_the_review_layer():
    plan, _ = kernels.plan_conv_filter(
        "conv2d_bwd_filter_f32", 576, 64, 64 * 56 * 56, 1, 64, 132, blocks_per_sm=3
    )
    assert plan.grid == (5, 1, 79)  # 395 blocks on 396 slots: one wave at 99.7 %


# --------------------------------------------------------------------------- op level


@pytest.mark.parametrize(
    "stride, padding, dilation, groups",
    [(2, (1, 0, 2, 1), 1, 1), (3, 1, 2, 1), (1, "same", 1, 2), ((2, 1), 0, (1, 2), 2)],
)
def test_dlconv_gradients_on_emu_to_second_order(rng, stride, padding, dilation, groups):
    x = rng.standard_normal((7, 8, 4, 2))  # 'SSCB': H, W, C, N
    w = rng.standard_normal((3, 3, 4 // groups, 4)) * 0.5
    b = rng.standard_normal(4)

    def f(x, w, b):
        y = gg.dlconv(
            gg.dlarray(x, "SSCB"),
            w,
            b,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
        )
        return gg.sum(gg.tanh(y) * y)

    launches = kernels.launches()
    # why: test_zz_registry runs the core gradient cases itself only when nothing was
    # checked yet; these emu-only checks must not change that when run in a subset
    saved = {order: set(names) for order, names in gg.testing.CHECKED.items()}
    try:
        err = gg.testing.check_gradient(f, x, w, b, order=2)
    finally:
        for order, names in saved.items():
            gg.testing.CHECKED[order].clear()
            gg.testing.CHECKED[order].update(names)
    assert err < 1e-5
    after = kernels.launches()
    for name in ("conv2d_fwd_f64", "conv2d_bwd_data_f64", "conv2d_bwd_filter_f64"):
        assert after.get(name, 0) > launches.get(name, 0), name  # the kernels really ran
