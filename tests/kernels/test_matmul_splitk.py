"""The FP32/FP64 matmul's split-K path, the 32x128 tile for M <= 32 and the launch
plans for the LSTM- and batch-1-shaped GEMMs, under the CPU emulator against float64
NumPy (the layout/mask variants themselves: tests/kernels/test_kernels_emu.py)."""

from __future__ import annotations

import numpy as np
import pytest

emu = pytest.importorskip("gpugrad.backend.emu", reason="the CUDA emulator is not built yet")
kernels = pytest.importorskip("gpugrad.backend.kernels")

from _common import (  # noqa: E402 - tests/kernels/_common.py
    SCHEDULES,
    assert_close,
    macro_entry_points,
    on_emu,  # noqa: F401 - module-scoped autouse fixture: this module runs on emu
)


@pytest.fixture
def rng():
    return np.random.default_rng(77)


def run(rng, m, n, k, dtype, trans_a=False, trans_b=False, mask=False, **kw):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    bias = rng.standard_normal(n).astype(dtype)
    mask_v = rng.standard_normal(a.shape).astype(dtype) if mask else None
    kernels.reset_launches()
    got = kernels.matmul(
        a, b, trans_a=trans_a, trans_b=trans_b, bias=bias, relu=True, alpha=-0.75, mask=mask_v, **kw
    )
    a64 = a.astype(np.float64) if mask_v is None else np.where(mask_v > 0, a, 0.0)
    opa = a64.T if trans_a else a64
    opb = (b.T if trans_b else b).astype(np.float64)
    ref = np.maximum(-0.75 * (opa @ opb) + bias, 0.0)
    scale = 0.75 * (np.abs(opa) @ np.abs(opb)) + np.abs(bias)
    assert got.dtype == dtype
    assert_close(got, ref, scale, dtype)
    return kernels.launches()


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    "dtype,tile",
    [(np.float32, "mid"), (np.float32, "wide"), (np.float32, "small"), (np.float64, "small")],
)
def test_split_k_every_tile_and_schedule(rng, dtype, tile, schedule):
    with emu.schedule(schedule, seed=5):
        dt = "f32" if dtype == np.float32 else "f64"
        launched = run(rng, 37, 70, 301, dtype, False, True, tile=tile, splits=4)
        assert launched.get(f"matmul_splitk_reduce_{dt}") == 1
        run(rng, 20, 33, 129, dtype, True, False, mask=True, tile=tile, splits=3)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_planned_split_k_for_lstm_and_batch_1_shapes(rng, trans_a, trans_b):
    # M = 64 (an LSTM batch) and M = 1 (batch-1 GEMV) with long K: planned split-K
    for m, n, k in [(64, 96, 1024), (1, 200, 2048)]:
        launched = run(rng, m, n, k, np.float32, trans_a, trans_b)
        assert launched.get("matmul_splitk_reduce_f32") == 1, launched


def test_splits_are_clamped_to_whole_k_tiles(rng):
    # more splits than k tiles: the plan keeps only non-empty splits
    plan = kernels.plan_matmul(16, 16, 40, "f32", 132, "mid", splits=64)
    assert plan.grid[2] == 3  # k = 40 in chunks of 16
    run(rng, 16, 16, 40, np.float32, tile="mid", splits=64)


def test_launch_plans_for_skinny_shapes():
    """The review's problem shapes (§2.2) now fill the 132 SMs."""
    sms = 132
    for m, n, k, tb in [(64, 2048, 512, True), (64, 512, 2048, False), (64, 4096, 4096, True)]:
        plan = kernels.plan_matmul(m, n, k, "f32", sms, trans_b=tb)
        blocks, _, splits = plan.grid
        assert plan.kernel == ("matmul_mid_nt_f32" if tb else "matmul_mid_f32")
        assert splits > 1 and blocks * splits >= sms, plan
        chunk, s = kernels.matmul_k_chunk(k, splits, 16)
        assert s == splits and chunk % 16 == 0 and (s - 1) * chunk < k <= s * chunk
    gemv = kernels.plan_matmul(1, 4096, 4096, "f32", sms)
    assert gemv.kernel == "matmul_wide_f32" and gemv.grid[0] * gemv.grid[2] >= sms
    # large problems are untouched: one 128x128 tile per block, no split
    assert kernels.plan_matmul(4096, 4096, 4096, "f32", sms).grid == (1024, 1, 1)
    assert kernels.plan_matmul(6400, 2048, 512, "f32", sms).grid == (50 * 16, 1, 1)
    # short K: nothing to split, the small tile gives the most blocks
    assert kernels.plan_matmul(64, 10, 32, "f32", sms).kernel == "matmul_small_f32"
    # the split-K workspace must stay 32-bit indexable
    assert kernels.matmul_splits(1, 46000, 46000, 1 << 20, 16, sms) == 1


def test_every_layout_and_mask_variant_is_registered():
    names = {row["name"] for row in kernels.list()}
    for tile in ("matmul_fwd", "matmul_mid", "matmul_wide", "matmul_small"):
        for lay in ("", "_nt", "_tn", "_tt"):
            for mask in ("", "_mask"):
                assert f"{tile}{lay}{mask}_f32" in names
    for tile in ("matmul_fwd", "matmul_small"):
        assert f"{tile}_tt_mask_f64" in names
    assert {"matmul_splitk_reduce_f32", "matmul_splitk_reduce_f64"} <= names
    assert {"matmul_tf32_f32", "matmul_3xtf32_tn_f32"} <= names


def test_macro_made_entry_points_match_the_kernel_table():
    """matmul.cu defines its 50 extern "C" entry points with macros (one line per tile
    and dtype): the emulator's scan (which expands the file's own macros) finds exactly
    the names kernels.py launches, with the 15 GEMM / 9 split-K-reduce parameters of
    the element type and each tile's launch bounds (128x128 FP32: two blocks per SM)."""
    source, found, table = macro_entry_points("matmul.cu")
    assert set(found) == table and len(table) == 50
    bounds = {
        "matmul_fwd_f32": "256,2",
        "matmul_mid_f32": "256",
        "matmul_wide_f32": "128",
        "matmul_small_f32": "64",
        "matmul_fwd_f64": "256",
        "matmul_small_f64": "64",
    }
    for name, d in found.items():
        ctype = "double" if name.endswith("_f64") else "float"
        if name.startswith("matmul_splitk_reduce_"):
            assert len(d.params) == 9 and d.launch_bounds.strip() == "256", name
            assert d.params[0][0].replace(" ", "") == f"const{ctype}*", (name, d.params)
            continue
        assert len(d.params) == 15, (name, d.params)
        assert [p[1] for p in d.params[:5]] == ["A", "B", "C", "bias", "mask"], name
        assert d.params[4][0].replace(" ", "") == f"const{ctype}*", (name, d.params)
        assert tuple(d.params[13]) == (ctype, "alpha"), (name, d.params)
        base = name.rsplit("_", 1)[0].replace("_mask", "")
        for lay in ("_nt", "_tn", "_tt"):
            base = base.removesuffix(lay)
        tile = f"{base}_{name.rsplit('_', 1)[1]}"
        assert d.launch_bounds.replace(" ", "") == bounds[tile], (name, d.launch_bounds)
        assert emu._int_value(d.launch_bounds, source, ()) == int(bounds[tile].split(",")[0])
