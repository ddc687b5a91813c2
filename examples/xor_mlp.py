"""A 2-10-1 ReLU MLP learns XOR (Swift-style layers, gg.optim.Adam), with
``with_derivative`` hooks that print the gradient arriving at the network's output
and at the output of layer 1 (on the first and the last step).

    python examples/xor_mlp.py [--steps 500] [--plot examples/xor_loss.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument("--steps", type=int, default=500, help="Train for this many Adam steps.")
    parser.add_argument(
        "--plot",
        default=str(HERE / "xor_loss.png"),
        help="Write the loss curve (a PNG) to this path; pass '' to write none.",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed gg.random with this number (initial weights)."
    )
    return parser


def main(argv=None):
    """Train; returns ``(final loss, {hook name: gradient seen on the first step})``."""
    args = build_parser().parse_args(argv)
    import numpy as np  # the heavy imports come after the arguments, so --help is instant

    import gpugrad as gg
    from gpugrad._progress import progress, save_plot

    gg.random.seed(args.seed)
    x = gg.dlarray(np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64))
    target = gg.dlarray(np.array([[0], [1], [1], [0]], dtype=np.float64))
    layer1, layer2 = gg.nn.Dense(2, 10, activation=gg.relu), gg.nn.Dense(10, 1)
    model = gg.nn.Sequential(layer1, layer2)
    opt = gg.optim.Adam(model, learning_rate=0.05)
    first_step = {}

    def printing_hook(name, step):
        def hook(dx):
            # why: the hook runs inside the backward pass; it only looks, so it returns None
            # and the gradient flows on unchanged.
            if step == 0:
                first_step[name] = dx.numpy()
            if step in (0, args.steps - 1):
                values = np.array2string(dx.numpy(), precision=3)
                bar.write(f"step {step}: gradient at {name} {tuple(dx.shape)}:\n{values}")

        return hook

    def step_fn(m, step):
        hidden = gg.with_derivative(m[0](x), printing_hook("layer 1", step))
        out = gg.with_derivative(m[1](hidden), printing_hook("the output", step))
        loss = gg.mean((out - target) ** 2)
        return loss, gg.dlgradient(loss, m)

    losses = []
    with progress(args.steps, "XOR MLP") as bar:
        for step in range(args.steps):
            loss, grads = gg.dlfeval(step_fn, model, step)
            opt.update(model, grads)
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.2e}")
            bar.update()
    pred = model(x).numpy().ravel()
    print(
        f"final loss {losses[-1]:.2e}; predictions {np.round(pred, 3).tolist()} (target [0, 1, 1, 0])"
    )
    if args.plot:

        def draw(plt):
            plt.semilogy(losses)
            plt.xlabel("step")
            plt.ylabel("mean squared error")
            plt.title("XOR, 2-10-1 ReLU MLP")

        save_plot(draw, args.plot)
    return losses[-1], first_step


if __name__ == "__main__":
    main()
