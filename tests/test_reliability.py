"""Reliability regressions (issue 16): leaks, thread-safe random replay, NumPy's
axis rules, casts, mutation after recording, empty inputs, subclasses, prod with
zeros, exact erf, kernel wrappers, fork safety, clear errors."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import gpugrad as gg

# ------------------------------------------------------------------ 1 leaks


def _mxnet_step(create_graph, grad_req="write"):
    x = gg.dlarray([1.0, 2.0, 3.0])
    x.attach_grad(grad_req)
    with gg.autograd.record():
        y = gg.sum(gg.exp(x) * x)
    y.backward(create_graph=create_graph)
    return x, y


def _matlab_step(higher):
    def f(x):
        y = gg.sum(gg.sin(x) * x)
        g = gg.dlgradient(y, x, enable_higher_derivatives=higher)
        if higher:
            return gg.dlgradient(gg.sum(g * g), x)
        return g

    x = gg.dlarray([1.0, 2.0, 3.0])
    return x, gg.dlfeval(f, x)


def _swift_step():
    x = gg.dlarray([1.0, 2.0, 3.0])
    val, pb = gg.value_with_pullback(lambda a: gg.sum(gg.tanh(a) ** 2), x)
    return x, pb(gg.dlarray(1.0))


def _grad_step():
    x = gg.dlarray([0.5, 1.5])
    x.attach_grad()
    with gg.autograd.record():
        y = gg.sum(x**3)
    g = gg.autograd.grad(y, x, create_graph=True)
    with gg.autograd.record():
        z = gg.sum(g * g)
    z.backward()
    return x, g


@pytest.mark.parametrize(
    "step",
    [
        lambda: _mxnet_step(True),
        lambda: _mxnet_step(True, "add"),
        lambda: _mxnet_step(False),
        lambda: _matlab_step(True),
        lambda: _matlab_step(False),
        _swift_step,
        _grad_step,
    ],
    ids=["mx-create", "mx-create-add", "mx", "matlab-higher", "matlab", "swift", "mx-grad"],
)
def test_nothing_stays_alive_after_a_loop(step):
    gc.collect()
    base = gg.memory.saved_bytes()
    refs = []
    for _ in range(60):
        out = step()
        for a in out:
            refs.append(weakref.ref(a))
            if getattr(a, "_node", None) is not None:
                refs.append(weakref.ref(a._node))
        grad = getattr(out[0], "grad", None)
        if grad is not None:
            refs.append(weakref.ref(grad))
        del out, a, grad
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0
    assert gg.memory.saved_bytes() == base


def test_create_graph_grad_stays_usable_while_variable_lives():
    x, y = _mxnet_step(True)
    del y
    gc.collect()
    g = x.grad
    assert g.traced
    np.testing.assert_allclose(g.numpy(), (np.exp([1.0, 2.0, 3.0]) * (1 + np.array([1, 2, 3.0]))))
