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

It is a model: no caches beyond the compulsory traffic, no instruction latencies, no
launch overhead. The vendor figures it is compared with are the ones the kernel review
(`kernel-review.md`, §0 and §4) assumed for an H100 SXM: for other GPUs they are scaled
by the ratio of the peaks and marked so.

>>> gpu = GPUS["H100 SXM"]
>>> round(gpu.peak("float32") / 1e12, 1)
66.9
>>> p = predict(KernelFacts(flops=2 * 4096**3, dram_bytes=3 * 4096**2 * 4, dtype="float32",
...     blocks=1024, threads=256, blocks_per_sm=1, fma_share=0.83), gpu)
>>> 0.6 < p.fraction_of_peak < 0.75
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["GPU", "GPUS", "KernelFacts", "Prediction", "VENDOR", "gpu", "predict"]


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


# workload -> vendor figure on an H100 SXM
VENDOR = {
    "sgemm": Vendor("cuBLAS FP32 SGEMM", tflops=50.0, cite="kernel-review.md §0/§4 (4096³)"),
    "sgemm_mid": Vendor("cuBLAS FP32 SGEMM", tflops=40.0, cite="kernel-review.md §4: 35–45 TF/s"),
    "dgemm": Vendor("cuBLAS DGEMM (DMMA)", tflops=57.5, cite="kernel-review.md §4: 55–60 TF/s"),
    "lstm_gemm": Vendor("cuBLAS", seconds=5e-6, cite="kernel-review.md §4: ~4–6 µs"),
    "conv_fwd": Vendor("cuDNN FP32 implicit GEMM", seconds=0.315e-3, cite="§4: 0.30–0.33 ms"),
    "conv_bwd_data": Vendor("cuDNN FP32", seconds=0.325e-3, cite="kernel-review.md §4"),
    "conv_bwd_filter": Vendor("cuDNN FP32", seconds=0.325e-3, cite="kernel-review.md §4"),
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
    peak = gpu.peak(facts.dtype)
    warps = -(-facts.threads // 32)
    # blocks resident per SM: the occupancy limit, or fewer when the grid is small
    resident = max(1, min(facts.blocks_per_sm, math.ceil(facts.blocks / gpu.sms)))
    slots = resident * gpu.sms
    waves = facts.blocks / slots
    wave_eff = waves / math.ceil(waves) if facts.blocks else 1.0
    lat = _latency_factor(resident * warps)
    if facts.fma_share is not None:
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
    memory = facts.dram_bytes / (0.9 * gpu.bandwidth_tbs * 1e12)
    if memory > compute:
        bound = "DRAM bandwidth"
    elif facts.fma_share is not None:
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
        scale = (gpu.peak(facts.dtype) * gpu.sustained_clock) / (
            ref.peak(facts.dtype) * ref.sustained_clock
        )
        if v.tflops is not None:
            vs = facts.flops / (v.tflops * 1e12 * scale)
        elif v.seconds is not None:
            vs = v.seconds / scale
        elif v.fraction_of_bandwidth is not None:
            vs = facts.dram_bytes / (v.fraction_of_bandwidth * gpu.bandwidth_tbs * 1e12)
        note = f"{v.library} ({v.cite})"
        if gpu.name != H100 and v.fraction_of_bandwidth is None:
            note += f", scaled from the H100 figure by the sustained {facts.dtype} peak ratio"
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
