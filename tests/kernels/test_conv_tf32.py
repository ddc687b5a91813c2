"""The TF32 tensor-core convolution (kernels/conv2d_tf32.cu) under the CPU emulator:
forward, backward data (sub-pixel phases) and backward filter (split over pixels)
against float64 NumPy references, in both precisions, every thread schedule, the
scalar (unaligned) gathers and ring depths 2-4; accuracy against float64 reported per
mode (TF32 ~1e-3 relative, 3xTF32 at FP32 level); the ``gg.kernels.allow_tf32`` switch
at the op level (``gg.dlconv`` and its gradients; float64 never on TF32).

Errors are relative to the magnitude of the summed terms of each output (see
``_common.assert_close``). In TF32 mode the reference is the exact float64 result of
the TF32-rounded operands, so the kernels are checked to FP32 accumulation accuracy.
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
    macro_entry_points,
    offset_view,
    on_emu,  # noqa: F401 - module-scoped autouse fixture: this module runs on emu
)


@pytest.fixture(autouse=True)
def tf32_off():
    saved = (kernels.allow_tf32, kernels.tf32_mode)
    yield
    kernels.allow_tf32, kernels.tf32_mode = saved


def tf32_round(x):
    """cvt.rna.tf32.f32 in NumPy: keep 10 mantissa bits, round half away from zero."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32)
    return np.where(finite, rounded, bits.astype(np.uint32)).view(np.float32)


def run_case(rng, case, precision, schedule="forward", view=False):
    x, w, bias, dy, geo, hyper = conv_inputs(rng, case, np.float32)
    if view:  # 4-byte offset views: every 16-byte cp.async path must fall back
        x, dy = offset_view(x), offset_view(dy)
    ops = (x, w, dy)
    if precision == "tf32":  # the exact result of the rounded operands
        ops = tuple(tf32_round(a) for a in ops)
    (y_ref, y_scale), (dx_ref, dx_scale), (dw_ref, dw_scale) = conv_refs(*ops, geo)
    kernels.reset_launches()
    with emu.schedule(schedule, seed=5):
        y = kernels.conv2d_fwd(x, w, bias, relu=True, precision=precision, **hyper)
        dx = kernels.conv2d_bwd_data(dy, w, x.shape, precision=precision, **hyper)
        dw = kernels.conv2d_bwd_filter(dy, x, w.shape, precision=precision, **hyper)
    ran = set(kernels.launches())
    assert {f"conv2d_{d}_{precision}_f32" for d in ("fwd", "bwd_data", "bwd_filter")} <= ran
    assert not any(name.endswith("_f32") and "tf32" not in name for name in ran)
    assert y.dtype == dx.dtype == dw.dtype == np.float32
    assert_close(y, np.maximum(y_ref + bias, 0), y_scale + np.abs(bias), np.float32)
    assert_close(dx, dx_ref, dx_scale, np.float32)
    assert_close(dw, dw_ref, dw_scale, np.float32)


