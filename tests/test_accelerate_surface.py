"""gg.dlaccelerate against eager over every public function in the op tables: the
trace is made on one input and replayed on inputs whose values are permuted, so
whatever the function computes from the data outside its primitives (a mask, a sort
order, a branch) changes between calls. A replay must equal eager (bitwise), or the
call must run eagerly; a trace that baked the first call's data in would differ."""

import warnings

import numpy as np
import pytest

import gpugrad as gg
from tests.test_accelerate import _note_coverage
from tests.test_gradients import CASES as CORE_CASES
from tests.test_linalg import CASES as LINALG_CASES
from tests.test_numpy_surface import CASES as SURFACE_CASES

CASES = {f"core:{k}": (fn, args) for k, (fn, args) in CORE_CASES.items()}
CASES.update({f"numpy:{k}": (fn, args) for k, (fn, _, args) in SURFACE_CASES.items()})
CASES.update({f"linalg:{k}": (fn, args) for k, (fn, _, args) in LINALG_CASES.items()})


def _scalar(out):
    """A real scalar loss from whatever the function returns."""
    if isinstance(out, (tuple, list)):
        total = 0.0
        for o in out:
            total = total + _scalar(o)
        return total
    if not isinstance(out, gg.dlarray) or out.dtype.kind not in "fc":
        return 0.0
    return gg.sum(gg.real(out) * gg.real(out)) + gg.sum(gg.real(out))


def _inputs(args, seed):
    """The same values, permuted (a different order along every axis) for seed > 0."""
    rng = np.random.default_rng(seed)
    out = []
    for a in args:
        a = np.array(a)
        if seed and a.size > 1 and a.dtype.kind in "fc":
            flat = a.reshape(-1).copy()
            a = flat[rng.permutation(flat.size)].reshape(a.shape)
        out.append(gg.dlarray(a))
    return out


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_array_equal(a, b)


# Composites whose data-dependent parts (masks, orders, tie weights, zero branches) are
# recorded calls, so they must replay (not fall back to eager) and still equal eager.
# Cases that escape on purpose (numpy:take_along_axis calls x.numpy()) are not listed.
MUST_REPLAY = {
    "core:prod",
    "core:prod_zeros",
    "core:prod_two_zeros",
    "linalg:pinv",
    "numpy:copy",
    "numpy:method_copy_clip_round",
    "numpy:cumprod",
    "numpy:cumprod_zeros",
    "numpy:cumprod_two_zeros",
    "numpy:fmax",
    "numpy:fmin",
    "numpy:logaddexp",
    "numpy:logaddexp_ties",
    "numpy:median",
    "numpy:median_axis",
    "numpy:nan_to_num",
    "numpy:nanmean",
    "numpy:nansum",
    "numpy:partition",
    "numpy:percentile",
    "numpy:quantile",
    "numpy:sinc",
    "numpy:sinc_near_0",
    "numpy:sort",
    "numpy:sort_none",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_on_new_data_equals_eager(name):
    fn, args = CASES[name]
    n = len(args)

    def body(*xs):
        y = _scalar(fn(*xs))
        if not isinstance(y, gg.dlarray):
            return y, ()
        return y, gg.dlgradient(y, *xs) if n > 1 else (gg.dlgradient(y, xs[0]),)

    acc = gg.dlaccelerate(body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # escapes warn; they run eagerly, which is right
        with np.errstate(all="ignore"):
            for seed in (0, 1, 2, 3):
                xs = _inputs(args, seed)
                got = gg.dlfeval(acc, *xs)
                want = gg.dlfeval(body, *_inputs(args, seed))
                _same(np.asarray(got[0]), np.asarray(want[0]))
                for g, w in zip(got[1], want[1]):
                    _same(g.numpy(), w.numpy())
    if name in MUST_REPLAY:
        assert acc.hits == 3 and acc.eager_calls == 0, (acc.hits, acc.eager_calls)
    _note_coverage(acc)


def _run_all(acc, fn, datas):
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for d in datas:
            got = gg.dlfeval(acc, gg.dlarray(np.array(d)))
            want = gg.dlfeval(fn, gg.dlarray(np.array(d)))
            out.append((got, want))
    return out


def test_a_custom_derivative_whose_pullback_keeps_numpy_data_runs_eagerly():
    # the pullback closes over a NumPy mask of the first call's data: a replay would
    # reuse it (the first replay sees the same data, so its check cannot tell)
    @gg.custom_derivative
    def cube(x):
        a = np.asarray(x)
        return gg.dlarray(np.where(a > 0, a**3, 0.0))

    @cube.derivative
    def _(x):
        a = np.asarray(x)
        return cube(x), lambda v: (v * gg.dlarray(np.where(a > 0, 3 * a**2, 0.0)),)

    def f(x):
        y = gg.sum(cube(x))
        return y, gg.dlgradient(y, x)

    acc = gg.dlaccelerate(f)
    for got, want in _run_all(acc, f, ([1.0, -2.0], [1.0, -2.0], [2.0, -3.0], [-1.0, 1.0])):
        _same(got[1].numpy(), want[1].numpy())
    assert acc.hits == 0 and acc.traces == 1 and acc.eager_calls == 3  # traced once, then eager


def test_maximum_tie_weights_follow_the_data_on_replay():
    # the tie pattern of maximum(x, y) changes between calls: the weights must too
    def f(x):
        y = gg.sum(gg.maximum(x[0], x[1]) * gg.dlarray([1.0, 2.0]))
        return y, gg.dlgradient(y, x)

    acc = gg.dlaccelerate(f)
    datas = ([[1.0, 2.0], [0.0, 5.0]], [[3.0, 2.0], [0.0, 1.0]], [[1.0, 2.0], [1.0, 2.0]])
    for got, want in _run_all(acc, f, datas):
        _same(got[1].numpy(), want[1].numpy())
    assert acc.hits == 2  # replayed, not run eagerly


def test_a_with_derivative_hook_runs_on_every_call():
    seen = []

    def f(x):
        y = gg.sum(gg.with_derivative(x * 2.0, lambda d: seen.append(1)))
        return y, gg.dlgradient(y, x)

    acc = gg.dlaccelerate(f)
    _run_all(acc, f, ([1.0], [2.0], [3.0]))
    assert len(seen) == 6  # three accelerated and three eager calls
