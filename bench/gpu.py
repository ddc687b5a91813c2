"""GPU benchmarks: gpugrad's hand-written kernels against the vendor libraries.

    python bench/gpu.py [--quick] [--max-gemm 4096] [--out bench/results]

Compares, on the active CUDA device,

* SGEMM (``matmul``) against cuBLAS (``cupy.matmul``) over a size sweep up to 4096^3,
  square and skinny;
* the fused linear layer (GEMM + bias + relu in one launch) against cuBLAS followed
  by separate bias and relu kernels, and the fused relu-backward GEMM against an
  unfused mask + cuBLAS;
* relu forward/backward against CuPy elementwise kernels (GB/s);
* conv2d forward / backward-data / backward-filter against cuDNN through PyTorch
  (when a CUDA build of PyTorch is installed);
* an LSTM layer (input projection hoisted into one GEMM, then per step one GEMM and
  one fused cell kernel) against PyTorch's cuDNN LSTM (when installed);
* ``gg.dlaccelerate`` of an LSTM loss-and-gradient step: gpugrad kernel launches per
  step before graph capture (plain replay) and after (one CUDA graph launch), with
  both step times (group ``accelerate``; ``lstm_step_launches`` also runs on ``emu``).

Each row gives the time, TFLOP/s or GB/s, the percentage of the vendor path and of
the card's peak (looked up from the device name; the card is recorded), and the
maximum relative difference from the vendor result.

How it measures (so that the comparisons are like for like):

* FP32 is compared with FP32: PyTorch's TF32 switches
  (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``) and
  CuPy's cuBLAS compute type are set explicitly; the vendor's TF32 time is measured
  too and reported beside it (``vendor_tf32_ms``), and ours in TF32 when
  ``gg.kernels`` offers a TF32 switch;
* ``ours_ms``/``vendor_ms`` are GPU times: a spin kernel keeps the GPU busy while
  Python enqueues the call, so CUDA events time the kernels, not Python's launch
  overhead; ``*_host_ms`` is the Python time to issue one call and ``*_wall_ms`` the
  event time without the spin (what back-to-back calls cost: the larger of the two);
* the memory-bound rows (relu) flush the L2 cache (a memset of twice its size)
  before every timed run;
* the LSTM backward computes the same gradients on both sides: input, both weight
  matrices and the bias;
* peaks: FP32 (CUDA cores) and dense TF32 (tensor cores) from the data sheet of the
  card named by the driver (GH200 and H200 NVL told apart from H200/H100), else
  estimated from clocks queried with ``cudaDeviceGetAttribute`` (CUDA 13 removed the
  clock fields of ``cudaDeviceProp``), NVML or nvidia-smi.

``--time-budget S`` skips the groups that would start after S seconds (the results so
far are still written). Results go to
``bench/results/gpu-<device>.json`` and, with matplotlib, a PNG plot beside it; an
existing file is never overwritten (a new name with the date and time is used
instead) unless --overwrite is given, and the script prints every path it wrote.
Inputs are drawn from CuPy's generator seeded with --seed. Without a GPU it prints
``no GPU: <reason>`` and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name pattern -> (FP32 TFLOP/s on CUDA cores, dense TF32 tensor-core TFLOP/s (None: no
# TF32), memory TB/s), vendor data sheets (sparse figures halved). First match wins, so
# GH200 comes before H200 (its name contains "H200") and NVL/PCIe before the SXM parts.
PEAKS = [
    (r"GH200.*(144|HBM3e)", 67.0, 494.7, 4.9),
    (r"GH200", 67.0, 494.7, 4.0),  # 96 GB HBM3
    (r"H200.*NVL", 60.0, 417.5, 4.8),
    (r"H200", 67.0, 494.7, 4.8),  # SXM, 141 GB HBM3e
    (r"H100.*NVL", 60.0, 417.5, 3.9),
    (r"H100.*(PCIe|PCI)", 51.0, 378.0, 2.0),
    (r"H100", 67.0, 494.7, 3.35),  # SXM5 / HBM3
    (r"A100.*80", 19.5, 156.0, 2.039),
    (r"A100", 19.5, 156.0, 1.555),
    (r"L40S", 91.6, 183.0, 0.864),
    (r"L4\b", 30.3, 60.0, 0.3),
    (r"A10\b", 31.2, 62.5, 0.6),
    (r"A6000", 38.7, 77.4, 0.768),
    (r"RTX 4090", 82.6, 82.6, 1.008),
    (r"RTX 3090", 35.6, 35.6, 0.936),
    (r"V100", 15.7, None, 0.9),
    (r"T4\b", 8.1, None, 0.32),
]
SIMULATED = False  # --simulate: the cuda-sim device, tiny sizes
FP32_LANES_PER_SM = {7: 64, 8: 64, 9: 128}  # sm_86/sm_89 have 128; handled below


def _nvidia_smi_clocks():
    """(max SM MHz, max memory MHz) from nvidia-smi, or (None, None)."""
    import subprocess

    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=clocks.max.sm,clocks.max.mem",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")[0]
        sm, mem = (float(v) for v in out.split(","))
        return sm, mem
    except Exception:
        return None, None


def device_clocks(cp) -> dict:
    """SM and memory clocks (kHz), bus width (bits) and L2 size (bytes), queried in a way
    that works on CUDA 13 (which removed ``clockRate``/``memoryClockRate`` from
    ``cudaDeviceProp``): ``cudaDeviceGetAttribute`` first, then the properties of older
    runtimes, then nvidia-smi. Missing values are None."""
    rt = cp.cuda.runtime
    dev = cp.cuda.Device().id

    def attr(name):
        code = getattr(rt, name, None)
        if code is None:
            return None
        try:
            return int(rt.deviceGetAttribute(code, dev)) or None
        except Exception:
            return None

    try:
        props = rt.getDeviceProperties(dev)
    except Exception:
        props = {}
    sm, mem = attr("cudaDevAttrClockRate"), attr("cudaDevAttrMemoryClockRate")
    source = "cudaDeviceGetAttribute"
    if not sm or not mem:
        sm = sm or props.get("clockRate")
        mem = mem or props.get("memoryClockRate")
        source = "cudaDeviceProp"
    if not sm or not mem:
        smi_sm, smi_mem = _nvidia_smi_clocks()
        sm = sm or (smi_sm and smi_sm * 1e3)
        mem = mem or (smi_mem and smi_mem * 1e3)
        source = "nvidia-smi"
    return dict(
        sm_khz=sm,
        mem_khz=mem,
        bus_bits=attr("cudaDevAttrGlobalMemoryBusWidth") or props.get("memoryBusWidth"),
        l2_bytes=attr("cudaDevAttrL2CacheSize") or props.get("l2CacheSize") or 50 * 2**20,
        sms=attr("cudaDevAttrMultiProcessorCount") or props.get("multiProcessorCount"),
        source=source,
    )


def device_peaks(cp) -> dict:
    """FP32, dense TF32 and memory-bandwidth peaks of the current card, from its name
    or, failing that, from its clocks (then marked as an estimate)."""
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    clocks = device_clocks(cp)
    for pattern, tflops, tf32, tbs in PEAKS:
        if re.search(pattern, name):
            return dict(
                name=name,
                fp32_tflops=tflops,
                tf32_tflops=tf32,
                mem_tbs=tbs,
                source="data sheet",
                clocks=clocks,
            )
    major, minor = props["major"], props["minor"]
    lanes = 128 if (major, minor) in ((8, 6), (8, 7), (8, 9)) else FP32_LANES_PER_SM.get(major, 64)
    sm_khz, mem_khz = clocks["sm_khz"] or 0, clocks["mem_khz"] or 0
    tflops = 2 * lanes * (clocks["sms"] or 0) * sm_khz * 1e3 / 1e12
    tbs = 2 * mem_khz * 1e3 * (clocks["bus_bits"] or 0) / 8 / 1e12
    return dict(
        name=name,
        fp32_tflops=tflops or float("nan"),
        tf32_tflops=None,
        mem_tbs=tbs or float("nan"),
        source=f"estimated from clocks ({clocks['source']})",
        clocks=clocks,
    )


SPIN_SOURCE = r"""
extern "C" __global__ void gg_bench_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
"""


class Timer:
    """GPU time, wall time and Python launch time of a call (see the module docstring)."""

    def __init__(self, cp, l2_bytes):
        self.cp = cp
        # on cuda-sim (--simulate) there is no asm and no launch queue: no spin
        self._spin = None if SIMULATED else cp.RawKernel(SPIN_SOURCE, "gg_bench_spin")
        self._flush = cp.empty(max(1, 2 * int(l2_bytes)) // 4, dtype=cp.float32)

    def spin(self, seconds: float):
        if self._spin is None:
            return
        ns = int(min(max(seconds, 20e-6), 0.2) * 1e9)
        self._spin((1,), (1,), (self.cp.uint64(ns),))

    def flush(self):
        self._flush.fill(0)  # a memset of twice the L2 size: nothing of the inputs stays

    def time(self, fn, repeat: int, warmup: int = 3, flush: bool = False) -> dict:
        import numpy as np

        cp = self.cp
        for _ in range(warmup):
            fn()
        cp.cuda.Device().synchronize()
        host = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            host.append(time.perf_counter() - t0)
            cp.cuda.Device().synchronize()
        host_s = float(np.median(host))
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        gpu, wall = [], []
        for spin in (True, False):
            for _ in range(repeat):
                if flush:
                    self.flush()
                if spin:  # the GPU waits here while Python enqueues start, fn, stop
                    self.spin(2 * host_s + 50e-6)
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                (gpu if spin else wall).append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
        return dict(gpu=float(np.median(gpu)), wall=float(np.median(wall)), host=host_s)


@contextlib.contextmanager
def vendor_tf32(cp, torch, on: bool):
    """PyTorch's TF32 switches and CuPy's cuBLAS compute type, set explicitly."""
    saved = []
    if torch is not None:
        saved = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
    try:
        from cupy._core import _routines_linalg as cplinalg

        old_ct = cplinalg.get_compute_type(cp.float32)
        cplinalg.set_compute_type(cplinalg.COMPUTE_TYPE_TF32 if on else cplinalg.COMPUTE_TYPE_FP32)
    except Exception:  # an older/newer CuPy without this internal switch
        cplinalg = None
    try:
        yield
    finally:
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        if cplinalg is not None:
            cplinalg.set_compute_type(old_ct)


@contextlib.contextmanager
def ours_tf32(kernels, on: bool):
    """gpugrad's TF32 switch when the kernels offer one (``gg.kernels.allow_tf32``, a
    flag or a function taking a bool); yields whether it exists."""
    flag = getattr(kernels, "allow_tf32", None)
    if flag is None:
        yield False
        return
    if callable(flag):
        try:
            old = flag()
        except TypeError:
            old = False
        flag(on)
        try:
            yield True
        finally:
            flag(old)
        return
    kernels.allow_tf32 = on
    try:
        yield True
    finally:
        kernels.allow_tf32 = flag


def rel_err(cp, got, ref) -> float:
    got = cp.asarray(got, dtype=cp.float64)
    ref = cp.asarray(ref, dtype=cp.float64)
    return float(cp.abs(got - ref).max() / max(float(cp.abs(ref).max()), 1e-30))


class Bench:
    """Collects rows and prints them as they come."""

    def __init__(self, cp, peaks, repeat, torch=None, kernels=None):
        self.cp, self.peaks, self.repeat, self.rows = cp, peaks, repeat, []
        self.torch, self.kernels = torch, kernels
        self.timer = Timer(cp, peaks["clocks"]["l2_bytes"])

    def add(
        self,
        group,
        case,
        ours,
        vendor,
        *,
        flops=0.0,
        nbytes=0.0,
        err=None,
        vendor_name="",
        tf32=False,
    ):
        """Time ``ours`` (and ``vendor`` when given) in FP32 and record one row; with
        ``tf32`` (GEMM-like rows) also the vendor's TF32 time, and ours in TF32 when
        gpugrad has a TF32 switch. Memory-bound rows (``nbytes``) flush the L2 first."""
        flush = bool(nbytes) and not flops
        with vendor_tf32(self.cp, self.torch, False), ours_tf32(self.kernels, False):
            m_ours = self.timer.time(ours, self.repeat, flush=flush)
            m_vendor = self.timer.time(vendor, self.repeat, flush=flush) if vendor else None
        t_ours = m_ours["gpu"]
        t_vendor = m_vendor["gpu"] if m_vendor else None
        row = dict(
            group=group,
            case=case,
            ours_ms=t_ours * 1e3,
            ours_wall_ms=m_ours["wall"] * 1e3,
            ours_host_ms=m_ours["host"] * 1e3,
            vendor=vendor_name,
            precision="fp32",
            l2_flushed=flush,
        )
        if t_vendor is not None:
            row.update(
                vendor_ms=t_vendor * 1e3,
                vendor_wall_ms=m_vendor["wall"] * 1e3,
                vendor_host_ms=m_vendor["host"] * 1e3,
                pct_of_vendor=100 * t_vendor / t_ours,
            )
        if tf32 and vendor is not None:
            with vendor_tf32(self.cp, self.torch, True):
                row["vendor_tf32_ms"] = self.timer.time(vendor, self.repeat)["gpu"] * 1e3
            with ours_tf32(self.kernels, True) as has_tf32:
                if has_tf32:
                    row["ours_tf32_ms"] = self.timer.time(ours, self.repeat)["gpu"] * 1e3
                    row["pct_of_vendor_tf32"] = 100 * row["vendor_tf32_ms"] / row["ours_tf32_ms"]
            if flops:
                row["vendor_tf32_tflops"] = flops / (row["vendor_tf32_ms"] * 1e-3) / 1e12
            if flops and self.peaks.get("tf32_tflops"):
                row["vendor_tf32_pct_of_tf32_peak"] = (
                    100 * flops / (row["vendor_tf32_ms"] * 1e-3) / 1e12 / self.peaks["tf32_tflops"]
                )
        if flops:
            row.update(
                ours_tflops=flops / t_ours / 1e12,
                pct_of_peak=100 * flops / t_ours / 1e12 / self.peaks["fp32_tflops"],
            )
            if t_vendor is not None:
                row["vendor_tflops"] = flops / t_vendor / 1e12
        if nbytes:
            row.update(
                ours_gbs=nbytes / t_ours / 1e9,
                pct_of_peak_bw=100 * nbytes / t_ours / 1e12 / self.peaks["mem_tbs"],
            )
        if err is not None:
            row["max_rel_err"] = err
        self.rows.append(row)
        rate = f"{row['ours_tflops']:7.2f} TF/s" if flops else f"{row.get('ours_gbs', 0):7.1f} GB/s"
        vs = f"{row['pct_of_vendor']:6.1f}% of {vendor_name} FP32" if t_vendor is not None else ""
        if "vendor_tf32_ms" in row:
            vs += f" (vendor TF32 {row['vendor_tf32_ms']:.3f} ms)"
        launch = f" launch {m_ours['host'] * 1e3:.3f} ms" if m_ours["host"] > t_ours else ""
        print(f"{group:14s} {case:34s} {t_ours * 1e3:9.3f} ms {rate}  {vs}{launch}", flush=True)
        return row


def bench_gemm(b: Bench, kernels, max_size: int, quick: bool):
    cp = b.cp
    sizes = [s for s in (256, 512, 1024, 2048, 4096, 8192) if s <= max_size]
    if SIMULATED:
        sizes = [max_size]
    shapes = [(s, s, s) for s in sizes]
    if not quick:
        shapes += [(64, 4096, 4096), (4096, 64, 4096), (4096, 4096, 64), (127, 1000, 1023)]
    for m, n, k in shapes:
        a = cp.random.standard_normal((m, k), dtype=cp.float32)
        w = cp.random.standard_normal((k, n), dtype=cp.float32)
        err = rel_err(cp, kernels.matmul(a, w), cp.matmul(a, w))
        b.add(
            "sgemm",
            f"{m}x{n}x{k}",
            lambda a=a, w=w: kernels.matmul(a, w),
            lambda a=a, w=w: cp.matmul(a, w),
            flops=2.0 * m * n * k,
            err=err,
            vendor_name="cuBLAS",
            tf32=True,
        )
        if (m, n, k) == (max(sizes),) * 3:
            for ta, tb in ((True, False), (False, True)):
                a_op = a.T.copy() if ta else a
                w_op = w.T.copy() if tb else w
                b.add(
                    "sgemm",
                    f"{m}x{n}x{k} trans_a={int(ta)} trans_b={int(tb)}",
                    lambda a_op=a_op, w_op=w_op, ta=ta, tb=tb: kernels.matmul(
                        a_op, w_op, trans_a=ta, trans_b=tb
                    ),
                    lambda a_op=a_op, w_op=w_op, ta=ta, tb=tb: cp.matmul(
                        a_op.T if ta else a_op, w_op.T if tb else w_op
                    ),
                    flops=2.0 * m * n * k,
                    vendor_name="cuBLAS",
                )


def bench_fused(b: Bench, kernels, max_size: int):
    cp = b.cp
    for s in [s for s in (1024, 2048, 4096) if s <= max_size] or ([max_size] if SIMULATED else []):
        x = cp.random.standard_normal((s, s), dtype=cp.float32)
        w = cp.random.standard_normal((s, s), dtype=cp.float32)  # [out, in] as fullyconnect
        bias = cp.random.standard_normal(s, dtype=cp.float32)

        def unfused(x=x, w=w, bias=bias):
            return cp.maximum(cp.matmul(x, w.T) + bias, 0)

        err = rel_err(cp, kernels.matmul(x, w, trans_b=True, bias=bias, relu=True), unfused())
        b.add(
            "linear+bias+relu",
            f"{s}x{s}x{s}",
            lambda x=x, w=w, bias=bias: kernels.matmul(x, w, trans_b=True, bias=bias, relu=True),
            unfused,
            flops=2.0 * s**3,
            err=err,
            vendor_name="cuBLAS+bias+relu",
            tf32=True,
        )
        y = unfused()
        dy = cp.random.standard_normal((s, s), dtype=cp.float32)

        def unfused_bwd(dy=dy, y=y, w=w):
            return cp.matmul(dy * (y > 0), w)

        err = rel_err(cp, kernels.matmul(dy, w, mask=y), unfused_bwd())
        b.add(
            "relu-bwd GEMM",
            f"{s}x{s}x{s}",
            lambda dy=dy, y=y, w=w: kernels.matmul(dy, w, mask=y),
            unfused_bwd,
            flops=2.0 * s**3,
            err=err,
            vendor_name="mask+cuBLAS",
        )


def bench_relu(b: Bench, kernels):
    cp = b.cp
    for n in (1 << 12,) if SIMULATED else (1 << 20, 1 << 24, 1 << 27):
        x = cp.random.standard_normal(n, dtype=cp.float32)
        dy = cp.random.standard_normal(n, dtype=cp.float32)
        b.add(
            "relu_fwd",
            f"n={n}",
            lambda x=x: kernels.relu_fwd(x),
            lambda x=x: cp.maximum(x, 0),
            nbytes=8.0 * n,
            vendor_name="cupy.maximum",
        )
        b.add(
            "relu_bwd",
            f"n={n}",
            lambda dy=dy, x=x: kernels.relu_bwd(dy, x),
            lambda dy=dy, x=x: cp.where(x > 0, dy, 0),
            nbytes=12.0 * n,
            vendor_name="cupy.where",
        )


def torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def bench_conv(b: Bench, kernels, torch):
    cases = [  # N, H, W, Cin, K, Cout, stride, pad
        (32, 56, 56, 64, 3, 64, 1, 1),
        (32, 28, 28, 128, 3, 128, 1, 1),
        (32, 14, 14, 256, 3, 256, 1, 1),
        (32, 56, 56, 64, 1, 256, 1, 0),
        (32, 112, 112, 3, 7, 64, 2, 3),
    ]
    if SIMULATED:
        cases = [(2, 6, 6, 3, 3, 4, 1, 1), (2, 8, 8, 3, 3, 4, 2, 1)]
    for case in cases:
        bench_conv_case(b, kernels, torch, *case)


def bench_conv_case(b: Bench, kernels, torch, n, h, w_, cin, k, cout, st, pad):
    """One convolution: forward, backward-data and backward-filter vs cuDNN."""
    cp = b.cp
    x = cp.random.standard_normal((n, h, w_, cin), dtype=cp.float32)
    wt = cp.random.standard_normal((k, k, cin, cout), dtype=cp.float32)
    hyper = dict(stride=st, padding=pad)
    y = kernels.conv2d_fwd(x, wt, **hyper)
    ho, wo = y.shape[1:3]
    flops = 2.0 * n * ho * wo * cout * k * k * cin
    dy = cp.random.standard_normal(y.shape, dtype=cp.float32)
    name = f"{n}x{h}x{w_}x{cin} k{k} s{st} -> {cout}"
    vend = {}
    if torch is not None:
        tx = torch.as_tensor(x, device="cuda").permute(0, 3, 1, 2)  # NCHW view of NHWC
        tw = torch.as_tensor(wt, device="cuda").permute(3, 2, 0, 1).contiguous()
        tdy = torch.as_tensor(dy, device="cuda").permute(0, 3, 1, 2)
        conv = torch.nn.functional.conv2d
        grad = torch.nn.grad
        vend = {
            "fwd": lambda: conv(tx, tw, stride=st, padding=pad),
            "bwd_data": lambda: grad.conv2d_input(tx.shape, tw, tdy, stride=st, padding=pad),
            "bwd_filter": lambda: grad.conv2d_weight(tx, tw.shape, tdy, stride=st, padding=pad),
        }
        with vendor_tf32(cp, torch, False):  # the reference in FP32, not TF32
            ref = cp.asarray(vend["fwd"]().permute(0, 2, 3, 1).contiguous())
        err = rel_err(cp, y, ref)
    else:
        err = None
    vname = "cuDNN (torch)" if torch is not None else ""
    b.add(
        "conv2d_fwd",
        name,
        lambda: kernels.conv2d_fwd(x, wt, **hyper),
        vend.get("fwd"),
        flops=flops,
        err=err,
        vendor_name=vname,
        tf32=True,
    )
    b.add(
        "conv2d_bwd_data",
        name,
        lambda: kernels.conv2d_bwd_data(dy, wt, x.shape, **hyper),
        vend.get("bwd_data"),
        flops=flops,
        vendor_name=vname,
        tf32=True,
    )
    b.add(
        "conv2d_bwd_filter",
        name,
        lambda: kernels.conv2d_bwd_filter(dy, x, wt.shape, **hyper),
        vend.get("bwd_filter"),
        flops=flops,
        vendor_name=vname,
        tf32=True,
    )


def bench_lstm(b: Bench, kernels, torch):
    """PyTorch fastrnns setting: 512 hidden, batch 64, 100 steps, input 512."""
    cp = b.cp
    steps, bsz, hid, nin = (3, 2, 8, 8) if SIMULATED else (100, 64, 512, 512)
    x = cp.random.standard_normal((steps, bsz, nin), dtype=cp.float32)
    w = cp.random.standard_normal((4 * hid, nin), dtype=cp.float32) * 0.05
    r = cp.random.standard_normal((4 * hid, hid), dtype=cp.float32) * 0.05
    bias = cp.zeros(4 * hid, dtype=cp.float32)

    def forward():
        proj = kernels.matmul(x.reshape(steps * bsz, nin), w, trans_b=True, bias=bias)
        proj = proj.reshape(steps, bsz, 4 * hid)
        h = cp.zeros((bsz, hid), cp.float32)
        c = cp.zeros((bsz, hid), cp.float32)
        saved = []
        for t in range(steps):
            pre = proj[t] + kernels.matmul(h, r, trans_b=True)
            h_prev, c_prev = h, c
            h, c, gates = kernels.lstm_cell_fwd(pre, c)
            saved.append((h_prev, c_prev, c, gates))
        return h, saved

    def backward(saved):
        dh = cp.ones((bsz, hid), cp.float32)
        dc = None
        dpre_all = cp.empty((steps, bsz, 4 * hid), cp.float32)
        for t in reversed(range(steps)):
            h_prev, c_prev, c, gates = saved[t]
            dpre, dc = kernels.lstm_cell_bwd(dh, dc, gates, c_prev, c)
            dpre_all[t] = dpre
            dh = kernels.matmul(dpre, r)
        dpre_flat = dpre_all.reshape(steps * bsz, 4 * hid)
        h_prevs = cp.stack([s[0] for s in saved]).reshape(steps * bsz, hid)
        dx = kernels.matmul(dpre_flat, w)  # input gradient, as torch computes it
        dr = kernels.matmul(dpre_flat, h_prevs, trans_a=True)
        dw = kernels.matmul(dpre_flat, x.reshape(steps * bsz, nin), trans_a=True)
        return dx, dw, dr, dpre_flat.sum(axis=0)  # db

    _, saved = forward()
    flops = 2.0 * steps * bsz * 4 * hid * (nin + hid)
    vend_f = vend_b = None
    if torch is not None:
        lstm = torch.nn.LSTM(nin, hid).cuda()
        tx = torch.as_tensor(x, device="cuda").requires_grad_(True)
        vend_f = lambda: lstm(tx)  # noqa: E731
        with vendor_tf32(cp, torch, False):
            out = lstm(tx)[0]
        # like for like: the input gradient and every weight gradient (W, R, both biases)
        wrt = [tx, *lstm.parameters()]
        seed = torch.ones_like(out)
        vend_b = lambda: torch.autograd.grad(out, wrt, seed, retain_graph=True)  # noqa: E731
    vname = "cuDNN LSTM (torch)" if torch is not None else ""
    b.add(
        "lstm",
        f"T{steps} B{bsz} H{hid} fwd",
        forward,
        vend_f,
        flops=flops,
        vendor_name=vname,
        tf32=True,
    )
    b.add(
        "lstm",
        f"T{steps} B{bsz} H{hid} bwd (dx, dW, dR, db)",
        lambda: backward(saved),
        vend_b,
        flops=2 * flops,
        vendor_name=vname,
        tf32=True,
    )


def lstm_step_launches(steps=50, batch=64, features=128, hidden=256, calls=6):
    """An LSTM loss-and-gradient step under ``gg.dlaccelerate`` on the active device
    (cuda, or emu for a test): gpugrad kernel launches per step made one by one by a
    plain replay (``before``) and after graph capture (``after``: 0, plus one graph
    launch), the step time of each, and the capture report. CuPy's own elementwise and
    reduction kernels are not counted (gpugrad counts only its hand-written kernels)."""
    import numpy as np

    import gpugrad as gg

    class Model(gg.nn.Layer):
        def __init__(self):
            self.lstm = gg.nn.LSTM(features, hidden, dtype=np.float32)
            self.head = gg.nn.Dense(hidden, 10, dtype=np.float32)

        def forward(self, x):
            return self.head(self.lstm(x)[:, -1, :])

    rng = np.random.default_rng(0)
    x = gg.dlarray(rng.standard_normal((batch, steps, features)).astype(np.float32))
    y = rng.integers(0, 10, batch)
    net = Model()

    def loss_grad(m, xb):
        loss = gg.nn.softmax_cross_entropy(m(xb), y)
        return loss, gg.dlgradient(loss, m)

    acc = gg.dlaccelerate(loss_grad)

    def sync():
        if gg.device() == "cuda":
            gg.backend.cupy_module().cuda.get_current_stream().synchronize()

    from gpugrad import _accel_graph

    with _accel_graph.hooked(_accel_graph.LaunchCounter()) as eager:  # no accelerator
        gg.dlfeval(loss_grad, net, x)

    per_call = []
    for _ in range(calls):
        t0 = time.perf_counter()
        gg.dlfeval(acc, net, x)
        sync()
        per_call.append((acc.KernelLaunches, acc.GraphLaunches, time.perf_counter() - t0))
    (report,) = acc.graph_report()
    plain = [p for p in per_call[2:] if p[0]]  # after the trace and the checked replay
    graphed = [p for p in per_call if p[0] == 0 and p[1] > 1]  # after the capture call
    return dict(
        eager=eager.count,
        before=plain[-1][0] if plain else None,
        after=0 if graphed else None,
        graph_launches=acc.GraphLaunches,
        kernels_in_graph=report["kernels"],
        captured=report["captured"],
        reason=report["reason"],
        before_ms=1e3 * min(p[2] for p in plain) if plain else None,
        after_ms=1e3 * min(p[2] for p in graphed) if graphed else None,
    )


def bench_accelerate(b: Bench):
    """Launches per accelerated LSTM step before and after CUDA-graph capture."""
    size = dict(steps=3, batch=2, features=3, hidden=4) if SIMULATED else {}
    got = lstm_step_launches(**size)
    case = "T3 B2 H4" if SIMULATED else "T50 B64 H256"
    row = dict(group="accelerate", case=f"LSTM {case} loss+grad launches", **got)
    b.rows.append(row)
    if got["captured"]:
        print(
            f"{'accelerate':14s} LSTM step: {got['eager']} kernel launches eager, "
            f"{got['before']} per replayed step before "
            f"capture ({got['before_ms']:.3f} ms), 1 graph launch after "
            f"({got['after_ms']:.3f} ms)",
            flush=True,
        )
    else:
        print(f"{'accelerate':14s} LSTM step not captured: {got['reason']}", flush=True)


def plot(rows, peaks, path: Path):
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot was written (pip install matplotlib).")
        return
    sq = [r for r in rows if r["group"] == "sgemm" and re.fullmatch(r"(\d+)x\1x\1", r["case"])]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = [int(r["case"].split("x")[0]) for r in sq]
    axes[0].plot(sizes, [r["ours_tflops"] for r in sq], "o-", label="gpugrad matmul")
    axes[0].plot(sizes, [r.get("vendor_tflops", np.nan) for r in sq], "s-", label="cuBLAS FP32")
    axes[0].plot(
        sizes, [r.get("vendor_tf32_tflops", np.nan) for r in sq], "^:", label="cuBLAS TF32"
    )
    axes[0].axhline(peaks["fp32_tflops"], ls="--", c="gray", label="FP32 peak")
    axes[0].set(xscale="log" if sizes else "linear", xlabel="M = N = K", ylabel="TFLOP/s")
    axes[0].set_title("SGEMM (FP32 unless marked)")
    axes[0].legend()
    others = [r for r in rows if "pct_of_vendor" in r and r["group"] != "sgemm"]
    axes[1].barh(
        [f"{r['group']} {r['case']}"[:40] for r in others], [r["pct_of_vendor"] for r in others]
    )
    axes[1].axvline(100, c="gray", ls="--")
    axes[1].set(xlabel="% of vendor speed", title="fused / conv / lstm / relu")
    axes[1].tick_params(axis="y", labelsize=6)
    fig.suptitle(peaks["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument(
        "--quick", action="store_true", help="Run fewer sizes and fewer timed repeats."
    )
    parser.add_argument(
        "--max-gemm", type=int, default=4096, help="Stop the square SGEMM sweep at this size."
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="Time each case this many times (median)."
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="Write the JSON results and the PNG plot into this folder.",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace existing result files instead of writing new, dated ones.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed CuPy's random inputs.")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="Run every group at tiny sizes on the cuda-sim device (CPU; checks the "
        "script itself, the timings mean nothing).",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="Skip the groups that would start after this many seconds (results so far "
        "are written).",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=["gemm", "fused", "relu", "conv", "lstm", "accelerate"],
        help="Run only this group (repeat the option for several groups).",
    )
    return parser


def fresh_path(path: Path, overwrite: bool) -> Path:
    """``path``, or a dated sibling when ``path`` exists and must not be overwritten."""
    if overwrite or not path.exists():
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return path.with_name(f"{path.stem}-{stamp}{path.suffix}")


def main(argv=None) -> int:
    """Run the suite; returns the exit status (0 also when there is no GPU)."""
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from gpugrad import backend  # the heavy imports come after the arguments

    global SIMULATED
    SIMULATED = args.simulate
    try:
        backend.set_device("cuda-sim" if args.simulate else "cuda")
    except backend.DeviceError as exc:
        print(f"no GPU: {exc}")
        return 0
    from gpugrad.backend import kernels

    kernels.set_policy("hand")  # the hand kernels themselves, not the dispatcher's choice
    cp = backend.cupy_module()
    cp.random.seed(args.seed)
    peaks = device_peaks(cp)
    torch = None if args.simulate else torch_cuda()
    print(
        f"device: {peaks['name']} (FP32 {peaks['fp32_tflops']} TF/s, "
        f"{peaks['mem_tbs']} TB/s, {peaks['source']}); "
        f"vendor conv/lstm: {'torch ' + torch.__version__ if torch else 'not available'}"
    )
    bench = Bench(cp, peaks, args.repeat or (5 if args.quick else 20), torch, kernels)
    only = set(args.only or ["gemm", "fused", "relu", "conv", "lstm", "accelerate"])
    started = time.time()
    groups = [
        ("gemm", lambda: bench_gemm(bench, kernels, args.max_gemm, args.quick)),
        ("lstm", lambda: bench_lstm(bench, kernels, torch)),
        ("conv", lambda: bench_conv(bench, kernels, torch)),
        ("fused", lambda: bench_fused(bench, kernels, args.max_gemm)),
        ("relu", lambda: bench_relu(bench, kernels)),
        ("accelerate", lambda: bench_accelerate(bench)),
    ]
    skipped = []
    for name, run in groups:
        if name not in only:
            continue
        if args.time_budget is not None and time.time() - started > args.time_budget:
            skipped.append(name)
            continue
        try:
            run()
        except Exception as exc:  # one failing group must not lose the others' rows
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            bench.rows.append(dict(group=name, case="FAILED", error=f"{type(exc).__name__}: {exc}"))
    if skipped:
        print(f"skipped (over --time-budget {args.time_budget} s): {', '.join(skipped)}")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", peaks["name"]).strip("-").lower()
    args.out.mkdir(parents=True, exist_ok=True)
    out = fresh_path(args.out / f"gpu-{slug}.json", args.overwrite)
    meta = dict(
        device=peaks,
        cupy=cp.__version__,
        cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
        torch=torch.__version__ if torch else None,
        python=platform.python_version(),
        seconds=time.time() - started,
        seed=args.seed,
        launches=kernels.launches(),
        skipped_groups=skipped,
        timing="GPU time with a spin kernel ahead (no launch overhead); *_wall_ms without it; "
        "*_host_ms Python issue time; FP32 vs FP32 unless a column says tf32",
        device_tests=os.environ.get("GPUGRAD_DEVICE_TESTS"),
    )
    out.write_text(json.dumps(dict(meta=meta, rows=bench.rows), indent=1))
    print(f"wrote {out}")
    plot(bench.rows, peaks, fresh_path(out.with_suffix(".png"), args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
