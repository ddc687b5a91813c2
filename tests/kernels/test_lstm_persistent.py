"""The persistent LSTM kernels (kernels/lstm_persistent.cu) and the emulator's
cooperative launch they need.

Kernel runs are compared with a float64 NumPy reference of the recurrence on odd
shapes (hidden sizes that are not multiples of the 4-wide tiles, batch 1, several row
groups per block) under forward, reverse and random thread orders; the op is compared
end to end between the emu and cpu devices, and checked against finite differences to
second order. The fallback to the per-step kernels is tested through the plan and the
launch counts.
"""

from __future__ import annotations

import numpy as np
import pytest
from _common import SCHEDULES  # noqa: E402 - tests/kernels/_common.py

import gpugrad as gg
from gpugrad import backend
from gpugrad.backend import emu, kernels

TOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(autouse=True)
def on_emu():
    previous = backend.device()
    backend.set_device("emu")
    kernels.reset_launches()
    yield
    backend.set_device(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


# --------------------------------------------------------------------------- references


def _sig(z):
    return 1 / (1 + np.exp(-z))


def ref_forward(proj, r, h0, c0):
    steps, _, four_h = proj.shape
    hid = four_h // 4
    h, c = h0.astype(np.float64), c0.astype(np.float64)
    ys, cs, gates = [], [], []
    for t in range(steps):
        z = proj[t] + h @ r.T.astype(np.float64)
        i, f = _sig(z[:, :hid]), _sig(z[:, hid : 2 * hid])
        g, o = np.tanh(z[:, 2 * hid : 3 * hid]), _sig(z[:, 3 * hid :])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
        cs.append(c)
        gates.append(np.concatenate([i, f, g, o], axis=1))
    return np.array(ys), np.array(cs), np.array(gates)


def ref_backward(g_ys, g_h, g_c, g_cs, g_gates, gates, cs, c0, r):
    steps, _, four_h = gates.shape
    hid = four_h // 4
    dh_next, dc_next = g_h.astype(np.float64), g_c.astype(np.float64)
    dpre = np.zeros(gates.shape)
    for t in range(steps - 1, -1, -1):
        i, f, g, o = (gates[t][:, q * hid : (q + 1) * hid] for q in range(4))
        dh = g_ys[t] + dh_next
        dc = dc_next + (g_cs[t] if g_cs is not None else 0)
        c_prev = cs[t - 1] if t else c0
        tc = np.tanh(cs[t])
        dct = dc + dh * o * (1 - tc * tc)
        d = np.concatenate([dct * g, dct * c_prev, dct * i, dh * tc], axis=1)
        if g_gates is not None:
            d = d + g_gates[t]
        d = d * np.concatenate([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], axis=1)
        dpre[t] = d
        dc_next = dct * f
        dh_next = d @ r.astype(np.float64)
    return dpre, dh_next, dc_next


def _inputs(rng, steps, bsz, hid, dtype):
    proj = rng.standard_normal((steps, bsz, 4 * hid)).astype(dtype)
    r = (rng.standard_normal((4 * hid, hid)) / np.sqrt(hid)).astype(dtype)
    h0 = rng.standard_normal((bsz, hid)).astype(dtype)
    c0 = rng.standard_normal((bsz, hid)).astype(dtype)
    return proj, r, h0, c0


def _close(got, want, dtype, what):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert err <= TOL[dtype], f"{what}: max relative error {err:.3g}"


def _run_both(rng, steps, bsz, hid, dtype, extra=True, backward=True):
    proj, r, h0, c0 = _inputs(rng, steps, bsz, hid, dtype)
    ys, cs, gates = kernels.lstm_persistent_fwd(proj, r, h0, c0)
    rys, rcs, rgates = ref_forward(proj, r, h0, c0)
    _close(ys, rys, dtype, "ys")
    _close(cs, rcs, dtype, "cs")
    _close(gates, rgates, dtype, "gates")
    if not backward:
        return
    g_ys = rng.standard_normal(ys.shape).astype(dtype)
    g_h = rng.standard_normal(h0.shape).astype(dtype)
    g_c = rng.standard_normal(h0.shape).astype(dtype)
    g_cs = rng.standard_normal(ys.shape).astype(dtype) if extra else None
    g_gates = rng.standard_normal(gates.shape).astype(dtype) if extra else None
    dpre, dh0, dc0 = kernels.lstm_persistent_bwd(g_ys, g_h, g_c, g_cs, g_gates, gates, cs, c0, r)
    # the backward reference runs on the kernel's own saved states (no forward error mixed in)
    rdpre, rdh0, rdc0 = ref_backward(
        g_ys, g_h, g_c, g_cs, g_gates, gates.astype(np.float64), cs.astype(np.float64), c0, r
    )
    _close(dpre, rdpre, dtype, "dpre")
    _close(dh0, rdh0, dtype, "dh0")
    _close(dc0, rdc0, dtype, "dc0")


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "steps, bsz, hid",
    [(3, 1, 7), (4, 5, 37), (2, 9, 140)],  # batch 1; H and B off every tile; U = 2 units/block
)
def test_kernels_match_numpy(rng, steps, bsz, hid, dtype):
    _run_both(rng, steps, bsz, hid, dtype)
    launched = kernels.launches()
    dt = "f32" if dtype == np.float32 else "f64"
    assert launched == {f"lstm_fwd_persistent_{dt}": 1, f"lstm_bwd_persistent_{dt}": 1}


