"""Swift-style layers: callable objects holding their parameters as dlarrays.

A ``Layer`` is a container for ``dlfeval``/``dlgradient``/``gg.gradient``: its
dlarray attributes (and sub-layers) are traced, and its gradient is a dict shaped
like ``parameters()``. ``__call__`` just calls ``forward``.
"""

from __future__ import annotations

import copy
import functools

import numpy as np

from .. import _defaults, matlab
from .. import phase as _phase
from .. import random as _random
from .._accel_graph import Scalars
from .._checks import fraction, positive
from ..array import dlarray
from ..ops.core import _STATE, host_call, make
from ..ops.elementwise import sqrt
from ..ops.heavy import relu
from ..ops.reduce import mean
from ..ops.shape import astype, concatenate, reshape, transpose
from ..tape import is_recomputing
from ..tree import leaves, map_arrays, map_gradient
from . import _prims
from . import functional as F
from . import summary as _summary
from .recurrent import lstm_sequence


def _xp():
    return _STATE["xp"]


def glorot_uniform(shape, fan_in, fan_out, dtype=None):
    """Glorot (Xavier) uniform initializer on the active device, seeded by gg.random:
    uniform on ``[-limit, limit]`` with ``limit = sqrt(6 / (fan_in + fan_out))``, i.e.
    variance ``2 / (fan_in + fan_out)`` (MATLAB's and Keras' ``glorot``).

    >>> import gpugrad as gg
    >>> w = gg.nn.layers.glorot_uniform((4, 2), fan_in=2, fan_out=4)
    >>> bool(abs(w.numpy()).max() <= 1.0)
    True
    """
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    raw = _random.raw_uniform(shape, np.float64) * (2 * limit) - limit
    return make(_xp().asarray(raw.astype(_defaults.resolve(dtype))))


def orthogonal(shape, dtype=None):
    """Orthogonal initializer (MATLAB's ``orthogonal``, Keras' ``Orthogonal``), seeded
    by gg.random: ``Q`` of the QR decomposition ``Z = QR`` of a standard normal
    ``Z`` of ``shape`` (rows, cols), signed so that ``R`` has a positive diagonal.
    The columns are orthonormal when rows >= cols, else the rows are.

    >>> import numpy as np, gpugrad as gg
    >>> q = gg.nn.layers.orthogonal((6, 3), np.float64).numpy()
    >>> bool(abs(q.T @ q - np.eye(3)).max() < 1e-12)
    True
    """
    rows, cols = shape
    z = _random.normal(shape=(max(rows, cols), min(rows, cols)), dtype=np.float64).numpy()
    q, r = np.linalg.qr(z)
    # why: QR is unique only up to column signs; fixing diag(R) > 0 makes Q Haar-distributed
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    q = q if rows >= cols else q.T
    return make(_xp().asarray(np.ascontiguousarray(q).astype(_defaults.resolve(dtype))))


def _zeros(shape, dtype=None):
    return make(_xp().zeros(shape, _defaults.resolve(dtype)))


def _size(value, name, where):
    """A positive integer layer size, or a ValueError naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _padding_arg(padding, where):
    """Check a layer's ``padding`` when the layer is made: ``"valid"``, ``"same"``, an
    int, a pair or a 4-tuple (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding.lower() not in ("valid", "same"):
            raise ValueError(
                f"{where}: padding must be 'valid', 'same', an int, a pair or a 4-tuple, "
                f"got {padding!r}"
            )
        return padding
    try:
        F._padding(padding, where)
    except TypeError:
        raise ValueError(
            f"{where}: padding must be 'valid', 'same', an int, a pair or a 4-tuple, "
            f"got {padding!r}"
        ) from None
    return padding


def _cast_to(dt, args, layer):
    """The array arguments of a layer call in its parameters' float dtype ``dt``: wider
    floats are cast down (differentiably), narrower ones raise."""
    out = None
    for i, a in enumerate(args):
        adt = getattr(a, "dtype", None)
        if adt is None or adt == dt or getattr(adt, "kind", None) != "f":
            continue
        if adt.itemsize < dt.itemsize:
            raise TypeError(
                f"{type(layer).__name__}: the input is {adt} but the layer's parameters are "
                f"{dt}; computing in {dt} would silently promote the data: cast the layer "
                f"(net.astype(np.{adt})) or the data (gg.astype(x, np.{dt}))"
            )
        if out is None:
            out = list(args)
        out[i] = astype(a if type(a) is dlarray else dlarray(a, copy=False), dt)
    return args if out is None else tuple(out)


def _training_forward(impl):
    """The public ``forward`` of a layer class: MATLAB's training call around ``impl``."""

    @functools.wraps(impl)
    def forward(self, *args, **kwargs):
        if self._cast_inputs:
            args = self._cast_args(args)
        return _phase.call(impl.__get__(self), args, kwargs, _phase.FORWARD)

    forward._gg_forward_impl = impl
    return forward


def _alias_checked_init(init):
    """``init`` followed, once per construction (by the most derived class), by the
    check that no two parameters share memory."""

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except MemoryError as exc:
            if type(self).__init__ is not __init__:
                raise  # the most derived class names the layer
            shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
            raise MemoryError(
                f"gg.nn.{type(self).__name__}({shown}): the parameters do not fit in memory: {exc}"
            ) from None
        if type(self).__init__ is __init__:
            check_no_aliases(self)

    __init__._gg_checked_init = True
    return __init__


def _named_leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _named_leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], tree


def _byte_range(raw):
    if isinstance(raw, np.ndarray):
        return np.lib.array_utils.byte_bounds(raw)
    ptr = raw.data.ptr  # a CuPy array: its extent from the strides
    low = high = ptr
    for n, st in zip(raw.shape, raw.strides):
        if st < 0:
            low += (n - 1) * st
        else:
            high += (n - 1) * st
    return low, high + raw.itemsize


