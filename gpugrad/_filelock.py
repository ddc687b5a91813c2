"""One builder per cached file across processes.

The compile caches (cubins in ``gpugrad.backend.sass``, emulator libraries in
``gpugrad.backend.emu``) are shared by every process that uses the same cache folder:
pytest-xdist workers, the cuda-sim and emu child runs of the test suite, the profiler.
Without a lock, processes that miss the cache at the same moment each compile the same
file (a cold ``matmul.cu`` is about a minute of one core per compiler and
architecture). :func:`build_once` makes the later ones wait for the first and then read
its result.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> calls = []
>>> def build(path):
...     calls.append(path)
...     target.write_text("built")
>>> build_once(target, build); build_once(target, build)
>>> len(calls), target.read_text()
(1, 'built')
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock; concurrent builds stay correct
    fcntl = None  # (every build writes a temporary file and renames it into place)


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold an exclusive lock on the file ``path`` (created if absent) while inside."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def build_once(target: Path, build, *, ready=None) -> None:
    """Call ``build(target)`` unless ``ready()`` (default: ``target`` exists) is already
    true; a process that finds another one building the same target waits for it and
    then skips its own build. ``build`` must leave the target complete or absent (write
    a temporary file and rename it)."""
    target = Path(target)
    ready = ready or target.exists
    if ready():
        return
    with exclusive(target.with_name(target.name + ".lock")):
        if not ready():
            build(target)
