"""The ``cuda-sim`` device: gpugrad's cuda code path on a simulated CuPy runtime.

Four parts:
- the façade keeps CuPy's rules (no implicit host conversion, 0-d reductions, only
  CuPy's names and signatures, kernel arguments as CuPy's launcher takes them);
- a static scan: every ``xp.<name>`` the library reaches exists in the installed CuPy,
  and the keywords it passes are in CuPy's signature;
- a training step of the benchmark MLP, CNN and LSTM performs no host<->device
  transfer and no synchronisation (only reading the loss does);
- the whole suite runs on the device in tests/test_cudasim_suite.py (child
  processes over tests/cudasim_files.txt); ``DEVICE_TESTS`` below is the quicker set
  that bench/device_check.sh runs on a real GPU without pytest-xdist.
"""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import backend
from gpugrad.backend import cudasim

cupy = pytest.importorskip("cupy")  # cuda-sim checks against the installed CuPy (test extra)

ROOT = Path(__file__).resolve().parent.parent

# the test files bench/device_check.sh runs on a GPU without pytest-xdist: ops and
# their gradients, nn, layers, the MATLAB / Swift / MXNet faces, optimizers
DEVICE_TESTS = [
    "tests/test_gradients.py",
    "tests/test_nn_functions.py",
    "tests/test_layers.py",
    "tests/test_functional.py",
    "tests/test_autograd.py",
    "tests/test_optim.py",
    "tests/test_checkpoint.py",
    # cheap on cuda-sim (under 10 s of tests each; docs/devices.md has the timings)
    "tests/test_dlarray.py",
    "tests/test_dtype.py",
    "tests/test_namespace.py",
    "tests/test_nn_bad_input.py",
    "tests/test_interop.py",
    "tests/test_interop_cuda.py",
    "tests/test_layers_more.py",
    "tests/test_value_semantics.py",
    "tests/test_training_mode.py",
    "tests/test_save_load.py",
    "tests/test_accelerate.py",
]
# every file that passes on cuda-sim (the whole suite but the device-independent and
# the too-slow ones): GPUGRAD_DEVICE=cuda-sim python -m pytest $(cat tests/cudasim_files.txt)
CUDA_SIM_FILES = (ROOT / "tests" / "cudasim_files.txt").read_text().split()


@pytest.fixture
def sim():
    """The simulated ``cupy`` module (the active device is not changed)."""
    return cudasim.namespace()


@pytest.fixture
def on_sim():
    """Run the test on the cuda-sim device; the previous device after."""
    old = gg.device()
    gg.set_device("cuda-sim")
    try:
        yield cudasim.namespace()
    finally:
        gg.set_device(old)


# --------------------------------------------------------------------- the façade


def test_device_arrays_refuse_implicit_host_conversion(sim):
    a = sim.arange(6.0).reshape(2, 3)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.lib.stride_tricks.as_strided(a, (2, 2), (8, 8))
    with pytest.raises(TypeError, match="NumPy's ufunc methods run on the host"):
        np.add.at(a, [0], 1.0)
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        a + np.ones(3)  # CuPy does not take host arrays as operands
    host = a.get()
    assert type(host) is np.ndarray and host.sum() == 15.0
    assert type(sim.asnumpy(a)) is np.ndarray


def test_reductions_are_0d_device_arrays_and_scalars_sync(sim):
    a = sim.arange(4.0)
    for r in (a.sum(), sim.sum(a), a.max(), sim.count_nonzero(a), a.mean(axis=0)):
        assert type(r) is sim.ndarray and r.shape == ()
    with gg.debug.transfers() as t:
        assert float(a.sum()) == 6.0
        assert bool(a[1] > 0) and int(a[3]) == 3
        assert a.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert (t.d2h, t.syncs, t.h2d) == (4, 4, 0)
    with gg.debug.transfers() as t:
        b = sim.asarray(np.ones(3))  # host -> device: a transfer, no sync
        c = (b * 2.0 + a[:3]).sum()
    assert (t.h2d, t.syncs) == (1, 0) and c.shape == ()
    with pytest.raises(TypeError, match="iteration over a 0-d array"):
        iter(c)