def check_no_aliases(layer):
    """Raise ``ValueError`` when two distinct parameters of ``layer`` share memory (an
    update of one would silently move the other). The same dlarray used twice (weight
    tying, a layer applied twice) is allowed. Runs when a layer is constructed.

    >>> import numpy as np, gpugrad as gg
    >>> class Twin(gg.nn.Layer):
    ...     def __init__(self):
    ...         buf = np.zeros(4)
    ...         self.a = gg.dlarray(buf[:2], copy=False)
    ...         self.b = gg.dlarray(buf, copy=False)
    ...     def forward(self, x):
    ...         return x * self.a + self.b[:2]
    >>> Twin()
    Traceback (most recent call last):
    ...
    ValueError: Twin: parameters 'a' and 'b' share memory, so updating one would move the other; give each its own array (gg.dlarray copies by default; copy=False shares)
    """
    seen = set()
    spans = []
    for name, p in _named_leaves(layer.parameters()):
        raw = p._data
        if id(p) in seen or not hasattr(raw, "strides") or raw.nbytes == 0:
            continue
        seen.add(id(p))
        low, high = _byte_range(raw)
        spans.append((low, high, name, raw))
    spans.sort(key=lambda s: s[0])
    reach = None  # the span reaching furthest so far
    for span in spans:
        if reach is not None and span[0] < reach[1] and _may_share(reach[3], span[3]):
            name, name2 = reach[2], span[2]
            raise ValueError(
                f"{type(layer).__name__}: parameters {name!r} and {name2!r} share memory, so "
                "updating one would move the other; give each its own array (gg.dlarray "
                "copies by default; copy=False shares)"
            )
        if reach is None or span[1] > reach[1]:
            reach = span


