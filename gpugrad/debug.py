"""Debugging aids: find the op that first produced a NaN or an Inf.

``gg.debug.detect_anomaly()`` makes every primitive check what it computes, in the
forward pass and in the backward pass, and raise :class:`AnomalyError` (a
``FloatingPointError``) naming the op whose result first holds a NaN or an Inf.
It is off by default, because each check is one more pass over every result;
without it a NaN simply propagates (into the loss, the gradients), as in NumPy.

It works as a call (on from now on; ``detect_anomaly(False)`` turns it off) and as
a context manager (on inside the block, the previous setting restored after):

>>> import gpugrad as gg
>>> with gg.debug.detect_anomaly():
...     gg.log(gg.dlarray([1.0, -1.0]))
Traceback (most recent call last):
  ...
gpugrad.debug.AnomalyError: detect_anomaly: op 'log' produced NaN in its output (shape (2,)) from finite inputs
>>> gg.debug.is_anomaly_enabled()
False

The switch is process-wide (not per thread), like the registry of primitives it
instruments: enabling it wraps each registered primitive's forward and derivative
rules with a check, and disabling it puts the original functions back, so the
normal path pays nothing.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .array import dlarray
from .ops.core import REGISTRY


class AnomalyError(FloatingPointError):
    """A primitive produced a NaN or an Inf while ``detect_anomaly`` was on."""


_ORIGINAL = {}  # primitive -> (fwd, vjp, fast) before instrumenting
_ENABLED = [False]
_BACKWARD = []  # names of the primitives whose derivative rule is running now


def is_anomaly_enabled() -> bool:
    """Whether ``detect_anomaly`` checks are on."""
    return _ENABLED[0]


def set_detect_anomaly(enabled: bool) -> None:
    """Turn the NaN/Inf checks on or off."""
    enabled = bool(enabled)
    if enabled:
        _instrument()  # also picks up primitives registered since the last call
    elif _ENABLED[0]:
        _restore()
    _ENABLED[0] = enabled


class detect_anomaly:  # lower case: used like a function, as torch.autograd.detect_anomaly
    """Turn NaN/Inf detection on (or off with ``enabled=False``) now; as a context
    manager, restore the previous setting when the block ends."""

    def __init__(self, enabled: bool = True):
        self._previous = _ENABLED[0]
        set_detect_anomaly(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        set_detect_anomaly(self._previous)
        return False

    def __repr__(self):
        return f"<gpugrad.debug.detect_anomaly: {'on' if _ENABLED[0] else 'off'}>"


# ------------------------------------------------------------------ checks


def _nonfinite(raw):
    """``"NaN"`` or ``"Inf"`` when the raw value holds one, else ``None``."""
    if isinstance(raw, dlarray):
        raw = raw._data
    if isinstance(raw, (float, complex)):
        if math.isfinite(abs(raw)):
            return None
        return "NaN" if raw != raw else "Inf"
    dtype = getattr(raw, "dtype", None)
    if dtype is None or dtype.kind not in "fc":
        return None
    xp = backend.cupy_module() if backend.is_device_array(raw) else np
    if bool(xp.isfinite(raw).all()):
        return None
    return "NaN" if bool(xp.isnan(raw).any()) else "Inf"


def _where():
    if not _BACKWARD:
        return ""
    return f" in the backward pass of op {_BACKWARD[-1]!r}"


def _inputs_note(values):
    bad = [i for i, v in enumerate(values) if _nonfinite(v)]
    if not bad:
        return " from finite inputs"
    which = ", ".join(map(str, bad))
    return (
        f"; its input(s) {which} already held NaN or Inf that no checked op produced "
        "(it came in with the data, or from code gpugrad does not trace)"
    )


def _check_outputs(name, outputs, inputs):
    for k, value in enumerate(outputs):
        kind = _nonfinite(value)
        if kind:
            shape = tuple(getattr(getattr(value, "_data", value), "shape", ()))
            part = "its output" if len(outputs) == 1 else f"output {k}"
            raise AnomalyError(
                f"detect_anomaly: op {name!r}{_where()} produced {kind} in {part} "
                f"(shape {shape}){_inputs_note(inputs)}"
            )


def _check_cotangents(name, cotangents, incoming):
    for i, value in enumerate(cotangents):
        if value is None:
            continue
        kind = _nonfinite(value)
        if kind:
            note = (
                " from a finite incoming gradient"
                if not any(_nonfinite(g) for g in incoming)
                else "; the incoming gradient already held NaN or Inf"
            )
            raise AnomalyError(
                f"detect_anomaly: the backward pass of op {name!r} produced {kind} in the "
                f"gradient of its input {i}{note}"
            )


# why: a NaN or Inf result raises AnomalyError naming the op, so NumPy's own
# "invalid value" / "divide by zero" / "overflow" warnings for it are only noise
_QUIET = {"invalid": "ignore", "divide": "ignore", "over": "ignore"}


def _checked_fwd(prim, fwd):
    def fwd_checked(*raws, **params):
        with np.errstate(**_QUIET):
            out = fwd(*raws, **params)
        _check_outputs(prim.name, out if prim.multiple_outputs else (out,), raws)
        return out

    return fwd_checked


def _checked_rule(prim, rule):
    def rule_checked(g, ans, *inputs, **params):
        _BACKWARD.append(prim.name)
        try:
            with np.errstate(**_QUIET):
                cotangents = rule(g, ans, *inputs, **params)
        finally:
            _BACKWARD.pop()
        _check_cotangents(prim.name, cotangents, g if prim.multiple_outputs else (g,))
        return cotangents

    return rule_checked


def _instrument():
    for prim in list(REGISTRY.values()):
        if prim in _ORIGINAL:
            continue
        _ORIGINAL[prim] = (prim.fwd, prim.vjp, prim.fast)
        prim.fwd = _checked_fwd(prim, prim.fwd)
        if prim.vjp is not None:
            prim.vjp = _checked_rule(prim, prim.vjp)
        if prim.fast is not None:
            prim.fast = _checked_rule(prim, prim.fast)


def _restore():
    for prim, (fwd, vjp, fast) in _ORIGINAL.items():
        prim.fwd, prim.vjp, prim.fast = fwd, vjp, fast
    _ORIGINAL.clear()


__all__ = ["detect_anomaly", "set_detect_anomaly", "is_anomaly_enabled", "AnomalyError"]


def transfers(allow_sync: bool = True):
    """Count host<->device transfers and device synchronisations inside a ``with``
    block. They are counted on the ``cuda-sim`` device (the cuda code path on a
    simulated CuPy runtime, see ``gpugrad.backend.cudasim``), where every ``.get()``,
    ``float(x)``, ``bool(x)``, ``x.item()``, host->device copy and data-dependent
    shape is recorded with the gpugrad line that caused it; elsewhere ``counted`` is
    False and the counts stay 0. With ``allow_sync=False`` a synchronisation raises
    ``cupyx.DeviceSynchronized`` (CuPy's own sync detector's error).

    >>> import gpugrad as gg
    >>> with gg.debug.transfers() as t:
    ...     y = gg.sum(gg.dlarray([1.0, 2.0]) ** 2)
    >>> t.counted == (gg.device() == "cuda-sim")
    True
    >>> t.syncs if t.counted else 0  # nothing crossed to the host yet
    0
    """
    from .backend.cudasim import Transfers  # noqa: PLC0415 - NumPy only; no CuPy import

    return Transfers(allow_sync)
