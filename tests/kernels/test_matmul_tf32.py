"""The TF32 tensor-core matmul (kernels/matmul_tf32.cu, kernels/mma.cuh) under the
CPU emulator: the mma/cp.async primitives against the PTX ISA's definitions, the
GEMM against float64 NumPy in every layout and thread schedule, its accuracy (TF32
~1e-3, 3xTF32 at FP32 level), and the ``gg.kernels.allow_tf32`` switch at the op level.

Errors are measured relative to the magnitude of the summed terms,
``|C - C64| / (|A| @ |B|)``, elementwise, worst case reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import backend

emu = pytest.importorskip("gpugrad.backend.emu", reason="the CUDA emulator is not built yet")
kernels = pytest.importorskip("gpugrad.backend.kernels")

from _common import (  # noqa: E402 - tests/kernels/_common.py
    SCHEDULES,
    macro_entry_points,
    on_emu,  # noqa: F401 - module-scoped autouse fixture: this module runs on emu
)

PROBE = Path(__file__).parent / "cu" / "mma_probe.cu"
LAYOUTS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.fixture(autouse=True)
def tf32_off():
    saved = (kernels.allow_tf32, kernels.tf32_mode)
    yield
    kernels.allow_tf32, kernels.tf32_mode = saved


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def tf32_round(x):
    """cvt.rna.tf32.f32 in NumPy: keep 10 mantissa bits, round half away from zero."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32)
    return np.where(finite, rounded, bits.astype(np.uint32)).view(np.float32)


