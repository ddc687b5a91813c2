"""Checkpointing on a deep MLP: memory kept for the backward pass vs step time.

A 64-layer MLP (width 512, tanh Dense layers written with ``gg.matmul``), one
training step (loss + gradient of every weight) run plain, with
``gg.checkpoint_sequential`` in sqrt(n) uniform segments, and under a few memory
budgets (binomial/Revolve schedule). Prints the engine's peak saved bytes
(deterministic, ``gg.memory.track()``) and step time relative to the plain run.
Targets: uniform peak <= 30% of plain, step time <= 1.4x.

Where PyTorch is installed, ``torch.utils.checkpoint.checkpoint_sequential`` on
the same MLP runs in separate subprocesses (peak RSS and step time) for
comparison. A PNG of peak memory vs recomputations over the budgets goes to
``bench/results/checkpoint_memory_vs_recompute.png``.

    python bench/checkpoint.py [--depth 64 --width 512 --batch 256 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

import gpugrad as gg

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def make_mlp(depth, width, seed=0):
    rng = np.random.default_rng(seed)
    weights = [
        gg.dlarray(rng.normal(0, 1 / math.sqrt(width), (width, width))) for _ in range(depth)
    ]
    biases = [gg.dlarray(np.zeros(width)) for _ in range(depth)]
    return weights, biases


def layers_of(weights, biases):
    def dense(w, b):
        def layer(h):
            return gg.tanh(gg.matmul(h, w) + b)

        return layer

    return [dense(w, b) for w, b in zip(weights, biases)]


def step(run, weights, biases, x):
    def loss(ws, bs, x):
        y = gg.sum(run(layers_of(ws, bs), x) ** 2)
        return y, gg.dlgradient(y, ws, bs)

    return gg.dlfeval(loss, weights, biases, x)


def plain(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def measure(name, run, weights, biases, x, repeats):
    with gg.memory.track() as m:
        step(run, weights, biases, x)
    stats = gg.checkpoint_sequential.last_stats if name != "plain" else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(run, weights, biases, x)
        times.append(time.perf_counter() - t0)
    return {
        "name": name,
        "peak_bytes": m.peak_bytes,
        "time_s": min(times),
        "recomputations": 0 if stats is None else stats.recomputations,
        "snapshots": None if stats is None else (stats.snapshots or stats.segments),
    }


TORCH_SCRIPT = r"""
import json, resource, sys, time, torch
from torch.utils.checkpoint import checkpoint_sequential
depth, width, batch, segments, repeats = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(int(sys.argv[6]))
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh())
                              for _ in range(depth)]).double()
x = torch.randn(batch, width, dtype=torch.float64, requires_grad=True)
def one():
    y = checkpoint_sequential(model, segments, x, use_reentrant=False) if segments else model(x)
    (y ** 2).sum().backward()
one()
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); one(); times.append(time.perf_counter() - t0)
print(json.dumps({"time_s": min(times),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def torch_runs(depth, width, batch, repeats):
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    threads = str(max(1, os.cpu_count() or 1))
    out = {}
    for label, segments in (("torch plain", 0), ("torch sqrt(n)", round(math.sqrt(depth)))):
        args = [str(v) for v in (depth, width, batch, segments, repeats)] + [threads]
        proc = subprocess.run(
            [sys.executable, "-c", TORCH_SCRIPT, *args], capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(f"{label}: failed\n{proc.stderr[-2000:]}")
            return None
        out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def plot(rows, plain_row, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [
        (r["recomputations"], r["peak_bytes"] / plain_row["peak_bytes"], r["name"]) for r in rows
    ]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    for rec, ratio, name in pts:
        ax.annotate(name, (rec, ratio), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(1.0, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("recomputed layer applications per step")
    ax.set_ylabel("peak saved bytes / plain")
    ax.set_title("checkpoint_sequential: memory vs recomputation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    opts = parser.parse_args()

    weights, biases = make_mlp(opts.depth, opts.width)
    x = gg.dlarray(np.random.default_rng(1).normal(size=(opts.batch, opts.width)))
    act = opts.batch * opts.width * 8
    print(
        f"device {gg.device()}: {opts.depth}-layer tanh MLP, width {opts.width}, "
        f"batch {opts.batch} (one activation = {act / 2**20:.2f} MiB)"
    )
    base = measure("plain", plain, weights, biases, x, opts.repeats)
    k = round(math.sqrt(opts.depth))
    rows = [
        measure(
            f"uniform {k}",
            lambda ls, v: gg.checkpoint_sequential(ls, v),
            weights,
            biases,
            x,
            opts.repeats,
        )
    ]
    for acts in (12, 16, 20, 32):
        budget = acts * act
        rows.append(
            measure(
                f"budget {acts} acts",
                lambda ls, v, budget=budget: gg.checkpoint_sequential(ls, v, memory_budget=budget),
                weights,
                biases,
                x,
                opts.repeats,
            )
        )
    print(f"{'schedule':<18}{'peak saved':>14}{'ratio':>8}{'time':>10}{'ratio':>8}{'recomp':>8}")
    for r in [base, *rows]:
        print(
            f"{r['name']:<18}{r['peak_bytes'] / 2**20:>11.1f}MiB"
            f"{r['peak_bytes'] / base['peak_bytes']:>8.2f}{r['time_s'] * 1e3:>8.0f}ms"
            f"{r['time_s'] / base['time_s']:>8.2f}{r['recomputations']:>8d}"
        )
    uni = rows[0]
    mem_ratio = uni["peak_bytes"] / base["peak_bytes"]
    time_ratio = uni["time_s"] / base["time_s"]
    print(
        f"uniform sqrt(n): memory {mem_ratio:.2f} (target <= 0.30) "
        f"{'OK' if mem_ratio <= 0.30 else 'MISS'}, time {time_ratio:.2f}x (target <= 1.4) "
        f"{'OK' if time_ratio <= 1.4 else 'MISS'}"
    )
    if not opts.no_torch:
        torch_out = torch_runs(opts.depth, opts.width, opts.batch, opts.repeats)
        if torch_out:
            tp, tc = torch_out["torch plain"], torch_out["torch sqrt(n)"]
            print(
                f"torch (separate processes): plain {tp['time_s'] * 1e3:.0f}ms, "
                f"peak RSS {tp['peak_rss_bytes'] / 2**20:.0f}MiB; sqrt(n) segments "
                f"{tc['time_s'] * 1e3:.0f}ms ({tc['time_s'] / tp['time_s']:.2f}x), "
                f"peak RSS {tc['peak_rss_bytes'] / 2**20:.0f}MiB "
                f"({tc['peak_rss_bytes'] / tp['peak_rss_bytes']:.2f})"
            )
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "checkpoint_memory_vs_recompute.png")
    plot(rows, base, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
