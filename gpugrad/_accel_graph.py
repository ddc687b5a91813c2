"""Graph capture of ``gg.dlaccelerate`` replays: a CUDA graph on ``cuda``, its emulator
twin on ``emu``.

After a trace has replayed once (its check passed, kernels compiled, buffers warm),
the accelerator captures the replay: on ``cuda`` into a CUDA graph
(``cupy.cuda.Stream.begin_capture``/``end_capture`` on a non-blocking stream, with a
private memory pool that holds every array the graph uses), so a later call is one
``graph.launch`` instead of one launch per kernel. One code path serves both devices;
only the small backend classes below differ:

* ``_CudaGraphs``: real stream capture. The replay's kernels are recorded, not run,
  so the call that captures launches the graph right after. Untested on a GPU here
  (written against CuPy 14's documented API).
* ``_EmuGraphs``: the emulator runs its kernels on the CPU and the NumPy work between
  them is host code that no graph could hold, so its "graph" is the list of kernel
  launches recorded during capture (``gpugrad.backend.kernels.LAUNCH_HOOK``). A launch
  of it runs the replay program again on the same static buffers and checks every
  kernel launch against that list (kernel, grid, block, shared memory, each array's
  shape and dtype, each scalar's value): a difference means a real CUDA graph would
  have frozen a value the host computed, and the graph is dropped (plain replay, with
  the reason). So the capture logic, the static input buffers and the launch
  accounting are exercised without a GPU.

What is captured, the same on both devices (else the entry keeps plain replay and
``graph_report()`` says why): a trace with no side effects on the host. Mutating host
calls (an optimizer's ``update`` keeps its step count and step size on the host),
write-backs into the arguments, and random draws (gpugrad draws on the host; they are
not staged into graphs) are refused. Capture the loss and gradient, and update outside.

Inputs: dlarrays passed as arguments (or in plain tuples, lists and dicts) are copied
into static buffers owned by the graph before each launch; arrays the function reaches
otherwise (Layer parameters, closures) are used in place, and a graph whose such array
was rebound to a new buffer is captured again. Outputs are copied out of the graph's
memory, so a later launch never changes what an earlier call returned.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from . import backend
from .array import dlarray
from .backend import kernels as _kernels
from .ops.core import make
from .tree import map_arrays

LOG = logging.getLogger("gpugrad.accelerate")


# True while a replay is being captured: code with a host synchronization that only
# skips work (e.g. ``bool(xp.any(g))`` before adding ``g``) does the work instead.
CAPTURING = False


def capturing():
    """Whether a graph capture is running (see ``CAPTURING``)."""
    return CAPTURING


class _Capturing:
    def __enter__(self):
        global CAPTURING
        self.previous, CAPTURING = CAPTURING, True

    def __exit__(self, *exc):
        global CAPTURING
        CAPTURING = self.previous
        return False


class GraphUnsupported(Exception):
    """The replay cannot be captured (the message is the reason)."""


class Stale(Exception):
    """An input the graph reads in place was rebound, or a launch differed: capture anew."""


# ------------------------------------------------------------------ launch records


def _arg_signature(a):
    if isinstance(a, np.ndarray) or backend.is_device_array(a):
        return ("array", tuple(a.shape), str(a.dtype))
    if isinstance(a, np.generic):
        return ("scalar", str(a.dtype), a.item())
    return ("scalar", type(a).__name__, a)


def launch_signature(name, grid, block, args, shared_mem):
    """What a captured graph fixes about one kernel launch."""
    return (
        name,
        tuple(grid),
        tuple(block),
        int(shared_mem),
        tuple(_arg_signature(a) for a in args),
    )


class LaunchCounter:
    """A ``LAUNCH_HOOK`` that counts launches (and, with ``keep``, records them)."""

    def __init__(self, keep=False):
        self.count = 0
        self.launches = [] if keep else None

    def __call__(self, name, grid, block, args, shared_mem):
        self.count += 1
        if self.launches is not None:
            self.launches.append(launch_signature(name, grid, block, args, shared_mem))


class _LaunchChecker:
    """A ``LAUNCH_HOOK`` comparing each launch with the captured list, in order."""

    def __init__(self, launches):
        self.launches = launches
        self.pos = 0
        self.problem = None

    def __call__(self, name, grid, block, args, shared_mem):
        got = launch_signature(name, grid, block, args, shared_mem)
        if self.problem is None:
            if self.pos >= len(self.launches):
                self.problem = f"launch {self.pos} ({name}) is not in the captured graph"
            elif got != self.launches[self.pos]:
                want = self.launches[self.pos]
                self.problem = (
                    f"launch {self.pos} differs from the captured one ({got[0]} "
                    f"{got[1:4]} {got[4]} against {want[0]} {want[1:4]} {want[4]}): a graph "
                    "would replay a value the host computed at capture"
                )
        self.pos += 1


class hooked:
    """Installs a ``LAUNCH_HOOK`` for a block (the previous one is put back)."""

    def __init__(self, hook):
        self.hook = hook

    def __enter__(self):
        self.previous = _kernels.LAUNCH_HOOK
        _kernels.LAUNCH_HOOK = self.hook
        return self.hook

    def __exit__(self, *exc):
        _kernels.LAUNCH_HOOK = self.previous
        return False


# ------------------------------------------------------------------ the backend seam


class _CudaGraphs:
    """Stream capture into a CUDA graph (CuPy), with a private memory pool."""

    device = "cuda"
    executes = False  # capture records the kernels without running them

    def capture(self, run):
        cp = backend.cupy_module()
        stream = cp.cuda.Stream(non_blocking=True)
        pool = cp.cuda.MemoryPool()  # private: no block the graph uses is handed out again
        current = cp.cuda.get_current_stream()
        stream.wait_event(current.record())  # the static inputs are written on `current`
        counter = LaunchCounter()
        graph = None
        error = None
        with cp.cuda.using_allocator(pool.malloc), stream, hooked(counter), _Capturing():
            stream.begin_capture()
            try:
                out = run()
            except Exception as exc:  # noqa: BLE001 - any failure: plain replay, with why
                error = exc
            finally:
                try:
                    graph = stream.end_capture()
                except Exception as exc:  # noqa: BLE001 - capture invalidated
                    error = error or exc
        if error is not None:
            raise GraphUnsupported(f"CUDA stream capture failed: {type(error).__name__}: {error}")
        graph.upload(stream)
        return _CudaGraph(graph, stream, pool, counter.count), out


class _CudaGraph:
    def __init__(self, graph, stream, pool, kernels):
        self.graph, self.stream, self.pool = graph, stream, pool
        self.kernels = kernels  # gpugrad's own kernels in it (CuPy's are not counted)

    def launch(self, run, out):
        cp = backend.cupy_module()
        current = cp.cuda.get_current_stream()
        self.stream.wait_event(current.record())  # after the input copies
        self.graph.launch(self.stream)
        current.wait_event(self.stream.record())  # the caller's next work sees the results
        return out  # the graph wrote into the arrays the capture returned


class _EmuGraphs:
    """The emulator's twin: the captured graph is the list of kernel launches."""

    device = "emu"
    executes = True  # the capture run computed this call's results

    def capture(self, run):
        counter = LaunchCounter(keep=True)
        with hooked(counter), _Capturing():
            out = run()
        return _EmuGraph(counter.launches), out


