"""Checkpointed training: a layer that discards its activations, and a deep MLP
with ``gg.checkpoint_sequential``.

1. Swift for TensorFlow's checkpointing example: Conv2D (5x5x3x6) whose
   activations are recomputed in the backward pass (``discarding_activations()``),
   MaxPool 2x2, Flatten, Dense 216 -> 10, trained 5 steps on random 16x16x3 data.
   The conv layer prints each time it runs: twice per step (forward, and again
   inside the pullback).
2. A 32-layer tanh MLP (width 256) with and without checkpointing: peak bytes
   kept for the backward pass (the engine's count) and step time.

Writes no files.

    python examples/checkpointed_training.py [--depth 32] [--width 256] [--batch 128]
"""

from __future__ import annotations

import argparse
import math
import time


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument("--depth", type=int, default=32, help="Give the MLP this many layers.")
    parser.add_argument("--width", type=int, default=256, help="Give each MLP layer this width.")
    parser.add_argument("--batch", type=int, default=128, help="Feed the MLP batches this large.")
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed gg.random with this number (weights and data)."
    )
    return parser


def conv_example(seed=0):
    import numpy as np

    import gpugrad as gg

    class LoudConv2D(gg.nn.Conv2D):
        def forward(self, x):
            phase = "recompute in pullback" if gg.tape.is_recording() else "forward"
            print(f"    conv layer runs ({phase})")
            return super().forward(x)

    gg.random.seed(seed)
    model = gg.nn.Sequential(
        LoudConv2D(filter_shape=(5, 5, 3, 6), activation=gg.relu).discarding_activations(),
        gg.nn.MaxPool2D(pool_size=(2, 2), strides=(2, 2)),
        gg.nn.Flatten(),
        gg.nn.Dense(216, 10),
    )
    rng = np.random.default_rng(seed)
    images = gg.dlarray(rng.normal(size=(8, 16, 16, 3)))
    labels = gg.dlarray(rng.integers(0, 10, size=8))
    opt = gg.optim.SGD(model, learning_rate=0.1)

    def loss_and_grads(model, images, labels):
        loss = gg.nn.softmax_cross_entropy(model(images), labels)
        return loss, gg.dlgradient(loss, model)

    print("1. Conv2D.discarding_activations() in a small CNN")
    for step in range(5):
        print(f"  step {step}")
        loss, grads = gg.dlfeval(loss_and_grads, model, images, labels)
        opt.update(model, grads)
        print(f"    loss {float(loss):.4f}")


def mlp_example(depth=32, width=256, batch=128, seed=0):
    import numpy as np

    import gpugrad as gg

    gg.random.seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    layers = [gg.nn.Dense(width, width, activation=gg.tanh) for _ in range(depth)]
    model = gg.nn.Sequential(layers)
    x = gg.dlarray(rng.normal(size=(batch, width)))

    def run(checkpointed):
        def loss_and_grads(model, x):
            if checkpointed:
                y = gg.checkpoint_sequential(model.layers, x)
            else:
                y = model(x)
            loss = gg.mean(y**2)
            return loss, gg.dlgradient(loss, model)

        gg.dlfeval(loss_and_grads, model, x)  # warm up
        with gg.memory.track() as m:
            loss, _ = gg.dlfeval(loss_and_grads, model, x)
        times = []
        for _ in range(5):  # best of 5: the machine may be shared
            t0 = time.perf_counter()
            gg.dlfeval(loss_and_grads, model, x)
            times.append(time.perf_counter() - t0)
        return float(loss), m.peak_bytes, min(times)

    print(f"2. {depth}-layer tanh MLP, width {width}, batch {batch}")
    plain = run(False)
    ckpt = run(True)
    segments = round(math.sqrt(depth))
    for name, (loss, peak, elapsed) in (("plain", plain), (f"{segments} segments", ckpt)):
        print(
            f"  {name:<12} loss {loss:.6f}  peak saved {peak / 2**20:6.2f} MiB "
            f"({peak / plain[1]:.2f})  step {elapsed * 1e3:6.1f} ms ({elapsed / plain[2]:.2f}x)"
        )


def main(argv=None):
    args = build_parser().parse_args(argv)
    conv_example(args.seed)
    mlp_example(args.depth, args.width, args.batch, args.seed)


if __name__ == "__main__":
    main()
