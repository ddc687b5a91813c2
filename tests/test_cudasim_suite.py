"""The test suite on the ``cuda-sim`` device: every file of ``tests/cudasim_files.txt``
runs in a child process with ``GPUGRAD_DEVICE=cuda-sim``, so CI exercises gpugrad's
cuda code path (CuPy's rules, RawModule launches, no implicit host transfers) on CPU.

The child spreads the files over two processes itself (pytest-xdist; about 4 minutes
of work in all on 2 cores): its share of the machine then stays busy whichever worker
of the parent runs it, and tests/conftest.py starts it first. With
``GPUGRAD_TEST_DEVICE=cuda`` (on a GPU) the same files run on the real device.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cupy")  # cuda-sim checks against the installed CuPy (test extra)

ROOT = Path(__file__).resolve().parent.parent
TEST_DEVICE = os.environ.get("GPUGRAD_TEST_DEVICE", "cuda-sim")
FILES = (ROOT / "tests" / "cudasim_files.txt").read_text().split()
# why: test_emu_device.py runs its checks in a child process on the emu device, which
# the default (cpu) run of the suite already does: on cuda-sim it would repeat that run
DEVICE_INDEPENDENT = {"tests/test_emu_device.py"}
RUN = [f for f in FILES if f not in DEVICE_INDEPENDENT]


def _run_on_the_device(files):
    env = {**os.environ, "GPUGRAD_DEVICE": TEST_DEVICE}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider"]
        + ["-n", "2", "--dist", "loadfile", "-rfE", "--maxfail=20", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = r.stdout[-6000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    last = r.stdout.strip().splitlines()[-1]
    assert " passed" in last and "failed" not in last and "error" not in last, tail


def test_the_file_list_names_test_files():
    assert len(FILES) == len(set(FILES)) > 30
    for name in FILES:
        assert (ROOT / name).is_file() and name.startswith("tests/test_"), name
    assert "tests/test_cudasim_suite.py" not in FILES  # it runs them


def test_the_suite_passes_on_the_device():
    _run_on_the_device(RUN)
