"""Measured dispatch: which implementation runs a heavy op (hand kernel or vendor library).

For every call of a dispatched op (``matmul``, ``conv2d_fwd``, ``conv2d_bwd_data``,
``conv2d_bwd_filter`` in ``gpugrad.backend.kernels``) the op builds a list of
*candidates*: the hand-written kernel (always first), registered variants of it
(e.g. a TF32 tensor-core kernel, see ``register_variant``) and the vendor library
(cuBLAS through ``cupy.matmul``; cuDNN through ``cupyx.cudnn`` when the installed CuPy
has it), and the policy decides which one runs:

* ``"hand"``: always the hand-written kernel (the default on ``emu``, and what the
  test suite pins, so every hand kernel stays covered);
* ``"vendor"``: the vendor library where it is a candidate, else the hand kernel;
* ``"auto"`` (the default on ``cuda``): the first call of an (op, shape class, dtype,
  device) times every candidate (warm-up, then the median of a few synchronised runs,
  like cuDNN's benchmark mode), checks each result against the hand kernel's (a
  candidate that disagrees is rejected, with the error in the report), and runs the
  fastest from then on. Choices are cached on disk in
  ``gpugrad.backend.cache_dir()/"dispatch"``, one JSON file per device key (device
  name, driver, CUDA runtime and CuPy versions): another GPU, driver or CuPy never
  reuses them.

The policy comes from ``set_policy`` (``gg.kernels.set_policy``), else from
``$GPUGRAD_KERNEL_POLICY``, else the device default. ``report()``
(``gg.kernels.report()``) says which implementation ran how often per op and shape
class, and what ``auto`` chose and measured.

>>> from gpugrad.backend import dispatch
>>> d = dispatch.Dispatcher(cache_file=None)         # gpugrad uses default_dispatcher()
>>> hand = dispatch.Candidate("hand", "hand", lambda: 42.0)
>>> vendor = dispatch.Candidate("vendor", "vendor", lambda: 42.0)
>>> with dispatch.policy("vendor"):
...     d.run("demo_op", ("m", 64), "f32", [hand, vendor])
42.0
>>> d.report().counts["demo_op"]["m 64"]["f32"]
{'vendor': 1}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpugrad import backend

__all__ = [
    "ENV",
    "POLICIES",
    "Candidate",
    "Choice",
    "Dispatcher",
    "KernelReport",
    "bucket",
    "default_dispatcher",
    "get_policy",
    "policy",
    "register_report_section",
    "register_variant",
    "report",
    "reset_report",
    "run",
    "set_policy",
]

log = logging.getLogger("gpugrad")

POLICIES = ("hand", "vendor", "auto")
ENV = "GPUGRAD_KERNEL_POLICY"
CACHE_VERSION = 1

_policy_override: str | None = None
_lock = threading.RLock()


# --------------------------------------------------------------------------- policy


def _check_policy(value, where: str) -> str:
    if value not in POLICIES:
        raise ValueError(f"{where}: policy must be one of {POLICIES}, got {value!r}")
    return value


def get_policy() -> str:
    """The active policy: ``set_policy``'s, else ``$GPUGRAD_KERNEL_POLICY``, else
    ``"auto"`` on ``cuda`` and ``"hand"`` elsewhere (timing the emulator is meaningless
    and it has no vendor library).

    >>> from gpugrad.backend import dispatch
    >>> dispatch.get_policy() in dispatch.POLICIES
    True
    """
    if _policy_override is not None:
        return _policy_override
    env = os.environ.get(ENV, "").strip().lower()
    if env:
        return _check_policy(env, f"${ENV}")
    return "auto" if backend.device() == "cuda" else "hand"


def set_policy(value: str | None) -> None:
    """Choose ``"hand"``, ``"vendor"`` or ``"auto"`` for every dispatched op; ``None``
    goes back to ``$GPUGRAD_KERNEL_POLICY`` / the device default.

    >>> from gpugrad.backend import dispatch
    >>> dispatch.set_policy("vendor"); dispatch.get_policy()
    'vendor'
    >>> dispatch.set_policy(None)
    """
    global _policy_override
    _policy_override = None if value is None else _check_policy(value, "set_policy")


@contextlib.contextmanager
def policy(value: str):
    """Context manager: ``with dispatch.policy("hand"): ...`` restores the previous
    policy on exit."""
    global _policy_override
    previous = _policy_override
    set_policy(value)
    try:
        yield
    finally:
        _policy_override = previous


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One way to compute an op's result.

    ``name`` identifies it in reports and in the cache (``"hand"``, ``"hand-tf32"``,
    ``"vendor"``); ``kind`` is ``"hand"`` or ``"vendor"`` (what the ``vendor`` policy
    looks for); ``run()`` computes and returns the result; ``rtol`` is how far (relative
    to the largest magnitude of the hand result) its result may differ from the hand
    kernel's when ``auto`` validates it (``None``: 1e-3 for float32, 1e-9 for float64;
    a TF32 variant passes a looser one).
    """

    name: str
    kind: str
    run: Callable[[], Any]
    rtol: float | None = None


