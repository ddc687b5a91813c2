"""CPU training-step time: gpugrad eager and accelerated against PyTorch eager.

The workloads are an MLP 784-512-512-10 (batch 256), the digits CNN from
examples/digits_cnn.py (batch 64), and an LSTM with 256 hidden units over 50 steps
(batch 64, 128 input features) followed by a Dense head, all in float32. One step
is the forward pass, the backward pass and an Adam update. gpugrad runs each step
twice: eagerly, and through ``gg.dlaccelerate`` (the whole step, optimizer update
included, traced once and replayed).

The step functions are timed interleaved, so machine noise hits them alike: each
round times one block of steps of each function (the order rotates every round; a
block holds enough steps to last about 50 ms). Before each block the process sleeps
0.2 s, because the thread pools of both libraries spin for a while after their last
call (OpenBLAS for about 0.1 s), and on a machine with few cores the other
library's spinning threads would otherwise slow a block down by up to 3x. Each
block starts with one untimed step, so every function is timed in steady state.

The table shows the median step time of each function and the ratios of those
medians to PyTorch's (targets: eager MLP <= 1.3x, CNN <= 2x, LSTM <= 1.5x;
accelerated <= 1.0x on each). A note follows the table when the per-round ratios
disagree (a busy machine). torch keeps its default thread count (``--threads N``
sets it); NumPy's BLAS is limited to the same count when threadpoolctl is installed
(the header line shows both). ``--threads 1`` compares the libraries' single-core
efficiency, which a machine shared with other work measures most steadily. Without torch, gpugrad is timed alone and a message says so. Everything is
seeded, and the script writes no files.

    GPUGRAD_DEVICE=cpu python bench/cpu_training.py [--repeats 20] [--only LSTM] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

TARGETS = {"MLP": 1.3, "CNN": 2.0, "LSTM": 1.5}
ACCELERATED_TARGET = 1.0


BLOCK_S = 0.05  # a timed block of steps lasts at least this long
GAP_S = 0.2  # idle time before each block: the other library's threads stop spinning
NOISY = 0.25  # a note is printed when the per-round ratios' quartiles differ by more


def _block_size(fn, warmup):
    """Run ``fn`` ``warmup`` times; the number of steps that fills a timed block."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    per_step = (time.perf_counter() - t0) / warmup
    return max(1, math.ceil(BLOCK_S / max(per_step, 1e-9)))


def _time_block(fn, steps):
    time.sleep(GAP_S)
    fn()  # why: untimed, so both libraries are timed in steady state (warm caches, awake threads)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def timeit_many(fns, repeats, warmup=3):
    """Interleaved timing of several step functions: per function the median step
    time, and per function the (lower, upper) quartile of its per-round time divided
    by the last function's (the reference)."""
    steps = [_block_size(fn, warmup) for fn in fns]
    times = [[] for _ in fns]
    n = len(fns)
    for i in range(repeats):
        for j in range(n):
            k = (i + j) % n  # rotate the order every round
            times[k].append(_time_block(fns[k], steps[k]))
    medians = [statistics.median(ts) for ts in times]
    spreads = []
    for ts in times:
        ratios = [a / b for a, b in zip(ts, times[-1])]
        q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        spreads.append((q1, q3))
    return medians, spreads


def _blas_threads(limit):
    """Limit NumPy's BLAS to ``limit`` threads (when threadpoolctl is installed);
    returns the BLAS thread count as text and the limiter to keep alive."""
    try:
        import threadpoolctl  # noqa: PLC0415
    except ImportError:
        return "BLAS threads unknown (no threadpoolctl)", None
    limiter = None
    if limit is not None:
        limiter = threadpoolctl.threadpool_limits(limits=limit, user_api="blas")
    info = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    counts = sorted({p["num_threads"] for p in info})
    names = sorted({p["internal_api"] for p in info})
    return f"NumPy {'/'.join(names) or 'BLAS'} {counts or '?'} threads", limiter


# ------------------------------------------------------------------ gpugrad side


def gg_models():
    import numpy as np

    import gpugrad as gg

    class _LstmModel(gg.nn.Layer):
        def __init__(self, features, hidden, classes):
            self.lstm = gg.nn.LSTM(features, hidden, dtype=np.float32)
            self.head = gg.nn.Dense(hidden, classes, dtype=np.float32)

        def forward(self, x):
            return self.head(self.lstm(x)[:, -1, :])

    f32 = np.float32
    mlp = gg.nn.Sequential(
        gg.nn.Dense(784, 512, activation=gg.relu, dtype=f32),
        gg.nn.Dense(512, 512, activation=gg.relu, dtype=f32),
        gg.nn.Dense(512, 10, dtype=f32),
    )
    cnn = gg.nn.Sequential(
        gg.nn.Conv2D((3, 3, 1, 16), padding="same", activation=gg.relu, dtype=f32),
        gg.nn.MaxPool2D(2, 2),
        gg.nn.Conv2D((3, 3, 16, 32), padding="same", activation=gg.relu, dtype=f32),
        gg.nn.Flatten(),
        gg.nn.Dense(4 * 4 * 32, 64, activation=gg.relu, dtype=f32),
        gg.nn.Dense(64, 10, dtype=f32),
    )
    lstm = _LstmModel(128, 256, 10)
    return {"MLP": mlp, "CNN": cnn, "LSTM": lstm}


