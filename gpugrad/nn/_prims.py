"""Heavy deep-learning primitives: ``linear`` (x @ W^T + b), ``conv2d`` with its
backward-data and backward-filter as primitives, and a flat gather/scatter pair for
pooling. Each forward picks the hand-written CUDA kernels on ``cuda``/``emu`` (via
``kernels_for``) and NumPy on ``cpu``; every VJP is written with gpugrad ops (or
with these primitives), so higher derivatives work on every device.

Convolutions work on NHWC raw arrays with MATLAB weights ``[kh, kw, cin/groups, cout]``.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from ..ops.core import _STATE, Primitive, bind, make
from ..ops.heavy import kernels_for, matmul_t, relu_bwd
from ..ops.reduce import sum as gsum
from ..ops.shape import reshape


def _xp():
    return _STATE["xp"]


# ------------------------------------------------------------------ buffer pool (NumPy)


def _refs(bases, k):
    return sys.getrefcount(bases[k])


_FREE_REFS = _refs([np.empty(1, np.uint8)], 0)  # refcount of a buffer nobody views


class BufferPool:
    """Reusable host buffers for the large outputs and temporaries of the NumPy paths.

    why: glibc returns big freed blocks to the OS and every fresh one page-faults
    again (on the benchmark VM, ~15 ms of an 85 ms LSTM training step). A buffer is
    handed out as a view of a pooled base array and reused only once no view of it is
    alive (the base's reference count says so: every NumPy view of it, and every view
    of those, holds a reference to it), so reuse never aliases a live array. At most
    ``max_bytes`` are kept; requests below ``min_bytes`` go straight to ``np.empty``."""

    def __init__(self, max_bytes=256 << 20, min_bytes=1 << 20):
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self.bytes = 0
        self._bases = {}  # nbytes -> [uint8 base arrays]
        self._lock = threading.Lock()

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < self.min_bytes or nbytes > self.max_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            bases = self._bases.setdefault(nbytes, [])
            for k in range(len(bases)):
                if _refs(bases, k) == _FREE_REFS:
                    return bases[k].view(dtype).reshape(shape)
            if self.bytes + nbytes > self.max_bytes:
                self._evict(self.bytes + nbytes - self.max_bytes)
            if self.bytes + nbytes > self.max_bytes:
                return np.empty(shape, dtype)
            bases.append(np.empty(nbytes, np.uint8))
            self.bytes += nbytes
            return bases[-1].view(dtype).reshape(shape)

    def _evict(self, need):
        for nbytes, bases in self._bases.items():
            for k in range(len(bases) - 1, -1, -1):
                if need <= 0:
                    return
                if _refs(bases, k) == _FREE_REFS:
                    del bases[k]
                    self.bytes -= nbytes
                    need -= nbytes

    def clear(self):
        """Forget every pooled buffer (views still alive keep their memory)."""
        with self._lock:
            self._bases.clear()
            self.bytes = 0


POOL = BufferPool()


# ------------------------------------------------------------------ linear


def _linear_fwd(x, w, b, relu=False):
    k = kernels_for(x, w, b)
    if k is not None:
        return k.matmul(x, w, trans_b=True, bias=b, relu=relu)
    y = x @ w.T
    y += b
    if relu:
        np.maximum(y, 0, out=y) if _xp() is np else _xp().maximum(y, 0, out=y)
    return y


def _linear_vjp(g, ans, x, w, b, relu=False, needs=(True, True, True)):
    if relu:
        g = relu_bwd(g, ans)
    gx = matmul_t(g, w) if needs[0] else None
    gw = matmul_t(g, x, True, False) if needs[1] else None
    gb = gsum(g, axis=0) if needs[2] else None
    return gx, gw, gb


_LINEAR = Primitive("linear", _linear_fwd, _linear_vjp, save=(0, 1), needs=True)
_LINEAR_RELU = Primitive(
    "linear_relu",
    lambda x, w, b: _linear_fwd(x, w, b, True),
    lambda g, ans, x, w, b, needs=(True, True, True): _linear_vjp(g, ans, x, w, b, True, needs),
    save=(0, 1),
    save_ans=True,
    needs=True,
)


def linear(x, w, b, relu=False):
    """``x[N, in] @ w[out, in]^T + b[out]`` (then relu when asked) as one primitive."""
    return bind(_LINEAR_RELU if relu else _LINEAR, (x, w, b))


# ------------------------------------------------------------------ conv2d (NHWC)


def _geometry(x_shape, w_shape, stride, padding, dilation):
    n, h, w, c = x_shape
    kh, kw = w_shape[0], w_shape[1]
    ho = (h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def _pad_nhwc(x, padding):
    if not any(padding):
        return x
    t, b, l, r = padding
    n, h, w, c = x.shape
    out = _xp().zeros((n, h + t + b, w + l + r, c), dtype=x.dtype)
    out[:, t : t + h, l : l + w, :] = x
    return out


def _windows(xpad, kh, kw, ho, wo, stride, dilation):
    """A strided view (N, Ho, Wo, kh, kw, C) of the padded input (no copy)."""
    xp = _xp()
    n, _, _, c = xpad.shape
    s0, s1, s2, s3 = xpad.strides
    shape = (n, ho, wo, kh, kw, c)
    strides = (s0, s1 * stride[0], s2 * stride[1], s1 * dilation[0], s2 * dilation[1], s3)
    if xp is np:
        return np.lib.stride_tricks.as_strided(xpad, shape, strides, writeable=False)
    return xp.lib.stride_tricks.as_strided(xpad, shape, strides)  # pragma: no cover


def _conv_fwd(x, w, b, stride, padding, dilation, groups, relu=False):
    k = kernels_for(x, w, b)
    pads = ((padding[0], padding[1]), (padding[2], padding[3]))
    if k is not None:
        return k.conv2d_fwd(
            x, w, b, stride=stride, padding=pads, dilation=dilation, groups=groups, relu=relu
        )
    xp = _xp()
    kh, kw, cg, cout = w.shape
    ho, wo = _geometry(x.shape, w.shape, stride, padding, dilation)
    win = _windows(_pad_nhwc(x, padding), kh, kw, ho, wo, stride, dilation)
    if groups == 1:
        # why: one im2col buffer (the reshape copies the strided view) and one GEMM
        cols = win.reshape(-1, kh * kw * cg)
        y = cols @ w.reshape(-1, cout)
    else:
        fg = cout // groups
        y = xp.empty((x.shape[0] * ho * wo, cout), dtype=np.result_type(x, w))
        for gi in range(groups):
            cols = win[..., gi * cg : (gi + 1) * cg].reshape(-1, kh * kw * cg)
            y[:, gi * fg : (gi + 1) * fg] = cols @ w[..., gi * fg : (gi + 1) * fg].reshape(-1, fg)
    y += b
    y = y.reshape(x.shape[0], ho, wo, cout)
    if relu:
        y = xp.maximum(y, 0)
    return y


def _bwd_data_fwd(dy, w, x_shape, stride, padding, dilation, groups):
    k = kernels_for(dy, w)
    pads = ((padding[0], padding[1]), (padding[2], padding[3]))
    if k is not None:
        return k.conv2d_bwd_data(
            dy, w, x_shape, stride=stride, padding=pads, dilation=dilation, groups=groups
        )
    xp = _xp()
    n, h, wd, c = x_shape
    kh, kw, cg, cout = w.shape
    ho, wo = dy.shape[1], dy.shape[2]
    dxp = xp.zeros(
        (n, h + padding[0] + padding[1], wd + padding[2] + padding[3], c),
        dtype=np.result_type(dy, w),
    )
    fg = cout // groups
    dy2 = dy.reshape(-1, cout)
    tap_major = groups == 1 and cg >= 8
    if tap_major:
        # why: one batched GEMM writes each kernel tap's columns contiguously
        # ([taps, N*Ho*Wo, C]), so the kh*kw col2im adds below read whole rows; with
        # few channels the single GEMM into [N*Ho*Wo, taps*C] measured faster
        cols = xp.matmul(dy2, w.reshape(kh * kw, cg, cout).transpose(0, 2, 1))
    elif groups == 1:
        # why: one GEMM for all kernel taps, then kh*kw strided adds (col2im)
        cols = (dy2 @ w.reshape(-1, cout).T).reshape(n, ho, wo, kh, kw, cg)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            rows = slice(r0, r0 + stride[0] * (ho - 1) + 1, stride[0])
            cols_ = slice(c0, c0 + stride[1] * (wo - 1) + 1, stride[1])
            if tap_major:
                dxp[:, rows, cols_, :] += cols[i * kw + j].reshape(n, ho, wo, cg)
                continue
            if groups == 1:
                dxp[:, rows, cols_, :] += cols[:, :, :, i, j, :]
                continue
            for gi in range(groups):
                part = dy2[:, gi * fg : (gi + 1) * fg] @ w[i, j, :, gi * fg : (gi + 1) * fg].T
                dxp[:, rows, cols_, gi * cg : (gi + 1) * cg] += part.reshape(n, ho, wo, cg)
    return dxp[:, padding[0] : padding[0] + h, padding[2] : padding[2] + wd, :]


def _bwd_filter_fwd(dy, x, w_shape, stride, padding, dilation, groups):
    k = kernels_for(dy, x)
    pads = ((padding[0], padding[1]), (padding[2], padding[3]))
    if k is not None:
        return k.conv2d_bwd_filter(
            dy, x, w_shape, stride=stride, padding=pads, dilation=dilation, groups=groups
        )
    xp = _xp()
    kh, kw, cg, cout = w_shape
    ho, wo = dy.shape[1], dy.shape[2]
    win = _windows(_pad_nhwc(x, padding), kh, kw, ho, wo, stride, dilation)
    fg = cout // groups
    dy2 = dy.reshape(-1, cout)
    dw = xp.empty(w_shape, dtype=np.result_type(dy, x))
    for gi in range(groups):
        cols = win[..., gi * cg : (gi + 1) * cg].reshape(-1, kh * kw * cg)
        part = cols.T @ dy2[:, gi * fg : (gi + 1) * fg]
        dw[..., gi * fg : (gi + 1) * fg] = part.reshape(kh, kw, cg, fg)
    return dw


def _conv_vjp(g, ans, x, w, b, relu=False, needs=(True, True, True), **geo):
    if relu:
        g = relu_bwd(g, ans)
    # why: a first layer's input needs no gradient; its backward-data is a whole
    # transposed convolution (the walk says which cotangents are used)
    gx = conv_bwd_data(g, w, x.shape, **geo) if needs[0] else None
    gw = conv_bwd_filter(g, x, w.shape, **geo) if needs[1] else None
    gb = gsum(reshape(g, (-1, g.shape[-1])), axis=0) if needs[2] else None
    return gx, gw, gb


def _bwd_data_vjp(gdx, ans, dy, w, x_shape, **geo):
    # dx = B(dy, w) is bilinear: <gdx, B(dy, w)> = <conv(gdx, w), dy>
    zero_b = _zero_bias(w)
    gdy = conv2d(gdx, w, zero_b, **geo)
    gw = conv_bwd_filter(dy, gdx, w.shape, **geo)
    return gdy, gw


def _bwd_filter_vjp(gdw, ans, dy, x, w_shape, **geo):
    gdy = conv2d(x, gdw, _zero_bias(gdw), **geo)
    gx = conv_bwd_data(dy, gdw, x.shape, **geo)
    return gdy, gx


def _zero_bias(w):
    return make(_xp().zeros((w.shape[-1],), dtype=w.dtype))


_CONV = Primitive(
    "conv2d",
    lambda x, w, b, **geo: _conv_fwd(x, w, b, **geo),
    _conv_vjp,
    save=(0, 1),
    needs=True,
)
_CONV_RELU = Primitive(
    "conv2d_relu",
    lambda x, w, b, **geo: _conv_fwd(x, w, b, relu=True, **geo),
    lambda g, ans, x, w, b, **geo: _conv_vjp(g, ans, x, w, b, relu=True, **geo),
    save=(0, 1),
    save_ans=True,
    needs=True,
)
_BWD_DATA = Primitive("conv2d_bwd_data", _bwd_data_fwd, _bwd_data_vjp, save=(0, 1))
_BWD_FILTER = Primitive("conv2d_bwd_filter", _bwd_filter_fwd, _bwd_filter_vjp, save=(0, 1))


def conv2d(x, w, b, *, stride, padding, dilation, groups, relu=False):
    """NHWC convolution primitive (``padding`` = (top, bottom, left, right))."""
    params = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return bind(_CONV_RELU if relu else _CONV, (x, w, b), params)


def conv_bwd_data(dy, w, x_shape, **geo):
    return bind(_BWD_DATA, (dy, w), {"x_shape": tuple(x_shape), **geo})


def conv_bwd_filter(dy, x, w_shape, **geo):
    return bind(_BWD_FILTER, (dy, x), {"w_shape": tuple(w_shape), **geo})


# ------------------------------------------------------------------ flat gather / scatter


def _gather_fwd(x, idx, unique):
    return x.reshape(-1)[idx]


def _scatter_fwd(g, idx, unique, shape):
    xp = _xp()
    size = int(np.prod(shape))
    if unique:
        out = xp.zeros(size, dtype=g.dtype)
        out[idx.reshape(-1)] = g.reshape(-1)
    elif xp is np and g.dtype.kind == "f":
        out = np.bincount(idx.reshape(-1), weights=g.reshape(-1), minlength=size).astype(g.dtype)
    else:
        out = xp.zeros(size, dtype=g.dtype)
        xp.add.at(out, idx.reshape(-1), g.reshape(-1))
    return out.reshape(shape)


_SCATTER = Primitive(
    "pool_scatter",
    _scatter_fwd,
    lambda gg, ans, g, idx, unique, shape: (gather_flat(gg, idx, unique),),
)
_GATHER = Primitive(
    "pool_gather",
    _gather_fwd,
    lambda g, ans, x, idx, unique: (
        bind(_SCATTER, (g,), {"idx": idx, "unique": unique, "shape": x.shape}),
    ),
)


def gather_flat(x, idx, unique):
    """``x.reshape(-1)[idx]``; ``unique`` says no index repeats (faster backward)."""
    return bind(_GATHER, (x,), {"idx": idx, "unique": unique})
