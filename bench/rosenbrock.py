"""Tape overhead on a tiny-op workload: Rosenbrock value + gradient per call.

Times ``gg.dlfeval(rosenbrock)`` against PyTorch eager (``torch.autograd.grad``)
and HIPS ``autograd`` measured in the same run (when installed), and prints the
ratios. Target: gpugrad / PyTorch <= 0.8.

    python bench/rosenbrock.py [--calls 1000] [--repeats 25]
"""

import argparse
import statistics
import time

import numpy as np

import gpugrad as gg


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


def bench_gpugrad():
    def f(x):
        y = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
        return y, gg.dlgradient(y, x)

    x = gg.dlarray([-1.0, 2.0])
    y, g = gg.dlfeval(f, x)
    assert float(y) == 104 and g.numpy().tolist() == [396, 200]
    return lambda: gg.dlfeval(f, x)


def bench_torch():
    import torch

    torch.set_num_threads(1)
    x = torch.tensor([-1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def step():
        y = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
        (g,) = torch.autograd.grad(y, x)
        return y, g

    y, g = step()
    assert float(y) == 104 and g.tolist() == [396, 200]
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    fns = {}
    for name, make in [
        ("gpugrad", bench_gpugrad),
        ("pytorch eager", bench_torch),
        ("HIPS autograd", bench_autograd),
    ]:
        try:
            fns[name] = make()
        except ImportError as exc:
            print(f"{name:15s} not installed ({exc.name}); skipped")
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
    if "pytorch eager" in results:
        r = base / results["pytorch eager"][0]
        verdict = "meets" if r <= 0.8 else "misses"
        print(f"\ngpugrad / PyTorch eager = {r:.2f} ({verdict} the <= 0.8 target)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
