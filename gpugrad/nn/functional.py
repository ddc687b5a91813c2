"""MATLAB deep-learning functions (``fullyconnect``, ``dlconv``, ``maxpool``, ``lstm``,
losses, ...) with MATLAB weight layouts and format labels.

Formatted dlarrays are stored in S,C,B,T,U order (``'SSCB'`` is ``(H, W, C, N)``,
``'CB'`` is ``(C, N)``, ``'CBT'`` is ``(C, N, T)``). Each function reads its axes
from the format labels, or from ``data_format=`` for an unformatted input; the
result of an unformatted input is unformatted, in the ``data_format`` layout.
Heavy ops are primitives (``gpugrad.nn._prims``); the rest are composed from
gpugrad ops, so they need no hand-written gradients.
"""

from __future__ import annotations

import math

import numpy as np

from .. import random as _random
from .. import tape
from ..array import check_format, dlarray
from ..ops.core import _STATE, make
from ..ops.elementwise import abs as gabs
from ..ops.elementwise import exp, log, sigmoid, sqrt, tanh, where
from ..ops.heavy import relu
from ..ops.reduce import logsumexp, mean
from ..ops.reduce import sum as gsum
from ..ops.shape import concatenate, reshape, stack, take_along_axis, transpose
from . import _prims

_ORDER = "SCBTU"


def _xp():
    return _STATE["xp"]


def _dl(x):
    return x if type(x) is dlarray else dlarray(x)


# ------------------------------------------------------------------ formats


class _Fmt:
    """Resolved format of an input: the dlarray in sorted (S,C,B,T,U) layout, its
    labels, and how to give the result back (formatted, or unformatted in the
    user's ``data_format`` order)."""

    def __init__(self, x, data_format, where, expected):
        x = _dl(x)
        if x._fmt:
            if data_format is not None and data_format.upper() != x._fmt:
                raise ValueError(
                    f"{where}: data_format={data_format!r} contradicts the format "
                    f"{x._fmt!r} of the input; drop data_format or use stripdims(x)"
                )
            self.x = x
            self.user = None
        else:
            if data_format is None:
                raise ValueError(
                    f"{where}: the input is an unformatted dlarray; give it format labels, e.g. "
                    f"dlarray(x, {expected!r}), or pass data_format={expected!r}"
                )
            if len(data_format) != x.ndim:
                raise ValueError(
                    f"{where}: data_format={data_format!r} has {len(data_format)} labels but the "
                    f"input has {x.ndim} dimension(s) (shape {x.shape}); expected e.g. {expected!r}"
                )
            self.user = data_format.upper()
            self.x = dlarray(x, self.user)
        self.fmt = self.x._fmt

    def axes(self, label):
        return [i for i, c in enumerate(self.fmt) if c == label]

    def size(self, label):
        return int(np.prod([self.x.shape[i] for i in self.axes(label)], dtype=np.int64))

    def require(self, labels, where, expected):
        for c in labels:
            if c not in self.fmt:
                raise ValueError(
                    f"{where}: the input format {self.fmt!r} has no {c!r} dimension; "
                    f"expected a format like {expected!r}"
                )

    def back(self, y, fmt):
        """Label ``y`` (sorted layout, labels ``fmt``) for the caller."""
        y = make(y._data, fmt, y._node, y._idx, y._taint)
        if self.user is None:
            return y
        order = [c for c in self.user if c in fmt]
        if sorted(order) != sorted(fmt):
            return make(y._data, "", y._node, y._idx, y._taint)
        # permute the sorted labels back to the caller's order
        used = [False] * len(fmt)
        perm = []
        for c in order:
            for i, f in enumerate(fmt):
                if f == c and not used[i]:
                    used[i] = True
                    perm.append(i)
                    break
        out = transpose(y, tuple(perm))
        return make(out._data, "", out._node, out._idx, out._taint)


def _strip(x):
    return make(x._data, "", x._node, x._idx, x._taint)


def _label(x, fmt):
    return make(x._data, fmt, x._node, x._idx, x._taint)


def _pair(value, name, where, allow_zero=False):
    if isinstance(value, (int, np.integer)):
        out = (int(value), int(value))
    else:
        out = tuple(int(v) for v in value)
        if len(out) != 2:
            raise ValueError(f"{where}: {name} must be an int or a pair, got {value!r}")
    low = 0 if allow_zero else 1
    if min(out) < low:
        raise ValueError(f"{where}: {name} must be >= {low}, got {value!r}")
    return out


