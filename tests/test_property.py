"""Property-based differential test of every registered primitive (hypothesis).

For each rule in ``TABLE`` hypothesis draws random shapes (0-d, size-1 and
broadcasting operands where the op broadcasts), parameters (axes, indices, exponents,
einsum specs, conv geometry, ...) and a seed for the values; the test compares the
value with NumPy and the first- and second-order gradients with central finite
differences in float64, and checks that the rule really records the primitives it
claims to cover. ``test_every_registered_primitive_has_a_rule`` fails when a
primitive is registered without a rule here.

Cost is bounded by the hypothesis profile: ``ci`` (the default) runs
``EXAMPLES_PER_RULE`` derandomized examples per rule; set
``GPUGRAD_HYPOTHESIS_PROFILE=long`` (and ``GPUGRAD_HYPOTHESIS_EXAMPLES=N`` per rule,
default 200, random rather than derandomized) for a longer local hunt.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpugrad as gg
import gpugrad.distributed as dist
from gpugrad.nn import _prims
from gpugrad.ops import REGISTRY
from gpugrad.testing import check_gradient, primitives_in_graph

EXAMPLES_PER_RULE = 4
settings.register_profile(
    "ci",
    max_examples=EXAMPLES_PER_RULE,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("GPUGRAD_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
PROFILE = settings.get_profile(os.environ.get("GPUGRAD_HYPOTHESIS_PROFILE", "ci"))

#: examples run in this session, by rule, and the primitives they recorded (checked by
#: the last test: every rule must record each primitive it claims in some example)
RAN = {}
SEEN = {}

# ---------------------------------------------------------------------------- values


def values(rng, shape, kind="real"):
    """Random float64 values of ``shape`` from a domain where the op is smooth."""
    if kind == "real":
        return rng.standard_normal(shape)
    if kind == "pos":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "unit":
        return rng.uniform(-0.8, 0.8, shape)
    if kind == "gt1":
        return rng.uniform(1.2, 3.0, shape)
    if kind == "nonzero":
        return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape)
    if kind == "away":  # away from integers and half-integers
        return np.floor(rng.uniform(-4, 4, shape)) + rng.uniform(0.1, 0.4, shape)
    if kind == "distinct":  # no ties (max, min, sort)
        n = int(np.prod(shape, dtype=np.int64))
        return (rng.permutation(n) * 0.37 + rng.uniform(0.0, 0.1, n)).reshape(shape) - n * 0.15
    if kind == "zeros":  # some exact zeros (prod, cumprod)
        v = rng.standard_normal(shape)
        return np.where(rng.uniform(size=shape) < 0.25, 0.0, v)
    if kind == "complex":
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    raise ValueError(kind)


SHAPE = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
SHAPE_ND = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
BROADCAST2 = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)


# ---------------------------------------------------------------------------- rule helpers
# A rule is (covers, build): build(data, rng) -> (args, gpugrad_fn, numpy_fn).


def unary(fn, ref, kind="real", shape=SHAPE):
    def build(data, rng):
        return [values(rng, data.draw(shape), kind)], fn, ref

    return build


def binary(fn, ref, ka="real", kb="real"):
    def build(data, rng):
        sa, sb = data.draw(BROADCAST2).input_shapes
        return [values(rng, sa, ka), values(rng, sb, kb)], fn, ref

    return build


def _axes(data, nd):
    if nd == 0:
        return None
    return data.draw(
        st.one_of(
            st.none(),
            st.integers(-nd, nd - 1),
            st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple),
        )
    )


def reduction(gfn, nfn, kind="real"):
    def build(data, rng):
        shape = data.draw(SHAPE)
        axis = _axes(data, len(shape))
        keep = data.draw(st.booleans())
        return (
            [values(rng, shape, kind)],
            lambda x: gfn(x, axis=axis, keepdims=keep),
            lambda x: nfn(x, axis=axis, keepdims=keep),
        )

    return build


def _quotient_args(rng, sa, sb):
    """``a``, ``b`` with ``a / b`` away from integers (piecewise functions are smooth)."""
    for _ in range(1000):
        a, b = values(rng, sa, "real") * 3, values(rng, sb, "nonzero") * 1.5
        frac = np.abs(np.asarray(a / b) - np.round(a / b))
        if np.all(frac > 0.05):
            return a, b
    raise AssertionError("no smooth remainder arguments found")


def build_remainder(data, rng):
    sa, sb = data.draw(BROADCAST2).input_shapes
    a, b = _quotient_args(rng, sa, sb)
    if data.draw(st.booleans()):
        return [a, b], gg.remainder, np.remainder
    return [a, b], gg.fmod, np.fmod


STEPS = {
    "floor": (gg.floor, np.floor),
    "ceil": (gg.ceil, np.ceil),
    "trunc": (gg.trunc, np.trunc),
    "rint": (gg.rint, np.rint),
    "round": (lambda x: gg.round(x, 1), lambda x: np.round(x, 1)),
}


def build_step(data, rng):
    name = data.draw(st.sampled_from(sorted(STEPS) + ["floor_divide"]))
    if name == "floor_divide":
        sa, sb = data.draw(BROADCAST2).input_shapes
        a, b = _quotient_args(rng, sa, sb)
        return [a, b], lambda a, b: (a // b) * a, lambda a, b: (a // b) * a
    g, n = STEPS[name]
    x = values(rng, data.draw(SHAPE), "away") / (10 if name == "round" else 1)
    return [x], lambda x: g(x) * x, lambda x: n(x) * x


def build_power_const(data, rng):
    p = data.draw(st.sampled_from([2, 3, 0.5, -1.5, 2.5, 1]))
    x = values(rng, data.draw(SHAPE), "pos")
    return [x], lambda x: x**p, lambda x: x**p


def build_where(data, rng):
    sc, sa, sb = data.draw(
        hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3)
    ).input_shapes
    cond = rng.uniform(size=sc) < 0.5
    return (
        [values(rng, sa), values(rng, sb)],
        lambda a, b: gg.where(gg.dlarray(cond), a * b, b),
        lambda a, b: np.where(cond, a * b, b),
    )


def build_cumsum(data, rng):
    shape = data.draw(SHAPE_ND)
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    return [values(rng, shape)], lambda x: gg.cumsum(x, axis), lambda x: np.cumsum(x, axis)


def build_cumprod(data, rng):
    shape = data.draw(SHAPE_ND)
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    kind = data.draw(st.sampled_from(["real", "zeros"]))
    return (
        [values(rng, shape, kind)],
        lambda x: gg.cumprod(x, axis),
        lambda x: np.cumprod(x, axis),
    )


def build_reshape(data, rng):
    shape = data.draw(SHAPE)
    size = int(np.prod(shape, dtype=np.int64))
    target = data.draw(st.sampled_from([(size,), shape[::-1], (1,) + shape, (-1, 1)]))
    return [values(rng, shape)], lambda x: gg.reshape(x, target), lambda x: np.reshape(x, target)


def build_transpose(data, rng):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=3))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    if perm == tuple(range(len(shape))):  # the identity records nothing
        perm = perm[::-1]
    return (
        [values(rng, shape)],
        lambda x: gg.transpose(x, perm),
        lambda x: np.transpose(x, perm),
    )


def build_broadcast_to(data, rng):
    target = data.draw(SHAPE)
    k = data.draw(st.integers(0, len(target)))
    src = tuple(1 if data.draw(st.booleans()) else s for s in target[len(target) - k :])
    return (
        [values(rng, src)],
        lambda x: gg.broadcast_to(x, target),
        lambda x: np.broadcast_to(x, target),
    )


def build_concatenate(data, rng):
    shape = data.draw(SHAPE_ND)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    other = list(shape)
    other[axis] = data.draw(st.integers(1, 3))
    return (
        [values(rng, shape), values(rng, tuple(other))],
        lambda a, b: gg.concatenate([a, b * b], axis=axis),
        lambda a, b: np.concatenate([a, b * b], axis=axis),
    )


def build_flip(data, rng):
    shape = data.draw(SHAPE_ND)
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    return [values(rng, shape)], lambda x: gg.flip(x, axis) * x, lambda x: np.flip(x, axis) * x


def _index(data, shape):
    """A random NumPy index for ``shape``: ints, slices, integer arrays or a bool mask."""
    if data.draw(st.integers(0, 5)) == 0:
        return np.asarray(data.draw(hnp.arrays(bool, shape)))
    idx = []
    for n in shape:
        kind = data.draw(st.sampled_from(["int", "slice", "array"]))
        if kind == "int":
            idx.append(data.draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            start = data.draw(st.integers(0, n - 1))
            idx.append(slice(start, None, data.draw(st.sampled_from([1, 2, -1]))))
        else:
            idx.append(
                np.asarray(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3)))
            )
    arrays = [i for i in idx if isinstance(i, np.ndarray)]
    if len(arrays) > 1:  # several index arrays must broadcast: keep the first
        idx = [i if not isinstance(i, np.ndarray) or i is arrays[0] else 0 for i in idx]
    return tuple(idx)


def build_getitem(data, rng):
    shape = data.draw(SHAPE_ND)
    idx = _index(data, shape)
    return [values(rng, shape)], lambda x: x[idx] ** 2, lambda x: x[idx] ** 2


def build_setitem(data, rng):
    shape = data.draw(SHAPE_ND)
    idx = _index(data, shape)
    vshape = np.empty(shape)[idx].shape

    def fn(x, v):
        y = x * 1.0
        y[idx] = v * 2.0
        return y * x

    def ref(x, v):
        y = x * 1.0
        y[idx] = v * 2.0
        return y * x

    # repeated fancy indices assign in an unspecified order: use unique ones
    if isinstance(idx, tuple) and any(
        isinstance(i, np.ndarray) and len(np.unique(i)) != i.size for i in idx
    ):
        idx = tuple(np.unique(i) if isinstance(i, np.ndarray) else i for i in idx)
        vshape = np.empty(shape)[idx].shape
    return [values(rng, shape), values(rng, vshape)], fn, ref


def build_astype(data, rng):
    return (
        [values(rng, data.draw(SHAPE))],
        lambda x: gg.astype(x, np.complex128) * (1 + 2j),
        lambda x: x.astype(np.complex128) * (1 + 2j),
    )


def complex_unary(fn, ref):
    return unary(fn, ref, "complex")


EINSUM_SPECS = [
    ("ij,jk->ik", "ij", "jk"),
    ("i,i->", "i", "i"),
    ("ii->i", "ii"),
    ("ij->", "ij"),
    ("ijk,k->ij", "ijk", "k"),
    ("ba,ca", "ba", "ca"),
    ("...ij,...jk->...ik", "bij", "bjk"),
    ("i,ij,j->i", "i", "ij", "j"),
]


def build_einsum(data, rng):
    spec, *terms = data.draw(st.sampled_from(EINSUM_SPECS))
    sizes = {c: data.draw(st.integers(1, 3)) for c in "".join(terms)}
    args = [values(rng, tuple(sizes[c] for c in t)) for t in terms]
    return args, lambda *a: gg.einsum(spec, *a), lambda *a: np.einsum(spec, *a)


def build_matmul(data, rng):
    sa, sb = data.draw(
        hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2, max_side=3)
    ).input_shapes
    return [values(rng, sa), values(rng, sb)], gg.matmul, np.matmul


def build_linear(relu):
    def build(data, rng):
        n, i, o = (data.draw(st.integers(1, 3)) for _ in range(3))

        def ref(x, w, b):
            y = x @ w.T + b
            return np.maximum(y, 0) if relu else y

        return (
            [values(rng, (n, i)), values(rng, (o, i)), values(rng, (o,))],
            lambda x, w, b: _prims.linear(x, w, b, relu=relu),
            ref,
        )

    return build


def build_relu(data, rng):
    return (
        [values(rng, data.draw(SHAPE), "nonzero")],
        lambda x: gg.relu(x) * x,
        lambda x: np.maximum(x, 0) * x,
    )


def conv_ref(x, w, b, stride, padding, dilation, groups, relu):
    """NHWC convolution in NumPy (the reference)."""
    t, bo, lf, r = padding
    xp = np.pad(x, ((0, 0), (t, bo), (lf, r), (0, 0)))
    kh, kw, cg, cout = w.shape
    n, h, wd, _ = xp.shape
    ho = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, ho, wo, cout))
    fg = cout // groups
    for i in range(ho):
        for j in range(wo):
            rows = i * stride[0] + dilation[0] * np.arange(kh)
            cols = j * stride[1] + dilation[1] * np.arange(kw)
            patch = xp[:, rows][:, :, cols]  # (n, kh, kw, c)
            for gi in range(groups):
                p = patch[..., gi * cg : (gi + 1) * cg]
                wg = w[..., gi * fg : (gi + 1) * fg]
                out[:, i, j, gi * fg : (gi + 1) * fg] = np.einsum("nabc,abcf->nf", p, wg)
    out += b
    return np.maximum(out, 0) if relu else out


def build_conv(relu):
    def build(data, rng):
        groups = data.draw(st.sampled_from([1, 1, 2]))
        cg, fg = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
        kh, kw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
        stride = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
        dilation = (data.draw(st.integers(1, 2)), 1)
        padding = tuple(data.draw(st.integers(0, 1)) for _ in range(4))
        h = data.draw(st.integers(dilation[0] * (kh - 1) + 1, 4))
        wd = data.draw(st.integers(kw, 4))
        n = data.draw(st.integers(1, 2))
        geo = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        args = [
            values(rng, (n, h, wd, cg * groups)),
            values(rng, (kh, kw, cg, fg * groups)),
            values(rng, (fg * groups,)),
        ]
        return (
            args,
            lambda x, w, b: _prims.conv2d(x, w, b, relu=relu, **geo),
            lambda x, w, b: conv_ref(x, w, b, relu=relu, **geo),
        )

    return build


def build_maxpool(data, rng):
    ph, pw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    stride = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    h, w = data.draw(st.integers(ph, 4)), data.draw(st.integers(pw, 4))
    c, n = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))

    def ref(x):
        ho, wo = (h - ph) // stride[0] + 1, (w - pw) // stride[1] + 1
        out = np.empty((ho, wo, c, n))
        for i in range(ho):
            for j in range(wo):
                win = x[i * stride[0] : i * stride[0] + ph, j * stride[1] : j * stride[1] + pw]
                out[i, j] = win.max(axis=(0, 1))
        return out

    return (
        [values(rng, (h, w, c, n), "distinct")],
        lambda x: gg.stripdims(gg.maxpool(x, (ph, pw), stride=stride, data_format="SSCB")),
        ref,
    )


def _sig(z):
    return 1 / (1 + np.exp(-z))


def build_lstm(data, rng):
    c, n, t, hid = (data.draw(st.integers(1, 2)) for _ in range(4))

    def fn(x, h0, c0, w, r, b):
        y, h, cs = gg.lstm(
            gg.dlarray(x, "CBT"), gg.dlarray(h0, "CB"), gg.dlarray(c0, "CB"), w, r, b
        )
        return gg.concatenate(
            [gg.reshape(gg.stripdims(y), (-1,)), gg.reshape(gg.stripdims(cs), (-1,))]
        )

    def ref(x, h0, c0, w, r, b):
        h, cs = h0.T, c0.T  # (n, hid)
        ys = []
        for k in range(t):
            z = x[:, :, k].T @ w.T + h @ r.T + b
            i, f, g, o = (z[:, j * hid : (j + 1) * hid] for j in range(4))
            cs = _sig(f) * cs + _sig(i) * np.tanh(g)
            h = _sig(o) * np.tanh(cs)
            ys.append(h.T)
        return np.concatenate([np.stack(ys, -1).ravel(), cs.T.ravel()])

    args = [
        values(rng, (c, n, t)),
        values(rng, (hid, n)),
        values(rng, (hid, n)),
        values(rng, (4 * hid, c)) * 0.7,
        values(rng, (4 * hid, hid)) * 0.7,
        values(rng, (4 * hid,)),
    ]
    return args, fn, ref


def _orthogonal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _separated(rng, n, low=0.5):
    """``n`` values at least 0.4 apart, from ``low`` upwards, in random order."""
    return rng.permutation(low + 0.6 * np.arange(n) + rng.uniform(0, 0.2, n))


def _batch(data):
    return data.draw(st.sampled_from([(), (), (2,)]))


def build_linalg_square(gfn, nfn, shift=3.0):
    def build(data, rng):
        n = data.draw(st.integers(1, 3))
        return [values(rng, _batch(data) + (n, n)) + shift * np.eye(n)], gfn, nfn

    return build


def build_solve(data, rng):
    n, k = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    batch = _batch(data)
    bshape = data.draw(st.sampled_from([(n,), (n, k), batch + (n, k)]))
    return (
        [values(rng, batch + (n, n)) + 3 * np.eye(n), values(rng, bshape)],
        gg.linalg.solve,
        np.linalg.solve,
    )


def build_slogdet(data, rng):
    n = data.draw(st.integers(1, 3))
    return (
        [values(rng, _batch(data) + (n, n)) + 2 * np.eye(n)],
        lambda a: gg.linalg.slogdet(a)[0] * gg.linalg.slogdet(a)[1],
        lambda a: np.linalg.slogdet(a)[0] * np.linalg.slogdet(a)[1],
    )


def build_cholesky(data, rng):
    n = data.draw(st.integers(1, 3))
    eye = np.eye(n)
    return (
        [values(rng, (n, n))],
        lambda x: gg.linalg.cholesky(x @ gg.transpose(x) + gg.dlarray(eye)),
        lambda x: np.linalg.cholesky(x @ x.T + eye),
    )


def build_qr(data, rng):
    n = data.draw(st.integers(1, 3))
    m = data.draw(st.integers(n, 4))
    q0 = _orthogonal(rng, m)[:, :n]
    r0 = np.triu(values(rng, (n, n))) + np.diag(_separated(rng, n, 1.0))
    return (
        [q0 @ r0],
        lambda a: gg.linalg.qr(a)[0] * gg.sum(gg.linalg.qr(a)[1]),
        lambda a: np.linalg.qr(a)[0] * np.sum(np.linalg.qr(a)[1]),
    )


def build_svd(data, rng):
    m, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    k = min(m, n)
    a = _orthogonal(rng, m)[:, :k] @ np.diag(_separated(rng, k)) @ _orthogonal(rng, n)[:k]
    # gauge-free uses of U and Vh (a sign flip of a singular pair cancels)
    if data.draw(st.booleans()):
        return [a], lambda x: gg.linalg.svd(x, compute_uv=False), np.linalg.svdvals

    def g(x):
        u, s, vh = gg.linalg.svd(x, full_matrices=False)
        return (u * (s**2)[None, :]) @ (vh**3)

    def r(x):
        u, s, vh = np.linalg.svd(x, full_matrices=False)
        return (u * (s**2)[None, :]) @ (vh**3)

    return [a], g, r


def build_eigh(data, rng):
    n = data.draw(st.integers(1, 3))
    q = _orthogonal(rng, n)
    a = (q * (_separated(rng, n) - 1.0)) @ q.T

    def g(x):
        w, v = gg.linalg.eigh((x + gg.transpose(x)) * 0.5)
        return (v * (w**3)[None, :]) @ gg.transpose(v) + w

    def r(x):
        w, v = np.linalg.eigh((x + x.T) * 0.5)
        return (v * (w**3)[None, :]) @ v.T + w

    return [a], g, r


# ---------------------------------------------------------------------------- the table


def _gelu_ref(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / np.sqrt(2.0)))


TABLE = {
    # a single process: the collectives are the identity (tests/test_distributed.py
    # runs them on two ranks)
    "all_reduce": ({"all_reduce"}, unary(lambda x: dist.all_reduce(x, op="sum"), lambda x: x)),
    "all_reduce_extremum": (
        {"all_reduce_extremum"},
        unary(lambda x: dist.all_reduce(x, op="max"), lambda x: x),
    ),
    "gelu_erf": ({"gelu_erf"}, unary(lambda x: gg.gelu(x, approximation="none"), _gelu_ref)),
    # elementwise, unary
    "negative": ({"negative"}, unary(lambda x: -x, np.negative)),
    "exp": ({"exp"}, unary(gg.exp, np.exp)),
    "log": ({"log"}, unary(gg.log, np.log, "pos")),
    "log1p": ({"log1p"}, unary(gg.log1p, np.log1p, "pos")),
    "expm1": ({"expm1"}, unary(gg.expm1, np.expm1)),
    "sqrt": ({"sqrt"}, unary(gg.sqrt, np.sqrt, "pos")),
    "sin": ({"sin"}, unary(gg.sin, np.sin)),
    "cos": ({"cos"}, unary(gg.cos, np.cos)),
    "tan": ({"tan"}, unary(gg.tan, np.tan, "unit")),
    "asin": ({"asin"}, unary(gg.arcsin, np.arcsin, "unit")),
    "acos": ({"acos"}, unary(gg.arccos, np.arccos, "unit")),
    "atan": ({"atan"}, unary(gg.arctan, np.arctan)),
    "sinh": ({"sinh"}, unary(gg.sinh, np.sinh)),
    "cosh": ({"cosh"}, unary(gg.cosh, np.cosh)),
    "tanh": ({"tanh"}, unary(gg.tanh, np.tanh)),
    "sigmoid": ({"sigmoid"}, unary(gg.sigmoid, lambda x: 1 / (1 + np.exp(-x)))),
    "asinh": ({"asinh"}, unary(gg.arcsinh, np.arcsinh)),
    "acosh": ({"acosh"}, unary(gg.arccosh, np.arccosh, "gt1")),
    "atanh": ({"atanh"}, unary(gg.arctanh, np.arctanh, "unit")),
    "log2": ({"log2"}, unary(gg.log2, np.log2, "pos")),
    "log10": ({"log10"}, unary(gg.log10, np.log10, "pos")),
    "exp2": ({"exp2"}, unary(gg.exp2, np.exp2)),
    "cbrt": ({"cbrt"}, unary(gg.cbrt, np.cbrt, "nonzero")),
    "sign": (
        {"sign", "multiply"},
        unary(lambda x: gg.sign(x) * x, lambda x: np.sign(x) * x, "nonzero"),
    ),
    "abs": ({"abs"}, unary(gg.abs, np.abs, "nonzero")),
    "real": ({"real"}, complex_unary(lambda z: gg.real(z) ** 2, lambda z: np.real(z) ** 2)),
    "imag": ({"imag"}, complex_unary(lambda z: gg.imag(z) ** 2, lambda z: np.imag(z) ** 2)),
    "conj": (
        {"conj"},
        complex_unary(lambda z: gg.conj(z) * z * (1 + 2j), lambda z: np.conj(z) * z * (1 + 2j)),
    ),
    "angle": ({"angle"}, complex_unary(gg.angle, np.angle)),
    "abs_complex": ({"abs"}, complex_unary(gg.abs, np.abs)),
    "power_const": ({"power_const"}, build_power_const),
    "piecewise_constant": ({"piecewise_constant"}, build_step),
    "relu": ({"relu", "relu_bwd"}, build_relu),
    # elementwise, binary with broadcasting
    "add": ({"add"}, binary(lambda a, b: a + b, np.add)),
    "subtract": ({"subtract"}, binary(lambda a, b: a - b, np.subtract)),
    "multiply": ({"multiply"}, binary(lambda a, b: a * b, np.multiply)),
    "divide": ({"divide"}, binary(lambda a, b: a / b, np.divide, "real", "nonzero")),
    "power": ({"power"}, binary(lambda a, b: a**b, np.power, "pos", "real")),
    "atan2": ({"atan2"}, binary(gg.arctan2, np.arctan2, "real", "nonzero")),
    "maximum": ({"maximum"}, binary(gg.maximum, np.maximum, "distinct", "distinct")),
    "minimum": ({"minimum"}, binary(gg.minimum, np.minimum, "distinct", "distinct")),
    "hypot": ({"hypot"}, binary(gg.hypot, np.hypot, "nonzero", "nonzero")),
    "remainder": ({"remainder"}, build_remainder),
    "where": ({"where"}, build_where),
    # reductions and scans
    "sum": ({"sum"}, reduction(gg.sum, np.sum)),
    "prod": ({"prod"}, reduction(gg.prod, np.prod, "zeros")),
    "max": ({"max"}, reduction(gg.max, np.max, "distinct")),
    "min": ({"min"}, reduction(gg.min, np.min, "distinct")),
    "cumsum": ({"cumsum"}, build_cumsum),
    "cumprod": ({"cumprod"}, build_cumprod),
    # shape and indexing
    "reshape": ({"reshape"}, build_reshape),
    "transpose": ({"transpose"}, build_transpose),
    "broadcast_to": ({"broadcast_to"}, build_broadcast_to),
    "concatenate": ({"concatenate"}, build_concatenate),
    "flip": ({"flip"}, build_flip),
    "getitem": ({"getitem", "scatter_add"}, build_getitem),
    "setitem": ({"setitem"}, build_setitem),
    "astype": ({"astype"}, build_astype),
    # products and deep-learning primitives
    "einsum": ({"einsum"}, build_einsum),
    "matmul": ({"matmul"}, build_matmul),
    "linear": ({"linear"}, build_linear(False)),
    "linear_relu": ({"linear_relu", "relu_bwd"}, build_linear(True)),
    "conv2d": ({"conv2d", "conv2d_bwd_data", "conv2d_bwd_filter"}, build_conv(False)),
    "conv2d_relu": ({"conv2d_relu", "conv2d_bwd_data", "conv2d_bwd_filter"}, build_conv(True)),
    "maxpool": ({"pool_gather", "pool_scatter"}, build_maxpool),
    "lstm": ({"lstm"}, build_lstm),
    # linear algebra
    "inv": ({"inv"}, build_linalg_square(gg.linalg.inv, np.linalg.inv)),
    "det": ({"det"}, build_linalg_square(gg.linalg.det, np.linalg.det, 2.0)),
    "solve": ({"solve"}, build_solve),
    "slogdet": ({"slogdet"}, build_slogdet),
    "cholesky": ({"cholesky"}, build_cholesky),
    "qr": ({"qr"}, build_qr),
    "svd": ({"svd"}, build_svd),
    "eigh": ({"eigh"}, build_eigh),
}


def test_every_registered_primitive_has_a_rule():
    covered = set().union(*(covers for covers, _ in TABLE.values()))
    missing = sorted(set(REGISTRY) - covered)
    assert not missing, (
        f"registered primitives without a rule in tests/test_property.py TABLE: {missing}; "
        "add one (shapes, values, NumPy reference)"
    )
    unknown = sorted(covered - set(REGISTRY))
    assert not unknown, f"TABLE claims primitives that are not registered: {unknown}"


def _graph_primitives(fn, args):
    """Primitives recorded by ``fn`` and by its (recorded) gradient."""

    def run(*xs):
        y = fn(*xs)
        y = gg.sum(gg.real(y * gg.conj(y))) if y.size != 1 or y.dtype.kind == "c" else y
        y = gg.reshape(y, ())
        gs = gg.dlgradient(y, *xs, enable_higher_derivatives=True)
        gs = gs if isinstance(gs, tuple) else (gs,)
        names = primitives_in_graph(y)
        for g in gs:
            names |= primitives_in_graph(g)
        return names

    return gg.dlfeval(run, *[gg.dlarray(a) for a in args])


@pytest.mark.parametrize("rule", sorted(TABLE))
@PROFILE
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_rule_matches_numpy_and_finite_differences(rule, data, seed):
    covers, build = TABLE[rule]
    rng = np.random.default_rng(seed)
    args, fn, ref = build(data, rng)
    RAN[rule] = RAN.get(rule, 0) + 1
    got = fn(*[gg.dlarray(a) for a in args])
    want = ref(*[np.array(a) for a in args])
    got = got.numpy() if isinstance(got, gg.dlarray) else np.asarray(got)
    assert got.shape == np.shape(want), f"{rule}: shape {got.shape}, NumPy {np.shape(want)}"
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=rule)
    SEEN.setdefault(rule, set()).update(_graph_primitives(fn, args))
    check_gradient(fn, *args, order=1, rtol=1e-5, atol=1e-6)
    check_gradient(fn, *args, order=2, rtol=1e-5, atol=1e-6)


def test_zz_rules_recorded_what_they_claim():
    """Runs after the rules (file order): each rule that ran recorded every primitive it
    claims, so a claim in TABLE cannot hide an untested primitive."""
    total = sum(RAN.values())
    print(f"\nhypothesis: {total} examples over {len(RAN)} rules")
    for rule in RAN:
        covers = TABLE[rule][0]
        assert covers <= SEEN[rule], f"{rule}: claims {sorted(covers - SEEN[rule])}, never recorded"
