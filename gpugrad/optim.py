"""Optimizers: Swift-style ``SGD``/``Adam`` objects that update a Layer's parameters
in place, and MATLAB's functional ``sgdmupdate``/``adamupdate``.

Every update works in place on the device: the parameter dlarrays keep their
identity and their buffers are overwritten, so a model, a ``parameters()`` dict or
a traced copy made later all see the new values. Gradients must be shaped like the
parameters (``model.parameters()`` for a Layer), as ``dlgradient`` returns them.

>>> import gpugrad as gg
>>> model = gg.nn.Dense(2, 1)  # float32 parameters (gg.set_default_dtype)
>>> opt = gg.optim.SGD(model, learning_rate=0.1)
>>> grads = {k: gg.ones_like(v) for k, v in model.parameters().items()}
>>> opt.update(model, grads)
>>> model.bias.numpy()
array([-0.1], dtype=float32)
"""

from __future__ import annotations

import math
from numbers import Real

from ._checks import fraction as _fraction
from ._checks import nonnegative as _nonnegative
from ._checks import positive as _positive
from .array import dlarray
from .ops.core import _STATE, make
from .tree import map_arrays


def _xp():
    return _STATE["xp"]


# ------------------------------------------------------------------ argument checks


class _Setting:
    """An optimizer hyperparameter checked whenever it is set, so a schedule that
    assigns ``opt.learning_rate = ...`` gets the constructor's clear error."""

    def __init__(self, check):
        self.check = check

    def __set_name__(self, owner, name):
        self.name = name
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj.__dict__[self.slot]

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = self.check(value, self.name, type(obj).__name__)


# ------------------------------------------------------------------ parameter trees


def _path_text(name, path):
    return name + "".join(f"[{k!r}]" for k in path)


def _parameters_of(model, where, name="model"):
    """The parameter tree of ``model``: a Layer's ``parameters()``, or ``model``
    itself when it is a dlarray or a dict/list/tuple of them."""
    params = getattr(model, "parameters", None)
    if callable(params) and not isinstance(model, type):
        return params()
    if isinstance(model, (dict, list, tuple, dlarray)):
        return model
    raise TypeError(
        f"{where}: {name} must be a gg.nn.Layer, a dlarray or a dict/list/tuple of dlarrays, "
        f"got {type(model).__name__}"
    )


def _zip(params, other, where, name, path=()):
    """``(path, parameter, entry)`` for each parameter, where ``entry`` is the leaf of
    ``other`` at the same place; raises if ``other`` is not shaped like ``params``."""
    if type(params) is dlarray:
        yield path, params, other
        return
    if isinstance(params, dict):
        if not isinstance(other, dict):
            raise ValueError(
                f"{where}: {_path_text(name, path)} must be a dict with keys "
                f"{sorted(params)} (shaped like the parameters), got {type(other).__name__}"
            )
        if other.keys() != params.keys():
            missing = [k for k in params if k not in other]
            extra = [k for k in other if k not in params]
            problems = []
            if missing:
                problems.append(f"is missing key(s) {missing}")
            if extra:
                problems.append(f"has unexpected key(s) {extra}")
            raise ValueError(
                f"{where}: {_path_text(name, path)} {' and '.join(problems)}; it must be "
                f"shaped like the parameters (keys {sorted(params)}), as dlgradient returns it"
            )
        for k, p in params.items():
            yield from _zip(p, other[k], where, name, (*path, k))
        return
    if isinstance(params, (list, tuple)):
        if not isinstance(other, (list, tuple)) or len(other) != len(params):
            got = f"length {len(other)}" if isinstance(other, (list, tuple)) else type(other)
            raise ValueError(
                f"{where}: {_path_text(name, path)} must be a list/tuple of {len(params)} "
                f"entries (shaped like the parameters), got {getattr(got, '__name__', got)}"
            )
        for i, p in enumerate(params):
            yield from _zip(p, other[i], where, name, (*path, i))
        return
    raise TypeError(
        f"{where}: the parameter at {_path_text('', path) or 'the top'} is a "
        f"{type(params).__name__}; parameters must be dlarrays (they are updated in place)"
    )


