"""Launch a script on N ranks: ``python -m gpugrad.distributed.run -n N train.py ...``.

A thin wrapper over ``mpiexec -n N python -m mpi4py train.py``: it finds the
``mpiexec`` next to the running Python (the one the ``mpich`` wheel installs) or on
``PATH``, always runs the script through ``-m mpi4py`` (an uncaught exception on one
rank then aborts the whole job in about a second instead of leaving the other ranks
waiting in a collective), and with ``--timeout`` kills the job after that many
seconds. The exit status is the job's (124 after a timeout).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def find_mpiexec() -> str:
    """The ``mpiexec`` to use: ``$GPUGRAD_MPIEXEC``, the one beside this Python, or
    the first on ``PATH``."""
    env = os.environ.get("GPUGRAD_MPIEXEC")
    if env:
        return env
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise FileNotFoundError(
            "gpugrad.distributed.run: no mpiexec found; pip install 'gpugrad[distributed]' "
            "(brings the mpich wheel) or load your cluster's MPI module"
        )
    return found


def command(n, script_args, python=None, mpiexec=None, extra=()):
    """The command line that runs ``script_args`` on ``n`` ranks."""
    return [
        mpiexec or find_mpiexec(),
        "-n",
        str(n),
        *extra,
        python or sys.executable,
        "-m",
        "mpi4py",
        *script_args,
    ]


def run(n, script_args, timeout=None, extra=(), env=None):
    """Run the job; return its exit status (124 when ``timeout`` seconds passed)."""
    cmd = command(n, script_args, extra=extra)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(
            f"gpugrad.distributed.run: the job ran past --timeout {timeout} s and was killed",
            file=sys.stderr,
        )
        return 124


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gpugrad.distributed.run",
        description="Run a gpugrad script on N ranks (mpiexec -n N python -m mpi4py ...).",
    )
    parser.add_argument("-n", "--nproc", type=int, required=True, help="number of ranks")
    parser.add_argument(
        "--timeout", type=float, default=None, help="kill the job after this many seconds"
    )
    parser.add_argument(
        "--mpiexec-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for mpiexec (repeatable), e.g. --mpiexec-arg=-hosts=a,b",
    )
    parser.add_argument("script", help="the Python script (or -m module) to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    opts = parser.parse_args(argv)
    if opts.nproc < 1:
        parser.error(f"-n must be >= 1, got {opts.nproc}")
    return run(opts.nproc, [opts.script, *opts.args], opts.timeout, opts.mpiexec_arg)


if __name__ == "__main__":
    sys.exit(main())
