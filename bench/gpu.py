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
maximum relative difference from the vendor result. Results go to
``bench/results/gpu-<device>.json`` and, with matplotlib, a PNG plot beside it; an
existing file is never overwritten (a new name with the date and time is used
instead) unless --overwrite is given, and the script prints every path it wrote.
Inputs are drawn from CuPy's generator seeded with --seed. Without a GPU it prints
``no GPU: <reason>`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name pattern -> (FP32 TFLOP/s without tensor cores, memory TB/s), vendor data sheets
PEAKS = [
    (r"H200", 67.0, 4.8),
    (r"H100.*(PCIe|PCI)", 51.0, 2.0),
    (r"H100", 67.0, 3.35),  # SXM5 / HBM3
    (r"GH200", 67.0, 4.0),
    (r"A100.*80", 19.5, 2.039),
    (r"A100", 19.5, 1.555),
    (r"L40S", 91.6, 0.864),
    (r"L4\b", 30.3, 0.3),
    (r"A10\b", 31.2, 0.6),
    (r"A6000", 38.7, 0.768),
    (r"RTX 4090", 82.6, 1.008),
    (r"RTX 3090", 35.6, 0.936),
    (r"V100", 15.7, 0.9),
    (r"T4\b", 8.1, 0.32),
]
FP32_LANES_PER_SM = {7: 64, 8: 64, 9: 128}  # sm_86/sm_89 have 128; handled below


def device_peaks(cp) -> dict:
    """FP32 and memory-bandwidth peaks of the current card, from its name or, failing
    that, from its clocks (then marked as an estimate)."""
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    for pattern, tflops, tbs in PEAKS:
        if re.search(pattern, name):
            return dict(name=name, fp32_tflops=tflops, mem_tbs=tbs, source="data sheet")
    major, minor = props["major"], props["minor"]
    lanes = 128 if (major, minor) in ((8, 6), (8, 7), (8, 9)) else FP32_LANES_PER_SM.get(major, 64)
    tflops = 2 * lanes * props["multiProcessorCount"] * props["clockRate"] * 1e3 / 1e12
    tbs = 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e12
    return dict(name=name, fp32_tflops=tflops, mem_tbs=tbs, source="estimated from clocks")


def gpu_time(cp, fn, repeat: int, warmup: int = 3) -> float:
    """Median GPU time of ``fn()`` in seconds, measured with CUDA events."""
    import numpy as np

    for _ in range(warmup):
        fn()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
    return float(np.median(times))


def rel_err(cp, got, ref) -> float:
    got = cp.asarray(got, dtype=cp.float64)
    ref = cp.asarray(ref, dtype=cp.float64)
    return float(cp.abs(got - ref).max() / max(float(cp.abs(ref).max()), 1e-30))


class Bench:
    """Collects rows and prints them as they come."""

    def __init__(self, cp, peaks, repeat):
        self.cp, self.peaks, self.repeat, self.rows = cp, peaks, repeat, []

    def add(self, group, case, ours, vendor, *, flops=0.0, nbytes=0.0, err=None, vendor_name=""):
        """Time ``ours`` (and ``vendor`` when given) and record one row."""
        t_ours = gpu_time(self.cp, ours, self.repeat)
        t_vendor = gpu_time(self.cp, vendor, self.repeat) if vendor is not None else None
        row = dict(group=group, case=case, ours_ms=t_ours * 1e3, vendor=vendor_name)
        if t_vendor is not None:
            row.update(vendor_ms=t_vendor * 1e3, pct_of_vendor=100 * t_vendor / t_ours)
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
        vs = f"{row['pct_of_vendor']:6.1f}% of {vendor_name}" if t_vendor is not None else ""
        print(f"{group:14s} {case:34s} {t_ours * 1e3:9.3f} ms {rate}  {vs}", flush=True)
        return row


def bench_gemm(b: Bench, kernels, max_size: int, quick: bool):
    cp = b.cp
    sizes = [s for s in (256, 512, 1024, 2048, 4096, 8192) if s <= max_size]
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
    for s in [s for s in (1024, 2048, 4096) if s <= max_size]:
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
    for n in (1 << 20, 1 << 24, 1 << 27):
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
    )
    b.add(
        "conv2d_bwd_data",
        name,
        lambda: kernels.conv2d_bwd_data(dy, wt, x.shape, **hyper),
        vend.get("bwd_data"),
        flops=flops,
        vendor_name=vname,
    )
    b.add(
        "conv2d_bwd_filter",
        name,
        lambda: kernels.conv2d_bwd_filter(dy, x, wt.shape, **hyper),
        vend.get("bwd_filter"),
        flops=flops,
        vendor_name=vname,
    )


def bench_lstm(b: Bench, kernels, torch):
    """PyTorch fastrnns setting: 512 hidden, batch 64, 100 steps, input 512."""
    cp = b.cp
    steps, bsz, hid, nin = 100, 64, 512, 512
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
        kernels.matmul(dpre_flat, h_prevs, trans_a=True)  # dR
        kernels.matmul(dpre_flat, x.reshape(steps * bsz, nin), trans_a=True)  # dW
        return dpre_flat.sum(axis=0)  # db

    _, saved = forward()
    flops = 2.0 * steps * bsz * 4 * hid * (nin + hid)
    vend_f = vend_b = None
    if torch is not None:
        lstm = torch.nn.LSTM(nin, hid).cuda()
        tx = torch.as_tensor(x, device="cuda").requires_grad_(True)
        vend_f = lambda: lstm(tx)  # noqa: E731
        out = lstm(tx)[0]
        vend_b = lambda: torch.autograd.grad(out, [tx], torch.ones_like(out), retain_graph=True)  # noqa: E731
    vname = "cuDNN LSTM (torch)" if torch is not None else ""
    b.add("lstm", f"T{steps} B{bsz} H{hid} fwd", forward, vend_f, flops=flops, vendor_name=vname)
    b.add(
        "lstm",
        f"T{steps} B{bsz} H{hid} bwd",
        lambda: backward(saved),
        vend_b,
        flops=2 * flops,
        vendor_name=vname,
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
    got = lstm_step_launches()
    row = dict(group="accelerate", case="LSTM T50 B64 H256 loss+grad launches", **got)
    b.rows.append(row)
    if got["captured"]:
        print(
            f"{'accelerate':14s} LSTM step: {got['before']} kernel launches per step before "
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
    axes[0].plot(sizes, [r.get("vendor_tflops", np.nan) for r in sq], "s-", label="cuBLAS")
    axes[0].axhline(peaks["fp32_tflops"], ls="--", c="gray", label="FP32 peak")
    axes[0].set(xscale="log", xlabel="M = N = K", ylabel="TFLOP/s", title="SGEMM")
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

    try:
        backend.set_device("cuda")
    except backend.DeviceError as exc:
        print(f"no GPU: {exc}")
        return 0
    from gpugrad.backend import kernels

    cp = backend.cupy_module()
    cp.random.seed(args.seed)
    peaks = device_peaks(cp)
    torch = torch_cuda()
    print(
        f"device: {peaks['name']} (FP32 {peaks['fp32_tflops']} TF/s, "
        f"{peaks['mem_tbs']} TB/s, {peaks['source']}); "
        f"vendor conv/lstm: {'torch ' + torch.__version__ if torch else 'not available'}"
    )
    bench = Bench(cp, peaks, args.repeat or (5 if args.quick else 20))
    only = set(args.only or ["gemm", "fused", "relu", "conv", "lstm", "accelerate"])
    started = time.time()
    if "gemm" in only:
        bench_gemm(bench, kernels, args.max_gemm, args.quick)
    if "fused" in only:
        bench_fused(bench, kernels, args.max_gemm)
    if "relu" in only:
        bench_relu(bench, kernels)
    if "conv" in only:
        bench_conv(bench, kernels, torch)
    if "lstm" in only:
        bench_lstm(bench, kernels, torch)
    if "accelerate" in only:
        bench_accelerate(bench)
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
    )
    out.write_text(json.dumps(dict(meta=meta, rows=bench.rows), indent=1))
    print(f"wrote {out}")
    plot(bench.rows, peaks, fresh_path(out.with_suffix(".png"), args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
