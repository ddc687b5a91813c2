"""gg.value_and_grad, elementwise_grad, jvp, hvp and hessian, checked against
central finite differences in float64."""

from __future__ import annotations

import numpy as np
import pytest

import gpugrad as gg

RNG = np.random.default_rng(7)


def fd_grad(f, x, eps=1e-6):
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (float(f(xp)) - float(f(xm))) / (2 * eps)
    return g


def fd_jac(f, x, eps=1e-6):
    """Jacobian of the array function ``f`` (NumPy in, NumPy out): shape out + in."""
    x = np.array(x, dtype=np.float64)
    out = np.asarray(f(x))
    J = np.zeros(out.shape + x.shape)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        J[(Ellipsis,) + i] = (np.asarray(f(xp)) - np.asarray(f(xm))) / (2 * eps)
    return J


def np_f(x):
    return np.sum(np.sin(x) * x**2) + np.prod(x[:2])


def gg_f(x):
    return gg.sum(gg.sin(x) * x**2) + gg.prod(x[:2])


X0 = RNG.standard_normal(3)


def test_value_and_grad_matches_finite_differences():
    v, g = gg.value_and_grad(gg_f)(gg.dlarray(X0))
    assert float(v) == pytest.approx(np_f(X0))
    np.testing.assert_allclose(g.numpy(), fd_grad(np_f, X0), rtol=1e-6, atol=1e-8)


def test_value_and_grad_argnums_and_aux():
    def f(x, y, scale):
        loss = gg.sum(x * y) * scale
        return loss, {"loss": loss, "xy": x * y}

    x, y = gg.dlarray([1.0, 2.0]), gg.dlarray([3.0, -1.0])
    (v, aux), (gx, gy) = gg.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, y, 2.0)
    assert float(v) == 2.0 and not aux["loss"].traced and not aux["xy"].traced
    assert aux["xy"].numpy().tolist() == [3.0, -2.0]
    assert gx.numpy().tolist() == [6.0, -2.0] and gy.numpy().tolist() == [2.0, 4.0]
    (_, _), gs = gg.value_and_grad(f, argnums=2, has_aux=True)(x, y, 2.0)
    assert float(gs) == 1.0
    with pytest.raises(TypeError, match="pair"):
        gg.value_and_grad(lambda x: x * x, has_aux=True)(1.0)


def test_elementwise_grad():
    x0 = np.array([-1.5, 0.0, 0.7, 2.0])
    g = gg.elementwise_grad(lambda x: gg.tanh(x) * x)(x0)
    np.testing.assert_allclose(g.numpy(), np.tanh(x0) + x0 * (1 - np.tanh(x0) ** 2), rtol=1e-12)
    g2 = gg.elementwise_grad(gg.elementwise_grad(gg.sin))(x0)  # composes
    np.testing.assert_allclose(g2.numpy(), -np.sin(x0), rtol=1e-12, atol=1e-15)


def np_vec(x):
    return np.stack([np.sin(x[0]) * x[1], x[1] ** 3, np.exp(x[0] - x[2])])


def gg_vec(x):
    return gg.stack([gg.sin(x[0]) * x[1], x[1] ** 3, gg.exp(x[0] - x[2])])


def test_jvp_matches_jacobian_times_tangent():
    t0 = RNG.standard_normal(3)
    y, jt = gg.jvp(gg_vec, (gg.dlarray(X0),), (gg.dlarray(t0),))
    np.testing.assert_allclose(y.numpy(), np_vec(X0), rtol=1e-12)
    np.testing.assert_allclose(jt.numpy(), fd_jac(np_vec, X0) @ t0, rtol=1e-6, atol=1e-8)


def test_jvp_two_arguments_and_tuple_output():
    a0, b0 = RNG.standard_normal((2, 3)), RNG.standard_normal(3)
    ta, tb = RNG.standard_normal((2, 3)), RNG.standard_normal(3)

    def f(a, b):
        return a * b, gg.sum(gg.tanh(a), axis=0) - b * b

    (y1, y2), (j1, j2) = gg.jvp(f, (a0, b0), (ta, tb))
    eps = 1e-6
    p = f(gg.dlarray(a0 + eps * ta), gg.dlarray(b0 + eps * tb))
    m = f(gg.dlarray(a0 - eps * ta), gg.dlarray(b0 - eps * tb))
    np.testing.assert_allclose(j1.numpy(), (p[0].numpy() - m[0].numpy()) / (2 * eps), rtol=1e-6)
    np.testing.assert_allclose(j2.numpy(), (p[1].numpy() - m[1].numpy()) / (2 * eps), rtol=1e-6)
    np.testing.assert_allclose(y1.numpy(), a0 * b0)


