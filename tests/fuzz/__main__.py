"""``python -m tests.fuzz N [--seed S] [--device cpu|emu]``: run N programs and print
the figures (programs, ops, primitives covered, mismatches)."""

import argparse
import sys
import time

from .runner import run_fuzz


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    parser.add_argument("n", type=int, nargs="?", default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "emu"))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    res = run_fuzz(args.n, seed=args.seed, device=args.device)
    print(res.summary())
    print(f"time: {time.perf_counter() - t0:.1f} s")
    for m in res.mismatches[:20]:
        print(m)
    return 1 if res.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
