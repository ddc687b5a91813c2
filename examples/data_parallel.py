"""The digits CNN (examples/digits_cnn.py) trained data-parallel on N ranks.

    python -m gpugrad.distributed.run -n 2 examples/data_parallel.py [--epochs 15]
    mpiexec -n 2 python -m mpi4py examples/data_parallel.py      # the same
    python examples/data_parallel.py                              # one process

Every rank builds the model (DataParallel copies rank 0's parameters), takes its
share of each global batch of --batch samples (gpugrad.distributed.shard) and runs
the single-process training step unchanged: the gradients come back from
dlgradient already combined over the ranks, weighted by each rank's share, so N
ranks train exactly the model one process trains on the same global batches (up to
float32 rounding) and reach the same test accuracy. Rank 0 shows the progress bar
and prints the result. With --accelerate the training step runs under
gg.dlaccelerate (traced once, replayed, gradient reduction included).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _digits_cnn():
    spec = importlib.util.spec_from_file_location("digits_cnn", HERE / "digits_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="The digits CNN trained data-parallel (run it under mpiexec or "
        "python -m gpugrad.distributed.run -n N).",
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    parser.add_argument("--epochs", type=int, default=15, help="Train for this many epochs.")
    parser.add_argument(
        "--batch",
        type=int,
        default=64,
        help="Use global mini-batches of this size, shared among all ranks.",
    )
    parser.add_argument(
        "--bucket-mb",
        type=float,
        default=25.0,
        help="Combine gradients over the ranks in buckets of this many MB.",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="Use only this many training samples (0, the default, uses all).",
    )
    parser.add_argument(
        "--accelerate",
        action="store_true",
        help="Run the training step under gg.dlaccelerate (traced once, then replayed).",
    )
    parser.add_argument(
        "--save-losses",
        default="",
        help="Have rank 0 save the loss curve (a .npy file) to this path.",
    )
    args = parser.parse_args(argv)
    # why: imported after parsing, so --help answers at once
    import numpy as np

    import gpugrad as gg
    import gpugrad.distributed as dist
    from gpugrad._progress import progress

    cnn = _digits_cnn()
    dist.init()
    rank, size = dist.rank(), dist.size()
    gg.random.seed(0)
    x_train, x_test, y_train, y_test = cnn.load_data()
    if args.limit:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    model = dist.DataParallel(cnn.build_model(), bucket_mb=args.bucket_mb)
    # rank 0's optimizer state everywhere (empty here; after a resume it is not)
    opt = model.attach_optimizer(gg.optim.Adam(model, learning_rate=3e-3))
    step = gg.dlaccelerate(cnn.loss_and_grad) if args.accelerate else cnn.loss_and_grad
    losses = []
    start = time.perf_counter()
    epochs = [
        dist.shard(len(x_train), args.batch, shuffle=True, seed=0, epoch=e)
        for e in range(args.epochs)
    ]
    steps = sum(len(e) for e in epochs)
    desc = f"digits CNN on {size} rank(s)"
    # a tqdm bar on rank 0, or plain progress lines when tqdm is not installed
    with progress(steps, desc, show=rank == 0) as bar:
        for parts in epochs:
            for idx, weight in zip(parts, parts.weights):
                model.weight = weight  # this rank's share of the global batch
                loss, grads = gg.dlfeval(step, model, gg.dlarray(x_train[idx]), y_train[idx])
                opt.update(model, grads)
                losses.append(dist.all_reduce(float(loss) * weight))  # the global loss
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update()
    elapsed = time.perf_counter() - start
    model.check_synchronized()  # parameters and optimizer state equal on every rank
    acc = cnn.accuracy(model, x_test, y_test)
    if rank == 0 and args.save_losses:
        np.save(args.save_losses, np.array(losses))
    if rank == 0:
        print(
            f"{size} rank(s), device {gg.device()}: {steps} steps in {elapsed:.1f} s; "
            f"final loss {losses[-1]:.4f}; test accuracy {acc * 100:.2f}%"
            + (f"; {step.hits} of {steps} steps replayed" if args.accelerate else "")
        )
    return acc, losses


if __name__ == "__main__":
    main()
