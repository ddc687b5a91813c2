"""Linear algebra: the products, einsum, matrix slicing and ``gg.linalg`` against NumPy
and against finite differences in float64 (first and second order); the matrix VJPs
against PyTorch's."""

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.testing import check_gradient
from tests._torch import torch

R = np.random.default_rng(5)


def rnd(*shape):
    return R.standard_normal(shape)


def cplx(*shape):
    return rnd(*shape) + 1j * rnd(*shape)


def spd(n, batch=()):
    x = rnd(*batch, n, n)
    return x @ np.swapaxes(x, -1, -2) + n * np.eye(n)


def well(n, batch=()):
    return rnd(*batch, n, n) + 2 * n**0.5 * np.eye(n)


def sym(x):
    return (x + gg.transpose(x)) * 0.5


def sym_np(x):
    return (x + x.T) * 0.5


def sym_gram(x):
    # a symmetric positive definite function of any square x
    return x @ gg.transpose(x) + 3.0 * gg.dlarray(np.eye(x.shape[-1]))


def sym_gram_np(x):
    return x @ x.T + 3.0 * np.eye(x.shape[-1])


CASES = {
    # ---------------------------------------------------------------- products
    "outer": (gg.outer, np.outer, [rnd(3), rnd(2, 2)]),
    "inner": (gg.inner, np.inner, [rnd(2, 3), rnd(4, 3)]),
    "inner_scalar": (gg.inner, np.inner, [rnd(), rnd(3)]),
    "vdot": (gg.vdot, np.vdot, [cplx(3), cplx(3)]),
    "tensordot": (gg.tensordot, np.tensordot, [rnd(2, 3, 4), rnd(3, 4, 2)]),
    "tensordot_axes": (
        lambda a, b: gg.tensordot(a, b, axes=([0, 2], [2, 1])),
        lambda a, b: np.tensordot(a, b, axes=([0, 2], [2, 1])),
        [rnd(2, 3, 4), rnd(3, 4, 2)],
    ),
    "tensordot_0": (
        lambda a, b: gg.tensordot(a, b, 0),
        lambda a, b: np.tensordot(a, b, 0),
        [rnd(2), rnd(3)],
    ),
    "kron": (gg.kron, np.kron, [rnd(2, 3), rnd(2, 2)]),
    "kron_mixed_ndim": (gg.kron, np.kron, [rnd(3), rnd(2, 2)]),
    "cross": (gg.cross, np.cross, [rnd(4, 3), rnd(3)]),
    "cross_axis": (
        lambda a, b: gg.cross(a, b, axis=0),
        lambda a, b: np.cross(a, b, axis=0),
        [rnd(3, 2), rnd(3, 2)],
    ),
    "einsum_matmul": (
        lambda a, b: gg.einsum("ij,jk->ik", a, b),
        lambda a, b: np.einsum("ij,jk->ik", a, b),
        [rnd(2, 3), rnd(3, 4)],
    ),
    "einsum_implicit": (
        lambda a, b: gg.einsum("ba,ca", a, b),
        lambda a, b: np.einsum("ba,ca", a, b),
        [rnd(2, 3), rnd(4, 3)],
    ),
    "einsum_trace": (lambda a: gg.einsum("ii", a), lambda a: np.einsum("ii", a), [rnd(3, 3)]),
    "einsum_diag": (lambda a: gg.einsum("ii->i", a), lambda a: np.einsum("ii->i", a), [rnd(3, 3)]),
    "einsum_sum_out": (
        lambda a, b: gg.einsum("ijk,k->i", a, b),
        lambda a, b: np.einsum("ijk,k->i", a, b),
        [rnd(2, 3, 2), rnd(2)],
    ),
    "einsum_ellipsis_broadcast": (
        lambda a, b: gg.einsum("...ij,...jk->...ik", a, b),
        lambda a, b: np.einsum("...ij,...jk->...ik", a, b),
        [rnd(2, 1, 2, 3), rnd(4, 3, 2)],
    ),
    "einsum_three": (
        lambda a, b, c: gg.einsum("i,ij,j->", a, b, c),
        lambda a, b, c: np.einsum("i,ij,j->", a, b, c),
        [rnd(3), rnd(3, 2), rnd(2)],
    ),
    "einsum_size1_label": (
        lambda a, b: gg.einsum("i,i->i", a, b),
        lambda a, b: np.einsum("i,i->i", a, b),
        [rnd(1), rnd(3)],
    ),
    "einsum_complex": (
        lambda a, b: gg.einsum("ij,j", a, b),
        lambda a, b: np.einsum("ij,j", a, b),
        [cplx(2, 3), cplx(3)],
    ),
    "einsum_repeated_in_two": (
        lambda a: gg.einsum("iij->j", a),
        lambda a: np.einsum("iij->j", a),
        [rnd(2, 2, 3)],
    ),
    # ---------------------------------------------------------------- matrix slicing
    "trace": (gg.trace, np.trace, [rnd(3, 4)]),
    "trace_offset_axes": (
        lambda a: gg.trace(a, -1, 2, 0),
        lambda a: np.trace(a, -1, 2, 0),
        [rnd(3, 2, 4)],
    ),
    "diagonal": (lambda a: gg.diagonal(a, 1), lambda a: np.diagonal(a, 1), [rnd(3, 4)]),
    "diagonal_batched": (
        lambda a: gg.diagonal(a, 0, 1, 2),
        lambda a: np.diagonal(a, 0, 1, 2),
        [rnd(2, 3, 3)],
    ),
    "diag_1d": (lambda v: gg.diag(v, -1), lambda v: np.diag(v, -1), [rnd(3)]),
    "diag_2d": (gg.diag, np.diag, [rnd(3, 2)]),
    "diagflat": (gg.diagflat, np.diagflat, [rnd(2, 2)]),
    "tril": (gg.tril, np.tril, [rnd(3, 4)]),
    "triu_k": (lambda m: gg.triu(m, 1), lambda m: np.triu(m, 1), [rnd(2, 3, 3)]),
    "method_trace_diagonal": (
        lambda a: a.trace() + a.diagonal(1).sum(),
        lambda a: a.trace() + a.diagonal(1).sum(),
        [rnd(3, 3)],
    ),
    # ---------------------------------------------------------------- gg.linalg
    "inv": (gg.linalg.inv, np.linalg.inv, [well(3)]),
    "inv_batched": (gg.linalg.inv, np.linalg.inv, [well(2, (2,))]),
    "inv_complex": (gg.linalg.inv, np.linalg.inv, [cplx(2, 2) + 3 * np.eye(2)]),
    "solve_matrix": (gg.linalg.solve, np.linalg.solve, [well(3), rnd(3, 2)]),
    "solve_vector": (gg.linalg.solve, np.linalg.solve, [well(3), rnd(3)]),
    "solve_batched_broadcast": (gg.linalg.solve, np.linalg.solve, [well(3, (2,)), rnd(3, 1)]),
    "solve_batched_vector": (gg.linalg.solve, np.linalg.solve, [well(2, (3,)), rnd(2)]),
    "solve_complex": (gg.linalg.solve, np.linalg.solve, [cplx(2, 2) + 3 * np.eye(2), cplx(2)]),
    "det": (gg.linalg.det, np.linalg.det, [well(3)]),
    "det_batched": (gg.linalg.det, np.linalg.det, [rnd(2, 2, 2)]),
    "det_complex": (gg.linalg.det, np.linalg.det, [cplx(2, 2)]),
    "slogdet": (
        lambda a: gg.linalg.slogdet(a)[1],
        lambda a: np.linalg.slogdet(a)[1],
        [rnd(2, 3, 3)],
    ),
    "slogdet_sign": (
        lambda a: gg.linalg.slogdet(a)[0] * gg.linalg.slogdet(a)[1],
        lambda a: np.linalg.slogdet(a)[0] * np.linalg.slogdet(a)[1],
        [rnd(3, 3)],
    ),
    "slogdet_complex": (
        lambda a: gg.linalg.slogdet(a)[0] * gg.linalg.slogdet(a)[1],
        lambda a: np.linalg.slogdet(a)[0] * np.linalg.slogdet(a)[1],
        [cplx(2, 2)],
    ),
    "cholesky": (
        lambda x: gg.linalg.cholesky(sym_gram(x)),
        lambda x: np.linalg.cholesky(sym_gram_np(x)),
        [rnd(3, 3)],
    ),
    "cholesky_batched": (
        lambda x: gg.linalg.cholesky(x @ gg.swapaxes(x, -1, -2) + gg.dlarray(np.eye(2))),
        lambda x: np.linalg.cholesky(x @ np.swapaxes(x, -1, -2) + np.eye(2)),
        [rnd(2, 2, 2)],
    ),
    "qr_reduced_tall": (
        lambda a: gg.linalg.qr(a)[0] * 2 + gg.sum(gg.linalg.qr(a)[1]),
        lambda a: np.linalg.qr(a)[0] * 2 + np.sum(np.linalg.qr(a)[1]),
        [rnd(4, 3)],
    ),
    "qr_square_batched": (
        lambda a: gg.linalg.qr(a)[1],
        lambda a: np.linalg.qr(a)[1],
        [rnd(2, 3, 3)],
    ),
    "qr_r": (lambda a: gg.linalg.qr(a, mode="r"), lambda a: np.linalg.qr(a, mode="r"), [rnd(3, 2)]),
    "svd_s": (
        lambda a: gg.linalg.svd(a, compute_uv=False),
        lambda a: np.linalg.svd(a, compute_uv=False),
        [rnd(3, 4)],
    ),
    "svd_u_tall": (
        lambda a: gg.linalg.svd(a, full_matrices=False)[0] ** 2,
        lambda a: np.linalg.svd(a, full_matrices=False)[0] ** 2,
        [rnd(4, 2)],
    ),
    "svd_vh_wide": (
        lambda a: gg.linalg.svd(a, full_matrices=False)[2] ** 2,
        lambda a: np.linalg.svd(a, full_matrices=False)[2] ** 2,
        [rnd(2, 4)],
    ),
    "svd_reconstruct_weighted": (
        lambda a: (lambda u, s, vh: (u * s[..., None, :]) @ (vh**3))(
            *gg.linalg.svd(a, full_matrices=False)
        ),
        lambda a: (lambda u, s, vh: (u * s[..., None, :]) @ (vh**3))(
            *np.linalg.svd(a, full_matrices=False)
        ),
        [rnd(2, 3, 3)],
    ),
    "svdvals": (gg.linalg.svdvals, np.linalg.svdvals, [rnd(3, 2)]),
    "eigh_values": (
        lambda x: gg.linalg.eigh(sym(x))[0],
        lambda x: np.linalg.eigh(sym_np(x))[0],
        [rnd(3, 3)],
    ),
    "eigh_vectors_gauge_free": (
        lambda x: (lambda w, v: (v * w[None, :] ** 2) @ gg.transpose(v))(*gg.linalg.eigh(sym(x))),
        lambda x: (lambda w, v: (v * w[None, :] ** 2) @ v.T)(*np.linalg.eigh(sym_np(x))),
        [rnd(4, 4)],
    ),
    "eigh_vectors_squared": (
        lambda x: gg.linalg.eigh(sym(x))[1] ** 2,
        lambda x: np.linalg.eigh(sym_np(x))[1] ** 2,
        [rnd(3, 3)],
    ),
    "eigvalsh_upper": (
        lambda x: gg.linalg.eigvalsh(sym(x), UPLO="U"),
        lambda x: np.linalg.eigvalsh(sym_np(x), UPLO="U"),
        [rnd(3, 3)],
    ),
    "norm_default": (gg.linalg.norm, np.linalg.norm, [rnd(2, 3)]),
    "norm_fro_keepdims": (
        lambda x: gg.linalg.norm(x, "fro", axis=(0, 2), keepdims=True),
        lambda x: np.linalg.norm(x, "fro", axis=(0, 2), keepdims=True),
        [rnd(2, 3, 2)],
    ),
    "norm_nuc": (
        lambda x: gg.linalg.norm(x, "nuc"),
        lambda x: np.linalg.norm(x, "nuc"),
        [rnd(3, 2)],
    ),
    "norm_2_matrix": (lambda x: gg.linalg.norm(x, 2), lambda x: np.linalg.norm(x, 2), [rnd(3, 3)]),
    "norm_inf_matrix": (
        lambda x: gg.linalg.norm(x, np.inf),
        lambda x: np.linalg.norm(x, np.inf),
        [rnd(3, 3)],
    ),
    "norm_1_matrix": (
        lambda x: gg.linalg.norm(x, -1),
        lambda x: np.linalg.norm(x, -1),
        [rnd(3, 3)],
    ),
    "norm_vector_axis": (
        lambda x: gg.linalg.norm(x, axis=1),
        lambda x: np.linalg.norm(x, axis=1),
        [rnd(2, 3)],
    ),
    "norm_vector_p": (lambda x: gg.linalg.norm(x, 3), lambda x: np.linalg.norm(x, 3), [rnd(4)]),
    "norm_vector_inf": (
        lambda x: gg.linalg.norm(x, -np.inf),
        lambda x: np.linalg.norm(x, -np.inf),
        [rnd(4)],
    ),
    "norm_complex": (gg.linalg.norm, np.linalg.norm, [cplx(3)]),
    "matrix_power": (
        lambda a: gg.linalg.matrix_power(a, 3),
        lambda a: np.linalg.matrix_power(a, 3),
        [rnd(2, 2)],
    ),
    "matrix_power_neg": (
        lambda a: gg.linalg.matrix_power(a, -2),
        lambda a: np.linalg.matrix_power(a, -2),
        [well(2)],
    ),
    "multi_dot": (
        lambda a, b, c: gg.linalg.multi_dot([a, b, c]),
        lambda a, b, c: np.linalg.multi_dot([a, b, c]),
        [rnd(2, 3), rnd(3, 3), rnd(3, 2)],
    ),
    "pinv": (gg.linalg.pinv, np.linalg.pinv, [rnd(3, 2)]),
    "cond": (gg.linalg.cond, np.linalg.cond, [well(3)]),
    "linalg_trace_diagonal": (
        lambda a: gg.linalg.trace(a) + gg.sum(gg.linalg.diagonal(a, 1)),
        lambda a: np.linalg.trace(a) + np.sum(np.linalg.diagonal(a, offset=1)),
        [rnd(2, 3, 3)],
    ),
    "linalg_cross_vecdot": (
        lambda a, b: gg.linalg.vecdot(gg.linalg.cross(a, b), a + b),
        lambda a, b: np.linalg.vecdot(np.linalg.cross(a, b), a + b),
        [rnd(2, 3), rnd(2, 3)],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_match_numpy(name):
    fn, ref, args = CASES[name]
    got = fn(*[gg.dlarray(a) for a in args])
    want = ref(*[np.array(a) for a in args])
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("order", [1, 2])
def test_gradients_match_finite_differences(name, order):
    fn, _, args = CASES[name]
    check_gradient(fn, *args, order=order, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- errors


def test_errors_name_the_function():
    with pytest.raises(np.linalg.LinAlgError, match="linalg.inv: expected a square"):
        gg.linalg.inv(gg.dlarray(np.ones((2, 3))))
    with pytest.raises(ValueError, match="linalg.solve"):
        gg.linalg.solve(gg.dlarray(np.eye(2)), gg.dlarray(np.ones(3)))
    with pytest.raises(np.linalg.LinAlgError):
        gg.linalg.inv(gg.dlarray(np.zeros((2, 2))))
    with pytest.raises(ValueError, match="einsum: the subscripts name 2"):
        gg.einsum("ij,jk", gg.dlarray(np.ones((2, 2))))
    with pytest.raises(ValueError, match="cross"):
        gg.cross(gg.dlarray(np.ones(4)), gg.dlarray(np.ones(4)))
    with pytest.raises(ValueError, match="linalg.qr: mode"):
        gg.linalg.qr(gg.dlarray(np.eye(2)), mode="economic")


def test_gradients_that_do_not_exist_raise_clearly():
    wide = gg.dlarray(rnd(2, 3))
    with pytest.raises(NotImplementedError, match="linalg.qr"):
        gg.gradient(lambda a: gg.sum(gg.linalg.qr(a)[0]))(wide)
    with pytest.raises(NotImplementedError, match="full_matrices=False"):
        gg.gradient(lambda a: gg.sum(gg.linalg.svd(a)[0]))(gg.dlarray(rnd(3, 2)))
    # only the singular values of a full_matrices=True SVD: fine
    g = gg.gradient(lambda a: gg.sum(gg.linalg.svd(a)[1]))(gg.dlarray(rnd(3, 2)))
    assert np.isfinite(g.numpy()).all()
    with pytest.raises(NotImplementedError, match="complex"):
        gg.gradient(lambda a: gg.sum(gg.abs(gg.linalg.eigh(a)[1])))(gg.dlarray(cplx(2, 2)))
    with pytest.raises(np.linalg.LinAlgError, match="singular"):
        gg.gradient(lambda a: gg.linalg.det(a))(gg.dlarray(np.ones((2, 2))))


# ---------------------------------------------------------------------------- PyTorch


def _vjp_torch(fn, a):
    t = torch.tensor(a, requires_grad=True, dtype=torch.float64)
    out = fn(t)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(
        (o * torch.tensor(np.cos(np.arange(o.numel())).reshape(o.shape))).sum() for o in outs
    )
    loss.backward()
    return t.grad.numpy()


def _vjp_gg(fn, a):
    def loss(x):
        out = fn(x)
        outs = out if isinstance(out, tuple) else (out,)
        total = 0.0
        for o in outs:
            w = gg.dlarray(np.cos(np.arange(o.size)).reshape(o.shape))
            total = total + gg.sum(o * w)
        return total

    return gg.gradient(loss)(gg.dlarray(a)).numpy()


@pytest.mark.parametrize(
    "name, gg_fn, torch_fn, make",
    [
        ("inv", gg.linalg.inv, lambda t: torch.linalg.inv(t), lambda: well(3)),
        ("det", gg.linalg.det, lambda t: torch.linalg.det(t), lambda: well(3)),
        (
            "slogdet",
            lambda a: gg.linalg.slogdet(a)[1],
            lambda t: torch.linalg.slogdet(t)[1],
            lambda: rnd(3, 3),
        ),
        (
            "solve",
            lambda a: gg.linalg.solve(a, gg.dlarray(np.arange(6.0).reshape(3, 2))),
            lambda t: torch.linalg.solve(t, torch.arange(6.0, dtype=torch.float64).reshape(3, 2)),
            lambda: well(3),
        ),
        ("qr", lambda a: gg.linalg.qr(a), lambda t: torch.linalg.qr(t), lambda: rnd(4, 3)),
        (
            "svd_s",
            lambda a: gg.linalg.svdvals(a),
            lambda t: torch.linalg.svdvals(t),
            lambda: rnd(3, 4),
        ),
        (
            "eigvalsh",
            lambda a: gg.linalg.eigvalsh(a),
            lambda t: torch.linalg.eigvalsh(t),
            lambda: spd(3),
        ),
        ("cholesky", gg.linalg.cholesky, lambda t: torch.linalg.cholesky(t), lambda: spd(3)),
        (
            "einsum",
            lambda a: gg.einsum("ij,jk,kk->i", a, a, a),
            lambda t: torch.einsum("ij,jk,kk->i", t, t, t),
            lambda: rnd(3, 3),
        ),
    ],
)
def test_matrix_gradients_match_pytorch(name, gg_fn, torch_fn, make):
    a = make()
    got = _vjp_gg(gg_fn, a)
    want = _vjp_torch(torch_fn, a)
    if name in ("cholesky", "eigvalsh"):
        # both read one triangle of a symmetric matrix: compare the symmetric parts
        got, want = got + got.T, want + want.T
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
