"""Tests of the CPU emulator of the CUDA execution model (gpugrad.backend.emu).

Kernels live in tests/emu/cu/: emu_fixtures.cu (features, compared with NumPy) and
emu_bugs.cu (planted bugs the emulator must report).
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpugrad.backend import emu

CU = Path(__file__).parent / "cu"
FIXTURES = CU / "emu_fixtures.cu"
BUGS = CU / "emu_bugs.cu"
ORDERS = ("forward", "reverse", "random")

i32, f32 = np.int32, np.float32

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator needs g++")


@pytest.fixture(scope="module")
def mod():
    return emu.EmuModule.from_file(FIXTURES)


@pytest.fixture(scope="module")
def bugs():
    return emu.EmuModule.from_file(BUGS)


@pytest.fixture(autouse=True)
def _restore_config():
    order, seed = emu.get_schedule()
    workers = emu.get_workers()
    yield
    emu.set_schedule(order, seed)
    emu.set_workers(workers)
    emu.set_exit_at_barrier("error")


def rng(seed=0):
    return np.random.default_rng(seed)


def cdiv(a, b):
    return -(-a // b)


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("n", [1, 7, 33, 65, 127, 1000])
def test_vector_add_odd_sizes(mod, n):
    a = rng(n).standard_normal(n).astype(f32)
    b = rng(n + 1).standard_normal(n).astype(f32)
    c = np.full(n, np.nan, f32)
    mod.get_function("vec_add")((cdiv(n, 32),), (32,), (a, b, c, i32(n)))
    np.testing.assert_array_equal(c, a + b)


def sgemm(mod, a, b):
    m, k = a.shape
    n = b.shape[1]
    c = np.full((m, n), np.nan, f32)
    mod.get_function("sgemm")(
        (cdiv(n, 16), cdiv(m, 16)), (16, 16), (a, b, c, i32(m), i32(n), i32(k))
    )
    return c


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 33, 5), (65, 31, 47)])
def test_tiled_sgemm_matches_numpy(mod, order, shape):
    m, n, k = shape
    a = rng(1).standard_normal((m, k)).astype(f32)
    b = rng(2).standard_normal((k, n)).astype(f32)
    with emu.schedule(order, seed=7):
        c = sgemm(mod, a, b)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_schedule_context_manager_restores():
    emu.set_schedule("reverse", 3)
    with emu.schedule("random", seed=11):
        assert emu.get_schedule() == ("random", 11)
    assert emu.get_schedule() == ("reverse", 3)
    with pytest.raises(ValueError, match="schedule order"):
        emu.set_schedule("sideways")


@pytest.mark.parametrize("n,block", [(1, 32), (1000, 128), (4099, 256), (50_000, 1024)])
def test_block_reduction_shfl_shared_atomic(mod, n, block):
    x = rng(n).random(n).astype(f32)
    out = np.zeros(1, f32)
    mod.get_function("block_sum")((min(cdiv(n, block), 8),), (block,), (x, out, i32(n)))
    assert out[0] == pytest.approx(x.astype(np.float64).sum(), rel=1e-5)


def test_partial_warp_full_mask_shuffle_is_flagged(mod):
    # 100 threads: warp 3 has 4 lanes, and a full-mask __shfl_down_sync reads lanes that
    # do not exist -- garbage on a GPU. The emulator returns NaN and warns.
    x = np.ones(100, f32)
    out = np.zeros(1, f32)
    before = emu.stats()["poisoned_reads"]
    with pytest.warns(emu.EmuWarning, match="block_sum.*lane"):
        mod.get_function("block_sum")((1,), (100,), (x, out, i32(100)))
    assert emu.stats()["poisoned_reads"] > before
    assert np.isnan(out[0])


def test_int_atomics(mod):
    n = 777
    x = rng(3).integers(-1000, 1000, n).astype(i32)
    mx = np.array([np.iinfo(i32).min], i32)
    cnt = np.zeros(1, np.uint32)
    mod.get_function("atomic_int")((cdiv(n, 64),), (64,), (x, mx, cnt, i32(n)))
    assert mx[0] == x.max()
    assert cnt[0] == (x > 0).sum()


@pytest.mark.parametrize("order", ORDERS)
def test_ballot_and_divergent_partial_mask_shuffles(mod, order):
    n = 80  # 3 warps, the last one partly beyond n (but inside the block)
    x = rng(4).standard_normal(n).astype(f32)
    nw = 3
    ballot = np.zeros(nw, np.uint32)
    any_all = np.zeros(2 * nw, i32)
    shuffled = np.zeros(n, f32)
    with emu.schedule(order, seed=1):
        mod.get_function("warp_vote")((1,), (96,), (x, ballot, any_all, shuffled, i32(n)))
    xp = np.concatenate([x, np.zeros(96 - n, f32)]).reshape(nw, 32)
    want_ballot = [sum(1 << j for j in range(32) if w[j] > 0) for w in xp]
    np.testing.assert_array_equal(ballot, want_ballot)
    np.testing.assert_array_equal(any_all[0::2], (xp > 0.5).any(axis=1))
    np.testing.assert_array_equal(any_all[1::2], (xp > -0.5).all(axis=1))
    lanes = np.arange(32)
    low = xp[:, (lanes[:16] + 1) % 16]
    high = np.repeat(xp[:, 16:17], 16, axis=1)
    np.testing.assert_array_equal(shuffled, np.concatenate([low, high], axis=1).ravel()[:n])


def test_shfl_up_scan_and_xor_segments(mod):
    n = 70
    x = rng(5).integers(-50, 50, n).astype(i32)
    scan = np.zeros(n, i32)
    segmax = np.zeros(n, i32)
    mod.get_function("warp_scan")((1,), (96,), (x, scan, segmax, i32(n)))
    xp = np.concatenate([x, np.zeros(96 - n, i32)])
    want_scan = np.cumsum(xp.reshape(3, 32), axis=1).ravel()[:n]
    want_max = np.repeat(xp.reshape(-1, 8).max(axis=1), 8)[:n]
    np.testing.assert_array_equal(scan, want_scan)
    np.testing.assert_array_equal(segmax, want_max)


@pytest.mark.parametrize("order", ORDERS)
def test_dynamic_shared_memory(mod, order):
    n, block = 300, 128
    x = rng(6).standard_normal(n).astype(f32)
    y = np.zeros(n, f32)
    with emu.schedule(order, seed=2):
        mod.get_function("reverse_dyn")(
            (cdiv(n, block),), (block,), (x, y, i32(n)), shared_mem=block * 4
        )
    want = np.concatenate([x[i : i + block][::-1] for i in range(0, n, block)])
    np.testing.assert_array_equal(y, want)


def test_dynamic_shared_memory_limits(mod):
    k = mod.get_function("reverse_dyn")
    x = np.zeros(64, f32)
    y = np.zeros(64, f32)
    with pytest.raises(ValueError, match=r"reverse_dyn.*shared_mem=49153.*opt in"):
        k((1,), (64,), (x, y, i32(64)), shared_mem=48 * 1024 + 1)
    k.max_dynamic_shared_size_bytes = 100 * 1024  # opt-in, as with CuPy
    k((1,), (64,), (x, y, i32(64)), shared_mem=100 * 1024)
    k.max_dynamic_shared_size_bytes = 228 * 1024
    with pytest.raises(ValueError, match="opt-in maximum"):
        k((1,), (64,), (x, y, i32(64)), shared_mem=1024)
    k.max_dynamic_shared_size_bytes = emu.DEFAULT_SHARED_LIMIT


def test_extern_shared_at_namespace_scope_and_in_namespace():
    code = textwrap.dedent(
        """
        extern __shared__ float smem[];          // namespace scope
        namespace ops {
        extern "C" __global__ void rot(const float* x, float* y, int n) {
            extern __shared__ double dbl[];       // aliases smem, as on a GPU
            smem[threadIdx.x] = x[threadIdx.x];
            __syncthreads();
            y[threadIdx.x] = smem[(threadIdx.x + 1) % n] + 0.0f * (float)dbl[0];
        }
        }  // namespace ops
        """
    )
    mod = emu.EmuModule(code, name="ns_shared.cu")
    x = np.arange(40, dtype=f32)
    y = np.zeros(40, f32)
    mod.get_function("rot")((1,), (40,), (x, y, i32(40)), shared_mem=40 * 8)
    np.testing.assert_array_equal(y, np.roll(x, -1))


def test_float4_loads(mod):
    x = rng(7).standard_normal(4 * 37).astype(f32)
    y = np.zeros_like(x)
    mod.get_function("scale_f4")((2,), (32,), (x, y, i32(37)))
    np.testing.assert_array_equal(y, 2 * x + 1)


def test_float4_alignment_and_size_are_checked(mod):
    k = mod.get_function("scale_f4")
    x = np.zeros(4 * 9, f32)
    with pytest.raises(ValueError, match=r"scale_f4.*'x'.*16-byte aligned"):
        k((1,), (32,), (x[1:33], x[:32].copy(), i32(8)))
    with pytest.raises(ValueError, match=r"scale_f4.*'y'.*multiple of 4"):
        k((1,), (32,), (x[:32], np.zeros(30, f32), i32(8)))


def test_math_functions(mod):
    x = np.linspace(-3, 3, 101)
    y = np.zeros_like(x)
    mod.get_function("math_f64")((1,), (128,), (x, y, np.int64(x.size)))
    np.testing.assert_allclose(y, np.tanh(x) * np.exp(-x * x) + 1 / np.sqrt(1 + x * x), rtol=1e-14)
    xf = x.astype(f32)
    yf = np.zeros_like(xf)
    mod.get_function("math_f32")((1,), (128,), (xf, yf, i32(x.size)))
    xd = xf.astype(np.float64)
    want = np.tanh(xd) * np.exp(-xd * xd) + 1 / np.sqrt(1 + xd * xd) + np.clip(xd, 0, 1)
    np.testing.assert_allclose(yf, want, rtol=1e-5, atol=1e-6)


def test_3d_grid_and_block_indices(mod):
    grid, block = (3, 2, 2), (4, 3, 2)
    nb, nt = 12, 24
    out = np.full(nb * nt, -1, i32)
    mod.get_function("indices3d")(grid, block, (out, i32(3), i32(2)))
    want = (np.arange(nt)[None, :] + 1000 * np.arange(nb)[:, None]).ravel()
    np.testing.assert_array_equal(out, want)


def test_syncthreads_count_and_or(mod):
    x = np.zeros(3 * 64, i32)
    x[:64] = 1  # block 0: all, block 1: none, block 2: some
    x[128:140] = 1
    out = np.zeros(9, i32)
    mod.get_function("sync_count")((3,), (64,), (x, out))
    np.testing.assert_array_equal(out.reshape(3, 3), [[64, 1, 1], [0, 0, 0], [12, 0, 1]])


def test_two_workers_same_results(mod):
    a = rng(8).standard_normal((50, 40)).astype(f32)
    b = rng(9).standard_normal((40, 70)).astype(f32)
    c1 = sgemm(mod, a, b)
    emu.set_workers(2)
    c2 = sgemm(mod, a, b)
    np.testing.assert_array_equal(c1, c2)


# --------------------------------------------------------------------------- reported errors


def test_divergent_syncthreads_is_an_error_not_a_hang(bugs):
    x = np.zeros(32, f32)
    with pytest.raises(
        emu.EmuError, match=r"divergent_barrier.*different barriers.*emu_bugs\.cu:\d+"
    ):
        bugs.get_function("divergent_barrier")((1,), (32,), (x,))


def test_early_return_before_barrier(bugs):
    k = bugs.get_function("early_return")
    x = np.arange(64, dtype=f32)
    y = np.zeros(64, f32)
    k((1,), (32,), (x, y, i32(32)))  # every thread reaches the barrier: fine
    np.testing.assert_array_equal(y[:32], x[:32][::-1])
    with pytest.raises(emu.EmuError, match=r"early_return.*32 of 64 threads.*exited.*emu_bugs\.cu"):
        k((1,), (64,), (x, y, i32(32)))
    emu.set_exit_at_barrier("warn")
    before = emu.stats()["exit_barrier_warnings"]
    with pytest.warns(emu.EmuWarning, match="exited threads"):
        k((1,), (64,), (x, y, i32(32)))
    assert emu.stats()["exit_barrier_warnings"] == before + 1


def test_shuffle_waiting_for_lanes_at_a_barrier_is_a_deadlock(bugs):
    x = np.zeros(32, f32)
    with pytest.raises(emu.EmuError, match=r"(?s)deadlock.*__shfl_down_sync.*__syncthreads"):
        bugs.get_function("shuffle_deadlock")((1,), (32,), (x,))


def test_shuffle_from_exited_lane_is_poisoned(bugs):
    x = np.ones(32, f32)
    with pytest.warns(emu.EmuWarning, match="shuffle_exited"):
        bugs.get_function("shuffle_exited")((1,), (32,), (x,))
    assert np.isnan(x[8:16]).all() and (x[:8] == 1).all()


def test_planted_missing_syncthreads_is_caught():
    # (a) the second __syncthreads of the tiled SGEMM removed: the next tile overwrites
    # shared memory that other threads still read, in at least one thread order
    racy = emu.EmuModule.from_file(FIXTURES, options=("-DPLANT_MISSING_SYNC",))
    a = rng(10).standard_normal((48, 64)).astype(f32)
    b = rng(11).standard_normal((64, 40)).astype(f32)
    want = a.astype(np.float64) @ b
    wrong = []
    for order in ORDERS:
        with emu.schedule(order, seed=3):
            c = sgemm(racy, a, b)
        wrong.append(not np.allclose(c, want, rtol=1e-5, atol=1e-5))
    assert any(wrong), "the missing barrier went unnoticed in every schedule"


@pytest.mark.skipif(emu._libasan_path() is None, reason="g++ has no libasan")
def test_planted_off_by_one_caught_by_asan():
    # (b) `i <= n` reads x[n]: AddressSanitizer reports it with the .cu file and line
    code = textwrap.dedent(
        f"""
        import numpy as np
        from gpugrad.backend import emu
        mod = emu.EmuModule.from_file({str(BUGS)!r}, sanitize=True)
        x = np.ones(100, np.float32)
        y = np.zeros(100, np.float32)
        mod.get_function("off_by_one")((1,), (128,), (x, y, np.int32(100)))
        print("NOT CAUGHT")
        """
    )
    r = emu.run_in_subprocess(code, asan=True)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "NOT CAUGHT" not in r.stdout
    assert "AddressSanitizer" in r.stderr
    assert "emu_bugs.cu" in r.stderr and "off_by_one" in r.stderr


def test_sanitize_needs_preloaded_asan():
    if emu.asan_loaded():
        pytest.skip("this process already runs with ASan")
    with pytest.raises(emu.EmuError, match="asan_env"):
        emu.EmuModule("", sanitize=True)


# --------------------------------------------------------------------------- argument checks


def test_planted_python_float_for_float_param(mod):
    # (c) a Python float for a `float` parameter is garbage on a GPU: TypeError
    code = (
        'extern "C" __global__ void axpy(float a, const float* x, float* y, int n) {\n'
        "  int i = threadIdx.x; if (i < n) y[i] += a * x[i]; }\n"
    )
    k = emu.EmuModule(code, name="axpy.cu").get_function("axpy")
    x, y = np.ones(4, f32), np.zeros(4, f32)
    with pytest.raises(TypeError, match=r"axpy.*'a'.*Python float.*np\.float32"):
        k((1,), (4,), (2.0, x, y, i32(4)))
    with pytest.raises(TypeError, match=r"axpy.*'n'.*Python int.*np\.int32"):
        k((1,), (4,), (f32(2), x, y, 4))
    with pytest.raises(TypeError, match=r"axpy.*'a'.*float32.*float64"):
        k((1,), (4,), (np.float64(2), x, y, i32(4)))
    k((1,), (4,), (f32(2), x, y, i32(4)))
    np.testing.assert_array_equal(y, 2 * x)


def test_array_arguments_are_checked(mod):
    k = mod.get_function("vec_add")
    a = np.zeros(8, f32)
    with pytest.raises(TypeError, match=r"vec_add.*'b'.*float32.*float64"):
        k((1,), (8,), (a, np.zeros(8), a, i32(8)))
    with pytest.raises(ValueError, match=r"vec_add.*'c'.*C-contiguous"):
        k((1,), (8,), (a, a, np.zeros(16, f32)[::2], i32(8)))
    with pytest.raises(TypeError, match=r"vec_add.*'a'.*NumPy array.*list"):
        k((1,), (8,), ([0.0] * 8, a, a, i32(8)))
    with pytest.raises(TypeError, match=r"vec_add\(const float\* a.*takes 4 arguments; got 3"):
        k((1,), (8,), (a, a, a))


def test_launch_limits(mod):
    k = mod.get_function("vec_add")
    a = np.zeros(8, f32)
    args = (a, a, a, i32(0))
    with pytest.raises(ValueError, match="2048 threads"):
        k((1,), (64, 32), args)
    with pytest.raises(ValueError, match="blockz=65"):
        k((1,), (1, 1, 65), args)
    with pytest.raises(ValueError, match="gridy=65536"):
        k((1, 65536), (1,), args)
    with pytest.raises(ValueError, match="gridx=0"):
        k(0, 32, args)
    with pytest.raises(ValueError, match=r"sgemm.*__launch_bounds__\(256\)"):
        z = np.zeros(1, f32)
        mod.get_function("sgemm")((1,), (32, 32), (z, z, z, i32(1), i32(1), i32(1)))


def test_get_function_lists_kernels(mod):
    with pytest.raises(KeyError, match="no kernel named 'nope'.*vec_add.*sgemm") as info:
        mod.get_function("nope")
    assert "vec_add" in str(info.value)
    assert set(mod.kernels) >= {"vec_add", "sgemm", "block_sum", "warp_vote", "reverse_dyn"}


def test_compile_error_points_to_cu_line():
    code = 'extern "C" __global__ void k(float* x) {\n  x[0] = 1.0f;\n  undefined_thing(x);\n}\n'
    with pytest.raises(emu.EmuCompileError, match=r"my_kernels\.cu:3"):
        emu.EmuModule(code, name="my_kernels.cu")


def test_options_are_checked_and_cache_is_used():
    code = 'extern "C" __global__ void fill(int* x) { x[threadIdx.x] = VALUE; }\n'
    with pytest.raises(ValueError, match="unsupported compiler option"):
        emu.EmuModule(code, options=("-O0",))
    m1 = emu.EmuModule(
        code, name="fill.cu", options=("-DVALUE=5", "-arch=sm_90", "--use_fast_math")
    )
    hits = emu.stats()["cache_hits"]
    m2 = emu.EmuModule(code, name="fill.cu", options=("-DVALUE=5",))
    assert m1.so_path == m2.so_path and emu.stats()["cache_hits"] == hits + 1
    x = np.zeros(3, i32)
    m2.get_function("fill")(1, 3, (x,))
    np.testing.assert_array_equal(x, 5)


def test_warp_misc_intrinsics(mod):
    x = rng(12).integers(-40, 40, 32).astype(i32)
    x[5] = 0
    out = np.zeros((32, 8), i32)
    flag = np.zeros(2, np.uint32)
    mod.get_function("warp_misc")((1,), (32,), (x, out, flag))
    key = x % 4  # C's % truncates towards zero
    key = np.where((x < 0) & (key != 0), key - 4, key)
    match = [sum(1 << j for j in range(32) if key[j] == key[i]) for i in range(32)]
    np.testing.assert_array_equal(out[:, 0].view(np.uint32), match)
    assert (out[:, 1].view(np.uint32) == np.uint32(x.astype(np.int64).sum() & 0xFFFFFFFF)).all()
    assert (out[:, 2].view(np.uint32) == 0xFFFFFFFF).all()
    u = x.view(np.uint32)
    popc = np.array([bin(int(v)).count("1") for v in u])
    ffs = np.array([(int(v) & -int(v)).bit_length() for v in u])
    np.testing.assert_array_equal(out[:, 3], popc + 100 * ffs)
    np.testing.assert_array_equal(out[:, 4], [32 - int(v).bit_length() for v in u])
    brev_top = [int(f"{int(v):032b}"[::-1], 2) >> 24 for v in u]
    np.testing.assert_array_equal(out[:, 5], brev_top)
    np.testing.assert_array_equal(out[:, 6], np.maximum(u, 3) > 10)
    assert sorted(out[:, 7]) == [0] + [flag[0]] * 31 and flag[1] == 7


def test_half_precision(mod):
    x = np.linspace(-2, 2, 45).astype(np.float16)
    y = np.ones(45, np.float16)
    mod.get_function("half_axpy")((2,), (32,), (x, y, f32(0.5), i32(45)))
    want = (0.5 * x.astype(np.float32) + 1).astype(np.float16)
    np.testing.assert_array_equal(y, want)


def test_activemask_in_divergent_branches():
    code = textwrap.dedent(
        """
        extern "C" __global__ void am(unsigned* out) {
            const unsigned lane = threadIdx.x;
            if (lane == 31) return;
            unsigned m;
            if (lane < 10) {
                m = __activemask();
                m = __shfl_sync(m, m, 0);  // a shuffle over exactly the active lanes
            } else {
                m = __activemask();
            }
            out[lane] = m;
        }
        """
    )
    out = np.zeros(32, np.uint32)
    for order in ORDERS:
        with emu.schedule(order, seed=4):
            emu.EmuModule(code, name="am.cu").get_function("am")(1, 32, (out,))
        np.testing.assert_array_equal(out[:10], 0x3FF)
        np.testing.assert_array_equal(out[10:31], 0x7FFFFC00)