def _may_share(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.may_share_memory(a, b)
    return True


def _is_param(v):
    return type(v) is dlarray and v.dtype.kind in "fc"


def _params_in(value):
    """The parameter tree held by one attribute value, or None when it holds none.

    A float dlarray is a parameter, a Layer gives its ``parameters()`` (``{}`` when it
    has none), and a list/tuple (keys ``"0"``, ``"1"``, ...) or dict of those gives a
    nested dict of the entries that hold parameters.
    """
    if _is_param(value):
        return value
    if isinstance(value, Layer):
        return value.parameters()
    if isinstance(value, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        items = value.items()
    else:
        return None
    out = {}
    for k, v in items:
        sub = _params_in(v)
        if sub is not None:
            out[k] = sub
    return out or None


class Layer:
    """Base class: subclasses set parameters as dlarray attributes and implement
    ``forward(x)``.

    >>> import gpugrad as gg
    >>> layer = gg.nn.Dense(3, 2)
    >>> sorted(layer.parameters())
    ['bias', 'weight']
    """

    _mode = None  # set by train()/eval(): True, False, or None (follow the context)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not hasattr(init, "_gg_checked_init"):
            cls.__init__ = _alias_checked_init(init)
        impl = cls.__dict__.get("forward")
        if impl is not None and not hasattr(impl, "_gg_forward_impl"):
            # why: a subclass implements forward(x); called by a user it is MATLAB's
            # forward (training), while net(x) runs the implementation in the context's phase
            cls._forward_impl = impl
            cls.forward = _training_forward(impl)

    _cast_inputs = True  # a layer that takes indices (not data) sets it False

    def __call__(self, *args, **kwargs):
        if self._cast_inputs:
            args = self._cast_args(args)
        if _phase.IN_CALL.get():
            return self._forward_impl(*args, **kwargs)
        return _phase.call(self._forward_impl, args, kwargs)

    def _cast_args(self, args):
        for v in self.__dict__.values():
            if type(v) is dlarray:
                dt = v._data.dtype
                if dt.kind == "f":
                    for a in args:
                        # why: the common case (dlarray inputs already in the layer's
                        # dtype) costs one identity check each; NumPy's dtypes are singletons
                        if type(a) is not dlarray or a._data.dtype is not dt:
                            return _cast_to(dt, args, self)
                    return args
        return args

    def _checked_impl(self, *args, **kwargs):
        """The implementation with the inputs cast (``forward``/``predict`` calls)."""
        if self._cast_inputs:
            args = self._cast_args(args)
        return self._forward_impl(*args, **kwargs)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")

    _forward_impl = forward

    # ------------------------------------------------------------ dtype
    def astype(self, dtype):
        """Cast every floating parameter (and state such as BatchNorm's running
        statistics) of this layer and its sub-layers to the float ``dtype``, in place
        (the parameter objects stay the same); returns the layer. A layer computes in
        its parameters' dtype: a wider float input (float64 data into a float32 layer)
        is cast down, differentiably, and a narrower one raises ``TypeError`` rather
        than silently promoting the data.

        >>> import numpy as np, gpugrad as gg
        >>> net = gg.nn.Sequential(gg.nn.Dense(3, 2), gg.nn.BatchNorm(2))
        >>> net[0].weight.dtype
        dtype('float32')
        >>> net.astype(np.float64)[1].running_mean.dtype
        dtype('float64')
        >>> net(gg.ones((4, 3), dtype=np.float32))
        Traceback (most recent call last):
        ...
        TypeError: Dense: the input is float32 but the layer's parameters are float64; computing in float64 would silently promote the data: cast the layer (net.astype(np.float32)) or the data (gg.astype(x, np.float64))
        """
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt is None or dt.kind != "f":
            raise TypeError(f"astype: dtype must be a float type, got {dtype!r}")
        for p in leaves(self.parameters()):
            if p._data.dtype.kind == "f" and p._data.dtype != dt:
                p._data = p._data.astype(dt)
        for layer in self.layers_tree():
            for k, v in list(vars(layer).items()):
                if hasattr(v, "dtype") and hasattr(v, "astype") and type(v) is not dlarray:
                    if v.dtype.kind == "f" and v.dtype != dt:
                        setattr(layer, k, v.astype(dt))
        return self

    # ------------------------------------------------------------ training mode
    def predict(self, *args, **kwargs):
        """MATLAB's ``predict(net, X)``: the layer applied in inference mode (Dropout is
        the identity, BatchNorm uses and keeps its running statistics), whatever the
        context or ``train()`` say. ``net.forward(x)`` is its training twin; ``net(x)``
        follows ``train()``/``eval()`` and the context (see ``gg.phase``).

        >>> import gpugrad as gg
        >>> drop = gg.nn.Dropout(0.5)
        >>> drop.predict(gg.ones((3,))).numpy().tolist()
        [1.0, 1.0, 1.0]
        """
        return _phase.call(self._checked_impl, args, kwargs, _phase.PREDICT)

    def train(self, mode=True):
        """PyTorch's ``net.train()``: this layer and every sub-layer train from now on
        in ``net(x)``, whatever the context; ``train(False)`` is ``eval()`` and
        ``train(None)`` hands the choice back to the context (``gg.learning_phase``,
        ``gg.autograd.record``; training under a gradient by default). Returns the layer.

        >>> import gpugrad as gg
        >>> net = gg.nn.Sequential(gg.nn.Dense(2, 2), gg.nn.Dropout(0.5)).eval()
        >>> net.training, net[1].training
        (False, False)
        """
        if mode is not None and not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"train: mode must be True, False or None, got {mode!r}")
        mode = None if mode is None else bool(mode)
        for layer in self.layers_tree():
            layer._mode = mode
        return self

    def eval(self):
        """PyTorch's ``net.eval()``: this layer and every sub-layer infer from now on in
        ``net(x)`` (``train()`` undoes it). Returns the layer."""
        return self.train(False)

    @property
    def training(self):
        """Whether ``net(x)`` trains this layer now: its ``train()``/``eval()`` mode,
        else the context's phase (``gg.autograd.is_training()``)."""
        return _phase.layer_is_training(self)

    def layers_tree(self):
        """This layer and every layer inside it (attributes, lists, dicts), each once."""
        out = []
        seen = set()
        stack = [self]
        while stack:
            v = stack.pop()
            if isinstance(v, Layer):
                if id(v) in seen:
                    continue
                seen.add(id(v))
                out.append(v)
                stack.extend(reversed(list(vars(v).values())))
            elif isinstance(v, (list, tuple)):
                stack.extend(reversed(v))
            elif isinstance(v, dict):
                stack.extend(reversed(list(v.values())))
        return out

    # ------------------------------------------------------------ parameters
    def _param_names(self):
        return [k for k, v in vars(self).items() if _params_in(v) is not None]

    def parameters(self):
        """Dict name -> dlarray, nested (dicts) for sub-layers and for lists/dicts of
        layers or parameters (a list's entries are named ``"0"``, ``"1"``, ...)."""
        out = {}
        for k, v in vars(self).items():
            sub = _params_in(v)
            if sub is not None:
                out[k] = sub
        return out

    # ------------------------------------------------------------ MXNet-style
    def attach_grad(self, grad_req="write"):
        """``attach_grad`` on every parameter (MXNet's ``net.collect_params()
        .attach_grad()``): inside ``gg.autograd.record()``, ``loss.backward()`` then
        fills ``layer.grad``. Returns the layer.

        >>> import gpugrad as gg
        >>> layer = gg.nn.Dense(2, 1).attach_grad()
        >>> with gg.autograd.record():
        ...     loss = gg.sum(layer(gg.ones((3, 2))))
        >>> loss.backward()
        >>> layer.grad["bias"].numpy().tolist()
        [3.0]
        """
        for p in leaves(self.parameters()):
            p.attach_grad(grad_req)
        return self

    @property
    def grad(self):
        """The ``x.grad`` of every parameter, as a dict shaped like ``parameters()``
        (after ``attach_grad()`` and a ``backward``); ready for ``opt.update``."""

        def grad_of(p):
            g = p.grad
            if g is None:
                raise ValueError(
                    f"{type(self).__name__}.grad: a parameter of shape {p.shape} has no "
                    "gradient; call layer.attach_grad() before recording"
                )
            return g

        return map_arrays(grad_of, self.parameters())

    def __gg_flatten__(self):
        names = self._param_names()
        return [getattr(self, k) for k in names], names

    def __gg_unflatten__(self, aux, children):
        new = copy.copy(self)
        for k, v in zip(aux, children):
            setattr(new, k, v)
        return new

    def __gg_gradient_structure__(self):
        return self.parameters()

    # ------------------------------------------------------------ backprop
    def applied_for_backpropagation(self, x):
        """``(y, backprop)`` with ``backprop(dy) -> (grads_of_parameters, grad_of_x)``."""
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        sc, trace, (model, tx) = matlab.open_trace("pullback", (self, x))
        with sc:
            y = model(tx)
        params = leaves(model)

        def backprop(dy):
            dy = dy if type(dy) is dlarray else dlarray(dy)
            if dy.shape != y.shape:
                raise ValueError(
                    f"backprop: dy must have the output's shape {y.shape}, got {dy.shape}"
                )
            grads = matlab.gradients_of(
                y, params + [tx], create_graph=False, retain=True, seed=make(dy._data)
            )
            table = {id(p): g for p, g in zip(params, grads)}
            return map_gradient(lambda a: table[id(a)], model), grads[-1]

        return make(y._data, y._fmt), backprop

    # ------------------------------------------------------------ display
    def __repr__(self):
        return _summary.layer_repr(self)

    def summary(self, x=None, *, input_shape=None):
        """Keras-style table of the layer and its sub-layers: type, output shape for
        the input ``x`` (or zeros of ``input_shape``; one inference run) and parameter
        count. ``print(layer)`` gives the nested PyTorch-style view instead. Returns
        the text (print it)."""
        return _summary.summary_table(self, x, input_shape=input_shape)


# ------------------------------------------------------------------ layers


def _activate(activation, y):
    return y if activation is None else activation(y)


def _check_activation(activation, where):
    if activation is not None and not callable(activation):
        raise TypeError(
            f"{where}: activation must be None or a function such as gg.relu, "
            f"got {type(activation).__name__}"
        )


class Dense(Layer):
    """``activation(x @ weight^T + bias)`` for ``x[batch, input_size]``; weight is
    ``[output_size, input_size]`` (MATLAB layout). ``activation=gg.relu`` is fused."""

    def __init__(self, input_size, output_size, activation=None, dtype=None):
        dtype = _defaults.resolve(dtype)
        input_size = _size(input_size, "input_size", "Dense")
        output_size = _size(output_size, "output_size", "Dense")
        _check_activation(activation, "Dense")
        self.weight = glorot_uniform((output_size, input_size), input_size, output_size, dtype)
        self.bias = _zeros((output_size,), dtype)
        self.activation = activation

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        n_in = self.weight.shape[1]
        if x.ndim != 2:
            raise ValueError(
                f"Dense: input must be [batch, {n_in}] (2-D), got shape {x.shape}; "
                "flatten it first (gg.nn.Flatten())"
            )
        if x.shape[1] != n_in:
            raise ValueError(
                f"Dense: input has {x.shape[1]} features but the layer's input_size is {n_in} "
                f"(input must be [batch, {n_in}], got shape {x.shape})"
            )
        if self.activation is relu:
            return _prims.linear(x, self.weight, self.bias, relu=True)
        return _activate(self.activation, _prims.linear(x, self.weight, self.bias))


def _filter_shape(filter_shape, names, where):
    """The sizes of ``filter_shape``, one positive int per name in ``names``."""
    try:
        shape = tuple(filter_shape)
    except TypeError:
        shape = ()
    if len(shape) != len(names):
        raise ValueError(
            f"{where}: filter_shape must be ({', '.join(names)}), {len(names)} values, "
            f"got {filter_shape!r}"
        )
    return tuple(_size(v, f"filter_shape {n}", where) for v, n in zip(shape, names))


def _pad_for(padding, kernel, dilation, stride, hw, where):
    if isinstance(padding, str) and padding.lower() == "valid":
        return (0, 0, 0, 0)
    return F._padding(padding, where, kernel, dilation, stride, hw)


class Conv2D(Layer):
    """2-D convolution on ``x[batch, height, width, channels]`` with
    ``filter_shape=(h, w, in, out)`` (MATLAB weights layout)."""

    def __init__(
        self,
        filter_shape,
        strides=(1, 1),
        padding="valid",
        activation=None,
        dilations=(1, 1),
        dtype=None,
    ):
        dtype = _defaults.resolve(dtype)
        names = ("height", "width", "in_channels", "out_channels")
        kh, kw, cin, cout = _filter_shape(filter_shape, names, "Conv2D")
        # why: fan_in/fan_out count the receptive field (h*w) as MATLAB and Keras do
        self.filter = glorot_uniform((kh, kw, cin, cout), kh * kw * cin, kh * kw * cout, dtype)
        self.bias = _zeros((cout,), dtype)
        self.strides = F._pair(strides, "strides", "Conv2D")
        self.dilations = F._pair(dilations, "dilations", "Conv2D")
        self.padding = _padding_arg(padding, "Conv2D")
        _check_activation(activation, "Conv2D")
        self.activation = activation

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        kh, kw, cin, _ = self.filter.shape
        if x.ndim != 4 or x.shape[3] != cin:
            raise ValueError(
                f"Conv2D: input must be [batch, height, width, {cin}] (channels last), got {x.shape}"
            )
        pad = _pad_for(self.padding, (kh, kw), self.dilations, self.strides, x.shape[1:3], "Conv2D")
        ho, wo = _prims._geometry(x.shape, self.filter.shape, self.strides, pad, self.dilations)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"Conv2D: the {kh}x{kw} filter is larger than the {x.shape[1:3]} input"
            )
        fused = self.activation is relu
        y = _prims.conv2d(
            x,
            self.filter,
            self.bias,
            stride=self.strides,
            padding=pad,
            dilation=self.dilations,
            groups=1,
            relu=fused,
        )
        return y if fused else _activate(self.activation, y)


