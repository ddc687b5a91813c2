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

import numpy as np

from . import backend
from ._accel_graph import GraphUnsupported, Scalars
from ._checks import fraction as _fraction
from ._checks import nonnegative as _nonnegative
from ._checks import positive as _positive
from .array import dlarray
from .ops.core import _STATE, host_call, make
from .tape import bump_version
from .tree import leaves, map_arrays


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


def _adam_step(xp, data, g, m, v, tmp, scale, beta1, beta2, epsilon, c1=None, c2=None):
    """One in-place Adam step (S4TF's, MATLAB's and Keras' form: ``epsilon`` is added
    to ``sqrt(v)`` before the bias correction, which is folded into ``scale``).
    ``c1``/``c2``: ``1 - beta1``/``1 - beta2`` when the numbers are staged device
    scalars (a graph step), else computed here."""
    # why: in-place ufuncs through one scratch buffer; the update allocates nothing
    # per step (temporaries were a quarter of a small MLP's training step)
    if xp is np and data.size > _ADAM_CHUNK_BYTES // data.itemsize:
        if data.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous:
            # why: the twelve passes below run chunk by chunk, so each chunk's arrays
            # stay in the L2 cache between passes instead of streaming through memory
            # twelve times (the update of a 784-512-512-10 MLP: 3.3 -> 2.4 ms of CPU);
            # elementwise, so every value is the same as unchunked
            data, m, v, g = data.reshape(-1), m.reshape(-1), v.reshape(-1), g.reshape(-1)
            scratch = tmp.reshape(-1)
            n = data.size
            step = _ADAM_CHUNK_BYTES // data.itemsize
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                part = slice(lo, hi)
                sub = (data[part], g[part], m[part], v[part], scratch[: hi - lo])
                _adam_pass(xp, *sub, scale, beta1, beta2, epsilon, c1, c2)
            return
    _adam_pass(xp, data, g, m, v, tmp, scale, beta1, beta2, epsilon, c1, c2)


# Bytes of each array one chunk of a NumPy Adam step covers (five arrays of this size
# fit the L2 cache of common x86 cores).
_ADAM_CHUNK_BYTES = 128 * 1024


def _adam_pass(xp, data, g, m, v, tmp, scale, beta1, beta2, epsilon, c1, c2):
    m *= beta1
    xp.multiply(g, 1 - beta1 if c1 is None else c1, out=tmp, casting="unsafe")
    m += tmp
    v *= beta2
    xp.multiply(g, g, out=tmp, casting="unsafe")
    tmp *= 1 - beta2 if c2 is None else c2
    v += tmp
    xp.sqrt(v, out=tmp)
    tmp += epsilon
    xp.divide(m, tmp, out=tmp)
    tmp *= scale
    data -= tmp


# ------------------------------------------------------------------ Swift-style optimizers


def _rate(value, name, where):
    """A learning rate: a positive number or a schedule (``step -> rate``)."""
    if callable(value) and not isinstance(value, Real):
        return value
    return _positive(value, name, where)


