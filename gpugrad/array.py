"""The ``dlarray`` type: an array on the active device, MATLAB format labels, and a
link to the tape node that produced it.

Operators (``+``, ``@``, indexing, ...) are installed onto the class by
``gpugrad.ops`` when the package loads (see ``ops/__init__.py``); this module
knows nothing about individual ops.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import backend
from .backend import DeviceError
from .errors import TraceError
from .tape import FRAME as _FRAME

LABELS = "SCBTU"
_LABEL_ORDER = {c: i for i, c in enumerate(LABELS)}


class _OpsHook:
    """Filled in by ``gpugrad.ops`` when the package loads: the ops this module needs
    (the one explicit place where the array type and the ops layer meet)."""

    transpose = None
    from_sequence = None  # list/tuple holding dlarrays -> traced stack (or None)
    copy_raw = staticmethod(lambda raw: raw.copy())  # a copy gg.dlaccelerate replays


OPS = _OpsHook()


class dlarray:  # noqa: N801 - the MATLAB name is the API
    """Array for deep learning, with optional MATLAB data-format labels.

    ``dlarray(data, fmt=None, dtype=None, copy=True)`` wraps a Python scalar or list,
    a NumPy or CuPy array, or a dlarray, on the active device, copying by default
    (MATLAB value semantics: later in-place updates, ``x[0] = 5`` or an optimizer
    step, never write into the caller's array); ``copy=False`` shares the caller's
    memory where the device and dtype allow. Integer data becomes
    float64 (MATLAB ``double``); bool stays bool. ``fmt`` labels each axis with
    ``S`` (spatial), ``C`` (channel), ``B`` (batch), ``T`` (time) or ``U``
    (unspecified); as in MATLAB, a formatted array is permuted to S,C,B,T,U order.
    A list or tuple holding dlarrays is stacked by a recorded op, so inside a trace
    ``gg.dlarray([x, 2 * x])`` (and ``gg.mean([x, x + 2])``) stays differentiable.
    Converting a traced dlarray with ``np.asarray`` inside a trace raises a
    ``TraceError`` (use ``gg.extractdata`` for a constant); NumPy functions called on
    a dlarray (``np.sum(x)``, ``np.exp(x)``) run gpugrad's (``gpugrad.numpy_dispatch``).

    >>> import gpugrad as gg
    >>> x = gg.dlarray([[1, 2, 3]], "BC")
    >>> x.shape, gg.dims(x)
    ((3, 1), 'CB')
    >>> import numpy as np
    >>> a = np.zeros(2)
    >>> y = gg.dlarray(a)
    >>> y[0] = 5.0
    >>> a.tolist(), gg.dlarray(a, copy=False)._data is a
    ([0.0, 0.0], True)
    """

    __slots__ = ("_data", "_fmt", "_node", "_idx", "_taint", "_grad", "__weakref__")
    __array_priority__ = 1000

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy ufuncs run the gpugrad function of the same name (traced); see
        ``gpugrad.numpy_dispatch``."""
        from .numpy_dispatch import array_ufunc

        return array_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """NumPy functions run the gpugrad function of the same name (traced); see
        ``gpugrad.numpy_dispatch``."""
        from .numpy_dispatch import array_function

        return array_function(func, types, args, kwargs)

    def __init__(
        self,
        data: ArrayLike,
        fmt: str | None = None,
        dtype: DTypeLike | None = None,
        copy: bool = True,
    ) -> None:
        node = None
        idx = 0
        taint = False
        if type(data) in (list, tuple) and OPS.from_sequence is not None:
            stacked = OPS.from_sequence(data)  # a list of traced values stays traced
            if stacked is not None:
                data = stacked
        if isinstance(data, dlarray):
            raw, node, idx, taint = data._data, data._node, data._idx, data._taint
            source = raw
            if fmt is None:
                fmt = data._fmt
        else:
            source = data
            raw = as_raw(data)
        raw = _normalize_dtype(raw, dtype, "dlarray")
        if copy and _shares_memory(raw, source):
            # why: MATLAB/NumPy value semantics; an in-place update (x[0] = 5, an
            # optimizer step) must never write into the caller's array
            # why: a copy of a traced value's data is a call gg.dlaccelerate replays
            raw = raw.copy() if type(raw) is np.ndarray else OPS.copy_raw(raw)
        fmt = "" if fmt is None else fmt
        if fmt:
            fmt, perm = check_format(fmt, raw.ndim, "dlarray")
            if perm is not None:
                if node is not None:  # permuting a traced array is a recorded op
                    permuted = OPS.transpose(data, perm)
                    raw, node, idx = permuted._data, permuted._node, permuted._idx
                else:
                    xp = backend.xp() if backend.is_device_array(raw) else np
                    raw = xp.ascontiguousarray(raw.transpose(perm))
        self._data = raw
        self._fmt = fmt
        self._node = node
        self._idx = idx
        self._taint = taint
        self._grad = None

    # ------------------------------------------------------------------ basics
    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def size(self):
        return self._data.size

    @property
    def fmt(self):
        """The format labels (``''`` when unformatted); same as ``gg.dims(x)``."""
        return self._fmt

    @property
    def device(self):
        if backend.is_device_array(self._data):
            return backend.array_device(self._data)  # 'cuda', or 'cuda-sim' on the simulation
        return backend.device_for_host()

    @property
    def traced(self) -> bool:
        """True when this value is recorded on a tape (it can be differentiated)."""
        return self._node is not None

    def __len__(self):
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d dlarray")
        return self._data.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def item(self):
        """The value of a one-element array as a Python scalar."""
        d = self._data
        if d.size != 1:
            raise ValueError(
                f"item(): only one-element dlarrays convert to a scalar, this one has shape {d.shape}"
            )
        return d.item()

    def asscalar(self):
        """MXNet spelling of :meth:`item`."""
        return self.item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __complex__(self):
        return complex(self.item())

    def __bool__(self):
        d = self._data
        if d.size != 1:
            raise ValueError(
                f"the truth value of a dlarray with {d.size} elements is ambiguous; "
                "use gg.any/all on it or compare a scalar"
            )
        return bool(d.item())

    def __index__(self):
        return int(self.item())

    def numpy(self):
        """A host (NumPy) copy of the data."""
        return np.array(backend.to_host(self._data), copy=True)

    def __array__(self, dtype=None, copy=None):
        if self._node is not None and _recording():
            raise TraceError(
                "a traced dlarray cannot be converted to a NumPy array inside a trace: the "
                "result would silently carry no derivative. Use gpugrad functions on it "
                "(np.sum, np.exp, ... on a dlarray call them), or convert explicitly with "
                "gg.extractdata(x) or x.numpy() for a constant, or use "
                "gg.without_derivative(x) (gg.stop_gradient) to mark it as one"
            )
        out = backend.to_host(self._data)
        out = np.asarray(out)
        if dtype is not None:
            out = out.astype(dtype, copy=False)
        return out

    __hash__ = object.__hash__

    def __repr__(self):
        return format_repr(self)

    __str__ = __repr__

    def __format__(self, spec):
        """``f"{y:.3f}"`` formats a one-element array as its scalar; an empty spec is
        ``str(x)``."""
        if self._data.size == 1 and self._data.dtype.kind != "b":
            return format(self.item(), spec)
        if not spec:
            return str(self)
        raise TypeError(
            f"unsupported format string {spec!r} for a dlarray of shape {self.shape}; "
            "format one element (x[i]) or use f'{x}'"
        )

    # ------------------------------------------------------------------ interop
    def __dlpack__(self, *args, **kwargs):
        """DLPack export (zero-copy): ``torch.from_dlpack(x)``, ``np.from_dlpack(x)``,
        ``cupy.from_dlpack(x)``, ``jax.dlpack.from_dlpack(x)``. The consumer sees the
        data, not the trace (as ``gg.extractdata``)."""
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        """``(device type, device id)`` of the data, as DLPack defines it."""
        return self._data.__dlpack_device__()

    @property
    def __cuda_array_interface__(self):
        """CuPy/Numba/PyTorch's CUDA array interface (zero-copy), only on ``cuda``."""
        if not backend.is_device_array(self._data):
            raise AttributeError(
                "__cuda_array_interface__: this dlarray's data is on the host; "
                "use np.asarray(x), x.numpy() or DLPack (np.from_dlpack(x))"
            )
        return self._data.__cuda_array_interface__

    def __reduce__(self):
        return (_rebuild, (backend.to_host(self._data), self._fmt))


def _recording():
    return _FRAME.get().recording


def _rebuild(data, fmt):
    return dlarray(data, fmt or None)


# ---------------------------------------------------------------------- helpers

_PY_SCALARS = (int, float, complex, bool)


def as_raw(data):
    """Raw array (NumPy or CuPy, on the active device) for anything array-like."""
    if isinstance(data, dlarray):
        return data._data
    on_cuda = backend.is_cuda()  # cuda and cuda-sim
    if backend.is_device_array(data):
        if on_cuda:
            return data
        return data.get()
    if on_cuda:
        if isinstance(data, np.ndarray) and type(data) is not np.ndarray:
            data = _plain(data)  # a masked array's hidden values must not reach the device
        try:
            return backend.xp().asarray(data)
        except (TypeError, ValueError) as exc:  # ragged lists and the like, as on the host
            raise TypeError(
                f"dlarray: cannot make an array from {type(data).__name__}: {exc}"
            ) from exc
    if type(data) is np.ndarray:
        return data
    if isinstance(data, np.ndarray):
        return _plain(data)
    if isinstance(data, np.generic):
        return data
    try:
        return np.asarray(data)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"dlarray: cannot make an array from {type(data).__name__}: {exc}") from exc