def _raw_like(param, value, where, name, path):
    """The raw array of ``value`` (a gradient or a state entry) for ``param``."""
    if type(value) is dlarray:
        raw = value._data
    elif value is None:
        raise ValueError(
            f"{where}: {_path_text(name, path)} is None; expected an array of shape {param.shape}"
        )
    else:
        raw = _xp().asarray(value)
    if raw.shape != param.shape:
        raise ValueError(
            f"{where}: {_path_text(name, path)} has shape {raw.shape}, but the parameter "
            f"has shape {param.shape}"
        )
    if raw.dtype.kind == "c" and param.dtype.kind != "c":
        raise ValueError(
            f"{where}: {_path_text(name, path)} is complex ({raw.dtype}), but the parameter "
            f"is real ({param.dtype})"
        )
    return raw


def _checked(params, grads, where, name="grads"):
    """Every ``(path, parameter, raw gradient)``, all checked before any is applied,
    so a malformed ``grads`` leaves the model untouched."""
    out = []
    _collect(params, grads, where, name, (), out)
    return out


def _collect(params, other, where, name, path, out):
    # why: the optimizers' hot path; well-formed dicts of dlarrays take the inline
    # checks, anything else goes through _zip / _raw_like for the full checks and errors
    if type(params) is dlarray:
        if type(other) is dlarray:
            raw = other._data
            if raw.shape == params._data.shape and (
                raw.dtype.kind != "c" or params.dtype.kind == "c"
            ):
                out.append((path, params, raw))
                return
        out.append((path, params, _raw_like(params, other, where, name, path)))
        return
    if type(params) is dict and type(other) is dict and other.keys() == params.keys():
        for k, p in params.items():
            _collect(p, other[k], where, name, (*path, k), out)
        return
    for sub, p, g in _zip(params, other, where, name, path):
        out.append((sub, p, _raw_like(p, g, where, name, sub)))


def _real_view(raw, where):
    """A complex buffer as interleaved (real, imag) floats sharing its memory: Adam's
    moments are taken per real component, as PyTorch does."""
    if not raw.flags.c_contiguous:
        raise ValueError(
            f"{where}: a complex parameter must be C-contiguous to be updated in place"
        )
    return raw.reshape(-1).view(raw.real.dtype)


def _real_views(data, g, where):
    xp = _xp()
    return _real_view(data, where), _real_view(
        xp.ascontiguousarray(xp.asarray(g, data.dtype)), where
    )


def _adam_step(xp, data, g, m, v, tmp, scale, beta1, beta2, epsilon):
    """One in-place Adam step (S4TF's, MATLAB's and Keras' form: ``epsilon`` is added
    to ``sqrt(v)`` before the bias correction, which is folded into ``scale``)."""
    # why: in-place ufuncs through one scratch buffer; the update allocates nothing
    # per step (temporaries were a quarter of a small MLP's training step)
    m *= beta1
    xp.multiply(g, 1 - beta1, out=tmp, casting="unsafe")
    m += tmp
    v *= beta2
    xp.multiply(g, g, out=tmp, casting="unsafe")
    tmp *= 1 - beta2
    v += tmp
    xp.sqrt(v, out=tmp)
    tmp += epsilon
    xp.divide(m, tmp, out=tmp)
    tmp *= scale
    data -= tmp


# ------------------------------------------------------------------ Swift-style optimizers


class _Optimizer:
    learning_rate = _Setting(_positive)
    weight_decay = _Setting(_nonnegative)

    def __init__(self, model):
        if model is not None:
            _parameters_of(model, type(self).__name__)

    def _state(self, store, path, data, where):
        s = store.get(path)
        if s is None:
            s = store[path] = _xp().zeros_like(data)
        elif s.shape != data.shape:
            raise _state_mismatch(where, path, data, s)
        return s


def _state_mismatch(where, path, data, state):
    return ValueError(
        f"{where}: the parameter at {_path_text('', path)} has shape {data.shape}, but this "
        f"optimizer's state for it has shape {state.shape}; use one optimizer per model"
    )


