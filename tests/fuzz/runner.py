"""Program generation, the op table (gpugrad and PyTorch side by side) and the
comparison through the faces. See the package docstring for the conventions."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import torch

import gpugrad as gg
from gpugrad.ops import REGISTRY, core

torch.set_default_dtype(torch.float64)
TF = torch.nn.functional

# ------------------------------------------------------------------ namespaces


class _G:
    """gpugrad spelling of the few helpers the op table shares."""

    name = "gg"

    @staticmethod
    def T(x):  # noqa: N802
        return gg.transpose(x)

    @staticmethod
    def fmt(x, labels):
        return gg.dlarray(x, labels)


class _T:
    name = "torch"


# Each op: (name, arity, gpugrad fn, torch fn). Operands are arrays of one shape S
# (m, n); the result has shape S too. Extra inputs (blocks) are listed separately.

UNARY = {
    "exp": (lambda x: gg.exp(gg.tanh(x)), lambda x: torch.exp(torch.tanh(x))),
    "log": (lambda x: gg.log(x * x + 0.5), lambda x: torch.log(x * x + 0.5)),
    "log1p": (lambda x: gg.log1p(x * x), lambda x: torch.log1p(x * x)),
    "expm1": (lambda x: gg.expm1(gg.tanh(x)), lambda x: torch.expm1(torch.tanh(x))),
    "sqrt": (lambda x: gg.sqrt(x * x + 0.1), lambda x: torch.sqrt(x * x + 0.1)),
    "abs": (lambda x: gg.abs(x), torch.abs),
    "sin": (gg.sin, torch.sin),
    "cos": (gg.cos, torch.cos),
    "tan": (lambda x: gg.tan(0.4 * gg.tanh(x)), lambda x: torch.tan(0.4 * torch.tanh(x))),
    "asin": (lambda x: gg.asin(0.9 * gg.tanh(x)), lambda x: torch.asin(0.9 * torch.tanh(x))),
    "acos": (lambda x: gg.acos(0.9 * gg.tanh(x)), lambda x: torch.acos(0.9 * torch.tanh(x))),
    "atan": (gg.atan, torch.atan),
    "sinh": (lambda x: gg.sinh(gg.tanh(x)), lambda x: torch.sinh(torch.tanh(x))),
    "cosh": (lambda x: gg.cosh(gg.tanh(x)), lambda x: torch.cosh(torch.tanh(x))),
    "tanh": (gg.tanh, torch.tanh),
    "sigmoid": (gg.sigmoid, torch.sigmoid),
    "relu": (lambda x: gg.relu(x) + 0.1 * x, lambda x: torch.relu(x) + 0.1 * x),
    "negative": (lambda x: -x, lambda x: -x),
    "square": (lambda x: gg.square(x), lambda x: x * x),
    "power": (
        lambda x: gg.power(x * x + 0.5, 1.5),
        lambda x: torch.pow(x * x + 0.5, 1.5),
    ),
    "cube": (lambda x: x**3, lambda x: x**3),
    "reciprocal": (lambda x: 1.0 / (x * x + 0.5), lambda x: 1.0 / (x * x + 0.5)),
    "sign": (lambda x: gg.sign(x) * x, lambda x: torch.sign(x) * x),
    "clip": (
        lambda x: gg.clip(x, -0.5, 0.5) + 0.1 * x,
        lambda x: torch.clamp(x, -0.5, 0.5) + 0.1 * x,
    ),
    "gelu": (gg.gelu, TF.gelu),
    "gelu_tanh": (
        lambda x: gg.gelu(x, approximation="tanh"),
        lambda x: TF.gelu(x, approximate="tanh"),
    ),
    "leakyrelu": (lambda x: gg.leakyrelu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2)),
    "astype": (
        lambda x: x.astype(np.float32).astype(np.float64),
        lambda x: x.to(torch.float32).to(torch.float64),
    ),
    "flip": (lambda x: gg.flip(x, 1), lambda x: torch.flip(x, (1,))),
    "flip_all": (lambda x: gg.flip(x), lambda x: torch.flip(x, tuple(range(x.ndim)))),
    "transpose_reshape": (
        lambda x: gg.reshape(gg.transpose(x), x.shape),
        lambda x: x.T.reshape(x.shape),
    ),
    "moveaxis": (
        lambda x: gg.reshape(gg.moveaxis(x, 0, -1), x.shape),
        lambda x: torch.movedim(x, 0, -1).reshape(x.shape),
    ),
    "swapaxes": (
        lambda x: gg.reshape(gg.swapaxes(x, 0, 1), x.shape),
        lambda x: x.transpose(0, 1).reshape(x.shape),
    ),
    "cumsum": (lambda x: gg.cumsum(x, 1), lambda x: torch.cumsum(x, 1)),
    "cumsum0": (lambda x: gg.cumsum(x, 0), lambda x: torch.cumsum(x, 0)),
    "slice_rev": (lambda x: x[::-1], lambda x: torch.flip(x, (0,))),
    "gather_rows": (
        lambda x: x[np.arange(x.shape[0]) // 2],
        lambda x: x[torch.as_tensor(np.arange(x.shape[0]) // 2)],
    ),
    "broadcast_row": (
        lambda x: gg.broadcast_to(x[:1], x.shape) + x,
        lambda x: x[:1].expand(x.shape) + x,
    ),
    "expand_squeeze": (
        lambda x: gg.squeeze(gg.expand_dims(x, 1), 1) * 2.0,
        lambda x: x.unsqueeze(1).squeeze(1) * 2.0,
    ),
    "flatten": (
        lambda x: gg.reshape(gg.flatten(x), x.shape),
        lambda x: x.flatten().reshape(x.shape),
    ),
    "softmax": (
        lambda x: gg.stripdims(gg.softmax(gg.dlarray(x, "CB"))),
        lambda x: torch.softmax(x, 0),
    ),
    "complex": (
        lambda x: gg.abs(gg.exp(0.3j * x) * (x + 0.5j)) + gg.angle(x + 1j) + gg.real(x * (1 - 1j)),
        lambda x: (
            torch.abs(torch.exp(0.3j * x) * (x + 0.5j))
            + torch.angle(x + 1j)
            + torch.real(x * (1 - 1j))
        ),
    ),
    "complex_conj": (
        lambda x: gg.imag(gg.conj(gg.sin(x + 0.2j)) * (x - 1j)),
        lambda x: torch.imag(torch.conj(torch.sin(x + 0.2j)) * (x - 1j)),
    ),
}

BINARY = {
    "add": (lambda x, y: x + y, lambda x, y: x + y),
    "subtract": (lambda x, y: x - y, lambda x, y: x - y),
    "multiply": (lambda x, y: x * y, lambda x, y: x * y),
    "divide": (lambda x, y: x / (y * y + 0.5), lambda x, y: x / (y * y + 0.5)),
    "maximum": (gg.maximum, torch.maximum),
    "minimum": (gg.minimum, torch.minimum),
    "where": (
        lambda x, y: gg.where(x > y, x, y * y),
        lambda x, y: torch.where(x > y, x, y * y),
    ),
    "atan2": (gg.atan2, torch.atan2),
    "power2": (
        lambda x, y: gg.power(x * x + 0.5, gg.tanh(y)),
        lambda x, y: torch.pow(x * x + 0.5, torch.tanh(y)),
    ),
    "concat": (
        lambda x, y: gg.concatenate([x[:, :1], y[:, 1:]], axis=1),
        lambda x, y: torch.cat([x[:, :1], y[:, 1:]], 1),
    ),
    "stack": (
        lambda x, y: gg.sum(gg.stack([x, y * 2.0], axis=0), axis=0),
        lambda x, y: torch.stack([x, y * 2.0], 0).sum(0),
    ),
    "matmul_t": (
        lambda x, y: gg.matmul(gg.matmul(x, gg.transpose(y)), y) * 0.3,
        lambda x, y: (x @ y.T) @ y * 0.3,
    ),
    "dot": (
        lambda x, y: x * gg.dot(gg.flatten(x), gg.flatten(y)) * 0.1,
        lambda x, y: x * torch.dot(x.flatten(), y.flatten()) * 0.1,
    ),
    "complex2": (
        lambda x, y: gg.abs((x + 1j * y) ** 2 + 0.3),
        lambda x, y: torch.abs(torch.complex(x, y) ** 2 + 0.3),
    ),
}


def _setitem_g(x, y):
    z = x * 1.0
    z[0] = y[0] * 3.0
    return z


def _setitem_t(x, y):
    z = x * 1.0
    z[0] = y[0] * 3.0
    return z


BINARY["setitem"] = (_setitem_g, _setitem_t)


def _reduction(gfn, tfn):
    """x + op(x, axis, keepdims=True): a reduction broadcast back to x's shape."""

    def g(x, axis):
        return x + gfn(x, axis)

    def t(x, axis):
        return x + tfn(x, axis)

    return g, t


