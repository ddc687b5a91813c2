"""Swift-style layers: callable objects holding their parameters as dlarrays.

A ``Layer`` is a container for ``dlfeval``/``dlgradient``/``gg.gradient``: its
dlarray attributes (and sub-layers) are traced, and its gradient is a dict shaped
like ``parameters()``. ``__call__`` just calls ``forward``.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import random as _random
from .. import tape
from ..array import dlarray
from ..ops.core import _STATE, make
from ..ops.elementwise import sigmoid, sqrt
from ..ops.heavy import relu
from ..ops.reduce import mean
from ..ops.shape import reshape, transpose
from . import _prims
from . import functional as F
from .recurrent import lstm_sequence


def _xp():
    return _STATE["xp"]


def glorot_uniform(shape, fan_in, fan_out, dtype=np.float64):
    """Glorot (Xavier) uniform initializer on the active device, seeded by gg.random."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    raw = _random.raw_uniform(shape, np.float64) * (2 * limit) - limit
    return make(_xp().asarray(raw.astype(dtype)))


def _zeros(shape, dtype=np.float64):
    return make(_xp().zeros(shape, dtype))


def _is_param(v):
    return type(v) is dlarray and v.dtype.kind in "fc"


def _is_layer_list(v):
    return isinstance(v, (list, tuple)) and v and all(isinstance(e, Layer) for e in v)


class Layer:
    """Base class: subclasses set parameters as dlarray attributes and implement
    ``forward(x)``.

    >>> import gpugrad as gg
    >>> layer = gg.nn.Dense(3, 2)
    >>> sorted(layer.parameters())
    ['bias', 'weight']
    """

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x)")

    # ------------------------------------------------------------ parameters
    def _param_names(self):
        return [
            k
            for k, v in vars(self).items()
            if _is_param(v) or isinstance(v, Layer) or _is_layer_list(v)
        ]

    def parameters(self):
        """Dict name -> dlarray, nested (dicts) for sub-layers."""
        out = {}
        for k in self._param_names():
            v = getattr(self, k)
            if isinstance(v, Layer):
                out[k] = v.parameters()
            elif isinstance(v, (list, tuple)):
                out[k] = {str(i): e.parameters() for i, e in enumerate(v)}
            else:
                out[k] = v
        return out

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
        from .. import matlab  # noqa: PLC0415
        from ..tree import leaves, map_gradient  # noqa: PLC0415

        x = x if type(x) is dlarray else dlarray(x)
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


# ------------------------------------------------------------------ layers


def _activate(activation, y):
    return y if activation is None else activation(y)