def _padding(padding, where, kernel=None, dilation=(1, 1), stride=(1, 1), in_hw=None):
    """(top, bottom, left, right) from int, pair, 4-tuple or ``"same"``."""
    if isinstance(padding, str):
        if padding.lower() != "same":
            raise ValueError(f"{where}: padding must be 'same', an int, a pair or a 4-tuple")
        out = []
        for d in range(2):
            eff = dilation[d] * (kernel[d] - 1) + 1
            size_out = math.ceil(in_hw[d] / stride[d])
            total = max((size_out - 1) * stride[d] + eff - in_hw[d], 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    if isinstance(padding, (int, np.integer)):
        out = (int(padding),) * 4
    else:
        vals = tuple(int(v) for v in padding)
        if len(vals) == 2:
            out = (vals[0], vals[0], vals[1], vals[1])
        elif len(vals) == 4:
            out = vals
        else:
            raise ValueError(
                f"{where}: padding must be an int, a pair or a 4-tuple, got {padding!r}"
            )
    if min(out) < 0:
        raise ValueError(f"{where}: padding must be >= 0, got {padding!r}")
    return out


# ------------------------------------------------------------------ fullyconnect


def fullyconnect(x, weights, bias, *, data_format=None):
    """``weights @ x + bias`` over the channel (and spatial) dimensions; output ``'CB'``.

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.ones((3, 2)), "CB")
    >>> gg.fullyconnect(x, gg.dlarray(np.ones((4, 3))), gg.dlarray(np.zeros(4))).shape
    (4, 2)
    """
    where = "fullyconnect"
    f = _Fmt(x, data_format, where, "CB")
    f.require("C", where, "CB")
    w = _dl(weights)
    b = _dl(bias)
    xs = f.x
    # rows = observations: move B (and T) last, flatten S and C into features
    feat_axes = [i for i, c in enumerate(f.fmt) if c in "SC"]
    obs_axes = [i for i, c in enumerate(f.fmt) if c in "BTU"]
    nfeat = f.size("S") * f.size("C")
    if w.ndim != 2 or w.shape[1] != nfeat:
        raise ValueError(
            f"{where}: weights must have shape [out, in] with in = {nfeat} (the input's "
            f"S x C size), but weights have shape {w.shape}"
        )
    out = w.shape[0]
    if b.size != out:
        raise ValueError(f"{where}: bias must have {out} entries (one per output), got {b.shape}")
    # MATLAB flattens S,C in column-major order: feature index runs fastest over the first axis
    perm = tuple(obs_axes) + tuple(reversed(feat_axes))
    obs_shape = tuple(xs.shape[i] for i in obs_axes)
    rows = reshape(transpose(_strip(xs), perm), (-1, nfeat))
    y = _prims.linear(rows, _strip(w), reshape(_strip(b), (out,)))
    y = transpose(reshape(y, obs_shape + (out,)), (len(obs_shape),) + tuple(range(len(obs_shape))))
    labels = "C" + "".join(f.fmt[i] for i in obs_axes)
    return f.back(y, labels)


# ------------------------------------------------------------------ convolution


def _conv_args(f, w, stride, padding, dilation, where):
    stride = _pair(stride, "stride", where)
    dilation = _pair(dilation, "dilation", where)
    h, wd = f.x.shape[0], f.x.shape[1]
    pad = _padding(padding, where, w.shape[:2], dilation, stride, (h, wd))
    return stride, pad, dilation


def _spatial_input(x, data_format, where):
    f = _Fmt(x, data_format, where, "SSCB")
    if f.fmt.count("S") != 2 or "C" not in f.fmt:
        raise ValueError(
            f"{where}: expected 2-D image data with format 'SSCB' (or 'SSC'), got {f.fmt!r}"
        )
    if f.fmt not in ("SSCB", "SSC"):
        raise ValueError(f"{where}: expected format 'SSCB' or 'SSC', got {f.fmt!r}")
    return f


def _to_nhwc(xs, fmt):
    x = _strip(xs)
    if fmt == "SSC":
        x = reshape(x, x.shape + (1,))
    return transpose(x, (3, 0, 1, 2))


def _from_nhwc(y, fmt):
    y = transpose(y, (1, 2, 3, 0))
    if fmt == "SSC":
        y = reshape(y, y.shape[:3])
    return y


def dlconv(x, weights, bias, stride=1, padding=0, dilation=1, *, groups=1, data_format=None):
    """2-D convolution with MATLAB weights ``[h, w, in_channels/groups, filters]``.

    ``padding`` is an int, a pair (rows, cols), a 4-tuple (top, bottom, left, right)
    or ``"same"``. Input ``'SSCB'`` (stored ``(H, W, C, N)``); output ``'SSCB'``.
    """
    return _conv(x, weights, bias, stride, padding, dilation, groups, data_format, False)


def _conv(x, weights, bias, stride, padding, dilation, groups, data_format, relu_):
    where = "dlconv"
    f = _spatial_input(x, data_format, where)
    w = _dl(weights)
    if w.ndim == 3:
        w = reshape(_strip(w), w.shape + (1,))
    if w.ndim != 4:
        raise ValueError(
            f"{where}: weights must be 4-D [h, w, in_channels, filters], got {w.shape}"
        )
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"{where}: groups must be >= 1, got {groups}")
    c = f.size("C")
    if w.shape[2] * groups != c:
        raise ValueError(
            f"{where}: weights expect {w.shape[2] * groups} input channels (dimension 3 of weights "
            f"is {w.shape[2]} x {groups} groups) but the input has {c} channels"
        )
    if w.shape[3] % groups:
        raise ValueError(f"{where}: {w.shape[3]} filters do not split into {groups} groups")
    stride, pad, dilation = _conv_args(f, w, stride, padding, dilation, where)
    h, wd = f.x.shape[0], f.x.shape[1]
    ho, wo = _prims._geometry((1, h, wd, c), w.shape, stride, pad, dilation)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{where}: the {w.shape[0]}x{w.shape[1]} filter (dilation {dilation}) is larger than "
            f"the padded {h}x{wd} input (padding {pad})"
        )
    b = _dl(bias) if bias is not None else make(_xp().zeros(w.shape[3], w.dtype))
    if b.size == 1 and w.shape[3] != 1:
        b = b * make(_xp().ones(w.shape[3], b.dtype))
    if b.size != w.shape[3]:
        raise ValueError(f"{where}: bias must have {w.shape[3]} entries, got shape {b.shape}")
    y = _prims.conv2d(
        _to_nhwc(f.x, f.fmt),
        _strip(w),
        reshape(_strip(b), (w.shape[3],)),
        stride=stride,
        padding=pad,
        dilation=dilation,
        groups=groups,
        relu=relu_,
    )
    return f.back(_from_nhwc(y, f.fmt), f.fmt)


