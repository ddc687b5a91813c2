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
