"""Rank 1 raises while rank 0 waits in a collective: the job must abort, not hang."""

import numpy as np

import gpugrad.distributed as dist


def main():
    dist.init()
    if dist.rank() == 1:
        raise RuntimeError("rank 1 fails on purpose")
    dist.all_reduce(np.ones(3))  # rank 0 would wait here forever without the abort
    print("UNREACHABLE rank 0 finished", flush=True)


if __name__ == "__main__":
    main()
