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

from .. import backend
from .. import phase as _phase
from .. import random as _random
from .._alloc import allocate
from .._checks import fraction, positive
from ..array import check_format, dlarray
from ..backend import to_host
from ..ops.core import _STATE, Primitive, host_call, make
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
    return x if type(x) is dlarray else dlarray(x, copy=False)


# ------------------------------------------------------------------ formats


class _Fmt:
    """Resolved format of an input: the dlarray in sorted (S,C,B,T,U) layout, its
    labels, and how to give the result back (formatted, or unformatted in the
    user's ``data_format`` order)."""

    def __init__(self, x, data_format, where, expected):
        x = _dl(x)
        if data_format is not None and not isinstance(data_format, str):
            raise ValueError(
                f"{where}: data_format must be a string of format labels such as "
                f"{expected!r}, got {data_format!r}"
            )
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
            try:
                self.x = dlarray(x, self.user, copy=False)
            except ValueError as exc:
                raise ValueError(f"{where}: data_format={data_format!r}: {exc}") from None
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


def _whole(v, name, where, whole, what):
    """``v`` as a Python int (an integral float is accepted, as MATLAB passes doubles)."""
    if isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{where}: {name} must be {what}, got {whole!r}")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    raise ValueError(f"{where}: {name} must be {what}, got {whole!r}")


