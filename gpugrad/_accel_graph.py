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

What is captured, the same on both devices: the whole trace, a training step included.
Host calls with effects a graph could not repeat are *staged* (``StagedCall``; each is
replaced in the graph's program by a ``_Slot``):

* an in-place update (``host_call(mutates=True)``: an optimizer's ``update``,
  ``sgdmupdate``/``adamupdate``, BatchNorm's running statistics) is split by its
  function's ``__gg_graph__`` into host work run before each launch (step counts,
  schedules, bias corrections: the numbers the update needs, written into a small
  static float64 buffer) and the in-place device work, captured in the graph, which
  reads every number from that buffer, so no launch replays a number the host computed
  for an earlier one; parameters and optimizer state are static buffers updated in
  place (a rebound one, or a changed setting that picks another code path, captures
  anew);
* a random draw (gpugrad draws on the host) runs before each launch, in program order,
  so the generator advances exactly as in eager execution (same seed, same numbers),
  and its values are copied into a static buffer the graph reads.

Not captured (the entry keeps plain replay and ``graph_report()`` says why): an
in-place update without a ``__gg_graph__`` split (e.g. ``DataParallel``'s reducer, a
``host_call(mutates=True)`` of one's own), a draw whose parameters are computed in the call, a
draw inside a primitive, collectives, and write-backs that rebind an argument's array.

Inputs: dlarrays passed as arguments (or in plain tuples, lists and dicts) are copied
into static buffers owned by the graph before each launch; arrays the function reaches
otherwise (Layer parameters, closures) are used in place, and a graph whose such array
was rebound to a new buffer is captured again. An argument an update writes in place
(``sgdmupdate``'s velocity) is copied back into the caller's array after each launch.
Outputs are copied out of the graph's memory, so a later launch never changes what an
earlier call returned; an argument the function returns is the caller's object.

On ``emu`` the staged updates' device work is NumPy code, which runs on the host at
every launch like all code between the kernels: the twin tests the staging (order of
the host work, static buffers, copies back, bitwise equality with eager execution), and
the rule that the device work reads its numbers only from the staged buffer is kept by
the graph steps' structure (``gpugrad/optim.py``, "graph steps").
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
            # the host ran every kernel for real: this call's results stand (args[1])
            raise GraphUnsupported(checker.problem, out)
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


# ------------------------------------------------------------------ staged host calls


def _spec(out):
    """What a staged draw returns, without its values: ``("dl", shape, dtype, fmt)``,
    ``("raw", shape, dtype)``, ``("none",)`` (``gg.random.seed``), a tuple of specs, or
    None (not stageable)."""
    t = type(out)
    if out is None:
        return ("none",)
    if t is dlarray:
        return ("dl", tuple(out._data.shape), out._data.dtype, out._fmt)
    if isinstance(out, np.ndarray) or backend.is_device_array(out):
        return ("raw", tuple(out.shape), out.dtype)
    if t is tuple:
        inner = tuple(_spec(x) for x in out)
        return None if any(x is None for x in inner) else ("tuple", inner)
    return None


class StagedCall:
    """A host call of a trace that a graph must stage (recorded by the tracer): a random
    draw, or an in-place update (``host_call(mutates=True)``)."""

    def __init__(self, line, name, fn, mutates, drew, out):
        self.line = line  # index in the trace's lines (``at`` makes it a source line)
        self.name = name  # the constant naming ``fn`` in the replay's source
        self.fn = fn
        self.mutates = mutates
        self.drew = drew
        self.spec = _spec(out)

    def at(self, offset):
        self.line += offset
        return self

    def qualname(self):
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)


class Scalars:
    """The staged numbers of one graph step, read as ``scalars(i, dtype)``: number ``i``
    cast to ``dtype`` (a device scalar on cuda, read when the graph runs). A Python
    float meeting an array acts in that array's dtype, so casting each number to the
    dtype of the array it meets keeps a staged update bitwise equal to the eager one."""

    def __init__(self, staged):
        self.staged = staged
        self.cast = {}

    def __call__(self, i, dtype):
        c = self.cast.get(dtype)
        if c is None:
            c = self.cast[dtype] = self.staged.astype(dtype)
        return c[i]


def _upload(buf, values):
    """Write host values into a device buffer (before a launch, outside the graph)."""
    if isinstance(buf, np.ndarray):
        buf[...] = values
    else:
        buf.set(np.asarray(values, dtype=buf.dtype))


class _Draw:
    """A staged random draw: the draw itself runs on the host before each launch, in
    program order (so the generator advances as in eager execution), and its values
    are copied into static buffers that the graph reads."""

    writes = ()

    def __init__(self, call, args, kwargs):
        self.fn, self.args, self.kwargs = call.fn, args, kwargs
        xp = backend.xp()
        self.buffers = []

        def build(spec):
            if spec[0] == "none":
                return None
            if spec[0] == "tuple":
                return tuple(build(x) for x in spec[1])
            buf = xp.empty(spec[1], spec[2])
            self.buffers.append(buf)
            return make(buf, spec[3]) if spec[0] == "dl" else buf

        self.out = build(call.spec)

    def host(self):
        raws = []

        def visit(v):
            if type(v) is tuple:
                for x in v:
                    visit(x)
            elif v is not None:
                raws.append(v._data if type(v) is dlarray else v)

        visit(self.fn(*self.args, **self.kwargs))
        for buf, raw in zip(self.buffers, raws):
            buf[...] = raw  # on cuda a device copy before the launch
        return None

    def check(self):
        return True

    def device(self, staged, *args, **kwargs):
        return self.out


_DYNAMIC = re.compile(r"\b[socg]\d+\b")


class _Slot:
    """Stands in a graph's program for one staged host call (``_G<i>`` in its source).

    On its first call (the capture run) it builds the call's *graph step*: for a random
    draw ``_Draw``; for an in-place update the function's ``__gg_graph__(*args,
    **kwargs)`` split (see ``gpugrad/optim.py``), an object with ``scalars`` (how many
    numbers the host work gives), ``host()`` (the host work of one call: step counters,
    schedules, bias corrections; the numbers the device work needs), ``device(staged,
    *args, **kwargs)`` (the in-place work, reading every number from ``staged``, a
    float64 device vector filled from ``host()`` before each launch), ``check()`` (False
    when a setting that decides its code path, or a state buffer, changed since
    capture) and ``writes`` (the arrays it updates in place)."""

    def __init__(self, call, executes):
        self.call = call
        self.executes = executes
        self.step = None
        self.staged = None
        self.failed = None  # why its graph step could not be built (emu: it ran plainly)

    def __call__(self, *args, **kwargs):
        if self.step is None:  # the capture run
            call = self.call
            try:
                if call.mutates:
                    step = call.fn.__gg_graph__(*args, **kwargs)
                else:
                    step = _Draw(call, args, kwargs)
            except GraphUnsupported as exc:
                if not self.executes:
                    raise  # cuda: nothing ran yet; plain replay follows
                # emu: earlier staged calls ran; finish this run as a plain replay would
                self.failed = str(exc)
                return call.fn(*args, **kwargs)
            self.step = step
            n = getattr(step, "scalars", 0)
            # why empty, not zeros: on cuda a memset made during capture would be a node of
            # the graph and wipe the numbers staged before each launch
            self.staged = backend.xp().empty(n, np.float64) if n else None
            if self.executes:  # emu: the capture run computes this call's results
                self.stage()
        return self.step.device(self.staged, *args, **kwargs)

    def stage(self):
        values = self.step.host()
        if self.staged is not None:
            _upload(self.staged, values)

    def writes(self):
        return [id(a) for a in getattr(self.step, "writes", ())]


def _staging_reasons(entry):
    """Why the trace's staged host calls cannot be staged (empty: all can)."""
    out = []
    lines = entry.source.split("\n")
    for call in entry.staged:
        line = lines[call.line]
        if f"= {call.name}(" not in line:
            out.append(f"{call.qualname()} is not a plain call in the replay")
        elif call.mutates:
            if call.drew:
                out.append(f"a random draw in {call.qualname()}, which also changes state")
            elif getattr(call.fn, "__gg_graph__", None) is None:
                out.append(
                    f"{call.qualname()} changes state (mutates=True) and has no graph "
                    "split (__gg_graph__)"
                )
        elif call.spec is None:
            out.append(f"a random draw in {call.qualname()} returns no arrays to stage")
        elif _DYNAMIC.search(line.split(f"= {call.name}(", 1)[1]):
            out.append(f"a random draw in {call.qualname()} depends on values computed in the call")
    return out


def _graph_program(entry, slots):
    """The replay's source with each staged call replaced by its slot."""
    lines = entry.source.split("\n")
    ns = dict(entry.fn.__globals__)
    for i, (call, slot) in enumerate(zip(entry.staged, slots)):
        lines[call.line] = lines[call.line].replace(f"= {call.name}(", f"= _G{i}(", 1)
        ns[f"_G{i}"] = slot
    exec(compile("\n".join(lines), "<dlaccelerate graph>", "exec"), ns)
    return ns["_replay"]


# ------------------------------------------------------------------ a captured entry

_WRITE_BACK = re.compile(r"^\s+o\d+\._(data|grad|fmt) = ", re.M)


def _per_call_ids(args, kwargs):
    """ids of the dlarrays, raw arrays and plain containers passed directly (or in
    plain containers)."""
    out = set()
    stack = [args, kwargs]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dlarray or isinstance(v, np.ndarray) or backend.is_device_array(v):
            out.add(id(v))
        elif t is tuple or t is list:
            out.add(id(v))
            stack.extend(v)
        elif t is dict:
            out.add(id(v))
            stack.extend(v.values())
    return out


def _copy_out(out, back, objs):
    """The caller's view of a launch's outputs: arrays copied out of the graph's
    memory, the graph's static inputs mapped back to the caller's objects."""
    i = back.get(id(out))
    if i is not None:
        return objs[i]
    t = type(out)
    if t is dlarray:
        return make(out._data.copy(), out._fmt)
    if isinstance(out, np.ndarray) or backend.is_device_array(out):
        return out.copy()
    if t is tuple:
        return tuple(_copy_out(x, back, objs) for x in out)
    if t is list:
        return [_copy_out(x, back, objs) for x in out]
    if t is dict:
        return {k: _copy_out(x, back, objs) for k, x in out.items()}
    if hasattr(out, "__gg_flatten__") and not isinstance(out, type):
        return map_arrays(lambda a: _copy_out(a, back, objs), out)
    return out


class Captured:
    """A trace captured as a graph: static inputs, staged host calls, the graph, its
    launch count."""

    def __init__(self, entry, objs, args, kwargs, seam):
        reasons = list(entry.host_state) + _staging_reasons(entry)
        if _WRITE_BACK.search(entry.source):
            reasons.append("the function rebinds the arrays of its arguments")
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
        # per-call containers hold the static inputs (children follow their container)
        static_of = {id(o): s for o, s in zip(objs, static_objs)}
        for i in range(len(objs) - 1, -1, -1):
            o = objs[i]
            if id(o) in per_call and type(o) in (tuple, list, dict):
                if type(o) is dict:
                    s = {k: static_of.get(id(v), v) for k, v in o.items()}
                else:
                    s = type(o)(static_of.get(id(v), v) for v in o)
                static_objs[i] = static_of[id(o)] = s
        self.back = {id(s): i for i, s in enumerate(static_objs)}
        self.live = [(d, d._data) for d in entry.live_used]  # closures read in place
        self.static_objs = static_objs
        self.slots = [_Slot(call, seam.executes) for call in entry.staged]
        fn = _graph_program(entry, self.slots) if self.slots else entry.fn
        self.run = lambda: fn(static_objs)
        self.graph, self.out = seam.capture(self.run)
        failed = [slot.failed for slot in self.slots if slot.failed]
        if failed:  # emu: the run finished as a plain replay; its results stand
            self.copy_back = self.copies
            raise GraphUnsupported("; ".join(failed), self._finish(self.out, objs))
        written = {w for slot in self.slots for w in slot.writes()}
        # static inputs an update wrote (sgdmupdate's velocity): copied back after a launch
        self.copy_back = [(i, buf) for i, buf in self.copies if id(buf) in written]
        self.executed = seam.executes
        self.kernels = self.graph.kernels
        self.launches = 0

    def first(self, objs):
        """The results of the call that captured: the capture's own on emu (it ran the
        kernels), one launch on cuda (capture only recorded them)."""
        if not self.executed:
            return self.launch(objs)
        self.launches += 1
        return self._finish(self.out, objs)

    def _finish(self, out, objs):
        for i, buf in self.copy_back:
            o = objs[i]
            (o._data if type(o) is dlarray else o)[...] = buf
        return _copy_out(out, self.back, objs)

    def launch(self, objs):
        for i, raw in self.in_place:
            if objs[i]._data is not raw:
                raise Stale
        for d, raw in self.live:
            if d._data is not raw:
                raise Stale
        for slot in self.slots:
            if not slot.step.check():
                raise Stale
        for i, buf in self.copies:
            o = objs[i]
            buf[...] = o._data if type(o) is dlarray else o
        for slot in self.slots:  # the host work of the staged calls, in program order
            slot.stage()
        try:
            out = self.graph.launch(self.run, self.out)
        except GraphUnsupported as exc:
            if len(exc.args) > 1:  # emu: the run computed this call's results anyway
                exc.result = self._finish(exc.args[1], objs)
            raise
        self.launches += 1
        return self._finish(out, objs)


class NoGraph:
    """An entry whose replay is not captured, and why (``ran``: the failed capture ran
    the call on emu, and ``result`` is its result)."""

    kernels = 0
    launches = 0

    def __init__(self, reason, ran=False, result=None):
        self.reason = reason
        self.ran = ran
        self.result = result


def capture(entry, objs, args, kwargs):
    """A ``Captured`` graph of ``entry`` on the active device, or a ``NoGraph``."""
    seam = graph_backend()
    if seam is None:
        return NoGraph("the cpu device has no kernel launches to capture")
    try:
        return Captured(entry, objs, args, kwargs, seam)
    except GraphUnsupported as exc:
        LOG.info("dlaccelerate: no %s graph, plain replay: %s", seam.device, exc.args[0])
        if len(exc.args) > 1:
            return NoGraph(exc.args[0], True, exc.args[1])
        return NoGraph(exc.args[0])
