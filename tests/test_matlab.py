import dataclasses
import gc
import threading
import tracemalloc
import weakref

import numpy as np
import pytest

import gpugrad as gg


def rosenbrock(x):
    return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2


def test_rosenbrock_one_input():
    def f(x):
        y = rosenbrock(x)
        return y, gg.dlgradient(y, x)

    y, g = gg.dlfeval(f, gg.dlarray([-1, 2]))
    assert float(y) == 104.0
    assert g.numpy().tolist() == [396.0, 200.0]
    assert not y.traced and not g.traced


def test_rosenbrock_two_inputs():
    def f(x1, x2):
        y = 100 * (x2 - x1**2) ** 2 + (1 - x1) ** 2
        return (y, *gg.dlgradient(y, x1, x2))

    y, g1, g2 = gg.dlfeval(f, gg.dlarray(-1), gg.dlarray(2))
    assert (float(y), float(g1), float(g2)) == (104.0, 396.0, 200.0)


def test_complex_steepest_ascent_convention():
    def f(x):
        return gg.dlgradient(gg.sum(gg.real((2 + 3j) * x)), x)

    g = gg.dlfeval(f, gg.dlarray([1 + 1j, -2j]))
    np.testing.assert_allclose(g.numpy(), [2 - 3j, 2 - 3j])
    assert g.dtype == np.complex128

    def g_abs(x):
        return gg.dlgradient(gg.sum(gg.abs(x) ** 2), x)  # d/da + i d/db of a^2 + b^2

    np.testing.assert_allclose(gg.dlfeval(g_abs, gg.dlarray([3 + 4j])).numpy(), [6 + 8j])


def test_allow_complex_false():
    def f(x):
        return gg.dlgradient(gg.sum(gg.abs(x)), x, allow_complex=False)

    with pytest.raises(gg.TraceError, match="allow_complex"):
        gg.dlfeval(f, gg.dlarray([1j]))


@dataclasses.dataclass
class Params:
    w: object
    b: object


def test_containers_get_gradients_of_the_same_structure():
    def f(p, d):
        y = gg.sum(p["a"] ** 2) + gg.sum(d[0] * 3) + gg.sum(d[1].w * d[1].b)
        return gg.dlgradient(y, p, d)

    p = {"a": gg.dlarray([1.0, 2.0])}
    d = [gg.dlarray(np.float32([1.0])), Params(gg.dlarray(2.0), gg.dlarray(5.0))]
    gp, gd = gg.dlfeval(f, p, d)
    assert gp["a"].numpy().tolist() == [2.0, 4.0]
    assert gd[0].dtype == np.float32 and gd[0].numpy().tolist() == [3.0]
    assert isinstance(gd[1], Params) and float(gd[1].w) == 5.0 and float(gd[1].b) == 2.0


def test_gradient_of_unused_input_is_zeros():
    def f(x, z):
        return gg.dlgradient(gg.sum(x * 2), z)

    g = gg.dlfeval(f, gg.dlarray([1.0]), gg.dlarray(np.ones((2, 2)), "CB"))
    assert g.numpy().tolist() == [[0.0, 0.0], [0.0, 0.0]] and gg.dims(g) == "CB"


def test_matlab_name_value_spelling_and_retain_data():
    def f(x):
        y = gg.sum(gg.exp(x))
        g1 = gg.dlgradient(y, x, "RetainData", True)
        g2 = gg.dlgradient(y, x)
        return g1, g2

    g1, g2 = gg.dlfeval(f, gg.dlarray([0.0, 1.0]))
    np.testing.assert_allclose(g1.numpy(), np.exp([0.0, 1.0]))
    np.testing.assert_allclose(g2.numpy(), g1.numpy())
    with pytest.raises(ValueError, match="unknown option"):
        gg.dlfeval(lambda x: gg.dlgradient(gg.sum(x), x, "Bogus", 1), gg.dlarray([1.0]))


def test_second_call_without_retain_raises_clearly():
    def f(x):
        y = gg.sum(gg.exp(x))
        gg.dlgradient(y, x)
        return gg.dlgradient(y, x)

    with pytest.raises(gg.TraceError, match="retain_data=True"):
        gg.dlfeval(f, gg.dlarray([0.0, 1.0]))


def test_higher_derivatives():
    def f(x):
        y = gg.sum(x**3)
        g = gg.dlgradient(y, x, enable_higher_derivatives=True)
        return gg.dlgradient(gg.sum(g), x)

    np.testing.assert_allclose(gg.dlfeval(f, gg.dlarray([1.0, 2.0])).numpy(), [6.0, 12.0])


def test_differentiating_a_gradient_without_higher_derivatives_raises():
    def only_grad(x):
        g = gg.dlgradient(gg.sum(x**3), x)
        return gg.dlgradient(gg.sum(g), x)

    with pytest.raises(gg.TraceError, match="enable_higher_derivatives"):
        gg.dlfeval(only_grad, gg.dlarray([1.0, 2.0]))

    def mixed(x):
        g = gg.dlgradient(gg.sum(x**3), x, retain_data=True)
        return gg.dlgradient(gg.sum(g * x), x)  # would silently treat g as a constant

    with pytest.raises(gg.TraceError, match="enable_higher_derivatives"):
        gg.dlfeval(mixed, gg.dlarray([1.0, 2.0]))