def data(rng):
    import numpy as np

    return {
        "MLP": (rng.standard_normal((256, 784)).astype(np.float32), rng.integers(0, 10, 256)),
        "CNN": (rng.random((64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64)),
        "LSTM": (rng.standard_normal((64, 50, 128)).astype(np.float32), rng.integers(0, 10, 64)),
    }


def gg_step(model, x, y, accelerated=False):
    """One training step on ``model`` (its own Adam); ``accelerated``: through
    ``gg.dlaccelerate``, checked once against the eager step."""
    import gpugrad as gg

    opt = gg.optim.Adam(model, learning_rate=1e-4)
    xd = gg.dlarray(x)

    def loss_grad(m, xb):
        loss = gg.nn.softmax_cross_entropy(m(xb), y)
        return loss, gg.dlgradient(loss, m)

    def step():
        loss, grads = gg.dlfeval(loss_grad, model, xd)
        opt.update(model, grads)
        return loss

    if not accelerated:
        return step
    acc = gg.dlaccelerate(step)
    acc()  # the trace
    acc()  # the first replay
    if acc.hits != 1:
        raise RuntimeError(f"dlaccelerate did not replay the training step: {acc!r}")
    return acc


# ------------------------------------------------------------------ torch side


def torch_step(name, x, y):
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    if name == "MLP":
        model = nn.Sequential(
            nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )
        tx = torch.tensor(x)
    elif name == "CNN":
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 4 * 32, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
        tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    else:

        class Lstm(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(128, 256, batch_first=True)
                self.head = nn.Linear(256, 10)

            def forward(self, inp):
                return self.head(self.lstm(inp)[0][:, -1, :])

        model = Lstm()
        tx = torch.tensor(x)
    ty = torch.tensor(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(tx), ty).backward()
        opt.step()

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Ratios are medians of step times measured in the same run.",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="Time this many rounds per workload (default 20).",
    )
    parser.add_argument(
        "--only",
        choices=sorted(TARGETS),
        default=None,
        help="Time this one workload only (default: all three).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Threads for torch and NumPy's BLAS (default: torch's default count).",
    )
    args = parser.parse_args(argv)
    # why: imported after parsing, so --help answers at once
    import copy

    import numpy as np

    import gpugrad as gg

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch = None
        print("torch is not installed, so gpugrad is timed alone (pip install torch to compare).")
    if torch is not None and args.threads:
        torch.set_num_threads(args.threads)
    blas, _limiter = _blas_threads(args.threads or (torch.get_num_threads() if torch else None))
    gg.random.seed(0)
    rng = np.random.default_rng(0)
    models = gg_models()
    batches = data(rng)
    names = [args.only] if args.only else list(TARGETS)
    print(
        f"gpugrad on {gg.device()} ({blas})"
        + (f", torch {torch_version} CPU ({torch.get_num_threads()} threads)" if torch else "")
    )
    print(
        f"{'workload':8s} {'eager ms':>9s} {'accel ms':>9s} {'torch ms':>9s} "
        f"{'eager/torch':>12s} {'accel/torch':>12s} {'accel/eager':>12s}"
    )
    noisy = []
    verdicts = []
    for name in names:
        x, y = batches[name]
        eager = gg_step(models[name], x, y)
        accel = gg_step(copy.deepcopy(models[name]), x, y, accelerated=True)
        fns = [eager, accel] + ([torch_step(name, x, y)] if torch else [])
        medians, spreads = timeit_many(fns, args.repeats)
        t_eager, t_accel = medians[0], medians[1]
        if torch is None:
            print(
                f"{name:8s} {t_eager * 1e3:9.2f} {t_accel * 1e3:9.2f} {'-':>9s} {'-':>12s} "
                f"{'-':>12s} {t_accel / t_eager:11.2f}x"
            )
            continue
        t_torch = medians[2]
        r_eager, r_accel = t_eager / t_torch, t_accel / t_torch
        print(
            f"{name:8s} {t_eager * 1e3:9.2f} {t_accel * 1e3:9.2f} {t_torch * 1e3:9.2f} "
            f"{r_eager:11.2f}x {r_accel:11.2f}x {t_accel / t_eager:11.2f}x"
        )
        verdicts.append(
            f"{name}: eager {r_eager:.2f}x ({'meets' if r_eager <= TARGETS[name] else 'misses'}"
            f" <= {TARGETS[name]}x), accelerated {r_accel:.2f}x "
            f"({'meets' if r_accel <= ACCELERATED_TARGET else 'misses'} <= "
            f"{ACCELERATED_TARGET}x)"
        )
        for label, (q1, q3), r in (("eager", spreads[0], r_eager), ("accel", spreads[1], r_accel)):
            if q3 - q1 > NOISY * r:
                noisy.append(f"{name} {label} {q1:.2f}-{q3:.2f}x")
    for line in verdicts:
        print(line)
    if noisy:
        print(
            "Note: the machine was noisy (per-round ratio quartiles: "
            + ", ".join(noisy)
            + "); rerun when it is idle."
        )


if __name__ == "__main__":
    main()