class _Optimizer:
    learning_rate = _Setting(_rate)
    weight_decay = _Setting(_nonnegative)
    _hyperparameters = ("learning_rate", "weight_decay")

    def __init__(self, model):
        if model is not None:
            _parameters_of(model, type(self).__name__)

    def _current_rate(self, step):
        """The learning rate of update number ``step`` (0-based)."""
        lr = self._learning_rate
        if isinstance(lr, Real):
            return lr
        return _positive(lr(step), "learning_rate (the schedule's value)", type(self).__name__)

    def current_learning_rate(self):
        """The learning rate the next ``update`` will use (a schedule evaluated at the
        number of updates done so far)."""
        return self._current_rate(self.step)

    def _begin_update(self, model, grads):
        """``(where, [(path, parameter, gradient)], learning rate)`` of one update, which
        counts as taken from here on."""
        where = f"{type(self).__name__}.update"
        pairs = _checked(_parameters_of(model, where), grads, where)
        lr = self._current_rate(self.step)
        self.step += 1
        return where, pairs, lr

    # ------------------------------------------------------------ saving
    def state_dict(self):
        """The optimizer's settings and state as a plain tree (numbers, strings, lists
        and dlarray copies), for ``gg.save``; ``load_state_dict`` restores it. A
        schedule is stored by its settings (``gg.optim`` schedules only).

        >>> import gpugrad as gg
        >>> w = gg.dlarray([1.0, 2.0])
        >>> opt = gg.optim.SGD([w], learning_rate=0.1, momentum=0.9)
        >>> opt.update([w], [gg.dlarray([1.0, 1.0])])
        >>> state = opt.state_dict()
        >>> state["optimizer"], state["step"], state["slots"]["velocity"][0]["path"]
        ('SGD', 1, [0])
        """
        hyper = {}
        for name in self._hyperparameters:
            value = getattr(self, name)
            if callable(value) and not isinstance(value, Real):
                if not isinstance(value, LearningRateSchedule):
                    raise TypeError(
                        f"{type(self).__name__}.state_dict: {name} is a {type(value).__name__}; "
                        "only numbers and gg.optim schedules (StepDecay, ExponentialDecay, "
                        "CosineDecay, Warmup) can be saved"
                    )
                value = value.config()
            hyper[name] = value
        slots = {
            slot: [
                {"path": list(path), "value": make(_xp().array(raw, copy=True))}
                for path, raw in entries.items()
            ]
            for slot, entries in self._slots().items()
        }
        return {
            "optimizer": type(self).__name__,
            "hyperparameters": hyper,
            "step": self.step,
            "slots": slots,
        }

    def load_state_dict(self, state):
        """Restore what ``state_dict()`` gave (settings, step count and state buffers,
        copied onto the active device). Raises a ValueError naming what does not fit."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict) or not {
            "optimizer",
            "hyperparameters",
            "step",
            "slots",
        } <= set(state):
            raise ValueError(
                f"{where}: expected a dict from state_dict() with keys 'optimizer', "
                f"'hyperparameters', 'step' and 'slots', got {type(state).__name__}"
                + (f" with keys {sorted(state)}" if isinstance(state, dict) else "")
            )
        if state["optimizer"] != type(self).__name__:
            raise ValueError(
                f"{where}: the state is of a {state['optimizer']} optimizer, not a "
                f"{type(self).__name__}"
            )
        expected = set(self._slots())
        if set(state["slots"]) != expected:
            raise ValueError(
                f"{where}: the state has slots {sorted(state['slots'])}, expected "
                f"{sorted(expected)}"
            )
        for name, value in state["hyperparameters"].items():
            if name not in self._hyperparameters:
                raise ValueError(f"{where}: unknown setting {name!r} in the state")
            if isinstance(value, dict):
                value = LearningRateSchedule.from_config(value)
            setattr(self, name, value)
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{where}: step must be an integer >= 0, got {step!r}")
        self.step = step
        loaded = {}
        for slot, entries in state["slots"].items():
            table = {}
            for entry in entries:
                value = entry["value"]
                raw = value._data if type(value) is dlarray else value
                table[tuple(entry["path"])] = _xp().array(raw, copy=True)
            loaded[slot] = table
        self._load_slots(loaded)

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
        self.step = 0

    _hyperparameters = ("learning_rate", "momentum", "nesterov", "weight_decay")

    def _slots(self):
        return {"velocity": self.velocity}

    def _load_slots(self, slots):
        self.velocity = slots["velocity"]

    @host_call(mutates=True)  # one step of a gg.dlaccelerate replay
    def update(self, model, grads):
        """Apply ``grads`` (shaped like ``model.parameters()``) in place."""
        where, pairs, lr = self._begin_update(model, grads)
        mu, decay = self.momentum, self.weight_decay
        for path, p, g in pairs:
            data = p._data
            bump_version(data)  # in place: a trace that saved it must not use it
            if decay:
                g = g + decay * data
            if not mu:
                data -= lr * g
                continue
            v = self._state(self.velocity, path, data, where)
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
    _decoupled_decay = False  # AdamW: the decay shrinks the parameters, not the gradient

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

    _hyperparameters = ("learning_rate", "beta1", "beta2", "epsilon", "weight_decay")

    def _slots(self):
        return {
            "first_moment": {k: v[0] for k, v in self.moments.items()},
            "second_moment": {k: v[1] for k, v in self.moments.items()},
        }

    def _load_slots(self, slots):
        first, second = slots["first_moment"], slots["second_moment"]
        if set(first) != set(second):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the first and second moments are "
                "for different parameters"
            )
        xp = _xp()
        self.moments = {k: (first[k], second[k], xp.empty_like(first[k])) for k in first}

    @host_call(mutates=True)  # one step of a gg.dlaccelerate replay
    def update(self, model, grads):
        """Apply ``grads`` (shaped like ``model.parameters()``) in place."""
        where, pairs, lr = self._begin_update(model, grads)
        b1, b2, eps, decay = self.beta1, self.beta2, self.epsilon, self.weight_decay
        scale = lr * (1 - b2**self.step) ** 0.5 / (1 - b1**self.step)
        xp, moments = _xp(), self.moments
        for path, p, g in pairs:
            data = p._data
            bump_version(data)  # in place: a trace that saved it must not use it
            if decay and self._decoupled_decay:
                data *= 1 - lr * decay
            elif decay:
                g = g + decay * data
            if data.dtype.kind == "c":
                data, g = _real_views(data, g, where)
            state = moments.get(path)
            if state is None:
                state = moments[path] = tuple(xp.zeros_like(data) for _ in range(3))
            elif state[0].shape != data.shape:
                raise _state_mismatch(where, path, data, state[0])
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


@host_call(mutates=True)
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
        bump_version(p._data)
        p._data += v
    return net, vel


def _adamupdate_numbers(iteration, learn_rate, grad_decay, sq_grad_decay, epsilon):
    """adamupdate's checked arguments: (bias-corrected step scale, beta1, beta2, epsilon).
    ``iteration`` may be a one-element array (a dlarray, NumPy or device array), read
    here, when the update runs."""
    where = "adamupdate"
    if type(iteration) is dlarray:
        iteration = iteration._data
    if isinstance(iteration, np.ndarray) or backend.is_device_array(iteration):
        if iteration.size != 1:
            raise ValueError(
                f"{where}: iteration must be a positive integer (or a one-element array "
                f"holding one), got an array of shape {tuple(iteration.shape)}"
            )
        iteration = backend.to_host(iteration).reshape(()).item()
    elif isinstance(iteration, np.generic):
        iteration = iteration.item()
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
    t = int(iteration)
    return lr * (1 - b2**t) ** 0.5 / (1 - b1**t), b1, b2, eps


@host_call(mutates=True)
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

    ``iteration`` is a positive integer, or a one-element array holding one (a NumPy
    array, or a dlarray of an integer dtype or of exactly representable whole
    numbers), read when the update runs. Inside a ``gg.dlaccelerate`` function, pass it
    as an array: a Python int argument is part of the cache key (MATLAB's rule for
    non-dlarray inputs), so every new iteration would trace again; an array is keyed
    by its shape and dtype only, and each replay reads its current value.

    >>> import gpugrad as gg
    >>> w = gg.dlarray([1.0, 2.0])
    >>> w, m, v = gg.adamupdate(w, gg.dlarray([3.0, -3.0]), None, None, 1)
    >>> w.numpy().round(6), m.numpy().round(6)
    (array([0.999, 2.001]), array([ 0.3, -0.3]))
    >>> import numpy as np
    >>> @gg.accelerate
    ... def step(w, g, m, v, iteration):
    ...     return gg.adamupdate(w, g, m, v, iteration)
    >>> for it in range(2, 6):
    ...     w, m, v = step(w, gg.dlarray([3.0, -3.0]), m, v, np.array(it))
    >>> step.hits  # the first call traced, the other three replayed
    3
    """
    where = "adamupdate"
    scale, b1, b2, eps = _adamupdate_numbers(
        iteration, learn_rate, grad_decay, sq_grad_decay, epsilon
    )
    params = _parameters_of(net, where, "net")
    pairs = _checked(params, grad, where, "grad")
    average_grad, firsts = _state_tree(average_grad, params, where, "average_grad")
    average_sq_grad, seconds = _state_tree(average_sq_grad, params, where, "average_sq_grad")
    xp = _xp()
    for (_, p, g), m, v in zip(pairs, firsts, seconds):
        data = p._data
        bump_version(data)
        if data.dtype.kind == "c":
            data, g = _real_views(data, g, where)
            m, v = _real_view(m, where), _real_view(v, where)
        _adam_step(xp, data, g, m, v, xp.empty_like(data), scale, b1, b2, eps)
    return net, average_grad, average_sq_grad