def rel_error(got, a, b):
    """Worst |got - a@b| / (|a| @ |b|) with the float64 product as reference."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64
    scale = np.maximum(np.abs(a64) @ np.abs(b64), 1e-30)
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref) / scale))


# --------------------------------------------------------------------------- primitives


@pytest.fixture(scope="module")
def probe():
    return emu.EmuModule.from_file(PROBE)


def test_to_tf32_rounds_to_nearest_ties_away_from_zero(probe):
    one = np.float32(1.0)
    ulp = np.float32(2.0**-10)  # TF32 spacing at 1
    x = np.array(
        [
            1 + ulp / 2,  # a tie: away from zero
            -(1 + ulp / 2),
            1 + ulp / 2 - np.float32(2.0**-23),  # just below the tie: down
            1 + 3 * ulp / 2,  # a tie above an odd mantissa: still away (not to even)
            3.0,
            0.0,
            np.inf,
            -np.inf,
            np.nan,
        ],
        np.float32,
    )
    hi, lo = np.empty_like(x), np.empty_like(x)
    probe.get_function("tf32_round")((1, 1, 1), (32, 1, 1), (x, hi, lo, np.int32(x.size)))
    want = [1 + ulp, -(1 + ulp), one, 1 + 2 * ulp, 3.0, 0.0, np.inf, -np.inf]
    np.testing.assert_array_equal(hi[:8], np.array(want, np.float32))
    assert np.isnan(hi[8])
    np.testing.assert_array_equal(hi[:8], tf32_round(x)[:8])


def test_split_tf32_hi_plus_lo_carries_21_bits(probe, rng):
    x = rng.standard_normal(1000).astype(np.float32) * np.float32(1e3)
    hi, lo = np.empty_like(x), np.empty_like(x)
    probe.get_function("tf32_round")((8, 1, 1), (128, 1, 1), (x, hi, lo, np.int32(x.size)))
    np.testing.assert_array_equal(hi, tf32_round(x))
    np.testing.assert_array_equal(lo, tf32_round(x - hi))
    # one TF32 number keeps ~11 significant bits, the pair ~22: error <= 2^-21 relative
    assert np.max(np.abs(hi.astype(np.float64) - x) / np.abs(x)) > 2.0**-13
    assert np.max(np.abs((hi.astype(np.float64) + lo) - x) / np.abs(x)) <= 2.0**-21


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_mma_m16n8k8_follows_the_ptx_fragment_layout(probe, rng, schedule):
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float32)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = np.empty_like(c)
    with emu.schedule(schedule, seed=3):
        probe.get_function("mma_probe")((1, 1, 1), (32, 1, 1), (a, b, c, d))
    want = tf32_round(a).astype(np.float64) @ tf32_round(b).astype(np.float64) + c
    np.testing.assert_allclose(d, want, rtol=1e-6, atol=1e-6)
    # and not the product of the unrounded operands (the inputs really are TF32)
    assert np.max(np.abs(d - (a.astype(np.float64) @ b + c))) > 1e-4


def test_cp_async_lands_at_wait_group_not_before(probe):
    x = np.arange(64, dtype=np.float32)
    before = np.zeros(32, np.float32)
    after = np.zeros(64, np.float32)
    probe.get_function("cp_async_probe")((1, 1, 1), (32, 1, 1), (x, before, after))
    np.testing.assert_array_equal(before, -1.0)  # the emulator defers copies to the wait
    np.testing.assert_array_equal(after, x)


# --------------------------------------------------------------------------- the GEMM


def run(rng, m, n, k, trans_a, trans_b, precision, bias=False, relu=False, alpha=1.0, **kw):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias_v = rng.standard_normal(n).astype(np.float32) if bias else None
    got = kernels.matmul(
        a,
        b,
        trans_a=trans_a,
        trans_b=trans_b,
        bias=bias_v,
        relu=relu,
        alpha=alpha,
        precision=precision,
        **kw,
    )
    assert got.dtype == np.float32 and got.shape == (m, n)
    opa = (a.T if trans_a else a).astype(np.float64)
    opb = (b.T if trans_b else b).astype(np.float64)
    if precision == "tf32":  # the exact product of the TF32-rounded operands
        opa, opb = tf32_round(opa.astype(np.float32)), tf32_round(opb.astype(np.float32))
        opa, opb = opa.astype(np.float64), opb.astype(np.float64)
    ref = alpha * (opa @ opb)
    scale = abs(alpha) * (np.abs(opa) @ np.abs(opb))
    if bias:
        ref, scale = ref + bias_v, scale + np.abs(bias_v)
    if relu:
        ref = np.maximum(ref, 0.0)
    err = np.abs(got - ref) / np.maximum(scale, 1e-30)
    assert err.max() <= 1e-5, f"max relative error {err.max():.3g} ({precision}, {m}x{n}x{k})"


@pytest.mark.parametrize("precision", ["tf32", "3xtf32"])
@pytest.mark.parametrize("trans_a,trans_b", LAYOUTS)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 33, 65), (130, 129, 9), (5, 6, 0)])
def test_tensor_core_gemm_odd_shapes(rng, m, n, k, trans_a, trans_b, precision):
    run(rng, m, n, k, trans_a, trans_b, precision)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("precision", ["tf32", "3xtf32"])
def test_tensor_core_gemm_every_schedule_epilogue_and_split_k(rng, schedule, precision):
    with emu.schedule(schedule, seed=11):
        # aligned float4 path, 5 k tiles: the 4-stage ring wraps
        run(rng, 136, 132, 40, False, False, precision, bias=True, relu=True)
        # odd leading dimensions: the 4-byte cp.async path with zero-filled edges
        run(rng, 131, 37, 37, True, True, precision, alpha=-0.5)
        # split-K through the workspace and the reduction epilogue
        run(rng, 33, 70, 200, False, True, precision, bias=True, relu=True, splits=3)


@pytest.mark.parametrize(
    "m,trans_a,trans_b,precision,stages,k",
    [
        (128, False, False, "tf32", 4, 160),
        (128, True, True, "3xtf32", 2, 96),
        (64, False, True, "tf32", 3, 160),  # the m64 tile: two warps per 64x64, k sliced
        (64, False, False, "tf32", 2, 96),
    ],
)
def test_tensor_core_gemm_whole_tiles_wrap_the_ring(
    rng, monkeypatch, m, trans_a, trans_b, precision, stages, k
):
    """One whole 128x256 (M = 128) or 64x256 (M = 64, the m64 tile) block tile (the
    branch-free copy path) over more k tiles than the ring has stages, at two ring
    depths."""
    monkeypatch.setattr(kernels, "TF32_MAX_STAGES", stages)
    tile = kernels.tf32_tile_for(m, trans_a, precision)
    assert tile == ("m64" if m == 64 else "large")
    assert kernels.tf32_stages(trans_a, trans_b, 227 * 1024, tile)[0] == stages
    kernels.reset_launches()
    run(rng, m, 256, k, trans_a, trans_b, precision, bias=True, alpha=0.75)
    assert any(("_m64" in n) == (m == 64) for n in kernels.launches() if precision in n)


def test_tensor_core_stages_fit_the_shared_memory(monkeypatch):
    per = kernels.tf32_stage_bytes(False, True)
    assert kernels.tf32_stages(False, True, 4 * per) == (4, 4 * per)
    assert kernels.tf32_stages(False, True, 4 * per - 1) == (3, 3 * per)
    with pytest.raises(ValueError, match="needs .* bytes of shared memory"):
        kernels.tf32_stages(False, True, 2 * per - 1)
    # a GPU without room for two stages (64 KiB per block; both tiles need more):
    # allow_tf32 keeps FP32, an explicit precision raises
    assert 2 * kernels.tf32_stage_bytes(False, True, "m64") > 64 * 1024
    small = dict(kernels._device_props(), max_shared_optin=64 * 1024)
    monkeypatch.setattr(kernels, "_device_props", lambda: small)
    a = np.ones((8, 8), np.float32)
    with kernels.tf32():
        kernels.reset_launches()
        np.testing.assert_array_equal(kernels.matmul(a, a, trans_b=True), a @ a.T)
        assert not any("tf32" in n for n in kernels.launches())
    with pytest.raises(ValueError, match="needs .* bytes of shared memory"):
        kernels.matmul(a, a, trans_b=True, precision="tf32")


def test_tensor_core_plan_splits_skinny_problems():
    lstm_step = kernels.plan_matmul_tf32(64, 2048, 512, "tf32", 132, trans_b=True)
    assert lstm_step.kernel == "matmul_tf32_m64_nt_f32"  # M <= 64: the 64x256 tile
    # 8 tiles of 64x256, K split 4 ways: more ways would fill more SMs, but each split
    # adds a 64x2048 partial product written and read back (the model's optimum)
    assert lstm_step.grid == (8, 1, 4) and lstm_step.block == (256, 1, 1)
    large = kernels.plan_matmul_tf32(64, 2048, 512, "tf32", 132, trans_b=True, tile="large")
    assert large.kernel == "matmul_tf32_nt_f32" and large.grid == (8, 1, 6)
    wide = kernels.plan_matmul_tf32(64, 512, 2048, "tf32", 132, tile="large")
    assert wide.grid == (2, 1, 22)  # compute-bound: many splits (the workspace is small)
    # trans_a products and M > 64 take the 128x256 tile; the m64 tile refuses them
    assert kernels.plan_matmul_tf32(64, 512, 2048, "tf32", 132, trans_a=True).kernel == (
        "matmul_tf32_tn_f32"
    )
    assert kernels.plan_matmul_tf32(65, 512, 2048, "tf32", 132).kernel == "matmul_tf32_f32"
    # 3xTF32 has no 64-row entry points (compile time): the 128x256 tile
    assert kernels.plan_matmul_tf32(64, 512, 2048, "3xtf32", 132).kernel == "matmul_3xtf32_f32"
    with pytest.raises(ValueError, match="m64"):
        kernels.plan_matmul_tf32(65, 512, 64, "tf32", 132, tile="m64")
    with pytest.raises(ValueError, match="m64"):
        kernels.plan_matmul_tf32(64, 512, 64, "3xtf32", 132, tile="m64")
    big = kernels.plan_matmul_tf32(4096, 4096, 4096, "3xtf32", 132)
    assert big.kernel == "matmul_3xtf32_f32" and big.grid == (32 * 16, 1, 1)


def test_accuracy_against_float64(rng):
    """TF32 loses ~3 decimal digits; 3xTF32 gets them back to FP32 level."""
    m, n, k = 96, 80, 513
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    err = {
        p: rel_error(kernels.matmul(a, b, precision=p), a, b) for p in ("fp32", "tf32", "3xtf32")
    }
    print("max error relative to |A|@|B| vs float64:", {p: f"{e:.2e}" for p, e in err.items()})
    assert err["fp32"] < 1e-6
    assert 1e-5 < err["tf32"] <= 2.0**-10  # two operands rounded by <= 2^-11 each
    assert err["tf32"] > 20 * err["fp32"]
    assert err["3xtf32"] <= 2 * err["fp32"]


def test_precision_argument_errors():
    a = np.ones((4, 4), np.float32)
    with pytest.raises(TypeError, match="float32"):
        kernels.matmul(a.astype(np.float64), a.astype(np.float64), precision="tf32")
    with pytest.raises(ValueError, match="mask"):
        kernels.matmul(a, a, mask=a, precision="3xtf32")
    with pytest.raises(ValueError, match="precision must be"):
        kernels.matmul(a, a, precision="bf16")
    with pytest.raises(ValueError, match="set_tf32_mode"):
        kernels.set_tf32_mode("fast")


def test_nvrtc_compiles_the_inlined_source_without_include_paths():
    check = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    try:
        check.getVersion()
    except Exception:
        pytest.skip("NVRTC is not available (pip install nvidia-cuda-nvrtc-cu12)")
    path = backend.kernel_dir() / "matmul_tf32.cu"
    text = kernels.expand_includes(path)
    assert not any(line.startswith('#include "mma.cuh"') for line in text.splitlines())
    assert f'#line 1 "{(backend.kernel_dir() / "mma.cuh").resolve()}"' in text
    # to PTX only (compute_80): the front end is what the inlining concerns; ptxas runs
    # on the same text in test_kernel_compile.py and the profiler
    prog = check.createProgram(text, "inlined.cu", [], [])
    try:
        check.compileProgram(prog, ["-arch=compute_80", "-std=c++17", "-ftz=true"])
    finally:
        check.destroyProgram(prog)


# --------------------------------------------------------------------------- the switch


def test_allow_tf32_switches_matmul_and_its_gradients(rng):
    a = rng.standard_normal((40, 300)).astype(np.float32)
    b = rng.standard_normal((300, 50)).astype(np.float32)

    def forward_backward():
        kernels.reset_launches()
        x, w = gg.dlarray(a), gg.dlarray(b)
        y = gg.matmul(x, w)
        gx, gw = gg.gradient(lambda x, w: gg.sum(gg.matmul(x, w) * y), argnums=(0, 1))(x, w)
        names = set(kernels.launches())
        return y.numpy(), gx.numpy(), gw.numpy(), names

    assert kernels.allow_tf32 is False  # PyTorch's default: FP32 exactness
    y32, gx32, gw32, names = forward_backward()
    assert not any("tf32" in n for n in names)
    assert rel_error(y32, a, b) < 1e-6

    with kernels.tf32():
        y, gx, gw, names = forward_backward()
    # 40 rows: the forward and dx = dy @ w.T on the m64 tile, dw = x.T @ dy (300 rows,
    # trans_a) on the 128x256 one
    assert {n for n in names if n.startswith("matmul_tf32")} == {
        "matmul_tf32_m64_f32",
        "matmul_tf32_m64_nt_f32",
        "matmul_tf32_tn_f32",
    }
    assert 1e-5 < rel_error(y, a, b) <= 2.0**-10
    # gradients: TF32 too (~1e-3), not FP32-exact
    assert 1e-5 < np.max(np.abs(gw - gw32)) / np.max(np.abs(gw32)) < 1e-2

    kernels.allow_tf32 = True  # the attribute form
    kernels.set_tf32_mode("3xtf32")
    y3, gx3, gw3, names = forward_backward()
    kernels.allow_tf32 = False
    assert any(n.startswith("matmul_3xtf32") for n in names)
    assert rel_error(y3, a, b) <= 2 * max(rel_error(y32, a, b), 1e-7)
    np.testing.assert_allclose(gx3, gx32, rtol=1e-4, atol=1e-4 * np.abs(gx32).max())

    # float64 and the relu-masked product stay FP32/FP64 while TF32 is allowed
    with kernels.tf32():
        kernels.reset_launches()
        y64 = gg.matmul(gg.dlarray(a.astype(np.float64)), gg.dlarray(b.astype(np.float64)))
        kernels.matmul(a, b, mask=a)
        assert not any("tf32" in n for n in kernels.launches())
    assert rel_error(y64.numpy(), a, b) < 1e-12


def test_tf32_context_manager_restores_on_error():
    with pytest.raises(RuntimeError):
        with gg.kernels.tf32(mode="3xtf32"):
            assert gg.kernels.allow_tf32 and gg.kernels.tf32_mode == "3xtf32"
            raise RuntimeError("boom")
    assert gg.kernels.allow_tf32 is False and gg.kernels.tf32_mode == "tf32"


def test_macro_made_entry_points_match_the_kernel_table():
    """matmul_tf32.cu defines its extern "C" entry points with a macro: the emulator's
    scan (which expands the file's own macros) finds exactly the names kernels.py
    launches, with the 15 parameters and the 256-thread launch bound."""
    source, found, table = macro_entry_points("matmul_tf32.cu")
    assert set(found) == table and len(table) == 10
    assert {"matmul_tf32_m64_f32", "matmul_tf32_m64_nt_f32", "matmul_3xtf32_tt_f32"} <= table
    for d in found.values():
        assert len(d.params) == 15
        assert emu._int_value(d.launch_bounds, source, ()) == 256
    # a file without such a macro is scanned as written
    plain = 'extern "C" __global__ void k(float* x) { x[0] = 1.0f; }\n'
    assert emu._kernel_scan_source(plain) is plain
