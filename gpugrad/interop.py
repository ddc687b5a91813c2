"""Exchanging arrays with other libraries: DLPack in (``gg.from_dlpack``) and out
(``dlarray.__dlpack__``), zero-copy wherever the device allows.

>>> import numpy as np, gpugrad as gg
>>> a = np.arange(3.0)
>>> x = gg.from_dlpack(a)          # shares a's memory (as torch.from_dlpack does)
>>> b = np.from_dlpack(x)          # and back, still the same memory
>>> bool(np.shares_memory(a, b))
True
"""

from __future__ import annotations

import numpy as np

from . import backend
from .array import _normalize_dtype, dlarray
from .ops.core import make

__all__ = ["from_dlpack"]

# DLPack device types (dlpack.h): kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13
_CPU, _CUDA, _CUDA_HOST, _CUDA_MANAGED = 1, 2, 3, 13


def from_dlpack(obj, fmt=None):
    """A dlarray viewing the memory of ``obj``, any object with ``__dlpack__`` (a
    PyTorch/JAX/CuPy/NumPy array, or another library's tensor), on the active device.

    Zero-copy when ``obj`` lives where the active device keeps its arrays (host memory
    on ``cpu``/``emu``, the GPU on ``cuda``) and its dtype is kept (float, complex,
    bool); otherwise one copy is made: across devices, and for integer data, which
    becomes float64 as in ``gg.dlarray``. As with ``torch.from_dlpack``, writing into
    one side is seen by the other; use ``gg.dlarray(obj)`` for a copy.
    """
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(
            f"from_dlpack: expected an object with __dlpack__ (a PyTorch, JAX, CuPy or NumPy "
            f"array), got {type(obj).__name__}"
        )
    kind = obj.__dlpack_device__()[0] if hasattr(obj, "__dlpack_device__") else _CPU
    on_gpu = kind in (_CUDA, _CUDA_MANAGED)
    if backend.is_cuda():  # cuda and cuda-sim
        cp = backend.cupy_module()
        raw = cp.from_dlpack(obj) if on_gpu else cp.asarray(_host_view(obj))
    elif on_gpu:
        raw = _gpu_to_host(obj)
    else:
        raw = _host_view(obj)
    raw = _normalize_dtype(raw, None, "from_dlpack")
    out = make(raw)
    return dlarray(out, fmt, copy=False) if fmt else out


def _host_view(obj):
    try:
        return np.from_dlpack(obj)
    except (BufferError, TypeError, RuntimeError) as exc:
        raise TypeError(
            f"from_dlpack: cannot read {type(obj).__name__} on the host: {exc}"
        ) from exc


def _gpu_to_host(obj):
    """A host copy of a GPU tensor while the active device is cpu/emu."""
    for method in ("cpu", "get"):  # torch.Tensor.cpu(), cupy.ndarray.get()
        fn = getattr(obj, method, None)
        if callable(fn):
            host = fn()
            return host if isinstance(host, np.ndarray) else np.from_dlpack(host)
    raise TypeError(
        f"from_dlpack: {type(obj).__name__} lives on a GPU but gpugrad's active device is "
        f"{backend.device()!r}; move it to the host first or use GPUGRAD_DEVICE=cuda"
    )