class _Pool2D(Layer):
    _fn = None

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid"):
        where = type(self).__name__
        self.pool_size = F._pair(pool_size, "pool_size", where)
        self.strides = self.pool_size if strides is None else F._pair(strides, "strides", where)
        self.padding = _padding_arg(padding, where)

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__}: input must be [batch, height, width, channels] "
                f"(4-D), got shape {x.shape}"
            )
        pad = _pad_for(self.padding, self.pool_size, (1, 1), self.strides, x.shape[1:3], "pool")
        hwcn = transpose(x, (1, 2, 3, 0))
        y = type(self)._fn(hwcn, self.pool_size, self.strides, pad, data_format="SSCB")
        return transpose(y, (3, 0, 1, 2))


class MaxPool2D(_Pool2D):
    """Max pooling on ``[batch, height, width, channels]``."""

    _fn = staticmethod(F.maxpool)


class AvgPool2D(_Pool2D):
    """Average pooling on ``[batch, height, width, channels]``."""

    _fn = staticmethod(F.avgpool)


class Flatten(Layer):
    """``[batch, ...] -> [batch, features]``."""

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        return reshape(x, (x.shape[0], -1))


class LSTM(Layer):
    """LSTM over ``x[batch, time, features]``; returns the hidden states
    ``[batch, time, hidden_size]`` (MATLAB gate order i, f, g, o)."""

    def __init__(self, input_size, hidden_size, dtype=None):
        dtype = _defaults.resolve(dtype)
        input_size = _size(input_size, "input_size", "LSTM")
        h = _size(hidden_size, "hidden_size", "LSTM")
        # MATLAB's lstmLayer defaults: glorot input weights (fan_in = input size,
        # fan_out = 4 * hidden), orthogonal recurrent weights, unit forget-gate bias
        self.weight = glorot_uniform((4 * h, input_size), input_size, 4 * h, dtype)
        self.recurrent_weight = orthogonal((4 * h, h), dtype)
        bias = np.zeros(4 * h, dtype)
        bias[h : 2 * h] = 1.0  # why: unit forget-gate bias (MATLAB's default) eases training
        self.bias = make(_xp().asarray(bias))
        self.hidden_size = h

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        n_in = self.weight.shape[1]
        if x.ndim != 3:
            raise ValueError(
                f"LSTM: input must be [batch, time, {n_in}] (3-D), got shape {x.shape}"
            )
        if x.shape[2] != n_in:
            raise ValueError(
                f"LSTM: input has {x.shape[2]} features but the layer's input_size is {n_in} "
                f"(input must be [batch, time, {n_in}], got shape {x.shape})"
            )
        n = x.shape[0]
        state = _zeros((n, self.hidden_size), self.weight.dtype)
        ys, _, _ = lstm_sequence(
            transpose(x, (1, 0, 2)), state, state, self.weight, self.recurrent_weight, self.bias
        )
        return transpose(ys, (1, 0, 2))