# ------------------------------------------------------------------ more optimizers


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; ``torch.optim.AdamW``):
    each update first shrinks every parameter, ``p -= learning_rate * weight_decay *
    p``, then takes the Adam step of :class:`Adam` on the plain gradient (the decay
    never enters the moments). With ``weight_decay=0`` it is :class:`Adam`.

    >>> import gpugrad as gg
    >>> w = gg.dlarray([1.0, -2.0])
    >>> opt = gg.optim.AdamW([w], learning_rate=0.1, weight_decay=0.5)
    >>> opt.update([w], [gg.zeros((2,))])  # a zero gradient: only the decay acts
    >>> w.numpy()
    array([ 0.95, -1.9 ])
    """

    def __init__(
        self,
        model=None,
        learning_rate=1e-3,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        weight_decay=0.01,
    ):
        super().__init__(model, learning_rate, beta1, beta2, epsilon, weight_decay)

    _decoupled_decay = True


class RMSProp(_Optimizer):
    """RMSProp (Hinton; S4TF's, Keras' and ``torch.optim.RMSprop``'s form):
    ``s = rho * s + (1 - rho) * g^2``, then ``p -= learning_rate * g / (sqrt(s) +
    epsilon)``. ``centered=True`` divides by the centered estimate
    ``sqrt(s - mean(g)^2) + epsilon``; ``momentum > 0`` keeps a buffer
    ``b = momentum * b + g / (...)`` and applies ``p -= learning_rate * b``;
    ``weight_decay`` adds ``weight_decay * p`` to each gradient (L2, as torch).
    Complex parameters keep their statistics per real component, as torch does.

    >>> import gpugrad as gg
    >>> w = gg.dlarray([1.0])
    >>> opt = gg.optim.RMSProp([w], learning_rate=0.01, rho=0.9, epsilon=0.0)
    >>> opt.update([w], [gg.dlarray([2.0])])  # s = 0.1 * 4, step = 0.01 * 2 / sqrt(0.4)
    >>> round(float(w[0]), 6)
    0.968377
    """

    rho = _Setting(_fraction)
    epsilon = _Setting(_nonnegative)
    momentum = _Setting(_fraction)
    _hyperparameters = ("learning_rate", "rho", "epsilon", "momentum", "centered", "weight_decay")

    def __init__(
        self,
        model=None,
        learning_rate=1e-3,
        rho=0.9,
        epsilon=1e-8,
        momentum=0.0,
        centered=False,
        weight_decay=0.0,
    ):
        super().__init__(model)
        self.learning_rate = learning_rate
        self.rho = rho
        self.epsilon = epsilon
        self.momentum = momentum
        self.centered = bool(centered)
        self.weight_decay = weight_decay
        self.step = 0
        self.square_average = {}
        self.gradient_average = {}
        self.momentum_buffer = {}

    def _slots(self):
        return {
            "square_average": self.square_average,
            "gradient_average": self.gradient_average,
            "momentum_buffer": self.momentum_buffer,
        }

    def _load_slots(self, slots):
        self.square_average = slots["square_average"]
        self.gradient_average = slots["gradient_average"]
        self.momentum_buffer = slots["momentum_buffer"]

    @host_call(mutates=True)  # one step of a gg.dlaccelerate replay
    def update(self, model, grads):
        """Apply ``grads`` (shaped like ``model.parameters()``) in place."""
        where, pairs, lr = self._begin_update(model, grads)
        rho, eps, mu, decay = self.rho, self.epsilon, self.momentum, self.weight_decay
        xp = _xp()
        for path, p, g in pairs:
            data = p._data
            bump_version(data)  # in place: a trace that saved it must not use it
            if decay:
                g = g + decay * data
            if data.dtype.kind == "c":
                data, g = _real_views(data, g, where)
            g = xp.asarray(g, dtype=data.dtype)
            sq = self._state(self.square_average, path, data, where)
            sq *= rho
            sq += (1 - rho) * (g * g)
            if self.centered:
                avg = self._state(self.gradient_average, path, data, where)
                avg *= rho
                avg += (1 - rho) * g
                denom = xp.sqrt(sq - avg * avg) + eps
            else:
                denom = xp.sqrt(sq) + eps
            if mu:
                buf = self._state(self.momentum_buffer, path, data, where)
                buf *= mu
                buf += g / denom
                data -= lr * buf
            else:
                data -= lr * (g / denom)


# ------------------------------------------------------------------ learning-rate schedules


class LearningRateSchedule:
    """Base of the schedules: ``schedule(step) -> learning rate`` for update number
    ``step`` (0 for the first update). Pass one as ``learning_rate=`` to any optimizer;
    it is evaluated at every update (``opt.current_learning_rate()`` tells the next).
    Any function ``step -> rate`` works too, but only these schedules can be saved."""

    _fields = ()

    def __call__(self, step):  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self):
        """The schedule's settings as a plain dict (for ``state_dict``/``gg.save``)."""
        out = {"schedule": type(self).__name__}
        for name in self._fields:
            value = getattr(self, name)
            out[name] = value.config() if isinstance(value, LearningRateSchedule) else value
        return out

    @staticmethod
    def from_config(config):
        """The schedule that ``config()`` describes."""
        kinds = {cls.__name__: cls for cls in (StepDecay, ExponentialDecay, CosineDecay, Warmup)}
        name = config.get("schedule") if isinstance(config, dict) else None
        if name not in kinds:
            raise ValueError(
                f"LearningRateSchedule.from_config: unknown schedule {name!r}; expected one "
                f"of {sorted(kinds)}"
            )
        args = {k: v for k, v in config.items() if k != "schedule"}
        for k, v in args.items():
            if isinstance(v, dict):
                args[k] = LearningRateSchedule.from_config(v)
        return kinds[name](**args)

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._fields)
        return f"{type(self).__name__}({args})"


