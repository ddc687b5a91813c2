"""The NumPy LSTM recurrence (gpugrad/nn/recurrent.py): its BLAS thread policy for the
per-step GEMMs never changes a result, whichever threads it picks."""

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.nn import recurrent
from gpugrad.tree import leaves


def _step(dtype):
    rng = np.random.default_rng(3)
    gg.random.seed(3)  # the same initial weights every time
    net = gg.nn.LSTM(6, 64, dtype=dtype)
    x = gg.dlarray(rng.standard_normal((32, 20, 6)).astype(dtype))  # 20 steps: tuned

    def loss(m):
        y = m(x)
        return gg.sum(y * y), gg.dlgradient(gg.sum(y * y), m)

    value, grads = gg.dlfeval(loss, net)
    return [value.numpy()] + [d.numpy() for d in leaves(grads)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_step_blas_policy_gives_the_same_bits(monkeypatch, dtype):
    results = []
    for policy in (None, 1, 2, "auto", "auto"):
        monkeypatch.setattr(recurrent, "STEP_BLAS_THREADS", policy)
        monkeypatch.setattr(recurrent, "_STEP_CHOICE", {})
        monkeypatch.setattr(recurrent, "_STEP_CALLS", {})
        results.append(_step(dtype))
    first, rest = results[0], results[1:]
    assert len(first) == 4  # the loss and the three parameters' gradients
    for other in rest:
        for a, b in zip(first, other):
            np.testing.assert_array_equal(a, b)


def test_the_auto_policy_remembers_its_choice_per_shape(monkeypatch):
    monkeypatch.setattr(recurrent, "STEP_BLAS_THREADS", "auto")
    monkeypatch.setattr(recurrent, "_STEP_CHOICE", {})
    monkeypatch.setattr(recurrent, "_STEP_CALLS", {})
    monkeypatch.setattr(recurrent, "RETUNE_CALLS", 2)
    for _ in range(4):  # measured, kept for two calls, measured again
        _step(np.float32)
    if gg.backend.is_cuda():  # the kernels run the recurrence: the NumPy one is not reached
        assert recurrent._STEP_CHOICE == {} and recurrent._STEP_CALLS == {}
    elif recurrent._blas_controllers() and recurrent._blas_threads() > 1:
        assert set(recurrent._STEP_CHOICE) == {
            ("fwd", 32, 64, np.dtype(np.float32)),
            ("bwd", 32, 64, np.dtype(np.float32)),
        }
        assert set(recurrent._STEP_CHOICE.values()) <= {1, None}
    else:  # one BLAS thread, or no threadpoolctl: nothing to choose
        assert recurrent._STEP_CHOICE == {}