def dltranspconv(x, weights, bias, stride=1, cropping=0, *, data_format=None):
    """Transposed 2-D convolution, weights ``[h, w, filters, in_channels]`` (MATLAB);
    output ``'SSCB'`` of size ``(H - 1) * stride + h - crop``."""
    where = "dltranspconv"
    f = _spatial_input(x, data_format, where)
    w = _dl(weights)
    if w.ndim != 4:
        raise ValueError(
            f"{where}: weights must be 4-D [h, w, filters, in_channels], got {w.shape}"
        )
    c = f.size("C")
    if w.shape[3] != c:
        raise ValueError(
            f"{where}: weights dimension 4 (in_channels) is {w.shape[3]} but the input has {c} channels"
        )
    stride = _pair(stride, "stride", where)
    crop = _padding(cropping, where)
    n = f.x.shape[3] if f.fmt == "SSCB" else 1
    h, wd = f.x.shape[0], f.x.shape[1]
    out_h = (h - 1) * stride[0] + w.shape[0] - crop[0] - crop[1]
    out_w = (wd - 1) * stride[1] + w.shape[1] - crop[2] - crop[3]
    if out_h < 1 or out_w < 1:
        raise ValueError(f"{where}: cropping {crop} removes the whole output")
    # transposed conv = backward-data of a conv whose input has the output's size
    y = _prims.conv_bwd_data(
        _to_nhwc(f.x, f.fmt),
        _strip(w),
        (n, out_h, out_w, w.shape[2]),
        stride=stride,
        padding=crop,
        dilation=(1, 1),
        groups=1,
    )
    if bias is not None:
        y = y + reshape(_strip(_dl(bias)), (w.shape[2],))
    return f.back(_from_nhwc(y, f.fmt), f.fmt)


# ------------------------------------------------------------------ pooling


