"""The NumPy surface (issue 11): every function against NumPy's values and against
finite differences in float64, first and second order, from one table. Shapes include
0-d, size-1 and broadcasting operands; the emu device runs this file too."""

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.testing import check_gradient

R = np.random.default_rng(11)


def rnd(*shape):
    return R.standard_normal(shape)


def pos(*shape):
    return R.uniform(0.5, 2.0, shape)


def unit(*shape):
    return R.uniform(-0.8, 0.8, shape)


def away(*shape):
    """Values away from integers and half-integers (piecewise-constant functions are
    smooth there)."""
    return np.floor(R.uniform(-4, 4, shape)) + R.uniform(0.1, 0.4, shape)


def distinct(*shape):
    """Distinct values (sorting and order statistics are smooth there)."""
    n = int(np.prod(shape))
    return (R.permutation(n) + R.uniform(0.1, 0.9, n)).reshape(shape)


def with_zeros(*shape):
    x = rnd(*shape)
    x.flat[1] = 0.0
    return x


A23, B34 = rnd(2, 3), rnd(3, 4)
STEP_AT_0 = np.array([-1.0, 0.0, 2.0])

# name -> (gpugrad function, NumPy reference, arguments). Each function is checked for
# values against the reference and for gradients (order 1 and 2) by finite differences.
CASES = {
    # ---------------------------------------------------------------- elementwise
    "arcsinh": (gg.arcsinh, np.arcsinh, [rnd(3)]),
    "arcsinh_0d": (gg.arcsinh, np.arcsinh, [rnd()]),
    "arccosh": (gg.arccosh, np.arccosh, [pos(3) + 1.0]),
    "arctanh": (gg.arctanh, np.arctanh, [unit(2, 2)]),
    "asinh_complex": (gg.asinh, np.arcsinh, [rnd(3) + 1j * rnd(3)]),
    "arcsin": (gg.arcsin, np.arcsin, [unit(3)]),
    "arccos": (gg.arccos, np.arccos, [unit(3)]),
    "arctan": (gg.arctan, np.arctan, [rnd(3)]),
    "arctan2": (gg.arctan2, np.arctan2, [rnd(2, 3), pos(3)]),
    "log2": (gg.log2, np.log2, [pos(3)]),
    "log10": (gg.log10, np.log10, [pos(1)]),
    "exp2": (gg.exp2, np.exp2, [rnd(3)]),
    "expm1": (gg.expm1, np.expm1, [rnd(3)]),
    "log1p": (gg.log1p, np.log1p, [pos(3)]),
    "reciprocal": (gg.reciprocal, np.reciprocal, [pos(3)]),
    "cbrt": (gg.cbrt, np.cbrt, [np.array([-2.0, -0.3, 0.5, 3.0])]),
    "rsqrt": (gg.rsqrt, lambda x: 1 / np.sqrt(x), [pos(3)]),
    "sinc": (gg.sinc, np.sinc, [np.array([-1.3, -0.2, 0.4, 2.7])]),
    "sinc_near_0": (gg.sinc, np.sinc, [np.array([0.0, 1e-4, -3e-4, 2e-3])]),
    "deg2rad": (gg.deg2rad, np.deg2rad, [rnd(3) * 90]),
    "rad2deg": (gg.rad2deg, np.rad2deg, [rnd(3)]),
    "radians": (gg.radians, np.radians, [rnd(2)]),
    "degrees": (gg.degrees, np.degrees, [rnd(2)]),
    "ceil": (gg.ceil, np.ceil, [away(4)]),
    "floor": (lambda x: gg.floor(x) * x, lambda x: np.floor(x) * x, [away(4)]),
    "round": (gg.round, np.round, [away(4)]),
    "round_decimals": (lambda x: gg.round(x, 2), lambda x: np.round(x, 2), [away(4) / 7]),
    "around": (gg.around, np.around, [away(3)]),
    "rint": (gg.rint, np.rint, [away(3)]),
    "trunc": (gg.trunc, np.trunc, [away(4)]),
    "fix": (gg.fix, np.fix, [away(4)]),
    "fabs": (gg.fabs, np.fabs, [away(4)]),
    "sign": (lambda x: gg.sign(x) * x, lambda x: np.sign(x) * x, [away(4)]),
    "mod": (gg.mod, np.mod, [away(2, 3), pos(3)]),
    "remainder_neg": (gg.remainder, np.remainder, [away(4), -pos(4)]),
    "remainder_scalar": (lambda a: gg.remainder(a, 0.7), lambda a: np.remainder(a, 0.7), [away(3)]),
    "rmod_scalar": (lambda b: 5.3 % b, lambda b: 5.3 % b, [pos(3)]),
    "mod_operator": (lambda a, b: a % b, lambda a, b: a % b, [away(3), pos(1)]),
    "fmod": (gg.fmod, np.fmod, [away(4), np.array([1.3, -1.3, 0.7, -2.1])]),
    "floor_divide": (lambda a, b: (a // b) * a, lambda a, b: (a // b) * a, [away(4), pos(4)]),
    "rfloordiv": (lambda b: 7.0 // b, lambda b: 7.0 // b, [np.array([1.3, 2.7, -1.9])]),
    "hypot": (gg.hypot, np.hypot, [rnd(2, 3), rnd(3)]),
    "logaddexp": (gg.logaddexp, np.logaddexp, [rnd(2, 3), rnd(2, 1)]),
    "logaddexp_ties": (gg.logaddexp, np.logaddexp, [np.array([0.3, -1.0]), np.array([0.3, -1.0])]),
    "logaddexp_far": (gg.logaddexp, np.logaddexp, [np.array([0.0, 50.0]), np.array([-40.0, 1.0])]),
    "logaddexp2": (gg.logaddexp2, np.logaddexp2, [rnd(3), rnd(3)]),
    "fmax": (gg.fmax, np.fmax, [rnd(4), rnd(4)]),
    "fmin": (gg.fmin, np.fmin, [rnd(4), rnd(1)]),
    "nan_to_num": (lambda x: gg.nan_to_num(x * x), lambda x: np.nan_to_num(x * x), [rnd(3)]),
    "heaviside": (
        lambda h: gg.heaviside(STEP_AT_0, h) * h,
        lambda h: np.heaviside(STEP_AT_0, h) * h,
        [rnd(3)],
    ),
    "clip": (
        lambda a: gg.clip(a, a_min=-0.5, a_max=0.5),
        lambda a: np.clip(a, -0.5, 0.5),
        [np.array([-1.0, -0.2, 0.3, 0.9])],
    ),
    # ---------------------------------------------------------------- reductions
    "var": (gg.var, np.var, [rnd(3, 4)]),
    "var_axis_ddof": (
        lambda x: gg.var(x, axis=0, ddof=1),
        lambda x: np.var(x, axis=0, ddof=1),
        [rnd(3, 4)],
    ),
    "var_keepdims": (
        lambda x: gg.var(x, axis=(0, 2), keepdims=True),
        lambda x: np.var(x, axis=(0, 2), keepdims=True),
        [rnd(2, 3, 2)],
    ),
    "var_complex": (gg.var, np.var, [rnd(4) + 1j * rnd(4)]),
    "std": (lambda x: gg.std(x, axis=-1), lambda x: np.std(x, axis=-1), [rnd(2, 5)]),
    "std_ddof": (lambda x: gg.std(x, ddof=1), lambda x: np.std(x, ddof=1), [rnd(5)]),
    "method_std_var": (
        lambda x: x.std(axis=1) + x.var(0).sum(),
        lambda x: x.std(axis=1) + x.var(0).sum(),
        [rnd(3, 3)],
    ),
    "diff": (gg.diff, np.diff, [rnd(5)]),
    "diff_n2_axis0": (
        lambda x: gg.diff(x, n=2, axis=0),
        lambda x: np.diff(x, n=2, axis=0),
        [rnd(4, 3)],
    ),
    "diff_prepend": (
        lambda x: gg.diff(x, prepend=0.5, append=x[:1]),
        lambda x: np.diff(x, prepend=0.5, append=x[:1]),
        [rnd(4)],
    ),
    "cumsum_flat": (gg.cumsum, np.cumsum, [rnd(2, 3)]),
    "cumprod": (lambda x: gg.cumprod(x, axis=1), lambda x: np.cumprod(x, axis=1), [rnd(2, 4)]),
    "cumprod_flat": (gg.cumprod, np.cumprod, [rnd(2, 2)]),
    "cumprod_zeros": (gg.cumprod, np.cumprod, [with_zeros(5)]),
    "cumprod_two_zeros": (
        lambda x: gg.cumprod(x, axis=0),
        lambda x: np.cumprod(x, axis=0),
        [np.array([[0.0, 1.5], [2.0, 0.0], [0.0, -1.0]])],
    ),
    "cumprod_complex": (gg.cumprod, np.cumprod, [rnd(3) + 1j * rnd(3)]),
    "logsumexp": (
        lambda x: gg.logsumexp(x, axis=0),
        lambda x: np.log(np.sum(np.exp(x), axis=0)),
        [rnd(3, 2)],
    ),
    "median": (gg.median, np.median, [distinct(6)]),
    "median_axis": (
        lambda x: gg.median(x, axis=1),
        lambda x: np.median(x, axis=1),
        [distinct(3, 5)],
    ),
    "percentile": (
        lambda x: gg.percentile(x, [10, 50, 95], axis=0, keepdims=True),
        lambda x: np.percentile(x, [10, 50, 95], axis=0, keepdims=True),
        [distinct(7, 2)],
    ),
    "quantile": (
        lambda x: gg.quantile(x, 0.3, axis=(0, 2)),
        lambda x: np.quantile(x, 0.3, axis=(0, 2)),
        [distinct(3, 2, 4)],
    ),
    "average": (
        lambda x, w: gg.average(x, axis=1, weights=w),
        lambda x, w: np.average(x, axis=1, weights=w),
        [rnd(2, 3), pos(3)],
    ),
    "nanmean": (gg.nanmean, np.nanmean, [rnd(4)]),
    "nansum": (lambda x: gg.nansum(x, axis=0), lambda x: np.nansum(x, axis=0), [rnd(3, 2)]),
    # ---------------------------------------------------------------- shape
    "ravel": (gg.ravel, np.ravel, [A23]),
    "method_ravel": (lambda x: x.ravel(), lambda x: x.ravel(), [A23]),
    "repeat": (lambda x: gg.repeat(x, 2), lambda x: np.repeat(x, 2), [A23]),
    "repeat_axis": (
        lambda x: gg.repeat(x, [1, 0, 3], axis=1),
        lambda x: np.repeat(x, [1, 0, 3], axis=1),
        [A23],
    ),
    "tile": (lambda x: gg.tile(x, (2, 1, 2)), lambda x: np.tile(x, (2, 1, 2)), [A23]),
    "tile_short_reps": (lambda x: gg.tile(x, 2), lambda x: np.tile(x, 2), [A23]),
    "roll": (lambda x: gg.roll(x, 2), lambda x: np.roll(x, 2), [A23]),
    "roll_axes": (
        lambda x: gg.roll(x, (1, -1), axis=(0, 1)),
        lambda x: np.roll(x, (1, -1), axis=(0, 1)),
        [A23],
    ),
    "rot90": (gg.rot90, np.rot90, [A23]),
    "rot90_k3": (
        lambda x: gg.rot90(x, 3, axes=(2, 0)),
        lambda x: np.rot90(x, 3, axes=(2, 0)),
        [rnd(2, 3, 2)],
    ),
    "rot90_k2": (lambda x: gg.rot90(x, -2), lambda x: np.rot90(x, -2), [A23]),
    "flip": (lambda x: gg.flip(x, 0), lambda x: np.flip(x, 0), [A23]),
    "fliplr": (gg.fliplr, np.fliplr, [A23]),
    "flipud": (gg.flipud, np.flipud, [A23]),
    "moveaxis": (lambda x: gg.moveaxis(x, 0, -1), lambda x: np.moveaxis(x, 0, -1), [rnd(2, 3, 2)]),
    "rollaxis": (lambda x: gg.rollaxis(x, 2), lambda x: np.rollaxis(x, 2), [rnd(2, 3, 2)]),
    "rollaxis_start": (
        lambda x: gg.rollaxis(x, 0, 3),
        lambda x: np.rollaxis(x, 0, 3),
        [rnd(2, 3, 2)],
    ),
    "append": (gg.append, np.append, [A23, rnd(2)]),
    "append_axis": (
        lambda a, b: gg.append(a, b, axis=0),
        lambda a, b: np.append(a, b, axis=0),
        [A23, rnd(1, 3)],
    ),
    "split": (
        lambda x: gg.split(x, 2, axis=1)[1] * 2,
        lambda x: np.split(x, 2, axis=1)[1] * 2,
        [rnd(2, 4)],
    ),
    "split_indices": (
        lambda x: gg.concatenate(gg.split(x, [1, 3])[::-1]),
        lambda x: np.concatenate(np.split(x, [1, 3])[::-1]),
        [rnd(5)],
    ),
    "array_split": (
        lambda x: gg.array_split(x, 3)[0] * gg.array_split(x, 3)[2][:1],
        lambda x: np.array_split(x, 3)[0] * np.array_split(x, 3)[2][:1],
        [rnd(8)],
    ),
    "vsplit": (lambda x: gg.vsplit(x, 2)[1], lambda x: np.vsplit(x, 2)[1], [rnd(4, 2)]),
    "hsplit": (lambda x: gg.hsplit(x, 2)[0], lambda x: np.hsplit(x, 2)[0], [rnd(2, 4)]),
    "dsplit": (lambda x: gg.dsplit(x, [1])[1], lambda x: np.dsplit(x, [1])[1], [rnd(2, 1, 3)]),
    "vstack": (lambda a, b: gg.vstack([a, b]), lambda a, b: np.vstack([a, b]), [rnd(3), rnd(2, 3)]),
    "hstack": (lambda a, b: gg.hstack((a, b)), lambda a, b: np.hstack((a, b)), [rnd(2), rnd(3)]),
    "hstack_2d": (lambda a, b: gg.hstack([a, b]), lambda a, b: np.hstack([a, b]), [A23, rnd(2, 1)]),
    "dstack": (lambda a, b: gg.dstack([a, b]), lambda a, b: np.dstack([a, b]), [rnd(2), rnd(2)]),
    "column_stack": (
        lambda a, b: gg.column_stack([a, b]),
        lambda a, b: np.column_stack([a, b]),
        [rnd(3), rnd(3, 2)],
    ),
    "atleast_1d": (gg.atleast_1d, np.atleast_1d, [rnd()]),
    "atleast_2d": (gg.atleast_2d, np.atleast_2d, [rnd(3)]),
    "atleast_3d": (gg.atleast_3d, np.atleast_3d, [A23]),
    "atleast_3d_0d": (gg.atleast_3d, np.atleast_3d, [rnd()]),
    "pad_constant": (
        lambda x: gg.pad(x, ((1, 0), (2, 1)), constant_values=0.5),
        lambda x: np.pad(x, ((1, 0), (2, 1)), constant_values=0.5),
        [A23],
    ),
    "pad_edge": (
        lambda x: gg.pad(x, 2, mode="edge"),
        lambda x: np.pad(x, 2, mode="edge"),
        [A23],
    ),
    "pad_reflect": (
        lambda x: gg.pad(x, ((0, 0), (2, 3)), mode="reflect"),
        lambda x: np.pad(x, ((0, 0), (2, 3)), mode="reflect"),
        [A23],
    ),
    "pad_symmetric": (
        lambda x: gg.pad(x, (3, 1), mode="symmetric"),
        lambda x: np.pad(x, (3, 1), mode="symmetric"),
        [rnd(2)],
    ),
    "pad_wrap": (
        lambda x: gg.pad(x, 4, mode="wrap"),
        lambda x: np.pad(x, 4, mode="wrap"),
        [rnd(3)],
    ),
    "sort": (gg.sort, np.sort, [distinct(3, 4)]),
    "sort_axis0": (lambda x: gg.sort(x, axis=0), lambda x: np.sort(x, axis=0), [distinct(3, 4)]),
    "sort_none": (
        lambda x: gg.sort(x, axis=None),
        lambda x: np.sort(x, axis=None),
        [distinct(2, 3)],
    ),
    "partition": (
        lambda x: gg.partition(x, 2)[..., 2],
        lambda x: np.partition(x, 2)[..., 2],
        [distinct(2, 5)],
    ),
    "take": (
        lambda x: gg.take(x, [[0, 2], [1, 1]], axis=1),
        lambda x: np.take(x, [[0, 2], [1, 1]], axis=1),
        [A23],
    ),
    "take_flat": (lambda x: gg.take(x, [5, 0, -1]), lambda x: np.take(x, [5, 0, -1]), [A23]),
    "take_wrap": (
        lambda x: gg.take(x, [4, -5], mode="wrap"),
        lambda x: np.take(x, [4, -5], mode="wrap"),
        [rnd(3)],
    ),
    "take_along_axis": (
        lambda x: gg.take_along_axis(x, np.argsort(x.numpy(), axis=1), axis=1),
        lambda x: np.take_along_axis(x, np.argsort(x, axis=1), axis=1),
        [distinct(2, 3)],
    ),
    "select": (
        lambda x, y: gg.select([x < 0, x > 1], [x * y, y], default=x**2),
        lambda x, y: np.select([x < 0, x > 1], [x * y, y], default=x**2),
        [np.array([-1.0, 0.5, 2.0, -0.3]), rnd(4)],
    ),
    "where": (
        lambda x, y: gg.where(x > 0, x, y),
        lambda x, y: np.where(x > 0, x, y),
        [rnd(2, 3), rnd(3)],
    ),
    "broadcast_to": (
        lambda x: gg.broadcast_to(x, (2, 3)),
        lambda x: np.broadcast_to(x, (2, 3)),
        [rnd(3)],
    ),
    "broadcast_arrays": (
        lambda a, b: gg.broadcast_arrays(a, b)[0] * gg.broadcast_arrays(a, b)[1],
        lambda a, b: np.broadcast_arrays(a, b)[0] * np.broadcast_arrays(a, b)[1],
        [rnd(2, 1), rnd(3)],
    ),
    "expand_dims": (lambda x: gg.expand_dims(x, 1), lambda x: np.expand_dims(x, 1), [A23]),
    "squeeze": (gg.squeeze, np.squeeze, [rnd(1, 3, 1)]),
    "copy": (gg.copy, np.copy, [A23]),
    "method_copy_clip_round": (
        lambda x: x.copy().clip(-0.3, 0.3) + x.round(1),
        lambda x: x.copy().clip(-0.3, 0.3) + x.round(1),
        [away(4) / 3],
    ),
}


def _as_gg(args):
    return [gg.dlarray(a) for a in args]


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_match_numpy(name):
    fn, ref, args = CASES[name]
    got = fn(*_as_gg(args))
    want = ref(*[np.array(a) for a in args])
    got = np.asarray(got.numpy() if isinstance(got, gg.dlarray) else got)
    assert got.shape == np.shape(want), (got.shape, np.shape(want))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("order", [1, 2])
def test_gradients_match_finite_differences(name, order):
    fn, _, args = CASES[name]
    check_gradient(fn, *args, order=order)


# ---------------------------------------------------------------------------- specifics


def _grad(f, *xs):
    return gg.gradient(f)(*[gg.dlarray(x) for x in xs])


def test_piecewise_constant_functions_have_zero_gradient_everywhere():
    x = np.array([-1.5, -0.5, 0.0, 0.5, 2.0])
    for fn in (gg.floor, gg.ceil, gg.round, gg.trunc, gg.rint, lambda v: v // 2.0, gg.sign):
        g = _grad(lambda v, fn=fn: gg.sum(fn(v)), x)
        assert np.array_equal(g.numpy(), np.zeros(5))


def test_remainder_gradient_for_the_divisor_is_minus_the_quotient():
    a, b = np.array([7.5, -7.5, 2.0]), np.array([2.0, 2.0, -3.0])
    ga, gb = _grad(lambda a, b: gg.sum(a % b), a, b)
    np.testing.assert_array_equal(ga.numpy(), np.ones(3))
    np.testing.assert_array_equal(gb.numpy(), -np.floor_divide(a, b))
    ga, gb = _grad(lambda a, b: gg.sum(gg.fmod(a, b)), a, b)
    np.testing.assert_array_equal(gb.numpy(), -np.trunc(a / b))


def test_operators_follow_python_and_numpy():
    x = gg.dlarray([7.0, -7.0, 2.5])
    np.testing.assert_array_equal((x % 3).numpy(), np.array([7.0, -7.0, 2.5]) % 3)
    np.testing.assert_array_equal((10 % x).numpy(), 10 % np.array([7.0, -7.0, 2.5]))
    np.testing.assert_array_equal((x // 2).numpy(), [3.0, -4.0, 1.0])
    q, r = divmod(x, 2)
    np.testing.assert_array_equal(q.numpy() * 2 + r.numpy(), x.numpy())
    np.testing.assert_array_equal(round(x).numpy(), [7.0, -7.0, 2.0])
    np.testing.assert_array_equal(round(gg.dlarray([1.2345]), 2).numpy(), [1.23])
    y = gg.dlarray([5.0, 6.0])
    y %= 4
    y //= 1
    np.testing.assert_array_equal(y.numpy(), [1.0, 2.0])


def test_hypot_and_fmax_at_singular_points_give_finite_gradients():
    g = _grad(lambda a, b: gg.hypot(a, b), np.array(0.0), np.array(0.0))
    assert [float(v) for v in g] == [0.0, 0.0]
    ga, gb = _grad(
        lambda a, b: gg.sum(gg.fmax(a, b)), np.array([1.0, np.nan]), np.array([np.nan, 2.0])
    )
    np.testing.assert_array_equal(ga.numpy(), [1.0, 0.0])
    np.testing.assert_array_equal(gb.numpy(), [0.0, 1.0])


def test_nan_to_num_passes_gradient_only_through_finite_values():
    x = np.array([np.nan, 2.0, np.inf, -np.inf])
    got = gg.nan_to_num(gg.dlarray(x), posinf=9.0)
    np.testing.assert_array_equal(got.numpy(), np.nan_to_num(x, posinf=9.0))
    g = _grad(lambda v: gg.sum(gg.nan_to_num(v) * 0.5), x)
    np.testing.assert_array_equal(g.numpy(), [0.0, 0.5, 0.0, 0.0])


def test_sinc_second_derivative_at_zero_is_exact():
    def d2(x):
        def f(v):
            y = gg.sinc(v)
            (g,) = (gg.dlgradient(y, v, enable_higher_derivatives=True),)
            return gg.dlgradient(g, v)

        return float(gg.dlfeval(f, gg.dlarray(x)))

    assert abs(d2(0.0) + np.pi**2 / 3) < 1e-12


def test_cbrt_of_negative_numbers_is_real():
    np.testing.assert_allclose(gg.cbrt(gg.dlarray([-27.0])).numpy(), [-3.0])
    with pytest.raises(TypeError, match="cbrt"):
        gg.cbrt(gg.dlarray([1j]))


def test_logaddexp_keeps_precision_when_one_term_is_tiny():
    got = float(gg.logaddexp(gg.dlarray(0.0), -40.0))
    assert got == np.logaddexp(0.0, -40.0) and got > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        assert float(gg.logaddexp(gg.dlarray(-np.inf), -np.inf)) == -np.inf


def test_argmax_argmin_any_all_match_numpy_and_are_not_traced():
    x = distinct(3, 4)
    d = gg.dlarray(x)
    for axis in (None, 0, 1, -1):
        for kd in (False, True):
            assert np.array_equal(
                gg.argmax(d, axis, keepdims=kd).numpy(), np.argmax(x, axis, keepdims=kd)
            )
            assert np.array_equal(
                d.argmin(axis, keepdims=kd).numpy(), np.argmin(x, axis, keepdims=kd)
            )
    b = x > 5
    for axis in (None, 0, (0, 1)):
        assert np.array_equal(gg.any(gg.dlarray(b), axis).numpy(), np.any(b, axis))
        assert np.array_equal(gg.dlarray(b).all(axis).numpy(), np.all(b, axis))

    def f(v):
        i = gg.argmax(v)
        assert not i.traced and i.dtype.kind == "i"
        return gg.dlgradient(gg.ravel(v)[i] * 2, v)

    np.testing.assert_array_equal(gg.dlfeval(f, d).numpy().ravel(), np.eye(12)[np.argmax(x)] * 2)
    with pytest.raises(np.exceptions.AxisError, match="argmax"):
        gg.argmax(d, axis=2)


def test_dlarray_methods_numpy_users_expect():
    x = gg.dlarray([[1.0, -2.0], [3.5, 4.0]])
    assert x.tolist() == [[1.0, -2.0], [3.5, 4.0]]
    assert x[0, 1].item() == -2.0 and isinstance(x[0, 1].item(), float)
    assert x.astype(np.float32).dtype == np.float32
    assert int(x.argmax()) == 3 and int(x.argmin()) == 1
    np.testing.assert_allclose(x.std(), np.std(x.numpy()))
    np.testing.assert_allclose(x.var(axis=0, ddof=1).numpy(), np.var(x.numpy(), axis=0, ddof=1))
    np.testing.assert_array_equal(x.clip(0, 3).numpy(), np.clip(x.numpy(), 0, 3))
    np.testing.assert_array_equal(x.round().numpy(), np.round(x.numpy()))
    np.testing.assert_array_equal(x.cumsum().numpy(), np.cumsum(x.numpy()))
    np.testing.assert_array_equal(x.repeat(2, axis=0).numpy(), x.numpy().repeat(2, axis=0))
    c = x.copy()
    c[0, 0] = 100.0
    assert float(x[0, 0]) == 1.0


def test_format_and_len_follow_numpy():
    s = gg.dlarray(np.float64(2.5))
    assert f"{s:.2f}" == "2.50" == f"{np.array(2.5):.2f}"
    assert f"{gg.dlarray(3.0):>5}" == f"{np.array(3.0):>5}"
    assert "dlarray" in format(gg.dlarray([1.0, 2.0]))
    with pytest.raises(TypeError):
        f"{gg.dlarray([1.0, 2.0]):.2f}"
    with pytest.raises(TypeError, match="len"):
        len(gg.dlarray(1.0))
    with pytest.raises(TypeError):
        len(np.array(1.0))


def test_numpy_argument_names_and_defaults():
    x = gg.dlarray([[1.0, 2.0], [3.0, 4.0]])
    # clip(a, a_min, a_max), cumsum(axis=None) flattens, as NumPy
    np.testing.assert_array_equal(
        gg.clip(a=x, a_min=1.5, a_max=3.0).numpy(), [[1.5, 2.0], [3.0, 3.0]]
    )
    assert gg.cumsum(x).shape == (4,) and gg.cumprod(x).shape == (4,)
    assert gg.cumsum(x, axis=0).shape == (2, 2)
    with pytest.raises(TypeError, match="out="):
        gg.var(x, out=np.empty(()))


def test_shape_function_errors_name_the_function():
    x = gg.dlarray([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="split: array split does not result in an equal division"):
        gg.split(x, 2)
    with pytest.raises(ValueError, match="vsplit"):
        gg.vsplit(x, 3)
    with pytest.raises(ValueError, match="pad: mode"):
        gg.pad(x, 1, mode="median")
    with pytest.raises(IndexError, match="take"):
        gg.take(x, [3])
    with pytest.raises(ValueError, match="rot90"):
        gg.rot90(gg.dlarray(np.ones((2, 2))), axes=(1, 1))
    with pytest.raises(ValueError, match="quantile"):
        gg.quantile(x, 1.5)
    with pytest.raises(ValueError, match="diff"):
        gg.diff(gg.dlarray(1.0))
    with pytest.raises(TypeError, match="vstack"):
        gg.vstack(x)


def test_aliases_are_the_same_functions():
    assert gg.asinh is gg.arcsinh and gg.acosh is gg.arccosh and gg.atanh is gg.arctanh
    assert gg.arcsin is gg.asin and gg.arccos is gg.acos and gg.arctan is gg.atan
    assert gg.arctan2 is gg.atan2 and gg.mod is gg.remainder
    assert gg.radians is gg.deg2rad and gg.degrees is gg.rad2deg


def test_multi_array_results_have_numpys_container_types():
    a, b = gg.dlarray([1.0]), gg.dlarray(2.0)
    assert type(gg.atleast_1d(a, b)) is type(np.atleast_1d(1.0, 2.0)) is tuple
    assert type(gg.atleast_2d(a, b)) is type(gg.atleast_3d(a, b)) is tuple
    assert type(gg.broadcast_arrays(a, b)) is tuple
    assert type(gg.split(gg.dlarray([1.0, 2.0]), 2)) is list
    assert isinstance(gg.atleast_1d(b), gg.dlarray)


# ---------------------------------------------------------------------------- PyTorch

TORCH_CASES = {
    "remainder": (
        gg.remainder,
        lambda t, a, b: t.remainder(a, b),
        [away(5), np.array([1.3, -1.3, 0.7, -2.1, 3.0])],
    ),
    "fmod": (
        gg.fmod,
        lambda t, a, b: t.fmod(a, b),
        [away(5), np.array([1.3, -1.3, 0.7, -2.1, 3.0])],
    ),
    "hypot": (gg.hypot, lambda t, a, b: t.hypot(a, b), [rnd(4), rnd(4)]),
    "logaddexp": (gg.logaddexp, lambda t, a, b: t.logaddexp(a, b), [rnd(4), rnd(4)]),
    "logaddexp2": (gg.logaddexp2, lambda t, a, b: t.logaddexp2(a, b), [rnd(4), rnd(4)]),
    "fmax": (gg.fmax, lambda t, a, b: t.fmax(a, b), [rnd(4), rnd(4)]),
    "atanh": (gg.atanh, lambda t, x: t.atanh(x), [unit(4)]),
    "acosh": (gg.acosh, lambda t, x: t.acosh(x), [pos(4) + 1]),
    "log2": (gg.log2, lambda t, x: t.log2(x), [pos(4)]),
    "exp2": (gg.exp2, lambda t, x: t.exp2(x), [rnd(4)]),
    "rsqrt": (gg.rsqrt, lambda t, x: t.rsqrt(x), [pos(4)]),
    "sinc": (gg.sinc, lambda t, x: t.sinc(x), [rnd(4)]),
    "floor_times": (lambda x: gg.floor(x) * x, lambda t, x: t.floor(x) * x, [away(4)]),
    "var_ddof": (
        lambda x: gg.var(x, axis=0, ddof=1),
        lambda t, x: t.var(x, dim=0, correction=1),
        [rnd(3, 2)],
    ),
    "std": (lambda x: gg.std(x, axis=1), lambda t, x: t.std(x, dim=1, correction=0), [rnd(2, 4)]),
    "cumprod_zeros": (
        lambda x: gg.cumprod(x, axis=0),
        lambda t, x: t.cumprod(x, dim=0),
        [with_zeros(5)],
    ),
    "diff": (lambda x: gg.diff(x, n=2), lambda t, x: t.diff(x, n=2), [rnd(5)]),
    "kron": (gg.kron, lambda t, a, b: t.kron(a, b), [rnd(2, 2), rnd(2, 3)]),
    "median_odd": (gg.median, lambda t, x: t.median(x), [distinct(5)]),
    "quantile": (lambda x: gg.quantile(x, 0.3), lambda t, x: t.quantile(x, 0.3), [distinct(6)]),
    "tril_roll_pad": (
        lambda x: gg.pad(gg.roll(gg.tril(x), 1, axis=1), ((1, 0), (0, 2))),
        lambda t, x: t.nn.functional.pad(t.roll(t.tril(x), 1, dims=1), (0, 2, 1, 0)),
        [rnd(3, 3)],
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_values_and_gradients_match_pytorch(name):
    from tests._torch import torch

    fn, tfn, args = TORCH_CASES[name]
    weights = None

    def loss_gg(*xs):
        nonlocal weights
        y = fn(*xs)
        weights = np.cos(np.arange(y.size)).reshape(y.shape)
        return gg.sum(y * gg.dlarray(weights))

    grads = gg.gradient(loss_gg)(*[gg.dlarray(a) for a in args])
    grads = grads if isinstance(grads, tuple) else (grads,)
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in args]
    ty = tfn(torch, *ts)
    np.testing.assert_allclose(
        fn(*[gg.dlarray(a) for a in args]).numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-13
    )
    (ty * torch.tensor(weights)).sum().backward()
    for g, t in zip(grads, ts):
        np.testing.assert_allclose(g.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)
