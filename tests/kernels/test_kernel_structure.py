"""Structural performance properties of the hand-written kernels, checked without a GPU
(issue 15, "Performance truth without a GPU"): each is a test that can fail.

* no register spills, every kernel, sm_80 and sm_90 (NVRTC, CuPy's compiler);
* at least 2 resident blocks per SM for the main matmul tile;
* no shared-memory bank conflicts in the compute loops (the fragment loads), measured
  on emulator traces, for the FP32/FP64 kernels and the TF32 tensor-core ones;
* 100 % sector efficiency of the 16-byte (vector) global load/store paths on aligned
  operands, measured on emulator traces;
* FMA share of the hot loop (SASS): >= 85 % for the main matmul, >= 75 % for conv.

Every property is asserted for float32 and float64 (the float64 paths move 16-byte
double2 vectors, so they are checked like the float4 ones). Cubins are cached by source hash
(``gpugrad.backend.sass``), emulator builds by source hash (``gpugrad.backend.emu``).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpugrad.backend import kernels, profile, sass

pytest.importorskip("gpugrad.backend.emu")


def _compiler_or_skip():
    if sass._nvrtc() is None and sass._nvcc() is None:
        pytest.skip("no CUDA compiler (NVRTC wheel or nvcc)")


def _sass_or_skip():
    _compiler_or_skip()
    if sass.cuobjdump_path() is None:
        pytest.skip("cuobjdump is not installed (pip install nvidia-cuda-cuobjdump)")


TF32 = {"precision": "tf32"}
# (op, shape, dtype, options): shapes are whole tiles, operands aligned (vector paths)
TRACED = {
    "matmul_fwd_f32": ("matmul", (256, 256, 64), "float32", {"tile": "large"}),
    "matmul_mid_f32": ("matmul", (128, 128, 64), "float32", {"tile": "mid"}),
    "matmul_small_f32": ("matmul", (64, 64, 64), "float32", {"tile": "small"}),
    "matmul_small_nt_f32": ("matmul", (64, 64, 64), "float32", {"tile": "small", "trans_b": True}),
    "matmul_fwd_f64": ("matmul", (128, 128, 64), "float64", {"tile": "large"}),
    "matmul_small_nt_f64": ("matmul", (64, 64, 64), "float64", {"tile": "small", "trans_b": True}),
    "conv2d_fwd_f32": ("conv2d_fwd", (2, 8, 8, 16, 64, 3, 3), "float32", {}),
    "conv2d_bwd_data_f32": ("conv2d_bwd_data", (2, 8, 8, 16, 64, 3, 3), "float32", {}),
    "conv2d_bwd_filter_f32": ("conv2d_bwd_filter", (2, 8, 8, 16, 64, 3, 3), "float32", {}),
    "conv2d_fwd_f64": ("conv2d_fwd", (2, 8, 8, 16, 64, 3, 3), "float64", {}),
    "conv2d_bwd_data_f64": ("conv2d_bwd_data", (2, 8, 8, 16, 64, 3, 3), "float64", {}),
    "conv2d_bwd_filter_f64": ("conv2d_bwd_filter", (2, 8, 8, 16, 64, 3, 3), "float64", {}),
    # the TF32 tensor-core kernels: cp.async 16-byte tile copies, swizzled fragment loads
    "matmul_tf32_f32": ("matmul", (256, 256, 64), "float32", TF32),
    "matmul_tf32_m64_f32": ("matmul", (64, 256, 64), "float32", TF32),
    "conv2d_fwd_tf32_f32": ("conv2d_fwd", (2, 8, 8, 16, 64, 3, 3), "float32", TF32),
    "conv2d_bwd_data_tf32_f32": ("conv2d_bwd_data", (2, 8, 8, 16, 64, 3, 3), "float32", TF32),
    "conv2d_bwd_filter_tf32_f32": ("conv2d_bwd_filter", (2, 8, 8, 16, 64, 3, 3), "float32", TF32),
    "relu_fwd_f32": ("relu_fwd", (1 << 14,), "float32", {}),
    "relu_bwd_f64": ("relu_bwd", (1 << 14,), "float64", {}),
}
# the traced kernels with a shared-memory compute loop
GEMM_LIKE = [name for name in TRACED if not name.startswith("relu")]
_traced_cache: dict = {}


def traced_case(name):
    """(case, TraceStats) of one traced launch, run once per test session."""
    if name not in _traced_cache:
        op, shape, dtype, opts = TRACED[name]
        _traced_cache[name] = profile.trace_stats(op, shape, dtype, **opts)
        kernel = _traced_cache[name][0].kernel
        assert kernel == name, f"{name}: the case launched {kernel}"
    return _traced_cache[name]


def traced(name):
    return traced_case(name)[1]


# --------------------------------------------------------------------------- compiled


@pytest.mark.parametrize("arch", [80, 90])
def test_no_register_spills(arch):
    _compiler_or_skip()
    names = [row["name"] for row in kernels.list()]
    spilled = {}
    for name in names:
        cubin, log, _ = sass.compile_cubin(kernels._TABLE[name].file, arch)
        res = sass.parse_ptxas(log)[name]
        if res["spill_stores"] or res["spill_loads"]:
            spilled[name] = res
    assert not spilled, f"sm_{arch} spills: {spilled}"


@pytest.mark.parametrize(
    "arch",
    [
        80,
        90,
    ],
)
def test_main_matmul_tile_has_two_blocks_per_sm(arch):
    _compiler_or_skip()
    cubin, log, _ = sass.compile_cubin("matmul.cu", arch)
    res = sass.parse_ptxas(log)["matmul_fwd_f32"]
    threads = kernels.MATMUL_TILES["f32"]["large"][4]  # (base, BM, BN, BK, threads)
    occ = sass.occupancy(res["registers"], threads, res["smem"], arch)
    assert occ["blocks_per_sm"] >= 2, (res, occ)


@pytest.mark.parametrize("dt", ["f32", "f64"])
def test_conv_kernels_have_the_blocks_per_sm_the_planner_assumes(dt):
    """plan_conv_filter sizes its splits to CONV_BLOCKS_PER_SM resident blocks (sm_90)."""
    _compiler_or_skip()
    cubin, log, _ = sass.compile_cubin("conv2d.cu", 90)
    res = sass.parse_ptxas(log)
    threads = kernels.CONV_TILES[dt][3]
    for op in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_filter"):
        r = res[f"{op}_{dt}"]
        occ = sass.occupancy(r["registers"], threads, r["smem"], 90)
        assert occ["blocks_per_sm"] >= kernels.CONV_BLOCKS_PER_SM[dt], (op, r, occ)


# --------------------------------------------------------------------------- traced


@pytest.mark.parametrize("name", GEMM_LIKE)
def test_no_bank_conflicts_in_the_compute_loop(name):
    st = traced(name)
    loads = [s for s in st.sites if s.space == "shared" and not s.write]
    assert loads, "no shared-memory loads were traced"
    bad = [s for s in loads if s.wavefronts > s.ideal_wavefronts + 1e-9]
    assert not bad, "\n".join(
        f"{s.where}: {s.wavefronts:.2f} wavefronts per request, ideal {s.ideal_wavefronts:.2f}"
        for s in bad
    )


@pytest.mark.parametrize("name", ["matmul_fwd_f64", "matmul_small_nt_f64"])
def test_f64_transposed_tile_stores_are_conflict_free(name):
    """The k-major (transposed) 8-byte shared stores of the float64 matmul tiles (BK =
    16): a row padding of one double2 (PAD<double> = 2) spreads a warp's stores over all
    32 banks; with 4 doubles they were 2-way conflicted."""
    st = traced(name)
    stores = [s for s in st.sites if s.space == "shared" and s.write and s.size == 8]
    assert stores, "no transposed (8-byte) shared stores were traced"
    bad = [s for s in stores if s.wavefronts > s.ideal_wavefronts + 1e-9]
    assert not bad, "\n".join(
        f"{s.where}: {s.wavefronts:.2f} wavefronts per request, ideal {s.ideal_wavefronts:.2f}"
        for s in bad
    )


@pytest.mark.parametrize("name", [*GEMM_LIKE, "relu_fwd_f32", "relu_bwd_f64"])
def test_vector_paths_use_every_sector(name):
    st = traced(name)
    vec = [s for s in st.sites if s.space == "global" and s.size == 16]
    assert vec, "no 16-byte global accesses were traced (the vector path was not taken)"
    bad = [s for s in vec if s.efficiency < 1 - 1e-9]
    assert not bad, "\n".join(
        f"{s.where} {'store' if s.write else 'load'}: {s.sectors:.2f} sectors per request, "
        f"ideal {s.ideal_sectors:.2f}"
        for s in bad
    )


def test_unaligned_operand_is_measured_as_inefficient():
    """The measure can fail: a 4-byte-offset operand takes the scalar path, whose
    requests straddle sectors (the kernel review measured 20 % for this case)."""
    rng = np.random.default_rng(0)
    buf = rng.standard_normal(64 * 65 + 1).astype(np.float32)
    a = buf[1:].reshape(64, 65)[:, :64]  # not contiguous: _prepare copies it (aligned)
    assert a.base is not None
    case = profile.make_case("matmul", (64, 64, 64), "float32", tile="small")
    with profile._traced() as k:
        k._function(case.kernel)
        module = k._modules[("matmul.cu", ("emu", "trace"))]
        module.trace_blocks = [0]
        module.traces.clear()
        view = buf[1 : 1 + 64 * 64].reshape(64, 64)  # contiguous, 4 bytes past alignment
        k.matmul(view, np.ones((64, 64), np.float32), tile="small")
        trace = module.traces[-1]
        module.trace_blocks = None
    st = profile.analyze(trace, module.so_path)
    loads = [s for s in st.sites if s.space == "global" and not s.write]
    assert loads and all(s.size == 4 for s in loads if s.efficiency < 1)
    assert st.global_efficiency < 0.6


# --------------------------------------------------------------------------- SASS


@pytest.mark.parametrize(
    "name, floor",
    [
        ("matmul_fwd_f32", 0.85),
        ("conv2d_fwd_f32", 0.75),
        ("conv2d_bwd_data_f32", 0.75),
        ("conv2d_bwd_filter_f32", 0.75),
    ],
)
def test_hot_loop_fma_share(name, floor):
    _sass_or_skip()
    p = profile.profile_traced(*traced_case(name))  # the trace the other tests made
    loop = p.sass.loop
    assert loop is not None and loop.path_fma > 0
    assert loop.path_share >= floor, (
        f"{name}: FMA share {loop.path_share:.1%} on the path [{loop.rule}] "
        f"({loop.path_fma}/{loop.path_instructions})"
    )
