"""Every primitive against central finite differences in float64, first and second
order. The meta-test at the end (tests/test_zz_registry.py) fails when a registered
primitive was not exercised by any check."""

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.testing import check_gradient

R = np.random.default_rng(7)


def pos(*shape):
    return R.uniform(0.5, 1.5, shape)


def rnd(*shape):
    return R.standard_normal(shape)


def cplx(*shape):
    return R.standard_normal(shape) + 1j * R.standard_normal(shape)


W423 = rnd(4, 2, 3)


def _setitem_fn(x, v):
    y = x * 1.0
    y[1:3] = v * 2.0
    return y


def _setitem_fancy(x):
    y = x * 1.0
    y[np.array([0, 2])] = x[np.array([1, 1])] ** 2
    return y


CASES = {
    "negative": (lambda x: -x, [rnd(3)]),
    "exp": (gg.exp, [rnd(3)]),
    "exp_complex": (gg.exp, [cplx(3)]),
    "log": (gg.log, [pos(3)]),
    "log_complex": (gg.log, [cplx(3)]),
    "log1p": (gg.log1p, [pos(3)]),
    "expm1": (gg.expm1, [rnd(3)]),
    "sqrt": (gg.sqrt, [pos(3)]),
    "sin": (gg.sin, [rnd(3)]),
    "sin_complex": (gg.sin, [cplx(2)]),
    "cos": (gg.cos, [rnd(3)]),
    "tan": (gg.tan, [R.uniform(-1, 1, 3)]),
    "asin": (gg.asin, [R.uniform(-0.8, 0.8, 3)]),
    "acos": (gg.acos, [R.uniform(-0.8, 0.8, 3)]),
    "atan": (gg.atan, [rnd(3)]),
    "sinh": (gg.sinh, [rnd(3)]),
    "cosh": (gg.cosh, [rnd(3)]),
    "tanh": (gg.tanh, [rnd(3)]),
    "sigmoid": (gg.sigmoid, [rnd(4) * 3]),
    "sign": (lambda x: gg.sign(x) * x**2, [pos(3)]),
    "abs": (gg.abs, [np.array([-1.5, 0.7, 2.0])]),
    "abs_complex": (gg.abs, [cplx(3)]),
    "real": (lambda z: gg.real(z) ** 2, [cplx(3)]),
    "imag": (lambda z: gg.imag(z) ** 2, [cplx(3)]),
    "conj": (lambda z: gg.conj(z) * z * (1 + 2j), [cplx(3)]),
    "angle": (gg.angle, [cplx(3)]),
    "add": (lambda a, b: a + b, [rnd(2, 3), rnd(3)]),
    "subtract": (lambda a, b: a - b, [rnd(2, 1), rnd(3)]),
    "multiply": (lambda a, b: a * b, [rnd(2, 3), rnd(2, 1)]),
    "multiply_complex": (lambda a, b: a * b, [cplx(3), cplx(3)]),
    "divide": (lambda a, b: a / b, [rnd(3), pos(3)]),
    "power": (lambda a, b: a**b, [pos(3), rnd(3)]),
    "power_const": (lambda a: a**3.5 + a**2, [pos(3)]),
    "rpow": (lambda a: 2.0**a, [rnd(3)]),
    "atan2": (gg.atan2, [rnd(3), pos(3)]),
    "maximum": (gg.maximum, [rnd(4), rnd(4)]),
    "minimum": (gg.minimum, [rnd(4), rnd(4)]),
    "where": (lambda a, b: gg.where(a > 0, a * b, b**2), [rnd(5), rnd(5)]),
    "clip": (lambda a: gg.clip(a, -0.5, 0.5) * a, [np.array([-1.0, -0.2, 0.3, 0.9])]),
    "sum": (lambda x: gg.sum(x**2, axis=1), [rnd(2, 3)]),
    "sum_keepdims": (lambda x: gg.sum(x**2, axis=(0, 2), keepdims=True), [rnd(2, 3, 2)]),
    "mean": (lambda x: gg.mean(x**2, axis=0), [rnd(3, 2)]),
    "prod": (lambda x: gg.prod(x, axis=1), [rnd(2, 3)]),
    "prod_zeros": (lambda x: gg.prod(x), [np.array([0.5, 0.0, 2.0, 1.5])]),
    "prod_two_zeros": (
        lambda x: gg.prod(x, axis=0),
        [np.array([[0.0, 1.0], [0.0, 2.0], [3.0, 4.0]])],
    ),
    "max": (lambda x: gg.max(x, axis=0) ** 2, [rnd(3, 4)]),
    "min": (lambda x: gg.min(x) ** 2, [rnd(5)]),
    "norm": (lambda x: gg.norm(x), [rnd(4)]),
    "norm_complex": (lambda x: gg.norm(x), [cplx(3)]),
    "logsumexp": (lambda x: gg.logsumexp(x, axis=1), [rnd(2, 3)]),
    "cumsum": (lambda x: gg.cumsum(x, axis=1) ** 2, [rnd(2, 3)]),
    "reshape": (lambda x: gg.reshape(x, (3, 2)) ** 2, [rnd(2, 3)]),
    "transpose": (lambda x: gg.transpose(x, (2, 0, 1)) * W423, [rnd(2, 3, 4)]),
    "broadcast_to": (lambda x: gg.broadcast_to(x, (3, 2)) ** 2, [rnd(2)]),
    "concatenate": (lambda a, b: gg.concatenate([a, b**2], axis=1), [rnd(2, 2), rnd(2, 3)]),
    "stack": (lambda a, b: gg.stack([a, a * b]), [rnd(3), rnd(3)]),
    "flip": (lambda x: gg.flip(x, 1) * x, [rnd(2, 3)]),
    "astype_complex": (lambda x: gg.astype(x, np.complex128) * (1 + 1j), [rnd(3)]),
    "getitem": (lambda x: x[1:, ::2] ** 2, [rnd(3, 4)]),
    "getitem_fancy": (lambda x: x[np.array([0, 0, 2])] ** 2, [rnd(3)]),
    "getitem_bool": (lambda x: x[x > 0] ** 3, [np.array([0.5, -1.0, 2.0])]),
    "setitem": (_setitem_fn, [rnd(4), rnd(2)]),
    "setitem_fancy": (_setitem_fancy, [rnd(3)]),
    "matmul": (lambda a, b: a @ b, [rnd(2, 3), rnd(3, 4)]),
    "matmul_batched": (lambda a, b: a @ b, [rnd(2, 2, 3), rnd(3, 2)]),
    "matmul_vec": (lambda a, b: a @ b, [rnd(3), rnd(3, 2)]),
    "matmul_complex": (lambda a, b: a @ b, [cplx(2, 2), cplx(2, 3)]),
    "dot": (gg.dot, [rnd(3), rnd(3)]),
    "dot_nd": (gg.dot, [rnd(2, 3), rnd(2, 3, 2)]),
    "relu": (lambda x: gg.relu(x) ** 2, [np.array([-1.0, 0.5, 2.0, -0.3])]),
    "squeeze_expand": (lambda x: gg.expand_dims(gg.squeeze(x), 0) ** 2, [rnd(1, 3)]),
    "take_along_axis": (lambda x: gg.take_along_axis(x, np.array([[1], [0]]), 1) ** 2, [rnd(2, 3)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("order", [1, 2])
def test_primitive_gradient(name, order):
    fn, args = CASES[name]
    check_gradient(fn, *args, order=order)


def test_relu_derivative_at_zero_and_eps():
    def f(x):
        y = gg.sum(gg.relu(x))
        return gg.dlgradient(y, x)

    g = gg.dlfeval(f, gg.dlarray([0.0, np.finfo(float).eps, -0.0]))
    assert g.numpy().tolist() == [0.0, 1.0, 0.0]


def test_check_gradient_catches_a_wrong_derivative():
    bad = gg.ops.Primitive(
        "bad_square",
        lambda x: x * x,
        lambda g, ans, x: (g * x * 3,),
        save=(0,),
        register=False,
    )
    with pytest.raises(AssertionError, match="finite differences"):
        check_gradient(lambda x: gg.ops.bind(bad, (x,)), [1.0, 2.0])
