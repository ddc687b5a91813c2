"""Checkpointing on a deep MLP: how many layers are recomputed for a given memory budget.

A deep tanh MLP (Dense layers written with ``gg.matmul``), one training step (loss +
gradient of every weight). The step is run plain, with ``gg.checkpoint_sequential``
in sqrt(n) uniform segments, and under a sweep of memory budgets from "everything
fits" (no recomputation: the plain run) down to the smallest budget any schedule
fits. For each budget it prints the schedule the planner chose, the engine's peak
saved bytes (deterministic, ``gg.memory.track()``) and the recomputed layer
applications, and it checks that the peak stays within the budget. The plot shows
recomputations against peak memory: the planner's staircase, and beside it the
binomial (Revolve) optimum for each number of snapshots.

The default run takes well under a minute (32 layers, width 64, 12 budgets);
``--full`` sweeps 40 budgets on a 64-layer, width-512 network, times the steps and,
where PyTorch is installed, compares with ``torch.utils.checkpoint``. The plot (and a
JSON file of the rows) go to a fresh file in the system's temporary directory unless
``--out PATH`` says where; the script prints the path. Without matplotlib it prints
the table only.

``--mixed`` gives the layers different widths (1x, 4x, 1x, 2x the width, repeated):
the planner counts each layer's own size, and the peak still stays within every budget.

    python bench/checkpoint.py [--full] [--mixed] [--out PATH] [--depth 32 --width 64]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time


def layer_widths(depth, width, mixed=False):
    """The width of every layer boundary: all ``width``, or (``mixed``) cycling through
    1x, 4x, 1x, 2x ``width`` so the layers differ in size (up to 4x)."""
    cycle = (1, 4, 1, 2) if mixed else (1,)
    return [width * cycle[i % len(cycle)] for i in range(depth + 1)]


def make_mlp(depth, width, seed=0, mixed=False):
    import numpy as np

    import gpugrad as gg

    rng = np.random.default_rng(seed)
    widths = layer_widths(depth, width, mixed)
    return [gg.dlarray(rng.normal(0, 1 / math.sqrt(a), (a, b))) for a, b in zip(widths, widths[1:])]


def layers_of(weights):
    import gpugrad as gg

    def dense(w):
        def layer(h):
            return gg.tanh(gg.matmul(h, w))

        return layer

    return [dense(w) for w in weights]


def step(run, weights, x):
    import gpugrad as gg

    def loss(ws, x):
        y = gg.sum(run(layers_of(ws), x * 1.0) ** 2)
        return y, gg.dlgradient(y, ws)

    return gg.dlfeval(loss, weights, x)


def plain(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def measure(name, run, weights, x, repeats):
    import gpugrad as gg

    with gg.memory.track() as m:
        step(run, weights, x)
    stats = gg.checkpoint_sequential.last_stats if name != "plain" else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(run, weights, x)
        times.append(time.perf_counter() - t0)
    return {
        "name": name,
        "peak_bytes": m.peak_bytes,
        "time_s": min(times) if times else None,
        "recomputations": 0 if stats is None else stats.recomputations,
        "schedule": "none" if stats is None else stats.schedule,
        "snapshots": None if stats is None else (stats.snapshots or stats.segments),
        "stats": stats,
    }


TORCH_SCRIPT = r"""
import json, resource, sys, time, torch
from torch.utils.checkpoint import checkpoint_sequential
depth, width, batch, segments, repeats = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(int(sys.argv[6]))
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width, bias=False),
                                                  torch.nn.Tanh()) for _ in range(depth)]).double()
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
        print("PyTorch is not installed: no torch comparison")
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


def binomial_optimum(sizes):
    """(predicted peak bytes, recomputations) of Revolve with s = 1..depth-1 snapshots,
    and of the plain run, as the planner predicts them from the measured layer sizes."""
    from gpugrad.checkpoint import _candidates

    points = []
    for recomputations, peak, kind, _s in _candidates(sizes, True):
        if kind in ("revolve", "none"):
            points.append((peak, recomputations))
    return sorted(points)