def test_only_cupy_names_and_signatures_are_reachable(sim):
    assert not hasattr(sim, "add_at_host")
    with pytest.raises(AttributeError, match="cuda-sim reaches only"):
        sim.trapz  # NumPy removed it, CuPy still has it: not simulable here  # noqa: B018
    with pytest.raises(AttributeError, match="cuda-sim reaches only"):
        sim.bincount_host  # noqa: B018
    with pytest.raises(TypeError, match="CuPy's signature"):
        sim.sum(sim.ones(3), where=True)  # NumPy's sum takes where=, CuPy's does not
    with pytest.raises(TypeError, match="unexpected keyword"):
        sim.add(sim.ones(2), 1.0, where=True)
    with pytest.raises(TypeError, match="cupy.ndarray.max"):
        sim.ones(2).max(initial=0.0)
    for name in ("zeros", "matmul", "take_along_axis", "einsum", "float32", "newaxis"):
        assert hasattr(cupy, name) and hasattr(sim, name)
    x = cudasim.cupyx_namespace()
    out = sim.zeros(3)
    x.scatter_add(out, sim.asarray(np.array([0, 0, 2])), sim.ones(3))
    assert out.get().tolist() == [2.0, 0.0, 1.0]


def test_kernel_arguments_are_taken_as_cupys_launcher_takes_them(sim):
    code = (
        'extern "C" __global__ void scale(const float* x, float* y, float a, int n) {\n'
        "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "  if (i < n) y[i] = a * x[i];\n"
        "}\n"
    )
    k = sim.RawModule(code=code).get_function("scale")
    x = sim.arange(5, dtype=np.float32)
    y = sim.empty_like(x)
    k((1,), (32,), (x, y, np.float32(2), np.int32(5)))
    assert y.get().tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        k((1,), (32,), (x.get(), y, np.float32(2), np.int32(5)))
    # a Python float is packed as a double (CuPy's rule): garbage for a float parameter
    with pytest.raises(TypeError, match="expected a np.float32 scalar"):
        k((1,), (32,), (x, y, 2.0, np.int32(5)))
    with pytest.raises(TypeError, match="expected a np.int32 scalar"):
        k((1,), (32,), (x, y, np.float32(2), 5))