def _torch_prod(x, axes):
    for ax in sorted(np.atleast_1d(axes).tolist(), reverse=True):
        x = x.prod(ax, keepdim=True)
    return x


def _tax(axis):
    return tuple(range(2)) if axis is None else axis


REDUCE = {
    "sum": _reduction(
        lambda x, a: gg.sum(x, a, keepdims=True), lambda x, a: torch.sum(x, _tax(a), True)
    ),
    "mean": _reduction(
        lambda x, a: gg.mean(x, a, keepdims=True), lambda x, a: torch.mean(x, _tax(a), True)
    ),
    "prod": _reduction(
        lambda x, a: gg.prod(gg.tanh(x), a, keepdims=True),
        lambda x, a: _torch_prod(torch.tanh(x), _tax(a)),
    ),
    "max": _reduction(
        lambda x, a: gg.max(x, a, keepdims=True), lambda x, a: torch.amax(x, _tax(a), True)
    ),
    "min": _reduction(
        lambda x, a: gg.min(x, a, keepdims=True), lambda x, a: torch.amin(x, _tax(a), True)
    ),
    "norm": _reduction(
        lambda x, a: gg.norm(x, axis=a, keepdims=True),
        lambda x, a: torch.linalg.vector_norm(x, dim=_tax(a), keepdim=True),
    ),
    "logsumexp": _reduction(
        lambda x, a: gg.logsumexp(x, a, keepdims=True),
        lambda x, a: torch.logsumexp(x, _tax(a), True),
    ),
}