def _pool_setup(x, pool_size, stride, padding, data_format, where):
    f = _spatial_input(x, data_format, where)
    pool = _pair(pool_size, "pool_size", where)
    stride = _pair(stride, "stride", where)
    h, wd = f.x.shape[0], f.x.shape[1]
    pad = _padding(padding, where, pool, (1, 1), stride, (h, wd))
    ho = (h + pad[0] + pad[1] - pool[0]) // stride[0] + 1
    wo = (wd + pad[2] + pad[3] - pool[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{where}: the {pool[0]}x{pool[1]} pool is larger than the padded {h}x{wd} input "
            f"(padding {pad})"
        )
    return f, pool, stride, pad, ho, wo


def maxpool(x, pool_size, stride=1, padding=0, *, data_format=None):
    """Max pooling over the two spatial dimensions (input ``'SSCB'``).

    The gradient goes to the first maximum of each window (MATLAB's rule)."""
    where = "maxpool"
    f, pool, stride, pad, ho, wo = _pool_setup(x, pool_size, stride, padding, data_format, where)
    raw = f.x._data
    if stride == pool and not any(pad) and raw.dtype.kind != "c":
        idx = _maxpool_index_tiled(raw, pool, ho, wo)
    else:
        idx = _maxpool_index(raw, pool, stride, pad, ho, wo)
    unique = stride[0] >= pool[0] and stride[1] >= pool[1]
    y = _prims.gather_flat(_strip(f.x), idx, unique)
    return f.back(y, f.fmt)


def _maxpool_index(raw, pool, stride, pad, ho, wo):
    """Flat index into ``raw`` (``(H, W, ...)``) of the first maximum of each window."""
    xp = _xp()
    h, wd = raw.shape[:2]
    rest = raw.shape[2:]
    # flat indices of each window element into raw (padding gets -1)
    ii = np.arange(ho)[:, None] * stride[0] + np.arange(pool[0])[None, :] - pad[0]  # (ho, ph)
    jj = np.arange(wo)[:, None] * stride[1] + np.arange(pool[1])[None, :] - pad[2]  # (wo, pw)
    valid = (ii[:, None, :, None] >= 0) & (ii[:, None, :, None] < h)
    valid = valid & (jj[None, :, None, :] >= 0) & (jj[None, :, None, :] < wd)
    ic = np.clip(ii, 0, h - 1)
    jc = np.clip(jj, 0, wd - 1)
    inner = int(np.prod(rest, dtype=np.int64))
    pos = ic[:, None, :, None] * wd + jc[None, :, None, :]  # (ho, wo, ph, pw) spatial index
    pos = pos.reshape(ho, wo, -1)
    valid = valid.reshape(ho, wo, -1)
    flat = raw.reshape(h * wd, inner)
    vals = flat[xp.asarray(pos)]  # (ho, wo, k, inner)
    if not valid.all():
        vals = xp.where(xp.asarray(valid)[..., None], vals, -xp.inf)
    arg = vals.argmax(axis=2)  # (ho, wo, inner)
    best = xp.take_along_axis(xp.asarray(pos)[..., None], arg[:, :, None, :], axis=2)[:, :, 0, :]
    idx = best * inner + xp.arange(inner)[None, None, :]
    return idx.reshape((ho, wo) + rest)


def _maxpool_index_tiled(raw, pool, ho, wo):
    """``_maxpool_index`` for non-overlapping windows without padding (stride == pool).

    why: the windows are a reshaped view of ``raw``, so no gather and no argmax over
    a short axis: one copy, one max reduction, then one comparison pass per window
    element finds the first maximum in row-major window order (a NaN counts as the
    maximum, as in argmax)."""
    xp = _xp()
    ph, pw = pool
    wd = raw.shape[1]
    rest = raw.shape[2:]
    inner = int(np.prod(rest, dtype=np.int64))
    ones = (1,) * len(rest)
    win = raw[: ho * ph, : wo * pw].reshape((ho, ph, wo, pw) + rest)  # a view: axes only split
    # one copy with the window offset first: every later pass runs on contiguous arrays
    nk = ph * pw
    parts = xp.ascontiguousarray(win.transpose((1, 3, 0, 2) + tuple(range(4, win.ndim))))
    parts = parts.reshape((nk, ho, wo) + rest)
    top = parts.max(axis=0)  # NaN propagates, as in argmax
    nan_top = xp.isnan(top) if top.dtype.kind == "f" else None
    if nan_top is not None and not nan_top.any():
        nan_top = None
    # flat offset (into raw) of the first window element that holds the maximum, by a
    # backward scan without branches: off -= hit * (off - offset of k)
    k_off = [(k // pw * wd + k % pw) * inner for k in range(nk)]
    off = xp.full(top.shape, k_off[-1], dtype=np.int64)
    tmp = xp.empty_like(off)
    for k in range(nk - 2, -1, -1):
        hit = parts[k] == top
        if nan_top is not None:
            hit |= nan_top & xp.isnan(parts[k])
        xp.subtract(off, k_off[k], out=tmp)
        tmp *= hit
        off -= tmp
    rows = xp.arange(ho).reshape((ho, 1) + ones) * (ph * wd)
    cols = xp.arange(wo).reshape((1, wo) + ones) * pw
    off += (rows + cols) * inner + xp.arange(inner).reshape(rest)
    return off


def _pad_spatial(x, pad):
    """Zero-pad the first two axes of ``x`` (differentiable)."""
    xp = _xp()
    t, b, l, r = pad
    if t or b:
        parts = [make(xp.zeros((t,) + x.shape[1:], x.dtype))] if t else []
        parts.append(x)
        if b:
            parts.append(make(xp.zeros((b,) + x.shape[1:], x.dtype)))
        x = concatenate(parts, axis=0)
    if l or r:
        parts = [make(xp.zeros((x.shape[0], l) + x.shape[2:], x.dtype))] if l else []
        parts.append(x)
        if r:
            parts.append(make(xp.zeros((x.shape[0], r) + x.shape[2:], x.dtype)))
        x = concatenate(parts, axis=1)
    return x


def avgpool(x, pool_size, stride=1, padding=0, *, data_format=None):
    """Average pooling over the two spatial dimensions (padding counts as zeros)."""
    where = "avgpool"
    f, pool, stride, pad, ho, wo = _pool_setup(x, pool_size, stride, padding, data_format, where)
    xs = _pad_spatial(_strip(f.x), pad)
    total = None
    for i in range(pool[0]):
        for j in range(pool[1]):
            part = xs[
                i : i + stride[0] * (ho - 1) + 1 : stride[0],
                j : j + stride[1] * (wo - 1) + 1 : stride[1],
            ]
            total = part if total is None else total + part
    return f.back(total * (1.0 / (pool[0] * pool[1])), f.fmt)


# ------------------------------------------------------------------ activations


def leakyrelu(x, scale=0.01):
    """``x`` where positive, ``scale * x`` elsewhere (format kept)."""
    x = _dl(x)
    return where(x > 0, x, x * scale)


def gelu(x, approximation="none"):
    """Gaussian error linear unit; ``approximation="tanh"`` uses the tanh formula.
    The exact form uses ``erf`` through its relation to the normal CDF."""
    x = _dl(x)
    if approximation == "tanh":
        return 0.5 * x * (1 + tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1 + _erf(x * (1 / math.sqrt(2))))


def _erf(z):
    """erf with a differentiable composite (Abramowitz-Stegun 7.1.26 refined by one
    Newton-free series is not exact; we use erf(z) = sign(z) * (1 - exp(-z^2) * poly))."""
    from ..ops.elementwise import sign  # noqa: PLC0415

    # why: no erf primitive exists; a W. J. Cody style rational fit to 1e-7 is enough for
    # gelu, and its derivative matches exp(-z^2) * 2/sqrt(pi) closely
    a = gabs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = (
        -a * a
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t
                    * (
                        -0.18628806
                        + t
                        * (
                            0.27886807
                            + t
                            * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))
                        )
                    )
                )
            )
        )
    )
    return sign(z) * (1 - t * exp(poly))