def _plain(data):
    """A plain ndarray for a NumPy subclass: np.matrix would make ``*`` a matrix
    product, a masked array would silently use its masked values."""
    if isinstance(data, np.ma.MaskedArray):
        if np.ma.getmaskarray(data).any():
            raise TypeError(
                "dlarray: masked arrays with masked entries are not supported; fill them "
                "first, e.g. data.filled(0.0)"
            )
        return np.asarray(data.data)
    return np.asarray(data).view(np.ndarray)


def _shares_memory(raw, source):
    """Whether ``raw`` may share memory with the caller's ``source`` (a fresh array made
    from a list, scalar or another device never does)."""
    if raw is source:
        return True
    if isinstance(source, (list, tuple, np.generic, *_PY_SCALARS)) or not hasattr(source, "shape"):
        return False
    on_device = backend.is_device_array(raw)
    if on_device != backend.is_device_array(source):
        return False
    if on_device:
        return bool(backend.xp().may_share_memory(raw, source))
    try:
        return bool(np.may_share_memory(raw, source))
    except TypeError:  # an array-like NumPy cannot look inside: copy to be safe
        return True


def _astype(raw, dtype):
    """``raw.astype(dtype)``; on the cuda path a copy of a device array that a
    ``gg.dlaccelerate`` trace knows as a constant is one too (gpugrad/_provenance.py)."""
    out = raw.astype(dtype)
    if type(raw) is not np.ndarray and backend.is_device_array(raw):
        from ._provenance import derived

        out = derived(out, raw)
    return out


