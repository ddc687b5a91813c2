"""The ``emu`` device: the whole GPU code path of each op (kernel launches included)
runs end to end on CPU through the CUDA emulator."""

import os
import subprocess
import sys

import gpugrad as gg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OP_TESTS = [
    "tests/test_gradients.py",
    "tests/test_nn_functions.py",
    "tests/test_layers.py",
    "tests/test_matlab.py",
    "tests/test_dlarray.py",
    "tests/test_checkpoint.py",
    "tests/test_functional.py",
    "tests/test_autograd.py",
    "tests/test_numpy_surface.py",
    "tests/test_linalg.py",
    "tests/test_property.py",
]

TRAINING_STEP = r"""
import numpy as np
import gpugrad as gg
assert gg.device() == "emu"
rng = np.random.default_rng(0)
f32 = lambda *s: gg.dlarray(rng.standard_normal(s).astype(np.float32))
x = gg.dlarray(rng.standard_normal((8, 8, 3, 2)).astype(np.float32), "SSCB")
def conv_net(w, b, w2, b2, W, bb):
    # two convs: the first one's input needs no gradient (no backward-data), the second's does
    y = gg.relu(gg.dlconv(x, w, b))
    y = gg.relu(gg.dlconv(y, w2, b2, padding="same"))
    return gg.dlgradient(gg.sum(gg.fullyconnect(y, W, bb) ** 2), w, b, w2, b2, W, bb)
grads = gg.dlfeval(
    conv_net, f32(3, 3, 3, 4), f32(4), f32(3, 3, 4, 4), f32(4), f32(5, 144), f32(5)
)
assert all(np.isfinite(g.numpy()).all() for g in grads)
H = 4
xs = gg.dlarray(rng.standard_normal((3, 2, 5)).astype(np.float32), "CBT")
def rnn(wi, r, bi):
    h0 = gg.dlarray(np.zeros((H, 2), np.float32), "CB")
    y, h, c = gg.lstm(xs, h0, h0, wi, r, bi)
    return gg.dlgradient(gg.sum(y), wi, r, bi)
gg.dlfeval(rnn, f32(4 * H, 3), f32(4 * H, H), f32(4 * H))
print(sorted(gg.kernels.launches()))
"""


def _run(args, **kw):
    env = {**os.environ, "GPUGRAD_DEVICE": "emu"}
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, **kw
    )


def test_kernel_listing_names_the_ops_they_serve():
    rows = gg.kernels.list()
    names = {r["name"] for r in rows}
    for expected in ("matmul_fwd_f32", "conv2d_fwd_f32", "relu_fwd_f32", "lstm_fwd_f32"):
        assert expected in names
    assert all(r["op"] for r in rows)


def test_a_training_step_on_emu_launches_every_heavy_kernel():
    r = _run([sys.executable, "-c", TRAINING_STEP])
    assert r.returncode == 0, r.stderr[-4000:]
    launched = r.stdout
    for family in (
        "conv2d_fwd",
        "conv2d_bwd_data",
        "conv2d_bwd_filter",
        "matmul",
        "relu_fwd",
        "relu_bwd",
        "lstm_fwd",
        "lstm_bwd",
    ):
        assert family in launched, f"{family} was not launched: {launched}"


def test_op_tests_pass_on_the_emu_device():
    r = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "addopts=",
            "-q",
            "-p",
            "no:cacheprovider",
            *OP_TESTS,
        ]
    )
    tail = r.stdout[-3000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and "failed" not in r.stdout.splitlines()[-1]


def test_emu_matmul_matches_numpy_on_odd_shapes():
    env = {**os.environ, "GPUGRAD_DEVICE": "emu"}
    code = (
        "import numpy as np, gpugrad as gg\n"
        "rng = np.random.default_rng(1)\n"
        "for m, k, n in [(1, 7, 33), (65, 3, 1), (17, 129, 31)]:\n"
        "    a = rng.standard_normal((m, k)).astype(np.float32)\n"
        "    b = rng.standard_normal((k, n)).astype(np.float32)\n"
        "    c = (gg.dlarray(a) @ gg.dlarray(b)).numpy()\n"
        "    ref = a.astype(np.float64) @ b\n"
        "    assert np.allclose(c, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max()), (m, k, n)\n"
        "print(gg.kernels.launches())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "matmul" in r.stdout
