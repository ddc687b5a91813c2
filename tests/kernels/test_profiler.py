"""The emulator as a profiler (issue 15): the access trace, its grouping into warp requests,
the sector and bank-conflict measures, the SASS hot-loop analysis, occupancy and the model.

Each measure is checked on a kernel whose answer is known by construction (coalesced vs
strided loads, conflict-free vs 2-way vs 32-way shared accesses, broadcast).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpugrad.backend import kernels, perfmodel, profile, sass

emu = pytest.importorskip("gpugrad.backend.emu")

SOURCE = r"""
extern "C" __global__ void strided(const float* x, float* y, int stride) {
    int t = threadIdx.x;
    y[t] = x[t * stride];                       // global load: stride 1 -> 4 sectors
}
extern "C" __global__ void vec4(const float* x, float* y) {
    int t = threadIdx.x;
    float4 v = reinterpret_cast<const float4*>(x)[t];   // 16 sectors, 100 %
    reinterpret_cast<float4*>(y)[t] = v;
}
extern "C" __global__ void banks(float* y, int stride) {
    __shared__ float s[32 * 33];
    int t = threadIdx.x;
    for (int i = t; i < 32 * 33; i += blockDim.x) s[i] = (float)i;
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = s[(t * stride) % (32 * 33)];   // shared load
}
"""


@pytest.fixture(scope="module")
def module():
    m = emu.EmuModule(SOURCE, name="profile_probe.cu", trace=True)
    m.trace_run_all = True
    return m


def _run(module, name, grid, block, args):
    module.traces.clear()
    module.get_function(name)(grid, block, args)
    (trace,) = module.traces
    return profile.analyze(trace, module.so_path)


def _site(stats, space, write):
    (site,) = [s for s in stats.sites if s.space == space and s.write == write]
    return site


@pytest.mark.parametrize("stride, sectors", [(1, 4), (2, 8), (8, 32), (32, 32)])
def test_global_sectors_per_request(module, stride, sectors):
    x = np.zeros(32 * 64, np.float32)
    y = np.zeros(64, np.float32)
    st = _run(module, "strided", (1,), (64,), (x, y, np.int32(stride)))
    load = _site(st, "global", False)
    assert load.requests == 2 and load.lanes == 32  # two warps, one request each
    assert load.sectors == sectors
    assert load.efficiency == pytest.approx(4 / sectors)
    store = _site(st, "global", True)
    assert store.sectors == 4 and store.efficiency == 1.0


def test_vector_loads_are_16_bytes_and_fully_efficient(module):
    x = np.zeros(4 * 32, np.float32)
    y = np.zeros(4 * 32, np.float32)
    st = _run(module, "vec4", (1,), (32,), (x, y))
    for write in (False, True):
        s = _site(st, "global", write)
        assert (s.size, s.sectors, s.efficiency) == (16, 16, 1.0)
    assert st.global_efficiency == 1.0 and st.lane_utilisation == 1.0


@pytest.mark.parametrize("stride, wavefronts", [(1, 1), (0, 1), (2, 2), (33, 1), (32, 32)])
def test_shared_bank_wavefronts(module, stride, wavefronts):
    y = np.zeros(32, np.float32)
    st = _run(module, "banks", (1,), (32,), (y, np.int32(stride)))
    loads = [s for s in st.sites if s.space == "shared" and not s.write]
    (load,) = loads
    assert load.wavefronts == wavefronts  # stride 0: a broadcast; 33: padded, conflict-free
    assert load.ideal_wavefronts == 1
    assert st.shared_load_conflicts == wavefronts - 1


def test_only_traced_blocks_run_and_are_recorded(module):
    x = np.zeros(32 * 8, np.float32)
    y = np.full(32 * 8, -1.0, np.float32)
    module.trace_run_all = False
    module.trace_blocks = [1, 6]
    try:
        st = _run(module, "strided", (8,), (32,), (x, y, np.int32(1)))
    finally:
        module.trace_run_all = True
        module.trace_blocks = None
    assert st.blocks == (1, 6)
    assert set(np.unique(module.traces[-1].records["block"])) == {1, 6}
    assert _site(st, "global", False).requests == 2


def test_occupancy_matches_the_cuda_calculator():
    # the review's figures (kernel-review.md §3.1)
    assert sass.occupancy(133, 256, 16896, 90)["blocks_per_sm"] == 1
    assert sass.occupancy(128, 256, 16896, 90)["blocks_per_sm"] == 2
    assert sass.occupancy(66, 256, 17408, 90)["blocks_per_sm"] == 3
    assert sass.occupancy(64, 256, 17408, 90)["blocks_per_sm"] == 4
    assert sass.occupancy(79, 64, 9216, 90)["blocks_per_sm"] == 12
    full = sass.occupancy(28, 256, 0, 90)
    assert full["warps_per_sm"] == 64 and full["occupancy"] == 1.0
    big = sass.occupancy(32, 1024, 120 * 1024, 90)
    assert big["blocks_per_sm"] == 1 and big["limiter"] == "shared memory"


def _ins(addr, op, args="", pred=""):
    return sass.Instr(addr, pred, op, args)


def test_hot_loop_path_skips_the_longer_fallback():
    # head -> (fast: LDG.128 | slow: 4 LDG.32 + 6 IMAD) -> 8 FFMA -> back edge
    code = [_ins(0x00, "MOV")]
    code += [_ins(0x10, "ISETP.NE.AND"), _ins(0x20, "BRA", "0x80", "@P0")]  # loop head
    code += [_ins(0x30, "LDG.E.128"), _ins(0x40, "BRA", "0x130")]  # fast path
    code += [_ins(0x80 + 0x10 * i, "LDG.E") for i in range(4)]
    code += [_ins(0xC0 + 0x10 * i, "IMAD") for i in range(7)]  # slow path ends at 0x120
    code += [_ins(0x130 + 0x10 * i, "FFMA") for i in range(8)]
    code += [_ins(0x1B0, "BRA", "0x10", "@P1"), _ins(0x1C0, "EXIT")]
    loop = sass.hot_loop(code)
    assert loop.static_fma == 8
    assert loop.path_instructions == 2 + 2 + 8 + 1  # head, fast path, FFMA block, branch
    assert loop.path_share == pytest.approx(8 / 13)
    assert loop.static_share == pytest.approx(8 / len(code[1:-1]))
    # demanding 0 vector loads forces the scalar fallback
    slow = sass.hot_loop(code, vector_loads=0)
    assert slow.path_instructions == 2 + 11 + 8 + 1
    assert sass.hot_loop([_ins(0, "FFMA"), _ins(0x10, "EXIT")]) is None


def test_model_bounds_and_vendor_comparison():
    h100 = perfmodel.gpu("h100")
    facts = perfmodel.KernelFacts(
        flops=2 * 4096**3,
        dram_bytes=3 * 4096**2 * 4,
        dtype="float32",
        blocks=1024,
        threads=256,
        blocks_per_sm=1,
        fma_share=0.8,
        fma_per_iteration=512,
        instructions_per_iteration=640,
        shared_wavefronts_per_iteration=12,
    )
    p = perfmodel.predict(facts, h100, "sgemm")
    assert p.bound.startswith("issue")
    waves = 1024 / 132
    eff = 0.8 * 0.93 * (waves / 8) * 0.83
    assert p.efficiency == pytest.approx(eff)
    assert p.seconds == pytest.approx(facts.flops / (66.9e12 * eff))
    assert p.vendor_seconds == pytest.approx(facts.flops / 50e12)
    # a shared-memory-bound loop: 4 x wavefronts > instructions
    lds = perfmodel.predict(
        perfmodel.KernelFacts(**{**facts.__dict__, "shared_wavefronts_per_iteration": 320}), h100
    )
    assert lds.bound == "shared-memory pipe" and lds.seconds > p.seconds
    # memory-bound elementwise work: time = bytes / (0.9 x bandwidth) on each GPU
    for name in ("H200", "A100 SXM", "L40S", "GH200"):
        g = perfmodel.gpu(name)
        e = perfmodel.predict(
            perfmodel.KernelFacts(1e6, 8e9, "float32", 1056, 256, 8), g, "elementwise"
        )
        assert e.bound == "DRAM bandwidth"
        assert e.seconds == pytest.approx(8e9 / (0.9 * g.bandwidth_tbs * 1e12))
        assert e.fraction_of_vendor == pytest.approx(1.0)
    with pytest.raises(KeyError, match="unknown GPU"):
        perfmodel.gpu("Z80")


def test_skinny_fp32_vendor_figure_follows_the_shape():
    """sgemm_skinny: max(FLOPs at 50 TF/s, bytes at 90 % of HBM) + 2 µs, per GPU."""

    def vendor(m, n, k, gpu):
        f = perfmodel.KernelFacts(
            2.0 * m * n * k, 4.0 * (m * k + k * n + m * n), "float32", 128, 256, 2, 0.7
        )
        return perfmodel.predict(f, perfmodel.gpu(gpu), "sgemm_skinny").vendor_seconds

    assert vendor(64, 2048, 512, "H100") == pytest.approx(2 * 64 * 2048 * 512 / 50e12 + 2e-6)
    assert vendor(64, 4096, 4096, "H100") == pytest.approx(2 * 64 * 4096**2 / 50e12 + 2e-6)
    # a GEMV streams a 64 MB operand: the bandwidth term, faster on the H200
    h100, h200 = vendor(1, 4096, 4096, "H100"), vendor(1, 4096, 4096, "H200")
    assert h100 == pytest.approx(4 * (4096 * 2 + 4096**2) / (0.9 * 3.35e12) + 2e-6)
    assert h200 < h100
    assert vendor(1, 64, 64, "H100") == pytest.approx(2e-6, rel=0.01)  # latency only


def test_skinny_fp32_case_models_the_split_k_plan_dispatch_runs():
    """The FP32 matmul profile of an LSTM-shaped product models what dispatch launches:
    K split over grid[2] (the partial products' workspace written and read back as
    extra DRAM traffic, the hot loop over one split's k range), and our predicted time
    carries the same 2 µs of launch latency as the skinny vendor roofline."""
    case = profile.make_case("matmul", (64, 2048, 512), "float32")
    plan = kernels.plan_matmul(64, 2048, 512, "f32", kernels.EMU_NUM_SMS)
    assert case.grid == plan.grid and plan.grid[2] > 1
    bk = kernels.MATMUL_TILES["f32"]["mid"][3]
    k_chunk, splits = kernels.matmul_k_chunk(512, plan.grid[2], bk)
    assert case.iterations == -(-k_chunk // bk) < 512 // bk
    assert case.extra_bytes == 2 * splits * 64 * 2048 * 4
    big = profile.make_case("matmul", (4096, 4096, 4096), "float32")
    assert big.grid[2] == 1 and big.extra_bytes == 0
    facts = perfmodel.KernelFacts(2.0 * 64 * 2048 * 512, 4.0e6, "float32", 256, 256, 2, 0.7)
    h100 = perfmodel.gpu("H100")
    with_vendor = perfmodel.predict(facts, h100, "sgemm_skinny")
    assert with_vendor.seconds == pytest.approx(perfmodel.predict(facts, h100).seconds + 2e-6)


def test_lstm_step_adds_recurrence_gemms_and_db():
    """profile lstm-step: each part's model, summed, against cuDNN's (GEMMs injected)."""
    shapes = []

    def gemm(m, n, k, trans_a, trans_b):
        shapes.append((m, n, k, trans_a, trans_b))
        f = perfmodel.KernelFacts(
            2.0 * m * n * k, 4.0 * (m * k + k * n + m * n), "float32", 1000, 256, 2, 0.89
        )
        return [perfmodel.predict(f, perfmodel.gpu(g), "sgemm") for g in ("H100", "H200")]

    h100, h200 = profile.lstm_step(100, 64, 512, 512, gpus=("H100 SXM", "H200"), gemm=gemm)
    # 4 products, dW and dR of one shape (inputs = hidden): profiled once
    assert sorted(shapes) == sorted(
        [
            (6400, 2048, 512, False, True),
            (6400, 512, 2048, False, False),
            (2048, 512, 6400, True, False),
        ]
    )
    names = [p[0] for p in h100.parts]
    assert names[0].startswith("recurrence fwd (lstm_fwd_persistent_f32")
    assert names[1].startswith("recurrence bwd (lstm_bwd_persistent_f32")
    assert len(names) == 7 and names[-1].startswith("db")
    assert h100.seconds == pytest.approx(sum(p[1] for p in h100.parts))
    assert h100.ratio == pytest.approx(h100.seconds / h100.vendor_seconds)
    # cuDNN's recurrence: 6.5 µs per step and direction; gpugrad's: the planner's
    # cycles at the sustained clock (1.83 GHz x 0.83) plus one grid barrier per step
    from gpugrad.backend import kernels

    plan = kernels.plan_lstm_persistent("fwd", 64, 512, "f32", 132, 227 * 1024)
    assert h100.parts[0][2] == pytest.approx(100 * 6.5e-6)
    clock = 494.7e12 / (132 * 2048) * 0.83
    assert h100.parts[0][1] == pytest.approx(100 * (plan.cycles / clock + 1.5e-6))
    # the H200's extra bandwidth only shortens the memory-bound parts
    assert h200.parts[-1][1] < h100.parts[-1][1]
    assert "1.5x" in profile.lstm_step_report([h100, h200], (100, 64, 512, 512))
