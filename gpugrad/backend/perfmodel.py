"""A roofline-style performance model for the hand-written kernels on a named GPU.

It turns what :mod:`gpugrad.backend.profile` measured without a GPU (FLOPs and bytes of
the launch, registers and shared memory → blocks per SM, the FMA share of the hot loop
from the SASS, shared-memory wavefronts per loop iteration from the emulator trace)
into a predicted time and a fraction of the GPU's peak:

* compute efficiency = FMA / max(instructions, 4 × shared wavefronts) per warp and
  iteration of the hot loop: one warp instruction issues per SM sub-partition and
  clock (4 per SM) and the shared-memory pipe returns one wavefront per SM and clock;
* × a latency factor for few resident warps (0.93 at 8 warps per SM, 0.97 at 16 or
  more; the kernel review's assumption) and the wave efficiency of the grid
  (blocks / (resident blocks per SM × SMs), rounded up to whole waves);
* × the clock an FMA-saturated part holds (H100-class: 0.83 of boost, from cuBLAS's
  50 TF/s read as ~90 % of the sustained peak; 1.0 for the others: not known here);
* time = max(FLOPs / (peak × efficiency), compulsory bytes / (0.9 × bandwidth)).

Tensor-core kernels (``KernelFacts.tensor_cores``; the hot loop's FMA-class
instructions are HMMA, one ``mma.sync.m16n8k8`` TF32 = 2048 FLOP each) are measured
against the dense TF32 peak, with three pipes per hot-loop iteration and warp, in SM
clocks: the tensor pipe (HMMA x 2048 / (TF32 FLOP per SM and clock x the fraction of it
``mma.sync`` reaches: 2/3 on Hopper, whose full rate needs ``wgmma``; 1 on sm_80/89),
issue (instructions / 4) and the shared-memory pipe (wavefronts). The busiest one sets
the rate: efficiency = mma.sync fraction x tensor / max(tensor, issue, shared), then
the latency, wave and clock factors as above, and / ``mma_flops_ratio`` (3 for 3xTF32:
three mma per useful product). Counting an HMMA as one FMA against the FP32 peak, as
the FMA model would, is wrong by the ~2048/64 FLOP ratio of the two instructions and
ignores the shared-memory pipe, which is what limits mma.sync kernels with small warp
tiles (see :data:`TENSOR_CORES`).

It is a model: no caches beyond the compulsory traffic, no instruction latencies, no
launch overhead. The vendor figures it is compared with are the ones the kernel review
(`kernel-review.md`, §0 and §4) assumed for an H100 SXM: for other GPUs they are scaled
by the ratio of the peaks and marked so. FP32 GEMMs with M or N <= 64 are compared with a
vendor roofline instead of a fixed time (``sgemm_skinny``: the large-GEMM cuBLAS rate and
90 % of HBM, whichever is slower, plus 2 µs of ramp-up, tail and split-K reduction that
so short a kernel cannot hide), so the figure follows the shape and the GPU. The same
2 µs are added to our kernel's predicted time there, so both sides carry them:

>>> skinny = KernelFacts(flops=2 * 64 * 2048 * 512, dram_bytes=4 * (64 * 512 + 512 * 2048
...     + 64 * 2048), dtype="float32", blocks=128, threads=256, blocks_per_sm=2, fma_share=0.7)
>>> p = predict(skinny, GPUS["H100 SXM"], "sgemm_skinny")
>>> round(p.vendor_seconds * 1e6, 1), p.seconds > 2e-6
(4.7, True)

>>> gpu = GPUS["H100 SXM"]
>>> round(gpu.peak("float32") / 1e12, 1)
66.9
>>> p = predict(KernelFacts(flops=2 * 4096**3, dram_bytes=3 * 4096**2 * 4, dtype="float32",
...     blocks=1024, threads=256, blocks_per_sm=1, fma_share=0.83), gpu)
>>> 0.6 < p.fraction_of_peak < 0.75
True
>>> tc = predict(KernelFacts(flops=2 * 4096**3, dram_bytes=3 * 4096**2 * 4, dtype="float32",
...     blocks=512, threads=256, blocks_per_sm=1, fma_share=0.25, fma_per_iteration=128,
...     instructions_per_iteration=512, shared_wavefronts_per_iteration=176,
...     tensor_cores=True), gpu, "sgemm_tf32")
>>> tc.bound, round(tc.efficiency, 2)
('tensor pipe (mma.sync at 67% of the TF32 peak)', 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "GPU",
    "GPUS",
    "TENSOR_CORES",
    "KernelFacts",
    "Prediction",
    "VENDOR",
    "gpu",
    "predict",
]


@dataclass(frozen=True)
class GPU:
    """Data-sheet figures (dense, boost clock)."""

    name: str
    arch: int  # SM version used for the occupancy limits
    sms: int
    fp32_tflops: float
    tf32_tflops: float  # dense tensor-core TF32
    fp64_tflops: float  # FP64 without tensor cores (DFMA)
    bandwidth_tbs: float
    sustained_clock: float  # fraction of boost an FMA-saturated part holds (see above)
    source: str

    def peak(self, dtype: str, tensor_cores: bool = False) -> float:
        """FLOP/s at boost clock."""
        if dtype == "float64":
            return self.fp64_tflops * 1e12
        return (self.tf32_tflops if tensor_cores else self.fp32_tflops) * 1e12


GPUS = {
    g.name: g
    for g in [
        GPU("H100 SXM", 90, 132, 66.9, 494.7, 33.5, 3.35, 0.83, "NVIDIA H100 datasheet"),
        GPU("H200", 90, 132, 66.9, 494.7, 33.5, 4.8, 0.83, "NVIDIA H200 datasheet"),
        GPU("GH200", 90, 132, 66.9, 494.7, 33.5, 4.0, 0.83, "GH200 datasheet (96 GB HBM3)"),
        GPU("A100 SXM", 80, 108, 19.5, 156.0, 9.7, 2.039, 1.0, "NVIDIA A100 datasheet (80 GB)"),
        GPU("L40S", 89, 142, 91.6, 183.0, 1.4, 0.864, 1.0, "NVIDIA L40S datasheet"),
    ]
}


@dataclass(frozen=True)
class TensorCores:
    """Dense TF32 tensor-core rate of one SM and the fraction of it ``mma.sync`` gets."""

    tf32_flop_per_clk_sm: int  # dense; = tf32_tflops / (SMs x the clock of that figure)
    mma_sync_fraction: float
    source: str


_HOPPER_TC = TensorCores(
    2048,
    2 / 3,
    "H100 whitepaper (1024 dense TF32 FMA per SM and clock: 494.7 TF/s at 1.83 GHz); "
    "mma.sync reaches about 2/3 of it, the full rate needs wgmma (FlashAttention-3 paper, "
    "Shah et al. 2024, §2; the performance anchors: hand-written mma.sync TF32 reached "
    "30 % of cuBLAS, wgmma + TMA 94 %)",
)
#: per GPU name: what the tensor-core model assumes (see the module docstring)
TENSOR_CORES = {
    "H100 SXM": _HOPPER_TC,
    "H200": _HOPPER_TC,
    "GH200": _HOPPER_TC,
    "A100 SXM": TensorCores(
        1024, 1.0, "A100 whitepaper (512 dense TF32 FMA per SM and clock); mma.sync is native"
    ),
    "L40S": TensorCores(
        512, 1.0, "L40S datasheet (183 TF/s dense TF32 at 2.52 GHz); mma.sync is native"
    ),
}
MMA_TF32_FLOP = 2 * 16 * 8 * 8  # one mma.sync.m16n8k8 .tf32 (SASS HMMA.1688.F32.TF32)


def gpu(name: str) -> GPU:
    """The GPU called ``name`` (case and spaces ignored: ``"h100"`` is the H100 SXM)."""
    key = name.lower().replace(" ", "").replace("-", "")
    for g in GPUS.values():
        full = g.name.lower().replace(" ", "")
        if key in (full, full.replace("sxm", "")):
            return g
    raise KeyError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")


@dataclass(frozen=True)
class Vendor:
    """What the vendor library achieves on the H100 SXM for one workload, as the kernel
    review assumed it (``kernel-review.md``, §0 and §4)."""

    library: str
    tflops: float | None = None  # FP32 (or FP64) rate
    seconds: float | None = None  # or a time
    fraction_of_bandwidth: float | None = None  # memory-bound: fraction of HBM bandwidth
    cite: str = "kernel-review.md §4"
    latency_seconds: float = 0.0  # added to a roofline figure (not scaled between GPUs)


# workload -> vendor figure on an H100 SXM
VENDOR = {
    "sgemm": Vendor("cuBLAS FP32 SGEMM", tflops=50.0, cite="kernel-review.md §0/§4 (4096³)"),
    "sgemm_mid": Vendor("cuBLAS FP32 SGEMM", tflops=40.0, cite="kernel-review.md §4: 35–45 TF/s"),
    # TF32: cuBLAS runs wgmma kernels on sm_90; a roofline with the bandwidth floor, so
    # skinny (memory-bound) shapes are compared with what the vendor could at best do
    "sgemm_tf32": Vendor(
        "cuBLAS TF32 (CUBLAS_COMPUTE_32F_FAST_TF32, wgmma)",
        tflops=350.0,
        fraction_of_bandwidth=0.9,
        cite="kernel-review.md §0: ~300–400 TF/s on 4096³, midpoint; ≥ 90 % of HBM when "
        "memory-bound",
    ),
    "dgemm": Vendor("cuBLAS DGEMM (DMMA)", tflops=57.5, cite="kernel-review.md §4: 55–60 TF/s"),
    # FP32 GEMMs with M or N <= 64 (an LSTM step, batch-64 layers, GEMV-like): cuBLAS
    # splits K (or uses a GEMV kernel) until the SMs are busy, so its rate is bounded by
    # the large-GEMM FP32 rate and by HBM; on top, ~2 µs of ramp-up, tail and the
    # split-K reduction pass that a kernel this short cannot hide (calibrated: 64x2048x512
    # -> 4.7 µs on an H100, the review's ~4–6 µs)
    "sgemm_skinny": Vendor(
        "cuBLAS FP32 SGEMM, skinny (roofline: 50 TF/s, 90 % of HBM, + 2 µs latency)",
        tflops=50.0,
        fraction_of_bandwidth=0.9,
        latency_seconds=2e-6,
        cite="kernel-review.md §4: 64x2048x512 ~4–6 µs",
    ),
    "conv_fwd": Vendor("cuDNN FP32 implicit GEMM", seconds=0.315e-3, cite="§4: 0.30–0.33 ms"),
    "conv_bwd_data": Vendor("cuDNN FP32", seconds=0.325e-3, cite="kernel-review.md §4"),
    "conv_bwd_filter": Vendor("cuDNN FP32", seconds=0.325e-3, cite="kernel-review.md §4"),
    # TF32 (PyTorch's default cudnn.allow_tf32): the review's forward figure for its layer
    # (N64 56x56 64->64 3x3, 14.8 GFLOP in ~65-80 µs: midpoint 72.5 µs = 204 TF/s), as a
    # rate so other shapes scale; backward data and filter are assumed to run at the same
    # rate (same GEMM size; the review gives no TF32 figure for them), with the
    # bandwidth floor for memory-bound shapes
    "conv_fwd_tf32": Vendor(
        "cuDNN TF32 implicit GEMM",
        tflops=204.0,
        fraction_of_bandwidth=0.9,
        cite="kernel-review.md §0: ~65–80 µs for the N64 56² 64→64 3x3 forward",
    ),
    "conv_bwd_data_tf32": Vendor(
        "cuDNN TF32 (dgrad)",
        tflops=204.0,
        fraction_of_bandwidth=0.9,
        cite="assumed: the forward's rate (kernel-review.md §0 gives forward only)",
    ),
    "conv_bwd_filter_tf32": Vendor(
        "cuDNN TF32 (wgrad)",
        tflops=204.0,
        fraction_of_bandwidth=0.9,
        cite="assumed: the forward's rate (kernel-review.md §0 gives forward only)",
    ),
    "elementwise": Vendor("cupy.maximum", fraction_of_bandwidth=0.9, cite="§4: ~90 % of HBM"),
    "lstm_cell": Vendor(
        "a memory-bound cell at 90 % of HBM (cuDNN fuses the cell into its GEMM; at this "
        "size both are launch-latency-bound, ~2–3 µs, which the model leaves out)",
        fraction_of_bandwidth=0.9,
        cite="kernel-review.md §5.4",
    ),
}
H100 = "H100 SXM"


@dataclass(frozen=True)
class KernelFacts:
    """What the model needs about one launch."""

    flops: float
    dram_bytes: float
    dtype: str
    blocks: int
    threads: int
    blocks_per_sm: int
    fma_share: float | None = None  # FMA / instructions on the hot-loop path (None: no loop)
    fma_per_iteration: float | None = None  # per warp, on that path
    instructions_per_iteration: float | None = None
    shared_wavefronts_per_iteration: float | None = None  # per warp (emulator trace)
    tensor_cores: bool = False  # the FMA-class instructions are TF32 HMMA (mma.sync)
    mma_flops_ratio: float = 1.0  # mma FLOPs per useful FLOP (3xTF32: 3)
    extra_dram_bytes: float = 0.0  # traffic of this kernel only (split-K workspace)


@dataclass(frozen=True)
class Prediction:
    gpu: str
    seconds: float
    compute_seconds: float
    memory_seconds: float
    efficiency: float  # compute efficiency (fraction of the boost peak)
    bound: str
    flops_per_second: float
    fraction_of_peak: float
    vendor_seconds: float | None
    vendor_note: str

    @property
    def fraction_of_vendor(self) -> float | None:
        if not self.vendor_seconds:
            return None
        return self.vendor_seconds / self.seconds


def _latency_factor(warps_per_sm: int) -> float:
    """Fraction of the issue rate few resident warps sustain (review: 0.93 at 8 warps
    per SM, 0.97 at 16+; below 8, proportionally fewer: 2 warps leave 2 of the 4
    schedulers idle and the other two stalled on dependences)."""
    if warps_per_sm >= 16:
        return 0.97
    if warps_per_sm >= 8:
        return 0.93 + 0.04 * (warps_per_sm - 8) / 8
    return 0.93 * max(warps_per_sm, 1) / 8


def predict(facts: KernelFacts, gpu: GPU, vendor: str | None = None) -> Prediction:
    """Predicted time of one launch on ``gpu`` and, with ``vendor`` (a key of
    :data:`VENDOR`), the vendor library's time for the same work."""
    tensor = facts.tensor_cores and facts.dtype == "float32"
    peak = gpu.peak(facts.dtype, tensor_cores=tensor)
    warps = -(-facts.threads // 32)
    # blocks resident per SM: the occupancy limit, or fewer when the grid is small
    resident = max(1, min(facts.blocks_per_sm, math.ceil(facts.blocks / gpu.sms)))
    slots = resident * gpu.sms
    waves = facts.blocks / slots
    wave_eff = waves / math.ceil(waves) if facts.blocks else 1.0
    lat = _latency_factor(resident * warps)
    if tensor and facts.fma_per_iteration:
        tc = TENSOR_CORES[gpu.name]
        # SM clocks per hot-loop iteration of one warp, per pipe
        pipes = {
            "tensor pipe": facts.fma_per_iteration
            * MMA_TF32_FLOP
            / (tc.tf32_flop_per_clk_sm * tc.mma_sync_fraction),
            "issue": (facts.instructions_per_iteration or 0) / 4,
            "shared-memory pipe": facts.shared_wavefronts_per_iteration or 0.0,
        }
        bound = max(pipes, key=lambda k: pipes[k])
        issue = tc.mma_sync_fraction * pipes["tensor pipe"] / pipes[bound]
        if bound == "tensor pipe" and tc.mma_sync_fraction < 1:
            bound += f" (mma.sync at {tc.mma_sync_fraction:.0%} of the TF32 peak)"
        eff = issue * lat * wave_eff * gpu.sustained_clock / facts.mma_flops_ratio
    elif facts.fma_share is not None:
        issue = facts.fma_share
        bound = "issue (FMA share)"
        if facts.shared_wavefronts_per_iteration and facts.fma_per_iteration:
            ins = facts.instructions_per_iteration or facts.fma_per_iteration / facts.fma_share
            lds = 4 * facts.shared_wavefronts_per_iteration
            if lds > ins:
                issue = facts.fma_per_iteration / lds
                bound = "shared-memory pipe"
        eff = issue * lat * wave_eff * gpu.sustained_clock
    else:
        eff, bound = 1.0, "no FMA loop"
    compute = facts.flops / (peak * eff) if facts.flops else 0.0
    memory = (facts.dram_bytes + facts.extra_dram_bytes) / (0.9 * gpu.bandwidth_tbs * 1e12)
    if memory > compute:
        bound = "DRAM bandwidth"
    elif facts.fma_share is not None or tensor:
        if resident * warps < 8:
            bound += f" + latency ({resident * warps} warps/SM)"
        if wave_eff < 0.8:
            bound += f" + wave tail ({wave_eff:.0%} of the SMs busy)"
    t = max(compute, memory, 1e-9)
    vs, note = None, ""
    if vendor is not None:
        v = VENDOR[vendor]
        ref = GPUS[H100]
        # other GPUs: the vendor keeps its H100 fraction of the sustained peak
        vtc = vendor.endswith("_tf32")  # sgemm_tf32, conv_*_tf32: tensor-core vendors
        scale = (gpu.peak(facts.dtype, vtc) * gpu.sustained_clock) / (
            ref.peak(facts.dtype, vtc) * ref.sustained_clock
        )
        if v.tflops is not None:
            vs = facts.flops / (v.tflops * 1e12 * scale)
            if v.fraction_of_bandwidth is not None:  # a roofline: the bandwidth floor
                vs = max(
                    vs, facts.dram_bytes / (v.fraction_of_bandwidth * gpu.bandwidth_tbs * 1e12)
                )
        elif v.seconds is not None:
            vs = v.seconds / scale
        elif v.fraction_of_bandwidth is not None:
            vs = facts.dram_bytes / (v.fraction_of_bandwidth * gpu.bandwidth_tbs * 1e12)
        if vs is not None:
            vs += v.latency_seconds
        if v.latency_seconds:
            # why: the same ramp-up, tail and split-K reduction pass hit our kernel (which
            # splits K on these shapes too); comparing a latency-free figure with the
            # vendor's latency-inclusive one flattered ours (64x2048x512: 107 % of cuBLAS)
            t += v.latency_seconds
            bound += f" + {v.latency_seconds * 1e6:g} µs launch latency (as the vendor's)"
        note = f"{v.library} ({v.cite})"
        if gpu.name != H100 and (v.fraction_of_bandwidth is None or v.tflops is not None):
            what = "TF32 tensor-core" if vtc else facts.dtype
            note += f", scaled from the H100 figure by the sustained {what} peak ratio"
    return Prediction(
        gpu=gpu.name,
        seconds=t,
        compute_seconds=compute,
        memory_seconds=memory,
        efficiency=eff,
        bound=bound,
        flops_per_second=facts.flops / t,
        fraction_of_peak=facts.flops / t / peak if facts.flops else 0.0,
        vendor_seconds=vs,
        vendor_note=note,
    )