class Dropout(Layer):
    """Drops a fraction ``rate`` of its input in training mode (``gg.dropout``): in
    ``net.forward(x)``, after ``net.train()``, under ``gg.learning_phase("training")``
    or ``gg.autograd.record()``, and by default under a gradient (``dlfeval``,
    ``gg.gradient``); the identity in ``net.predict(x)``, after ``net.eval()`` and
    otherwise. See ``gpugrad.phase`` for the full rule."""

    def __init__(self, rate=0.5):
        self.rate = fraction(rate, "rate", "Dropout")

    def forward(self, x):
        return F.dropout(x, self.rate, training=_phase.layer_is_training(self))


def _check_features(x, num_features, where):
    if x.ndim < 1 or x.shape[-1] != num_features:
        raise ValueError(
            f"{where}: the last axis of the input (features/channels) must have "
            f"num_features={num_features} entries, got shape {x.shape}"
        )


class BatchNorm(Layer):
    """Batch normalization over all axes but the last (features/channels); keeps
    running statistics for inference.

    In training mode (``net.forward(x)``, ``net.train()``, ``gg.learning_phase(
    "training")``, ``gg.autograd.record()``, and by default under a gradient such as
    ``dlfeval`` or ``gg.gradient``) it normalizes with the batch statistics and moves
    the running ones in place (``(1 - momentum) * old + momentum * batch``, unbiased
    variance, as ``gg.batchnorm`` with running statistics); in inference mode
    (``net.predict(x)``, ``net.eval()``, ``gg.learning_phase("inference")``, and
    outside any gradient when nobody chose) it uses the running statistics.
    See ``gpugrad.phase`` for the full rule.

    >>> import gpugrad as gg
    >>> bn = gg.nn.BatchNorm(1)
    >>> x = gg.dlarray([[1.0], [3.0]])
    >>> bn(x).numpy().round(4).ravel().tolist()  # nobody chose, no gradient: running stats
    [1.0, 3.0]
    >>> bn.forward(x).numpy().round(4).ravel().tolist()  # MATLAB's forward: trains
    [-1.0, 1.0]
    >>> bn.running_mean.dtype, bn.running_mean.astype(float).round(6).tolist()
    (dtype('float32'), [0.2])
    """

    def __init__(self, num_features, momentum=0.1, epsilon=1e-5, dtype=None):
        dtype = _defaults.resolve(dtype)
        num_features = _size(num_features, "num_features", "BatchNorm")
        fraction(momentum, "momentum", "BatchNorm", one=True)
        positive(epsilon, "epsilon", "BatchNorm")
        self.offset = _zeros((num_features,), dtype)
        self.scale = make(_xp().ones((num_features,), dtype))
        self.running_mean = _xp().zeros(num_features, dtype)
        self.running_var = _xp().ones(num_features, dtype)
        self.momentum = momentum
        self.epsilon = epsilon

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        _check_features(x, self.offset.shape[0], type(self).__name__)
        axes = tuple(range(x.ndim - 1))
        if _phase.layer_is_training(self):
            mu = mean(x, axis=axes, keepdims=True)
            centered = x - mu
            var = mean(centered * centered, axis=axes, keepdims=True)
            # a recomputation: the first run moved the statistics; an empty batch has none
            if not is_recomputing() and x.size:
                self._update_running_statistics(mu, var, x.size // x.shape[-1])
        else:
            centered = x - make(self.running_mean)
            var = make(self.running_var)
        return centered / sqrt(var + self.epsilon) * self.scale + self.offset

    @host_call(mutates=True)  # a gg.dlaccelerate replay repeats the update
    def _update_running_statistics(self, mu, var, m):
        k = self.momentum
        # why: in place, because dlfeval / gg.gradient run a shallow copy of the layer
        # (its parameters traced); the copy shares these buffers, so the statistics
        # a traced training step computes reach the caller's layer
        self.running_mean *= 1 - k
        self.running_mean += k * mu._data.reshape(-1)
        self.running_var *= 1 - k
        self.running_var += (k * m / max(m - 1, 1)) * var._data.reshape(-1)


class _RunningStatisticsGraph:
    """BatchNorm's running-statistics update in a gg.dlaccelerate graph: the momentum's
    numbers are staged before each launch (see gpugrad/optim.py, "graph steps")."""

    scalars = 3

    def __init__(self, layer, mu, var, m):
        self.layer, self.m = layer, m
        self.writes = (layer.running_mean, layer.running_var)

    def check(self):
        layer = self.layer
        return layer.running_mean is self.writes[0] and layer.running_var is self.writes[1]

    def host(self):
        k, m = self.layer.momentum, self.m
        return (1 - k, k, k * m / max(m - 1, 1))

    def device(self, staged, layer, mu, var, m):
        s = Scalars(staged)
        rm, rv = layer.running_mean, layer.running_var
        mu, var = mu._data.reshape(-1), var._data.reshape(-1)
        rm *= s(0, rm.dtype)
        rm += s(1, mu.dtype) * mu
        rv *= s(0, rv.dtype)
        rv += s(2, var.dtype) * var


BatchNorm._update_running_statistics.__wrapped__.__gg_graph__ = _RunningStatisticsGraph


class LayerNorm(Layer):
    """Layer normalization over the last axis."""

    def __init__(self, num_features, epsilon=1e-5, dtype=None):
        dtype = _defaults.resolve(dtype)
        num_features = _size(num_features, "num_features", "LayerNorm")
        positive(epsilon, "epsilon", "LayerNorm")
        self.offset = _zeros((num_features,), dtype)
        self.scale = make(_xp().ones((num_features,), dtype))
        self.epsilon = epsilon

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x, copy=False)
        _check_features(x, self.offset.shape[0], type(self).__name__)
        mu = mean(x, axis=-1, keepdims=True)
        centered = x - mu
        var = mean(centered * centered, axis=-1, keepdims=True)
        return centered / sqrt(var + self.epsilon) * self.scale + self.offset