@pytest.mark.parametrize("order", SCHEDULES)
def test_kernels_under_every_thread_order(rng, order):
    with emu.schedule(order, seed=7):
        _run_both(rng, 3, 6, 13, np.float32, extra=False)


def _groups_and_chunks(plan, direction, hid):
    k = hid if direction == "fwd" else 4 * hid
    return -(-plan.batch_rows // (4 * plan.quads)), -(-k // plan.chunk)


@pytest.mark.parametrize(
    "num_sms, bsz, hid, limit, expect",
    [
        # a batch split with a partial last block (53 = 28 + 25 rows), 2 row groups
        (2, 53, 40, None, {"fwd": dict(batch_rows=28, groups=2)}),
        # 15 units per block: the backward pads its columns to 16
        (2, 9, 30, None, {"bwd": dict(units=15)}),
        # one block owning every unit: 5 row groups forward, 2 groups x 9 chunks backward
        # in two stages (each chunk copied while the one before is multiplied)
        (1, 60, 70, None, {"fwd": dict(groups=5), "bwd": dict(groups=2, chunks=9, stages=2)}),
        # less shared memory: the forward stages the vector in 3 chunks, one stage (the
        # backward does not fit), or the backward in 9, one stage
        (1, 60, 70, 193000, {"fwd": dict(chunks=3, stages=1), "bwd": None}),
        (1, 60, 70, 210000, {"bwd": dict(chunks=9, stages=1)}),
    ],
)
def test_kernels_with_many_units_per_block(rng, monkeypatch, num_sms, bsz, hid, limit, expect):
    monkeypatch.setattr(kernels, "EMU_NUM_SMS", num_sms)
    if limit:
        monkeypatch.setattr(kernels, "_lstm_shared_limit", lambda: limit)
    for direction, want in expect.items():
        plan = kernels.lstm_persistent_plan(direction, bsz, hid, np.float64)
        if want is None:
            assert plan is None
            continue
        groups, chunks = _groups_and_chunks(plan, direction, hid)
        got = dict(units=plan.units, batch_rows=plan.batch_rows, groups=groups, chunks=chunks)
        got["stages"] = plan.stages
        assert {key: got[key] for key in want} == want, plan
        blocks = -(-hid // plan.units) * -(-bsz // plan.batch_rows)
        assert plan.grid == (blocks, 1, 1) and blocks <= num_sms
    _run_both(rng, 2, bsz, hid, np.float64, backward=expect.get("bwd", {}) is not None)


def test_planner_overlaps_each_chunk_copy_with_the_previous_chunks_fmas():
    # bench shape (B64 H512, 132 SMs, 227 KiB): the backward's dpre rows (16 x 4H = 2048
    # columns) do not fit beside the 16 units' weights (2048 x 16): 4 chunks, 2 stages
    plan = kernels.plan_lstm_persistent("bwd", 64, 512, "f32", 132, 227 * 1024)
    assert (plan.units, plan.batch_rows, plan.chunk, plan.stages) == (16, 16, 512, 2)
    copy = 800 + 16 * 512 * 4 / 24  # one L2 round trip + 32 KiB at 24 B/cycle
    fma = 16 * 16 * 512 / 64
    # chunk 0's copy exposed, then max(FMAs of chunk c, copy of chunk c + 1), the last
    # chunk's FMAs, and 60 cycles of barriers per extra chunk
    assert plan.cycles == int(copy + 3 * max(fma, copy) + fma + 3 * 60)
    one = kernels._lstm_step_cycles(16, 16, 2048, 16, 512, 1, 4, "f32")
    assert one == pytest.approx(4 * (copy + fma) + 3 * 60)  # one stage: no overlap
    assert plan.shared_mem == 4 * (2048 * 16 + 2 * 16 * (512 + 8) + 16 * 256)
    assert plan.shared_mem <= 227 * 1024


def test_float32_vector_staged_in_two_stages_of_16_byte_copies(rng, monkeypatch):
    # H = 100 (a multiple of 4: whole 16-byte copies forward too), 13 batch rows in a
    # 16-row group (3 zero rows written beside the copies), 2 chunks forward and 4
    # backward, each copied while the previous one is multiplied
    monkeypatch.setattr(kernels, "EMU_NUM_SMS", 2)
    for direction, chunks in (("fwd", 2), ("bwd", 4)):
        plan = kernels.lstm_persistent_plan(direction, 13, 100, np.float32)
        assert plan.stages == 2 and plan.quads == 4, plan
        assert _groups_and_chunks(plan, direction, 100) == (1, chunks), plan
    for order in ("forward", "reverse"):
        with emu.schedule(order):
            _run_both(rng, 3, 13, 100, np.float32)


def test_the_gpu_atomic_barrier_runs_under_the_emulator(rng):
    # the spin barrier (atomicAdd + volatile polling + __nanosleep) that runs on the GPU,
    # compiled for the emulator instead of the emulator's own grid barrier
    path = backend.kernel_dir() / "lstm_persistent.cu"
    mod = emu.EmuModule(
        path.read_text(),
        name=str(path),
        options=("-DGG_LSTM_SPIN_BARRIER",),
        enable_cooperative_groups=True,
    )
    steps, bsz, hid = 3, 4, 9
    proj, r, h0, c0 = _inputs(rng, steps, bsz, hid, np.float64)
    plan = kernels.plan_lstm_persistent("fwd", bsz, hid, "f64", 132, 48 * 1024)
    ys = np.empty((steps, bsz, hid))
    cs = np.empty((steps, bsz, hid))
    gates = np.empty((steps, bsz, 4 * hid))
    sync = np.zeros(1, np.uint32)
    i32 = np.int32
    mod.get_function("lstm_fwd_persistent_f64")(
        plan.grid,
        plan.block,
        (proj, r, h0, c0, ys, cs, gates, sync, i32(steps), i32(bsz), i32(hid), *plan.int_args()),
        shared_mem=plan.shared_mem,
    )
    rys, rcs, _ = ref_forward(proj, r, h0, c0)
    _close(ys, rys, np.float64, "ys")
    _close(cs, rcs, np.float64, "cs")
    # one arrival per block per barrier, and no barrier after the last step
    assert int(sync[0]) == plan.grid[0] * (steps - 1)


def test_empty_sequence_and_bad_shapes(rng):
    proj, r, h0, c0 = _inputs(rng, 0, 3, 5, np.float64)
    ys, cs, gates = kernels.lstm_persistent_fwd(proj, r, h0, c0)
    assert ys.shape == (0, 3, 5) and gates.shape == (0, 3, 20)
    assert kernels.launches() == {}
    proj, r, h0, c0 = _inputs(rng, 2, 3, 5, np.float64)
    with pytest.raises(ValueError, match=r"lstm_persistent_fwd: r must have shape \(20, 5\)"):
        kernels.lstm_persistent_fwd(proj, r[:, :4], h0, c0)
    with pytest.raises(TypeError, match="lstm_persistent_fwd: h0 has dtype float32"):
        kernels.lstm_persistent_fwd(proj, r, h0.astype(np.float32), c0)


# --------------------------------------------------------------------------- plan / fallback


def test_plan_falls_back_when_the_weights_do_not_fit():
    optin = 227 * 1024
    plan = kernels.plan_lstm_persistent
    # bench shape: 128 blocks of 32 units x 4 batch rows, 128 KiB of weights each
    p = plan("fwd", 64, 256, "f32", 132, optin)
    assert (p.grid, p.units, p.batch_rows) == ((128, 1, 1), 32, 4)
    # with only 48 KiB per block: 4 units x 32 rows (16 KiB of weights)
    p = plan("fwd", 64, 256, "f32", 132, 48 * 1024)
    assert (p.grid, p.units, p.batch_rows) == ((128, 1, 1), 4, 32)
    # H = 1024: 8 units x 4 gates x 1024 floats = 128 KiB per block fits, in float64 not
    assert plan("fwd", 64, 1024, "f32", 132, optin) is not None
    assert plan("fwd", 64, 1024, "f64", 132, optin) is None
    assert plan("bwd", 64, 1024, "f64", 132, optin) is None
    assert plan("fwd", 64, 4096, "f32", 132, optin) is None
    # H = 1024 fits only with the opt-in shared memory of an H100
    assert plan("fwd", 64, 1024, "f32", 132, 48 * 1024) is None


def _op_grads(xs, h0, c0, w, r, b):
    def f(xs, h0, c0, w, r, b):
        y, h, c = gg.lstm(xs, h0, c0, w, r, b, data_format="CBT")
        loss = gg.sum(y * y) + gg.sum(h * c)
        return loss, *gg.dlgradient(loss, xs, h0, c0, w, r, b)

    out = gg.dlfeval(f, *(gg.dlarray(np.asarray(a)) for a in (xs, h0, c0, w, r, b)))
    return [np.asarray(backend.to_host(v._data)) for v in out]


def _op_args(rng, c, n, steps, hid, dtype):
    def rnd(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    return (
        rnd(c, n, steps),
        rnd(hid, n),
        rnd(hid, n),
        rnd(4 * hid, c, scale=0.5),
        rnd(4 * hid, hid, scale=0.5),
        rnd(4 * hid, scale=0.5),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_op_on_emu_matches_cpu_and_uses_one_launch_per_direction(rng, dtype):
    args = _op_args(rng, 5, 3, 6, 11, dtype)
    got = _op_grads(*args)
    dt = "f32" if dtype == np.float32 else "f64"
    launched = kernels.launches()
    assert launched[f"lstm_fwd_persistent_{dt}"] == 1
    assert launched[f"lstm_bwd_persistent_{dt}"] == 1
    assert f"lstm_fwd_{dt}" not in launched and f"lstm_bwd_{dt}" not in launched
    backend.set_device("cpu")
    want = _op_grads(*args)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    for name, g, w in zip(("loss", "dx", "dh0", "dc0", "dw", "dr", "db"), got, want):
        np.testing.assert_allclose(
            g, w, rtol=tol, atol=tol * max(1.0, np.abs(w).max()), err_msg=name
        )


@pytest.mark.parametrize("why", ["weights too large", "switched off", "grid not resident"])
def test_op_falls_back_to_the_per_step_kernels(rng, monkeypatch, why):
    if why == "weights too large":
        monkeypatch.setattr(kernels, "_lstm_shared_limit", lambda: 1024)
    elif why == "switched off":
        monkeypatch.setattr(kernels, "lstm_persistent_enabled", False)
    else:
        monkeypatch.setattr(emu, "cooperative_max_blocks", lambda threads, shared=0: 1)
    steps = 4
    args = _op_args(rng, 3, 2, steps, 5, np.float64)
    assert kernels.lstm_persistent_plan("fwd", 2, 5, np.float64) is None
    got = _op_grads(*args)
    launched = kernels.launches()
    assert launched["lstm_fwd_f64"] == steps and launched["lstm_bwd_f64"] == steps
    assert not any("persistent" in name for name in launched)
    backend.set_device("cpu")
    for g, w in zip(got, _op_grads(*args)):
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("order", [1, 2])
def test_op_gradients_on_emu_to_second_order(rng, order):
    args = _op_args(rng, 3, 2, 3, 5, np.float64)

    def f(xs, h0, c0, w, r, b):
        y, h, c = gg.lstm(xs, h0, c0, w, r, b, data_format="CBT")
        return gg.sum(y * y) + gg.sum(h * c)

    gg.testing.check_gradient(f, *args, order=order)
    launched = kernels.launches()
    # the primal always runs persistent; the first-order raw backward too, while the
    # second-order check differentiates the traced (op-level) backward
    assert launched["lstm_fwd_persistent_f64"] >= 1
    if order == 1:
        assert launched["lstm_bwd_persistent_f64"] >= 1


# --------------------------------------------------------------------------- emulator


COOP_SRC = r"""
extern "C" __global__ void rotate(float* x, float* y, int n, int rounds) {
    auto grid = cooperative_groups::this_grid();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    x[i] = i;
    for (int k = 0; k < rounds; ++k) {
        grid.sync();
        y[i] = x[(i + blockDim.x) % n];  // the next block's values
        grid.sync();
        x[i] = y[i];
    }
}
extern "C" __global__ void info(unsigned long long* out) {
    auto grid = cooperative_groups::this_grid();
    if (grid.thread_rank() == 0) {
        out[0] = grid.is_valid();
        out[1] = grid.size();
        out[2] = grid.num_blocks();
    }
}
extern "C" __global__ void block_exits(float* x) {
    if (blockIdx.x == 1) return;
    cooperative_groups::this_grid().sync();
}
extern "C" __global__ void block_traps(float* x) {
    if (blockIdx.x == 2 && threadIdx.x == 0) __trap();
    cooperative_groups::this_grid().sync();
}
"""


@pytest.fixture(scope="module")
def coop_module():
    return emu.EmuModule(COOP_SRC, name="coop_test.cu", enable_cooperative_groups=True)


@pytest.mark.parametrize("order", SCHEDULES)
def test_emu_grid_barrier_orders_blocks(coop_module, order):
    blocks, threads, rounds = 6, 32, 3
    n = blocks * threads
    x = np.zeros(n, np.float32)
    y = np.zeros(n, np.float32)
    with emu.schedule(order, seed=3):
        coop_module.get_function("rotate")(
            (blocks,), (threads,), (x, y, np.int32(n), np.int32(rounds))
        )
    np.testing.assert_array_equal(x, (np.arange(n) + rounds * threads) % n)


def test_emu_grid_group_info(coop_module):
    out = np.zeros(3, np.uint64)
    coop_module.get_function("info")((5,), (64,), (out,))
    assert out.tolist() == [1, 5 * 64, 5]


def test_emu_grid_barrier_deadlocks_are_errors(coop_module):
    x = np.zeros(1, np.float32)
    with pytest.raises(emu.EmuError, match=r"deadlock at the grid barrier: 3 block\(s\) wait"):
        coop_module.get_function("block_exits")((4,), (32,), (x,))
    with pytest.raises(emu.EmuError, match=r"__trap\(\)"):
        coop_module.get_function("block_traps")((4,), (32,), (x,))


def test_emu_cooperative_grid_must_fit(coop_module):
    assert emu.cooperative_max_blocks(256, 0) == 132 * 8
    assert emu.cooperative_max_blocks(1024, 150 * 1024) == 132
    x = np.zeros(1, np.float32)
    with pytest.raises(emu.EmuError, match="cudaErrorCooperativeLaunchTooLarge"):
        coop_module.get_function("block_exits")((132 * 8 + 1,), (256,), (x,))


def test_emu_grid_barrier_needs_a_cooperative_launch():
    mod = emu.EmuModule(COOP_SRC, name="coop_test.cu")
    x = np.zeros(64, np.float32)
    with pytest.raises(emu.EmuError, match="not launched cooperatively"):
        mod.get_function("rotate")((2,), (32,), (x, x.copy(), np.int32(64), np.int32(1)))


# --------------------------------------------------------------------------- compiled code


def _check_compile():
    import importlib.util
    import sys

    path = backend.kernel_dir() / "check_compile.py"
    spec = importlib.util.spec_from_file_location("gpugrad_check_compile", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tool", ["nvrtc", "nvcc"])
def test_persistent_kernels_compile_for_sm80_and_sm90_without_spills(tool):
    cc = _check_compile()
    if tool == "nvrtc" and cc.nvrtc_module() is None:
        pytest.skip("NVRTC is not available (pip install nvidia-cuda-nvrtc-cu12 cupy-cuda12x)")
    if tool == "nvcc" and cc.nvcc_path() is None:
        pytest.skip("nvcc is not installed (CUDA toolkit) and $NVCC is not set")
    report = cc.check(files=[backend.kernel_dir() / "lstm_persistent.cu"], tools=(tool,))
    assert not report.errors, "\n\n".join(report.errors)
    rows = {(r.kernel, r.arch): r for r in report.rows}
    for name in ("lstm_fwd_persistent", "lstm_bwd_persistent"):
        for dt in ("f32", "f64"):
            for arch in ("sm_80", "sm_90"):
                row = rows[(f"{name}_{dt}", arch)]
                assert row.spills == 0 and row.stack == 0, report.table()
                # one 256-thread block per SM: registers are not what limits residency
                assert row.registers <= 128, report.table()


# --------------------------------------------------------------------------- sanitizer

ASAN_SCRIPT = """
import numpy as np
from gpugrad import backend
from gpugrad.backend import kernels as K
backend.set_device("emu")
rng = np.random.default_rng(0)
cases = [(132, 3, 1, 7, None), (132, 4, 9, 37, None), (2, 2, 53, 40, None), (2, 2, 9, 30, None),
         (1, 2, 60, 70, None), (1, 2, 60, 70, 210000)]
for sms, T, B, H, limit in cases:
    K.EMU_NUM_SMS = sms
    K._lstm_shared_limit = (lambda v=limit: v) if limit else (lambda: 227 * 1024)
    for dt in (np.float32, np.float64):
        f = lambda *s: rng.standard_normal(s).astype(dt)
        proj, r, h0, c0 = f(T, B, 4 * H), f(4 * H, H) * (1 / H**0.5), f(B, H), f(B, H)
        ys, cs, gates = K.lstm_persistent_fwd(proj, r, h0, c0)
        K.lstm_persistent_bwd(f(T, B, H), f(B, H), f(B, H), f(T, B, H), f(T, B, 4 * H),
                              gates, cs, c0, r)
        K.lstm_persistent_bwd(f(T, B, H), f(B, H), f(B, H), None, None, gates, cs, c0, r)
print("ASAN-CLEAN", sorted(K.launches().items()))
"""


def test_persistent_kernels_clean_under_address_sanitizer():
    """Both kernels on the edge shapes above, built with ASan: no out-of-bounds access
    to global or (dynamic) shared memory."""
    import os

    try:
        env = emu.asan_env(dict(os.environ, GPUGRAD_EMU_SANITIZE="1"))
    except Exception as exc:  # no libasan for this compiler
        pytest.skip(f"AddressSanitizer runtime not available: {exc}")
    result = emu.run_in_subprocess(ASAN_SCRIPT, asan=True, env=env, timeout=900)
    assert result.returncode == 0 and "ASAN-CLEAN" in result.stdout, result.stderr[-6000:]
    assert "('lstm_bwd_persistent_f64', 12)" in result.stdout, result.stdout