_variants: dict[str, list[Callable[[dict], Candidate | None]]] = {}


def register_variant(op: str, factory: Callable[[dict], Candidate | None]) -> None:
    """Add a candidate kind to ``op``: ``factory(call)`` gets the call's arguments as a
    dict and returns a ``Candidate`` (e.g. the TF32 kernel when ``allow_tf32`` is set)
    or ``None`` when it does not apply to this call.

    >>> from gpugrad.backend import dispatch
    >>> dispatch.register_variant("demo", lambda call: None)
    >>> dispatch.variants_for("demo", {})
    []
    """
    with _lock:
        _variants.setdefault(op, []).append(factory)


def variants_for(op: str, call: dict) -> list[Candidate]:
    """The registered variant candidates that apply to this call of ``op``."""
    out = []
    for factory in list(_variants.get(op, ())):
        cand = factory(call)
        if cand is not None:
            out.append(cand)
    return out


def bucket(v: int) -> int:
    """Shape-class bucket of one extent: exact up to 16, else the next power of two.

    >>> [bucket(v) for v in (1, 16, 17, 100, 4096)]
    [1, 16, 32, 128, 4096]
    """
    v = int(v)
    return v if v <= 16 else 1 << (v - 1).bit_length()


# --------------------------------------------------------------------------- report


@dataclass
class Choice:
    """What ``auto`` decided for one (op, shape class, dtype): the implementation, the
    median seconds of every candidate timed, and the candidates rejected (with why)."""

    impl: str
    times: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass
class KernelReport:
    """``gg.kernels.report()``: structured, one attribute per section.

    ``policy``: the active policy; ``device_key``: what the dispatch cache is keyed by;
    ``counts[op][shape_class][dtype][impl]``: calls that ran each implementation;
    ``choices[op][shape_class][dtype]``: ``auto``'s decisions (``Choice``);
    ``sections``: further named sections contributed by other parts of gpugrad
    (``register_report_section``). ``str(report)`` is a readable table.
    """

    policy: str
    device_key: dict
    counts: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dicts and lists only (JSON-serialisable)."""
        choices = {
            op: {cls: {dt: vars(ch) for dt, ch in by_dt.items()} for cls, by_dt in by_cls.items()}
            for op, by_cls in self.choices.items()
        }
        return {
            "policy": self.policy,
            "device_key": dict(self.device_key),
            "counts": json.loads(json.dumps(self.counts)),
            "choices": json.loads(json.dumps(choices)),
            "sections": dict(self.sections),
        }

    def __str__(self) -> str:
        lines = [f"kernel policy: {self.policy}"]
        for op in sorted(self.counts):
            for cls in sorted(self.counts[op]):
                for dt, by_impl in sorted(self.counts[op][cls].items()):
                    ran = ", ".join(f"{impl} x{n}" for impl, n in sorted(by_impl.items()))
                    line = f"  {op:18s} {cls:40s} {dt}: {ran}"
                    ch = self.choices.get(op, {}).get(cls, {}).get(dt)
                    if ch is not None and ch.times:
                        timed = ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in ch.times.items())
                        line += f"  (auto: {timed})"
                    lines.append(line)
        for name, section in self.sections.items():
            lines.append(f"{name}: {section}")
        return "\n".join(lines)


_report_sections: dict[str, Callable[[], Any]] = {}
_report_resets: dict[str, Callable[[], None]] = {}


def register_report_section(
    name: str, fn: Callable[[], Any], reset: Callable[[], None] | None = None
) -> None:
    """Add a section to every ``report()``: ``fn()`` is called when the report is made
    (e.g. counters of host-device transfers); ``reset()``, when given, is called by
    ``reset_report()`` (the counters start again from zero)."""
    _report_sections[name] = fn
    if reset is not None:
        _report_resets[name] = reset


# --------------------------------------------------------------------------- dispatcher


def _class_key(shape_class) -> str:
    if isinstance(shape_class, str):
        return shape_class
    return " ".join(str(v) for v in shape_class)


class Dispatcher:
    """Chooses, runs and counts. ``clock`` (seconds, default ``time.perf_counter``) and
    ``sync`` (waits for the device; default: CuPy's device synchronise on ``cuda``) are
    injectable for tests; ``cache_file`` is the JSON file of choices (``None``: memory
    only; default: under ``backend.cache_dir()``, named by the device key);
    ``device_key`` (default: read from the device) invalidates cached choices when the
    GPU, driver, CUDA runtime or CuPy changes."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sync: Callable[[], None] | None = None,
        cache_file: Any = ...,
        device_key: dict | None = None,
        warmup: int = 1,
        repeats: int = 3,
    ):
        self.clock = clock or time.perf_counter
        self.sync = sync
        self._device_key = device_key
        self._cache_file = cache_file
        self.warmup = int(warmup)
        self.repeats = max(1, int(repeats))
        self._choices: dict[tuple, Choice] | None = None
        self._counts: dict = {}
        self._lock = threading.RLock()

    # ---- device key and cache file

    @property
    def device_key(self) -> dict:
        if self._device_key is None:
            self._device_key = current_device_key()
        return self._device_key

    @property
    def cache_file(self) -> Path | None:
        if self._cache_file is ...:
            digest = hashlib.sha256(
                json.dumps(self.device_key, sort_keys=True).encode()
            ).hexdigest()[:16]
            self._cache_file = backend.cache_dir() / "dispatch" / f"choices-{digest}.json"
        return None if self._cache_file is None else Path(self._cache_file)

    def _load(self) -> dict[tuple, Choice]:
        if self._choices is not None:
            return self._choices
        self._choices = {}
        path = self.cache_file
        if path is None or not path.is_file():
            return self._choices
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("gpugrad: ignoring unreadable kernel dispatch cache %s (%s)", path, exc)
            return self._choices
        if data.get("version") != CACHE_VERSION or data.get("device_key") != self.device_key:
            return self._choices  # another device, driver or CuPy: measure again
        for row in data.get("choices", []):
            try:
                key = (row["op"], row["shape_class"], row["dtype"], tuple(row["candidates"]))
                self._choices[key] = Choice(row["impl"], dict(row["times"]), dict(row["rejected"]))
            except (KeyError, TypeError):
                continue
        return self._choices

    def _save(self) -> None:
        path = self.cache_file
        if path is None:
            return
        rows = [
            {
                "op": op,
                "shape_class": cls,
                "dtype": dt,
                "candidates": list(names),
                "impl": ch.impl,
                "times": ch.times,
                "rejected": ch.rejected,
            }
            for (op, cls, dt, names), ch in sorted(self._load().items())
        ]
        data = {"version": CACHE_VERSION, "device_key": self.device_key, "choices": rows}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only cache dir must not break the op
            log.warning("gpugrad: could not write the kernel dispatch cache %s (%s)", path, exc)

    # ---- running

    def _sync(self) -> None:
        if self.sync is not None:
            self.sync()
        elif backend.device() == "cuda":
            backend.cupy_module().cuda.Device().synchronize()

    def _time(self, cand: Candidate) -> tuple[float, Any]:
        fn = cand.run
        result = None
        for _ in range(self.warmup):
            result = fn()
        samples = []
        for _ in range(self.repeats):
            self._sync()
            start = self.clock()
            result = fn()
            self._sync()
            samples.append(self.clock() - start)
        return float(statistics.median(samples)), result

    def _choose(self, key, dtype: str, candidates: list[Candidate]) -> tuple[Choice, Any]:
        """Time every candidate (hand first), validate against the hand result."""
        times, rejected, results = {}, {}, {}
        for cand in candidates:
            try:
                times[cand.name], results[cand.name] = self._time(cand)
            except Exception as exc:  # a vendor call that fails is not a candidate
                rejected[cand.name] = f"raised {type(exc).__name__}: {exc}"
                times.pop(cand.name, None)
        hand = candidates[0].name
        if hand not in times:
            raise RuntimeError(
                f"gpugrad dispatch: the hand kernel for {key[0]} failed: {rejected.get(hand)}"
            )
        ref = results[hand]
        for cand in candidates[1:]:
            if cand.name not in times:
                continue
            err = _relative_error(results[cand.name], ref)
            tol = cand.rtol if cand.rtol is not None else (1e-3 if dtype == "f32" else 1e-9)
            if not err <= tol:
                rejected[cand.name] = f"result differs from the hand kernel by {err:.3g} > {tol:g}"
                del times[cand.name]
                log.warning(
                    "gpugrad: %s for %s %s %s rejected: %s",
                    cand.name,
                    key[0],
                    key[1],
                    dtype,
                    rejected[cand.name],
                )
        impl = min(times, key=lambda name: (times[name], name != hand))
        return Choice(impl, times, rejected), results.get(impl)

    def run(self, op: str, shape_class, dtype: str, candidates: list[Candidate]):
        """Run ``op`` by the policy's implementation and return its result.
        ``candidates[0]`` must be the hand kernel."""
        if not candidates or candidates[0].kind != "hand":
            raise ValueError(f"dispatch.run({op!r}): the first candidate must be the hand kernel")
        cls = _class_key(shape_class)
        pol = get_policy()
        if pol == "hand" or len(candidates) == 1:
            chosen, result = candidates[0], None
        elif pol == "vendor":
            chosen = next((c for c in candidates if c.kind == "vendor"), candidates[0])
            result = None
        else:
            names = tuple(c.name for c in candidates)
            key = (op, cls, dtype, names)
            with self._lock:
                choice = self._load().get(key)
                result = None
                if choice is None or choice.impl not in names:
                    choice, result = self._choose(key, dtype, candidates)
                    self._load()[key] = choice
                    self._save()
            chosen = next(c for c in candidates if c.name == choice.impl)
        if result is None:
            result = chosen.run()
        with self._lock:
            by_impl = self._counts.setdefault(op, {}).setdefault(cls, {}).setdefault(dtype, {})
            by_impl[chosen.name] = by_impl.get(chosen.name, 0) + 1
        return result

    # ---- reporting

    def report(self) -> KernelReport:
        with self._lock:
            counts = json.loads(json.dumps(self._counts))
            choices: dict = {}
            for (op, cls, dt, _), ch in (self._choices or {}).items():
                choices.setdefault(op, {}).setdefault(cls, {})[dt] = ch
        sections = {}
        for name, fn in list(_report_sections.items()):
            try:
                sections[name] = fn()
            except Exception as exc:  # a broken section must not hide the others
                sections[name] = f"unavailable: {exc}"
        return KernelReport(get_policy(), dict(self.device_key), counts, choices, sections)

    def reset_report(self) -> None:
        with self._lock:
            self._counts.clear()

    def forget(self) -> None:
        """Drop the in-memory choices (the disk cache is read again on next use)."""
        with self._lock:
            self._choices = None