def _normalize_dtype(raw, dtype, where):
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt.kind not in "fcb":
            raise TypeError(
                f"{where}: dtype must be a float, complex or bool type, got {dt} "
                "(integer data is stored as float64, as MATLAB double)"
            )
        if raw.dtype != dt:
            raw = _astype(raw, dt)
        return raw
    kind = raw.dtype.kind
    if kind in "fcb":
        return raw
    if kind in "iu":
        return _astype(raw, np.float64)
    raise TypeError(
        f"{where}: data of dtype {raw.dtype} is not numeric; expected numbers (float, complex, "
        "integer or bool)"
    )


def check_format(fmt, ndim, where="dlarray"):
    """Validate a MATLAB format string; return (sorted fmt, permutation or None)."""
    if not isinstance(fmt, str):
        raise TypeError(f"{where}: fmt must be a string of labels S, C, B, T, U, got {fmt!r}")
    fmt = fmt.upper()
    bad = sorted({c for c in fmt if c not in LABELS})
    if bad:
        raise ValueError(
            f"{where}: unknown format label(s) {''.join(bad)!r} in fmt={fmt!r}; "
            "use S (spatial), C (channel), B (batch), T (time) or U (unspecified)"
        )
    for c in "CBT":
        if fmt.count(c) > 1:
            raise ValueError(
                f"{where}: fmt={fmt!r} has label {c!r} more than once; C, B and T may appear at most once"
            )
    if len(fmt) != ndim:
        raise ValueError(
            f"{where}: fmt={fmt!r} has {len(fmt)} labels but the data has {ndim} dimension(s); "
            "give one label per dimension"
        )
    perm = sorted(range(ndim), key=lambda i: _LABEL_ORDER[fmt[i]])
    sorted_fmt = "".join(fmt[i] for i in perm)
    if perm == list(range(ndim)):
        return sorted_fmt, None
    return sorted_fmt, tuple(perm)


