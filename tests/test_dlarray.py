import pickle

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.ops.core import make


def test_dtypes():
    assert gg.dlarray([1, 2]).dtype == np.float64  # integers become MATLAB double
    assert gg.dlarray(np.float32([1])).dtype == np.float32
    assert gg.dlarray(np.complex64([1j])).dtype == np.complex64
    assert gg.dlarray([1 + 2j]).dtype == np.complex128
    assert gg.dlarray([True, False]).dtype == np.bool_
    assert gg.dlarray([1, 2], dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="dtype"):
        gg.dlarray([1], dtype=np.int32)
    with pytest.raises(TypeError, match="not numeric"):
        gg.dlarray(np.array(["a"]))


def test_format_permutes_to_scbtu_order():
    x = gg.dlarray(np.arange(24).reshape(2, 3, 4), "BCS")
    assert gg.dims(x) == "SCB"
    assert x.shape == (4, 3, 2)
    assert gg.finddim(x, "B") == [2]
    assert gg.finddim(x, "T") == []
    np.testing.assert_array_equal(x.numpy(), np.arange(24).reshape(2, 3, 4).transpose(2, 1, 0))
    s = gg.stripdims(x)
    assert gg.dims(s) == "" and s.shape == (4, 3, 2)
    assert gg.dims(gg.dlarray(np.ones((2, 2)))) == ""


@pytest.mark.parametrize(
    "fmt,match",
    [
        ("SX", "unknown format label"),
        ("CC", "more than once"),
        ("BB", "more than once"),
        ("SCB", "3 labels"),
    ],
)
def test_bad_formats(fmt, match):
    with pytest.raises(ValueError, match=match):
        gg.dlarray(np.ones((2, 2)), fmt)


def test_formats_survive_elementwise_and_reductions():
    x = gg.dlarray(np.ones((3, 2)), "CB")
    assert gg.dims(gg.exp(x) * 2 + x) == "CB"
    assert gg.dims(gg.sum(x, axis=0, keepdims=True)) == "CB"
    assert gg.dims(gg.sum(x, axis=0)) == "B"
    assert gg.dims(gg.sum(x)) == ""


def test_operators_broadcast_with_scalars_and_arrays():
    x = gg.dlarray([[1.0, 2.0], [3.0, 4.0]])
    a = np.array([10.0, 20.0])
    np.testing.assert_allclose((x + a).numpy(), x.numpy() + a)
    np.testing.assert_allclose((a + x).numpy(), x.numpy() + a)
    np.testing.assert_allclose((2 - x).numpy(), 2 - x.numpy())
    np.testing.assert_allclose((2 / x).numpy(), 2 / x.numpy())
    np.testing.assert_allclose((x**2).numpy(), x.numpy() ** 2)
    np.testing.assert_allclose((2**x).numpy(), 2 ** x.numpy())
    np.testing.assert_allclose((x @ x).numpy(), x.numpy() @ x.numpy())
    np.testing.assert_allclose((-x).numpy(), -x.numpy())
    assert (x > 2).numpy().tolist() == [[False, False], [True, True]]
    assert (x == x).numpy().all()
    with pytest.raises(ValueError, match="do not broadcast"):
        x + gg.dlarray([1.0, 2.0, 3.0])


def test_numpy_interop_and_scalars():
    x = gg.dlarray([[1.0, 2.0]])
    assert isinstance(np.asarray(x), np.ndarray)
    assert np.asarray(x).shape == (1, 2)
    assert float(gg.dlarray(3.5)) == 3.5
    assert gg.dlarray([7.0]).item() == 7.0
    assert gg.dlarray([7.0]).asscalar() == 7.0
    assert len(x) == 1 and x.ndim == 2 and x.size == 2
    assert x.T.shape == (2, 1)
    assert isinstance(gg.extractdata(x), gg.backend.xp().ndarray)  # the device's raw array
    with pytest.raises(TypeError, match="extractdata"):
        gg.extractdata(np.ones(2))
    with pytest.raises(ValueError, match="one-element"):
        x.item()
    y = pickle.loads(pickle.dumps(gg.dlarray(np.ones((2, 3)), "SB")))
    assert gg.dims(y) == "SB"


def test_repr_is_matlab_like():
    text = repr(gg.dlarray(np.ones((2, 3), np.float32), "CB"))
    assert text.startswith(f"2x3 dlarray (float32, format 'CB', {gg.device()})")
    assert "1." in text


