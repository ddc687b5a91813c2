"""A 2-10-1 ReLU MLP learns XOR (Swift-style layers, gg.optim.Adam).

python examples/xor_mlp.py [--steps 500] [--plot xor_loss.png]
"""

from __future__ import annotations

import argparse

import numpy as np

import gpugrad as gg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--plot", default="xor_loss.png")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    gg.random.seed(0)
    x = gg.dlarray(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64))
    target = gg.dlarray(np.array([[0], [1], [1], [0]], dtype=np.float64))
    model = gg.nn.Sequential(gg.nn.Dense(2, 10, activation=gg.relu), gg.nn.Dense(10, 1))
    opt = gg.optim.Adam(model, learning_rate=0.05)

    def step(m):
        loss = gg.mean((m(x) - target) ** 2)
        return loss, gg.dlgradient(loss, m)

    losses = []
    for _ in (bar := tqdm(range(args.steps), desc="XOR MLP")):
        loss, grads = gg.dlfeval(step, model)
        opt.update(model, grads)
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.2e}")
    pred = model(x).numpy().ravel()
    print(
        f"final loss {losses[-1]:.2e}; predictions {np.round(pred, 3).tolist()} (target [0, 1, 1, 0])"
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.figure(figsize=(6, 4))
        plt.semilogy(losses)
        plt.xlabel("step")
        plt.ylabel("mean squared error")
        plt.title("XOR, 2-10-1 ReLU MLP")
        plt.tight_layout()
        plt.savefig(args.plot, dpi=100)
        print(f"loss curve saved to {args.plot}")
    return losses[-1]


if __name__ == "__main__":
    main()