class SGD(_Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum, S4TF's form:
    ``v = momentum * v - learning_rate * g``, then ``p += v`` (Nesterov:
    ``p += momentum * v - learning_rate * g``). ``weight_decay`` adds
    ``weight_decay * p`` to each gradient (an L2 penalty, as ``torch.optim.SGD``).

    >>> import gpugrad as gg
    >>> w = gg.dlarray([1.0, 2.0])
    >>> opt = gg.optim.SGD({"w": w}, learning_rate=0.5, momentum=0.9)
    >>> opt.update({"w": w}, {"w": gg.dlarray([1.0, 1.0])})
    >>> w.numpy()
    array([0.5, 1.5])
    """

    momentum = _Setting(_fraction)

    def __init__(
        self, model=None, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=0.0
    ):
        super().__init__(model)
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum in (0, 1), got momentum=0")
        self.nesterov = bool(nesterov)
        self.velocity = {}

    def update(self, model, grads):
        """Apply ``grads`` (shaped like ``model.parameters()``) in place."""
        pairs = _checked(_parameters_of(model, "SGD.update"), grads, "SGD.update")
        lr, mu, decay = self.learning_rate, self.momentum, self.weight_decay
        for path, p, g in pairs:
            data = p._data
            if decay:
                g = g + decay * data
            if not mu:
                data -= lr * g
                continue
            v = self._state(self.velocity, path, data, "SGD.update")
            v *= mu
            v -= lr * g
            if self.nesterov:
                data += mu * v - lr * g
            else:
                data += v


class Adam(_Optimizer):
    """Adam (Kingma & Ba) with bias correction, S4TF's/MATLAB's form:
    ``p -= learning_rate * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + epsilon)``.
    ``weight_decay`` adds ``weight_decay * p`` to each gradient (L2, as
    ``torch.optim.Adam``). Complex parameters keep moments per real component.

    >>> import gpugrad as gg
    >>> model = gg.nn.Dense(2, 1)  # float32 parameters (gg.set_default_dtype)
    >>> opt = gg.optim.Adam(model, learning_rate=0.1)
    >>> opt.update(model, {"weight": gg.ones((1, 2)), "bias": gg.ones((1,))})
    >>> bool(abs(model.bias.numpy()[0] + 0.1) < 1e-6)
    True
    """

    beta1 = _Setting(_fraction)
    beta2 = _Setting(_fraction)
    epsilon = _Setting(_positive)

    def __init__(
        self,
        model=None,
        learning_rate=1e-3,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        weight_decay=0.0,
    ):
        super().__init__(model)
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weight_decay = weight_decay
        self.step = 0
        self.moments = {}  # path -> (first moment, second moment, scratch buffer)

    def update(self, model, grads):
        """Apply ``grads`` (shaped like ``model.parameters()``) in place."""
        pairs = _checked(_parameters_of(model, "Adam.update"), grads, "Adam.update")
        self.step += 1
        b1, b2, eps, decay = self.beta1, self.beta2, self.epsilon, self.weight_decay
        scale = self.learning_rate * (1 - b2**self.step) ** 0.5 / (1 - b1**self.step)
        xp, moments = _xp(), self.moments
        for path, p, g in pairs:
            data = p._data
            if decay:
                g = g + decay * data
            if data.dtype.kind == "c":
                data, g = _real_views(data, g, "Adam.update")
            state = moments.get(path)
            if state is None:
                state = moments[path] = tuple(xp.zeros_like(data) for _ in range(3))
            elif state[0].shape != data.shape:
                raise _state_mismatch("Adam.update", path, data, state[0])
            _adam_step(xp, data, g, *state, scale, b1, b2, eps)


# ------------------------------------------------------------------ MATLAB functional updates


def _is_empty(state):
    """MATLAB starts optimizer state as ``[]``: None or an empty list/tuple here."""
    return state is None or (isinstance(state, (list, tuple)) and not state)


def _state_tree(state, params, where, name):
    """``(tree, raw buffers)`` for an optimizer state argument: zeros shaped like
    ``params`` when ``state`` is empty, else ``state`` checked against ``params``; its
    dlarray entries are reused (updated in place), other arrays are copied into new
    dlarrays."""
    if _is_empty(state):
        tree = map_arrays(lambda p: make(_xp().zeros_like(p._data), p._fmt), params)
        return tree, [s._data for _, _, s in _zip(params, tree, where, name)]
    entries = {}
    for path, p, s in _zip(params, state, where, name):
        raw = _raw_like(p, s, where, name, path)
        if type(s) is dlarray and s.dtype == p.dtype:
            entries[path] = s
        else:
            entries[path] = make(_xp().array(raw, dtype=p.dtype), p._fmt)
    paths = iter(entries)
    tree = map_arrays(lambda p: entries[next(paths)], params)
    return tree, [s._data for s in entries.values()]


def sgdmupdate(net, grad, vel=None, learn_rate=0.01, momentum=0.9):
    """MATLAB's ``[net, vel] = sgdmupdate(net, grad, vel, learnRate, momentum)``:
    ``vel = momentum * vel - learn_rate * grad``, then ``net = net + vel``.

    ``net`` is a ``gg.nn.Layer`` (``grad`` shaped like its ``parameters()``, as
    ``dlgradient`` returns it), a dlarray, or a dict/list/tuple of dlarrays. ``vel``
    is None (or ``[]``, MATLAB's empty) on the first call, then what the previous call
    returned. The parameters and ``vel`` are updated in place and returned.

    >>> import gpugrad as gg
    >>> w = gg.dlarray([1.0, 2.0])
    >>> w, vel = gg.sgdmupdate(w, gg.dlarray([10.0, 10.0]), None)
    >>> w.numpy(), vel.numpy()
    (array([0.9, 1.9]), array([-0.1, -0.1]))
    """
    where = "sgdmupdate"
    lr = _positive(learn_rate, "learn_rate", where)
    mu = _fraction(momentum, "momentum", where)
    params = _parameters_of(net, where, "net")
    pairs = _checked(params, grad, where, "grad")
    vel, buffers = _state_tree(vel, params, where, "vel")
    for (_, p, g), v in zip(pairs, buffers):
        v *= mu
        v -= lr * g
        p._data += v
    return net, vel


def adamupdate(
    net,
    grad,
    average_grad=None,
    average_sq_grad=None,
    iteration=1,
    learn_rate=0.001,
    grad_decay=0.9,
    sq_grad_decay=0.999,
    epsilon=1e-8,
):
    """MATLAB's ``[net, averageGrad, averageSqGrad] = adamupdate(net, grad, averageGrad,
    averageSqGrad, iteration, learnRate, gradDecay, sqGradDecay, epsilon)``:
    ``averageGrad = gradDecay * averageGrad + (1 - gradDecay) * grad``,
    ``averageSqGrad = sqGradDecay * averageSqGrad + (1 - sqGradDecay) * grad.^2``,
    ``net = net - learnRate * sqrt(1 - sqGradDecay^t) / (1 - gradDecay^t) *
    averageGrad ./ (sqrt(averageSqGrad) + epsilon)`` with ``t = iteration`` (1-based).

    ``net`` and ``grad`` as for :func:`sgdmupdate`; the averages are None (or ``[]``)
    on the first call. The parameters and averages are updated in place and returned.

    >>> import gpugrad as gg
    >>> w = gg.dlarray([1.0, 2.0])
    >>> w, m, v = gg.adamupdate(w, gg.dlarray([3.0, -3.0]), None, None, 1)
    >>> w.numpy().round(6), m.numpy().round(6)
    (array([0.999, 2.001]), array([ 0.3, -0.3]))
    """
    where = "adamupdate"
    if (
        isinstance(iteration, bool)
        or not isinstance(iteration, Real)
        or not math.isfinite(iteration)
        or iteration < 1
        or iteration != int(iteration)
    ):
        raise ValueError(
            f"{where}: iteration must be a positive integer (1 on the first call), "
            f"got {iteration!r}"
        )
    lr = _positive(learn_rate, "learn_rate", where)
    b1 = _fraction(grad_decay, "grad_decay", where)
    b2 = _fraction(sq_grad_decay, "sq_grad_decay", where)
    eps = _positive(epsilon, "epsilon", where)
    params = _parameters_of(net, where, "net")
    pairs = _checked(params, grad, where, "grad")
    average_grad, firsts = _state_tree(average_grad, params, where, "average_grad")
    average_sq_grad, seconds = _state_tree(average_sq_grad, params, where, "average_sq_grad")
    t = int(iteration)
    scale = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
    xp = _xp()
    for (_, p, g), m, v in zip(pairs, firsts, seconds):
        data = p._data
        if data.dtype.kind == "c":
            data, g = _real_views(data, g, where)
            m, v = _real_view(m, where), _real_view(v, where)
        _adam_step(xp, data, g, m, v, xp.empty_like(data), scale, b1, b2, eps)
    return net, average_grad, average_sq_grad


__all__ = ["SGD", "Adam", "sgdmupdate", "adamupdate"]