class Dense(Layer):
    """``activation(x @ weight^T + bias)`` for ``x[batch, input_size]``; weight is
    ``[output_size, input_size]`` (MATLAB layout). ``activation=gg.relu`` is fused."""

    def __init__(self, input_size, output_size, activation=None, dtype=np.float64):
        self.weight = glorot_uniform((output_size, input_size), input_size, output_size, dtype)
        self.bias = _zeros((output_size,), dtype)
        self.activation = activation

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"Dense: input must be [batch, {self.weight.shape[1]}], got shape {x.shape}"
            )
        if self.activation is relu:
            return _prims.linear(x, self.weight, self.bias, relu=True)
        return _activate(self.activation, _prims.linear(x, self.weight, self.bias))


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
        dtype=np.float64,
    ):
        kh, kw, cin, cout = filter_shape
        self.filter = glorot_uniform(filter_shape, kh * kw * cin, kh * kw * cout, dtype)
        self.bias = _zeros((cout,), dtype)
        self.strides = F._pair(strides, "strides", "Conv2D")
        self.dilations = F._pair(dilations, "dilations", "Conv2D")
        self.padding = padding
        self.activation = activation

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
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
        self.pool_size = F._pair(pool_size, "pool_size", type(self).__name__)
        self.strides = self.pool_size if strides is None else F._pair(strides, "strides", "pool")
        self.padding = padding

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        if x.ndim != 4:
            raise ValueError(
                f"{type(self).__name__}: input must be [batch, height, width, channels]"
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
        x = x if type(x) is dlarray else dlarray(x)
        return reshape(x, (x.shape[0], -1))


class LSTM(Layer):
    """LSTM over ``x[batch, time, features]``; returns the hidden states
    ``[batch, time, hidden_size]`` (MATLAB gate order i, f, g, o)."""

    def __init__(self, input_size, hidden_size, dtype=np.float64):
        h = hidden_size
        self.weight = glorot_uniform((4 * h, input_size), input_size, 4 * h, dtype)
        self.recurrent_weight = glorot_uniform((4 * h, h), h, 4 * h, dtype)
        bias = np.zeros(4 * h, dtype)
        bias[h : 2 * h] = 1.0  # why: unit forget-gate bias (MATLAB's default) eases training
        self.bias = make(_xp().asarray(bias))
        self.hidden_size = h

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        if x.ndim != 3 or x.shape[2] != self.weight.shape[1]:
            raise ValueError(
                f"LSTM: input must be [batch, time, {self.weight.shape[1]}], got shape {x.shape}"
            )
        n = x.shape[0]
        state = _zeros((n, self.hidden_size), self.weight.dtype)
        ys, _, _ = lstm_sequence(
            transpose(x, (1, 0, 2)), state, state, self.weight, self.recurrent_weight, self.bias
        )
        return transpose(ys, (1, 0, 2))


class Dropout(Layer):
    """Drops a fraction ``rate`` of its input in training mode (``gg.dropout``)."""

    def __init__(self, rate=0.5):
        self.rate = rate

    def forward(self, x):
        return F.dropout(x, self.rate)


class BatchNorm(Layer):
    """Batch normalization over all axes but the last (features/channels); keeps
    running statistics (updated in training mode) for inference."""

    def __init__(self, num_features, momentum=0.1, epsilon=1e-5, dtype=np.float64):
        self.offset = _zeros((num_features,), dtype)
        self.scale = make(_xp().ones((num_features,), dtype))
        self.running_mean = _xp().zeros(num_features, dtype)
        self.running_var = _xp().ones(num_features, dtype)
        self.momentum = momentum
        self.epsilon = epsilon

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        axes = tuple(range(x.ndim - 1))
        if tape.FRAME.get().training:
            mu = mean(x, axis=axes, keepdims=True)
            centered = x - mu
            var = mean(centered * centered, axis=axes, keepdims=True)
            m = x.size // x.shape[-1]
            k = self.momentum
            self.running_mean = (1 - k) * self.running_mean + k * mu._data.reshape(-1)
            self.running_var = (1 - k) * self.running_var + k * var._data.reshape(-1) * (
                m / max(m - 1, 1)
            )
        else:
            centered = x - make(self.running_mean)
            var = make(self.running_var)
        return centered / sqrt(var + self.epsilon) * self.scale + self.offset


class LayerNorm(Layer):
    """Layer normalization over the last axis."""

    def __init__(self, num_features, epsilon=1e-5, dtype=np.float64):
        self.offset = _zeros((num_features,), dtype)
        self.scale = make(_xp().ones((num_features,), dtype))
        self.epsilon = epsilon

    def forward(self, x):
        x = x if type(x) is dlarray else dlarray(x)
        mu = mean(x, axis=-1, keepdims=True)
        centered = x - mu
        var = mean(centered * centered, axis=-1, keepdims=True)
        return centered / sqrt(var + self.epsilon) * self.scale + self.offset


class Sequential(Layer):
    """Applies its layers in order; parameters are nested as ``{"layers": {"0": ...}}``."""

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        self.layers = list(layers)

    def forward(self, x):
        return sequenced(x, *self.layers)

    def parameters(self):
        return {str(i): layer.parameters() for i, layer in enumerate(self.layers)}

    def __gg_flatten__(self):
        return [self.layers], ["layers"]

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]


def sequenced(x, *layers):
    """``layers[-1](...layers[1](layers[0](x)))``."""
    for layer in layers:
        x = layer(x)
    return x


__all__ = [
    "Layer",
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
    "sigmoid",
]