class _Branches(Layer):
    """A layer holding a list of layers/functions, with parameters ``{"0": ...}``."""

    def _set_layers(self, layers, where, allow_empty=False):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers and not allow_empty:
            raise ValueError(f"{where}: give at least one layer")
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(
                    f"{where}: layer {i} must be a gg.nn.Layer or a function of one array, "
                    f"got {type(layer).__name__}"
                )
        self.layers = list(layers)

    def parameters(self):
        return {
            str(i): layer.parameters() if isinstance(layer, Layer) else {}
            for i, layer in enumerate(self.layers)
        }

    def __gg_flatten__(self):
        return [self.layers], ["layers"]

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]


class Sequential(_Branches):
    """Applies its layers in order; ``parameters()`` is ``{"0": ..., "1": ...}``, one
    entry per layer (``{}`` for a layer without parameters or a plain function such
    as ``gg.relu``).

    >>> import gpugrad as gg
    >>> model = gg.nn.Sequential(gg.nn.Dense(4, 3), gg.relu, gg.nn.Dense(3, 2))
    >>> model(gg.ones((5, 4))).shape, sorted(model.parameters()["2"])
    ((5, 2), ['bias', 'weight'])
    """

    def __init__(self, *layers):
        self._set_layers(layers, "Sequential", allow_empty=True)

    def forward(self, x):
        return sequenced(x, *self.layers)


def sequenced(x, *layers):
    """``layers[-1](...layers[1](layers[0](x)))``."""
    for layer in layers:
        x = layer(x)
    return x


__all__ = [
    "Layer",
    "orthogonal",
    "Dense",
    "Conv2D",
    "MaxPool2D",
    "AvgPool2D",
    "Flatten",
    "LSTM",
    "Dropout",
    "BatchNorm",
    "LayerNorm",
    "Sequential",
    "sequenced",
    "glorot_uniform",
]


# ------------------------------------------------------------------ more layers
# why: parameters are made only through glorot_uniform / orthogonal / _zeros with the
# constructor's dtype passed through, so they follow the default parameter dtype


def _ones(shape, dtype=None):
    p = _zeros(shape, dtype)
    p._data += 1
    return p


def _narrow_normal(shape, dtype=None):
    """MATLAB's ``narrow-normal`` initializer: normal, mean 0, standard deviation 0.01."""
    p = _zeros(shape, dtype)
    p._data += _random.normal(scale=0.01, shape=shape)._data.astype(p.dtype)
    return p


def _input_3d(x, n_in, where, what):
    x = x if type(x) is dlarray else dlarray(x)
    if x.ndim != 3:
        raise ValueError(
            f"{where}: input must be [batch, {what}, {n_in}] (3-D), got shape {x.shape}"
        )
    if x.shape[2] != n_in:
        raise ValueError(
            f"{where}: input has {x.shape[2]} features but the layer expects {n_in} "
            f"(input must be [batch, {what}, {n_in}], got shape {x.shape})"
        )
    return x


class GRU(Layer):
    """Gated recurrent unit over ``x[batch, time, features]`` (``gg.gru``, MATLAB gate
    order reset, update, candidate); returns the hidden states ``[batch, time,
    hidden_size]``. ``reset_gate_mode`` as in ``gg.gru``; with
    ``"recurrent-bias-after-multiplication"`` the bias is ``[6 * hidden]`` (input and
    recurrent bias), which is ``torch.nn.GRU``'s cell. Weights are initialized as
    MATLAB's ``gruLayer``: glorot input weights, orthogonal recurrent weights, zero bias.

    >>> import gpugrad as gg
    >>> gru = gg.nn.GRU(3, 5)
    >>> gru(gg.ones((2, 4, 3))).shape, sorted(gru.parameters())
    ((2, 4, 5), ['bias', 'recurrent_weight', 'weight'])
    """

    def __init__(self, input_size, hidden_size, reset_gate_mode="after-multiplication", dtype=None):
        input_size = _size(input_size, "input_size", "GRU")
        h = _size(hidden_size, "hidden_size", "GRU")
        modes = (
            "after-multiplication",
            "before-multiplication",
            "recurrent-bias-after-multiplication",
        )
        if reset_gate_mode not in modes:
            raise ValueError(
                f"GRU: reset_gate_mode must be one of {', '.join(map(repr, modes))}, "
                f"got {reset_gate_mode!r}"
            )
        self.weight = glorot_uniform((3 * h, input_size), input_size, 3 * h, dtype)
        self.recurrent_weight = orthogonal((3 * h, h), dtype)
        nbias = 6 * h if reset_gate_mode == "recurrent-bias-after-multiplication" else 3 * h
        self.bias = _zeros((nbias,), dtype)
        self.hidden_size = h
        self.reset_gate_mode = reset_gate_mode

    def forward(self, x):
        x = _input_3d(x, self.weight.shape[1], "GRU", "time")
        y, _ = F.gru(
            x,
            None,
            self.weight,
            self.recurrent_weight,
            self.bias,
            reset_gate_mode=self.reset_gate_mode,
            data_format="BTC",
        )
        return y