def test_errors():
    x = gg.dlarray([1.0, 2.0])
    with pytest.raises(gg.TraceError, match="inside a function evaluated by dlfeval"):
        gg.dlgradient(gg.sum(x), x)
    with pytest.raises(gg.TraceError, match="scalar"):
        gg.dlfeval(lambda x: gg.dlgradient(x * 2, x), x)
    with pytest.raises(gg.TraceError, match="real"):
        gg.dlfeval(lambda x: gg.dlgradient(gg.sum(x * 1j), x), x)
    with pytest.raises(gg.TraceError, match="not traced"):
        gg.dlfeval(lambda x: gg.dlgradient(gg.sum(gg.extractdata(x)) * gg.dlarray(1.0), x), x)
    with pytest.raises(gg.TraceError, match="cannot be differentiated"):
        gg.dlfeval(lambda x, b: gg.dlgradient(gg.sum(x), b), x, gg.dlarray([True]))
    assert issubclass(gg.TraceError, RuntimeError)


def test_x_created_inside_is_not_traced_but_inputs_still_work():
    def f(x1):
        x2 = gg.dlarray(0.0)
        y = x1**2 + x2
        g1 = gg.dlgradient(y, x1, retain_data=True)
        with pytest.raises(gg.TraceError, match="x is not traced"):
            gg.dlgradient(y, x2)
        return g1

    assert float(gg.dlfeval(f, gg.dlarray(3.0))) == 6.0


def test_trace_does_not_outlive_the_call():
    leaked = []

    def f(x):
        leaked.append(x)
        return gg.sum(x)

    gg.dlfeval(f, gg.dlarray([1.0]))
    with pytest.raises(gg.TraceError, match="already returned"):
        gg.dlfeval(lambda z: gg.dlgradient(gg.sum(z * leaked[0]), leaked[0]), gg.dlarray([2.0]))


def test_no_memory_growth_over_many_calls():
    def f(x):
        y = rosenbrock(x)
        return y, gg.dlgradient(y, x)

    x = gg.dlarray([-1.0, 2.0])
    for _ in range(200):
        gg.dlfeval(f, x)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(10_000):
        gg.dlfeval(f, x)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 50_000, f"memory grew by {growth} bytes over 10,000 calls"
    assert gg.memory.saved_bytes() == 0

    refs = []

    def keep_ref(x):
        y = gg.exp(x) * 2
        refs.append(weakref.ref(y._node))
        return gg.dlgradient(gg.sum(y), x)

    gg.dlfeval(keep_ref, x)
    assert refs[0]() is None  # the tape died with the call, without waiting for gc


def test_two_threads_get_their_own_traces():
    results = {}
    barrier = threading.Barrier(2)

    def work(name, fn, value):
        barrier.wait()
        for _ in range(200):
            g = gg.dlfeval(lambda x: gg.dlgradient(gg.sum(fn(x)), x), gg.dlarray(value))
        results[name] = g.numpy()

    t1 = threading.Thread(target=work, args=("sin", gg.sin, [0.5, 1.0]))
    t2 = threading.Thread(target=work, args=("cube", lambda x: x**3, [2.0, 3.0]))
    t1.start(), t2.start()
    t1.join(), t2.join()
    np.testing.assert_allclose(results["sin"], np.cos([0.5, 1.0]))
    np.testing.assert_allclose(results["cube"], [12.0, 27.0])


def test_memory_accounting_counts_saved_intermediates():
    def f(x):
        h = gg.exp(x)  # saves its output: 8 * 1000 bytes
        y = gg.sum(gg.sin(h))  # saves its input h (the same array, counted once)
        return gg.dlgradient(y, x)

    with gg.memory.track() as m:
        gg.dlfeval(f, gg.dlarray(np.zeros(1000)))
    assert m.peak_bytes == 8000
    assert m.by_op["exp"] == 8000
    assert gg.memory.saved_bytes() == 0
    assert "exp" in gg.memory.report(m)


def test_dljacobian_divergence_laplacian():
    # u(x) = [x0^2 x1, sin(x0)] per observation (batch axis 1)
    xv = np.array([[1.0, 2.0, 0.5], [3.0, -1.0, 2.0]])

    def f(x):
        u = gg.concatenate([x[0:1] ** 2 * x[1:2], gg.sin(x[0:1])], axis=0)
        return gg.dljacobian(u, x, 1), gg.dldivergence(u, x, 1), gg.dllaplacian(u, x, 1)

    jac, div, lap = gg.dlfeval(f, gg.dlarray(xv))
    x0, x1 = xv
    expected = np.array([[2 * x0 * x1, x0**2], [np.cos(x0), np.zeros(3)]])
    np.testing.assert_allclose(jac.numpy(), expected)
    np.testing.assert_allclose(div.numpy(), 2 * x0 * x1 + 0.0)
    np.testing.assert_allclose(lap.numpy(), [2 * x1, -np.sin(x0)])


def test_needs_aware_vjp_is_told_which_cotangents_are_used():
    from gpugrad.ops.core import Primitive

    seen = []

    def vjp(g, ans, a, b, needs=(True, True)):
        seen.append(needs)
        return (g * b if needs[0] else None), (g * a if needs[1] else None)

    prim = Primitive(
        "test_needs_mul", lambda a, b: a * b, vjp, save=(0, 1), needs=True, register=False
    )

    def f(a, b):
        y = gg.sum(prim(a, b))
        return gg.dlgradient(y, b, retain_data=True), gg.dlgradient(y, a, b)

    a, b = gg.dlarray([1.0, 2.0]), gg.dlarray([3.0, 4.0])
    gb, (ga2, gb2) = gg.dlfeval(f, a, b)
    assert seen == [(False, True), (True, True)]
    np.testing.assert_allclose(gb.numpy(), [1.0, 2.0])
    np.testing.assert_allclose(ga2.numpy(), [3.0, 4.0])
    np.testing.assert_allclose(gb2.numpy(), [1.0, 2.0])