CASES = {
    **CONV_GEOMETRIES,
    # N, H, W, Cin, KH, KW, Cout, stride, padding, dilation, groups
    # 272 rows (2 m tiles), 72 filters (2 n tiles, the second partial), 5+ k tiles
    # (the 4-stage ring wraps), 17 pixel k tiles split over blocks in backward filter
    "m-n-tiles-ring-wraps": (1, 17, 16, 8, 3, 3, 72, 1, 1, 1, 1),
    # backward filter: 216 rows = one 256-row tile or two 192-row ones (the second with
    # 24 rows: its warps 1-2 skip the mma), 72 pixels = 5 k tiles
    "cg24-filter-rows-216": (1, 9, 8, 24, 3, 3, 8, 1, 1, 1, 1),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_tf32_cases(rng, name):
    run_case(rng, CASES[name], "tf32")


@pytest.mark.parametrize(
    "name", ["cg4-k-walk-wraps-per-tile", "s2x3-d3x1-groups", "cout65-and-1x1"]
)
def test_conv_3xtf32_cases(rng, name):
    run_case(rng, CASES[name], "3xtf32")


@pytest.mark.parametrize(
    "schedule, precision, stages", [("reverse", "tf32", 4), ("random", "3xtf32", 3)]
)
def test_conv_tf32_thread_orders(rng, monkeypatch, schedule, precision, stages):
    """A missing barrier or an early read of a cp.async stage shows up here (the
    emulator lands copies at wait_group, not before); ring depths 4 and 3."""
    monkeypatch.setattr(kernels, "CONV_TF32_MAX_STAGES", stages)
    run_case(rng, CASES["m-n-tiles-ring-wraps"], precision, schedule)


@pytest.mark.parametrize(
    "name, precision",
    [("cg12-s2-asym-pad", "tf32"), ("s3-k5-phases-with-uneven-taps", "3xtf32")],
)
def test_conv_tf32_misaligned_views_take_the_scalar_paths(rng, name, precision):
    run_case(rng, CASES[name], precision, "random", view=True)


@pytest.mark.parametrize(
    "warps, precision, schedule, view",
    [(3, "tf32", "random", False), (3, "3xtf32", "reverse", True), (4, "tf32", "random", False)],
)
def test_conv_tf32_filter_block_shapes(rng, monkeypatch, warps, precision, schedule, view):
    """Backward filter in 3-warp blocks (96 threads, 192 rows: the same kernel, its
    loaders walk 6 threads per pixel row; the scalar paths with ``view``) and 4-warp ones."""
    monkeypatch.setattr(kernels, "conv_tf32_filter_warps", warps)
    plan = kernels.plan_conv_tf32_filter(
        f"conv2d_bwd_filter_{precision}_f32", 216, 8, 72, 1, 8, 132, 227 * 1024, warps
    )[0]
    assert plan.block == (32 * warps, 1, 1) and plan.grid[0] == (2 if warps == 3 else 1)
    run_case(rng, CASES["cg24-filter-rows-216"], precision, schedule, view=view)


def test_conv_tf32_two_stage_ring(rng, monkeypatch):
    """The shallowest ring (GPUs with ~100 KiB of shared memory per block): 2 stages,
    cp.async.wait_group 0; the 3-stage ring (A100) is what thread_orders[random] covers
    with 3xTF32 below."""
    monkeypatch.setattr(kernels, "CONV_TF32_MAX_STAGES", 2)
    assert kernels.conv_tf32_stages(227 * 1024)[0] == 2
    run_case(rng, CASES["m-n-tiles-ring-wraps"], "tf32")


def test_conv_tf32_plans():
    fwd = kernels.plan_conv_tf32("conv2d_fwd_tf32_f32", 200704, 64, 1)
    assert fwd.block == (128, 1, 1) and fwd.grid == (784, 1, 1)  # 256x64 tiles
    bwd = kernels.plan_conv_tf32("conv2d_bwd_data_3xtf32_f32", 64 * 28 * 28, 128, 2, phases=4)
    assert bwd.grid == (392, 2, 4)
    # the case above really splits its filter gradient over blocks (grid.z > 1)
    plan, chunk = kernels.plan_conv_filter(
        "conv2d_bwd_filter_tf32_f32", 72, 72, 272, 1, 72, 132, 2, "f32", kernels.CONV_TF32_TILE
    )
    assert plan.grid[2] > 1 and chunk % 16 == 0 and plan.block == (128, 1, 1)
    # the bench layer's 576 filter rows: three 192-row tiles (96 threads), 3 blocks per SM
    # in a 3-stage ring each, one wave of 393 blocks on 132 SMs; 3xTF32 (247 registers:
    # 2 blocks of 3 warps per SM) stays on 256-row tiles
    plan, chunk, stages, smem = kernels.plan_conv_tf32_filter(
        "conv2d_bwd_filter_tf32_f32", 576, 64, 200704, 1, 64, 132, 227 * 1024
    )
    assert plan.block == (96, 1, 1) and plan.grid == (3, 1, 131) and stages == 3
    assert 3 * (smem + 1024) <= 228 * 1024
    plan = kernels.plan_conv_tf32_filter(
        "conv2d_bwd_filter_3xtf32_f32", 576, 64, 200704, 1, 64, 132, 227 * 1024
    )[0]
    assert plan.block == (128, 1, 1) and plan.grid == (3, 1, 88)


def test_macro_made_entry_points_match_the_kernel_table():
    """conv2d_tf32.cu defines its six extern "C" entry points with one macro per
    precision: the emulator's scan (which expands the file's own macros) finds exactly
    the names kernels.py launches, with conv2d.cu's parameters plus ``stages`` and the
    128-thread launch bound."""
    source, found, table = macro_entry_points("conv2d_tf32.cu")
    assert set(found) == table and len(table) == 6
    params = {"fwd": 23, "bwd_data": 20, "bwd_filter": 21}  # 16 geometry + stages + ...
    for name, d in found.items():
        op = name.removeprefix("conv2d_").rsplit("_", 2)[0]
        assert len(d.params) == params[op], (name, d.params)
        assert emu._int_value(d.launch_bounds, source, ()) == 128


def test_conv_tf32_stages_fit_the_shared_memory(monkeypatch, rng):
    per = kernels.conv_tf32_stage_bytes()
    assert kernels.conv_tf32_stages(4 * per) == (4, 4 * per)
    assert kernels.conv_tf32_stages(4 * per - 1) == (3, 3 * per)
    with pytest.raises(ValueError, match="needs .* bytes of shared memory"):
        kernels.conv_tf32_stages(2 * per - 1)
    # too little shared memory: allow_tf32 keeps FP32, an explicit precision raises
    small = dict(kernels._device_props(), max_shared_optin=2 * per - 1)
    monkeypatch.setattr(kernels, "_device_props", lambda: small)
    x = rng.standard_normal((1, 5, 5, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    with kernels.tf32():
        kernels.reset_launches()
        kernels.conv2d_fwd(x, w, padding=1)
        assert "conv2d_fwd_f32" in kernels.launches()
        assert not any("tf32" in n for n in kernels.launches())
    with pytest.raises(ValueError, match="needs .* bytes of shared memory"):
        kernels.conv2d_fwd(x, w, padding=1, precision="tf32")


def test_conv_tf32_precision_argument_errors():
    x = np.ones((1, 4, 4, 4))
    w = np.ones((3, 3, 4, 4))
    with pytest.raises(TypeError, match="conv2d_fwd: .*float32"):
        kernels.conv2d_fwd(x, w, precision="tf32")
    with pytest.raises(TypeError, match="conv2d_bwd_filter: .*float32"):
        kernels.conv2d_bwd_filter(np.ones((1, 2, 2, 4)), x, w.shape, precision="3xtf32")
    with pytest.raises(ValueError, match="conv2d_bwd_data: precision must be"):
        kernels.conv2d_bwd_data(np.ones((1, 2, 2, 4)), w, x.shape, precision="bf16")


def test_conv_accuracy_against_float64(rng):
    """TF32 loses ~3 decimal digits in every direction; 3xTF32 gets them back to the
    FP32 kernel's level."""
    case = (1, 8, 8, 32, 3, 3, 16, 1, 1, 1, 1)  # 288-term sums
    x, w, _, dy, geo, hyper = conv_inputs(rng, case, np.float32)
    refs = conv_refs(x, w, dy, geo)
    err = {}
    for p in ("fp32", "tf32", "3xtf32"):
        got = (
            kernels.conv2d_fwd(x, w, precision=p, **hyper),
            kernels.conv2d_bwd_data(dy, w, x.shape, precision=p, **hyper),
            kernels.conv2d_bwd_filter(dy, x, w.shape, precision=p, **hyper),
        )
        err[p] = [
            float(np.max(np.abs(g - ref) / np.maximum(scale, 1e-30)))
            for g, (ref, scale) in zip(got, refs)
        ]
    print(
        "max error relative to the summed |terms| vs float64 (fwd, bwd_data, bwd_filter):",
        {p: [f"{e:.2e}" for e in v] for p, v in err.items()},
    )
    for d in range(3):
        assert err["fp32"][d] < 1e-6
        assert 1e-5 < err["tf32"][d] <= 2.0**-10  # two operands rounded by <= 2^-11 each
        assert err["tf32"][d] > 20 * err["fp32"][d]
        assert err["3xtf32"][d] <= 2 * max(err["fp32"][d], 1e-7)


# --------------------------------------------------------------------------- the switch


def test_allow_tf32_switches_dlconv_and_its_gradients(rng):
    x = rng.standard_normal((9, 8, 8, 2)).astype(np.float32)  # 'SSCB'
    w = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)

    def forward_backward():
        kernels.reset_launches()
        gg.kernels.reset_report()

        def conv(x, w, b):
            return gg.dlconv(gg.dlarray(x, "SSCB"), w, b, stride=2, padding=1)

        args = (gg.dlarray(x), gg.dlarray(w), gg.dlarray(b))
        y = conv(*args)
        grads = gg.gradient(lambda *a: gg.sum(conv(*a) * y), argnums=(0, 1, 2))(*args)
        return y.numpy(), [g.numpy() for g in grads], set(kernels.launches())

    assert kernels.allow_tf32 is False  # PyTorch's default: FP32 exactness
    y32, g32, names = forward_backward()
    assert not any("tf32" in n for n in names)
    assert {"conv2d_fwd_f32", "conv2d_bwd_data_f32", "conv2d_bwd_filter_f32"} <= names

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    with kernels.tf32():
        y, g, names = forward_backward()
        report = str(gg.kernels.report())
    assert {"conv2d_fwd_tf32_f32", "conv2d_bwd_data_tf32_f32", "conv2d_bwd_filter_tf32_f32"} <= (
        names
    )
    assert "conv2d_fwd_f32" not in names
    assert " tf32" in report and "conv2d_bwd_filter" in report
    assert 1e-6 < rel(y, y32) < 3e-3
    for gi, gi32 in zip(g[:2], g32[:2]):  # TF32 too (~1e-3), not FP32-exact
        assert 1e-6 < rel(gi, gi32) < 1e-2
    np.testing.assert_allclose(g[2], g32[2], rtol=1e-2)  # db: a plain sum of dy

    with kernels.tf32(mode="3xtf32"):
        y3, g3, names = forward_backward()
    assert "conv2d_bwd_data_3xtf32_f32" in names
    assert rel(y3, y32) < 1e-5
    for gi, gi32 in zip(g3, g32):
        assert rel(gi, gi32) < 1e-5


def test_float64_conv_gradients_never_use_tf32(rng):
    """Under allow_tf32, float64 convolutions keep the FP64 kernels: check_gradient in
    float64 to second order passes and no tensor-core kernel ran."""
    x = rng.standard_normal((5, 6, 4, 2))
    w = rng.standard_normal((3, 3, 4, 4)) * 0.5
    b = rng.standard_normal(4)

    def f(x, w, b):
        y = gg.dlconv(gg.dlarray(x, "SSCB"), w, b, stride=(2, 1), padding=1)
        return gg.sum(gg.tanh(y) * y)

    # test_zz_registry runs the core gradient cases itself only when nothing was checked
    # yet; this emu-only check must not change that when run in a subset
    saved = {order: set(names) for order, names in gg.testing.CHECKED.items()}
    kernels.reset_launches()
    try:
        with kernels.tf32():
            err = gg.testing.check_gradient(f, x, w, b, order=2)
    finally:
        for order, names in saved.items():
            gg.testing.CHECKED[order].clear()
            gg.testing.CHECKED[order].update(names)
    assert err < 1e-5
    ran = kernels.launches()
    assert ran.get("conv2d_fwd_f64", 0) > 0 and ran.get("conv2d_bwd_data_f64", 0) > 0
    assert not any("tf32" in n for n in ran)
