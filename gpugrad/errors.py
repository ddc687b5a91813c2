"""Exception types raised by gpugrad."""

from __future__ import annotations

from .backend import DeviceError


class TraceError(RuntimeError):
    """Misuse of tracing: differentiating outside a trace, an untraced or non-scalar
    value, a released trace, a gradient of a gradient without higher derivatives."""


class CheckpointError(RuntimeError):
    """A recomputed (checkpointed) function did not reproduce its first run."""


__all__ = ["TraceError", "CheckpointError", "DeviceError"]