# ------------------------------------------------------------------ blocks (extra inputs)


def _lstm_torch(x, h0, c0, w, r, b):
    # x [C, N, T]; states [H, N]; MATLAB gate order = PyTorch's (i, f, g, o)
    hid = r.shape[1]
    h, c = h0.T, c0.T
    ys = []
    for t in range(x.shape[2]):
        gates = x[:, :, t].T @ w.T + h @ r.T + b
        i, f, g, o = (gates[:, k * hid : (k + 1) * hid] for k in range(4))
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ys.append(h.T)
    return torch.stack(ys, 2)


BLOCKS = {
    # name: (shapes of extra inputs given (m, n), gpugrad fn, torch fn); result: a
    # scalar folded into x as x + tanh(mean(block))
    "fullyconnect": (
        lambda m, n: [(3, n), (3,)],
        lambda x, w, b: gg.stripdims(gg.fullyconnect(gg.dlarray(x, "BC"), w, b)),
        lambda x, w, b: x @ w.T + b,
    ),
    "dlconv": (
        lambda m, n: [(5, 4, 2, 2), (3, 3, 2, 3), (3,)],
        lambda x, d, w, b: (
            gg.stripdims(gg.dlconv(gg.dlarray(d, "SSCB"), w, b, padding=1)) * gg.mean(x)
        ),
        lambda x, d, w, b: (
            TF.conv2d(d.permute(3, 2, 0, 1), w.permute(3, 2, 0, 1), b, padding=1) * x.mean()
        ),
    ),
    "dlconv_stride": (
        lambda m, n: [(6, 5, 2, 1), (2, 2, 2, 2), (2,)],
        lambda x, d, w, b: (
            gg.stripdims(gg.dlconv(gg.dlarray(d, "SSCB"), w, b, stride=2)) + gg.mean(x)
        ),
        lambda x, d, w, b: (
            TF.conv2d(d.permute(3, 2, 0, 1), w.permute(3, 2, 0, 1), b, stride=2) + x.mean()
        ),
    ),
    "maxpool": (
        lambda m, n: [(4, 4, 2, 2)],
        lambda x, d: gg.stripdims(gg.maxpool(gg.dlarray(d, "SSCB"), 2, stride=2)) * gg.sum(x),
        lambda x, d: TF.max_pool2d(d.permute(3, 2, 0, 1), 2, 2) * x.sum(),
    ),
    "avgpool": (
        lambda m, n: [(4, 6, 1, 2)],
        lambda x, d: gg.stripdims(gg.avgpool(gg.dlarray(d, "SSCB"), 2, stride=2)) * gg.sum(x),
        lambda x, d: TF.avg_pool2d(d.permute(3, 2, 0, 1), 2, 2) * x.sum(),
    ),
    "lstm": (
        lambda m, n: [(2, n, 3), (3, n), (3, n), (12, 2), (12, 3), (12,)],
        lambda x, xs, h0, c0, w, r, b: (
            gg.stripdims(
                gg.lstm(gg.dlarray(xs, "CBT"), gg.dlarray(h0, "CB"), gg.dlarray(c0, "CB"), w, r, b)[
                    0
                ]
            )
            * gg.mean(x)
        ),
        lambda x, xs, h0, c0, w, r, b: _lstm_torch(xs, h0, c0, w, r, b) * x.mean(),
    ),
}