class Embedding(Layer):
    """Looks up a vector for each 0-based index in ``x`` (any shape, integer values):
    the output has shape ``x.shape + (embedding_dim,)``. ``weight`` is
    ``[embedding_dim, vocabulary_size]`` (MATLAB's ``embed`` layout), initialized
    narrow-normal (mean 0, standard deviation 0.01) as MATLAB's ``wordEmbeddingLayer``.
    Only the rows that were looked up get gradients.

    >>> import gpugrad as gg
    >>> emb = gg.nn.Embedding(10, 4)
    >>> emb(np.array([[1, 2, 3], [3, 0, 9]])).shape
    (2, 3, 4)
    """

    _cast_inputs = False  # its input holds indices, not data in the parameters' dtype

    def __init__(self, vocabulary_size, embedding_dim, dtype=None):
        vocabulary_size = _size(vocabulary_size, "vocabulary_size", "Embedding")
        dim = _size(embedding_dim, "embedding_dim", "Embedding")
        self.weight = _narrow_normal((dim, vocabulary_size), dtype)

    def forward(self, x):
        raw = x._data if isinstance(x, dlarray) else x
        if not hasattr(raw, "shape"):
            raw = np.asarray(raw)
        vocabulary = self.weight.shape[1]
        codes = F._class_indices(raw, "Embedding", "indices", vocabulary, "vocabulary indices")
        return transpose(self.weight, (1, 0))[_xp().asarray(codes)]


class Conv1D(Layer):
    """1-D convolution on ``x[batch, width, channels]`` with
    ``filter_shape=(width, in, out)`` (Swift's ``Conv1D``); ``padding`` is ``"valid"``,
    ``"same"``, an int or a pair (left, right). Runs as a 2-D convolution of height 1.

    >>> import gpugrad as gg
    >>> conv = gg.nn.Conv1D((3, 2, 4), padding="same")
    >>> conv(gg.ones((5, 10, 2))).shape
    (5, 10, 4)
    """

    def __init__(
        self, filter_shape, stride=1, padding="valid", dilation=1, activation=None, dtype=None
    ):
        kw, cin, cout = _filter_shape(
            filter_shape, ("width", "in_channels", "out_channels"), "Conv1D"
        )
        self.filter = glorot_uniform((kw, cin, cout), kw * cin, kw * cout, dtype)
        self.bias = _zeros((cout,), dtype)
        self.stride = _size(stride, "stride", "Conv1D")
        self.dilation = _size(dilation, "dilation", "Conv1D")
        if isinstance(padding, str):
            if padding.lower() not in ("valid", "same"):
                raise ValueError(
                    f"Conv1D: padding must be 'valid', 'same', an int or a pair (left, right), "
                    f"got {padding!r}"
                )
        else:
            pair = F._ints(padding, "padding", "Conv1D", (1, 2), "an int or a pair (left, right)")
            if min(pair) < 0:
                raise ValueError(f"Conv1D: padding must be >= 0, got {padding!r}")
            padding = pair if len(pair) == 2 else pair * 2
        self.padding = padding
        _check_activation(activation, "Conv1D")
        self.activation = activation

    def forward(self, x):
        kw, cin, cout = self.filter.shape
        x = _input_3d(x, cin, "Conv1D", "width")
        width = x.shape[1]
        if isinstance(self.padding, str):
            pad = _pad_for(
                self.padding, (1, kw), (1, self.dilation), (1, self.stride), (1, width), "Conv1D"
            )
        else:
            pad = (0, 0) + tuple(self.padding)
        geo = (1, self.stride), pad, (1, self.dilation)
        _, wo = _prims._geometry((1, 1, width, cin), (1, kw, cin, cout), *geo)
        if wo < 1:
            raise ValueError(
                f"Conv1D: the filter of width {kw} (dilation {self.dilation}) is wider than the "
                f"padded input of width {width} (padding {pad[2:]})"
            )
        fused = self.activation is relu
        y = _prims.conv2d(
            reshape(x, (x.shape[0], 1, width, cin)),
            reshape(self.filter, (1, kw, cin, cout)),
            self.bias,
            stride=geo[0],
            padding=pad,
            dilation=geo[2],
            groups=1,
            relu=fused,
        )
        y = reshape(y, (y.shape[0], y.shape[2], cout))
        return y if fused else _activate(self.activation, y)


