"""Data-parallel costs on this machine (CPU, MPI from the mpich wheel).

    python bench/distributed.py [--ranks 2 --repeats 15 --width 512 --depth 4]

The driver starts the workers with ``python -m gpugrad.distributed.run`` and prints:

1. all_reduce latency and bandwidth vs message size (2 ranks, float64, in place),
   next to a local ``np.copyto`` of the same buffer measured in the same run
   (a memory-bound floor: the ratio says how far from memory speed the transport is);
2. a bucket-size sweep: one DataParallel training step (MLP, float64) per bucket_mb;
3. scaling 1 -> N ranks at a fixed global batch (strong scaling): speedup and
   efficiency = speedup / N;
4. overlap: the step with the reduction overlapped with the backward walk, reduced
   after the walk, and not reduced at all (``no_sync``); the fraction of the
   communication hidden = (t_after - t_overlap) / (t_after - t_nosync). MPICH makes
   progress only inside MPI calls here (the hooks poll with ``Test``); set
   ``MPIR_CVAR_ASYNC_PROGRESS=1`` for a progress thread (``--async-progress``);
5. accelerate: one DataParallel step (value and gradient, reduced) eager against the
   same step under ``gg.dlaccelerate`` (traced once, replayed), interleaved, for a
   small overhead-bound MLP (width 32) and for the ``--width`` one;
6. nccl: the NCCL code path on 1 rank: ``all_reduce`` latency by size and a
   DataParallel step through ``NcclComm`` (real NCCL on ``GPUGRAD_DEVICE=cuda``; on
   ``cpu``/``emu`` the MPI-backed NCCL test double, which times the code path only).

On 2 busy shared cores the numbers say little about a cluster; on a GPU machine the
NCCL path runs on its own stream (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _median_time(fn, repeats, warmup=2, barrier=None):
    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if barrier is not None:
            barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _mlp(width, depth):
    import gpugrad as gg

    gg.random.seed(0)
    layers = [gg.nn.Dense(width, width, activation=gg.tanh) for _ in range(depth - 1)]
    return gg.nn.Sequential(*layers, gg.nn.Dense(width, 10))


def _step_timer(net, x, t, sync=True):
    import gpugrad as gg

    def loss_fn(m, x, t):
        loss = gg.mean((m(x) - t) ** 2)
        return gg.dlgradient(loss, m)

    xd, td = gg.dlarray(x), gg.dlarray(t)

    def step():
        if sync:
            gg.dlfeval(loss_fn, net, xd, td)
        else:
            with net.no_sync():
                gg.dlfeval(loss_fn, net, xd, td)

    return step


def worker(opts):
    import numpy as np

    import gpugrad.distributed as dist

    dist.init()
    rank, size = dist.rank(), dist.size()
    out = {"size": size}
    from gpugrad.distributed import _world

    comm = _world.comm()
    if "allreduce" in opts.parts and size > 1:
        rows = []
        for nbytes in [8, 64, 1 << 10, 8 << 10, 64 << 10, 512 << 10, 4 << 20, 32 << 20]:
            buf = np.ones(max(nbytes // 8, 1))
            other = np.empty_like(buf)
            reps = opts.repeats if nbytes < (4 << 20) else max(3, opts.repeats // 3)
            t_ar = _median_time(lambda b=buf: comm.allreduce_(b, "sum"), reps, 2, dist.barrier)
            t_cp = _median_time(lambda b=buf, o=other: np.copyto(o, b), reps)
            rows.append({"bytes": buf.nbytes, "allreduce_s": t_ar, "copy_s": t_cp})
        out["allreduce"] = rows
    rng = np.random.default_rng(rank)
    per_rank = opts.batch // size
    x = rng.standard_normal((per_rank, opts.width))
    t = rng.standard_normal((per_rank, 10))
    if "buckets" in opts.parts:
        sweep = []
        for mb in opts.buckets:
            net = dist.DataParallel(_mlp(opts.width, opts.depth), bucket_mb=mb)
            sweep.append(
                {
                    "bucket_mb": mb,
                    "step_s": _median_time(_step_timer(net, x, t), opts.repeats, 2, dist.barrier),
                    "buckets": len(net.bucket_plan),
                }
            )
        out["buckets"] = sweep
    if "scaling" in opts.parts or "overlap" in opts.parts:
        net_ov = dist.DataParallel(_mlp(opts.width, opts.depth), bucket_mb=opts.bucket_mb)
        net_after = dist.DataParallel(
            _mlp(opts.width, opts.depth), bucket_mb=opts.bucket_mb, overlap=False
        )
        # interleaved, so load changes hit all three alike
        steps = {
            "overlap": _step_timer(net_ov, x, t),
            "after": _step_timer(net_after, x, t),
            "nosync": _step_timer(net_ov, x, t, sync=False),
        }
        times = {k: [] for k in steps}
        for fn in steps.values():
            fn()
            fn()
        for _ in range(opts.repeats):
            for k, fn in steps.items():
                dist.barrier()  # why: the no_sync step lets ranks drift apart; start level
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        out["steps"] = {k: float(np.median(v)) for k, v in times.items()}
        out["overlap_buckets"] = len(net_ov.bucket_plan)
        out["stats"] = net_ov.stats
    if "accelerate" in opts.parts:
        out["accelerate"] = _accelerate_part(opts, x, t, rank)
    if "nccl" in opts.parts:
        out["nccl"] = _nccl_part(opts, x, t)
    if rank == 0:
        with open(opts.out, "w") as f:
            json.dump(out, f)


def _accelerate_part(opts, x, t, rank):
    import numpy as np

    import gpugrad as gg
    import gpugrad.distributed as dist

    def loss_fn(m, x, t):
        loss = gg.mean((m(x) - t) ** 2)
        return loss, gg.dlgradient(loss, m)

    rows = []
    for width in sorted({min(32, opts.width), opts.width}):
        xs = gg.dlarray(np.ascontiguousarray(x[:, :width]))
        ts = gg.dlarray(t)
        nets = {
            "eager": dist.DataParallel(_mlp(width, opts.depth), bucket_mb=opts.bucket_mb),
            "accelerated": dist.DataParallel(_mlp(width, opts.depth), bucket_mb=opts.bucket_mb),
        }
        acc = gg.dlaccelerate(loss_fn)
        fns = {
            "eager": lambda n=nets["eager"], a=xs, b=ts: gg.dlfeval(loss_fn, n, a, b),
            "accelerated": lambda f=acc, n=nets["accelerated"], a=xs, b=ts: gg.dlfeval(f, n, a, b),
        }
        times = {k: [] for k in fns}
        for fn in fns.values():
            fn()
            fn()
        for _ in range(opts.repeats):
            for k, fn in fns.items():  # interleaved: load changes hit both alike
                dist.barrier()
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        rows.append({"width": width, **med, "hits": acc.hits, "eager_calls": acc.eager_calls})
    return rows


def _nccl_part(opts, x, t):
    """The NCCL communicator on this one rank (size 1): real NCCL on cuda."""
    from mpi4py import MPI

    import gpugrad as gg
    import gpugrad.distributed as dist
    from gpugrad import backend
    from gpugrad.distributed import _comm, _world

    if dist.size() != 1:
        return None
    nccl = _comm.NcclComm(_comm.MpiComm(MPI.COMM_WORLD))
    saved = dict(_world._state)
    _world._state.update(comm=nccl, backend="nccl")
    xp = backend.xp()
    try:
        rows = []
        for nbytes in [8 << 10, 512 << 10, 4 << 20, 32 << 20]:
            buf = xp.ones(nbytes // 8)

            def once(b=buf):
                nccl.allreduce_(b, "sum")
                _comm.backend_stream().synchronize()  # the GPU work is done (cuda)

            rows.append({"bytes": nbytes, "allreduce_s": _median_time(once, opts.repeats)})
        net = dist.DataParallel(_mlp(opts.width, opts.depth), bucket_mb=opts.bucket_mb)
        step = _median_time(_step_timer(net, x, t), opts.repeats)
        plain = _median_time(_step_timer(net.module, x, t), opts.repeats)
        return {
            "device": gg.device(),
            "double": isinstance(nccl.nccl, _comm.MpiNcclDouble),
            "allreduce": rows,
            "step_s": step,
            "plain_step_s": plain,
            "calls": getattr(nccl.nccl, "calls", None),
        }
    finally:
        _world._state.update(saved)


def launch(n, parts, opts, env):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        cmd = [
            sys.executable,
            "-m",
            "gpugrad.distributed.run",
            "-n",
            str(n),
            "--timeout",
            "900",
            os.path.abspath(__file__),
            "--worker",
            "--out",
            path,
            "--parts",
            *parts,
            "--repeats",
            str(opts.repeats),
            "--width",
            str(opts.width),
            "--depth",
            str(opts.depth),
            "--batch",
            str(opts.batch),
            "--bucket-mb",
            str(opts.bucket_mb),
            "--buckets",
            *[str(b) for b in opts.buckets],
        ]
        subprocess.run(cmd, env=env, check=True)
        with open(path) as f:
            return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    p.add_argument("--ranks", type=int, default=2, help="Start this many MPI ranks (default 2).")
    p.add_argument(
        "--repeats", type=int, default=15, help="Time this many repeats of each step (default 15)."
    )
    p.add_argument(
        "--width", type=int, default=512, help="Give the MLP layers this width (default 512)."
    )
    p.add_argument(
        "--depth", type=int, default=4, help="Give the MLP this many layers (default 4)."
    )
    p.add_argument(
        "--batch",
        type=int,
        default=256,
        help="Use this global batch size, split over the ranks (default 256).",
    )
    p.add_argument(
        "--bucket-mb",
        type=float,
        default=1.0,
        help="Use gradient buckets of this many MB in the scaling and overlap parts (default 1).",
    )
    p.add_argument(
        "--buckets",
        type=float,
        nargs="+",
        default=[0.05, 0.25, 1.0, 4.0, 25.0],
        help="Sweep these bucket sizes in MB (default 0.05 0.25 1 4 25).",
    )
    p.add_argument(
        "--async-progress",
        action="store_true",
        help="Set MPIR_CVAR_ASYNC_PROGRESS=1 so that MPICH runs a progress thread.",
    )
    p.add_argument(
        "--worker",
        action="store_true",
        help="Run as one of the MPI workers the driver starts (used internally).",
    )
    p.add_argument("--out", help="Write a worker's results (JSON) to this path (used internally).")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["allreduce", "buckets", "scaling", "overlap", "accelerate", "nccl"],
        help="Run these parts: allreduce, buckets, scaling, overlap, accelerate, nccl "
        "(default all six).",
    )
    opts = p.parse_args(argv)
    if opts.worker:
        return worker(opts)
    env = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1")
    env.setdefault("GPUGRAD_DEVICE", "cpu")
    if opts.async_progress:
        env["MPIR_CVAR_ASYNC_PROGRESS"] = "1"
    n = opts.ranks
    params_mb = (opts.width * opts.width * (opts.depth - 1) + opts.width * 10) * 8 / 2**20
    print(
        f"MLP {opts.depth} layers of width {opts.width} (float64, {params_mb:.1f} MB of "
        f"gradients), global batch {opts.batch}; {n} ranks; load {os.getloadavg()[0]:.1f}"
    )
    multi = launch(n, [p for p in opts.parts if p != "nccl"], opts, env)
    if "allreduce" in multi:
        print(f"\n1. all_reduce on {n} ranks (float64, in place; median)")
        print(f"{'bytes':>10} {'latency':>11} {'GB/s':>7} {'copyto':>10} {'ratio':>7}")
        for row in multi["allreduce"]:
            b, ta, tc = row["bytes"], row["allreduce_s"], row["copy_s"]
            print(
                f"{b:>10} {ta * 1e6:>9.1f}us {b / ta / 1e9:>7.3f} {tc * 1e6:>8.1f}us {ta / tc:>7.1f}"
            )
    if "buckets" in multi:
        print(f"\n2. bucket-size sweep ({n} ranks, one training step, median)")
        for row in multi["buckets"]:
            print(
                f"  bucket_mb {row['bucket_mb']:>6}: {row['buckets']:>3} buckets, "
                f"step {row['step_s'] * 1e3:8.2f} ms"
            )
    if "steps" in multi:
        s = multi["steps"]
        if "scaling" in opts.parts:
            single = launch(1, ["scaling"], opts, env)["steps"]["overlap"]
            speedup = single / s["overlap"]
            print(f"\n3. strong scaling at global batch {opts.batch}")
            print(
                f"  1 rank {single * 1e3:.2f} ms/step, {n} ranks {s['overlap'] * 1e3:.2f} ms/step: "
                f"speedup {speedup:.2f}, efficiency {speedup / n * 100:.0f}%"
            )
        exposed = s["after"] - s["nosync"]
        hidden = (s["after"] - s["overlap"]) / exposed if exposed > 0 else float("nan")
        print(f"\n4. overlap ({multi['overlap_buckets']} buckets of <= {opts.bucket_mb} MB)")
        print(
            f"  step: no reduction {s['nosync'] * 1e3:.2f} ms, reduced after the walk "
            f"{s['after'] * 1e3:.2f} ms, overlapped {s['overlap'] * 1e3:.2f} ms"
        )
        print(
            f"  communication {exposed * 1e3:.2f} ms; hidden behind the backward walk: "
            f"{hidden * 100:.0f}%  (buckets launched in the walk / after: "
            f"{multi['stats']['launched_in_walk']} / {multi['stats']['launched_at_end']})"
        )
    if "accelerate" in multi:
        print(f"\n5. gg.dlaccelerate on {n} ranks (one DataParallel step, median)")
        for row in multi["accelerate"]:
            print(
                f"  width {row['width']:>4}: eager {row['eager'] * 1e3:8.2f} ms, accelerated "
                f"{row['accelerated'] * 1e3:8.2f} ms: {row['eager'] / row['accelerated']:.2f}x "
                f"(replays {row['hits']}, eager calls {row['eager_calls']})"
            )
    if "nccl" in opts.parts:
        one = launch(1, ["nccl"], opts, env)["nccl"]
        what = "the MPI-backed NCCL double" if one["double"] else "NCCL"
        print(f"\n6. NCCL code path on 1 rank ({what}, device {one['device']}; median)")
        for row in one["allreduce"]:
            print(f"  all_reduce {row['bytes']:>10} bytes: {row['allreduce_s'] * 1e6:9.1f} us")
        print(
            f"  DataParallel step {one['step_s'] * 1e3:.2f} ms against the plain network "
            f"{one['plain_step_s'] * 1e3:.2f} ms"
        )
        multi["nccl"] = one
    return multi


if __name__ == "__main__":
    main()
