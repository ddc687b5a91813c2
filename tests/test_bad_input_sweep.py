"""Bad-input sweep over the public API (issue 16): every function below gets NaN/Inf,
empty and zero-size, 0-d, int/bool/float16/complex, non-contiguous and
negative-stride, huge/negative dims, strings/None/nested lists and wrong layouts in
each argument. Allowed: a result (compared with NumPy where NumPy has the function)
or a gpugrad error whose message starts with the name of a gpugrad function
(``exp: ...``, ``dlarray: ...``). A bare NumPy/Python error from inside gpugrad fails.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import gpugrad as gg

NAN = np.array([np.nan, np.inf, -np.inf, 1.0])
BAD = {
    "nan_inf": NAN,
    "empty": np.zeros((0,)),
    "empty2d": np.zeros((2, 0)),
    "zero_d": np.array(2.0),
    "np_scalar": np.float64(0.5),
    "int": np.array([1, 2, 3]),
    "bool": np.array([True, False]),
    "float16": np.array([0.5, 1.5], np.float16),
    "complex": np.array([1 + 2j, -0.5j]),
    "noncontig": np.arange(12.0).reshape(3, 4)[:, ::2],
    "negstride": np.arange(6.0)[::-1],
    "string": "abc",
    "none": None,
    "ragged": [[1.0, 2.0], [3.0]],
    "nested": [[1.0, 2.0], [3.0, 4.0]],
    "object": object(),
    "layout": gg.dlarray(np.ones((2, 3, 4, 5)), "SSCB"),
    "huge_dims": (10**13,),
    "neg_dims": (-2, 3),
}

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])

# name -> (function, good positional arguments, NumPy equivalent or None)
UNARY_MATH = [
    "exp", "log", "log1p", "expm1", "sqrt", "abs", "sign", "sin", "cos", "tan", "asin",
    "acos", "atan", "sinh", "cosh", "tanh", "real", "imag", "conj", "angle", "square",
]  # fmt: skip
NP_NAME = {"asin": "arcsin", "acos": "arccos", "atan": "arctan"}

FUNCS = {}
for _n in UNARY_MATH:
    FUNCS[_n] = (getattr(gg, _n), (X,), getattr(np, NP_NAME.get(_n, _n)))
for _n in ("sum", "mean", "prod", "max", "min", "norm", "logsumexp"):
    FUNCS[_n] = (getattr(gg, _n), (X,), None)
FUNCS.update(
    {
        "maximum": (gg.maximum, (X, X), np.maximum),
        "minimum": (gg.minimum, (X, X), np.minimum),
        "atan2": (gg.atan2, (X, X), np.arctan2),
        "power": (gg.power, (X, 2.0), None),
        "where": (gg.where, (X > 0, X, X), None),
        "clip": (gg.clip, (X, -0.5, 0.5), None),
        "matmul": (gg.matmul, (X, X.T), None),
        "dot": (gg.dot, (X, X.T), None),
        "reshape": (gg.reshape, (X, (3, 2)), None),
        "transpose": (gg.transpose, (X,), None),
        "concatenate": (gg.concatenate, ([X, X],), None),
        "stack": (gg.stack, ([X, X],), None),
        "squeeze": (gg.squeeze, (X[None],), None),
        "expand_dims": (gg.expand_dims, (X, 0), None),
        "broadcast_to": (gg.broadcast_to, (X[:1], (2, 3)), None),
        "flatten": (gg.flatten, (X,), None),
        "flip": (gg.flip, (X,), None),
        "cumsum": (gg.cumsum, (X, 1), None),
        "zeros": (gg.zeros, ((2, 3),), None),
        "ones": (gg.ones, ((2, 3),), None),
        "full": (gg.full, ((2, 3), 1.5), None),
        "arange": (gg.arange, (5,), None),
        "linspace": (gg.linspace, (0.0, 1.0, 5), None),
        "zeros_like": (gg.zeros_like, (X,), None),
        "dlarray": (gg.dlarray, (X,), None),
        "relu": (gg.relu, (X,), None),
        "sigmoid": (gg.sigmoid, (X,), None),
        "gelu": (gg.gelu, (X,), None),
        "leakyrelu": (gg.leakyrelu, (X,), None),
        "softmax": (gg.softmax, (gg.dlarray(X, "CB"),), None),
        "fullyconnect": (
            gg.fullyconnect,
            (gg.dlarray(X, "CB"), np.ones((4, 2)), np.zeros(4)),
            None,
        ),
        "mse": (gg.mse, (gg.dlarray(X, "CB"), gg.dlarray(X, "CB")), None),
        "random.normal": (lambda shape: gg.random.normal(shape=shape), ((2, 3),), None),
        "random.uniform": (lambda shape: gg.random.uniform(shape=shape), ((2, 3),), None),
    }
)

_PREFIX = re.compile(r"^([\w.]+(?: [\w.]+)?(?:\[[^\]]*\])?(?:\(\))?):")
NAMES = {n for n in dir(gg) if not n.startswith("_")} | {
    "dlarray index", "dlarray index assignment", "gg.random.normal", "gg.random.uniform",
    "gg.random", "random.normal", "random.uniform", "item()",
}  # fmt: skip


def classify(name, fn, args, k, bad):
    args = list(args)
    args[k] = bad
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = fn(*args)
    except Exception as exc:  # noqa: BLE001 - classifying is the point
        msg = str(exc)
        m = _PREFIX.match(msg)
        if m and (m.group(1).split("[")[0].split(" (")[0] in NAMES or m.group(1).startswith("gg.")):
            return "gpugrad_error", msg
        return "bare_error", f"{type(exc).__name__}: {msg}"
    return "result", out


CASES = [
    (name, k, bad_name)
    for name, (fn, args, _) in FUNCS.items()
    for k in range(len(args))
    for bad_name in BAD
]


def _np_value(bad):
    try:
        a = np.asarray(bad)
    except Exception:  # noqa: BLE001
        return None
    if a.dtype.kind in "iu":  # gpugrad stores integers as float64 (MATLAB double)
        return a.astype(np.float64)
    return a if a.dtype.kind in "bfc" else None


@pytest.mark.parametrize("name,k,bad_name", CASES, ids=[f"{n}-{k}-{b}" for n, k, b in CASES])
def test_bad_input(name, k, bad_name):
    fn, args, np_fn = FUNCS[name]
    kind, detail = classify(name, fn, args, k, BAD[bad_name])
    assert kind != "bare_error", f"{name}(argument {k} = {bad_name}) raised a bare error: {detail}"
    if kind == "result" and np_fn is not None and k == 0:
        ref = _np_value(BAD[bad_name])
        if ref is not None and ref.dtype.kind != "b":
            with np.errstate(all="ignore"):
                want = np_fn(ref) if len(args) == 1 else np_fn(ref, *args[1:])
            got = np.asarray(detail)
            np.testing.assert_allclose(got, want.astype(got.dtype), rtol=1e-3, equal_nan=True)
