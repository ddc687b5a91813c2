"""MXNet face: record/pause scopes, attach_grad, backward, grad."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import autograd as ag


def num(x):
    return np.asarray(gg.to_host(gg.extractdata(x)))  # a device array on cuda


def test_dot_gradient_is_4x():
    x = gg.dlarray(np.arange(4.0).reshape(4, 1))
    x.attach_grad()
    with ag.record():
        y = 2 * gg.dot(x.T, x)
    y.backward()
    np.testing.assert_allclose(num(x.grad), 4 * num(x))


def test_data_dependent_control_flow():
    def f(a):
        b = a * 2
        while gg.norm(b) < 1000:
            b = b * 2
        c = b if gg.sum(b) > 0 else 100 * b
        return c

    for seed, shape in ((0, ()), (1, (3,)), (2, ())):
        rng = np.random.default_rng(seed)
        a = gg.dlarray(rng.standard_normal(shape))
        a.attach_grad()
        with ag.record():
            c = f(a)
        c.backward()
        np.testing.assert_allclose(num(a.grad), num(c) / num(a), rtol=1e-12)
    # a negative scalar takes the other branch
    a = gg.dlarray(-0.37)
    a.attach_grad()
    with ag.record():
        c = f(a)
    c.backward()
    assert float(a.grad) == pytest.approx(float(c) / -0.37)


def test_non_scalar_is_summed_and_head_grads():
    x = gg.dlarray([1.0, 2.0, 3.0])
    x.attach_grad()
    with ag.record():
        y = x * x
    y.backward(retain_graph=True)
    np.testing.assert_allclose(num(x.grad), [2.0, 4.0, 6.0])
    y.backward(gg.dlarray([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(num(x.grad), [2.0, 0.0, 12.0])


def test_grad_req_add_accumulates_and_write_overwrites():
    x = gg.dlarray([1.0, -2.0])
    x.attach_grad(grad_req="add")
    for _ in range(3):
        with ag.record():
            y = gg.sum(x * x)
        y.backward()
    np.testing.assert_allclose(num(x.grad), 3 * 2 * num(x))
    w = gg.dlarray([1.0, -2.0])
    w.attach_grad()
    for _ in range(3):
        with ag.record():
            y = gg.sum(w * w)
        y.backward()
    np.testing.assert_allclose(num(w.grad), 2 * num(w))


def test_grad_req_null_is_skipped():
    x = gg.dlarray([1.0, 2.0])
    x.attach_grad(grad_req="null")
    w = gg.dlarray([3.0, 4.0])
    w.attach_grad()
    with ag.record():
        y = gg.sum(x * w)
    y.backward()
    np.testing.assert_allclose(num(x.grad), [0.0, 0.0])
    np.testing.assert_allclose(num(w.grad), [1.0, 2.0])


def test_grad_before_backward_is_zeros_and_none_without_attach():
    x = gg.dlarray([1.0, 2.0])
    assert x.grad is None
    x.attach_grad()
    np.testing.assert_array_equal(num(x.grad), [0.0, 0.0])
    with pytest.raises(ValueError, match="grad_req"):
        x.attach_grad("sometimes")


def test_recording_and_training_flags():
    assert not ag.is_recording() and not ag.is_training()
    with ag.record():
        assert ag.is_recording() and ag.is_training()
        with ag.pause():
            assert not ag.is_recording() and not ag.is_training()
        with ag.predict_mode():
            assert ag.is_recording() and not ag.is_training()
    with ag.record(train_mode=False):
        assert ag.is_recording() and not ag.is_training()
    with ag.train_mode():
        assert ag.is_training() and not ag.is_recording()
    assert not ag.is_recording() and not ag.is_training()


def test_set_recording_and_set_training_return_previous():
    def body():
        assert ag.set_recording(True) is False
        assert ag.is_recording()
        assert ag.set_training(True) is False
        assert ag.set_training(False) is True
        x = gg.dlarray([2.0])
        x.attach_grad()
        y = x * x
        assert ag.set_recording(False) is True
        y.backward()
        return num(x.grad)

    # run in a thread: its own context, so the main context is untouched
    out = []
    t = threading.Thread(target=lambda: out.append(body()))
    t.start()
    t.join()
    np.testing.assert_allclose(out[0], [4.0])
    assert not ag.is_recording()


def test_outside_record_nothing_is_recorded():
    x = gg.dlarray([1.0])
    x.attach_grad()
    y = x * 3
    assert not y.traced
    with pytest.raises(gg.TraceError, match="record"):
        y.backward()
    with ag.record():
        with ag.pause():
            z = x * 3
    assert not z.traced


def test_backward_not_recorded_error():
    x = gg.dlarray([1.0, 2.0])
    with pytest.raises(gg.TraceError, match="record"):
        x.backward()


def test_second_backward_without_retain_graph():
    x = gg.dlarray([1.0, 2.0])
    x.attach_grad()
    with ag.record():
        y = gg.sum(gg.sin(x) * x)
    y.backward()
    with pytest.raises(gg.TraceError, match="retain_graph"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = gg.dlarray([1.0, 2.0])
    x.attach_grad()
    with ag.record():
        y = gg.sum(gg.exp(x))
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(num(x.grad), np.exp([1.0, 2.0]))


def test_detach():
    x = gg.dlarray([1.0, 2.0])
    x.attach_grad()
    with ag.record():
        y = x * x.detach()
        assert not x.detach().traced
        z = gg.sum(y)
    z.backward()
    np.testing.assert_allclose(num(x.grad), [1.0, 2.0])


def test_autograd_grad_and_create_graph():
    x = gg.dlarray([0.5, 1.5])
    x.attach_grad()
    with ag.record():
        y = gg.sum(x**3)
        (dx,) = ag.grad(y, [x], create_graph=True)
        z = gg.sum(dx * dx)
    np.testing.assert_allclose(num(dx), 3 * num(x) ** 2)
    z.backward()
    # d/dx sum(9 x^4) = 36 x^3
    np.testing.assert_allclose(num(x.grad), 36 * num(x) ** 3)


def test_autograd_grad_single_and_several():
    a = gg.dlarray(2.0)
    b = gg.dlarray(3.0)
    a.attach_grad()
    b.attach_grad()
    with ag.record():
        y = a * b
    ga = ag.grad(y, a, retain_graph=True)
    assert float(ga) == 3.0
    ga, gb = ag.grad([y], [a, b])
    assert (float(ga), float(gb)) == (3.0, 2.0)
    np.testing.assert_array_equal(num(a.grad), 0.0)  # grad() leaves x.grad alone
    with pytest.raises(gg.TraceError, match="record"):
        ag.grad(gg.dlarray(1.0), [a])


def test_backward_create_graph_gives_differentiable_grad():
    x = gg.dlarray([0.3, 0.8])
    x.attach_grad()
    with ag.record():
        y = gg.sum(gg.sin(x))
        y.backward(create_graph=True)
        g = x.grad
        assert g.traced
        (h,) = ag.grad(gg.sum(g), [x])
    np.testing.assert_allclose(num(h), -np.sin([0.3, 0.8]))


def test_sgd_loop_converges():
    rng = np.random.default_rng(0)
    xs = gg.dlarray(rng.standard_normal((50, 2)))
    ys = xs @ gg.dlarray([[2.0], [-3.0]]) + 1.0
    w = gg.zeros((2, 1))
    b = gg.zeros((1,))
    w.attach_grad()
    b.attach_grad()
    for _ in range(200):
        with ag.record():
            loss = gg.mean((xs @ w + b - ys) ** 2)
        loss.backward()
        w -= 0.1 * w.grad
        b -= 0.1 * b.grad
    np.testing.assert_allclose(num(w).ravel(), [2.0, -3.0], atol=1e-3)
    np.testing.assert_allclose(num(b), [1.0], atol=1e-3)


def test_record_matches_finite_differences():
    x0 = np.array([0.2, -0.7, 1.1])

    def f(x):
        return gg.sum(gg.tanh(x) * gg.exp(x) / (1 + x * x))

    x = gg.dlarray(x0)
    x.attach_grad()
    with ag.record():
        y = f(x)
    y.backward()
    eps = 1e-6
    fd = np.array(
        [
            (float(f(gg.dlarray(x0 + eps * e))) - float(f(gg.dlarray(x0 - eps * e)))) / (2 * eps)
            for e in np.eye(3)
        ]
    )
    np.testing.assert_allclose(num(x.grad), fd, rtol=1e-6)


def test_custom_derivative_inside_record():
    calls = []

    @gg.custom_derivative
    def cexp(x):
        return np.exp(np.asarray(x))

    @cexp.derivative
    def _(x):
        y = cexp(x)

        def pb(v):
            calls.append(1)
            return v * y

        return y, pb

    x = gg.dlarray([0.0, 1.0])
    x.attach_grad()
    with ag.record():
        y = gg.sum(cexp(x))
    y.backward()
    np.testing.assert_allclose(num(x.grad), np.exp([0.0, 1.0]))
    assert len(calls) == 1


def test_gradient_inside_record():
    x = gg.dlarray(0.6)
    x.attach_grad()
    with ag.record():
        g = gg.gradient(lambda z: z**3)(x)
    g.backward()
    assert float(x.grad) == pytest.approx(6 * 0.6)


def test_second_backward_after_variable_dropped_mentions_retain_graph():
    import gc

    x = gg.dlarray([1.0, 2.0])
    x.attach_grad()
    with ag.record():
        y = gg.sum(x * x)
    y.backward()
    del x
    gc.collect()
    with pytest.raises(gg.TraceError, match="retain_graph"):
        y.backward()
