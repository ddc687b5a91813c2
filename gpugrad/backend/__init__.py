"""Device choice, the ``xp`` array namespace and where the kernel sources live.

This is the only module that imports CuPy. Everything else asks ``xp()`` for the
array namespace of the active device (NumPy on ``cpu`` and ``emu``, CuPy on
``cuda``) and writes its array code once against it.

Devices:
  ``cpu``  NumPy; heavy ops use NumPy/BLAS.
  ``cuda`` CuPy on a working GPU; heavy ops launch the hand-written kernels.
  ``emu``  NumPy arrays; heavy ops launch the same kernels through the CPU
           emulator of the CUDA execution model (for testing kernels without a GPU).
  ``cuda-sim``  the ``cuda`` code path without a GPU: ``xp`` is a CuPy-faithful
           façade (``gpugrad.backend.cudasim``) whose device arrays refuse implicit
           host conversion; kernels launch through a ``RawModule``-shaped loader with
           the emulator behind it; transfers and syncs are counted.

``GPUGRAD_DEVICE=cpu|cuda|emu|cuda-sim`` forces a device; by default ``cuda`` when
CuPy finds a GPU, else ``cpu`` with one log line saying why.

Internally ``cuda-sim`` *is* ``cuda`` (``is_cuda()`` is true, every cuda branch is
taken); only ``device()`` names it ``"cuda-sim"``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy

log = logging.getLogger("gpugrad")

DEVICES = ("cpu", "cuda", "emu", "cuda-sim")

_state = {"device": None, "xp": numpy, "cupy": None, "why": "", "name": None, "cupyx": None}


class DeviceError(RuntimeError):
    """The requested device is not usable here, or arrays from two devices were mixed."""


def _probe_cupy():
    """Return (cupy module or None, reason string)."""
    try:
        import cupy  # the one place CuPy is imported
    except ImportError:
        return None, "CuPy is not installed (pip install 'gpugrad[cuda12]' for GPU support)"
    except Exception as exc:  # a broken CuPy install must not break `import gpugrad`
        return None, f"CuPy failed to import ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"CuPy is installed but no usable GPU was found ({msg})"
    if count < 1:
        return None, "CuPy is installed but reports no GPU"
    return cupy, f"CuPy found {count} GPU(s)"


def _select(requested: str | None) -> None:
    if requested is not None:
        requested = requested.strip().lower()
        if requested not in DEVICES:
            raise DeviceError(
                f"GPUGRAD_DEVICE={requested!r} is not a device; expected one of {', '.join(DEVICES)}"
            )
    _state.update(name=None, cupyx=None)
    if requested in ("cpu", "emu"):
        _state.update(device=requested, xp=numpy, cupy=None, why=f"GPUGRAD_DEVICE={requested}")
        return
    if requested == "cuda-sim":
        try:
            from . import cudasim

            sim = cudasim.namespace()
        except ImportError as exc:
            raise DeviceError(
                "GPUGRAD_DEVICE=cuda-sim needs CuPy installed (its namespace is the "
                f"reference the simulation checks against): {exc}; pip install cupy-cuda12x"
            ) from exc
        _state.update(
            device="cuda",
            name="cuda-sim",
            xp=sim,
            cupy=sim,
            cupyx=cudasim.cupyx_namespace(),
            why="GPUGRAD_DEVICE=cuda-sim (simulated CuPy runtime, kernels on the CPU emulator)",
        )
        return
    cupy, why = _probe_cupy()
    if requested == "cuda":
        if cupy is None:
            raise DeviceError(f"GPUGRAD_DEVICE=cuda but {why}; unset it or use cpu/emu")
        _state.update(device="cuda", xp=cupy, cupy=cupy, why=why)
        return
    if cupy is not None:
        _state.update(device="cuda", xp=cupy, cupy=cupy, why=why)
        log.info("gpugrad: using device 'cuda': %s", why)
    else:
        _state.update(device="cpu", xp=numpy, cupy=None, why=why)
        # why: import is quiet (info level, not a warning on every import): a machine
        # with the cuda12 extra but no GPU is an ordinary setup; gg.device_reason()
        # and `python -m gpugrad info` say why
        log.info("gpugrad: using device 'cpu': %s", why)


def device() -> str:
    """The active device: ``"cuda"``, ``"cpu"``, ``"emu"`` or ``"cuda-sim"``.

    >>> import gpugrad as gg
    >>> gg.device() in ("cpu", "cuda", "emu", "cuda-sim")
    True
    """
    if _state["device"] is None:
        _select(os.environ.get("GPUGRAD_DEVICE"))
    return _state["name"] or _state["device"]


def is_cuda() -> bool:
    """True when the ``cuda`` code path runs: on ``cuda`` and on ``cuda-sim``. Branch
    on this, not on ``device() == "cuda"``."""
    if _state["device"] is None:
        device()
    return _state["device"] == "cuda"


def set_device(name: str) -> None:
    """Switch the active device (``cpu``, ``emu``, ``cuda`` or ``cuda-sim``). Mostly for
    tests."""
    _select(name)


def cupyx_module():
    """The ``cupyx`` module on the cuda path (the simulated one on ``cuda-sim``), else
    ``None``."""
    if not is_cuda():
        return None
    if _state["cupyx"] is None:
        import cupyx  # noqa: PLC0415 - only on a real GPU

        _state["cupyx"] = cupyx
    return _state["cupyx"]


def device_reason() -> str:
    """Why the active device was chosen: ``GPUGRAD_DEVICE``, the GPUs CuPy found, or
    why CuPy could not be used (not installed, no driver, no GPU).

    >>> import gpugrad as gg
    >>> isinstance(gg.device_reason(), str) and gg.device_reason() != ""
    True
    """
    device()
    return _state["why"]


def xp():
    """The array namespace of the active device (``numpy`` or ``cupy``)."""
    if _state["device"] is None:
        device()
    return _state["xp"]


def cupy_module():
    """The CuPy module when the active device is ``cuda`` (the simulated one on
    ``cuda-sim``), else ``None``."""
    device()
    return _state["cupy"]


def is_device_array(a) -> bool:
    """True for a CuPy ndarray (without importing CuPy when it is not in use)."""
    cp = _state["cupy"]
    if cp is not None:
        return isinstance(a, cp.ndarray)
    mod = type(a).__module__
    return mod.startswith("cupy") or mod == "gpugrad.backend.cudasim"


def array_device(a) -> str:
    """``'cuda'`` (``'cuda-sim'`` on the simulation) for a CuPy array, ``'host'`` for
    anything else."""
    return (_state["name"] or "cuda") if is_device_array(a) else "host"


def device_for_host() -> str:
    """Device name for a host (NumPy) array: ``'emu'`` under the emulator, else ``'cpu'``."""
    return "emu" if device() == "emu" else "cpu"


def to_host(a):
    """A NumPy copy of a NumPy or CuPy array."""
    if is_device_array(a):
        return a.get()
    return numpy.asarray(a)


def kernel_dir() -> Path:
    """Folder with the ``*.cu`` kernel sources and ``emu/``.

    In an installed wheel they are packaged as ``gpugrad/_kernels``; in a source
    checkout (editable install) they are the repository's ``kernels/`` folder.
    """
    here = Path(__file__).resolve().parent.parent
    packaged = here / "_kernels"
    if packaged.is_dir():
        return packaged
    source = here.parent / "kernels"
    if source.is_dir():
        return source
    raise FileNotFoundError(
        f"gpugrad kernel sources not found (looked in {packaged} and {source}); reinstall gpugrad"
    )


def cache_dir() -> Path:
    """Where compiled artefacts (emulator libraries) are cached: ``$GPUGRAD_CACHE_DIR`` or
    ``~/.cache/gpugrad``."""
    root = os.environ.get("GPUGRAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpugrad"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
