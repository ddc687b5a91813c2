"""What traces keep alive for the backward pass, counted by the engine.

Deterministic on every device (it counts the bytes of the arrays nodes save,
each array once, not the traced inputs the caller holds anyway), so tests and
benchmarks can compare schedules exactly. On ``cuda`` ``device_peak_bytes`` adds
CuPy's memory-pool view.

>>> import gpugrad as gg
>>> with gg.memory.track() as m:
...     y = gg.dlfeval(lambda x: gg.sum(gg.exp(x)), gg.dlarray([1.0, 2.0]))
>>> m.peak_bytes
16
"""

from __future__ import annotations

from . import backend
from .tape import MEMORY


def saved_bytes() -> int:
    """Bytes saved for the backward pass right now.

    >>> import gpugrad as gg
    >>> with gg.autograd.record():
    ...     x = gg.dlarray([1.0, 2.0])
    ...     x.attach_grad()
    ...     y = gg.sum(gg.exp(x))  # exp keeps its output (16 bytes) for the backward pass
    ...     gg.memory.saved_bytes()
    16
    """
    return MEMORY.current


def saved_bytes_by_op() -> dict:
    """Bytes saved right now, by op name.

    >>> import gpugrad as gg
    >>> x = gg.dlarray([1.0, 2.0])
    >>> x.attach_grad()
    >>> with gg.autograd.record():
    ...     y = gg.sum(gg.exp(x))
    >>> gg.memory.saved_bytes_by_op()
    {'exp': 16}
    """
    return {k: v for k, v in MEMORY.by_op.items() if v}


class Tracker:
    """Peak saved bytes (in total and by op) while a ``track()`` block runs.

    >>> import gpugrad as gg
    >>> with gg.memory.track() as m:
    ...     g = gg.gradient(lambda x: gg.sum(gg.exp(x)))(gg.dlarray([1.0, 2.0]))
    >>> m.peak_bytes, m.by_op
    (16, {'exp': 16})
    """

    def __init__(self):
        self.start_bytes = MEMORY.current
        self.peak_bytes = MEMORY.current
        self.by_op = {k: v for k, v in MEMORY.by_op.items() if v}
        self.device_peak_bytes = None
        self._pool_start = None

    def _update(self, counter):
        if counter.current > self.peak_bytes:
            self.peak_bytes = counter.current
        by_op = self.by_op
        for op, v in counter.by_op.items():
            if v > by_op.get(op, 0):
                by_op[op] = v

    @property
    def end_bytes(self):
        return MEMORY.current

    def __enter__(self):
        MEMORY.trackers.append(self)
        if backend.is_cuda():  # cuda and cuda-sim
            pool = backend.cupy_module().get_default_memory_pool()
            self._pool_start = pool.used_bytes()
            self.device_peak_bytes = self._pool_start
        return self

    def __exit__(self, *exc):
        MEMORY.trackers.remove(self)
        if self._pool_start is not None:  # cuda and cuda-sim
            pool = backend.cupy_module().get_default_memory_pool()
            self.device_peak_bytes = max(self.device_peak_bytes, pool.total_bytes())
        return False

    def __repr__(self):
        return f"<memory.track peak_bytes={self.peak_bytes} by_op={self.by_op}>"


def track():
    """Context manager measuring the peak saved bytes inside the block.

    >>> import gpugrad as gg
    >>> with gg.memory.track() as m:
    ...     g = gg.gradient(lambda x: gg.sum(gg.exp(x) * gg.sin(x)))(gg.ones((4, 4)))
    >>> m.peak_bytes, sorted(m.by_op)  # exp(x) and sin(x), 128 bytes each
    (256, ['exp', 'multiply'])
    """
    return Tracker()


def _fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def report(tracker: Tracker | None = None) -> str:
    """A printable table of saved bytes by op (now, or the peaks of ``tracker``).

    >>> import gpugrad as gg
    >>> with gg.memory.track() as m:
    ...     g = gg.gradient(lambda x: gg.sum(gg.exp(x)))(gg.dlarray([1.0, 2.0]))
    >>> print(gg.memory.report(m))
    op                          peak saved bytes
    --------------------------------------------
    exp                                     16 B
    --------------------------------------------
    total                                   16 B
    """
    rows = tracker.by_op if tracker is not None else MEMORY.by_op
    title = "peak saved bytes" if tracker is not None else "saved bytes now"
    total = tracker.peak_bytes if tracker is not None else MEMORY.current
    lines = [f"{'op':<24}{title:>20}"]
    lines.append("-" * 44)
    for op, v in sorted(rows.items(), key=lambda kv: -kv[1]):
        if v:
            lines.append(f"{op:<24}{_fmt_bytes(v):>20}")
    lines.append("-" * 44)
    lines.append(f"{'total':<24}{_fmt_bytes(total):>20}")
    return "\n".join(lines)
