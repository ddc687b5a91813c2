"""Optimizers: Swift-style ``SGD``/``Adam`` objects that update a Layer's parameters
in place, and MATLAB's functional ``sgdmupdate``/``adamupdate``.

>>> import gpugrad as gg
>>> model = gg.nn.Dense(2, 1)
>>> opt = gg.optim.SGD(model, learning_rate=0.1)
>>> grads = {k: gg.ones_like(v) for k, v in model.parameters().items()}
>>> opt.update(model, grads)
"""

from __future__ import annotations

from .array import dlarray
from .ops.core import _STATE, make


def _xp():
    return _STATE["xp"]


def _pairs(params, grads, path=""):
    """(path, parameter, gradient) for every leaf of two matching nested dicts."""
    if isinstance(params, dict):
        if not isinstance(grads, dict) or set(params) != set(grads):
            raise ValueError(
                f"update: gradients must be shaped like model.parameters(); at {path or 'top'} "
                f"expected keys {sorted(params)}, got "
                f"{sorted(grads) if isinstance(grads, dict) else type(grads).__name__}"
            )
        for k in params:
            yield from _pairs(params[k], grads[k], f"{path}/{k}")
        return
    g = grads._data if isinstance(grads, dlarray) else _xp().asarray(grads)
    if g.shape != params.shape:
        raise ValueError(f"update: gradient at {path} has shape {g.shape}, expected {params.shape}")
    yield path, params, g


def _params_of(model):
    return model.parameters() if hasattr(model, "parameters") else model


class SGD:
    """Stochastic gradient descent with (optionally Nesterov) momentum."""

    def __init__(self, model=None, learning_rate=0.01, momentum=0.0, nesterov=False):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterov = nesterov
        self.velocity = {}

    def update(self, model, grads):
        """Apply ``grads`` (shaped like ``model.parameters()``) in place."""
        lr, mu = self.learning_rate, self.momentum
        for path, p, g in _pairs(_params_of(model), grads):
            data = p._data
            if mu:
                v = self.velocity.get(path)
                if v is None:
                    v = self.velocity[path] = _xp().zeros_like(data)
                v *= mu
                v -= lr * g
                if self.nesterov:
                    data += mu * v - lr * g
                else:
                    data += v
            else:
                data -= lr * g


class Adam:
    """Adam (Kingma & Ba) with bias correction."""

    def __init__(self, model=None, learning_rate=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.step = 0
        self.first = {}
        self.second = {}
        self._scratch = {}

    def update(self, model, grads):
        """Apply ``grads`` (shaped like ``model.parameters()``) in place."""
        xp = _xp()
        self.step += 1
        b1, b2 = self.beta1, self.beta2
        scale = self.learning_rate * (1 - b2**self.step) ** 0.5 / (1 - b1**self.step)
        for path, p, g in _pairs(_params_of(model), grads):
            data = p._data
            m = self.first.get(path)
            if m is None:
                m = self.first[path] = xp.zeros_like(data)
                self.second[path] = xp.zeros_like(data)
            v = self.second[path]
            # why: one scratch buffer and in-place ufuncs; the update allocates nothing
            # per step (temporaries were a quarter of a small MLP's training step)
            tmp = self._scratch.get(path)
            if tmp is None or tmp.dtype != data.dtype:
                tmp = self._scratch[path] = xp.empty_like(data)
            m *= b1
            xp.multiply(g, 1 - b1, out=tmp, casting="unsafe")
            m += tmp
            v *= b2
            xp.multiply(g, g, out=tmp, casting="unsafe")
            tmp *= 1 - b2
            v += tmp
            xp.sqrt(v, out=tmp)
            tmp += self.epsilon
            xp.divide(m, tmp, out=tmp)
            tmp *= scale
            data -= tmp


def _raw(v):
    return v._data if isinstance(v, dlarray) else _xp().asarray(v)


def _like(template, raw):
    fmt = template._fmt if isinstance(template, dlarray) else ""
    return make(raw, fmt)


def _tree_apply(fn, *trees):
    first = trees[0]
    if isinstance(first, dict):
        keys = first.keys()
        outs = {k: _tree_apply(fn, *(t[k] if t is not None else None for t in trees)) for k in keys}
        n = len(next(iter(outs.values()))) if outs else 0
        return tuple({k: outs[k][i] for k in keys} for i in range(n))
    if isinstance(first, (list, tuple)):
        items = [
            _tree_apply(fn, *(t[i] if t is not None else None for t in trees))
            for i in range(len(first))
        ]
        n = len(items[0]) if items else 0
        return tuple(type(first)(it[i] for it in items) for i in range(n))
    return fn(*trees)


def sgdmupdate(params, grad, vel, learn_rate=0.01, momentum=0.9):
    """MATLAB ``sgdmupdate``: ``vel = momentum * vel - learn_rate * grad``,
    ``params = params + vel``; returns ``(params, vel)``. ``vel=None`` starts at zero;
    ``params`` may be a dlarray or a nested dict/list of them."""

    def one(p, g, v):
        pr = _raw(p)
        vr = _xp().zeros_like(pr) if v is None or (isinstance(v, list) and not v) else _raw(v)
        new_v = momentum * vr - learn_rate * _raw(g)
        return _like(p, pr + new_v), _like(p, new_v)

    return _tree_apply(one, params, grad, vel)


def adamupdate(
    params,
    grad,
    avg_g,
    avg_sq_g,
    iteration,
    learn_rate=0.001,
    grad_decay=0.9,
    sq_grad_decay=0.999,
    epsilon=1e-8,
):
    """MATLAB ``adamupdate``; returns ``(params, avg_g, avg_sq_g)``. ``iteration`` is
    1-based; ``avg_g``/``avg_sq_g`` may be None (zeros) on the first call."""
    if iteration < 1:
        raise ValueError(f"adamupdate: iteration must be >= 1 (1-based), got {iteration}")

    def one(p, g, m, v):
        xp = _xp()
        pr, gr = _raw(p), _raw(g)
        mr = xp.zeros_like(pr) if m is None else _raw(m)
        vr = xp.zeros_like(pr) if v is None else _raw(v)
        mr = grad_decay * mr + (1 - grad_decay) * gr
        vr = sq_grad_decay * vr + (1 - sq_grad_decay) * gr * gr
        lr = learn_rate * (1 - sq_grad_decay**iteration) ** 0.5 / (1 - grad_decay**iteration)
        new_p = pr - lr * mr / (xp.sqrt(vr) + epsilon)
        return _like(p, new_p), _like(p, mr), _like(p, vr)

    return _tree_apply(one, params, grad, avg_g, avg_sq_g)


__all__ = ["SGD", "Adam", "sgdmupdate", "adamupdate"]