def test_indexing_and_assignment():
    x = gg.dlarray(np.arange(6.0).reshape(2, 3))
    assert x[1, 2].item() == 5.0
    assert x[:, gg.dlarray([0, 2])].numpy().tolist() == [[0.0, 2.0], [3.0, 5.0]]
    assert x[x > 3].numpy().tolist() == [4.0, 5.0]
    x[0, :] = 7.0
    assert x.numpy()[0].tolist() == [7.0, 7.0, 7.0]
    x[np.array([1]), 1] = gg.dlarray([-1.0])
    assert x.numpy()[1, 1] == -1.0
    with pytest.raises(IndexError, match="float"):
        x[1.5]


def test_indexed_assignment_is_differentiable_inside_a_trace():
    def f(x, v):
        y = x * 1.0
        y[1] = v * 3.0
        loss = gg.sum(y * y)
        return gg.dlgradient(loss, x, v)

    gx, gv = gg.dlfeval(f, gg.dlarray([1.0, 2.0, 3.0]), gg.dlarray(2.0))
    np.testing.assert_allclose(gx.numpy(), [2.0, 0.0, 6.0])
    np.testing.assert_allclose(gv.numpy(), 2 * 6.0 * 3.0)


def test_creation_functions():
    assert gg.zeros((2, 3)).shape == (2, 3)
    assert gg.ones(4).numpy().sum() == 4
    assert gg.full((2,), 3.0).numpy().tolist() == [3.0, 3.0]
    assert gg.arange(3).numpy().tolist() == [0.0, 1.0, 2.0]
    assert gg.linspace(0, 1, 3).numpy().tolist() == [0.0, 0.5, 1.0]
    a, b = gg.meshgrid(gg.arange(2), gg.arange(3))
    assert a.shape == (3, 2) and b.shape == (3, 2)
    x = gg.dlarray(np.ones((2, 2), np.float32), "CB")
    assert gg.zeros_like(x).dtype == np.float32 and gg.dims(gg.ones_like(x)) == "CB"
    gg.random.seed(3)
    r1 = gg.random.normal(shape=(3,)).numpy()
    gg.random.seed(3)
    r2 = gg.random.normal(shape=(3,)).numpy()
    np.testing.assert_array_equal(r1, r2)
    u = gg.random.uniform(0, 1, shape=(100,)).numpy()
    assert 0 <= u.min() and u.max() < 1


def test_math_reductions_shapes_match_numpy(rng):
    a = rng.standard_normal((3, 4))
    x = gg.dlarray(a)
    for name, ref in [
        ("exp", np.exp),
        ("sin", np.sin),
        ("tanh", np.tanh),
        ("abs", np.abs),
        ("sign", np.sign),
    ]:
        np.testing.assert_allclose(getattr(gg, name)(x).numpy(), ref(a))
    np.testing.assert_allclose(gg.sum(x, axis=1).numpy(), a.sum(1))
    np.testing.assert_allclose(gg.prod(x, axis=0).numpy(), a.prod(0))
    np.testing.assert_allclose(gg.max(x).numpy(), a.max())
    np.testing.assert_allclose(gg.norm(x).numpy(), np.linalg.norm(a))
    np.testing.assert_allclose(x.mean(axis=0).numpy(), a.mean(0))
    np.testing.assert_allclose(gg.logsumexp(x, axis=1).numpy(), np.log(np.exp(a).sum(1)))
    np.testing.assert_allclose(gg.concatenate([x, x], axis=0).numpy(), np.concatenate([a, a]))
    np.testing.assert_allclose(gg.stack([x, x]).numpy(), np.stack([a, a]))
    np.testing.assert_allclose(gg.flip(x, 0).numpy(), np.flip(a, 0))
    np.testing.assert_allclose(gg.clip(x, -0.5, 0.5).numpy(), np.clip(a, -0.5, 0.5))
    np.testing.assert_allclose(gg.dot(x, x.T).numpy(), a @ a.T)
    np.testing.assert_allclose(gg.atan2(x, x + 3).numpy(), np.arctan2(a, a + 3))
    assert gg.flatten(x).shape == (12,)
    assert gg.squeeze(gg.expand_dims(x, 1)).shape == (3, 4)
    assert gg.broadcast_to(gg.dlarray([1.0]), (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="inner dimensions"):
        gg.matmul(x, x)
    with pytest.raises(ValueError, match="cannot reshape"):
        gg.reshape(x, (5, 5))


class _FakeDeviceArray(np.ndarray):
    """Stands for a CuPy array (gpugrad recognizes device arrays by their module)."""


_FakeDeviceArray.__module__ = "cupy._fake"


def test_mixing_devices_is_a_clear_error():
    gpu = make(np.ones(3).view(_FakeDeviceArray))
    with pytest.raises(gg.DeviceError, match="different devices"):
        gg.dlarray(np.ones(3)) + gpu
