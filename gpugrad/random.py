"""The library's random state, seeded by ``gg.random.seed``.

One NumPy generator on the host for every device (draws are copied to the GPU on
``cuda``): its state can be captured and restored exactly with ``get_state()`` /
``set_state()``, which checkpointing uses to replay dropout masks and other
draws during recomputation. (CuPy's generators cannot snapshot their state.)
"""

from __future__ import annotations

import numpy as np

from . import _defaults, backend
from .ops.core import make

_state = {"gen": None}


def _generator():
    if _state["gen"] is None:
        seed(None)
    return _state["gen"]


def seed(n=None):
    """Seed the random state (``None``: fresh entropy).

    >>> import gpugrad as gg
    >>> gg.random.seed(0); a = gg.random.normal(shape=(2,)).numpy()
    >>> gg.random.seed(0); b = gg.random.normal(shape=(2,)).numpy()
    >>> bool((a == b).all())
    True
    """
    _state["gen"] = np.random.Generator(np.random.PCG64(n))


def get_state():
    """An opaque snapshot of the random state (for exact replay)."""
    return _generator().bit_generator.state


def set_state(snapshot):
    """Restore a snapshot taken by :func:`get_state`."""
    _generator().bit_generator.state = snapshot


def _shape(shape, size):
    shape = size if shape is None else shape
    if shape is None:
        return ()
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


def _cast(raw, dtype):
    dt = _defaults.resolve(dtype)  # the default dtype (gg.set_default_dtype) when None
    return _on_device(raw.astype(dt, copy=False))


def _on_device(raw):
    return backend.xp().asarray(raw) if backend.device() == "cuda" else raw


def normal(loc=0.0, scale=1.0, shape=None, dtype=None, size=None):
    """Normally distributed values (a dlarray on the active device)."""
    return make(_cast(_generator().normal(loc, scale, _shape(shape, size)), dtype))


def uniform(low=0.0, high=1.0, shape=None, dtype=None, size=None):
    """Uniformly distributed values in ``[low, high)``."""
    return make(_cast(_generator().uniform(low, high, _shape(shape, size)), dtype))


def randint(low, high=None, shape=None, size=None):
    """Random integers in ``[low, high)`` (stored as float64, as MATLAB does)."""
    return make(
        _on_device(_generator().integers(low, high, _shape(shape, size)).astype(np.float64))
    )


def permutation(n):
    """A random permutation of ``range(n)`` as a NumPy/CuPy integer array."""
    return _on_device(_generator().permutation(n))


def raw_uniform(shape, dtype):
    """Raw uniform draws (for dropout masks); advances the same state."""
    return _on_device(_generator().random(_shape(shape, None)).astype(dtype, copy=False))
