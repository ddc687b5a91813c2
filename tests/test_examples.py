"""The training examples run end to end and reach what their docs claim."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import gpugrad as gg

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ran_and_plotted(tmp_path, name, *argv):
    plot = tmp_path / f"{name}.png"
    result = _example(name).main([*argv, "--plot", str(plot)])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result


def test_xor_mlp_learns_and_its_hooks_see_the_true_gradients(tmp_path, capsys):
    final_loss, first_step = _ran_and_plotted(tmp_path, "xor_mlp")
    assert final_loss < 1e-6
    out = capsys.readouterr().out
    assert "step 0: gradient at the output (4, 1)" in out
    assert "step 499: gradient at layer 1 (4, 10)" in out
    # The same seed gives the same initial model; its gradients, worked out by hand:
    # loss = mean((out - t)^2) so dloss/dout = 2 (out - t) / 4, and dloss/dhidden = that @ W2.
    gg.random.seed(0)
    layer1, layer2 = gg.nn.Dense(2, 10, activation=gg.relu), gg.nn.Dense(10, 1)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    t = np.array([[0], [1], [1], [0]], dtype=np.float64)
    out0 = layer2(layer1(gg.dlarray(x))).numpy()
    d_out = 2 * (out0 - t) / 4
    w2 = layer2.parameters()["weight"].numpy()
    # float32 layers (gg.get_default_dtype()): the hand computation runs in float64
    np.testing.assert_allclose(first_step["the output"], d_out, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(first_step["layer 1"], d_out @ w2, rtol=1e-6, atol=1e-7)
    assert np.abs(first_step["layer 1"]).max() > 0.01  # a real gradient, not zeros


@pytest.mark.parametrize(("name", "at_least"), [("digits_cnn", 0.95), ("sequence_lstm", 0.90)])
def test_digit_classifiers_reach_their_accuracy(tmp_path, name, at_least):
    assert _ran_and_plotted(tmp_path, name) >= at_least


# --------------------------------------------------------------------- on cuda-sim

# a few steps of each training example (tiny sizes: the kernels run on the emulator):
# arguments, which steps the example's own hooks read back on purpose, and the
# functions allowed to synchronise inside a step: gg.checkpoint's input-mutation check
# reads one flag back per checkpointed call (tests/test_cudasim.py pins it at one)
CUDA_SIM_RUNS = {
    "xor_mlp": (["--steps", "4", "--plot", ""], lambda args: args[-1] in (0, 3), ()),
    "digits_cnn": (["--epochs", "1", "--limit", "24", "--batch", "8", "--plot", ""], None, ()),
    "sequence_lstm": (["--epochs", "1", "--limit", "24", "--batch", "8", "--plot", ""], None, ()),
    "checkpointed_training": (
        ["--depth", "4", "--width", "8", "--batch", "4"],
        None,
        ("(_mutated)",),
    ),
    "data_parallel": (["--epochs", "1", "--limit", "24", "--batch", "8"], None, ()),
}


@pytest.mark.parametrize("name", sorted(CUDA_SIM_RUNS))
def test_example_training_steps_do_not_synchronise_on_cuda_sim(monkeypatch, name):
    """Each example runs its training loop on the cuda code path (cuda-sim), and no
    step (``gg.dlfeval`` + the optimizer's ``update``) synchronises with the host (but
    for the allowed functions above). Only the values the example reads (the loss it
    prints, the accuracy) cross to the host."""
    pytest.importorskip("cupy")  # cuda-sim checks against the installed CuPy
    argv, hooks_read, allowed = CUDA_SIM_RUNS[name]
    seen = {"steps": 0, "updates": 0, "checked": 0}

    def strict(fn, kind):
        def run(*args, **kwargs):
            seen[kind] += 1
            # the first step compiles the kernels and creates the optimizer state
            if seen[kind] == 1 or (hooks_read is not None and hooks_read(args)):
                return fn(*args, **kwargs)
            with gg.debug.transfers() as t:
                out = fn(*args, **kwargs)
            syncs = {
                site: n
                for (kind, site), n in t.by_site().items()
                if kind != "h2d" and not site.endswith(allowed or ("-",))
            }
            assert not syncs, f"{name}: host syncs inside a training step: {syncs}"
            seen["checked"] += 1
            return out

        return run

    monkeypatch.setattr(gg, "dlfeval", strict(gg.dlfeval, "steps"))
    for cls in (gg.optim.SGD, gg.optim.Adam):
        update = cls.update
        monkeypatch.setattr(
            cls, "update", lambda self, *a, _u=update: strict(_u, "updates")(self, *a)
        )
    old = gg.device()
    gg.set_device("cuda-sim")
    try:
        with gg.debug.transfers() as t:
            _example(name).main(argv)
    finally:
        gg.set_device(old)
    assert seen["steps"] >= 2 and seen["checked"] >= 2, seen
    assert t.syncs > 0 and t.launches > 0  # it ran on the device and read its results
