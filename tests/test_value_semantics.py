"""Value semantics: gg.dlarray copies the caller's data by default (copy=False
shares), so in-place updates never write into the caller's array, and no two
parameters of a Layer alias each other (checked when the layer is made)."""

import numpy as np
import pytest

import gpugrad as gg


def test_dlarray_copies_a_numpy_array_by_default():
    a = np.arange(4.0)
    x = gg.dlarray(a)
    x[0] = 5.0
    assert a[0] == 0.0
    a[1] = -1.0
    assert x.numpy()[1] == 1.0
    # in-place operators too (MXNet's `w -= lr * w.grad`)
    x -= 1.0
    np.testing.assert_array_equal(a, [0.0, -1.0, 2.0, 3.0])


def test_copy_false_shares():
    xp = gg.backend.xp()  # an array of the active device: host memory is not GPU memory
    a = xp.arange(4.0)
    x = gg.dlarray(a, copy=False)
    x[0] = 5.0
    assert float(a[0]) == 5.0
    a[1] = -1.0
    assert x.numpy()[1] == -1.0
    if gg.backend.is_cuda():  # a host array goes to the device: a copy either way
        h = np.arange(3.0)
        y = gg.dlarray(h, copy=False)
        y[0] = 7.0
        assert h[0] == 0.0


def test_copies_happen_once_and_only_when_needed():
    xp = gg.backend.xp()  # arrays of the active device
    a = xp.arange(4.0, dtype=np.float32)
    # a dtype conversion already makes a new array; it does not share either way
    for copy in (True, False):
        x = gg.dlarray(a, dtype=np.float64, copy=copy)
        assert not xp.shares_memory(x._data, a)
    # integer input becomes float64 (a new array)
    assert gg.dlarray(np.arange(3)).dtype == np.float64
    # a view of the caller's array is copied too
    b = xp.zeros((3, 4))
    y = gg.dlarray(b[:, 1])
    y[0] = 1.0
    assert float(b.sum()) == 0
    # format permutation with copy=False still gives the right layout
    z = gg.dlarray(xp.arange(6.0).reshape(2, 3), "BC", copy=False)
    np.testing.assert_array_equal(z.numpy(), np.arange(6.0).reshape(2, 3).T)


def test_dlarray_of_a_dlarray_copies_and_keeps_the_trace():
    x = gg.dlarray([1.0, 2.0])
    y = gg.dlarray(x)
    y[0] = 7.0
    assert x.numpy().tolist() == [1.0, 2.0]
    assert gg.dlarray(x, copy=False)._data is x._data

    def f(v):
        w = gg.dlarray(v) * 3.0
        return gg.dlgradient(gg.sum(w * w), v)

    np.testing.assert_allclose(gg.dlfeval(f, x).numpy(), [18.0, 36.0])


def test_lists_and_scalars_need_no_copy():
    assert gg.dlarray([1.0, 2.0]).numpy().tolist() == [1.0, 2.0]
    assert float(gg.dlarray(3.5)) == 3.5


def test_optimizer_updates_never_reach_the_callers_array():
    w0 = np.ones((2, 3))
    b0 = np.zeros(2)
    layer = gg.nn.Dense(3, 2, dtype=np.float64)
    layer.weight, layer.bias = gg.dlarray(w0), gg.dlarray(b0)
    x = gg.dlarray(np.ones((4, 3)))
    opt = gg.optim.SGD(layer, learning_rate=0.1)
    grads = gg.dlfeval(lambda m: gg.dlgradient(gg.sum(m(x) ** 2), m), layer)
    opt.update(layer, grads)
    assert not np.allclose(layer.weight.numpy(), 1.0)
    np.testing.assert_array_equal(w0, 1.0)
    np.testing.assert_array_equal(b0, 0.0)


class _TwoFromOne(gg.nn.Layer):
    def __init__(self, buf, copy):
        self.weight = gg.dlarray(buf[:3], copy=copy)
        self.bias = gg.dlarray(buf[3:], copy=copy)
        self.scale = gg.dlarray(buf, copy=copy)

    def forward(self, x):
        return x * self.weight + self.bias * self.scale[:3]


def test_parameters_built_from_one_buffer_do_not_alias_by_default():
    buf = np.arange(6.0)
    layer = _TwoFromOne(buf, copy=True)
    assert not np.shares_memory(layer.weight._data, layer.scale._data)


def test_aliasing_parameters_are_refused_at_construction():
    with pytest.raises(
        ValueError, match=r"_TwoFromOne: parameters '(weight|scale)' and '(weight|scale)' share"
    ):
        _TwoFromOne(gg.backend.xp().arange(6.0), copy=False)  # one buffer of the device


def test_aliasing_across_sublayers_is_refused():
    a = gg.nn.Dense(2, 2, dtype=np.float64)
    b = gg.nn.Dense(2, 2, dtype=np.float64)
    b.bias = gg.dlarray(a.weight._data[0], copy=False)
    with pytest.raises(ValueError, match=r"Sequential: parameters '0.weight' and '1.bias' share"):
        gg.nn.Sequential(a, b)


def test_the_same_parameter_twice_is_allowed():
    shared = gg.nn.Dense(2, 2)
    net = gg.nn.Sequential(shared, gg.relu, shared)
    assert net(gg.ones((1, 2))).shape == (1, 2)
    tied = gg.nn.Dense(2, 2)
    tied.bias = shared.bias
    gg.nn.Sequential(shared, tied)


def test_checked_once_per_construction_for_subclasses():
    calls = []

    class Base(gg.nn.Layer):
        def __init__(self):
            self.w = gg.ones(2)

        def forward(self, x):
            return x * self.w

    class Child(Base):
        def __init__(self):
            super().__init__()
            calls.append(1)
            # made after the parent's __init__: still checked
            self.v = gg.dlarray(self.w._data, copy=False)

    with pytest.raises(ValueError, match="Child: parameters 'w' and 'v' share memory"):
        Child()
    assert calls == [1]
