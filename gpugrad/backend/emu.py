"""CPU emulator of the CUDA execution model: runs the real ``.cu`` kernel files on the host.

A ``.cu`` source is compiled with ``g++`` as C++17 with ``kernels/emu/cuda_emu.h``
pre-included and linked with ``kernels/emu/runtime.cpp``, which runs every CUDA thread
of a block as a fiber (so ``__syncthreads``, ``__shared__`` memory and warp shuffles
behave as on a GPU). NumPy arrays stand for device memory. The call form is CuPy's::

    from gpugrad.backend import emu
    mod = emu.EmuModule(code, name="kernels/matmul.cu", options=("-DTILE=16",))
    k = mod.get_function("matmul_fwd_f32")
    k(grid, block, (a, b, c, np.int32(n)), shared_mem=0)

Every argument is checked against the kernel's parameter types before the launch: a
pointer takes a C-contiguous NumPy array of the pointee's dtype, a scalar takes a NumPy
scalar of exactly its type (a Python ``float`` would be read as garbage on a GPU).

Scheduling: the threads of a block run between two barriers in ``forward``, ``reverse``
or seeded ``random`` order (``set_schedule``/``schedule``), so a missing
``__syncthreads`` shows up as a wrong result. Errors the GPU would turn into a hang or
undefined behaviour (divergent barriers, deadlocks, threads exiting while others wait
at a barrier, bad shuffle masks) raise :class:`EmuError`. ``sanitize=True`` builds
with AddressSanitizer; such a module loads only in a process started with
:func:`asan_env` (see :func:`run_in_subprocess`).

Built libraries are cached in ``gpugrad.backend.cache_dir()/"emu"``, keyed by a hash of
the source, its quoted includes, the emulator sources, the flags and the compiler.

Numerics: CuPy compiles every kernel with ``-ftz=true``, so a GPU flushes float32
denormals (inputs and results of arithmetic and compares) to zero. The emulator does
the same (x86-64 MXCSR FTZ+DAZ in the threads that run the launch) for every kernel that
has a ``float`` parameter and no ``double`` one: on x86 these flags would flush float64
too, which the GPU does not, so a kernel mixing both runs without flushing (a known
difference; pass ``-ftz=false`` to turn flushing off for a module). Loads, stores and
copies keep denormal bits on both.

Cooperative launch: ``EmuModule(..., enable_cooperative_groups=True)`` (CuPy's flag)
launches every kernel of the module with all blocks resident at once (one OS thread per
block), so a grid-wide barrier -- ``cooperative_groups::this_grid().sync()`` (a subset:
``this_grid``, ``sync``, ``is_valid``, ranks and sizes), ``gpugrad_emu_grid_sync()``, or
a spin barrier written with atomics and ``__nanosleep`` -- works as on a GPU. As
``cudaLaunchCooperativeKernel`` does, the launch is refused when the grid exceeds the
blocks that fit at once (:func:`cooperative_max_blocks`), and a block that exits while
others wait at the grid barrier fails the launch (deadlock) instead of hanging.

Limitations: no inline PTX (``asm``), the ``<cooperative_groups.h>`` header itself (the
subset above is built in), ``__constant__`` copies from the host, or template kernels
by name (wrap an instantiation in an ``extern "C"`` kernel);
warp shuffles of at most 8 bytes; fast-math intrinsics use the accurate host functions;
static ``__shared__`` memory is not poisoned between blocks and its size is not known
(``shared_size_bytes`` is 0); a device ``assert``, a stack overflow (256 KiB per thread)
or an out-of-bounds write outside ASan can kill the process -- run such tests with
:func:`run_in_subprocess`.
"""

from __future__ import annotations

import ast
import bisect
import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpugrad import backend
from gpugrad._filelock import build_once

__all__ = [
    "EmuError",
    "EmuCompileError",
    "EmuWarning",
    "KernelNotFoundError",
    "EmuModule",
    "EmuKernel",
    "set_schedule",
    "get_schedule",
    "schedule",
    "set_workers",
    "get_workers",
    "set_exit_at_barrier",
    "stats",
    "reset_stats",
    "asan_env",
    "asan_loaded",
    "run_in_subprocess",
    "cooperative_max_blocks",
]

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
DEFAULT_SHARED_LIMIT = 48 * 1024  # without an opt-in, as on every CUDA GPU
MAX_SHARED_OPTIN = 227 * 1024  # H100 opt-in limit per block

_ORDERS = {"forward": 0, "reverse": 1, "random": 2}


class EmuError(RuntimeError):
    """A kernel launch failed in the emulator (barrier misuse, deadlock, bad arguments, ...)."""


class EmuCompileError(EmuError):
    """g++ could not compile the kernel source; the message carries the compiler log."""


class EmuWarning(RuntimeWarning):
    """Something undefined on a GPU happened but the launch could go on (e.g. a shuffle read
    from a lane that exited or is not in the mask)."""


class KernelNotFoundError(KeyError):
    """``get_function`` was asked for a kernel the module does not define."""

    def __str__(self):  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- configuration


def _env_schedule():
    spec = os.environ.get("GPUGRAD_EMU_SCHEDULE", "forward").strip().lower()
    order, _, seed = spec.partition(":")
    if order not in _ORDERS:
        order = "forward"
    return order, int(seed) if seed.isdigit() else 0


_config_lock = threading.Lock()
_order, _seed = _env_schedule()
_config = {
    "order": _order,
    "seed": _seed,
    "workers": max(1, int(os.environ.get("GPUGRAD_EMU_WORKERS", "1") or 1)),
    "exit_at_barrier": "error",
}
_STAT_KEYS = (
    "launches",
    "blocks",
    "threads",
    "poisoned_reads",
    "exit_barrier_warnings",
    "fiber_switches",
    "compiles",
    "cache_hits",
)
_stats = dict.fromkeys(_STAT_KEYS, 0)


def set_schedule(order: str, seed: int = 0) -> None:
    """Order in which the threads of a block run between barriers: ``"forward"`` (thread 0
    first), ``"reverse"`` or ``"random"`` (shuffled anew for every phase, from ``seed``)."""
    if order not in _ORDERS:
        raise ValueError(f"schedule order must be one of {', '.join(_ORDERS)}; got {order!r}")
    with _config_lock:
        _config["order"] = order
        _config["seed"] = int(seed)


def get_schedule() -> tuple[str, int]:
    return _config["order"], _config["seed"]


@contextlib.contextmanager
def schedule(order: str, seed: int = 0):
    """``with emu.schedule("random", seed=3): ...`` -- process-wide while the block runs."""
    old = get_schedule()
    set_schedule(order, seed)
    try:
        yield
    finally:
        set_schedule(*old)


def set_workers(n: int) -> None:
    """Number of OS threads that run blocks in parallel (default 1: reproducible float
    atomics). Each worker runs one block at a time."""
    n = int(n)
    if n < 1:
        raise ValueError(f"workers must be >= 1; got {n}")
    _config["workers"] = n


def get_workers() -> int:
    return _config["workers"]


def set_exit_at_barrier(policy: str) -> None:
    """What to do when a thread has returned while others of its block wait at a
    ``__syncthreads`` (undefined behaviour on a GPU): ``"error"`` (default) or ``"warn"``
    (count it in ``stats()["exit_barrier_warnings"]`` and release the barrier)."""
    if policy not in ("error", "warn"):
        raise ValueError(f"policy must be 'error' or 'warn'; got {policy!r}")
    _config["exit_at_barrier"] = policy