ALL_OPS = sorted(
    [f"u:{k}" for k in UNARY]
    + [f"b:{k}" for k in BINARY]
    + [f"r:{k}" for k in REDUCE]
    + [f"k:{k}" for k in BLOCKS]
)

FACES = ("matlab", "swift", "mxnet", "checkpoint")


# ------------------------------------------------------------------ programs


@dataclasses.dataclass
class Program:
    seed: int
    shape: tuple
    inputs: list  # numpy arrays
    steps: list  # (op key, operand indices, extra input indices, axis)
    weights: list  # loss weights for the last values
    direction: list  # HVP direction per input
    face: str
    n_in: int

    def text(self):
        parts = [f"seed={self.seed} face={self.face} shape={self.shape}"]
        for k, (op, ops, extra, axis) in enumerate(self.steps):
            a = f" axis={axis}" if op.startswith("r:") else ""
            parts.append(f"v{k + self.n_in} = {op}({ops}, extra={extra}{a})")
        return "; ".join(parts)


def make_program(seed, ops=None, face=None, max_steps=7):
    rng = np.random.default_rng(seed)
    ops = ALL_OPS if ops is None else ops
    m, n = int(rng.integers(1, 5)), int(rng.integers(2, 5))
    n_in = int(rng.integers(1, 4))
    inputs = [rng.standard_normal((m, n)) for _ in range(n_in)]
    pool = list(range(n_in))  # value indices of shape (m, n); inputs first
    n_values = n_in
    steps = []
    for _ in range(int(rng.integers(2, max_steps + 1))):
        op = ops[int(rng.integers(len(ops)))]
        kind, name = op.split(":")
        arity = 2 if kind == "b" else 1
        operands = [pool[int(rng.integers(len(pool)))] for _ in range(arity)]
        extra = []
        if kind == "k":
            for shp in BLOCKS[name][0](m, n):
                inputs.append(rng.standard_normal(shp) * 0.7)
                extra.append(len(inputs) - 1)
        axis = [None, 0, 1, (0, 1)][int(rng.integers(4))] if kind == "r" else None
        steps.append((op, operands, extra, axis))
        pool.append(n_values)
        n_values += 1
    last = pool[-2:]
    weights = [rng.standard_normal((m, n)) for _ in last]
    direction = [rng.standard_normal(a.shape) for a in inputs]
    face = face or FACES[seed % len(FACES)]
    return Program(seed, (m, n), inputs, steps, weights, direction, face, n_in)


