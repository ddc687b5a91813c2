"""Axis arguments with NumPy's rules, in one place for every op that takes an axis.

An axis out of range raises ``numpy.exceptions.AxisError`` (a ``ValueError`` and an
``IndexError``, as NumPy raises) naming the function, the axis and the ndim; a
non-integer axis raises ``TypeError``. Negative axes count from the end.
"""

from __future__ import annotations

import operator

try:  # NumPy >= 1.25
    from numpy.exceptions import AxisError
except ImportError:  # pragma: no cover - older NumPy
    from numpy import AxisError


def _as_int(axis, fn):
    if isinstance(axis, bool):
        raise TypeError(f"{fn}: axis must be an int, got {axis!r}")
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"{fn}: axis must be an int or a tuple of ints, got {axis!r}") from None


def normalize_axis_index(axis, ndim, fn="axis"):
    """One axis as a non-negative int in ``range(ndim)``.

    >>> normalize_axis_index(-1, 3, "flip")
    2
    >>> normalize_axis_index(5, 2, "flip")
    Traceback (most recent call last):
    ...
    numpy.exceptions.AxisError: flip: axis 5 is out of bounds for an array of dimension 2
    """
    a = _as_int(axis, fn)
    if not -ndim <= a < ndim:
        raise AxisError(f"{fn}: axis {a} is out of bounds for an array of dimension {ndim}")
    return a % ndim


def normalize_axes(axis, ndim, fn="axis", *, sort=True):
    """``None`` stays ``None``; an int or a sequence of ints becomes a tuple of
    distinct non-negative axes (sorted unless ``sort=False``)."""
    if axis is None:
        return None
    if isinstance(axis, (tuple, list)):
        axes = [normalize_axis_index(a, ndim, fn) for a in axis]
    else:
        axes = [normalize_axis_index(axis, ndim, fn)]
    if len(set(axes)) != len(axes):
        raise ValueError(f"{fn}: repeated axis in {axis!r}")
    return tuple(sorted(axes)) if sort else tuple(axes)


__all__ = ["AxisError", "normalize_axis_index", "normalize_axes"]