def _short_repr(x: dlarray) -> str:
    """NumPy-like display of a scalar or 1-D array: ``dlarray(104.0)``,
    ``dlarray([1., 2., 3.], dtype=float32, fmt='C')``."""
    values = np.asarray(backend.to_host(x._data))
    if values.ndim == 0:
        body = repr(values.item())
    else:
        body = np.array2string(
            values,
            precision=4,
            suppress_small=True,
            threshold=200,
            separator=", ",
            prefix="dlarray(",
        )
    extra = []
    if x.dtype != np.float64:
        extra.append(f"dtype={x.dtype}")
    if x._fmt:
        extra.append(f"fmt={x._fmt!r}")
    if x.device != "cpu":
        extra.append(f"device={x.device!r}")
    if x._node is not None:
        extra.append("traced")
    return f"dlarray({', '.join([body, *extra])})"


def format_repr(x: dlarray) -> str:
    """Display. A scalar or 1-D array prints on one line as NumPy does
    (``dlarray(104.0)``, ``dlarray([1., 2.])``, with the dtype when it is not float64,
    the format, the device when it is not cpu, and ``traced``); higher dimensions print
    MATLAB-like: ``2x3 dlarray (float32, format 'CB', cpu)`` then the values.

    >>> import gpugrad as gg
    >>> gg.dlarray(104.0), gg.dlarray([1.0, 2.5]), gg.ones(2, dtype="float32")
    (dlarray(104.0), dlarray([1. , 2.5]), dlarray([1., 1.], dtype=float32))
    """
    if x.ndim <= 1:
        return _short_repr(x)
    shape = x.shape
    size = "x".join(str(s) for s in shape) if shape else "1x1"
    bits = [str(x.dtype)]
    if x._fmt:
        bits.append(f"format '{x._fmt}'")
    bits.append(x.device)
    if x._node is not None:
        bits.append("traced")
    head = f"{size} dlarray ({', '.join(bits)})"
    values = np.array2string(
        np.asarray(backend.to_host(x._data)), precision=4, suppress_small=True, threshold=200
    )
    values = "\n".join("    " + line for line in values.splitlines())
    return f"{head}\n\n{values}\n"


def check_same_device(a, b, where):
    """Raise DeviceError when one raw operand is a CuPy array and the other a NumPy one."""
    da, db = backend.array_device(a), backend.array_device(b)
    if da != db and not (isinstance(a, _PY_SCALARS) or isinstance(b, _PY_SCALARS)):
        if getattr(a, "ndim", 0) == 0 or getattr(b, "ndim", 0) == 0:
            return
        raise DeviceError(
            f"{where}: operands are on different devices ({da} and {db}); "
            "move one with gg.to_device(x) or gg.to_host(x)"
        )
