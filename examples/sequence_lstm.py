"""Sequence classification with an LSTM: each 8x8 scikit-learn digit is read row by
row as a sequence of 8 steps with 8 features; the last hidden state feeds a Dense
classifier. Uses the whole-sequence ``lstm`` primitive (one GEMM for the input
projection of all steps, fused cells on cuda/emu).

    python examples/sequence_lstm.py [--epochs 20] [--plot examples/lstm_loss.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument("--epochs", type=int, default=20, help="Train for this many epochs.")
    parser.add_argument("--batch", type=int, default=64, help="Use mini-batches of this size.")
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="Use only this many training samples (0, the default, uses all).",
    )
    parser.add_argument(
        "--plot",
        default=str(HERE / "lstm_loss.png"),
        help="Write the loss curve (a PNG) to this path; pass '' to write none.",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed the weights, the data split and the batches."
    )
    return parser


def row_reader(hidden=64, classes=10):
    """An LSTM over the rows, then a Dense layer on the last hidden state."""
    import numpy as np

    import gpugrad as gg

    class RowReader(gg.nn.Layer):
        def __init__(self):
            self.lstm = gg.nn.LSTM(8, hidden, dtype=np.float32)
            self.head = gg.nn.Dense(hidden, classes, dtype=np.float32)

        def forward(self, x):
            states = self.lstm(x)  # (batch, time, hidden)
            return self.head(states[:, -1, :])

    return RowReader()


def main(argv=None):
    args = build_parser().parse_args(argv)
    import numpy as np  # the heavy imports come after the arguments, so --help is instant

    import gpugrad as gg
    from gpugrad._progress import progress, save_plot

    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit(
            "This example needs scikit-learn for its data set: pip install scikit-learn"
        ) from None

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (N, time=8 rows, features=8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    gg.random.seed(args.seed)
    model = row_reader()
    opt = gg.optim.Adam(model, learning_rate=5e-3)

    def step(m, xb, yb):
        loss = gg.nn.softmax_cross_entropy(m(xb), yb)
        return loss, gg.dlgradient(loss, m)

    rng = np.random.default_rng(args.seed)
    losses = []
    start = time.perf_counter()
    steps = args.epochs * int(np.ceil(len(x_train) / args.batch))
    with progress(steps, "row LSTM") as bar:
        for _ in range(args.epochs):
            order = rng.permutation(len(x_train))
            for i in range(0, len(order), args.batch):
                idx = order[i : i + args.batch]
                loss, grads = gg.dlfeval(step, model, gg.dlarray(x_train[idx]), y_train[idx])
                opt.update(model, grads)
                losses.append(float(loss))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update()
    elapsed = time.perf_counter() - start
    acc = float((model(gg.dlarray(x_test)).numpy().argmax(1) == y_test).mean())
    print(f"device {gg.device()}: {steps} steps in {elapsed:.1f} s; test accuracy {acc * 100:.2f}%")
    if args.plot:

        def draw(plt):
            plt.plot(losses)
            plt.yscale("log")
            plt.xlabel("step")
            plt.ylabel("cross-entropy")
            plt.title(f"row-by-row LSTM on digits (test accuracy {acc * 100:.1f}%)")

        save_plot(draw, args.plot)
    return acc


if __name__ == "__main__":
    main()
