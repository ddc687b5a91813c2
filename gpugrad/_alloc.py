"""Shape arguments and allocations with gpugrad's error messages: a negative or
non-integer dimension, or an allocation the machine cannot make, is reported naming
the function, the argument and (for memory) how many bytes were asked for."""

from __future__ import annotations

import numbers

import numpy as np


def shape_arg(shape, where, arg="shape"):
    """``shape`` (an int or a sequence of ints) as a tuple of non-negative ints.

    >>> shape_arg(3, "zeros")
    (3,)
    >>> shape_arg((2, -1), "zeros")
    Traceback (most recent call last):
    ...
    ValueError: zeros: shape must be a non-negative int or a tuple of them, got (2, -1)
    """
    items = (shape,) if isinstance(shape, numbers.Integral) else shape
    try:
        ok = not isinstance(items, (str, bytes)) and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in items
        )
    except TypeError:  # not iterable
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: {arg} must be a non-negative int or a tuple of them, got {shape!r}"
        )
    return tuple(int(s) for s in items)


def size_text(nbytes):
    """``1.5 GiB``-style text for a byte count."""
    value = float(nbytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{nbytes} bytes"  # pragma: no cover


def too_large(where, shape, dtype):
    """The MemoryError for an allocation of ``shape`` x ``dtype`` that failed."""
    n = 1
    for s in shape:
        n *= int(s)
    nbytes = n * np.dtype(dtype).itemsize
    return MemoryError(
        f"{where}: cannot allocate an array of shape {tuple(shape)} and dtype "
        f"{np.dtype(dtype)}: {nbytes:,} bytes ({size_text(nbytes)}) is more than this "
        "machine can provide"
    )


def allocate(where, shape, dtype, fn):
    """``fn()`` (which allocates ``shape`` x ``dtype``), with NumPy's and CuPy's
    out-of-memory errors reported as gpugrad's (naming ``where`` and the bytes)."""
    try:
        return fn()
    except MemoryError:
        raise too_large(where, shape, dtype) from None
    except ValueError as exc:
        if "too big" in str(exc) or "maximum possible size" in str(exc):
            raise too_large(where, shape, dtype) from None
        raise
    except Exception as exc:  # CuPy's OutOfMemoryError is not a MemoryError
        if type(exc).__name__ == "OutOfMemoryError":
            raise too_large(where, shape, dtype) from None
        raise