def evaluate(prog, ns, args, apply=None):
    """The program's loss with ``ns`` ('gg' or 'torch') on ``args`` (one per input)."""
    # value ids: the first n_in inputs (shape (m, n)) are 0..n_in-1, step k's output
    # is n_in + k; block inputs are only ever read through args
    values = {i: args[i] for i in range(prog.n_in)}
    k = prog.n_in
    for op, operands, extra, axis in prog.steps:
        kind, name = op.split(":")
        side = 0 if ns == "gg" else 1
        xs = [values[o] for o in operands]
        ex = [args[e] for e in extra]
        if kind == "u":
            fn = UNARY[name][side]
            out = _apply(apply, fn, xs)
        elif kind == "b":
            fn = BINARY[name][side]
            out = _apply(apply, fn, xs)
        elif kind == "r":
            fn = REDUCE[name][side]
            out = _apply(apply, lambda x, fn=fn, axis=axis: fn(x, axis), xs)
        else:
            fn = BLOCKS[name][1 + side]
            x0 = xs[0]

            def block(x, *e, fn=fn):
                r = fn(x, *e)
                s = gg.mean(gg.tanh(r)) if ns == "gg" else torch.tanh(r).mean()
                return x + s

            out = _apply(apply, block, [x0, *ex])
        values[k] = out
        k += 1
    ids = sorted(values)[-2:]
    loss = 0.0
    for i, w in zip(ids, prog.weights):
        v = values[i]
        if ns == "gg":
            loss = loss + gg.sum(v * gg.dlarray(w))
        else:
            loss = loss + torch.sum(v * torch.as_tensor(w))
    return loss


def _apply(apply, fn, xs):
    return fn(*xs) if apply is None else apply(fn, *xs)


# ------------------------------------------------------------------ references and faces


def torch_reference(prog):
    ts = [torch.tensor(a, requires_grad=True) for a in prog.inputs]
    loss = evaluate(prog, "torch", ts)
    grads = torch.autograd.grad(loss, ts, create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(ts, grads)]
    s = sum(torch.sum(g * torch.as_tensor(v)) for g, v in zip(grads, prog.direction))
    if s.requires_grad:
        hv = torch.autograd.grad(s, ts, allow_unused=True)
    else:
        hv = [None] * len(ts)
    hv = [torch.zeros_like(t) if h is None else h for t, h in zip(ts, hv)]
    return (
        float(loss.detach()),
        [g.detach().numpy(force=True) for g in grads],
        [h.detach().numpy(force=True) for h in hv],
    )


def _checkpointed(fn, *xs):
    return gg.checkpoint(fn, *xs)


def gg_face(prog):
    """(value, gradients, HVPs) through the program's face."""
    xs = [gg.dlarray(a.copy()) for a in prog.inputs]
    v = [gg.dlarray(d) for d in prog.direction]
    face = prog.face
    apply = _checkpointed if face == "checkpoint" else None
    if face in ("matlab", "checkpoint"):

        def f(*a):
            loss = evaluate(prog, "gg", a, apply)
            grads = gg.dlgradient(loss, *a, enable_higher_derivatives=True)
            grads = grads if isinstance(grads, tuple) else (grads,)
            s = sum((gg.sum(g * d) for g, d in zip(grads, v)), gg.dlarray(0.0))
            hv = gg.dlgradient(s, *a) if s.traced else tuple(gg.zeros_like(x) for x in a)
            hv = hv if isinstance(hv, tuple) else (hv,)
            return loss, grads, hv

        loss, grads, hv = gg.dlfeval(f, *xs)
    elif face == "swift":
        f = lambda *a: evaluate(prog, "gg", a)  # noqa: E731
        loss, grads = gg.value_with_gradient(f)(*xs)
        grads = grads if isinstance(grads, tuple) else (grads,)

        def directional(*a):
            g = gg.gradient(f)(*a)
            g = g if isinstance(g, tuple) else (g,)
            return sum((gg.sum(gi * d) for gi, d in zip(g, v)), gg.dlarray(0.0))

        hv = gg.gradient(directional)(*xs)
        hv = hv if isinstance(hv, tuple) else (hv,)
    else:  # mxnet
        for x in xs:
            x.attach_grad()
        with gg.autograd.record():
            loss = evaluate(prog, "gg", xs)
        g = gg.autograd.grad(loss, xs, create_graph=True)
        with gg.autograd.record():
            s = sum((gg.sum(gi * d) for gi, d in zip(g, v)), gg.dlarray(0.0))
        if s.traced:
            s.backward()
            hv = [x.grad for x in xs]
        else:
            hv = [gg.zeros_like(x) for x in xs]
        # and the first-order path of backward() (the fast rules)
        for x in xs:
            x.attach_grad()
        with gg.autograd.record():
            loss = evaluate(prog, "gg", xs)
        loss.backward()
        grads = [x.grad for x in xs]
    return float(loss), [g.numpy() for g in grads], [h.numpy() for h in hv]