def softmax(x, *, data_format=None):
    """Softmax over the channel dimension (numerically stable)."""
    f = _Fmt(x, data_format, "softmax", "CB")
    f.require("C", "softmax", "CB")
    ax = f.axes("C")[0]
    xs = _strip(f.x)
    shift = make(_xp().max(xs._data, axis=ax, keepdims=True))
    e = exp(xs - shift)
    return f.back(e / gsum(e, axis=ax, keepdims=True), f.fmt)


# ------------------------------------------------------------------ normalization


def _channel_shape(f):
    return tuple(s if c == "C" else 1 for s, c in zip(f.x.shape, f.fmt))


def batchnorm(
    x,
    offset,
    scale_factor,
    running_mean=None,
    running_var=None,
    *,
    epsilon=1e-5,
    mean_decay=0.1,
    variance_decay=0.1,
    training=None,
    data_format=None,
):
    """Batch normalization over every dimension but ``C``.

    With ``running_mean``/``running_var`` given: in training mode (the default when
    recording, see ``gg.autograd.is_training``; or ``training=True``) returns
    ``(y, new_mean, new_var)`` with MATLAB's update ``(1 - decay) * old + decay * batch``;
    in inference mode normalizes with the running statistics and returns ``y``.
    Without them, normalizes with batch statistics and returns ``y``."""
    where = "batchnorm"
    f = _Fmt(x, data_format, where, "SSCB")
    f.require("C", where, "SSCB")
    xs = _strip(f.x)
    cshape = _channel_shape(f)
    axes = tuple(i for i, c in enumerate(f.fmt) if c != "C")
    off = reshape(_strip(_dl(offset)), cshape)
    sc = reshape(_strip(_dl(scale_factor)), cshape)
    if training is None:
        training = tape.FRAME.get().training or running_mean is None
    if not training:
        if running_mean is None:
            raise ValueError(f"{where}: inference mode needs running_mean and running_var")
        mu = reshape(_strip(_dl(running_mean)), cshape)
        var = reshape(_strip(_dl(running_var)), cshape)
        y = (xs - mu) / sqrt(var + epsilon) * sc + off
        return f.back(y, f.fmt)
    mu = mean(xs, axis=axes, keepdims=True)
    centered = xs - mu
    var = mean(centered * centered, axis=axes, keepdims=True)
    y = centered / sqrt(var + epsilon) * sc + off
    y = f.back(y, f.fmt)
    if running_mean is None:
        return y
    m = 1
    for a in axes:
        m *= xs.shape[a]
    rm = _dl(running_mean)
    rv = _dl(running_var)
    # MATLAB stores the unbiased variance in the running statistics
    unbiased = var._data * (m / max(m - 1, 1))
    new_mean = make((1 - mean_decay) * rm._data + mean_decay * mu._data.reshape(rm.shape), rm._fmt)
    new_var = make(
        (1 - variance_decay) * rv._data + variance_decay * unbiased.reshape(rv.shape), rv._fmt
    )
    return y, new_mean, new_var


def layernorm(x, offset, scale_factor, *, epsilon=1e-5, data_format=None):
    """Layer normalization over every dimension but ``B`` and ``T`` (MATLAB's default
    for ``'CB'``/``'SSCB'``: the S and C dimensions); offset/scale are per channel."""
    where = "layernorm"
    f = _Fmt(x, data_format, where, "CB")
    f.require("C", where, "CB")
    xs = _strip(f.x)
    axes = tuple(i for i, c in enumerate(f.fmt) if c in "SCU")
    mu = mean(xs, axis=axes, keepdims=True)
    centered = xs - mu
    var = mean(centered * centered, axis=axes, keepdims=True)
    cshape = _channel_shape(f)
    off = reshape(_strip(_dl(offset)), cshape)
    sc = reshape(_strip(_dl(scale_factor)), cshape)
    return f.back(centered / sqrt(var + epsilon) * sc + off, f.fmt)


# ------------------------------------------------------------------ recurrent


