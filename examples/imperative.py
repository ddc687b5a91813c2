"""MXNet-style imperative autograd with gpugrad: ``attach_grad``, ``record()``,
``backward``, Python control flow, gradient accumulation and a tiny SGD loop.
Runs in about a second on the CPU; writes no files.

    python examples/imperative.py
"""

import argparse


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed gg.random with this number (random draws)."
    )
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    import numpy as np  # the heavy imports come after the arguments, so --help is instant

    import gpugrad as gg
    from gpugrad import autograd

    gg.random.seed(args.seed)
    # 1. y = 2 x^T x has gradient 4 x
    x0 = gg.dlarray(np.arange(4.0).reshape(4, 1))
    x0.attach_grad()
    with autograd.record():
        y0 = 2 * gg.dot(x0.T, x0)
    y0.backward()
    print("x =", x0.numpy().ravel(), " grad of 2 x^T x =", x0.grad.numpy().ravel())

    # 2. data-dependent control flow differentiates as executed: c = k * a
    def f(a):
        b = a * 2
        while gg.norm(b) < 1000:
            b = b * 2
        c = b if gg.sum(b) > 0 else 100 * b
        return c

    a = gg.random.normal(shape=(3,))
    a.attach_grad()
    with autograd.record():
        c = f(a)
    c.backward()
    print(
        "while/if: a.grad =", np.round(a.grad.numpy(), 3), " c / a =", np.round((c / a).numpy(), 3)
    )

    # 3. grad_req="add" accumulates over backward calls
    w = gg.dlarray([1.0, -2.0])
    w.attach_grad(grad_req="add")
    for _ in range(3):
        with autograd.record():
            loss = gg.sum(w * w)
        loss.backward()
    print("grad_req='add' after 3 backward calls:", w.grad.numpy(), "(3 * 2w)")

    # 4. training mode and recording flags
    with autograd.record():
        print(
            "inside record: recording", autograd.is_recording(), "training", autograd.is_training()
        )
        with autograd.pause():
            print(
                "inside pause:  recording",
                autograd.is_recording(),
                "training",
                autograd.is_training(),
            )
    print("outside:       recording", autograd.is_recording(), "training", autograd.is_training())

    # 5. a second derivative with autograd.grad(create_graph=True)
    x = gg.dlarray([0.5, 1.5])
    x.attach_grad()
    with autograd.record():
        (dx,) = autograd.grad(gg.sum(x**3), [x], create_graph=True)
        z = gg.sum(dx)
    z.backward()
    print("d/dx sum(3x^2) =", x.grad.numpy(), "(6x)")

    # 6. linear regression with plain SGD
    gg.random.seed(0)
    xs = gg.random.normal(shape=(100, 2))
    ys = xs @ gg.dlarray([[2.0], [-3.4]]) + 4.2
    w = gg.zeros((2, 1))
    b = gg.zeros((1,))
    for p in (w, b):
        p.attach_grad()
    for epoch in range(100):
        with autograd.record():
            loss = gg.mean((xs @ w + b - ys) ** 2)
        loss.backward()
        w -= 0.1 * w.grad
        b -= 0.1 * b.grad
        if epoch % 25 == 0:
            print(f"epoch {epoch:3d} loss {float(loss):.6f}")
    print("learned w =", np.round(w.numpy().ravel(), 4), "b =", np.round(b.numpy(), 4))

    # 7. mistakes give clear errors
    for bad in (lambda: gg.dlarray([1.0]).backward(), lambda: y0.backward()):
        try:
            bad()
        except gg.TraceError as exc:
            print("TraceError:", str(exc)[:100], "...")


if __name__ == "__main__":
    main()
