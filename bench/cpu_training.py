"""CPU training-step time, gpugrad vs PyTorch in the same run (float32).

Workloads: MLP 784-512-512-10 (batch 256), the digits CNN from
examples/digits_cnn.py (batch 64), LSTM with 256 hidden units over 50 steps
(batch 64, 128 input features) followed by a Dense head. One step = forward,
backward, Adam update. Prints median step times and the gpugrad/torch ratio
(targets: MLP <= 1.3x, CNN <= 2x, LSTM <= 1.5x). The torch side is skipped with
a message when torch is not installed.

    GPUGRAD_DEVICE=cpu python bench/cpu_training.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import gpugrad as gg

TARGETS = {"MLP": 1.3, "CNN": 2.0, "LSTM": 1.5}


def timeit(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", choices=sorted(TARGETS), default=None)
    args = parser.parse_args(argv)
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch = None
        print("torch is not installed: timing gpugrad only (pip install torch for the comparison)")
    gg.random.seed(0)
    rng = np.random.default_rng(0)
    models = gg_models()
    batches = data(rng)
    names = [args.only] if args.only else list(TARGETS)
    print(
        f"gpugrad on {gg.device()}"
        + (f", torch {torch_version} CPU ({torch.get_num_threads()} threads)" if torch else "")
    )
    print(f"{'workload':8s} {'gpugrad ms':>11s} {'torch ms':>9s} {'ratio':>6s} {'target':>7s}")
    for name in names:
        x, y = batches[name]
        t_gg = timeit(gg_step(models[name], x, y), args.repeats)
        if torch is None:
            print(f"{name:8s} {t_gg * 1e3:11.2f} {'-':>9s} {'-':>6s} {TARGETS[name]:6.1f}x")
            continue
        t_torch = timeit(torch_step(name, x, y), args.repeats)
        ratio = t_gg / t_torch
        flag = "ok" if ratio <= TARGETS[name] else "over"
        print(
            f"{name:8s} {t_gg * 1e3:11.2f} {t_torch * 1e3:9.2f} {ratio:5.2f}x {TARGETS[name]:6.1f}x {flag}"
        )


if __name__ == "__main__":
    main()