def _step_count(value, name, where, low=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}: {name} must be an integer >= {low}, got {value!r}")
    return value


def _check_step(step, where):
    return _step_count(step, "step", where, 0)


class StepDecay(LearningRateSchedule):
    """``learning_rate * gamma ** (step // step_size)`` (``torch.optim.lr_scheduler.StepLR``,
    MATLAB's ``"piecewise"`` schedule).

    >>> import gpugrad as gg
    >>> s = gg.optim.StepDecay(0.1, step_size=2, gamma=0.5)
    >>> [s(t) for t in range(5)]
    [0.1, 0.1, 0.05, 0.05, 0.025]
    """

    _fields = ("learning_rate", "step_size", "gamma")

    def __init__(self, learning_rate, step_size, gamma=0.1):
        self.learning_rate = _positive(learning_rate, "learning_rate", "StepDecay")
        self.step_size = _step_count(step_size, "step_size", "StepDecay")
        self.gamma = _positive(gamma, "gamma", "StepDecay")

    def __call__(self, step):
        return self.learning_rate * self.gamma ** (_check_step(step, "StepDecay") // self.step_size)


class ExponentialDecay(LearningRateSchedule):
    """``learning_rate * gamma ** step`` (``torch.optim.lr_scheduler.ExponentialLR``).

    >>> import gpugrad as gg
    >>> gg.optim.ExponentialDecay(1.0, gamma=0.5)(3)
    0.125
    """

    _fields = ("learning_rate", "gamma")

    def __init__(self, learning_rate, gamma):
        self.learning_rate = _positive(learning_rate, "learning_rate", "ExponentialDecay")
        self.gamma = _positive(gamma, "gamma", "ExponentialDecay")

    def __call__(self, step):
        return self.learning_rate * self.gamma ** _check_step(step, "ExponentialDecay")


class CosineDecay(LearningRateSchedule):
    """Cosine annealing from ``learning_rate`` to ``min_learning_rate`` over
    ``decay_steps`` updates, then constant: ``min + (learning_rate - min) * (1 +
    cos(pi * step / decay_steps)) / 2`` (``torch.optim.lr_scheduler.CosineAnnealingLR``
    with ``T_max = decay_steps`` for ``step <= decay_steps``).

    >>> import gpugrad as gg
    >>> s = gg.optim.CosineDecay(1.0, decay_steps=4)
    >>> [round(s(t), 4) for t in range(6)]
    [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    """

    _fields = ("learning_rate", "decay_steps", "min_learning_rate")

    def __init__(self, learning_rate, decay_steps, min_learning_rate=0.0):
        self.learning_rate = _positive(learning_rate, "learning_rate", "CosineDecay")
        self.decay_steps = _step_count(decay_steps, "decay_steps", "CosineDecay")
        self.min_learning_rate = _nonnegative(min_learning_rate, "min_learning_rate", "CosineDecay")

    def __call__(self, step):
        t = min(_check_step(step, "CosineDecay"), self.decay_steps)
        low = self.min_learning_rate
        return low + (self.learning_rate - low) * (1 + math.cos(math.pi * t / self.decay_steps)) / 2


class Warmup(LearningRateSchedule):
    """Linear warm-up in front of a schedule (or a constant rate): update ``step`` uses
    ``after(step) * min(1, (step + 1) / warmup_steps)``, so the rate grows from
    ``after(0) / warmup_steps`` to the full rate at update ``warmup_steps - 1``
    (``torch.optim.lr_scheduler.LinearLR(start_factor=1 / warmup_steps,
    total_iters=warmup_steps - 1)``). The wrapped schedule runs from step 0, as
    PyTorch's chained schedulers do.

    >>> import gpugrad as gg
    >>> s = gg.optim.Warmup(0.4, warmup_steps=4)
    >>> [round(s(t), 6) for t in range(6)]
    [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    """

    _fields = ("after", "warmup_steps")

    def __init__(self, after, warmup_steps):
        if not isinstance(after, LearningRateSchedule):
            if callable(after):
                raise TypeError(
                    "Warmup: after must be a number or a gg.optim schedule (StepDecay, "
                    f"ExponentialDecay, CosineDecay), got {type(after).__name__}"
                )
            after = _positive(after, "after", "Warmup")
        self.after = after
        self.warmup_steps = _step_count(warmup_steps, "warmup_steps", "Warmup")

    def __call__(self, step):
        step = _check_step(step, "Warmup")
        base = self.after(step) if callable(self.after) else self.after
        return base * min(1.0, (step + 1) / self.warmup_steps)


# ------------------------------------------------------------------ gradient clipping


def _square_sum(g):
    from .ops.elementwise import conj, real  # noqa: PLC0415
    from .ops.reduce import sum as gsum  # noqa: PLC0415

    return gsum(real(g * conj(g))) if g.dtype.kind == "c" else gsum(g * g)


def _as_dlarrays(grads, where):
    arrays = leaves(grads)
    if not arrays:
        raise ValueError(f"{where}: grads holds no dlarray (give a gradient tree)")
    return arrays


def global_norm(grads, *, _where="global_norm"):
    """The L2 norm of all the arrays of a gradient tree taken together (a scalar
    dlarray): ``sqrt(sum of every squared entry)``.

    >>> import gpugrad as gg
    >>> float(gg.optim.global_norm({"a": gg.dlarray([3.0]), "b": gg.dlarray([[4.0]])}))
    5.0
    """
    from .ops.elementwise import sqrt  # noqa: PLC0415

    arrays = _as_dlarrays(grads, _where)
    total = _square_sum(arrays[0])
    for g in arrays[1:]:
        total = total + _square_sum(g)
    return sqrt(total)


def clip_grad_norm(grads, max_norm):
    """``grads`` scaled so that their global L2 norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``'s rule, returned instead of in place: every
    array is multiplied by ``min(1, max_norm / (norm + 1e-6))``). Same structure as
    ``grads``; written with gpugrad ops, so it can sit inside a trace.

    >>> import gpugrad as gg
    >>> g = gg.optim.clip_grad_norm({"w": gg.dlarray([3.0, 4.0])}, max_norm=1.0)
    >>> g["w"].numpy().round(6)
    array([0.6, 0.8])
    """
    from .ops.elementwise import minimum  # noqa: PLC0415

    max_norm = _positive(max_norm, "max_norm", "clip_grad_norm")
    coef = minimum(max_norm / (global_norm(grads, _where="clip_grad_norm") + 1e-6), 1.0)
    return map_arrays(lambda g: g * coef.astype(g.real.dtype), grads)


def clip_grad_value(grads, clip_value):
    """``grads`` with every entry clipped to ``[-clip_value, clip_value]``
    (``torch.nn.utils.clip_grad_value_``, MATLAB's ``"absolute-value"`` gradient
    threshold). Same structure as ``grads``.

    >>> import gpugrad as gg
    >>> gg.optim.clip_grad_value([gg.dlarray([-3.0, 0.5, 2.0])], 1.0)[0].numpy()
    array([-1. ,  0.5,  1. ])
    """
    from .ops.elementwise import clip  # noqa: PLC0415

    limit = _positive(clip_value, "clip_value", "clip_grad_value")
    _as_dlarrays(grads, "clip_grad_value")

    def clipped(g):
        if g.dtype.kind == "c":
            raise ValueError("clip_grad_value: complex gradients have no order; use clip_grad_norm")
        return clip(g, -limit, limit)

    return map_arrays(clipped, grads)


def _threshold_scale(norm, threshold):
    from .ops.elementwise import where as gwhere  # noqa: PLC0415

    # why: dividing only where the norm exceeds the threshold keeps a zero gradient finite
    safe = gwhere(norm > threshold, norm, threshold)
    return threshold / safe


def thresholdL2Norm(gradients, gradientThreshold):  # noqa: N802, N803 - MATLAB's names
    """MATLAB's ``thresholdL2Norm`` (the custom-training-loop helper applied with
    ``dlupdate``): each array of ``gradients`` whose own L2 norm exceeds
    ``gradientThreshold`` is scaled down to that norm; the others are unchanged.
    (For one threshold on all arrays together use :func:`thresholdGlobalL2Norm`.)

    >>> import gpugrad as gg
    >>> g = gg.optim.thresholdL2Norm([gg.dlarray([3.0, 4.0]), gg.dlarray([0.1])], 1.0)
    >>> g[0].numpy().round(6), g[1].numpy()
    (array([0.6, 0.8]), array([0.1]))
    """
    from .ops.elementwise import sqrt  # noqa: PLC0415

    threshold = _positive(gradientThreshold, "gradientThreshold", "thresholdL2Norm")
    _as_dlarrays(gradients, "thresholdL2Norm")
    return map_arrays(lambda g: g * _threshold_scale(sqrt(_square_sum(g)), threshold), gradients)


def thresholdGlobalL2Norm(gradients, gradientThreshold):  # noqa: N802, N803 - MATLAB's names
    """MATLAB's ``thresholdGlobalL2Norm``: when the global L2 norm of all the arrays
    of ``gradients`` exceeds ``gradientThreshold``, every array is scaled by
    ``gradientThreshold / norm``; otherwise they are unchanged.

    >>> import gpugrad as gg
    >>> g = gg.optim.thresholdGlobalL2Norm({"a": gg.dlarray([3.0]), "b": gg.dlarray([4.0])}, 1.0)
    >>> round(float(g["a"][0]), 6), round(float(g["b"][0]), 6)
    (0.6, 0.8)
    """
    threshold = _positive(gradientThreshold, "gradientThreshold", "thresholdGlobalL2Norm")
    scale = _threshold_scale(global_norm(gradients, _where="thresholdGlobalL2Norm"), threshold)
    return map_arrays(lambda g: g * scale, gradients)


# ------------------------------------------------------------------ graph steps
# gg.dlaccelerate captures a whole training step as one graph (gpugrad/_accel_graph.py).
# Each update below has a *graph step*: ``host()`` does the host work of one update
# (the step count, a schedule's rate, the bias correction) before each graph launch and
# returns the numbers the update uses; ``device(staged, ...)`` is the update itself,
# reading every number from ``staged`` (so a graph never freezes one), cast to the
# dtype of the array it meets, as a Python float would be: bitwise the eager update.


def _graph_pairs(where, model, grads):
    return _checked(_parameters_of(model, where), grads, where)


class _GraphStep:
    def __init__(self, params, flags, states):
        self.params = params
        self.datas = [p._data for p in params]
        self.flags = flags
        self.states = states  # (table, path, buffer or tuple of buffers) per parameter
        self.writes = list(self.datas)
        for _, _, st in states:
            self.writes.extend(st if type(st) is tuple else (st,))

    def check(self):
        """False when a setting that picks the code path, a parameter or a state buffer
        changed since capture (the graph is captured again)."""
        return (
            self._flags() == self.flags
            and all(p._data is d for p, d in zip(self.params, self.datas))
            and all(table.get(path) is st for table, path, st in self.states)
        )

    def _bump(self):
        for d in self.datas:
            bump_version(d)  # in place: a trace that saved it must not use it


def _missing_state(where):
    return GraphUnsupported(f"{where}: its state buffers are not made yet")


class _SgdGraph(_GraphStep):
    scalars = 3  # learning rate, momentum, weight decay

    def __init__(self, opt, model, grads):
        self.opt = opt
        self.where = where = f"{type(opt).__name__}.update"
        pairs = _graph_pairs(where, model, grads)
        states = []
        if opt.momentum:
            for path, p, _ in pairs:
                v = opt.velocity.get(path)
                if v is None or v.shape != p.shape:
                    raise _missing_state(where)
                states.append((opt.velocity, path, v))
        super().__init__([p for _, p, _ in pairs], self._flags(), states)

    def _flags(self):
        o = self.opt
        return (bool(o.momentum), o.nesterov, bool(o.weight_decay))

    def host(self):
        o = self.opt
        lr = o._current_rate(o.step)
        o.step += 1
        self._bump()
        return (lr, o.momentum, o.weight_decay)

    def device(self, staged, opt, model, grads):
        s = Scalars(staged)
        mu, nesterov, decay = self.flags
        pairs = _graph_pairs(self.where, model, grads)
        vs = [st for _, _, st in self.states] if mu else [None] * len(pairs)
        for (_, p, g), v in zip(pairs, vs):
            data = p._data
            if decay:
                g = g + s(2, data.dtype) * data
            if not mu:
                data -= s(0, g.dtype) * g
                continue
            v *= s(1, v.dtype)
            v -= s(0, g.dtype) * g
            if nesterov:
                data += s(1, v.dtype) * v - s(0, g.dtype) * g
            else:
                data += v


class _AdamGraph(_GraphStep):
    scalars = 8  # scale, beta1, beta2, epsilon, 1 - beta1, 1 - beta2, decay, 1 - lr*decay

    def __init__(self, opt, model, grads):
        self.opt = opt
        self.where = where = f"{type(opt).__name__}.update"
        pairs = _graph_pairs(where, model, grads)
        states = []
        for path, p, _ in pairs:
            st = opt.moments.get(path)
            if st is None or st[0].shape != p._data.shape:
                raise _missing_state(where)
            states.append((opt.moments, path, st))
        super().__init__([p for _, p, _ in pairs], self._flags(), states)

    def _flags(self):
        o = self.opt
        return (bool(o.weight_decay), o._decoupled_decay)

    def host(self):
        o = self.opt
        lr = o._current_rate(o.step)
        o.step += 1
        b1, b2, eps, decay = o.beta1, o.beta2, o.epsilon, o.weight_decay
        scale = lr * (1 - b2**o.step) ** 0.5 / (1 - b1**o.step)
        self._bump()
        return (scale, b1, b2, eps, 1 - b1, 1 - b2, decay, 1 - lr * decay)

    def device(self, staged, opt, model, grads):
        s = Scalars(staged)
        decay, decoupled = self.flags
        xp = _xp()
        pairs = _graph_pairs(self.where, model, grads)
        for (_, p, g), (_, _, st) in zip(pairs, self.states):
            data = p._data
            if decay and decoupled:
                data *= s(7, data.dtype)
            elif decay:
                g = g + s(6, data.dtype) * data
            if data.dtype.kind == "c":
                data, g = _real_views(data, g, self.where)
            t = data.dtype
            _adam_step(xp, data, g, *st, s(0, t), s(1, t), s(2, t), s(3, t), s(4, g.dtype), s(5, t))


class _SgdmGraph(_GraphStep):
    scalars = 2  # momentum, learning rate

    def __init__(self, net, grad, vel=None, learn_rate=0.01, momentum=0.9):
        self.where = "sgdmupdate"
        self.numbers = (
            _fraction(momentum, "momentum", self.where),
            _positive(learn_rate, "learn_rate", self.where),
        )
        pairs = _checked(_parameters_of(net, self.where, "net"), grad, self.where, "grad")
        super().__init__([p for _, p, _ in pairs], (), [])

    def _flags(self):
        return ()

    def host(self):
        self._bump()
        return self.numbers

    def device(self, staged, net, grad, vel=None, learn_rate=0.01, momentum=0.9):
        s = Scalars(staged)
        where = self.where
        params = _parameters_of(net, where, "net")
        pairs = _checked(params, grad, where, "grad")
        vel, buffers = _state_tree(vel, params, where, "vel")
        self.writes = list(self.datas) + buffers
        for (_, p, g), v in zip(pairs, buffers):
            v *= s(0, v.dtype)
            v -= s(1, g.dtype) * g
            p._data += v
        return net, vel


class _AdamUpdateGraph(_GraphStep):
    scalars = 6  # scale, beta1, beta2, epsilon, 1 - beta1, 1 - beta2

    def __init__(
        self,
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
        where = self.where = "adamupdate"
        # why: host() reads the iteration before every launch: an array iteration (not
        # part of the cache key) is a static input the launch has just refilled. A
        # device array is not read here: a read during stream capture is a host sync
        self.numbers = (iteration, learn_rate, grad_decay, sq_grad_decay, epsilon)
        if not backend.is_device_array(getattr(iteration, "_data", iteration)):
            _adamupdate_numbers(*self.numbers)  # checked now: a bad value refuses the capture
        pairs = _checked(_parameters_of(net, where, "net"), grad, where, "grad")
        super().__init__([p for _, p, _ in pairs], (), [])

    def _flags(self):
        return ()

    def host(self):
        self._bump()
        scale, b1, b2, eps = _adamupdate_numbers(*self.numbers)
        return (scale, b1, b2, eps, 1 - b1, 1 - b2)

    def device(self, staged, net, grad, average_grad=None, average_sq_grad=None, *rest, **kw):
        s = Scalars(staged)
        where = self.where
        params = _parameters_of(net, where, "net")
        pairs = _checked(params, grad, where, "grad")
        average_grad, firsts = _state_tree(average_grad, params, where, "average_grad")
        average_sq_grad, seconds = _state_tree(average_sq_grad, params, where, "average_sq_grad")
        self.writes = list(self.datas) + firsts + seconds
        xp = _xp()
        for (_, p, g), m, v in zip(pairs, firsts, seconds):
            data = p._data
            if data.dtype.kind == "c":
                data, g = _real_views(data, g, where)
                m, v = _real_view(m, where), _real_view(v, where)
            t = data.dtype
            tmp = xp.empty_like(data)
            _adam_step(
                xp, data, g, m, v, tmp, s(0, t), s(1, t), s(2, t), s(3, t), s(4, g.dtype), s(5, t)
            )
        return net, average_grad, average_sq_grad


class _RmsPropGraph(_GraphStep):
    scalars = 6  # learning rate, rho, 1 - rho, epsilon, momentum, weight decay

    def __init__(self, opt, model, grads):
        self.opt = opt
        self.where = where = "RMSProp.update"
        pairs = _graph_pairs(where, model, grads)
        tables = [opt.square_average]
        if opt.centered:
            tables.append(opt.gradient_average)
        if opt.momentum:
            tables.append(opt.momentum_buffer)
        states = []
        for path, p, _ in pairs:
            for table in tables:
                st = table.get(path)
                if st is None or st.size != p._data.size * (2 if p.dtype.kind == "c" else 1):
                    raise _missing_state(where)
                states.append((table, path, st))
        super().__init__([p for _, p, _ in pairs], self._flags(), states)

    def _flags(self):
        o = self.opt
        return (o.centered, bool(o.momentum), bool(o.weight_decay))

    def host(self):
        o = self.opt
        lr = o._current_rate(o.step)
        o.step += 1
        self._bump()
        return (lr, o.rho, 1 - o.rho, o.epsilon, o.momentum, o.weight_decay)

    def device(self, staged, opt, model, grads):
        s = Scalars(staged)
        centered, mu, decay = self.flags
        xp = _xp()
        states = iter(st for _, _, st in self.states)
        for _, p, g in _graph_pairs(self.where, model, grads):
            data = p._data
            if decay:
                g = g + s(5, data.dtype) * data
            if data.dtype.kind == "c":
                data, g = _real_views(data, g, self.where)
            g = xp.asarray(g, dtype=data.dtype)
            t = data.dtype
            sq = next(states)
            sq *= s(1, t)
            sq += s(2, t) * (g * g)
            if centered:
                avg = next(states)
                avg *= s(1, t)
                avg += s(2, t) * g
                denom = xp.sqrt(sq - avg * avg) + s(3, t)
            else:
                denom = xp.sqrt(sq) + s(3, t)
            if mu:
                buf = next(states)
                buf *= s(4, t)
                buf += g / denom
                data -= s(0, t) * buf
            else:
                data -= s(0, t) * (g / denom)


SGD.update.__wrapped__.__gg_graph__ = _SgdGraph
RMSProp.update.__wrapped__.__gg_graph__ = _RmsPropGraph
Adam.update.__wrapped__.__gg_graph__ = _AdamGraph  # AdamW inherits it
sgdmupdate.__wrapped__.__gg_graph__ = _SgdmGraph
adamupdate.__wrapped__.__gg_graph__ = _AdamUpdateGraph


__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "RMSProp",
    "LearningRateSchedule",
    "StepDecay",
    "ExponentialDecay",
    "CosineDecay",
    "Warmup",
    "global_norm",
    "clip_grad_norm",
    "clip_grad_value",
    "thresholdL2Norm",
    "thresholdGlobalL2Norm",
    "sgdmupdate",
    "adamupdate",
]