def _label(row):
    if row["schedule"] == "none":
        return "plain"
    if row["schedule"] == "revolve":
        return f"revolve s={row['snapshots']}"
    tail = row["stats"].plain_tail
    return f"uniform {row['snapshots']}" + (f" + {tail} plain" if tail else "")


def plot(sweep, optimum, act, path):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    peaks = [r["peak_bytes"] / act for r in sweep]
    recs = [r["recomputations"] for r in sweep]
    order = np.argsort(peaks)
    xs = [peaks[i] for i in order]
    ys = [recs[i] for i in order]
    ax.step(xs, ys, where="post", color="C0", lw=1.8, label="planner (measured peak)")
    ax.plot(xs, ys, "o", color="C0", ms=4)
    opt_x = [p / act for p, _ in optimum]
    opt_y = [r for _, r in optimum]
    ax.plot(opt_x, opt_y, "s--", color="C1", ms=3, lw=0.9, label="binomial optimum (predicted)")
    # one label per distinct schedule, stacked so they never overlap
    seen = set()
    k = 0
    for i in order:
        r = sweep[i]
        key = _label(r)
        if key in seen:
            continue
        seen.add(key)
        text = _label(r)
        ax.annotate(
            text,
            (peaks[i], recs[i]),
            xytext=(8, 10 + 11 * (k % 4)),
            textcoords="offset points",
            fontsize=7,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "gray"},
        )
        k += 1
    ax.set_ylim(bottom=-0.03 * max(ys + opt_y), top=1.2 * max(ys + opt_y))
    ax.set_xlabel("peak saved memory (activations of the input's width)")
    ax.set_ylabel("recomputed layer applications per step")
    ax.set_title("checkpoint_sequential: fewest recomputations within a memory budget")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The default run finishes in under a minute and writes nothing tracked.",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument(
        "--full",
        action="store_true",
        help="Run the full sweep (40 budgets, 64 layers, width 512, batch 256) with step "
        "times and the PyTorch comparison.",
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="Use this many layers (32; 64 with --full)."
    )
    parser.add_argument(
        "--width", type=int, default=None, help="Use layers of this width (64; 512 with --full)."
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="Use this batch size (32; 256 with --full)."
    )
    parser.add_argument(
        "--budgets", type=int, default=None, help="Sweep this many budgets (12; 40 with --full)."
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="Time this many repeats (0; 3 with --full)."
    )
    parser.add_argument(
        "--no-torch", action="store_true", help="Skip the PyTorch comparison in a --full run."
    )
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="Use layers of different widths (cycling 1x, 4x, 1x, 2x the width), so the "
        "planner must count each layer's own size.",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="Write the PNG to this path and a JSON of the rows beside it (default: a new "
        "file in the temporary directory).",
    )
    opts = parser.parse_args(argv)
    # why: imported after parsing, so --help answers at once
    import numpy as np

    import gpugrad as gg
    from gpugrad.checkpoint import _candidates, optimal_recomputations

    opts.depth = opts.depth or (64 if opts.full else 32)
    width = opts.width or (512 if opts.full else 64)
    batch = opts.batch or (256 if opts.full else 32)
    n_budgets = opts.budgets or (40 if opts.full else 12)
    repeats = opts.repeats if opts.repeats is not None else (3 if opts.full else 0)

    gg.random.seed(0)
    weights = make_mlp(opts.depth, width, mixed=opts.mixed)
    x = gg.dlarray(np.random.default_rng(1).normal(size=(batch, width)))
    act = batch * width * 8
    kind = "widths 1x/4x/1x/2x of" if opts.mixed else "width"
    print(
        f"device {gg.device()}: {opts.depth}-layer tanh MLP, {kind} {width}, batch {batch} "
        f"(one activation of width {width} = {act / 2**20:.2f} MiB)"
    )
    base = measure("plain", plain, weights, x, repeats)
    k = round(math.sqrt(opts.depth))
    uniform = measure(
        f"uniform {k}", lambda ls, v: gg.checkpoint_sequential(ls, v), weights, x, repeats
    )
    # the sizes the planner measures, from one run whose budget is just below the plain peak
    probe = measure(
        "probe",
        lambda ls, v: gg.checkpoint_sequential(ls, v, memory_budget=base["peak_bytes"] - 1),
        weights,
        x,
        0,
    )["stats"]
    options = _candidates(probe.layer_sizes, True)
    minimum = min(peak for _, peak, _, _ in options)
    budgets = np.unique(
        np.geomspace(minimum, base["peak_bytes"] * 1.05, n_budgets).astype(np.int64)
    )
    sweep = []
    t0 = time.perf_counter()
    for budget in budgets[::-1]:  # from everything-fits down to the minimum
        row = measure(
            f"budget {budget / act:.1f} acts",
            lambda ls, v, b=int(budget): gg.checkpoint_sequential(ls, v, memory_budget=b),
            weights,
            x,
            0,
        )
        row["budget_bytes"] = int(budget)
        if row["peak_bytes"] > budget:
            raise SystemExit(f"peak {row['peak_bytes']} exceeds the budget {budget}")
        sweep.append(row)
    sweep_s = time.perf_counter() - t0

    print(f"{'schedule':<26}{'budget':>10}{'peak':>10}{'recomputed':>12}{'optimum':>9}")
    for r in sweep:
        sched = _label(r)
        opt = (
            optimal_recomputations(opts.depth, r["snapshots"])
            if r["schedule"] == "revolve"
            else "-"
        )
        print(
            f"{sched:<26}{r['budget_bytes'] / act:>9.1f}a{r['peak_bytes'] / act:>9.1f}a"
            f"{r['recomputations']:>12d}{opt!s:>9}"
        )
    print(f"({len(sweep)} budgets in {sweep_s:.1f}s; 'a' = one activation of width {width})")
    mem_ratio = uniform["peak_bytes"] / base["peak_bytes"]
    print(f"uniform sqrt(n): peak memory {mem_ratio:.2f} of plain (target <= 0.30)")
    if repeats:
        time_ratio = uniform["time_s"] / base["time_s"]
        print(
            f"step time: plain {base['time_s'] * 1e3:.0f}ms, uniform sqrt(n) "
            f"{uniform['time_s'] * 1e3:.0f}ms ({time_ratio:.2f}x, target <= 1.4)"
        )
    if opts.full and not opts.no_torch:
        torch_out = torch_runs(opts.depth, width, batch, max(repeats, 1))
        if torch_out:
            tp, tc = torch_out["torch plain"], torch_out["torch sqrt(n)"]
            print(
                f"torch (separate processes): plain {tp['time_s'] * 1e3:.0f}ms, "
                f"sqrt(n) segments {tc['time_s'] * 1e3:.0f}ms "
                f"({tc['time_s'] / tp['time_s']:.2f}x); peak RSS ratio "
                f"{tc['peak_rss_bytes'] / tp['peak_rss_bytes']:.2f}"
            )

    if opts.out:
        path = os.path.abspath(opts.out)
        os.makedirs(os.path.dirname(path), exist_ok=True)
    else:
        fd, path = tempfile.mkstemp(prefix="gpugrad-checkpoint-", suffix=".png")
        os.close(fd)
    optimum = binomial_optimum(probe.layer_sizes)
    rows = [{k: v for k, v in r.items() if k != "stats"} for r in sweep]
    json_path = os.path.splitext(path)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump({"activation_bytes": act, "plain": base["peak_bytes"], "sweep": rows}, f)
    print(f"wrote {json_path}")
    if plot(sweep, optimum, act, path):
        print(f"wrote {path}")
    elif not opts.out:
        os.remove(path)


if __name__ == "__main__":
    main()
