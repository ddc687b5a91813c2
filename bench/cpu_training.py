"""CPU training-step time, gpugrad vs PyTorch in the same run (float32).

Workloads: MLP 784-512-512-10 (batch 256), the digits CNN from
examples/digits_cnn.py (batch 64), LSTM with 256 hidden units over 50 steps
(batch 64, 128 input features) followed by a Dense head. One step = forward,
backward, Adam update.

The two libraries are timed interleaved, so machine noise hits both alike: each
round times a block of gpugrad steps and a block of torch steps (the order
alternates every round; a block holds enough steps to last about 50 ms). Before
each block the process sleeps 0.2 s: the thread pools of both libraries spin for
a while after their last call (OpenBLAS for about 0.1 s), and on a machine with
few cores the other library's spinning threads would otherwise slow a block down
by up to 3x. Each block starts with one untimed step, so both libraries are timed
in steady state (warm caches, awake threads, as in a training loop).

The table shows the median step time of each library and the median over rounds
of the per-round gpugrad/torch ratio (targets: MLP <= 1.3x, CNN <= 2x,
LSTM <= 1.5x); a note follows the table when the rounds disagree (a busy
machine). torch keeps its default thread count; NumPy's BLAS is limited to the
same count when threadpoolctl is installed (the header line shows both). The
torch side is skipped with a message when torch is not installed.

    GPUGRAD_DEVICE=cpu python bench/cpu_training.py [--repeats 20] [--only LSTM]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

import gpugrad as gg

TARGETS = {"MLP": 1.3, "CNN": 2.0, "LSTM": 1.5}


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


def timeit(fn, repeats, warmup=3):
    """Median step time of ``fn`` alone (used when torch is not installed)."""
    steps = _block_size(fn, warmup)
    return statistics.median(_time_block(fn, steps) for _ in range(repeats))


def timeit_pair(fn_a, fn_b, repeats, warmup=3):
    """Interleaved timing of two step functions: ``(median a, median b, median a/b,
    (lower, upper) quartile of a/b)``, the ratio taken per round (a block of each,
    order alternating)."""
    steps_a = _block_size(fn_a, warmup)
    steps_b = _block_size(fn_b, warmup)
    times_a, times_b, ratios = [], [], []
    for i in range(repeats):
        if i % 2:
            tb = _time_block(fn_b, steps_b)
            ta = _time_block(fn_a, steps_a)
        else:
            ta = _time_block(fn_a, steps_a)
            tb = _time_block(fn_b, steps_b)
        times_a.append(ta)
        times_b.append(tb)
        ratios.append(ta / tb)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return (
        statistics.median(times_a),
        statistics.median(times_b),
        statistics.median(ratios),
        (q1, q3),
    )


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


class _LstmModel(gg.nn.Layer):
    def __init__(self, features, hidden, classes):
        self.lstm = gg.nn.LSTM(features, hidden, dtype=np.float32)
        self.head = gg.nn.Dense(hidden, classes, dtype=np.float32)

    def forward(self, x):
        return self.head(self.lstm(x)[:, -1, :])


def gg_models():
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
    return {
        "MLP": (rng.standard_normal((256, 784)).astype(np.float32), rng.integers(0, 10, 256)),
        "CNN": (rng.random((64, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 64)),
        "LSTM": (rng.standard_normal((64, 50, 128)).astype(np.float32), rng.integers(0, 10, 64)),
    }


def gg_step(model, x, y):
    opt = gg.optim.Adam(model, learning_rate=1e-4)
    xd = gg.dlarray(x)

    def loss_grad(m, xb):
        loss = gg.nn.softmax_cross_entropy(m(xb), y)
        return loss, gg.dlgradient(loss, m)

    def step():
        _, grads = gg.dlfeval(loss_grad, model, xd)
        opt.update(model, grads)

    return step


# ------------------------------------------------------------------ torch side


def torch_step(name, x, y):
    import torch

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per workload")
    parser.add_argument("--only", choices=sorted(TARGETS), default=None)
    args = parser.parse_args(argv)
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch = None
        print("torch is not installed: timing gpugrad only (pip install torch for the comparison)")
    blas, _limiter = _blas_threads(torch.get_num_threads() if torch else None)
    gg.random.seed(0)
    rng = np.random.default_rng(0)
    models = gg_models()
    batches = data(rng)
    names = [args.only] if args.only else list(TARGETS)
    print(
        f"gpugrad on {gg.device()} ({blas})"
        + (f", torch {torch_version} CPU ({torch.get_num_threads()} threads)" if torch else "")
    )
    print(f"{'workload':8s} {'gpugrad ms':>11s} {'torch ms':>9s} {'ratio':>6s} {'target':>7s}")
    noisy = []
    for name in names:
        x, y = batches[name]
        if torch is None:
            t_gg = timeit(gg_step(models[name], x, y), args.repeats)
            print(f"{name:8s} {t_gg * 1e3:11.2f} {'-':>9s} {'-':>6s} {TARGETS[name]:6.1f}x")
            continue
        t_gg, t_torch, ratio, (q1, q3) = timeit_pair(
            gg_step(models[name], x, y), torch_step(name, x, y), args.repeats
        )
        flag = "ok" if ratio <= TARGETS[name] else "over"
        print(
            f"{name:8s} {t_gg * 1e3:11.2f} {t_torch * 1e3:9.2f} {ratio:5.2f}x {TARGETS[name]:6.1f}x {flag}"
        )
        if q3 - q1 > NOISY * ratio:
            noisy.append(f"{name} {q1:.2f}-{q3:.2f}x")
    if noisy:
        print(
            "note: the machine was noisy (per-round ratio quartiles: "
            + ", ".join(noisy)
            + "); rerun when it is idle"
        )


if __name__ == "__main__":
    main()
