"""Tape overhead on a tiny-op workload: Rosenbrock value and gradient per call.

This script times ``gg.dlfeval(rosenbrock)`` eagerly and through ``gg.dlaccelerate``
(trace once, replay afterwards) against PyTorch eager (``torch.autograd.grad``),
HIPS ``autograd`` and JAX ``jit(value_and_grad)``, all measured in the same run, and
prints the ratios. Each library that is not installed is skipped with a message.
The targets are: gpugrad eager / PyTorch eager <= 0.8, and gpugrad accelerated /
JAX jit <= 1.5. The script writes no files.

    python bench/rosenbrock.py [--calls 1000] [--repeats 25]
"""

import argparse
import statistics
import time


def interleaved(fns, calls, repeats):
    """Best and median seconds per call of each function, measured in alternating
    blocks of ``calls`` calls so that a change in machine load hits every library
    alike (the ratios are what this benchmark reports)."""
    for fn in fns.values():
        for _ in range(min(calls, 200)):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def _rosenbrock_gg():
    import gpugrad as gg

    def f(x):
        y = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
        return y, gg.dlgradient(y, x)

    return gg, f


def bench_gpugrad():
    gg, f = _rosenbrock_gg()
    x = gg.dlarray([-1.0, 2.0])
    y, g = gg.dlfeval(f, x)
    assert float(y) == 104 and g.numpy().tolist() == [396, 200]
    return lambda: gg.dlfeval(f, x)


def bench_accelerated():
    gg, f = _rosenbrock_gg()
    acc = gg.dlaccelerate(f)
    x = gg.dlarray([-1.0, 2.0])
    for start in ([0.5, 0.5], [-1.0, 2.0]):  # trace, then the checked first replay
        y, g = gg.dlfeval(acc, gg.dlarray(start))
    assert float(y) == 104 and g.numpy().tolist() == [396, 200] and acc.HitRate == 50
    return lambda: gg.dlfeval(acc, x)


def bench_jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def f(x):
        return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2

    vg = jax.jit(jax.value_and_grad(f))
    x = jnp.array([-1.0, 2.0])
    y, g = vg(x)
    assert float(y) == 104 and [float(v) for v in g] == [396, 200]

    def step():
        y, g = vg(x)
        return g.block_until_ready()

    return step


def bench_torch():
    import torch

    torch.set_num_threads(1)
    x = torch.tensor([-1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def step():
        y = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
        (g,) = torch.autograd.grad(y, x)
        return y, g

    y, g = step()
    assert float(y.detach()) == 104 and g.tolist() == [396, 200]
    return step


def bench_autograd():
    import autograd
    import autograd.numpy as anp

    def f(x):
        return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2

    vg = autograd.value_and_grad(f)
    x = anp.array([-1.0, 2.0])
    y, g = vg(x)
    assert float(y) == 104 and list(g) == [396, 200]
    return lambda: vg(x)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The ratios are taken between libraries measured in the same run.",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument(
        "--calls", type=int, default=1000, help="Time blocks of this many calls (default 1000)."
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=25,
        help="Run this many interleaved blocks per library (default 25).",
    )
    args = parser.parse_args()
    # why: imported after parsing, so --help answers at once
    import numpy as np

    np.seterr(all="ignore")
    np.random.seed(0)
    import gpugrad as gg

    fns = {}
    for name, make in [
        ("gpugrad", bench_gpugrad),
        ("gg accelerated", bench_accelerated),
        ("pytorch eager", bench_torch),
        ("HIPS autograd", bench_autograd),
        ("JAX jit", bench_jax),
    ]:
        try:
            fns[name] = make()
        except ImportError as exc:
            print(f"{name:15s} is not installed ({exc.name}), so it is skipped.")
    results = interleaved(fns, args.calls, args.repeats)
    print(
        f"\nRosenbrock value+gradient, {args.repeats} interleaved blocks of {args.calls} calls, "
        f"device {gg.device()}"
    )
    print(f"{'library':15s} {'best us/call':>14s} {'median':>10s} {'gpugrad ratio':>15s}")
    base = results["gpugrad"][0]
    for name, (best, med) in results.items():
        ratio = base / best
        print(f"{name:15s} {best * 1e6:14.1f} {med * 1e6:10.1f} {ratio:15.2f}")
    print()
    if "pytorch eager" in results:
        r = base / results["pytorch eager"][0]
        verdict = "meets" if r <= 0.8 else "misses"
        print(f"gpugrad / PyTorch eager = {r:.2f} ({verdict} the <= 0.8 target)")
    acc = results["gg accelerated"][0]
    print(f"gpugrad accelerated / gpugrad eager = {acc / base:.2f}")
    if "JAX jit" in results:
        r = acc / results["JAX jit"][0]
        verdict = "meets" if r <= 1.5 else "misses"
        print(f"gpugrad accelerated / JAX jit = {r:.2f} ({verdict} the <= 1.5 target)")


if __name__ == "__main__":
    main()