def _ints(value, name, where, lengths, what):
    """A tuple of ints from one number (repeated) or a sequence of one of ``lengths``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        v = _whole(value, name, where, value, what)
        return (v,) * lengths[0]
    vals = list(np.asanyarray(value).reshape(-1)) if isinstance(value, np.ndarray) else list(value)
    if len(vals) not in lengths:
        raise ValueError(f"{where}: {name} must be {what}, got {value!r}")
    return tuple(_whole(v, name, where, value, what) for v in vals)


def _pair(value, name, where, allow_zero=False):
    """(rows, cols) from an int or a pair; each >= 1 (>= 0 with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if type(value) is int:  # why: the common spellings skip the general parse (hot path)
        out = (value, value)
    elif type(value) is tuple and len(value) == 2 and type(value[0]) is type(value[1]) is int:
        out = value
    else:
        out = _ints(value, name, where, (2,), f"an integer >= {low} or a pair of them")
    if min(out) < low:
        raise ValueError(f"{where}: {name} must be >= {low} (an integer or a pair), got {value!r}")
    return out


def _padding(
    padding, where, kernel=None, dilation=(1, 1), stride=(1, 1), in_hw=None, name="padding"
):
    """(top, bottom, left, right) from int, pair, 4-tuple or ``"same"``."""
    what = "an integer >= 0, a pair (rows, cols), a 4-tuple (top, bottom, left, right) or 'same'"
    if isinstance(padding, str):
        if padding.lower() != "same" or kernel is None:
            raise ValueError(f"{where}: {name} must be {what}, got {padding!r}")
        out = []
        for d in range(2):
            eff = dilation[d] * (kernel[d] - 1) + 1
            size_out = math.ceil(in_hw[d] / stride[d])
            total = max((size_out - 1) * stride[d] + eff - in_hw[d], 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    if type(padding) is int:
        vals = (padding,)
    elif type(padding) is tuple and all(type(v) is int for v in padding):
        vals = padding
        if len(vals) not in (1, 2, 4):
            raise ValueError(f"{where}: {name} must be {what}, got {padding!r}")
    else:
        vals = _ints(padding, name, where, (1, 2, 4), what)
    if len(vals) == 1:
        out = vals * 4
    elif len(vals) == 2:
        out = (vals[0], vals[0], vals[1], vals[1])
    else:
        out = vals
    if min(out) < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {padding!r}")
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
    xs = f.x
    # rows = observations: move B (and T) last, flatten S and C into features
    feat_axes = [i for i, c in enumerate(f.fmt) if c in "SC"]
    obs_axes = [i for i, c in enumerate(f.fmt) if c in "BTU"]
    nfeat = f.size("S") * f.size("C")
    if w.ndim != 2:
        raise ValueError(
            f"{where}: weights must be a matrix [out, in] with in = {nfeat} (the input's "
            f"S x C size), got shape {w.shape}"
        )
    if w.shape[1] != nfeat:
        raise ValueError(
            f"{where}: weights dimension 1 (in) is {w.shape[1]} but the input has {nfeat} "
            f"features (its S x C size); weights must have shape [out, {nfeat}], got {w.shape}"
        )
    out = w.shape[0]
    b = _dl(bias) if bias is not None else make(_xp().zeros(out, w.dtype))
    if b.size != out:
        raise ValueError(
            f"{where}: bias must have {out} entries (one per output, weights dimension 0), "
            f"got shape {b.shape}"
        )
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

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.ones((5, 5, 3, 2)), "SSCB")  # 5x5 images, 3 channels, 2 observations
    >>> w, b = gg.dlarray(np.ones((3, 3, 3, 4))), gg.dlarray(np.zeros(4))
    >>> gg.dlconv(x, w, b).shape, gg.dlconv(x, w, b, padding="same").shape
    ((3, 3, 4, 2), (5, 5, 4, 2))
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
            f"{where}: weights must be 4-D [h, w, in_channels, filters], got shape {w.shape}"
        )
    if min(w.shape) < 1:
        raise ValueError(f"{where}: weights must have no empty dimension, got shape {w.shape}")
    groups = _whole(groups, "groups", where, groups, "an integer >= 1")
    if groups < 1:
        raise ValueError(f"{where}: groups must be >= 1, got {groups}")
    c = f.size("C")
    if groups == 1 and w.shape[2] != c:
        raise ValueError(
            f"{where}: weights dimension 2 (in_channels) is {w.shape[2]} but the input has "
            f"{c} channels"
        )
    if w.shape[2] * groups != c:
        raise ValueError(
            f"{where}: weights dimension 2 (in_channels per group) is {w.shape[2]}, so "
            f"{groups} groups need {w.shape[2] * groups} input channels, but the input has "
            f"{c} channels"
        )
    if w.shape[3] % groups:
        raise ValueError(
            f"{where}: weights dimension 3 (filters) is {w.shape[3]}, which does not split "
            f"into {groups} groups"
        )
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
        raise ValueError(
            f"{where}: bias must have {w.shape[3]} entries (one per filter, weights dimension 3), "
            f"got shape {b.shape}"
        )
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
    output ``'SSCB'`` of size ``(H - 1) * stride + h - crop``.

    ``cropping`` is an int, a pair (rows, cols), a 4-tuple (top, bottom, left, right)
    or ``"same"`` (output size ``H * stride``; needs filter size >= stride)."""
    where = "dltranspconv"
    f = _spatial_input(x, data_format, where)
    w = _dl(weights)
    if w.ndim != 4:
        raise ValueError(
            f"{where}: weights must be 4-D [h, w, filters, in_channels], got shape {w.shape}"
        )
    if min(w.shape) < 1:
        raise ValueError(f"{where}: weights must have no empty dimension, got shape {w.shape}")
    c = f.size("C")
    if w.shape[3] != c:
        raise ValueError(
            f"{where}: weights dimension 3 (in_channels) is {w.shape[3]} but the input has "
            f"{c} channels"
        )
    stride = _pair(stride, "stride", where)
    h, wd = f.x.shape[0], f.x.shape[1]
    if isinstance(cropping, str) and cropping.lower() == "same":
        crop = []
        for d in range(2):
            total = w.shape[d] - stride[d]
            if total < 0:
                raise ValueError(
                    f"{where}: cropping='same' needs a filter at least as large as the stride, "
                    f"but the filter is {w.shape[0]}x{w.shape[1]} and the stride {stride}"
                )
            crop += [total // 2, total - total // 2]
        crop = tuple(crop)
    else:
        crop = _padding(cropping, where, name="cropping")
    n = f.x.shape[3] if f.fmt == "SSCB" else 1
    out_h = (h - 1) * stride[0] + w.shape[0] - crop[0] - crop[1]
    out_w = (wd - 1) * stride[1] + w.shape[1] - crop[2] - crop[3]
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{where}: cropping {crop} removes the whole {(h - 1) * stride[0] + w.shape[0]}x"
            f"{(wd - 1) * stride[1] + w.shape[1]} output"
        )
    filters = w.shape[2]
    if bias is not None:
        b = _dl(bias)
        if b.size not in (1, filters):
            raise ValueError(
                f"{where}: bias must have {filters} entries (one per filter, weights "
                f"dimension 2), got shape {b.shape}"
            )
    # transposed conv = backward-data of a conv whose input has the output's size
    y = _prims.conv_bwd_data(
        _to_nhwc(f.x, f.fmt),
        _strip(w),
        (n, out_h, out_w, filters),
        stride=stride,
        padding=crop,
        dilation=(1, 1),
        groups=1,
    )
    if bias is not None:
        y = y + reshape(_strip(b), (b.size,))
    return f.back(_from_nhwc(y, f.fmt), f.fmt)


# ------------------------------------------------------------------ pooling


def _pool_setup(x, pool_size, stride, padding, data_format, where):
    f = _spatial_input(x, data_format, where)
    pool = _pair(pool_size, "pool_size", where)
    stride = _pair(stride, "stride", where)
    h, wd = f.x.shape[0], f.x.shape[1]
    pad = _padding(padding, where, pool, (1, 1), stride, (h, wd))
    if max(pad[0], pad[1]) >= pool[0] or max(pad[2], pad[3]) >= pool[1]:
        # why: a window made only of padding has no element to take (MATLAB and
        # PyTorch refuse it too)
        raise ValueError(
            f"{where}: padding {pad} (top, bottom, left, right) must be smaller than the "
            f"{pool[0]}x{pool[1]} pool on every side"
        )
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

    The gradient goes to the first maximum of each window (MATLAB's rule).

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.arange(16.0).reshape(4, 4, 1, 1), "SSCB")
    >>> gg.maxpool(x, 2, stride=2).numpy()[:, :, 0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    where = "maxpool"
    f, pool, stride, pad, ho, wo = _pool_setup(x, pool_size, stride, padding, data_format, where)
    raw = f.x._data
    unique = stride[0] >= pool[0] and stride[1] >= pool[1]
    if stride == pool and not any(pad) and raw.dtype.kind != "c":
        if raw.ndim == 4 and not raw.flags.c_contiguous and _nhwc_contiguous(raw):
            # why: an 'SSCB' view of NHWC memory (a convolution's output): pooled in
            # memory order, so the gather reads the array in place (no copy), and the
            # backward's scatter and the relu mask before it run on contiguous arrays
            x = transpose(_strip(f.x), (3, 0, 1, 2))
            idx = _maxpool_index_tiled(x._data, pool, ho, wo, lead=1)
            y = transpose(_prims.gather_flat(x, idx, unique), (1, 2, 3, 0))
            return f.back(y, f.fmt)
        idx = _maxpool_index_tiled(raw, pool, ho, wo)
    else:
        idx = _maxpool_index(raw, pool, stride, pad, ho, wo)
    y = _prims.gather_flat(_strip(f.x), idx, unique)
    return f.back(y, f.fmt)


def _nhwc_contiguous(raw):
    """Whether an ``(H, W, C, N)`` array is a view of C-contiguous ``(N, H, W, C)`` memory."""
    return raw.transpose(3, 0, 1, 2).flags.c_contiguous


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
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
    vals = flat[xp.asanyarray(pos)]  # (ho, wo, k, inner)
    if not valid.all():
        vals = xp.where(xp.asanyarray(valid)[..., None], vals, -xp.inf)
    arg = vals.argmax(axis=2)  # (ho, wo, inner)
    best = xp.take_along_axis(xp.asanyarray(pos)[..., None], arg[:, :, None, :], axis=2)[:, :, 0, :]
    idx = best * inner + xp.arange(inner)[None, None, :]
    return idx.reshape((ho, wo) + rest)


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _maxpool_index_tiled(raw, pool, ho, wo, lead=0):
    """``_maxpool_index`` for non-overlapping windows without padding (stride == pool);
    ``lead``: axes of ``raw`` before the two spatial ones (the result keeps them).

    why: the windows are a reshaped view of ``raw``, so no gather and no argmax over
    a short axis: one copy, one max reduction, then one comparison pass per window
    element finds the first maximum in row-major window order (a NaN counts as the
    maximum, as in argmax)."""
    xp = _xp()
    ph, pw = pool
    heads = raw.shape[:lead]
    h, wd = raw.shape[lead : lead + 2]
    rest = raw.shape[lead + 2 :]
    inner = int(np.prod(rest, dtype=np.int64))
    crop = (slice(None),) * lead + (slice(0, ho * ph), slice(0, wo * pw))
    win = raw[crop].reshape(heads + (ho, ph, wo, pw) + rest)  # a view: axes only split
    # one copy with the window offset first: every later pass runs on contiguous arrays
    nk = ph * pw
    axes = (lead + 1, lead + 3) + tuple(range(lead)) + (lead, lead + 2)
    parts = xp.ascontiguousarray(win.transpose(axes + tuple(range(lead + 4, win.ndim))))
    parts = parts.reshape((nk,) + heads + (ho, wo) + rest)
    top = parts.max(axis=0)  # NaN propagates, as in argmax
    nan_top = xp.isnan(top) if top.dtype.kind == "f" else None
    # why: on a device, .any() is a host sync in every step; the NaN pass runs instead
    if nan_top is not None and xp is np and not nan_top.any():
        nan_top = None
    # offset (into the window's top-left element) of the first window element that
    # holds the maximum, by a backward scan without branches: off -= hit * (off - k's)
    k_off = [(k // pw * wd + k % pw) * inner for k in range(nk)]
    # why: on NumPy the scan runs on 4-byte integers (half the memory traffic of the
    # int64 result; the offsets within one window are small), and the window bases
    # are the same for every call of a shape: cached, added in the one widening pass
    small = xp is np and k_off[-1] < 2**31
    off = xp.full(top.shape, k_off[-1], dtype=np.int32 if small else np.int64)
    tmp = xp.empty_like(off)
    for k in range(nk - 2, -1, -1):
        hit = parts[k] == top
        if nan_top is not None:
            hit |= nan_top & xp.isnan(parts[k])
        xp.subtract(off, k_off[k], out=tmp)
        tmp *= hit
        off -= tmp
    key = (heads, h, wd, rest, ph, pw, ho, wo)
    base = _TILED_BASES.get(key) if xp is np else None
    if base is None:
        base = _tiled_window_bases(xp, *key)
        if xp is np and base.size <= _TILED_BASE_MAX:
            base.flags.writeable = False
            if len(_TILED_BASES) >= 32:
                _TILED_BASES.pop(next(iter(_TILED_BASES)))
            _TILED_BASES[key] = base
    return off + base  # int64 (an int32 scan widens here)


# (shape, pool, output size) -> window base offsets, on NumPy, for outputs up to
# _TILED_BASE_MAX elements (8 MB of int64; larger ones are rebuilt per call)
_TILED_BASES: dict = {}
_TILED_BASE_MAX = 1 << 20


def _tiled_window_bases(xp, heads, h, wd, rest, ph, pw, ho, wo):
    """Flat offset (into raw) of each non-overlapping window's top-left element, in
    the shape ``heads + (ho, wo) + rest`` of a pooled output (int64)."""
    ones = (1,) * len(rest)
    inner = int(np.prod(rest, dtype=np.int64))
    rows = xp.arange(ho).reshape((ho, 1) + ones) * (ph * wd)
    cols = xp.arange(wo).reshape((1, wo) + ones) * pw
    base = (rows + cols) * inner + xp.arange(inner).reshape(rest)
    if heads:  # each leading index starts a new (H, W, ...) block
        step = h * wd * inner
        base = base + (xp.arange(int(np.prod(heads, dtype=np.int64))) * step).reshape(
            heads + (1, 1) + ones
        )
    return base.astype(np.int64, copy=False)  # already the full output shape


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
    """Average pooling over the two spatial dimensions (padding counts as zeros).

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.arange(16.0).reshape(4, 4, 1, 1), "SSCB")
    >>> gg.avgpool(x, 2, stride=2).numpy()[:, :, 0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
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
    """``x`` where positive, ``scale * x`` elsewhere (format kept).

    >>> import gpugrad as gg
    >>> gg.leakyrelu(gg.dlarray([-1.0, 2.0]), 0.1).numpy()
    array([-0.1,  2. ])
    """
    x = _dl(x)
    real = isinstance(scale, (int, float, np.integer, np.floating)) and not isinstance(
        scale, (bool, np.bool_)
    )
    if not real and not (
        getattr(scale, "size", 0) == 1 and getattr(scale, "dtype", np.dtype("O")).kind in "iuf"
    ):
        raise ValueError(f"leakyrelu: scale must be a real number, got {scale!r}")
    if not real:
        scale = reshape(_strip(_dl(scale)), ())
    return where(x > 0, x, x * scale)


def gelu(x, approximation="none"):
    """Gaussian error linear unit; ``approximation="tanh"`` uses the tanh formula.
    The exact form uses ``erf`` through its relation to the normal CDF.

    >>> import gpugrad as gg
    >>> gg.gelu(gg.dlarray([0.0, 1.0])).numpy().round(4)
    array([0.    , 0.8413])
    """
    x = _dl(x)
    if approximation not in ("none", "tanh"):
        raise ValueError(f"gelu: approximation must be 'none' or 'tanh', got {approximation!r}")
    if approximation == "tanh":
        return 0.5 * x * (1 + tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return 0.5 * x * _ONE_PLUS_ERF(x * (1 / math.sqrt(2)))


def _one_plus_erf_raw(z):
    """``1 + erf(z)`` computed as ``erfc(-z)`` (no cancellation for negative z), exact
    to float64 precision: SciPy on the host, CuPy's on the GPU."""
    if backend.is_device_array(z):  # cuda and cuda-sim (the simulated cupyx)
        return backend.cupyx_module().scipy.special.erfc(-z)
    try:
        from scipy.special import erfc  # noqa: PLC0415
    except ImportError:  # pragma: no cover - scipy is a dependency
        erfc = np.frompyfunc(math.erfc, 1, 1)
        return np.asarray(erfc(-z), dtype=np.result_type(z, np.float64))
    return erfc(-z)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _erf_vjp(g, ans, z):
    return (g * (_TWO_OVER_SQRT_PI * exp(-(z * z))),)


# why: gelu's exact form needs erf to full precision (a rational fit was off by 1e-8
# in float64); its derivative 2/sqrt(pi) exp(-z^2) is composed, so it is smooth to
# any order. Named for gelu so it cannot collide with a general erf op.
_ONE_PLUS_ERF = Primitive("gelu_erf", _one_plus_erf_raw, _erf_vjp, save=(0,))


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _softmax_shift(raw, axis):
    return _xp().max(raw, axis=axis, keepdims=True)


def softmax(x, *, data_format=None):
    """Softmax over the channel dimension (numerically stable).

    >>> import gpugrad as gg
    >>> gg.softmax(gg.dlarray(np.array([[0.0, 0.0], [0.0, np.log(3)]]), "CB")).numpy()
    array([[0.5 , 0.25],
           [0.5 , 0.75]])
    """
    f = _Fmt(x, data_format, "softmax", "CB")
    f.require("C", "softmax", "CB")
    ax = f.axes("C")[0]
    xs = _strip(f.x)
    shift = make(_softmax_shift(xs._data, ax))
    e = exp(xs - shift)
    return f.back(e / gsum(e, axis=ax, keepdims=True), f.fmt)


# ------------------------------------------------------------------ normalization


def _channel_shape(f):
    return tuple(s if c == "C" else 1 for s, c in zip(f.x.shape, f.fmt))


def _per_channel(value, name, f, where):
    """A per-channel vector (``offset``, ``running_mean``, ...) shaped to broadcast
    over the sorted input."""
    v = _strip(_dl(value))
    channels = f.size("C")
    if v.size != channels:
        raise ValueError(
            f"{where}: {name} must have one entry per channel ({channels}), got shape {v.shape}"
        )
    return reshape(v, _channel_shape(f))


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

    With ``running_mean``/``running_var`` given: in training mode (``training=True``,
    or ``training=None`` and ``gg.autograd.is_training()``: the context's choice, else
    training under a gradient trace, as ``gg.nn.BatchNorm``) returns
    ``(y, new_mean, new_var)`` with MATLAB's update ``(1 - decay) * old + decay * batch``;
    in inference mode normalizes with the running statistics and returns ``y``.
    Without them, normalizes with batch statistics and returns ``y``.

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.array([[1.0, 3.0], [2.0, 6.0]]), "CB")  # 2 channels, 2 observations
    >>> gg.batchnorm(x, gg.dlarray(np.zeros(2)), gg.dlarray(np.ones(2))).numpy().round(4)
    array([[-1.,  1.],
           [-1.,  1.]])
    """
    where = "batchnorm"
    f = _Fmt(x, data_format, where, "SSCB")
    f.require("C", where, "SSCB")
    xs = _strip(f.x)
    axes = tuple(i for i, c in enumerate(f.fmt) if c != "C")
    off = _per_channel(offset, "offset", f, where)
    sc = _per_channel(scale_factor, "scale_factor", f, where)
    epsilon = positive(epsilon, "epsilon", where)
    mean_decay = fraction(mean_decay, "mean_decay", where, one=True)
    variance_decay = fraction(variance_decay, "variance_decay", where, one=True)
    if (running_mean is None) != (running_var is None):
        missing = "running_var" if running_var is None else "running_mean"
        raise ValueError(
            f"{where}: {missing} is missing; pass both running_mean and running_var, or neither"
        )
    if running_mean is not None:
        trained_mean = _per_channel(running_mean, "running_mean", f, where)
        trained_var = _per_channel(running_var, "running_var", f, where)
    if training is None:
        training = running_mean is None or _phase.is_training()
    if not training:
        if running_mean is None:
            raise ValueError(f"{where}: inference mode needs running_mean and running_var")
        y = (xs - trained_mean) / sqrt(trained_var + epsilon) * sc + off
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
    if m == 0:  # an empty batch has no statistics: leave the running ones (PyTorch)
        return y, rm, rv
    # MATLAB stores the unbiased variance in the running statistics
    new_mean, new_var = _running_statistics(
        rm._data, rv._data, mu._data, var._data, m, mean_decay, variance_decay
    )
    return y, make(new_mean, rm._fmt), make(new_var, rv._fmt)


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _running_statistics(rm, rv, mu, var, m, mean_decay, variance_decay):
    # MATLAB stores the unbiased variance in the running statistics
    unbiased = var * (m / max(m - 1, 1))
    new_mean = (1 - mean_decay) * rm + mean_decay * mu.reshape(rm.shape)
    new_var = (1 - variance_decay) * rv + variance_decay * unbiased.reshape(rv.shape)
    return new_mean, new_var


def layernorm(x, offset, scale_factor, *, epsilon=1e-5, data_format=None):
    """Layer normalization over every dimension but ``B`` and ``T`` (MATLAB's default
    for ``'CB'``/``'SSCB'``: the S and C dimensions); offset/scale are per channel.

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.array([[1.0, 3.0], [2.0, 6.0]]), "CB")
    >>> gg.layernorm(x, gg.dlarray(np.zeros(2)), gg.dlarray(np.ones(2))).numpy().round(4)
    array([[-1., -1.],
           [ 1.,  1.]])
    """
    where = "layernorm"
    f = _Fmt(x, data_format, where, "CB")
    f.require("C", where, "CB")
    off = _per_channel(offset, "offset", f, where)
    sc = _per_channel(scale_factor, "scale_factor", f, where)
    epsilon = positive(epsilon, "epsilon", where)
    xs = _strip(f.x)
    axes = tuple(i for i, c in enumerate(f.fmt) if c in "SCU")
    mu = mean(xs, axis=axes, keepdims=True)
    centered = xs - mu
    var = mean(centered * centered, axis=axes, keepdims=True)
    return f.back(centered / sqrt(var + epsilon) * sc + off, f.fmt)


def groupnorm(x, num_groups, offset, scale_factor, *, epsilon=1e-5, data_format=None):
    """Group normalization (MATLAB's ``groupnorm(X, numGroups, offset, scaleFactor)``):
    the channels are split into ``num_groups`` consecutive groups of equal size, and
    each group is normalized over its channels and the S (and U) dimensions, for each
    observation (B) and time step (T) independently, as ``layernorm`` does for all
    channels at once; ``offset``/``scale_factor`` are per channel.

    ``num_groups`` is an integer that divides the number of channels, or MATLAB's
    ``"all-channels"`` (one group: layer normalization) or ``"channel-wise"`` (one
    channel per group: instance normalization). Composed of gpugrad ops, so every
    derivative order is exact.

    >>> import gpugrad as gg
    >>> x = gg.dlarray(np.arange(8.0).reshape(4, 2), "CB")
    >>> y = gg.groupnorm(x, 2, np.zeros(4), np.ones(4))
    >>> np.round(y.numpy()[:, 0], 4)
    array([-1.,  1., -1.,  1.])
    """
    where = "groupnorm"
    f = _Fmt(x, data_format, where, "SSCB")
    f.require("C", where, "SSCB")
    channels = f.size("C")
    if isinstance(num_groups, str):
        choices = {"all-channels": 1, "channel-wise": channels}
        if num_groups not in choices:
            raise ValueError(
                f"{where}: num_groups must be a positive integer dividing the {channels} "
                f"channels, 'all-channels' or 'channel-wise', got {num_groups!r}"
            )
        groups = choices[num_groups]
    else:
        groups = _whole(num_groups, "num_groups", where, num_groups, "a positive integer")
        if groups < 1 or channels % groups:
            raise ValueError(
                f"{where}: num_groups must be a positive integer dividing the {channels} "
                f"channels, got {num_groups!r}"
            )
    off = _per_channel(offset, "offset", f, where)
    sc = _per_channel(scale_factor, "scale_factor", f, where)
    epsilon = positive(epsilon, "epsilon", where)
    xs = _strip(f.x)
    ci = f.fmt.index("C")
    # split C into (groups, channels per group); normalize over S, the group's channels, U
    split = xs.shape[:ci] + (groups, channels // groups) + xs.shape[ci + 1 :]
    grouped = reshape(xs, split)
    labels = f.fmt[:ci] + "GC" + f.fmt[ci + 1 :]
    axes = tuple(i for i, c in enumerate(labels) if c in "SCU")
    mu = mean(grouped, axis=axes, keepdims=True)
    centered = grouped - mu
    var = mean(centered * centered, axis=axes, keepdims=True)
    normalized = reshape(centered / sqrt(var + epsilon), xs.shape)
    return f.back(normalized * sc + off, f.fmt)


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
    if t == 0:  # as PyTorch: a recurrence over no time steps has no output
        raise ValueError(
            f"{where}: the input has no time steps (T = 0, shape {f.x.shape}); a "
            "recurrent layer needs a sequence of length >= 1"
        )
    return f, transpose(full, (2, 1, 0)), (t, n, c)


def _state(s, n, hid, name, where, dtype):
    if s is None:
        return make(_xp().zeros((n, hid), dtype))
    s = _strip(_dl(s))
    if s.shape in ((hid,), (hid, 1)) and n != 1:
        # one state shared by every observation
        return reshape(s, (1, hid)) * make(_xp().ones((n, 1), dtype))
    if s.shape not in ((hid, n),) + (((hid,),) if n == 1 else ()):
        raise ValueError(
            f"{where}: {name} must have shape [hidden, observations] = ({hid}, {n}) (or "
            f"({hid},) for one state shared by every observation), got shape {s.shape}"
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
    if w.ndim != 2 or w.shape[0] % gates or not w.shape[0]:
        raise ValueError(
            f"{where}: weights must have shape [{gates}*hidden, channels] = [{gates}*hidden, "
            f"{channels}], got shape {w.shape}"
        )
    hid = w.shape[0] // gates
    if w.shape[1] != channels:
        raise ValueError(
            f"{where}: weights dimension 1 (channels) is {w.shape[1]} but the input has "
            f"{channels} channels"
        )
    if r.shape != (gates * hid, hid):
        raise ValueError(
            f"{where}: recurrent_weights must have shape [{gates}*hidden, hidden] = "
            f"{(gates * hid, hid)} (hidden = {hid} from weights dimension 0), got shape {r.shape}"
        )
    return hid


def lstm(x, h0, c0, weights, recurrent_weights, bias, *, data_format=None):
    """Long short-term memory over a sequence (MATLAB gate order: input, forget,
    cell candidate, output). ``weights[4H, C]``, ``recurrent_weights[4H, H]``,
    ``bias[4H]``; returns ``(y, h, c)`` with ``y`` ``'CBT'`` and the final states ``'CB'``.

    >>> import gpugrad as gg
    >>> C, H, B, T = 3, 2, 1, 4  # features, hidden units, observations, time steps
    >>> x = gg.dlarray(np.zeros((C, B, T)), "CBT")
    >>> h0 = c0 = gg.dlarray(np.zeros((H, B)))
    >>> w, r = gg.dlarray(np.ones((4 * H, C))), gg.dlarray(np.ones((4 * H, H)))
    >>> y, h, c = gg.lstm(x, h0, c0, w, r, gg.dlarray(np.zeros(4 * H)))
    >>> y.shape, gg.dims(y), h.shape
    ((2, 1, 4), 'CBT', (2, 1))
    """
    where = "lstm"
    f, xs, (t, n, c) = _sequence_input(x, data_format, where)
    w, r, b = _strip(_dl(weights)), _strip(_dl(recurrent_weights)), _strip(_dl(bias))
    hid = _recurrent_hidden_size(w, r, c, 4, where)
    if b.size != 4 * hid:
        raise ValueError(
            f"{where}: bias must have 4*hidden = {4 * hid} entries, got shape {b.shape}"
        )
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
    modes = ("after-multiplication", "before-multiplication", "recurrent-bias-after-multiplication")
    if reset_gate_mode not in modes:
        raise ValueError(
            f"{where}: reset_gate_mode must be one of {', '.join(map(repr, modes))}, "
            f"got {reset_gate_mode!r}"
        )
    f, xs, (t, n, c) = _sequence_input(x, data_format, where)
    w, r, b = _strip(_dl(weights)), _strip(_dl(recurrent_weights)), _strip(_dl(bias))
    hid = _recurrent_hidden_size(w, r, c, 3, where)
    b = reshape(b, (-1,))
    rbias = None
    if reset_gate_mode == "recurrent-bias-after-multiplication":
        if b.size != 6 * hid:
            raise ValueError(
                f"{where}: bias must have 6*hidden = {6 * hid} entries (input and recurrent "
                f"bias) with reset_gate_mode={reset_gate_mode!r}, got shape {b.shape}"
            )
        rbias = b[3 * hid :]
        b = b[: 3 * hid]
    elif b.size != 3 * hid:
        raise ValueError(
            f"{where}: bias must have 3*hidden = {3 * hid} entries, got shape {b.shape}"
        )
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


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _class_indices(raw, where, name, num_classes=None, kind="class indices"):
    """0-based integer class labels as a host int64 array, checked to lie in
    ``[0, num_classes)`` (labels are small: one pass over them is cheap)."""
    host = np.asanyarray(to_host(raw))
    if host.dtype.kind not in "biuf":
        raise ValueError(
            f"{where}: {name} must be integer {kind} (0-based), got dtype {host.dtype}"
        )
    if host.dtype.kind == "f" and host.size:
        whole = np.isfinite(host)
        whole[whole] = host[whole] == np.floor(host[whole])
        if not whole.all():
            bad = host[~whole].flat[0]
            raise ValueError(
                f"{where}: {name} must be integer {kind} (0-based), got {float(bad)!r}"
            )
    codes = host.astype(np.int64)
    if num_classes is not None and codes.size:
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{where}: {name} must be {kind} in [0, {num_classes}) (0-based), got "
                f"values in [{low}, {high}]"
            )
    return codes


def embed(x, weights, *, data_format=None):
    """Look up embedding vectors: ``x`` holds 0-based indices (format with a
    singleton ``C``, or no ``C``), ``weights[dim, vocabulary]``; the output has a
    ``C`` dimension of size ``dim`` in its place.

    >>> import gpugrad as gg
    >>> w = gg.dlarray(np.arange(6.0).reshape(2, 3))
    >>> gg.embed(gg.dlarray(np.array([[2, 0]]), "CB"), w).numpy()
    array([[2., 0.],
           [5., 3.]])
    """
    where = "embed"
    w = _strip(_dl(weights))
    if w.ndim != 2:
        raise ValueError(
            f"{where}: weights must be a matrix [dim, vocabulary], got shape {w.shape}"
        )
    f = _Fmt(x, data_format, where, "CBT")
    fmt = f.fmt
    shape = f.x.shape
    if "C" in fmt:
        ci = fmt.index("C")
        if shape[ci] != 1:
            raise ValueError(
                f"{where}: the C dimension of x must have size 1 (one index per position), "
                f"got {shape[ci]}"
            )
        shape = tuple(s for i, s in enumerate(shape) if i != ci)
        fmt = fmt.replace("C", "")
    idx = _embed_indices(f.x._data, where, w.shape[1], shape)
    rows = transpose(w, (1, 0))[idx]  # (..., dim)
    out = transpose(rows, (rows.ndim - 1,) + tuple(range(rows.ndim - 1)))
    # the new C goes first; check_format gives the permutation to the sorted S,C,B,T,U order
    sorted_fmt, perm = check_format("C" + fmt, out.ndim, where)
    if perm is not None:
        out = transpose(out, perm)
    return f.back(out, sorted_fmt)


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _embed_indices(raw, where, vocabulary, shape):
    codes = _class_indices(raw, where, "indices", vocabulary, "vocabulary indices")
    return _xp().asanyarray(codes.reshape(shape))


@host_call  # a gg.dlaccelerate replay draws a fresh mask
def _dropout_mask(shape, dtype, rate):
    keep = _random.raw_uniform(shape, dtype if dtype.kind == "f" else np.float64) >= rate
    return (keep / (1 - rate)).astype(dtype, copy=False)


def dropout(x, rate=0.5, *, training=None):
    """In training mode zero each element with probability ``rate`` and scale kept ones
    by ``1 / (1 - rate)``; identity otherwise. The mask is drawn from ``gg.random``
    (``gg.random.seed`` makes it reproducible). ``training=None`` follows
    ``gg.autograd.is_training()``: the context's choice (``gg.learning_phase``,
    ``gg.autograd.record``, ``gg.forward``/``gg.predict``), else training exactly when
    a gradient trace is open (inside ``dlfeval``, ``gg.gradient``, ...).

    >>> import gpugrad as gg
    >>> gg.dropout(gg.ones((2,)), 0.5).numpy().tolist()  # not training: the identity
    [1.0, 1.0]
    >>> gg.random.seed(0)
    >>> gg.dropout(gg.ones((4,)), 0.5, training=True).numpy().tolist()
    [2.0, 0.0, 0.0, 0.0]
    """
    x = _dl(x)
    rate = fraction(rate, "rate", "dropout")
    if training is None:
        training = _phase.is_training()
    if not training or rate == 0:
        return x
    mask = make(_dropout_mask(x.shape, x.dtype, rate))
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
        hint = ""
        if where == "crossentropy" and tt.ndim == 1 and "B" in f.fmt and tt.size == f.size("B"):
            hint = "; for class indices use gg.onehotencode(labels, 0, num_classes) first"
        raise ValueError(
            f"{where}: targets must have the predictions' shape {f.x.shape}, got {tt.shape}{hint}"
        )
    return f, _strip(f.x), tt


def _observations(f, normalization, where):
    if normalization == "batch-size":
        return max(f.size("B"), 1) if "B" in f.fmt else 1
    if normalization == "all-elements":
        return f.x.size
    if normalization == "none":
        return 1
    raise ValueError(
        f"{where}: normalization must be 'batch-size', 'all-elements' or 'none', "
        f"got {normalization!r}"
    )


def crossentropy(y, targets, *, normalization="batch-size", data_format=None):
    """Cross-entropy of probabilities ``y`` against ``targets``: ``-sum(T .* log(Y))``
    over channels (and time), averaged over observations (MATLAB's ``crossentropy``).

    >>> import gpugrad as gg
    >>> y = gg.dlarray(np.array([[0.25, 0.5], [0.75, 0.5]]), "CB")  # probabilities
    >>> t = gg.dlarray(np.array([[0.0, 1.0], [1.0, 0.0]]), "CB")
    >>> round(float(gg.crossentropy(y, t)), 6)  # -(log 0.75 + log 0.5) / 2
    0.490415
    """
    where = "crossentropy"
    f, ys, ts = _loss_setup(y, targets, data_format, where)
    f.require("C", where, "CB")
    n = _observations(f, normalization, where)
    if ts.size and ts.dtype.kind in "biuf":
        low, high = float(_xp().min(ts._data)), float(_xp().max(ts._data))
        if low < 0 or high > 1:
            raise ValueError(
                f"{where}: targets must be probabilities in [0, 1] (e.g. one-hot), got values "
                f"in [{low:g}, {high:g}]"
            )
    tiny = np.finfo(ys.dtype).tiny if ys.dtype.kind == "f" else 1e-300
    total = -gsum(ts * log(ys + tiny))
    return total / n


def mse(y, targets, *, data_format=None):
    """Half mean squared error: ``sum((Y - T).^2) / 2 / N`` with ``N`` observations.

    >>> import gpugrad as gg
    >>> float(gg.mse(gg.dlarray(np.array([[1.0, 2.0]]), "CB"), gg.dlarray(np.zeros((1, 2)), "CB")))
    1.25
    """
    f, ys, ts = _loss_setup(y, targets, data_format, "mse")
    d = ys - ts
    return gsum(d * d) / (2 * _observations(f, "batch-size", "mse"))


def l1loss(y, targets, *, normalization="batch-size", data_format=None):
    """``sum(|Y - T|) / N`` (MATLAB ``l1loss``).

    >>> import gpugrad as gg
    >>> float(gg.l1loss(gg.dlarray(np.array([[1.0, -2.0]]), "CB"), gg.dlarray(np.zeros((1, 2)), "CB")))
    1.5
    """
    f, ys, ts = _loss_setup(y, targets, data_format, "l1loss")
    n = _observations(f, normalization, "l1loss")
    return gsum(gabs(ys - ts)) / n


def l2loss(y, targets, *, normalization="batch-size", data_format=None):
    """``sum((Y - T).^2) / N`` (MATLAB ``l2loss``).

    >>> import gpugrad as gg
    >>> float(gg.l2loss(gg.dlarray(np.array([[1.0, -2.0]]), "CB"), gg.dlarray(np.zeros((1, 2)), "CB")))
    2.5
    """
    f, ys, ts = _loss_setup(y, targets, data_format, "l2loss")
    n = _observations(f, normalization, "l2loss")
    d = ys - ts
    return gsum(d * d) / n


def huber(y, targets, *, transition_point=1.0, normalization="batch-size", data_format=None):
    """Huber loss: ``0.5 r^2`` for ``|r| <= delta``, ``delta (|r| - delta / 2)`` beyond,
    summed and divided by the number of observations.

    >>> import gpugrad as gg
    >>> y = gg.dlarray(np.array([[0.5, -3.0]]), "CB")
    >>> float(gg.huber(y, gg.dlarray(np.zeros((1, 2)), "CB")))  # (0.125 + 2.5) / 2
    1.3125
    """
    f, ys, ts = _loss_setup(y, targets, data_format, "huber")
    n = _observations(f, normalization, "huber")
    dlt = positive(transition_point, "transition_point", "huber")
    r = gabs(ys - ts)
    per = where(r <= dlt, 0.5 * r * r, dlt * (r - 0.5 * dlt))
    return gsum(per) / n


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def onehotencode(labels, feature_dim, num_classes=None, *, classes=None, fmt=None):
    """One-hot encode integer class labels (0-based) along ``feature_dim`` (0-based
    position of the new axis; a singleton dimension there is replaced). ``classes``
    gives the class values explicitly; without it there are ``num_classes`` classes
    (default: the largest label + 1).

    >>> import gpugrad as gg
    >>> gg.onehotencode(np.array([2, 0]), 0, 3).numpy()
    array([[0., 1.],
           [0., 0.],
           [1., 0.]])
    """
    where = "onehotencode"
    raw = labels._data if isinstance(labels, dlarray) else labels
    host = np.asanyarray(to_host(raw))
    if isinstance(feature_dim, (bool, np.bool_)) or not isinstance(feature_dim, (int, np.integer)):
        raise ValueError(f"{where}: feature_dim must be an integer, got {feature_dim!r}")
    if not 0 <= feature_dim <= host.ndim:
        raise ValueError(
            f"{where}: feature_dim must be in [0, {host.ndim}] (0-based; {host.ndim} appends "
            f"a new last dimension) for labels of shape {host.shape}, got {feature_dim}"
        )
    if classes is not None:
        classes = list(classes)
        lookup = {c: i for i, c in enumerate(classes)}
        try:
            codes = np.vectorize(lambda v: lookup[v], otypes=[np.int64])(host)
        except KeyError as exc:
            raise ValueError(
                f"{where}: label {exc.args[0]!r} is not in classes {classes!r}"
            ) from None
        except TypeError:
            raise ValueError(f"{where}: labels must be hashable class values") from None
        k = len(classes)
    else:
        if host.dtype.kind not in "biuf":
            raise ValueError(
                f"{where}: labels must be integer class indices (0-based), got dtype "
                f"{host.dtype}; for other class values pass classes=[...]"
            )
        if num_classes is None:
            if not host.size:
                raise ValueError(f"{where}: labels are empty; pass num_classes")
            codes = _class_indices(host, where, "labels")
            k = max(int(codes.max()) + 1, 1)
        else:
            k = _whole(num_classes, "num_classes", where, num_classes, "an integer >= 1")
            if k < 1:
                raise ValueError(f"{where}: num_classes must be >= 1, got {num_classes!r}")
        codes = _class_indices(host, where, "labels", k)
    if feature_dim < host.ndim and host.shape[feature_dim] == 1:
        codes = np.squeeze(codes, axis=feature_dim)
    # why: np.eye(k)[codes] allocated k x k (80 GB for 10**5 classes)
    shape = codes.shape + (k,)
    out = allocate(where, shape, np.float64, lambda: np.zeros(shape))
    np.put_along_axis(out, codes[..., None], 1.0, axis=-1)
    out = np.moveaxis(out, -1, feature_dim)
    return dlarray(_xp().asanyarray(out), fmt)


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _probability_labels(lab, dtype):
    return _xp().asanyarray(lab, dtype=dtype)


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _index_column(lab, where, classes):
    return _xp().asanyarray(_class_indices(lab, where, "labels", classes))[:, None]


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _device_index_column(lab, classes, dtype):
    """Device labels as a ``[batch, 1]`` index column, and a 0-d penalty that is NaN
    when a label is not an integer in ``[0, classes)``, else 0.

    why: checking device labels on the host is a device->host copy and a sync in every
    training step; an invalid label makes the loss NaN instead (PyTorch's CUDA loss
    stops the process with a device-side assert for the same mistake)."""
    xp = _xp()
    if lab.dtype.kind == "f":
        bad = ~(xp.isfinite(lab) & (lab == xp.floor(xp.nan_to_num(lab))))
    elif lab.dtype.kind in "biu":
        bad = xp.zeros(lab.shape, dtype=bool)
    else:
        raise ValueError(
            f"softmax_cross_entropy: labels must be integer class indices, got {lab.dtype}"
        )
    codes = xp.nan_to_num(lab).astype(np.int64) if lab.dtype.kind == "f" else lab.astype(np.int64)
    bad = bad | (codes < 0) | (codes >= classes)
    penalty = xp.where(bad.any(), np.nan, 0.0).astype(dtype)
    return xp.clip(codes, 0, classes - 1)[:, None], penalty


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits[batch, classes]`` against integer ``labels[batch]``
    (0-based) or one-hot/probability ``labels[batch, classes]`` (Swift's
    ``softmaxCrossEntropy``).

    >>> import gpugrad as gg
    >>> round(float(gg.nn.softmax_cross_entropy(gg.zeros((2, 4)), [0, 3])), 6)
    1.386294
    """
    where = "softmax_cross_entropy"
    z = _dl(logits)
    if z.ndim != 2:
        raise ValueError(f"{where}: logits must be [batch, classes], got shape {z.shape}")
    if not z.shape[0] or not z.shape[1]:
        raise ValueError(
            f"{where}: logits must have at least one row and one class, got shape {z.shape}"
        )
    lab = labels._data if isinstance(labels, dlarray) else labels
    if not hasattr(lab, "shape"):
        lab = np.asanyarray(lab)
    if lab.ndim == 2 and tuple(lab.shape) == z.shape:
        if lab.dtype.kind not in "biuf":
            raise ValueError(f"{where}: probability labels must be numbers, got dtype {lab.dtype}")
        probs = _probability_labels(lab, z.dtype)
        low, high = float(_xp().min(probs)), float(_xp().max(probs))
        if low < 0 or high > 1:
            raise ValueError(
                f"{where}: probability labels [batch, classes] must lie in [0, 1], got values "
                f"in [{low:g}, {high:g}]"
            )
        logp = z - logsumexp(z, axis=1, keepdims=True)
        return -gsum(logp * make(probs)) / z.shape[0]
    if tuple(lab.shape) != (z.shape[0],):
        raise ValueError(
            f"{where}: labels must have shape ({z.shape[0]},) (one class index per "
            f"row) or {z.shape} (probabilities), got shape {tuple(lab.shape)}"
        )
    penalty = None
    if backend.is_device_array(lab) and lab.dtype.kind in "biuf":
        idx, penalty = _device_index_column(lab, z.shape[1], z.dtype)
    else:
        idx = _index_column(lab, where, z.shape[1])
    logp = z - logsumexp(z, axis=1, keepdims=True)
    picked = take_along_axis(logp, idx, axis=1)
    loss = -gsum(picked) / z.shape[0]
    return loss if penalty is None else loss + make(penalty)


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
    "groupnorm",
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
