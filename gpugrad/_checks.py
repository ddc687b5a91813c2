"""Checks of scalar hyperparameters (rates, epsilons, decays), shared by the nn
functions, the layers and the optimizers, so each kind of bad value gets one message:
``"<function>: <argument> must be ..., got <value>"``."""

from __future__ import annotations

import math
from numbers import Real


def real(value, name, where):
    """``value`` as a float: a finite real Python/NumPy number (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be a finite real number, got {value!r}")
    return float(value)


def positive(value, name, where):
    value_f = real(value, name, where)
    if value_f <= 0:
        raise ValueError(f"{where}: {name} must be > 0, got {value!r}")
    return value_f


def nonnegative(value, name, where):
    value_f = real(value, name, where)
    if value_f < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {value!r}")
    return value_f


def fraction(value, name, where, *, one=False):
    """A number in [0, 1) (``one=True``: in [0, 1])."""
    value_f = real(value, name, where)
    if not (0 <= value_f <= 1 if one else 0 <= value_f < 1):
        raise ValueError(f"{where}: {name} must be in [0, 1{']' if one else ')'}, got {value!r}")
    return value_f