def _sequence_input(x, data_format, where):
    f = _Fmt(x, data_format, where, "CBT")
    f.require("C", where, "CBT")
    if any(c not in "CBT" for c in f.fmt):
        raise ValueError(f"{where}: expected format 'CBT', 'CB' or 'CT', got {f.fmt!r}")
    xs = _strip(f.x)
    # to (T, N, C)
    c = xs.shape[0]
    n = xs.shape[f.fmt.index("B")] if "B" in f.fmt else 1
    t = xs.shape[f.fmt.index("T")] if "T" in f.fmt else 1
    full = reshape(xs, (c, n, t))
    return f, transpose(full, (2, 1, 0)), (t, n, c)


def _state(s, n, hid, name, where, dtype):
    if s is None:
        return make(_xp().zeros((n, hid), dtype))
    s = _strip(_dl(s))
    if s.size == hid and n != 1:
        return reshape(s, (1, hid)) * make(_xp().ones((n, 1), dtype))
    if s.size != n * hid:
        raise ValueError(
            f"{where}: {name} must have {hid} hidden units x {n} observations, got shape {s.shape}"
        )
    # MATLAB layout (H, N) -> rows are observations
    return transpose(reshape(s, (hid, n)), (1, 0))


def _seq_output(f, ys, t, n, hid):
    """ys (T, N, H) -> sorted layout with the input's B/T labels."""
    y = transpose(ys, (2, 1, 0))  # (H, N, T)
    labels = "C" + ("B" if "B" in f.fmt else "") + ("T" if "T" in f.fmt else "")
    shape = (hid,) + ((n,) if "B" in f.fmt else ()) + ((t,) if "T" in f.fmt else ())
    return f.back(reshape(y, shape), labels)


def _state_out(s, f):
    out = transpose(s, (1, 0))  # (H, N)
    fmt = "CB" if "B" in f.fmt else ""
    if not fmt:
        out = reshape(out, (out.shape[0],))
        return out if f.user is None else _strip(out)
    return _label(out, fmt) if f.user is None else _strip(out)


def _recurrent_hidden_size(w, r, channels, gates, where):
    """Hidden size from ``weights[gates*H, C]``, checking both weight shapes against it."""
    if w.ndim != 2 or w.shape[0] % gates:
        raise ValueError(
            f"{where}: weights must have shape [{gates}*hidden, channels], got {w.shape}"
        )
    hid = w.shape[0] // gates
    if w.shape[1] != channels:
        raise ValueError(
            f"{where}: weights dimension 2 is {w.shape[1]} but the input has {channels} channels"
        )
    if r.shape != (gates * hid, hid):
        raise ValueError(
            f"{where}: recurrent_weights must have shape {(gates * hid, hid)}, got {r.shape}"
        )
    return hid


def lstm(x, h0, c0, weights, recurrent_weights, bias, *, data_format=None):
    """Long short-term memory over a sequence (MATLAB gate order: input, forget,
    cell candidate, output). ``weights[4H, C]``, ``recurrent_weights[4H, H]``,
    ``bias[4H]``; returns ``(y, h, c)`` with ``y`` ``'CBT'`` and the final states ``'CB'``."""
    where = "lstm"
    f, xs, (t, n, c) = _sequence_input(x, data_format, where)
    w, r, b = _strip(_dl(weights)), _strip(_dl(recurrent_weights)), _strip(_dl(bias))
    hid = _recurrent_hidden_size(w, r, c, 4, where)
    if b.size != 4 * hid:
        raise ValueError(f"{where}: bias must have {4 * hid} entries, got {b.shape}")
    h = _state(h0, n, hid, "h0", where, w.dtype)
    cs = _state(c0, n, hid, "c0", where, w.dtype)
    from .recurrent import lstm_sequence  # noqa: PLC0415

    ys, h, cs = lstm_sequence(xs, h, cs, w, r, reshape(b, (4 * hid,)))
    return _seq_output(f, ys, t, n, hid), _state_out(h, f), _state_out(cs, f)