# ------------------------------------------------------------------ driver


@dataclasses.dataclass
class FuzzResult:
    programs: int = 0
    ops_applied: int = 0
    skipped: int = 0
    op_counts: dict = dataclasses.field(default_factory=dict)
    primitives: set = dataclasses.field(default_factory=set)
    mismatches: list = dataclasses.field(default_factory=list)

    def summary(self):
        registered = {n for n, p in REGISTRY.items() if p.differentiable}
        return (
            f"programs: {self.programs} (skipped as non-finite: {self.skipped}), ops applied: "
            f"{self.ops_applied}, fuzz ops covered: {len(self.op_counts)} of {len(ALL_OPS)}, "
            f"primitives covered: {len(self.primitives & registered)} of {len(registered)}, "
            f"mismatches: {len(self.mismatches)}"
        )


def _close(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return bool(np.allclose(a, b, rtol=1e-6, atol=1e-9 * scale, equal_nan=True))


@contextlib.contextmanager
def _count_primitives(into):
    base = core._Node

    class Counting(base):
        __slots__ = ()

        def __init__(self, prim, *rest):
            into.add(prim.name)
            super().__init__(prim, *rest)

    core._Node = Counting
    try:
        yield
    finally:
        core._Node = base


@contextlib.contextmanager
def plant_bug(name, factor=1.5):
    """Scale the VJP (and the raw fast rule) of primitive ``name``: a wrong derivative
    the fuzzer must catch."""
    prim = REGISTRY[name]
    vjp, fast = prim.vjp, prim.fast

    def scaled(rule):
        def wrong(*a, **k):
            out = rule(*a, **k)
            return tuple(None if c is None else c * factor for c in out)

        return wrong

    prim.vjp = scaled(vjp)
    if fast is not None:
        prim.fast = scaled(fast)
    try:
        yield
    finally:
        prim.vjp, prim.fast = vjp, fast


def run_one(seed, res, ops=None, face=None):
    prog = make_program(seed, ops, face)
    with np.errstate(all="ignore"):
        ref_loss, ref_g, ref_h = torch_reference(prog)
    if not math.isfinite(ref_loss) or not all(np.isfinite(g).all() for g in ref_g + ref_h):
        res.skipped += 1
        return
    res.programs += 1
    for op, *_ in prog.steps:
        res.op_counts[op] = res.op_counts.get(op, 0) + 1
        res.ops_applied += 1
    try:
        with np.errstate(all="ignore"), _count_primitives(res.primitives):
            loss, grads, hv = gg_face(prog)
    except Exception as exc:  # an error where PyTorch computes a value is a finding
        res.mismatches.append(f"{prog.text()}: raised {type(exc).__name__}: {exc}")
        return
    if not _close(loss, ref_loss):
        res.mismatches.append(f"{prog.text()}: value {loss} != {ref_loss}")
        return
    for i, (g, r) in enumerate(zip(grads, ref_g)):
        if not _close(g, r):
            res.mismatches.append(f"{prog.text()}: gradient of input {i} differs")
            return
    for i, (h, r) in enumerate(zip(hv, ref_h)):
        if not _close(h, r):
            res.mismatches.append(f"{prog.text()}: Hessian-vector product of input {i} differs")
            return


def run_fuzz(n, seed=0, device="cpu", ops=None, face=None):
    """Run ``n`` programs (seeds ``seed .. seed + n - 1``); returns a FuzzResult."""
    res = FuzzResult()
    old = gg.device()
    if device != old:
        gg.backend.set_device(device)
    try:
        for s in range(seed, seed + n):
            run_one(s, res, ops, face)
    finally:
        if device != old:
            gg.backend.set_device(old)
    return res