def test_jvp_of_a_constant_function_and_bad_input():
    y, t = gg.jvp(lambda x: gg.dlarray([1.0, 2.0]), (gg.dlarray([3.0]),), (gg.dlarray([1.0]),))
    assert t.numpy().tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        gg.jvp(gg.sin, (gg.dlarray([1.0, 2.0]),), (gg.dlarray([1.0]),))
    with pytest.raises(TypeError, match="tuple"):
        gg.jvp(gg.sin, gg.dlarray([1.0]), gg.dlarray([1.0]))


def test_jvp_is_differentiable_again():
    # d/dx of (J t) for f = x**3 (J t = 3 x**2 t) is 6 x t
    def jt_sum(x):
        return gg.sum(gg.jvp(lambda z: z**3, (x,), (gg.dlarray([1.0, 2.0]),))[1])

    g = gg.gradient(jt_sum)(gg.dlarray([0.5, -1.0]))
    np.testing.assert_allclose(g.numpy(), [6 * 0.5 * 1.0, 6 * -1.0 * 2.0], rtol=1e-12)


def test_hvp_and_hessian_match_finite_differences():
    H_fd = fd_jac(lambda x: fd_grad(np_f, x, eps=1e-5), X0, eps=1e-5)
    H = gg.hessian(gg_f)(gg.dlarray(X0))
    assert H.shape == (3, 3)
    np.testing.assert_allclose(H.numpy(), H_fd, rtol=1e-4, atol=1e-6)
    v = RNG.standard_normal(3)
    hv = gg.hvp(gg_f, gg.dlarray(X0), gg.dlarray(v))
    np.testing.assert_allclose(hv.numpy(), H.numpy() @ v, rtol=1e-10, atol=1e-12)


def test_hessian_blocks_and_matrix_argument():
    def f(W, b):
        return gg.sum(gg.tanh(W @ b) ** 2)

    W0, b0 = RNG.standard_normal((2, 3)), RNG.standard_normal(3)
    H = gg.hessian(f, argnums=(0, 1))(W0, b0)
    assert H[0][0].shape == (2, 3, 2, 3) and H[0][1].shape == (2, 3, 3)
    assert H[1][0].shape == (3, 2, 3) and H[1][1].shape == (3, 3)

    def np_fw(flat):
        W, b = flat[:6].reshape(2, 3), flat[6:]
        return np.sum(np.tanh(W @ b) ** 2)

    flat0 = np.concatenate([W0.ravel(), b0])
    H_fd = fd_jac(lambda z: fd_grad(np_fw, z, eps=1e-5), flat0, eps=1e-5)
    np.testing.assert_allclose(H[0][0].numpy().reshape(6, 6), H_fd[:6, :6], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(H[0][1].numpy().reshape(6, 3), H_fd[:6, 6:], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(H[1][1].numpy(), H_fd[6:, 6:], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(H[1][0].numpy().reshape(3, 6), H_fd[6:, :6], rtol=1e-4, atol=1e-6)


def test_hessian_of_linear_and_scalar_functions():
    H = gg.hessian(lambda x: gg.sum(3 * x))(gg.dlarray([1.0, 2.0]))
    assert H.numpy().tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert float(gg.hessian(lambda x: x**4)(2.0)) == pytest.approx(48.0)


def test_transforms_inside_dlfeval():
    def f(x):
        hv = gg.hvp(lambda z: gg.sum(z**3), x, gg.dlarray([1.0, 1.0]))
        y = gg.sum(hv * x)  # = 6 * sum(x**2)
        return gg.dlgradient(y, x)

    g = gg.dlfeval(f, gg.dlarray([1.0, -2.0]))
    np.testing.assert_allclose(g.numpy(), [12.0, -24.0])
