"""Device selection, in subprocesses so each sees a fresh import."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code, **env):
    full = {**os.environ, **env}
    for key, value in env.items():
        if value is None:
            full.pop(key)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=120,
    )


def test_default_device_without_gpu_is_cpu_with_one_log_line():
    r = run("import gpugrad as gg; print(gg.device())", GPUGRAD_DEVICE=None)
    assert r.returncode == 0, r.stderr
    # this machine and CI have no GPU
    assert r.stdout.strip() == "cpu"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr
    assert len(lines) <= 1
    if lines:
        assert "using device 'cpu'" in lines[0]


def test_forced_devices():
    assert (
        run("import gpugrad as gg; print(gg.device())", GPUGRAD_DEVICE="cpu").stdout.strip()
        == "cpu"
    )
    assert (
        run("import gpugrad as gg; print(gg.device())", GPUGRAD_DEVICE="emu").stdout.strip()
        == "emu"
    )


def test_forcing_cuda_without_a_gpu_is_a_clear_error():
    code = "import gpugrad"
    r = run(code, GPUGRAD_DEVICE="cuda")
    if r.returncode == 0:
        pytest.skip("a GPU is present")  # pragma: no cover - only on GPU machines
    assert "GPUGRAD_DEVICE=cuda but" in r.stderr
    assert "DeviceError" in r.stderr


def test_unknown_device_name():
    r = run("import gpugrad", GPUGRAD_DEVICE="tpu")
    assert r.returncode != 0 and "not a device" in r.stderr


def test_examples_rosenbrock_prints_the_seed_values():
    r = run(
        "import runpy, sys; sys.argv=['x', '--no-plots']; runpy.run_path('examples/rosenbrock.py', run_name='__main__')"
    )
    assert r.returncode == 0, r.stderr
    assert "f([-1, 2]) = 104, gradient = [396.0, 200.0]" in r.stdout
    assert "f(-1, 2) = 104, gradients = 396, 200" in r.stdout
    assert "(2-3j)" in r.stdout
