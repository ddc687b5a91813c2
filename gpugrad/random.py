"""The library's random state: one generator per device, seeded by ``gg.random.seed``.

``get_state()`` / ``set_state()`` capture and restore it exactly; checkpointing
uses them to replay dropout masks and other draws during recomputation.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .ops.core import make

_state = {"gen": None, "key": None}


def _generator():
    dev = backend.device()
    if _state["gen"] is None or _state["key"] != dev:
        seed(None if _state["gen"] is None else 0)
    return _state["gen"]


def seed(n=None):
    """Seed the random state (``None``: fresh entropy).

    >>> import gpugrad as gg
    >>> gg.random.seed(0); a = gg.random.normal(shape=(2,)).numpy()
    >>> gg.random.seed(0); b = gg.random.normal(shape=(2,)).numpy()
    >>> bool((a == b).all())
    True
    """
    dev = backend.device()
    if dev == "cuda":
        cp = backend.cupy_module()
        _state["gen"] = cp.random.Generator(cp.random.XORWOW(n))  # pragma: no cover - GPU only
    else:
        _state["gen"] = np.random.Generator(np.random.PCG64(n))
    _state["key"] = dev


def get_state():
    """An opaque snapshot of the random state (for exact replay)."""
    gen = _generator()
    bg = gen.bit_generator
    return (_state["key"], bg.state if hasattr(bg, "state") else bg)


def set_state(snapshot):
    """Restore a snapshot taken by :func:`get_state`."""
    key, st = snapshot
    gen = _generator()
    gen.bit_generator.state = st
    _state["key"] = key


def _shape(shape, size):
    shape = size if shape is None else shape
    if shape is None:
        return ()
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


def _cast(raw, dtype):
    dt = np.dtype(dtype or np.float64)
    return raw.astype(dt, copy=False)


def normal(loc=0.0, scale=1.0, shape=None, dtype=None, size=None):
    """Normally distributed values (a dlarray on the active device)."""
    return make(_cast(_generator().normal(loc, scale, _shape(shape, size)), dtype))


def uniform(low=0.0, high=1.0, shape=None, dtype=None, size=None):
    """Uniformly distributed values in ``[low, high)``."""
    return make(_cast(_generator().uniform(low, high, _shape(shape, size)), dtype))


def randint(low, high=None, shape=None, size=None):
    """Random integers in ``[low, high)`` (stored as float64, as MATLAB does)."""
    return make(_generator().integers(low, high, _shape(shape, size)).astype(np.float64))


def permutation(n):
    """A random permutation of ``range(n)`` as a NumPy/CuPy integer array."""
    return _generator().permutation(n)


def raw_uniform(shape, dtype):
    """Raw uniform draws (for dropout masks); advances the same state."""
    return _generator().random(_shape(shape, None)).astype(dtype, copy=False)