class _EmuGraph:
    def __init__(self, launches):
        self.launches = launches
        self.kernels = len(launches)

    def launch(self, run, out):
        checker = _LaunchChecker(self.launches)
        with hooked(checker):
            out = run()  # the host program between the kernels, on the static buffers
        if checker.problem is None and checker.pos != len(self.launches):
            checker.problem = (
                f"{checker.pos} launches against {len(self.launches)} in the captured graph"
            )
        if checker.problem is not None:
            raise GraphUnsupported(checker.problem)
        return out


def graph_backend():
    """The capture backend of the active device, or None (cpu: nothing to capture)."""
    dev = backend.device()
    if dev == "cuda":
        return _CudaGraphs()
    if dev == "emu":
        return _EmuGraphs()
    if dev == "cuda-sim":  # no stream capture simulated: the emulator's twin, on the cuda path
        twin = _EmuGraphs()
        twin.device = "cuda-sim"
        return twin
    return None


# ------------------------------------------------------------------ a captured entry


def _per_call_ids(args, kwargs):
    """ids of the dlarrays and raw arrays passed directly (or in plain containers)."""
    out = set()
    stack = [args, kwargs]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dlarray or isinstance(v, np.ndarray) or backend.is_device_array(v):
            out.add(id(v))
        elif t is tuple or t is list:
            stack.extend(v)
        elif t is dict:
            stack.extend(v.values())
    return out