def stats() -> dict:
    """Counters since the last ``reset_stats()``: launches, blocks, threads,
    poisoned_reads (warp reads of exited/absent/non-participating lanes),
    exit_barrier_warnings, fiber_switches, compiles, cache_hits."""
    with _config_lock:
        return dict(_stats)


def reset_stats() -> None:
    with _config_lock:
        for k in _stats:
            _stats[k] = 0


def _count(**kw):
    with _config_lock:
        for k, v in kw.items():
            _stats[k] += v


# --------------------------------------------------------------------------- ASan


def _libasan_path() -> str | None:
    cxx = _cxx()
    try:
        out = subprocess.run(
            [cxx, "-print-file-name=libasan.so"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


def asan_loaded() -> bool:
    """True when the AddressSanitizer runtime is loaded into this process (LD_PRELOAD)."""
    try:
        ctypes.CDLL(None)["__asan_init"]
    except (AttributeError, OSError):
        return False
    return True


def asan_env(base: dict | None = None) -> dict:
    """Environment for a Python subprocess that can load ``EmuModule(..., sanitize=True)``:
    ``LD_PRELOAD`` of g++'s libasan and ``ASAN_OPTIONS=detect_leaks=0`` (CPython's own
    allocations would otherwise be reported as leaks)."""
    lib = _libasan_path()
    if lib is None:
        raise EmuError(f"{_cxx()} has no libasan.so (install the compiler's libasan package)")
    env = dict(os.environ if base is None else base)
    preload = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = lib + (" " + preload if preload else "")
    opts = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = "detect_leaks=0" + (":" + opts if opts else "")
    return env


def run_in_subprocess(
    code: str, *, asan: bool = False, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``code`` with this Python in a fresh process (stdout/stderr captured as text),
    with ``gpugrad`` importable; with ``asan=True`` under :func:`asan_env`. For kernels
    expected to crash the process (device assert, stack overflow, ASan report)."""
    env = dict(os.environ if env is None else env)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if asan:
        env = asan_env(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------- source analysis


def _mask(src: str, directives: bool = True) -> str:
    """``src`` with comments, string/char literal contents and (optionally) preprocessor
    lines replaced by spaces; same length and newlines, so offsets stay valid."""
    out = list(src)
    n = len(src)
    i = 0
    line_start = True

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if c == "\n":
            line_start = True
            i += 1
            continue
        if line_start and c == "#" and directives:
            j = i
            while True:  # the directive with its backslash continuations
                e = src.find("\n", j)
                e = n if e < 0 else e
                if e > 0 and src[e - 1] == "\\" and e < n:
                    j = e + 1
                    continue
                break
            blank(i, e)
            i = e
            continue
        if not c.isspace():
            line_start = False
        if src.startswith("//", i):
            e = src.find("\n", i)
            e = n if e < 0 else e
            blank(i, e)
            i = e
        elif src.startswith("/*", i):
            e = src.find("*/", i + 2)
            e = n if e < 0 else e + 2
            blank(i, e)
            i = e
        elif c == '"' or (c == "'" and not (i > 0 and src[i - 1].isalnum())):
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            blank(i + 1, min(j, n))
            i = j + 1
        else:
            i += 1
    return "".join(out)


class _Scopes:
    """Which braces enclose a position: ``("ns", name)``, ``("linkage", "")`` or
    ``("block", "")``."""

    _NS = re.compile(r"\bnamespace\s*([A-Za-z_]\w*)?\s*$")
    _LINKAGE = re.compile(r'\bextern\s*"\s*"\s*$')

    def __init__(self, masked: str):
        self.pos: list[int] = []
        self.stacks: list[tuple] = []
        stack: list[tuple] = []
        last = 0  # end of the previous statement or brace
        for m in re.finditer(r"[{};]", masked):
            ch = m.group()
            if ch == "{":
                head = masked[last : m.start()]
                ns = self._NS.search(head)
                if ns:
                    stack.append(("ns", ns.group(1) or ""))
                elif self._LINKAGE.search(head):
                    stack.append(("linkage", ""))
                else:
                    stack.append(("block", ""))
            elif ch == "}" and stack:
                stack.pop()
            last = m.end()
            self.pos.append(m.end())
            self.stacks.append(tuple(stack))

    def at(self, p: int) -> tuple:
        k = bisect.bisect_right(self.pos, p) - 1
        return self.stacks[k] if k >= 0 else ()

    def at_namespace_scope(self, p: int) -> bool:
        return all(kind != "block" for kind, _ in self.at(p))

    def qualifier(self, p: int) -> str:
        names = [name for kind, name in self.at(p) if kind == "ns" and name]
        return "".join(f"{n}::" for n in names)


_EXTERN_SHARED = re.compile(r"\bextern\b[^;{}]*?\b__shared__\b[^;{}]*?\[\s*\]\s*;")
_ALIGN = re.compile(r"\b(?:__align__|alignas|__attribute__)\s*\((?:[^()]|\([^()]*\))*\)")


def _rewrite_extern_shared(src: str, masked: str, name: str) -> str:
    """``extern __shared__ T x[];`` -> a pointer into the block's dynamic shared memory.
    Function scope: a local ``T* const x``; namespace scope: a macro (a global pointer
    would be initialised once, not per block)."""
    scopes = _Scopes(masked)
    pieces = []
    last = 0
    for m in _EXTERN_SHARED.finditer(masked):
        decl = _ALIGN.sub(" ", m.group())
        decl = re.sub(r"\b(?:extern|__shared__)\b", " ", decl)
        decl = decl.replace(";", " ")
        dm = re.match(r"\s*(.*?)\s*([A-Za-z_]\w*)\s*\[\s*\]\s*$", decl, re.S)
        if not dm or not dm.group(1).strip():
            continue
        ctype, var = " ".join(dm.group(1).split()), dm.group(2)
        ptr = f"reinterpret_cast<{ctype}*>(gpugrad_emu_ts.dyn_smem)"
        if scopes.at_namespace_scope(m.start()):
            line_after = src.count("\n", 0, m.end()) + 1
            text = (
                f'\n#undef {var}\n#define {var} ({ptr})\n#line {line_after} "{_c_escape(name)}"\n'
            )
        else:
            text = f"{ctype}* const {var} = {ptr};"
        pieces.append(src[last : m.start()])
        pieces.append(text)
        last = m.end()
    pieces.append(src[last:])
    return "".join(pieces)


@dataclass
class _KernelDecl:
    name: str
    qualified: str
    params: list  # of (ctype text, param name)
    launch_bounds: str | None


def _skip_parens(text: str, i: int) -> int:
    """Index just past the parenthesised group starting at text[i] == '('."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def _split_params(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    parts = [p.strip() for p in parts]
    return [] if parts == [""] or parts == ["void"] else parts


_TYPE_WORDS = {"int", "char", "short", "long", "float", "double", "unsigned", "signed", "bool"}


def _parse_param(text: str, index: int) -> tuple[str, str]:
    """(type text, name) of one parameter declaration, for messages."""
    t = _ALIGN.sub(" ", text)
    t = re.sub(r"\b(?:__restrict__|__restrict|__grid_constant__)\b", " ", t)
    t = re.sub(r"\[\s*\w*\s*\]", "*", t)  # float x[] is float* x
    idents = re.findall(r"[A-Za-z_][\w:]*", t)
    name = f"arg{index}"
    if len(idents) >= 2 and idents[-1] not in _TYPE_WORDS and idents[-1] != "const":
        name = idents[-1]
        t = t[: t.rfind(name)]
    ctype = " ".join(t.replace("*", " * ").split()).replace(" *", "*")
    return ctype, name


def _defines_kernels(src: str) -> bool:
    """Whether a ``#define`` of ``src`` (with its continuation lines) contains
    ``__global__``: kernels made by a macro."""
    for m in re.finditer(r"^[ \t]*#[ \t]*define\b(?:[^\n]*\\\n)*[^\n]*", src, re.M):
        if re.search(r"\b__global__\b", m.group()):
            return True
    return False


def _kernel_scan_source(code: str) -> str:
    """The text the kernel scan reads: ``code`` itself or, when a function-like macro
    defines the ``__global__`` entry points (kernels/matmul_tf32.cu), ``code`` with its
    own macros expanded by the C preprocessor (``#include`` lines dropped: only the
    file's macros matter; ``__global__`` and the other CUDA words are not macros there
    and stay). The build itself compiles ``code`` unchanged."""
    if not _defines_kernels(code):
        return code
    text = re.sub(r"^[ \t]*#[ \t]*include\b[^\n]*", "", code, flags=re.M)
    try:
        r = subprocess.run(
            [_cxx(), "-E", "-P", "-x", "c++", "-std=c++17", "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return code
    return r.stdout if r.returncode == 0 else code


def _find_kernels(masked: str) -> tuple[list[_KernelDecl], list[str]]:
    """Non-template ``__global__`` function definitions, and the names of template ones."""
    scopes = _Scopes(masked)
    kernels: dict[str, _KernelDecl] = {}
    templates: list[str] = []
    for m in re.finditer(r"\b__global__\b", masked):
        start = max(masked.rfind(ch, 0, m.start()) for ch in ";{}") + 1
        head = masked[start : m.start()]
        bounds = None
        lb = re.search(r"__launch_bounds__\s*\(", head)
        if lb:
            bounds = head[lb.end() : _skip_parens(head, lb.end() - 1) - 1]
        i, name, n = m.end(), None, len(masked)
        while i < n:
            if masked[i].isspace():
                i += 1
                continue
            w = re.match(r"[A-Za-z_]\w*", masked[i:])
            if w:
                word = w.group()
                i += len(word)
                if word in ("__launch_bounds__", "__attribute__", "__declspec", "alignas"):
                    j = masked.find("(", i)
                    if word == "__launch_bounds__":
                        bounds = masked[j + 1 : _skip_parens(masked, j) - 1]
                    i = _skip_parens(masked, j)
                else:
                    name = word
                continue
            if masked[i] == "(":
                break
            i += 1  # '*', '&', '::' ...
        if name is None or i >= n:
            continue
        close = _skip_parens(masked, i)
        after = masked[close:].lstrip()
        if re.search(r"\btemplate\b", head):
            templates.append(name)
            continue
        if not after.startswith("{"):
            continue  # a declaration; the definition is elsewhere
        params = [
            _parse_param(p, k) for k, p in enumerate(_split_params(masked[i + 1 : close - 1]))
        ]
        qual = scopes.qualifier(m.start())
        kernels[name] = _KernelDecl(name, qual + name, params, bounds)
    return list(kernels.values()), templates


def _int_value(expr: str | None, src: str, options: tuple) -> int | None:
    """Value of the first __launch_bounds__ argument when it is an integer expression of
    literals, -D options, ``#define``s and ``constexpr int``s; else None (not checked)."""
    if not expr or not _split_params(expr):
        return None
    text = _split_params(expr)[0]

    def lookup(name: str) -> str | None:
        for opt in options:
            om = re.fullmatch(rf"-D\s*{name}=(.+)", opt)
            if om:
                return om.group(1)
        dm = re.search(rf"^[ \t]*#[ \t]*define[ \t]+{name}[ \t]+(.+?)[ \t]*$", src, re.M)
        if dm:
            return dm.group(1)
        cm = re.search(rf"\bconstexpr\s+(?:unsigned\s+)?int\s+{name}\s*=\s*([^;]+);", src)
        return cm.group(1) if cm else None

    for _ in range(8):  # expand identifiers a few levels deep
        names = set(re.findall(r"[A-Za-z_]\w*", text))
        if not names:
            break
        for name in names:
            val = lookup(name)
            if val is None:
                return None
            text = re.sub(rf"\b{name}\b", f"({val})", text)
    text = re.sub(r"(\d+)[uUlL]+\b", r"\1", text)
    if not re.fullmatch(r"[\d\s+\-*/%()<>]*", text) or not text.strip():
        return None
    try:
        node = ast.parse(text.replace("//", "/").replace("/", "//"), mode="eval")
        value = eval(compile(node, "<launch_bounds>", "eval"), {"__builtins__": {}})  # noqa: S307
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def _c_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


# --------------------------------------------------------------------------- types

# Type codes written by gpugrad_emu_sig_<kernel> (see _WRAPPER_PRELUDE):
# base | width << 8 | pointer << 16 | const pointee << 17 | unsupported << 18
_BASES = {
    1: ("float32", "float"),
    2: ("float64", "double"),
    3: ("int8", "signed char"),
    4: ("uint8", "unsigned char"),
    5: ("int16", "short"),
    6: ("uint16", "unsigned short"),
    7: ("int32", "int"),
    8: ("uint32", "unsigned int"),
    9: ("int64", "long long"),
    10: ("uint64", "unsigned long long"),
    11: ("bool", "bool"),
    12: ("float16", "__half"),
    13: ("bfloat16", "__nv_bfloat16"),
    14: (None, "void"),
    15: ("int8", "char"),
}

_WRAPPER_PRELUDE = r"""
#include <utility>
namespace gpugrad_emu_sig {
template <typename T> struct base { static constexpr int code = 0, width = 1; };
#define GPUGRAD_B(T, C) template <> struct base<T> { static constexpr int code = C, width = 1; };
GPUGRAD_B(float, 1) GPUGRAD_B(double, 2) GPUGRAD_B(signed char, 3) GPUGRAD_B(unsigned char, 4)
GPUGRAD_B(short, 5) GPUGRAD_B(unsigned short, 6) GPUGRAD_B(int, 7) GPUGRAD_B(unsigned, 8)
GPUGRAD_B(long long, 9) GPUGRAD_B(unsigned long long, 10) GPUGRAD_B(long, 9)
GPUGRAD_B(unsigned long, 10) GPUGRAD_B(bool, 11) GPUGRAD_B(__half, 12)
GPUGRAD_B(__nv_bfloat16, 13) GPUGRAD_B(void, 14) GPUGRAD_B(char, 15)
#undef GPUGRAD_B
#define GPUGRAD_V(T, C, W) template <> struct base<T> { static constexpr int code = C, width = W; };
GPUGRAD_V(float2, 1, 2) GPUGRAD_V(float3, 1, 3) GPUGRAD_V(float4, 1, 4)
GPUGRAD_V(double2, 2, 2) GPUGRAD_V(double3, 2, 3) GPUGRAD_V(double4, 2, 4)
GPUGRAD_V(char2, 3, 2) GPUGRAD_V(char4, 3, 4) GPUGRAD_V(uchar2, 4, 2) GPUGRAD_V(uchar4, 4, 4)
GPUGRAD_V(short2, 5, 2) GPUGRAD_V(short4, 5, 4) GPUGRAD_V(ushort2, 6, 2) GPUGRAD_V(ushort4, 6, 4)
GPUGRAD_V(int2, 7, 2) GPUGRAD_V(int3, 7, 3) GPUGRAD_V(int4, 7, 4)
GPUGRAD_V(uint2, 8, 2) GPUGRAD_V(uint3, 8, 3) GPUGRAD_V(uint4, 8, 4)
GPUGRAD_V(longlong2, 9, 2) GPUGRAD_V(ulonglong2, 10, 2)
GPUGRAD_V(__half2, 12, 2) GPUGRAD_V(__nv_bfloat162, 13, 2)
#undef GPUGRAD_V
template <typename P> struct code_of {
    using D = typename std::decay<P>::type;
    static constexpr int value = std::is_reference<P>::value ? (1 << 18)
        : std::is_pointer<D>::value
            ? (std::is_pointer<typename std::remove_pointer<D>::type>::value ? (1 << 18)
               : (base<typename std::remove_cv<typename std::remove_pointer<D>::type>::type>::code
                  | base<typename std::remove_cv<typename std::remove_pointer<D>::type>::type>::width << 8
                  | 1 << 16
                  | (std::is_const<typename std::remove_pointer<D>::type>::value ? 1 << 17 : 0)))
            : (base<D>::width != 1 ? (1 << 18) : base<D>::code);
};
template <typename... P>
inline int describe(void (*)(P...), int *codes, int *sizes, int cap) {
    const int c[] = {0, code_of<P>::value...};
    const int s[] = {0, (int)sizeof(typename std::decay<P>::type)...};
    for (int i = 0; i < (int)sizeof...(P) && i < cap; ++i) { codes[i] = c[i + 1]; sizes[i] = s[i + 1]; }
    return (int)sizeof...(P);
}
template <typename... P, std::size_t... I>
inline void call(void (*fn)(P...), void **a, std::index_sequence<I...>) {
    fn(*reinterpret_cast<typename std::decay<P>::type *>(a[I])...);
}
}  // namespace gpugrad_emu_sig
#define GPUGRAD_EXPORT extern "C" __attribute__((visibility("default")))
"""

_WRAPPER = """GPUGRAD_EXPORT void gpugrad_emu_entry_{name}(void **a) {{
    gpugrad_emu_sig::call(&{qual}, a, std::make_index_sequence<{n}>{{}});
}}
GPUGRAD_EXPORT int gpugrad_emu_sig_{name}(int *codes, int *sizes, int cap) {{
    return gpugrad_emu_sig::describe(&{qual}, codes, sizes, cap);
}}
"""

_ALIGNMENT = {
    1: 4,
    2: 8,
    3: 1,
    4: 1,
    5: 2,
    6: 2,
    7: 4,
    8: 4,
    9: 8,
    10: 8,
    11: 1,
    12: 2,
    13: 2,
    15: 1,
}


@dataclass(frozen=True)
class Param:
    """One kernel parameter as the launcher checks it."""

    name: str
    ctype: str  # as written in the source, e.g. "const float*"
    pointer: bool
    const: bool
    dtype: np.dtype | None  # component dtype (None: void* or unknown -> any dtype)
    width: int  # vector width of the pointee (float4* -> 4)
    size: int  # sizeof the parameter (scalars)
    supported: bool

    @property
    def align(self) -> int:
        if not self.pointer or self.dtype is None:
            return 1
        base = self.dtype.itemsize * self.width
        return base if self.width in (2, 4) else self.dtype.itemsize


def _dtype(name: str | None):
    if name is None:
        return None
    if name == "bfloat16":
        return "bfloat16"  # checked by name: NumPy has none (ml_dtypes has)
    return np.dtype(name)


def _make_param(code: int, size: int, ctype: str, name: str) -> Param:
    unsupported = bool(code & (1 << 18))
    base = code & 0xFF
    width = (code >> 8) & 0xFF or 1
    pointer = bool(code & (1 << 16))
    const = bool(code & (1 << 17))
    dtype = _dtype(_BASES[base][0]) if base in _BASES else None
    supported = not unsupported and (pointer or (base in _BASES and base != 14))
    if not ctype:
        ctype = (("const " if const else "") + _BASES.get(base, (None, "?"))[1]) + (
            "*" if pointer else ""
        )
    return Param(name, ctype, pointer, const, dtype, width, size, supported)


# --------------------------------------------------------------------------- compiling

_cxx_version_cache: dict[str, str] = {}
_build_lock = threading.Lock()
_libs: dict[str, ctypes.CDLL] = {}


def _cxx() -> str:
    return os.environ.get("GPUGRAD_EMU_CXX") or os.environ.get("CXX") or "g++"


def _cxx_version() -> str:
    cxx = _cxx()
    if cxx not in _cxx_version_cache:
        try:
            r = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        except OSError as exc:
            raise EmuCompileError(
                f"the CUDA emulator needs a C++17 compiler; {cxx!r} is not runnable ({exc}). "
                "Install g++ or set GPUGRAD_EMU_CXX."
            ) from exc
        _cxx_version_cache[cxx] = r.stdout.strip()
    return _cxx_version_cache[cxx]


def _cuda_include() -> str:
    cands = []
    for var in ("GPUGRAD_EMU_CUDA_INCLUDE",):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]))
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if os.environ.get(var):
            cands.append(Path(os.environ[var]) / "include")
    cands.append(Path("/usr/local/cuda/include"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(Path(nvcc).resolve().parent.parent / "include")
    try:  # pip's nvidia-cuda-runtime-cu12 wheel
        import nvidia.cuda_runtime as ncr  # type: ignore

        cands.append(Path(next(iter(ncr.__path__))) / "include")
    except Exception:  # noqa: BLE001 - optional
        pass
    for c in cands:
        if (c / "cuda_runtime.h").is_file():
            return str(c)
    raise EmuCompileError(
        "the CUDA emulator needs the CUDA headers (cuda_runtime.h, vector types); none found in "
        f"{', '.join(map(str, cands))}. Set CUDA_HOME or GPUGRAD_EMU_CUDA_INCLUDE."
    )


def _emu_dir() -> Path:
    return backend.kernel_dir() / "emu"


def _check_options(options) -> list[str]:
    """-D/-U/-I (and -include) go to g++; NVRTC/nvcc code-generation flags are ignored."""
    if isinstance(options, str):
        options = (options,)
    out: list[str] = []
    it = iter(options)
    for opt in it:
        opt = str(opt)
        if opt in ("-D", "-U", "-I", "-include", "--define-macro", "--include-path"):
            val = next(it, None)
            if val is None:
                raise ValueError(f"emu: option {opt} needs a value")
            flag = {"--define-macro": "-D", "--include-path": "-I"}.get(opt, opt)
            out += [flag, val] if flag == "-include" else [flag + val]
        elif re.match(r"-(D|U|I)\S", opt):
            out.append(opt)
        elif re.match(r"--(define-macro|include-path)=", opt):
            flag, _, val = opt.partition("=")
            out.append({"--define-macro": "-D", "--include-path": "-I"}[flag] + val)
        elif re.fullmatch(r"-{1,2}std=c\+\+(17|20)", opt):
            out.append("-" + opt.lstrip("-"))
        elif re.match(
            r"-{1,2}(arch|gpu-architecture|gpu-name|ftz|prec-div|prec-sqrt|fmad|use_fast_math|"
            r"use-fast-math|lineinfo|generate-line-info|device-debug|G|extra-device-vectorization|"
            r"maxrregcount|restrict|dopt|Xptxas|default-device|rdc|relocatable-device-code|"
            r"diag-suppress|dlto)\b",
            opt,
        ) or opt in ("-G",):
            continue  # device code generation: meaningless on the CPU
        else:
            raise ValueError(
                f"emu: unsupported compiler option {opt!r} (the emulator takes -D, -U, -I, "
                "-include and -std=c++17/20; NVRTC code-generation flags are ignored)"
            )
    return out


def _quoted_includes(src: str, dirs: list[Path], seen: set) -> list[tuple[str, bytes]]:
    """Contents of the files reached by #include "..." (for the cache key)."""
    found = []
    for inc in re.findall(r'^\s*#\s*include\s*"([^"]+)"', src, re.M):
        for d in dirs:
            p = (d / inc).resolve()
            if p.is_file():
                if p not in seen:
                    seen.add(p)
                    data = p.read_bytes()
                    found.append((str(p), data))
                    found += _quoted_includes(
                        data.decode(errors="replace"), [p.parent, *dirs], seen
                    )
                break
    return found


def _run_compiler(cmd: list[str], what: str) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except OSError as exc:
        raise EmuCompileError(f"could not run {cmd[0]!r}: {exc}") from exc
    if r.returncode != 0:
        log = (r.stderr or r.stdout).strip()
        if len(log) > 20000:
            log = log[:20000] + "\n... (truncated)"
        hint = ""
        if re.search(r"conflicting declaration of C function|ambiguating new declaration", log):
            hint = (
                '\nhint: an extern "C" kernel or device function may share its name with a C '
                "library function (index, time, ...); rename it."
            )
        if "asm" in log and "operand" in log:
            hint += "\nhint: inline PTX (asm) cannot run in the emulator."
        raise EmuCompileError(f"{what} failed:\n{log}{hint}")


def _atomic_build(target: Path, build) -> bool:
    """Build into a temporary file next to ``target`` and rename it into place, so that
    concurrent builders (threads or processes) never see a half-written file; a process
    that finds another one building ``target`` waits and uses its result. Returns
    whether this call built it."""
    built = []

    def run(target):
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            build(tmp)
            os.replace(tmp, target)
            built.append(True)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    build_once(target, run)
    return bool(built)


def _common_flags(sanitize: bool) -> list[str]:
    flags = [
        "-std=c++17",
        "-fPIC",
        "-pthread",
        "-fno-gnu-unique",  # else inline statics (threadIdx...) are shared by all modules
        "-fno-strict-aliasing",  # kernels cast float* to float4*
        "-fvisibility=hidden",
        "-fvisibility-inlines-hidden",
    ]
    if sanitize:
        flags += ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
    else:
        flags += ["-O2"]
    return flags


def _runtime_object(sanitize: bool, inc: list[str], source: str = "runtime.cpp") -> Path:
    """The emulator runtime (or, with ``source="trace.cpp"``, the tracing hooks of the
    profiling build) compiled once to an object file, cached by content and flags."""
    emu_dir = _emu_dir()
    flags = _common_flags(sanitize) + inc
    h = hashlib.sha256()
    for part in (
        (emu_dir / source).read_bytes(),
        (emu_dir / "cuda_emu.h").read_bytes(),
        "\0".join(flags).encode(),
        _cxx_version().encode(),
    ):
        h.update(part)
        h.update(b"\0")
    out_dir = backend.cache_dir() / "emu"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(source).stem
    target = out_dir / f"{stem}-{h.hexdigest()[:24]}{'-asan' if sanitize else ''}.o"
    _atomic_build(  # builds only when target is absent (build_once checks, under its lock)
        target,
        lambda tmp: _run_compiler(
            [_cxx(), *flags, "-c", str(emu_dir / source), "-o", tmp],
            f"compiling the emulator runtime (kernels/emu/{source})",
        ),
    )
    return target


# --------------------------------------------------------------------------- module


class _Config(ctypes.Structure):
    _fields_ = [
        ("order", ctypes.c_int),
        ("exit_policy", ctypes.c_int),
        ("seed", ctypes.c_ulonglong),
        ("workers", ctypes.c_int),
    ]


class _Stats(ctypes.Structure):
    _fields_ = [
        ("blocks", ctypes.c_ulonglong),
        ("threads", ctypes.c_ulonglong),
        ("poisoned_reads", ctypes.c_ulonglong),
        ("exit_barrier_warnings", ctypes.c_ulonglong),
        ("switches", ctypes.c_ulonglong),
    ]


# one memory access recorded by kernels/emu/trace.cpp (struct Rec)
TRACE_DTYPE = np.dtype(
    [
        ("addr", "<u8"),
        ("pc", "<u4"),
        ("block", "<u4"),
        ("thread", "<u4"),
        ("size", "u1"),
        ("flags", "u1"),  # bit 0 write, bit 1 shared (else global), bit 2 atomic
        ("arg", "<u2"),  # kernel argument of a global access
    ]
)
assert TRACE_DTYPE.itemsize == 24


@dataclass
class Trace:
    """The memory accesses of the traced blocks of one launch of a ``trace=True`` module,
    in each thread's program order (records of different threads interleave as the
    scheduler ran them). ``arrays``: (address, bytes) of every argument (0, 0 for
    scalars); ``dropped``: accesses to neither (fiber stacks, constants) or over the
    record limit."""

    kernel: str
    grid: tuple
    block: tuple
    shared_mem: int
    blocks: tuple  # the linear indices of the traced blocks
    records: np.ndarray  # of TRACE_DTYPE
    arrays: tuple
    dropped: int


def _default_trace_blocks(nblocks: int) -> list[int]:
    return sorted({0, nblocks // 2, nblocks - 1})


class EmuModule:
    """A ``.cu`` source compiled for the CPU emulator (the counterpart of ``cupy.RawModule``).

    ``name`` is the file name compile errors and barrier/warp diagnostics point to (pass
    the real path of the ``.cu`` file; its folder is then searched for quoted includes).
    ``options``: ``-DNAME=VALUE``, ``-UNAME``, ``-Idir``, ``-std=c++17``; NVRTC
    code-generation flags (``-arch=...``, ``--use_fast_math``, ...) are accepted and ignored.
    ``sanitize=True``: build with AddressSanitizer (load only under :func:`asan_env`).
    ``trace=True``: the profiling build (``kernels/emu/trace.cpp``): every launch records
    the global and shared memory accesses of a few blocks (``trace_blocks``) into
    ``traces``; see :mod:`gpugrad.backend.profile`.
    """

    def __init__(
        self,
        code: str,
        *,
        name: str = "module",
        options: tuple[str, ...] = (),
        sanitize: bool = False,
        trace: bool = False,
        enable_cooperative_groups: bool = False,
    ):
        if sanitize and trace:
            raise ValueError("EmuModule: sanitize=True and trace=True cannot be combined")
        if sanitize and not asan_loaded():
            raise EmuError(
                "EmuModule(sanitize=True) needs the AddressSanitizer runtime loaded before "
                "Python starts: run this code in a subprocess with env=emu.asan_env() (or use "
                "emu.run_in_subprocess(code, asan=True))"
            )
        self.name = name
        self._code = code
        self.sanitize = sanitize
        self.trace = trace
        self.traces: list[Trace] = []  # one per launch of a trace=True module
        self.trace_blocks = None  # None: first, middle and last block; or a list/callable
        self.trace_run_all = False  # False: run only the traced blocks (outputs incomplete)
        # like cupy.RawModule's flag: every kernel of the module is launched cooperatively
        self.enable_cooperative_groups = bool(enable_cooperative_groups)
        self.options = tuple(options)
        user_flags = _check_options(self.options)
        masked = _mask(_kernel_scan_source(code))
        decls, self._templates = _find_kernels(masked)
        self._decls = {d.name: d for d in decls}
        source = _rewrite_extern_shared(code, _mask(code, directives=False), name)

        emu_dir = _emu_dir()
        inc_dirs = []
        src_path = Path(name)
        if src_path.is_file():
            inc_dirs.append(src_path.resolve().parent)
        inc_dirs.append(backend.kernel_dir())
        inc = [f"-I{d}" for d in inc_dirs] + [f"-I{_cuda_include()}", f"-I{emu_dir}"]

        parts = [f'#line 1 "{_c_escape(name)}"\n', source, "\n"]
        parts.append('#line 1 "<gpugrad-emu-wrappers>"\n')
        parts.append(_WRAPPER_PRELUDE)
        for d in decls:
            parts.append(_WRAPPER.format(name=d.name, qual=d.qualified, n=len(d.params)))
        gen = "".join(parts)

        flags = _common_flags(sanitize) + inc + ["-include", "cuda_emu.h"] + user_flags
        if trace:
            # why: g++'s TSan instrumentation calls a hook before every memory access (the
            # TSan runtime is not linked; trace.cpp defines the hooks); no SRA/vectorizer so
            # that float4 accesses stay one 16-byte access and scalar ones stay scalar
            flags += [
                "-fsanitize=thread",
                "--param",
                "tsan-instrument-func-entry-exit=0",
                "-fno-tree-sra",
                "-fno-tree-vectorize",
                "-g",  # line tables: profile.py names the source line of each access
            ]
        user_dirs = [Path(f[2:]) for f in user_flags if f.startswith("-I")]
        h = hashlib.sha256()
        for part in (
            b"gpugrad-emu-1",
            gen.encode(),
            (emu_dir / "cuda_emu.h").read_bytes(),
            (emu_dir / "runtime.cpp").read_bytes(),
            (emu_dir / "trace.cpp").read_bytes() if trace else b"",
            "\0".join(flags).encode(),
            _cxx_version().encode(),
        ):
            h.update(part)
            h.update(b"\0")
        for path, data in _quoted_includes(code, inc_dirs + user_dirs, set()):
            h.update(path.encode() + b"\0" + data + b"\0")
        digest = h.hexdigest()[:32]
        out_dir = backend.cache_dir() / "emu"
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^\w.-]", "_", Path(name).name)[:40] or "module"
        kind = "-asan" if sanitize else "-trace" if trace else ""
        self.so_path = out_dir / f"{stem}-{digest}{kind}.so"

        with _build_lock:
            if self.so_path.exists():
                _count(cache_hits=1)
            else:
                rt = _runtime_object(sanitize, inc)
                objs = [str(rt)] + (
                    [str(_runtime_object(False, inc, "trace.cpp"))] if trace else []
                )

                def build(tmp):
                    src_file = tmp + ".cpp"
                    Path(src_file).write_text(gen)
                    try:
                        if trace:  # compile, then link without -fsanitize (no libtsan)
                            obj = tmp + ".o"
                            _run_compiler(
                                [_cxx(), *flags, "-x", "c++", "-c", src_file, "-o", obj],
                                f"compiling {name} for the CUDA emulator (profiling build)",
                            )
                            link = [_cxx(), "-shared", "-pthread", obj, *objs, "-o", tmp]
                            try:
                                _run_compiler(link, f"linking {name} (profiling build)")
                            finally:
                                os.unlink(obj)
                            return
                        _run_compiler(
                            [
                                _cxx(),
                                *flags,
                                "-shared",
                                "-x",
                                "c++",
                                src_file,
                                "-x",
                                "none",
                                *objs,
                                "-o",
                                tmp,
                            ],
                            f"compiling {name} for the CUDA emulator",
                        )
                    finally:
                        os.unlink(src_file)

                if _atomic_build(self.so_path, build):
                    _count(compiles=1)
                else:  # another process built it meanwhile
                    _count(cache_hits=1)
            lib = _libs.get(str(self.so_path))
            if lib is None:
                lib = ctypes.CDLL(str(self.so_path), mode=os.RTLD_LOCAL | os.RTLD_NOW)
                _libs[str(self.so_path)] = lib
        self._lib = lib
        self._launch = lib.gpugrad_emu_launch
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_ulonglong,
            ctypes.POINTER(_Config),
            ctypes.POINTER(_Stats),
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        self._set_ftz = getattr(lib, "gpugrad_emu_set_ftz", None)
        if self._set_ftz is not None:
            self._set_ftz.restype = None
            self._set_ftz.argtypes = [ctypes.c_int]
        # CuPy appends -ftz=true to every NVRTC compile; the last -ftz option wins
        self.ftz = True
        for opt in self.options:
            m = re.fullmatch(r"-{1,2}ftz=(true|false)", str(opt))
            if m:
                self.ftz = m.group(1) == "true"
        self._launch_coop = lib.gpugrad_emu_launch_cooperative
        self._launch_coop.restype = ctypes.c_int
        self._launch_coop.argtypes = self._launch.argtypes
        self._kernels: dict[str, EmuKernel] = {}

    @classmethod
    def from_file(cls, path, *, options: tuple[str, ...] = (), sanitize: bool = False):
        """Compile the ``.cu`` file at ``path`` (diagnostics name that path)."""
        path = Path(path)
        return cls(path.read_text(), name=str(path), options=options, sanitize=sanitize)

    @property
    def kernels(self) -> tuple[str, ...]:
        """Names of the launchable kernels (non-template ``__global__`` functions)."""
        return tuple(self._decls)

    def get_function(self, name: str) -> EmuKernel:
        k = self._kernels.get(name)
        if k is not None:
            return k
        decl = self._decls.get(name)
        if decl is None:
            msg = f"no kernel named {name!r} in {self.name}; kernels: {', '.join(self._decls) or 'none'}"
            if name in self._templates:
                msg += (
                    f" ({name!r} is a template kernel: wrap the instantiation you need in an "
                    'extern "C" __global__ function)'
                )
            raise KernelNotFoundError(msg)
        k = EmuKernel(self, decl)
        self._kernels[name] = k
        return k

    def __repr__(self):
        return f"<EmuModule {self.name} ({len(self._decls)} kernels){' asan' if self.sanitize else ''}>"


def _dim3(v, what: str, kernel: str) -> tuple[int, int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        t = (int(v),)
    elif isinstance(v, (tuple, list)) and 1 <= len(v) <= 3:
        t = tuple(v)
        if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in t):
            raise TypeError(f"kernel {kernel}: {what} must hold ints; got {v!r}")
        t = tuple(int(x) for x in t)
    else:
        raise TypeError(
            f"kernel {kernel}: {what} must be an int or a tuple of 1 to 3 ints; got {v!r}"
        )
    return (t + (1, 1))[:3]


def _describe(v) -> str:
    if isinstance(v, np.ndarray):
        return f"ndarray(dtype={v.dtype}, shape={v.shape})"
    if isinstance(v, np.generic):
        return f"np.{v.dtype.name}({v!r})"
    return f"{type(v).__name__} {v!r}"[:80]


class EmuKernel:
    """One kernel of an :class:`EmuModule`; call as ``k(grid, block, args, shared_mem=0)``."""

    def __init__(self, module: EmuModule, decl: _KernelDecl):
        self.module = module
        self.name = decl.name
        lib = module._lib
        self._entry = ctypes.cast(lib[f"gpugrad_emu_entry_{decl.name}"], ctypes.c_void_p).value
        sig = lib[f"gpugrad_emu_sig_{decl.name}"]
        sig.restype = ctypes.c_int
        codes = (ctypes.c_int * 64)()
        sizes = (ctypes.c_int * 64)()
        n = sig(codes, sizes, 64)
        texts = decl.params if len(decl.params) == n else [("", f"arg{i}") for i in range(n)]
        self.params = tuple(
            _make_param(codes[i], sizes[i], texts[i][0], texts[i][1]) for i in range(n)
        )
        self.max_threads_per_block = MAX_THREADS_PER_BLOCK
        bound = _int_value(decl.launch_bounds, module._code, module.options)
        self.launch_bounds = bound
        if bound:
            self.max_threads_per_block = min(bound, MAX_THREADS_PER_BLOCK)
        # like CuPy's attribute: raise it to opt in to more than 48 KiB of dynamic shared memory
        self.max_dynamic_shared_size_bytes = DEFAULT_SHARED_LIMIT
        self.shared_size_bytes = 0  # static __shared__ size is not known to the emulator
        # flush float32 denormals like -ftz=true only where no float64 would be flushed too
        dtypes = {p.dtype for p in self.params if isinstance(p.dtype, np.dtype)}
        self.ftz = (
            module.ftz and np.dtype(np.float32) in dtypes and np.dtype(np.float64) not in dtypes
        )

    def __repr__(self):
        sig = ", ".join(f"{p.ctype} {p.name}" for p in self.params)
        return f"<EmuKernel {self.name}({sig}) from {self.module.name}>"

    # -- tracing (trace=True modules)
    def _trace_begin(self, grid, args, shared_mem):
        lib = self.module._lib
        nblocks = grid[0] * grid[1] * grid[2]
        choose = self.module.trace_blocks
        if choose is None:
            blocks = _default_trace_blocks(nblocks)
        else:
            blocks = choose(nblocks) if callable(choose) else choose
        blocks = sorted({int(x) for x in blocks if 0 <= int(x) < nblocks})
        arrays = tuple(
            (v.ctypes.data, v.nbytes) if isinstance(v, np.ndarray) and v.ndim else (0, 0)
            for v in args
        )
        ranges = (ctypes.c_ulonglong * max(1, 2 * len(arrays)))(
            *[x for lo, n in arrays for x in (lo, lo + n)]
        )
        blk = (ctypes.c_uint * max(1, len(blocks)))(*blocks)
        limit = int(os.environ.get("GPUGRAD_EMU_TRACE_LIMIT", "20000000"))
        lib.gpugrad_trace_begin.restype = None
        lib.gpugrad_trace_begin(
            ranges,
            ctypes.c_int(len(arrays)),
            ctypes.c_ulonglong(shared_mem),
            blk,
            ctypes.c_int(len(blocks)),
            ctypes.c_ulonglong(limit),
        )
        return tuple(blocks), arrays

    def _trace_end(self, grid, block, shared_mem, blocks, arrays):
        lib = self.module._lib
        dropped = ctypes.c_ulonglong(0)
        lib.gpugrad_trace_end.restype = ctypes.c_ulonglong
        n = lib.gpugrad_trace_end(ctypes.byref(dropped))
        recs = np.empty(n, TRACE_DTYPE)
        lib.gpugrad_trace_fetch.restype = ctypes.c_ulonglong
        got = lib.gpugrad_trace_fetch(recs.ctypes.data_as(ctypes.c_void_p), ctypes.c_ulonglong(n))
        trace = Trace(
            self.name, grid, block, shared_mem, blocks, recs[:got], arrays, int(dropped.value)
        )
        self.module.traces.append(trace)

    # -- argument checking
    def _err(self, i: int, p: Param, msg: str) -> str:
        return f"kernel {self.name}: parameter {i} '{p.name}' ({p.ctype}): {msg}"

    def _pointer(self, i: int, p: Param, v):
        if v is None:
            return ctypes.c_void_p(None)
        if type(v).__module__.startswith("cupy"):
            raise TypeError(
                self._err(
                    i,
                    p,
                    "got a CuPy array; emulated kernels take NumPy arrays (host memory "
                    "stands for device memory)",
                )
            )
        if not isinstance(v, np.ndarray):
            raise TypeError(self._err(i, p, f"expected a NumPy array, got {_describe(v)}"))
        want = p.dtype
        if want is not None:
            if want == "bfloat16":
                ok = v.dtype.name == "bfloat16" or v.dtype == np.uint16
            else:
                ok = v.dtype == want
            if not ok:
                raise TypeError(
                    self._err(i, p, f"expected an array of dtype {want}, got {_describe(v)}")
                )
        if not v.flags.c_contiguous:
            raise ValueError(
                self._err(
                    i,
                    p,
                    f"the array must be C-contiguous (got strides {v.strides}); pass "
                    "np.ascontiguousarray(x)",
                )
            )
        if p.width > 1 and v.size % p.width:
            raise ValueError(
                self._err(
                    i,
                    p,
                    f"the array size {v.size} is not a multiple of {p.width} "
                    f"({p.ctype} reads {p.width}-vectors)",
                )
            )
        addr = v.ctypes.data
        if addr % p.align:
            raise ValueError(
                self._err(
                    i,
                    p,
                    f"the array data at 0x{addr:x} is not {p.align}-byte aligned, "
                    "as the GPU requires for this type",
                )
            )
        return ctypes.c_void_p(addr)

    def _scalar(self, i: int, p: Param, v):
        want = p.dtype
        if isinstance(v, (bool, int, float, complex)):
            np_name = {"bool": "bool_"}.get(str(want), str(want))
            raise TypeError(
                self._err(
                    i,
                    p,
                    f"got Python {type(v).__name__} {v!r}; pass np.{np_name}({v!r}) "
                    "(a GPU would read the bytes of a Python number as garbage)",
                )
            )
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v[()]
        if not isinstance(v, np.generic):
            raise TypeError(self._err(i, p, f"expected a np.{want} scalar, got {_describe(v)}"))
        ok = (
            (v.dtype.name == "bfloat16" or v.dtype == np.uint16)
            if want == "bfloat16"
            else v.dtype == want
        )
        if not ok:
            raise TypeError(self._err(i, p, f"expected a np.{want} scalar, got {_describe(v)}"))
        data = np.asarray(v).tobytes()
        if len(data) != p.size:
            raise TypeError(
                self._err(i, p, f"size mismatch: {len(data)} bytes for a {p.size}-byte parameter")
            )
        return ctypes.create_string_buffer(data, len(data))

    def __call__(self, grid, block, args, shared_mem: int = 0, **kw):
        if "stream" in kw:
            kw.pop("stream")  # CuPy compatibility: there is one implicit stream
        if kw:
            raise TypeError(f"kernel {self.name}: unexpected keyword arguments {sorted(kw)}")
        g = _dim3(grid, "grid", self.name)
        b = _dim3(block, "block", self.name)
        for dims, lim, what in ((g, MAX_GRID_DIM, "grid"), (b, MAX_BLOCK_DIM, "block")):
            for axis, (d, m) in enumerate(zip(dims, lim)):
                if not 1 <= d <= m:
                    raise ValueError(
                        f"kernel {self.name}: {what}{'xyz'[axis]}={d} is outside [1, {m}] "
                        f"({what}={dims}); a GPU refuses this launch"
                    )
        nthreads = b[0] * b[1] * b[2]
        if nthreads > MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"kernel {self.name}: block {b} has {nthreads} threads; at most "
                f"{MAX_THREADS_PER_BLOCK} per block"
            )
        if nthreads > self.max_threads_per_block:
            raise ValueError(
                f"kernel {self.name}: block {b} has {nthreads} threads but the kernel is declared "
                f"__launch_bounds__({self.launch_bounds}); a GPU refuses this launch"
            )
        shared_mem = int(shared_mem)
        limit = int(self.max_dynamic_shared_size_bytes)
        if limit > MAX_SHARED_OPTIN:
            raise ValueError(
                f"kernel {self.name}: max_dynamic_shared_size_bytes={limit} exceeds the "
                f"{MAX_SHARED_OPTIN}-byte opt-in maximum"
            )
        if not 0 <= shared_mem <= limit:
            extra = (
                f"; set kernel.max_dynamic_shared_size_bytes (up to {MAX_SHARED_OPTIN}) to opt in"
                if shared_mem > limit and limit < MAX_SHARED_OPTIN
                else ""
            )
            raise ValueError(
                f"kernel {self.name}: shared_mem={shared_mem} bytes of dynamic shared memory "
                f"exceeds the limit of {limit} bytes{extra}"
            )
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                f"kernel {self.name}: args must be a tuple or list; got {_describe(args)}"
            )
        if len(args) != len(self.params):
            sig = ", ".join(f"{p.ctype} {p.name}" for p in self.params)
            raise TypeError(
                f"kernel {self.name}({sig}) takes {len(self.params)} arguments; got {len(args)}"
            )
        keep = []
        for i, (p, v) in enumerate(zip(self.params, args)):
            if not p.supported:
                raise TypeError(
                    self._err(
                        i,
                        p,
                        "this parameter type is not supported by the emulator (only "
                        "pointers to scalars/vectors and scalar values)",
                    )
                )
            keep.append(self._pointer(i, p, v) if p.pointer else self._scalar(i, p, v))
        argv = (ctypes.c_void_p * max(1, len(keep)))()
        for i, obj in enumerate(keep):
            argv[i] = ctypes.addressof(obj)

        cfg = _Config(
            _ORDERS[_config["order"]],
            0 if _config["exit_at_barrier"] == "error" else 1,
            _config["seed"] & (2**64 - 1),
            _config["workers"],
        )
        st = _Stats()
        launch = self.module._launch
        if self.module.enable_cooperative_groups:
            _check_cooperative_grid(self.name, g, b, shared_mem)
            launch = self.module._launch_coop
        err = ctypes.create_string_buffer(4096)
        traced = None
        if self.module.trace:
            cfg.workers = 1  # trace.cpp records from one thread
            traced = self._trace_begin(g, args, shared_mem)
            if not self.module.trace_run_all:
                subset = (ctypes.c_ulonglong * max(1, len(traced[0])))(*traced[0])
                fn = self.module._lib.gpugrad_emu_set_block_subset
                fn.restype = None
                fn(subset, ctypes.c_ulonglong(len(traced[0])))
        if self.module._set_ftz is not None:
            self.module._set_ftz(1 if self.ftz else 0)  # consumed by the launch below
        rc = launch(
            self._entry,
            argv,
            (ctypes.c_uint * 3)(*g),
            (ctypes.c_uint * 3)(*b),
            shared_mem,
            ctypes.byref(cfg),
            ctypes.byref(st),
            err,
            len(err),
        )
        if traced is not None:
            self._trace_end(g, b, shared_mem, *traced)
        _count(
            launches=1,
            blocks=st.blocks,
            threads=st.threads,
            poisoned_reads=st.poisoned_reads,
            exit_barrier_warnings=st.exit_barrier_warnings,
            fiber_switches=st.switches,
        )
        if rc != 0:
            msg = err.value.decode(errors="replace")
            raise EmuError(f"kernel {self.name} (grid={g}, block={b}): {msg}")
        if st.poisoned_reads:
            warnings.warn(
                f"kernel {self.name}: {st.poisoned_reads} warp shuffle read(s) from a lane that "
                "exited, does not exist or is not in the mask (undefined on a GPU; the emulator "
                "returned NaN/garbage)",
                EmuWarning,
                stacklevel=2,
            )
        if st.exit_barrier_warnings:
            warnings.warn(
                f"kernel {self.name}: {st.exit_barrier_warnings} barrier(s) released with exited "
                "threads (undefined on a GPU)",
                EmuWarning,
                stacklevel=2,
            )


# --------------------------------------------------------------------------- cooperative launch

# The emulated GPU for the co-residency check (H100 SXM, per SM): what
# cudaOccupancyMaxActiveBlocksPerMultiprocessor counts, except registers (unknown here).
COOP_NUM_SMS = 132
SM_MAX_THREADS = 2048
SM_MAX_BLOCKS = 32
SM_SHARED_BYTES = 228 * 1024
SM_SHARED_RESERVED_PER_BLOCK = 1024


def cooperative_max_blocks(threads_per_block: int, shared_mem: int = 0) -> int:
    """Most blocks of ``threads_per_block`` threads and ``shared_mem`` bytes of shared
    memory that are resident at once on the emulated GPU (132 SMs of an H100): the
    largest grid a cooperative launch accepts.

    >>> from gpugrad.backend import emu
    >>> emu.cooperative_max_blocks(256, 0), emu.cooperative_max_blocks(256, 100 * 1024)
    (1056, 264)
    """
    threads = max(1, int(threads_per_block))
    warps = -(-threads // 32)
    per_sm = min(SM_MAX_BLOCKS, SM_MAX_THREADS // (32 * warps))
    per_sm = min(per_sm, SM_SHARED_BYTES // (int(shared_mem) + SM_SHARED_RESERVED_PER_BLOCK))
    return COOP_NUM_SMS * max(0, per_sm)


def _check_cooperative_grid(name: str, grid, block, shared_mem: int) -> None:
    blocks = grid[0] * grid[1] * grid[2]
    threads = block[0] * block[1] * block[2]
    limit = cooperative_max_blocks(threads, shared_mem)
    if blocks > limit:
        raise EmuError(
            f"kernel {name}: cooperative launch of {blocks} blocks (grid={tuple(grid)}) exceeds "
            f"the {limit} blocks that can be resident at once ({COOP_NUM_SMS} SMs for "
            f"{threads} threads and {shared_mem} bytes of shared memory per block); a GPU "
            "refuses it (cudaErrorCooperativeLaunchTooLarge)"
        )