def gru(
    x,
    h0,
    weights,
    recurrent_weights,
    bias,
    *,
    reset_gate_mode="after-multiplication",
    data_format=None,
):
    """Gated recurrent unit (MATLAB gate order: reset, update, candidate). ``weights[3H, C]``,
    ``recurrent_weights[3H, H]``, ``bias[3H]`` (or ``[6H]`` for
    ``reset_gate_mode="recurrent-bias-after-multiplication"``); returns ``(y, h)``."""
    where = "gru"
    f, xs, (t, n, c) = _sequence_input(x, data_format, where)
    w, r, b = _strip(_dl(weights)), _strip(_dl(recurrent_weights)), _strip(_dl(bias))
    hid = _recurrent_hidden_size(w, r, c, 3, where)
    b = reshape(b, (-1,))
    rbias = None
    if reset_gate_mode == "recurrent-bias-after-multiplication":
        if b.size != 6 * hid:
            raise ValueError(
                f"{where}: bias must have {6 * hid} entries in this mode, got {b.shape}"
            )
        rbias = b[3 * hid :]
        b = b[: 3 * hid]
    elif b.size != 3 * hid:
        raise ValueError(f"{where}: bias must have {3 * hid} entries, got {b.shape}")
    h = _state(h0, n, hid, "h0", where, w.dtype)
    # input projection of all steps in one GEMM
    proj = reshape(_prims.linear(reshape(xs, (t * n, c)), w, b), (t, n, 3 * hid))
    ys = []
    for step in range(t):
        p = proj[step]
        hr = _prims.linear(h, r, rbias) if rbias is not None else _mm_t(h, r)
        reset = sigmoid(p[:, :hid] + hr[:, :hid])
        update = sigmoid(p[:, hid : 2 * hid] + hr[:, hid : 2 * hid])
        if reset_gate_mode == "before-multiplication":
            cand = tanh(p[:, 2 * hid :] + _mm_t(reset * h, r[2 * hid :]))
        else:
            cand = tanh(p[:, 2 * hid :] + reset * hr[:, 2 * hid :])
        h = (1 - update) * cand + update * h
        ys.append(h)
    return _seq_output(f, stack(ys, axis=0), t, n, hid), _state_out(h, f)


def _mm_t(a, b):
    from ..ops.heavy import matmul_t  # noqa: PLC0415

    return matmul_t(a, b, False, True)


# ------------------------------------------------------------------ embed / dropout


def embed(x, weights, *, data_format=None):
    """Look up embedding vectors: ``x`` holds 0-based indices (format with a
    singleton ``C``), ``weights[dim, vocabulary]``; output has ``C`` of size ``dim``."""
    where = "embed"
    w = _strip(_dl(weights))
    if isinstance(x, dlarray) and (x._fmt or data_format is not None):
        f = _Fmt(x, data_format, where, "CBT")
        raw = f.x._data
        fmt = f.fmt
    else:
        f = None
        raw = x._data if isinstance(x, dlarray) else np.asarray(x)
        fmt = ""
    idx = _xp().asarray(raw).astype(np.int64)
    if raw.size and (
        (np.asarray(raw) != np.asarray(idx)).any() or idx.min() < 0 or idx.max() >= w.shape[1]
    ):
        raise ValueError(
            f"{where}: indices must be integers in [0, {w.shape[1]}) (0-based), got range "
            f"[{float(raw.min())}, {float(raw.max())}]"
        )
    if f is None:
        return transpose(w, (1, 0))[idx]
    ci = fmt.index("C")
    if f.x.shape[ci] != 1:
        raise ValueError(f"{where}: the C dimension of x must have size 1, got {f.x.shape[ci]}")
    idx = idx.reshape(tuple(s for i, s in enumerate(f.x.shape) if i != ci))
    rows = transpose(w, (1, 0))[idx]  # (..., dim)
    out = transpose(rows, (rows.ndim - 1,) + tuple(range(rows.ndim - 1)))
    rest = "".join(c for i, c in enumerate(fmt) if i != ci)
    # put C in sorted position
    labels = "C" + rest
    sorted_fmt, perm = check_format(labels, out.ndim, where)
    if perm is not None:
        out = transpose(out, perm)
    return f.back(out, sorted_fmt)


def dropout(x, rate=0.5):
    """In training mode (``gg.autograd.is_training()``) zero each element with probability
    ``rate`` and scale kept ones by ``1 / (1 - rate)``; identity otherwise."""
    x = _dl(x)
    if not 0 <= rate < 1:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    if not tape.FRAME.get().training or rate == 0:
        return x
    keep = _random.raw_uniform(x.shape, x.dtype if x.dtype.kind == "f" else np.float64) >= rate
    mask = make((keep / (1 - rate)).astype(x.dtype, copy=False))
    return x * mask


# ------------------------------------------------------------------ losses


def _loss_setup(y, t, data_format, where):
    f = _Fmt(y, data_format, where, "CB")
    tt = _dl(t)
    if tt._fmt:
        tt = _strip(dlarray(tt)) if tt._fmt == f.fmt else None
        if tt is None:
            raise ValueError(f"{where}: targets format {_dl(t)._fmt!r} differs from {f.fmt!r}")
    elif f.user is not None:
        tt = _strip(dlarray(tt, f.user))
    if tt.shape != f.x.shape:
        raise ValueError(
            f"{where}: targets must have the predictions' shape {f.x.shape}, got {tt.shape}"
        )
    return f, _strip(f.x), tt


def _observations(f, normalization):
    if normalization == "batch-size":
        return max(f.size("B"), 1) if "B" in f.fmt else 1
    if normalization == "all-elements":
        return f.x.size
    if normalization == "none":
        return 1
    raise ValueError(
        f"normalization must be 'batch-size', 'all-elements' or 'none', got {normalization!r}"
    )


