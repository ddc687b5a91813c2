"""Rosenbrock's function: value and gradient with dlfeval/dlgradient (MATLAB's example),
a quiver plot of the gradient over the unit square, and the complex-plane plot of
real((2+3j) x) with its gradient arrows. Plots are saved as PNG (``--show`` opens
windows); they need matplotlib (``pip install -e .[examples]``), and without it the
script prints the values only. Deterministic: it draws no random numbers.

    python examples/rosenbrock.py [--out-dir examples] [--no-plots] [--show]
"""

import argparse
import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument("--show", action="store_true", help="Open the plots in windows too.")
    parser.add_argument("--no-plots", action="store_true", help="Print the values only.")
    parser.add_argument(
        "--out-dir", default=str(HERE), help="Write the two PNG plots into this folder."
    )
    return parser


def rosenbrock(x):
    import gpugrad as gg

    y = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    return y, gg.dlgradient(y, x)


def rosenbrock2(x1, x2):
    import gpugrad as gg

    y = 100 * (x2 - x1**2) ** 2 + (1 - x1) ** 2
    dx1, dx2 = gg.dlgradient(y, x1, x2)
    return y, dx1, dx2


def complex_fun(x):
    import gpugrad as gg

    y = gg.sum(gg.real((2 + 3j) * x))
    return y, gg.dlgradient(y, x)


def main(argv=None):
    args = build_parser().parse_args(argv)
    import numpy as np  # the heavy imports come after the arguments, so --help is instant

    import gpugrad as gg

    y, g = gg.dlfeval(rosenbrock, gg.dlarray([-1, 2]))
    print(f"one input:  f([-1, 2]) = {float(y):g}, gradient = {g.numpy().tolist()}")
    y, d1, d2 = gg.dlfeval(rosenbrock2, gg.dlarray(-1), gg.dlarray(2))
    print(f"two inputs: f(-1, 2) = {float(y):g}, gradients = {float(d1):g}, {float(d2):g}")

    # gradient over a grid in one call: the grid is one dlarray, sum() makes y scalar
    xs, ys = np.meshgrid(np.linspace(0, 1, 10), np.linspace(0, 1, 10))

    def grid_fun(x1, x2):
        y = gg.sum(100 * (x2 - x1**2) ** 2 + (1 - x1) ** 2)
        return gg.dlgradient(y, x1, x2)

    gx, gy = gg.dlfeval(grid_fun, gg.dlarray(xs), gg.dlarray(ys))
    z = gg.dlarray(np.array([1 + 1j, -2 + 0.5j, 0.5 - 1j]))
    _, gz = gg.dlfeval(complex_fun, z)
    print(f"complex:    gradient of sum(real((2+3j) x)) = {gz.numpy().tolist()}")
    if args.no_plots:
        return
    try:
        import matplotlib

        if not args.show:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot was written (pip install matplotlib).")
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.quiver(xs, ys, gx.numpy(), gy.numpy())
    ax.set(title="Gradient of the Rosenbrock function", xlabel="x1", ylabel="x2")
    out_dir = pathlib.Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out1 = out_dir / "rosenbrock_gradient.png"
    fig.savefig(out1, dpi=100)
    fig2, ax2 = plt.subplots(figsize=(5, 5))
    zs = z.numpy()
    g = gz.numpy()
    ax2.scatter(zs.real, zs.imag, color="k")
    ax2.quiver(zs.real, zs.imag, g.real, g.imag, angles="xy", scale_units="xy", scale=2)
    ax2.set(title="real((2+3j) x): gradient arrows", xlabel="Re x", ylabel="Im x")
    ax2.set_xlim(-4, 3), ax2.set_ylim(-3, 2), ax2.grid(True)
    out2 = out_dir / "complex_gradient.png"
    fig2.savefig(out2, dpi=100)
    print(f"The plots were written to {out1} and {out2}.")
    if args.show:
        plt.show()


if __name__ == "__main__":
    main()
