"""Swift for TensorFlow-style differentiable programming with gpugrad.

Shows ``gg.gradient`` of plain code, ``without_derivative``, a custom derivative
around foreign (NumPy) code, ``with_derivative`` hooks that watch and rewrite
gradients, ``value_with_pullback`` for a Jacobian, and second derivatives.
Runs in about a second on the CPU; writes no files, draws no random numbers.

    python examples/custom_derivatives.py
"""

import argparse
import math


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    return parser


def main(argv=None):
    build_parser().parse_args(argv)
    import numpy as np  # the heavy imports come after the arguments, so --help is instant

    import gpugrad as gg

    # 1. gradient of plain code; the cos branch is cut off by without_derivative
    def f(x, y):
        return gg.sin(gg.sin(gg.sin(x))) + gg.without_derivative(gg.cos(gg.cos(gg.cos(y))))

    dx, dy = gg.gradient(f)(2.0, 3.0)
    print(
        f"gradient of sin(sin(sin(x))) + without_derivative(...) at (2, 3): "
        f"({float(dx):.8f}, {float(dy):.1f})"
    )

    # 2. a custom derivative around foreign code (NumPy's exp, not traced)
    pullback_calls = []

    @gg.custom_derivative
    def my_exp(x):
        return np.exp(np.asarray(x))

    @my_exp.derivative
    def _(x):
        y = my_exp(x)

        def pullback(v):
            pullback_calls.append(1)
            return v * y

        return y, pullback

    g = gg.gradient(my_exp)(3.0)
    print(
        f"d/dx my_exp(x) at 3 = {float(g):.6f} (e^3 = {math.exp(3):.6f}); "
        f"custom pullback called {len(pullback_calls)} time(s)"
    )
    h = gg.gradient(gg.gradient(lambda x: my_exp(x * x)))(0.4)
    print(
        f"second derivative of my_exp(x^2) at 0.4 = {float(h):.6f} "
        f"(exact {(2 + 4 * 0.16) * math.exp(0.16):.6f})"
    )

    # 3. hooks: watch one gradient, rewrite another
    def show(d):
        print(f"  hook: gradient arriving at sin(x) is {float(d)}")

    def rewrite(d):
        print(f"  hook: gradient arriving at x inside log is {float(d):.6f}, rewritten to 0.5")
        return gg.full(d.shape, 0.5)

    def hooked(x):
        a = gg.sin(x).with_derivative(show)
        b = gg.log(gg.with_derivative(x, rewrite))
        return a + b

    g = gg.gradient(hooked)(30.0)
    print(f"gradient at 30 = {float(g):.6f} (cos(30) + 0.5 = {math.cos(30) + 0.5:.6f})")

    # 4. value_with_pullback: the Jacobian of a vector function, row by row
    a = gg.dlarray([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    y, pullback = gg.value_with_pullback(lambda x: gg.tanh(a @ x), gg.dlarray([0.1, 0.2]))
    jac = np.stack([pullback(gg.dlarray(e)).numpy() for e in np.eye(3)])
    print("Jacobian of tanh(A x) at (0.1, 0.2):")
    print(np.array2string(jac, precision=5))

    # 5. differentiable_function from a (value, pullback) function
    softplus = gg.differentiable_function(
        lambda x: (gg.log1p(gg.exp(x)), lambda v: (v * gg.sigmoid(x),))
    )
    print(
        f"softplus'(0) = {float(gg.gradient(softplus)(0.0)):.3f}, "
        f"softplus''(0) = {float(gg.gradient(gg.gradient(softplus))(0.0)):.3f}"
    )


if __name__ == "__main__":
    main()