def _relative_error(got, ref) -> float:
    xp = backend.xp() if backend.is_device_array(ref) else np
    got = xp.asarray(got, dtype=xp.float64)
    ref = xp.asarray(ref, dtype=xp.float64)
    if got.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    agree = (xp.isnan(got) & xp.isnan(ref)) | ((got == ref) & xp.isinf(ref))
    finite = xp.isfinite(ref)
    scale = float(xp.max(xp.abs(xp.where(finite, ref, 0.0))))
    # why: inf - inf is NaN; positions where both agree count as exact
    diff = xp.abs(xp.where(agree, 0.0, got) - xp.where(agree, 0.0, ref))
    worst = float(xp.max(diff))
    if math.isnan(worst):
        return math.inf
    return worst / scale if scale > 0 and math.isfinite(scale) else worst


def current_device_key() -> dict:
    """What cached choices are keyed by: device name, driver, CUDA runtime and CuPy
    versions on ``cuda``; the device name elsewhere."""
    from gpugrad import __version__

    dev = backend.device()
    key = {"device": dev, "gpugrad": __version__}
    if dev == "cuda":
        cp = backend.cupy_module()
        rt = cp.cuda.runtime
        props = rt.getDeviceProperties(rt.getDevice())
        name = props.get("name", b"")
        key.update(
            name=name.decode() if isinstance(name, bytes) else str(name),
            driver=int(rt.driverGetVersion()),
            runtime=int(rt.runtimeGetVersion()),
            cupy=str(cp.__version__),
        )
    return key


# --------------------------------------------------------------------------- module-level


_default: Dispatcher | None = None


def default_dispatcher() -> Dispatcher:
    """The process-wide dispatcher the kernels use."""
    global _default
    with _lock:
        if _default is None:
            _default = Dispatcher()
        return _default


def run(
    op: str,
    shape_class,
    dtype: str,
    hand: Callable[[], Any],
    *,
    call: dict | None = None,
    vendor: Callable[[], Any] | None = None,
):
    """Run ``op``: the hand kernel ``hand()``, a registered variant or ``vendor()`` (when
    not ``None``), as the policy decides (see the module docstring)."""
    candidates = [Candidate("hand", "hand", hand)]
    candidates += variants_for(op, call or {})
    if vendor is not None:
        candidates.append(Candidate("vendor", "vendor", vendor))
    return default_dispatcher().run(op, shape_class, dtype, candidates)


def report() -> KernelReport:
    """Which implementation ran how often per op, shape class and dtype, and what
    ``auto`` chose (see ``KernelReport``).

    >>> from gpugrad.backend import dispatch
    >>> sorted(vars(dispatch.report()))
    ['choices', 'counts', 'device_key', 'policy', 'sections']
    """
    return default_dispatcher().report()


def reset_report() -> None:
    """Zero the counts of ``report()`` (the cached choices stay), and those of the
    sections registered with a ``reset``."""
    default_dispatcher().reset_report()
    for reset in list(_report_resets.values()):
        reset()
