"""Every optimizer's in-place update is visible to the engine: under gg.dlaccelerate it
is repeated on every replay (a replay that skipped it trained nothing after the first
step, silently), and a trace that saved a parameter before the update refuses to use
the changed values (the version check), as for a hand-written in-place write."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpugrad as gg

OPTIMIZERS = {
    "SGD": lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9),
    "Adam": lambda m: gg.optim.Adam(m, learning_rate=0.1, weight_decay=0.01),
    "AdamW": lambda m: gg.optim.AdamW(m, learning_rate=0.1, weight_decay=0.1),
    "RMSProp": lambda m: gg.optim.RMSProp(m, learning_rate=0.05, centered=True, momentum=0.5),
}


@pytest.fixture(autouse=True)
def _f64(float64):
    yield


def _losses(make_opt, accelerate, steps=5):
    gg.random.seed(0)
    net = gg.nn.Dense(3, 2)
    opt = make_opt(net)
    x = gg.dlarray(np.arange(6.0).reshape(2, 3) / 6)

    def loss_and_grad(m):
        loss = gg.sum(m(x) ** 2)
        return loss, gg.dlgradient(loss, m)

    def step(m):
        loss, grads = gg.dlfeval(loss_and_grad, m)
        opt.update(m, grads)
        return loss

    run = gg.dlaccelerate(step) if accelerate else step
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no eager fallback either
        losses = [float(run(net)) for _ in range(steps)]
    return losses, net.weight.numpy()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_update_is_replayed_under_dlaccelerate(name):
    eager, w_eager = _losses(OPTIMIZERS[name], accelerate=False)
    replayed, w_replayed = _losses(OPTIMIZERS[name], accelerate=True)
    assert eager[-1] < eager[0]  # it trains
    np.testing.assert_allclose(replayed, eager, rtol=1e-12)
    np.testing.assert_allclose(w_replayed, w_eager, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_trace_that_saved_a_parameter_refuses_the_updated_values(name):
    w = gg.dlarray([1.0, 2.0])
    opt = OPTIMIZERS[name]({"w": w})

    def f(v):
        y = gg.sum(v * v)  # saves v, which shares w's buffer
        opt.update({"w": w}, {"w": gg.dlarray([1.0, 1.0])})
        return gg.dlgradient(y, v)

    with pytest.raises(gg.TraceError, match="modified in place after it was recorded"):
        gg.dlfeval(f, w)