def test_the_environment_variable_selects_the_device():
    code = "import gpugrad as gg; print(gg.device(), gg.backend.is_cuda(), gg.device_reason())"
    env = {**os.environ, "GPUGRAD_DEVICE": "cuda-sim"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cuda-sim True GPUGRAD_DEVICE=cuda-sim"), r.stdout


def test_the_device_takes_the_cuda_branches(on_sim):
    assert gg.device() == "cuda-sim" and backend.is_cuda()
    x = gg.dlarray(np.arange(6.0).reshape(2, 3))
    assert x.device == "cuda-sim" and backend.is_device_array(gg.extractdata(x))
    assert type(gg.extractdata(gg.to_host(x))) is np.ndarray
    assert x.numpy().sum() == 15.0 and float(gg.sum(x)) == 15.0
    gg.kernels.reset_launches()
    w = gg.dlarray(np.ones((3, 4)))
    g = gg.gradient(lambda w: gg.sum(gg.relu(x @ w)))(w)
    np.testing.assert_allclose(g.numpy(), np.repeat(x.numpy().sum(0)[:, None], 4, 1))
    assert any(k.startswith("matmul") for k in gg.kernels.launches())
    with gg.memory.track() as m:
        gg.exp(x)
    assert m.device_peak_bytes is not None  # the pool of the (simulated) device


# --------------------------------------------------------------------- static check


def _xp_roots(tree):
    """Names bound to the array namespace in a module: ``xp = _xp()`` and the like."""
    names = {"xp"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t = node.targets[0]
            if (
                isinstance(t, ast.Name)
                and t.id in ("xp", "cp")
                and isinstance(node.value, ast.Call)
            ):
                names.add(t.id)
    return names


def _is_namespace_expr(node, roots):
    if isinstance(node, ast.Name):
        return node.id in roots
    if isinstance(node, ast.Call):
        f = node.func
        if isinstance(f, ast.Name) and f.id in ("_xp", "X"):
            return True
        if isinstance(f, ast.Attribute) and f.attr in ("xp", "cupy_module"):
            return isinstance(f.value, ast.Name) and f.value.id == "backend"
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        key = node.slice
        return node.value.id in ("_STATE", "_state") and (
            isinstance(key, ast.Constant) and key.value == "xp"
        )
    return False


def _namespace_uses():
    """(file:line, attribute chain, call keywords, positional count) of every
    ``xp.<name>`` use in gpugrad (backend/cudasim.py and backend/emu.py excluded)."""
    uses = []
    for path in sorted((ROOT / "gpugrad").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("gpugrad/backend/cudasim.py", "gpugrad/backend/emu.py"):
            continue
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text, rel)
        roots = _xp_roots(tree)
        calls = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                calls[id(node.func)] = node
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain = []
            cur = node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if not _is_namespace_expr(cur, roots):
                continue
            chain.reverse()
            if f'hasattr(xp, "{chain[0]}")' in lines[node.lineno - 1]:
                continue  # used only where CuPy has it
            call = calls.get(id(node))
            kws = tuple(k.arg for k in call.keywords if k.arg) if call else None
            npos = len(call.args) if call else 0
            uses.append((f"{rel}:{node.lineno}", tuple(chain), kws, npos))
    return uses


def test_every_namespace_call_on_the_cuda_path_exists_in_cupy():
    uses = _namespace_uses()
    assert len(uses) > 100  # the scan sees the library's array code
    missing, bad_sig = [], []
    for where, chain, kws, npos in uses:
        obj = cupy
        for i, attr in enumerate(chain):
            if not hasattr(obj, attr):
                # attributes of arrays/results (xp.finfo(dt).eps) are not namespace names
                if i == 0 or inspect.ismodule(obj):
                    missing.append(f"{where}: cupy.{'.'.join(chain[: i + 1])}")
                break
            obj = getattr(obj, attr)
        else:
            if kws is None:
                continue
            if isinstance(obj, cupy.ufunc):
                extra = set(kws) - {"out", "dtype", "casting"}
                if extra:
                    bad_sig.append(f"{where}: cupy.{'.'.join(chain)} takes no {sorted(extra)}")
                continue
            if not inspect.isfunction(obj):
                continue
            sig = inspect.signature(obj)
            try:
                sig.bind(*([None] * npos), **dict.fromkeys(kws))
            except TypeError as exc:
                bad_sig.append(f"{where}: cupy.{'.'.join(chain)}{sig}: {exc}")
    assert not missing, "names the cuda path reaches that CuPy lacks:\n" + "\n".join(missing)
    assert not bad_sig, "calls CuPy's signature refuses:\n" + "\n".join(bad_sig)


def test_numpy_only_helpers_are_guarded_by_the_host_path():
    """``np.add.at``, ``as_strided`` and the host BufferPool appear only on NumPy paths:
    each use sits in a function that branches on the namespace (``xp is np``) or on
    ``kernels_for`` (None only on cpu or for dtypes the kernels lack)."""
    hits = []
    for path in sorted((ROOT / "gpugrad").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("gpugrad/backend/"):
            continue
        text = path.read_text()
        if not any(h in text for h in ("np.add.at(", "as_strided(", "POOL.empty(")):
            continue
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text, rel)):
            if not isinstance(fn, ast.FunctionDef):
                continue
            src = "\n".join(lines[fn.lineno - 1 : fn.end_lineno])
            for helper in ("np.add.at(", "np.lib.stride_tricks.as_strided(", "POOL.empty("):
                if helper in src:
                    hits.append((rel, fn.name, helper, src))
    assert hits  # the scan finds the known uses
    unguarded = []
    for rel, name, helper, src in hits:
        guarded = " is np" in src  # `xp is np`, `_xp() is np`, `_STATE["xp"] is np`
        if not guarded and name not in _HOST_ONLY_FUNCTIONS:
            unguarded.append(f"{rel}: {name} uses {helper}")
    assert not unguarded, "\n".join(unguarded)


# functions that only the NumPy path calls (their callers branch on kernels_for/xp)
_HOST_ONLY_FUNCTIONS = {"_rows", "_fwd_numpy", "_bwd_recurrence_numpy", "_weight_grads"}


def test_lstm_with_mixed_dtypes_on_the_device(on_sim):
    """Operands the kernels cannot take together (float32 input, float64 weights)
    must not fall to the host-only NumPy LSTM code with device arrays."""
    rng = np.random.default_rng(0)
    hid = 4
    x = rng.standard_normal((3, 2, 5)).astype(np.float32)
    h0 = np.zeros((hid, 2))
    weights = [rng.standard_normal(s) for s in ((4 * hid, 3), (4 * hid, hid), (4 * hid,))]

    def grads(*ws):
        y, _, _ = gg.lstm(gg.dlarray(x, "CBT"), gg.dlarray(h0, "CB"), gg.dlarray(h0, "CB"), *ws)
        return gg.dlgradient(gg.sum(y * y), *ws)

    on_device = gg.dlfeval(grads, *(gg.dlarray(w) for w in weights))
    gg.set_device("cpu")
    reference = gg.dlfeval(grads, *(gg.dlarray(w) for w in weights))
    for g, ref in zip(on_device, reference):
        assert g.dtype == ref.dtype == np.float64
        np.testing.assert_allclose(g.numpy(), ref.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------- syncs per step

STEP_MODELS = {
    # benchmark models of bench/cpu_training.py (smaller batches: the emulator is slow)
    "MLP": dict(batch=16),
    "CNN": dict(batch=8),
    "LSTM": dict(batch=4, steps=6),
}


def _training_step(name):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cpu_training
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    model = cpu_training.gg_models()[name]
    x, y = cpu_training.data(rng)[name]
    cfg = STEP_MODELS[name]
    x, y = x[: cfg["batch"]], y[: cfg["batch"]]
    if "steps" in cfg:
        x = x[:, : cfg["steps"]]
    opt = gg.optim.Adam(model, learning_rate=1e-4)
    xd = gg.dlarray(x)
    yd = backend.xp().asarray(y)  # labels on the device, as a GPU input pipeline has them

    def loss_grad(m, xb):
        loss = gg.nn.softmax_cross_entropy(m(xb), yd)
        return loss, gg.dlgradient(loss, m)

    def step():
        loss, grads = gg.dlfeval(loss_grad, model, xd)
        opt.update(model, grads)
        return loss

    return step


@pytest.mark.parametrize("name", sorted(STEP_MODELS))
def test_a_training_step_does_not_synchronise(on_sim, name):
    step = _training_step(name)
    step()  # first step: compiles kernels, creates optimizer state
    with gg.debug.transfers(allow_sync=False) as t:  # a sync raises, naming the line
        loss = step()
    assert (t.h2d, t.d2h, t.syncs) == (0, 0, 0), t.by_site()
    assert t.launches > 0  # the heavy ops ran through the kernels
    with gg.debug.transfers() as t:
        value = float(loss)  # the one the user asks for
    assert (t.d2h, t.syncs) == (1, 1) and np.isfinite(value)


def test_checkpoint_checks_its_inputs_with_one_sync(on_sim):
    """The in-place mutation check of gg.checkpoint reads all input checksums back at
    once: one sync per checkpointed call (it was two per input), and still catches a
    mutation."""
    x = gg.dlarray(np.arange(6.0))
    w = gg.dlarray(np.ones(6))

    def block(x, w):
        return gg.tanh(x * w) * w

    with gg.debug.transfers() as t:
        g, _ = gg.gradient(lambda x, w: gg.sum(gg.checkpoint(block, x, w)))(x, w)
    assert t.syncs == 1, t.by_site()
    np.testing.assert_allclose(g.numpy(), 1 - np.tanh(np.arange(6.0)) ** 2)

    def mutating(x, w):
        gg.extractdata(w)[0] = 5.0
        return x * w

    with pytest.raises(gg.CheckpointError, match="modified its input"):
        gg.gradient(lambda x, w: gg.sum(gg.checkpoint(mutating, x, w)))(x, w)


def test_invalid_device_labels_make_the_loss_nan(on_sim):
    """Device labels are checked on the device (no sync): a bad one poisons the loss."""
    z = gg.dlarray(np.zeros((2, 3)))
    xp = backend.xp()
    good = gg.nn.softmax_cross_entropy(z, xp.asarray(np.array([0, 2])))
    assert float(good) == pytest.approx(np.log(3))
    for bad in ([0, 3], [-1, 0], [0.5, 1.0]):
        loss = gg.nn.softmax_cross_entropy(z, xp.asarray(np.array(bad)))
        assert np.isnan(float(loss)), bad
    # host labels keep the immediate error
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        gg.nn.softmax_cross_entropy(z, np.array([0, 3]))


def test_the_kernel_report_has_the_transfer_counters(on_sim):
    gg.kernels.reset_report()
    x = gg.dlarray(np.arange(3.0))  # host -> device
    assert float(gg.sum(x * x)) == 5.0  # device -> host: a sync
    report = gg.kernels.report()
    section = report.sections[cudasim.REPORT_SECTION]
    counts = section["counts"]
    assert (counts["h2d"], counts["d2h"], counts["sync"]) == (1, 1, 1), section
    assert counts["h2d_bytes"] == counts["d2h_bytes"] * 3 == 24
    assert sorted(kind for kind, _, _ in section["top_sites"]) == ["d2h", "h2d"]
    assert f"{cudasim.REPORT_SECTION}: " in str(report)
    gg.kernels.reset_report()  # resets the counters too
    counts = gg.kernels.report().sections[cudasim.REPORT_SECTION]["counts"]
    assert counts["h2d"] == counts["d2h"] == counts["sync"] == 0
    gg.set_device("cpu")
    assert "not counted on cpu" in gg.kernels.report().sections[cudasim.REPORT_SECTION]


# --------------------------------------------------------------------- the suite on the device


def test_gpu_bench_script_runs_on_the_simulator(tmp_path):
    """bench/gpu.py --simulate runs every group at tiny sizes on cuda-sim, so the
    script itself is checked before a GPU session spends its minutes on it."""
    r = subprocess.run(
        [
            sys.executable,
            "bench/gpu.py",
            "--simulate",
            "--quick",
            "--max-gemm",
            "32",
            "--repeat",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "FAILED" not in r.stdout, r.stdout
    import json

    (result,) = tmp_path.glob("gpu-*.json")
    rows = json.loads(result.read_text())["rows"]
    groups = {row["group"] for row in rows}
    assert {"sgemm", "lstm", "conv2d_fwd", "relu_fwd", "linear+bias+relu"} <= groups
    sgemm = next(row for row in rows if row["group"] == "sgemm")
    assert {"ours_ms", "ours_host_ms", "ours_wall_ms", "vendor_ms", "vendor_tf32_ms"} <= set(sgemm)
    relu = next(row for row in rows if row["group"] == "relu_fwd")
    assert relu["l2_flushed"] and not sgemm["l2_flushed"]


def test_the_cuda_sim_file_list_names_test_files():
    assert len(CUDA_SIM_FILES) == len(set(CUDA_SIM_FILES)) > 20
    for name in CUDA_SIM_FILES:
        assert (ROOT / name).is_file() and name.startswith("tests/test_"), name
    assert "tests/test_cudasim.py" not in CUDA_SIM_FILES  # it sets the device itself
    assert set(DEVICE_TESTS) <= set(CUDA_SIM_FILES)