def crossentropy(y, targets, *, normalization="batch-size", data_format=None):
    """Cross-entropy of probabilities ``y`` against ``targets``: ``-sum(T .* log(Y))``
    over channels (and time), averaged over observations (MATLAB's ``crossentropy``)."""
    f, ys, ts = _loss_setup(y, targets, data_format, "crossentropy")
    f.require("C", "crossentropy", "CB")
    tiny = np.finfo(ys.dtype).tiny if ys.dtype.kind == "f" else 1e-300
    total = -gsum(ts * log(ys + tiny))
    return total / _observations(f, normalization)


def mse(y, targets, *, data_format=None):
    """Half mean squared error: ``sum((Y - T).^2) / 2 / N`` with ``N`` observations."""
    f, ys, ts = _loss_setup(y, targets, data_format, "mse")
    d = ys - ts
    return gsum(d * d) / (2 * _observations(f, "batch-size"))


def l1loss(y, targets, *, normalization="batch-size", data_format=None):
    """``sum(|Y - T|) / N`` (MATLAB ``l1loss``)."""
    f, ys, ts = _loss_setup(y, targets, data_format, "l1loss")
    return gsum(gabs(ys - ts)) / _observations(f, normalization)


def l2loss(y, targets, *, normalization="batch-size", data_format=None):
    """``sum((Y - T).^2) / N`` (MATLAB ``l2loss``)."""
    f, ys, ts = _loss_setup(y, targets, data_format, "l2loss")
    d = ys - ts
    return gsum(d * d) / _observations(f, normalization)


def huber(y, targets, *, transition_point=1.0, normalization="batch-size", data_format=None):
    """Huber loss: ``0.5 r^2`` for ``|r| <= delta``, ``delta (|r| - delta / 2)`` beyond,
    summed and divided by the number of observations."""
    f, ys, ts = _loss_setup(y, targets, data_format, "huber")
    r = gabs(ys - ts)
    dlt = float(transition_point)
    per = where(r <= dlt, 0.5 * r * r, dlt * (r - 0.5 * dlt))
    return gsum(per) / _observations(f, normalization)


def onehotencode(labels, feature_dim, num_classes=None, *, classes=None, fmt=None):
    """One-hot encode integer class labels (0-based) along ``feature_dim`` (0-based
    position of the new axis). ``classes`` gives the class values explicitly."""
    raw = labels._data if isinstance(labels, dlarray) else np.asarray(labels)
    raw = np.asarray(raw) if _xp() is np else raw
    if classes is not None:
        classes = list(classes)
        lookup = {c: i for i, c in enumerate(classes)}
        try:
            codes = np.vectorize(lambda v: lookup[v], otypes=[np.int64])(np.asarray(raw))
        except KeyError as exc:
            raise ValueError(f"onehotencode: label {exc.args[0]!r} is not in classes") from None
        k = len(classes)
    else:
        codes = np.asarray(raw).astype(np.int64)
        if (np.asarray(raw) != codes).any():
            raise ValueError("onehotencode: labels must be integers (0-based class indices)")
        k = int(codes.max()) + 1 if num_classes is None else int(num_classes)
        if codes.size and (codes.min() < 0 or codes.max() >= k):
            raise ValueError(
                f"onehotencode: labels must be in [0, {k}), got range [{codes.min()}, {codes.max()}]"
            )
    if feature_dim < raw.ndim and raw.shape[feature_dim] == 1:
        codes = np.squeeze(codes, axis=feature_dim)
    out = np.moveaxis(np.eye(k)[codes], -1, feature_dim)
    return dlarray(_xp().asarray(out), fmt)


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits[batch, classes]`` against integer ``labels[batch]``
    (0-based) or one-hot/probability ``labels[batch, classes]`` (Swift's
    ``softmaxCrossEntropy``)."""
    z = _dl(logits)
    if z.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits must be [batch, classes], got {z.shape}")
    lse = logsumexp(z, axis=1, keepdims=True)
    logp = z - lse
    lab = labels._data if isinstance(labels, dlarray) else np.asarray(labels)
    if lab.ndim == 2 and lab.shape == z.shape:
        return -gsum(logp * make(_xp().asarray(lab, dtype=z.dtype))) / z.shape[0]
    lab = np.asarray(lab)
    if lab.shape != (z.shape[0],):
        raise ValueError(
            f"softmax_cross_entropy: labels must have shape ({z.shape[0]},) (one class index per "
            f"row) or {z.shape}, got {lab.shape}"
        )
    idx = lab.astype(np.int64)
    if (idx != lab).any() or idx.min() < 0 or idx.max() >= z.shape[1]:
        raise ValueError(
            f"softmax_cross_entropy: labels must be integer class indices in [0, {z.shape[1]})"
        )
    picked = take_along_axis(logp, _xp().asarray(idx)[:, None], axis=1)
    return -gsum(picked) / z.shape[0]


__all__ = [
    "fullyconnect",
    "dlconv",
    "dltranspconv",
    "maxpool",
    "avgpool",
    "leakyrelu",
    "gelu",
    "softmax",
    "batchnorm",
    "layernorm",
    "lstm",
    "gru",
    "embed",
    "dropout",
    "crossentropy",
    "mse",
    "l1loss",
    "l2loss",
    "huber",
    "onehotencode",
    "relu",
]