def _copy_out(out):
    def copy(a):
        return make(a._data.copy(), a._fmt) if type(a) is dlarray else a.copy()

    t = type(out)
    if t is dlarray or isinstance(out, np.ndarray) or backend.is_device_array(out):
        return copy(out)
    if t is tuple:
        return tuple(_copy_out(x) for x in out)
    if t is list:
        return [_copy_out(x) for x in out]
    if t is dict:
        return {k: _copy_out(x) for k, x in out.items()}
    if hasattr(out, "__gg_flatten__") and not isinstance(out, type):
        return map_arrays(copy, out)
    return out


class Captured:
    """A trace captured as a graph: static inputs, the graph, its launch count."""

    def __init__(self, entry, objs, args, kwargs, seam):
        reasons = list(entry.host_state)
        if entry.mutates and not reasons:
            reasons.append("the function writes into its arguments")
        if re.search(r"\bo\d+\b", entry.source.rstrip().rsplit("\n", 1)[-1]):
            reasons.append("the function returns one of its arguments")
        if reasons:
            raise GraphUnsupported(
                "; ".join(dict.fromkeys(reasons)) + " (a graph would not repeat that)"
            )
        per_call = _per_call_ids(args, kwargs)
        xp = backend.xp()
        self.copies = []  # (position in objs, static buffer): copied in before each launch
        self.in_place = []  # (position, raw array): read in place, must not be rebound
        static_objs = list(objs)
        for i, o in enumerate(objs):
            if type(o) is dlarray:
                if id(o) in per_call:
                    buf = xp.empty_like(o._data)
                    buf[...] = o._data
                    static_objs[i] = make(buf, o._fmt)
                    self.copies.append((i, buf))
                else:
                    self.in_place.append((i, o._data))
                if o._grad is not None:
                    raise GraphUnsupported("an input carries an MXNet gradient buffer (.grad)")
            elif isinstance(o, np.ndarray) or backend.is_device_array(o):
                # a host array (e.g. labels) keeps a host buffer: CuPy refuses a host operand
                buf = (np if isinstance(o, np.ndarray) else xp).empty_like(o)
                buf[...] = o
                static_objs[i] = buf
                self.copies.append((i, buf))
        self.live = [(d, d._data) for d in entry.live_used]  # closures read in place
        self.static_objs = static_objs
        fn = entry.fn
        self.run = lambda: fn(static_objs)
        self.graph, self.out = seam.capture(self.run)
        self.executed = seam.executes
        self.kernels = self.graph.kernels
        self.launches = 0

    def first(self, objs):
        """The results of the call that captured: the capture's own on emu (it ran the
        kernels), one launch on cuda (capture only recorded them)."""
        if not self.executed:
            return self.launch(objs)
        self.launches += 1
        return _copy_out(self.out)

    def launch(self, objs):
        for i, raw in self.in_place:
            if objs[i]._data is not raw:
                raise Stale
        for d, raw in self.live:
            if d._data is not raw:
                raise Stale
        for i, buf in self.copies:
            o = objs[i]
            buf[...] = o._data if type(o) is dlarray else o
        out = self.graph.launch(self.run, self.out)
        self.launches += 1
        return _copy_out(out)


class NoGraph:
    """An entry whose replay is not captured, and why."""

    kernels = 0
    launches = 0

    def __init__(self, reason):
        self.reason = reason


def capture(entry, objs, args, kwargs):
    """A ``Captured`` graph of ``entry`` on the active device, or a ``NoGraph``."""
    seam = graph_backend()
    if seam is None:
        return NoGraph("the cpu device has no kernel launches to capture")
    try:
        return Captured(entry, objs, args, kwargs, seam)
    except GraphUnsupported as exc:
        LOG.info("dlaccelerate: no %s graph, plain replay: %s", seam.device, exc)
        return NoGraph(str(exc))