class TransposedConv2D(Layer):
    """Transposed 2-D convolution (``gg.dltranspconv``) on ``x[batch, height, width,
    channels]`` with ``filter_shape=(h, w, out, in)`` (MATLAB's and Swift's layout).
    ``padding`` is the cropping of the full output: ``"valid"`` (none: size
    ``(H - 1) * stride + h``), ``"same"`` (size ``H * stride``), an int, a pair or a
    4-tuple (top, bottom, left, right).

    >>> import gpugrad as gg
    >>> up = gg.nn.TransposedConv2D((4, 4, 3, 8), strides=2, padding="same")
    >>> up(gg.ones((2, 5, 5, 8))).shape
    (2, 10, 10, 3)
    """

    def __init__(self, filter_shape, strides=(1, 1), padding="valid", activation=None, dtype=None):
        names = ("height", "width", "out_channels", "in_channels")
        kh, kw, cout, cin = _filter_shape(filter_shape, names, "TransposedConv2D")
        # why: fan_in/fan_out of the transposed operation (its input has cin channels)
        self.filter = glorot_uniform((kh, kw, cout, cin), kh * kw * cin, kh * kw * cout, dtype)
        self.bias = _zeros((cout,), dtype)
        self.strides = F._pair(strides, "strides", "TransposedConv2D")
        if isinstance(padding, str):
            if padding.lower() not in ("valid", "same"):
                raise ValueError(
                    "TransposedConv2D: padding must be 'valid', 'same', an int, a pair or a "
                    f"4-tuple, got {padding!r}"
                )
            if padding.lower() == "same" and (kh < self.strides[0] or kw < self.strides[1]):
                raise ValueError(
                    f"TransposedConv2D: padding='same' needs a filter at least as large as the "
                    f"strides, but the filter is {kh}x{kw} and the strides {self.strides}"
                )
        else:
            padding = F._padding(padding, "TransposedConv2D")
        self.padding = padding
        _check_activation(activation, "TransposedConv2D")
        self.activation = activation

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        kh, kw, cout, cin = self.filter.shape
        if x.ndim != 4 or x.shape[3] != cin:
            raise ValueError(
                f"TransposedConv2D: input must be [batch, height, width, {cin}] (channels "
                f"last), got {x.shape}"
            )
        crop = (
            0 if isinstance(self.padding, str) and self.padding.lower() == "valid" else self.padding
        )
        hwcn = transpose(x, (1, 2, 3, 0))
        y = F.dltranspconv(hwcn, self.filter, self.bias, self.strides, crop, data_format="SSCB")
        return _activate(self.activation, transpose(y, (3, 0, 1, 2)))


class GroupNorm(Layer):
    """Group normalization (``gg.groupnorm``) of ``x[batch, ..., channels]``: the
    channels split into ``num_groups`` groups, each normalized over its channels and
    the axes between batch and channels, per observation; then a learnable per-channel
    ``scale`` (ones) and ``offset`` (zeros). ``num_groups`` as in ``gg.groupnorm``.

    >>> import gpugrad as gg
    >>> norm = gg.nn.GroupNorm(2, 6)
    >>> norm(gg.random.normal(shape=(4, 5, 5, 6))).shape
    (4, 5, 5, 6)
    """

    def __init__(self, num_groups, num_features, epsilon=1e-5, dtype=None):
        num_features = _size(num_features, "num_features", "GroupNorm")
        if isinstance(num_groups, str):
            if num_groups not in ("all-channels", "channel-wise"):
                raise ValueError(
                    "GroupNorm: num_groups must be a positive integer dividing num_features, "
                    f"'all-channels' or 'channel-wise', got {num_groups!r}"
                )
        else:
            num_groups = _size(num_groups, "num_groups", "GroupNorm")
            if num_features % num_groups:
                raise ValueError(
                    f"GroupNorm: num_groups must divide num_features={num_features}, "
                    f"got {num_groups}"
                )
        positive(epsilon, "epsilon", "GroupNorm")
        self.offset = _zeros((num_features,), dtype)
        self.scale = _ones((num_features,), dtype)
        self.num_groups = num_groups
        self.epsilon = epsilon

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        _check_features(x, self.offset.shape[0], "GroupNorm")
        if x.ndim < 2:
            raise ValueError(
                f"GroupNorm: input must be [batch, ..., channels] (at least 2-D), got shape "
                f"{x.shape}"
            )
        # batch first, channels last, the axes between are spatial
        data_format = "B" + "S" * (x.ndim - 2) + "C"
        if x.ndim - 2 > 3:
            data_format = "B" + "U" * (x.ndim - 2) + "C"
        return F.groupnorm(
            x,
            self.num_groups,
            self.offset,
            self.scale,
            epsilon=self.epsilon,
            data_format=data_format,
        )


class Residual(_Branches):
    """``x + layers[-1](...layers[0](x))``: a residual (skip) connection around a chain
    of layers, whose output must have the input's shape. For a projection shortcut use
    ``Parallel(body, projection, combine="sum")``.

    >>> import gpugrad as gg
    >>> block = gg.nn.Residual(gg.nn.Dense(4, 4), gg.relu)
    >>> block(gg.ones((2, 4))).shape, list(block.parameters())
    ((2, 4), ['0', '1'])
    """

    def __init__(self, *layers):
        self._set_layers(layers, "Residual")

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        y = sequenced(x, *self.layers)
        if y.shape != x.shape:
            raise ValueError(
                f"Residual: the layers map shape {x.shape} to {y.shape}; a residual block "
                "must keep the shape (use Parallel(..., combine='sum') with a projection)"
            )
        return x + y


class Parallel(_Branches):
    """Applies each branch to the same input and combines the outputs:
    ``combine="concatenate"`` (default) joins them along ``axis`` (the last, channels),
    ``"sum"`` adds them, ``None`` returns a tuple, a function gets the list.

    >>> import gpugrad as gg
    >>> net = gg.nn.Parallel(gg.nn.Dense(3, 2), gg.nn.Dense(3, 5))
    >>> net(gg.ones((4, 3))).shape
    (4, 7)
    """

    def __init__(self, *branches, combine="concatenate", axis=-1):
        self._set_layers(branches, "Parallel")
        if not (combine is None or callable(combine) or combine in ("concatenate", "sum")):
            raise ValueError(
                "Parallel: combine must be 'concatenate', 'sum', None or a function of the "
                f"list of outputs, got {combine!r}"
            )
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"Parallel: axis must be an integer, got {axis!r}")
        self.combine = combine
        self.axis = int(axis)

    def forward(self, x):
        outs = [branch(x) for branch in self.layers]
        if self.combine is None:
            return tuple(outs)
        if callable(self.combine):
            return self.combine(outs)
        if self.combine == "sum":
            total = outs[0]
            for out in outs[1:]:
                total = total + out
            return total
        return concatenate(outs, axis=self.axis)


__all__ += [
    "GRU",
    "Embedding",
    "Conv1D",
    "TransposedConv2D",
    "GroupNorm",
    "Residual",
    "Parallel",
]
