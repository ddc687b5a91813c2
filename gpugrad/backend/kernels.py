"""Loader and host wrappers for the hand-written CUDA kernels in ``kernels/*.cu``.

Each ``.cu`` file is read once and compiled lazily the first time one of its
kernels is launched: on device ``cuda`` with NVRTC (``cupy.RawModule``), cached per
(file, GPU id); on device ``emu`` with the CPU emulator of the CUDA execution model
(``gpugrad.backend.emu.EmuModule``), cached per file. Both give kernels with the
one calling convention ``k(grid, block, args, shared_mem=0)``.

The launch configuration of every kernel is computed by one ``plan_*`` function
that both devices share (the emulator pretends to be an H100 with 132 SMs), so the
emulator exercises the very launch code that runs on the GPU.

Host wrappers (the op layer's entry points; arrays are NumPy on ``emu`` and CuPy
on ``cuda``, float32 or float64, any strides):

>>> import numpy as np
>>> from gpugrad import backend
>>> from gpugrad.backend import kernels
>>> backend.set_device("emu")                                    # doctest: +SKIP
>>> a = np.ones((3, 5), np.float32); b = np.ones((5, 2), np.float32)
>>> kernels.matmul(a, b, bias=np.full(2, -6, np.float32), relu=True)  # doctest: +SKIP
array([[0., 0.], [0., 0.], [0., 0.]], dtype=float32)
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpugrad import backend
from gpugrad.backend import dispatch

__all__ = [
    "KernelCompileError",
    "get_policy",
    "report",
    "reset_report",
    "set_policy",
    "conv2d_bwd_data",
    "conv2d_bwd_filter",
    "conv2d_fwd",
    "get_kernel",
    "launches",
    "list",
    "lstm_cell_bwd",
    "lstm_cell_fwd",
    "lstm_persistent_bwd",
    "lstm_persistent_fwd",
    "lstm_persistent_plan",
    "matmul",
    "relu_bwd",
    "relu_fwd",
    "reset_launches",
    "set_tf32_mode",
    "tf32",
]

INT32_MAX = 2**31 - 1
GRID_YZ_MAX = 65535
EMU_NUM_SMS = 132  # the emulator plans launches as for an H100 SXM
EMU_MAX_SHARED = 48 * 1024  # default dynamic + static shared memory per block
EMU_MAX_SHARED_OPTIN = 227 * 1024  # with the opt-in attribute (an H100's limit)


class KernelCompileError(RuntimeError):
    """A ``.cu`` file failed to compile (the message carries the NVRTC or g++ log)."""


@dataclass(frozen=True)
class KernelInfo:
    """One ``extern "C" __global__`` entry point."""

    name: str
    file: str
    op: str
    dtype: str


def _entries(file: str, op: str, bases: tuple[str, ...], dtypes=("f32", "f64")):
    return [KernelInfo(f"{base}_{dt}", file, op, dt) for base in bases for dt in dtypes]


# one entry point per (tile, layout, mask): see kernels/matmul.cu
MATMUL_LAYOUTS = {
    (False, False): "",
    (False, True): "_nt",
    (True, False): "_tn",
    (True, True): "_tt",
}
TF32_MODES = ("tf32", "3xtf32")  # kernels/matmul_tf32.cu


def _matmul_entries():
    rows = []
    for base, op, dtypes in (
        ("matmul_fwd", "matmul/fullyconnect (forward, both backward GEMMs)", ("f32", "f64")),
        ("matmul_small", "matmul/fullyconnect (small problems)", ("f32", "f64")),
        ("matmul_mid", "matmul/fullyconnect (mid-size problems, split-K)", ("f32",)),
        ("matmul_wide", "matmul/fullyconnect (M <= 32: batch-1, split-K)", ("f32",)),
    ):
        for mask in ("", "_mask"):
            variants = tuple(f"{base}{lay}{mask}" for lay in MATMUL_LAYOUTS.values())
            rows += _entries(
                "matmul.cu", op + (" with relu-mask prologue" if mask else ""), variants, dtypes
            )
    rows += _entries("matmul.cu", "matmul split-K reduction + epilogue", ("matmul_splitk_reduce",))
    for mode in TF32_MODES:
        variants = tuple(f"matmul_{mode}{lay}" for lay in MATMUL_LAYOUTS.values())
        op = f"matmul/fullyconnect, float32 on tensor cores ({mode}; gg.kernels.allow_tf32)"
        rows += _entries("matmul_tf32.cu", op, variants, ("f32",))
        if mode == "tf32":  # the 64-row tile: TF32 only
            variants = tuple(
                f"matmul_tf32_m64{MATMUL_LAYOUTS[(False, tb)]}" for tb in (False, True)
            )
            rows += _entries("matmul_tf32.cu", op + ", M <= 64", variants, ("f32",))
    return rows


def _conv_tf32_entries():
    rows = []
    for mode in TF32_MODES:
        for base, what in (
            ("conv2d_fwd", "forward (+bias, relu)"),
            ("conv2d_bwd_data", "backward (input gradient)"),
            ("conv2d_bwd_filter", "backward (filter gradient)"),
        ):
            op = f"dlconv {what}, float32 on tensor cores ({mode}; gg.kernels.allow_tf32)"
            rows += _entries("conv2d_tf32.cu", op, (f"{base}_{mode}",), ("f32",))
    return rows


_TABLE: dict[str, KernelInfo] = {
    info.name: info
    for info in [
        *_matmul_entries(),
        *_entries("conv2d.cu", "dlconv forward (+bias, relu)", ("conv2d_fwd",)),
        *_entries("conv2d.cu", "dlconv backward (input gradient)", ("conv2d_bwd_data",)),
        *_entries("conv2d.cu", "dlconv backward (filter gradient)", ("conv2d_bwd_filter",)),
        *_conv_tf32_entries(),
        *_entries("relu.cu", "relu forward", ("relu_fwd",)),
        *_entries("relu.cu", "relu backward", ("relu_bwd",)),
        *_entries("lstm.cu", "lstm cell forward (one launch per time step)", ("lstm_fwd",)),
        *_entries("lstm.cu", "lstm cell backward (one launch per time step)", ("lstm_bwd",)),
        *_entries(
            "lstm_persistent.cu",
            "lstm forward, whole recurrence in one cooperative launch",
            ("lstm_fwd_persistent",),
        ),
        *_entries(
            "lstm_persistent.cu",
            "lstm backward, whole recurrence in one cooperative launch",
            ("lstm_bwd_persistent",),
        ),
    ]
}

_COOPERATIVE_FILES = frozenset({"lstm_persistent.cu"})  # kernels with a grid-wide barrier
_lock = threading.Lock()
_launch_counts: dict[str, int] = {}
# --- gg.dlaccelerate graph hook (gpugrad/_accel_graph.py) -----------------------------
# None, or a callable seeing every launch as (name, grid, block, args, shared_mem) just
# before it runs: the accelerator counts a replay's launches and, on emu, records and
# checks the launches of a captured graph. Nothing else sets it.
LAUNCH_HOOK = None
# --- end of the graph hook -------------------------------------------------------------
_modules: dict[tuple, object] = {}
_functions: dict[tuple, object] = {}
_sources: dict[str, str] = {}
# True while gpugrad.backend.profile runs a case: emu launches use the profiling builds
# (EmuModule(trace=True)), cached apart from the ordinary ones
_emu_trace = False


# --------------------------------------------------------------------------- registry


def list() -> builtins.list[dict]:  # noqa: A001 - the public name is gg.kernels.list()
    """The hand-written kernels: one dict per entry point with ``name``, ``file``,
    ``op`` (which gpugrad op launches it) and ``dtype``.

    >>> from gpugrad.backend import kernels
    >>> any(row["name"] == "relu_fwd_f32" for row in kernels.list())
    True
    """
    return [dict(name=i.name, file=i.file, op=i.op, dtype=i.dtype) for i in _TABLE.values()]


def launches() -> dict[str, int]:
    """Number of launches per kernel name since start (or the last ``reset_launches``),
    counted on ``cuda`` and ``emu`` alike.

    >>> from gpugrad.backend import kernels
    >>> isinstance(kernels.launches(), dict)
    True
    """
    with _lock:
        return dict(_launch_counts)


def reset_launches() -> None:
    """Set every launch count back to zero."""
    with _lock:
        _launch_counts.clear()


def set_policy(policy: str | None) -> None:
    """Which implementation runs matmul and conv2d: ``"hand"`` (the hand-written
    kernels), ``"vendor"`` (cuBLAS/cuDNN where available) or ``"auto"`` (time every
    candidate on first use of a shape class, keep the fastest; cached on disk). ``None``
    restores ``$GPUGRAD_KERNEL_POLICY`` or the device default (``auto`` on cuda, ``hand``
    on emu). See ``gpugrad.backend.dispatch``.

    >>> from gpugrad.backend import kernels
    >>> kernels.set_policy("hand"); kernels.get_policy()
    'hand'
    >>> kernels.set_policy(None)
    """
    dispatch.set_policy(policy)


def get_policy() -> str:
    """The active dispatch policy (``"hand"``, ``"vendor"`` or ``"auto"``)."""
    return dispatch.get_policy()


def report():
    """Which implementation ran for each op, shape class and dtype (counts), and what
    ``auto`` chose with its timings: a ``dispatch.KernelReport`` (``str()`` prints a
    table, ``.as_dict()`` gives plain dicts).

    >>> from gpugrad.backend import kernels
    >>> kernels.report().policy in ("hand", "vendor", "auto")
    True
    """
    return dispatch.report()


def reset_report() -> None:
    """Zero the counts of ``report()``."""
    dispatch.reset_report()


# --------------------------------------------------------------------------- compiling


_QUOTED_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*$', re.M)


def expand_includes(path, seen=None) -> str:
    """The text of the kernel source ``path`` with every ``#include "name"`` that names a
    file in ``kernels/`` (e.g. ``common.cuh``) replaced by that file's text, each file
    once, with ``#line`` markers so diagnostics name the real file and line.

    Both compilers get this one text: CuPy's kernel cache is keyed by the source text,
    so a change to a header alone would otherwise reuse a stale binary.

    >>> from gpugrad import backend
    >>> text = expand_includes(backend.kernel_dir() / "relu.cu")
    >>> [line for line in text.splitlines() if line.startswith("#include")]
    []
    >>> "namespace gg_common" in text
    True
    """
    path = Path(path).resolve()
    seen = set() if seen is None else seen
    seen.add(path)
    text = path.read_text()
    pieces, last = [], 0
    for m in _QUOTED_INCLUDE.finditer(text):
        inc = (path.parent / m.group(1)).resolve()
        if not inc.is_file():
            inc = (backend.kernel_dir() / m.group(1)).resolve()
        if not inc.is_file():
            continue  # left to the compiler's own include path
        line_after = text.count("\n", 0, m.end()) + 2
        pieces.append(text[last : m.start()])
        if inc not in seen:
            pieces.append(f'#line 1 "{inc}"\n{expand_includes(inc, seen)}\n')
        pieces.append(f'#line {line_after} "{path}"')
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces)


def _source(file: str) -> str:
    text = _sources.get(file)
    if text is None:
        text = expand_includes(backend.kernel_dir() / file)
        _sources[file] = text
    return text


def _device_key():
    dev = backend.device()
    if backend.is_cuda():  # cuda-sim: key ("cuda-sim", 0), RawModule of the simulation
        return (dev, backend.cupy_module().cuda.runtime.getDevice())
    if dev == "emu":
        return ("emu", "trace") if _emu_trace else ("emu",)
    raise backend.DeviceError(
        "gpugrad kernels run on device 'cuda' or 'emu', but the active device is 'cpu'; "
        "use gpugrad.backend.set_device('emu') (CPU emulator) or run on a GPU"
    )


def _compile(file: str, key):
    path = backend.kernel_dir() / file
    text = _source(file)
    if key[0] != "emu":  # cuda and cuda-sim (whose cupy_module() is the simulation)
        cp = backend.cupy_module()
        # #line makes NVRTC report errors as matmul.cu(LINE) instead of a temp name.
        code = f'#line 1 "{path}"\n{text}'
        coop = file in _COOPERATIVE_FILES  # launched with cuLaunchCooperativeKernel
        module = cp.RawModule(code=code, options=("-std=c++17",), enable_cooperative_groups=coop)
        try:
            module.compile()
        except Exception as exc:  # CompileException carries the NVRTC log
            raise KernelCompileError(f"NVRTC failed to compile {path}:\n{exc}") from exc
        return module
    from gpugrad.backend import emu

    try:
        # GPUGRAD_EMU_SANITIZE=1: AddressSanitizer build (the process must run under
        # emu.asan_env(), see emu.run_in_subprocess); reports out-of-bounds accesses.
        sanitize = os.environ.get("GPUGRAD_EMU_SANITIZE", "") not in ("", "0")
        if key[1:] == ("trace",):
            return emu.EmuModule(text, name=str(path), trace=True)
        return emu.EmuModule(
            text,
            name=str(path),
            options=(),
            sanitize=sanitize,
            enable_cooperative_groups=file in _COOPERATIVE_FILES,
        )
    except Exception as exc:
        raise KernelCompileError(f"the emulator failed to compile {path}:\n{exc}") from exc


def _function(name: str):
    info = _TABLE.get(name)
    if info is None:
        raise KeyError(f"no kernel named {name!r}; see gpugrad.backend.kernels.list()")
    key = _device_key()
    fkey = (name, key)
    fn = _functions.get(fkey)
    if fn is None:
        with _lock:
            module = _modules.get((info.file, key))
            if module is None:
                module = _compile(info.file, key)
                _modules[(info.file, key)] = module
        fn = module.get_function(name)
        _functions[fkey] = fn
    return fn


def _device_props() -> dict:
    """Properties the launch planners use: number of SMs and shared memory per block."""
    if backend.is_cuda():  # cuda and cuda-sim
        cp = backend.cupy_module()
        attrs = cp.cuda.Device().attributes
        return {
            "num_sms": int(attrs["MultiProcessorCount"]),
            "max_shared": int(attrs["MaxSharedMemoryPerBlock"]),
            "max_shared_optin": int(
                attrs.get("MaxSharedMemoryPerBlockOptin", attrs["MaxSharedMemoryPerBlock"])
            ),
        }
    return {
        "num_sms": EMU_NUM_SMS,
        "max_shared": EMU_MAX_SHARED,
        "max_shared_optin": EMU_MAX_SHARED_OPTIN,
    }


class Kernel:
    """One entry point, callable as ``k(grid, block, args, shared_mem=0)`` on cuda and emu."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, grid, block, args, shared_mem: int = 0):
        fn = _function(self.name)
        props = _device_props()
        limit = max(props["max_shared"], props.get("max_shared_optin", 0))
        static = int(getattr(fn, "shared_size_bytes", 0) or 0)
        if shared_mem < 0 or shared_mem + static > limit:
            raise ValueError(
                f"kernel {self.name}: {shared_mem} bytes of dynamic shared memory (+{static} "
                f"static) exceed the device limit of {limit} bytes per block"
            )
        if shared_mem + static > props["max_shared"]:
            # past the default 48 KiB: opt in (cudaFuncSetAttribute(...,
            # MaxDynamicSharedMemorySize); CuPy, cuda-sim and emu expose it alike)
            if int(getattr(fn, "max_dynamic_shared_size_bytes", 0) or 0) < shared_mem:
                fn.max_dynamic_shared_size_bytes = shared_mem
        with _lock:
            _launch_counts[self.name] = _launch_counts.get(self.name, 0) + 1
        args = tuple(args)
        if LAUNCH_HOOK is not None:  # gg.dlaccelerate graph hook (see LAUNCH_HOOK)
            LAUNCH_HOOK(self.name, grid, block, args, shared_mem)
        if backend.device() == "emu":
            # np.float64 subclasses Python float, which the emulator's type check rejects as
            # "a Python number"; a 0-d array carries the same 8 bytes and dtype.
            args = tuple(np.asarray(v) if isinstance(v, np.float64) else v for v in args)
        fn(tuple(grid), tuple(block), args, shared_mem=shared_mem)

    def __repr__(self):
        info = _TABLE[self.name]
        return f"<gpugrad kernel {self.name} from {info.file}>"


def get_kernel(name: str) -> Kernel:
    """The kernel ``name`` (see ``list()``), compiled on first launch for the active device."""
    if name not in _TABLE:
        raise KeyError(f"no kernel named {name!r}; see gpugrad.backend.kernels.list()")
    return Kernel(name)


# --------------------------------------------------------------------------- launch plans


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Launch:
    """A kernel name with its grid and block."""

    kernel: str
    grid: tuple
    block: tuple


# name -> (entry-point base, BM, BN, BK, threads); kernels/matmul.cu documents the tiles
MATMUL_TILES = {
    "f32": {
        "large": ("matmul_fwd", 128, 128, 8, 256),
        "mid": ("matmul_mid", 64, 64, 16, 256),
        "wide": ("matmul_wide", 32, 128, 16, 128),
        "small": ("matmul_small", 32, 32, 16, 64),
    },
    "f64": {"large": ("matmul_fwd", 64, 64, 16, 256), "small": ("matmul_small", 32, 32, 16, 64)},
}
MATMUL_MAX_SPLITS = 64
MATMUL_MIN_KTILES_PER_SPLIT = 4
# dtype -> (BM, BN, BK, threads) of conv2d.cu's implicit GEMMs (see the .cu header)
CONV_TILES = {"f32": (128, 64, 8, 128), "f64": (64, 64, 8, 256)}
CONV_TILE = CONV_TILES["f32"]
# Resident blocks per SM of the conv kernels on sm_90 (ptxas registers and shared memory,
# kernels/check_compile.py); used to align backward-filter splits to whole waves when the
# device cannot be asked (emu). On cuda the compiled function's attributes are used.
CONV_BLOCKS_PER_SM = {"f32": 3, "f64": 2}
ELEMENTWISE_THREADS = 256


def matmul_splits(blocks: int, m: int, n: int, k: int, bk: int, num_sms: int) -> int:
    """How many ways to split K so that ``blocks`` output tiles make about two waves:
    1 when the tiles alone fill the SMs; each split keeps at least
    ``MATMUL_MIN_KTILES_PER_SPLIT`` k tiles, and the [splits, m, n] workspace stays
    32-bit indexable."""
    if blocks >= num_sms:
        return 1
    cap = min(
        MATMUL_MAX_SPLITS,
        k // (MATMUL_MIN_KTILES_PER_SPLIT * bk),
        INT32_MAX // max(1, m * n),
    )
    return max(1, min(_cdiv(2 * num_sms, blocks), cap))


def matmul_k_chunk(k: int, splits: int, bk: int) -> tuple[int, int]:
    """(k_chunk, splits): the k range of one split, a multiple of ``bk``, and the split
    count that covers ``k`` with it (never an empty split)."""
    if splits <= 1 or k <= 0:
        return max(k, 0), 1
    chunk = _cdiv(_cdiv(k, splits), bk) * bk
    return chunk, _cdiv(k, chunk)


def plan_matmul(
    m: int,
    n: int,
    k: int,
    dt: str,
    num_sms: int,
    tile: str | None = None,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    mask: bool = False,
    splits: int | None = None,
) -> Launch:
    """Pick the GEMM entry point (tile, layout, mask variant), its grid and split-K.

    The largest tile whose block count fills every SM once wins. Otherwise the problem
    is skinny (an LSTM step, a backward ``dpre @ R``, batch-1): K is split over
    ``grid[2]`` (see ``matmul_splits``) on the 64x64 tile, or on the 32x128 tile when
    M <= 32; when K is too short to split, the 32x32 tile gives the most blocks.
    ``tile`` and ``splits`` force a choice (tests). ``grid[2] > 1`` means the kernel
    writes partial products and ``matmul_splitk_reduce_<dt>`` applies the epilogue.
    """
    tiles = MATMUL_TILES[dt]

    def blocks(t):
        return _cdiv(m, tiles[t][1]) * _cdiv(n, tiles[t][2])

    if tile is None:
        tile = next((t for t in ("large", "mid") if t in tiles and blocks(t) >= num_sms), None)
        if tile is None:
            tile = "wide" if "wide" in tiles and m <= 32 and n > 32 else "small"
            if "mid" in tiles and tile == "small" and m > 32:
                tile = "mid"
            if tile != "small" and splits is None:
                bk = tiles[tile][3]
                if matmul_splits(blocks(tile), m, n, k, bk, num_sms) == 1:
                    tile = "small"  # nothing to split: the small tile gives the most blocks
    if tile not in tiles:
        raise ValueError(f"matmul: tile={tile!r} is not one of {sorted(tiles)} for {dt}")
    base, _, _, bk, threads = tiles[tile]
    if splits is None:
        splits = matmul_splits(blocks(tile), m, n, k, bk, num_sms)
    _, splits = matmul_k_chunk(k, int(splits), bk)
    layout = MATMUL_LAYOUTS[(bool(trans_a), bool(trans_b))]
    name = f"{base}{layout}{'_mask' if mask else ''}_{dt}"
    return Launch(name, (blocks(tile), 1, splits), (threads, 1, 1))


# tile -> (BM, BN, BK, threads) of kernels/matmul_tf32.cu's block tiles: "large"
# (128x256, 2x4 warps of 64x64, every layout) and "m64" (64x256, 4 warps of 64x64 along n
# with each k tile split between two warps; M <= 64, op(a) = a only)
TF32_TILES = {"large": (128, 256, 32, 256), "m64": (64, 256, 32, 256)}
TF32_TILE = TF32_TILES["large"]
TF32_SPLIT_K_GRANULE = 32  # k per split is a multiple of this (one k tile)
TF32_MAX_STAGES = 4  # cp.async ring depth when shared memory allows (sm_90: 4, sm_80: 3)
# split-K planning units (H100 SXM, perfmodel), SM clocks per block and k tile: "large"
# 1024 mma.sync of 2048 FLOP at 2/3 of 2048 FLOP per SM and clock (tensor-bound);
# "m64" issue-bound: 8 warps x 635 instructions per k tile (nvcc 13 SASS, profile) / 4
# per clock; at the 0.93 latency factor (8 warps) and the 0.83 sustained clock of the
# model, against 90 % of HBM per (1.83 GHz) clock
TF32_KTILE_CLOCKS = {"large": 1536, "m64": 1270}
TF32_PLAN_EFFICIENCY = 0.93 * 0.83
TF32_BYTES_PER_CLOCK = 1650


def _tf32_tile(tile: str) -> tuple:
    if tile not in TF32_TILES:
        raise ValueError(f"matmul: tf32 tile must be one of {sorted(TF32_TILES)}, got {tile!r}")
    return TF32_TILES[tile]


def tf32_tile_for(m: int, trans_a: bool = False, mode: str = "tf32") -> str:
    """The tensor-core block tile for an M-row product: ``"m64"`` when M <= 64, op(a) =
    a and ``mode`` is "tf32" (a batch-64 layer, an LSTM step ``h @ R.T``), else
    ``"large"`` (3xTF32 has no 64-row entry points: compile time).

    >>> tf32_tile_for(64), tf32_tile_for(65), tf32_tile_for(64, trans_a=True)
    ('m64', 'large', 'large')
    >>> tf32_tile_for(64, mode="3xtf32")
    'large'
    """
    return "m64" if m <= 64 and not trans_a and mode == "tf32" else "large"


def tf32_stage_bytes(trans_a: bool = False, trans_b: bool = False, tile: str = "large") -> int:
    """Shared memory of one pipeline stage of the tensor-core GEMM: a BM x 32 tile of
    op(a) and a BN x 32 tile of op(b), unpadded (the 16-byte chunks of each row are
    XOR-swizzled instead; see kernels/matmul_tf32.cu), whatever the layout.

    >>> tf32_stage_bytes(), tf32_stage_bytes(False, True, "m64")
    (49152, 40960)
    """
    bm, bn, bk, _ = _tf32_tile(tile)
    return 4 * bk * (bm + bn)


def tf32_stages(
    trans_a: bool, trans_b: bool, shared_limit: int, tile: str = "large"
) -> tuple[int, int]:
    """(stages, dynamic shared bytes) of the tensor-core GEMM's cp.async ring: as many
    stages as fit ``shared_limit`` (the opt-in limit per block: 227 KiB on an H100,
    163 KiB on an A100), at most ``TF32_MAX_STAGES``; at least 2 are needed.

    >>> tf32_stages(False, False, 227 * 1024), tf32_stages(False, True, 163 * 1024)
    ((4, 196608), (3, 147456))
    >>> tf32_stages(False, True, 163 * 1024, "m64")
    (4, 163840)
    """
    per = tf32_stage_bytes(trans_a, trans_b, tile)
    stages = min(TF32_MAX_STAGES, int(shared_limit) // per)
    if stages < 2:
        raise ValueError(
            f"matmul: the TF32 tensor-core GEMM needs {2 * per} bytes of shared memory per "
            f"block (two {per}-byte pipeline stages); this device allows {shared_limit}"
        )
    return stages, stages * per


def plan_matmul_tf32(
    m: int,
    n: int,
    k: int,
    mode: str,
    num_sms: int,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    splits: int | None = None,
    tile: str | None = None,
) -> Launch:
    """The tensor-core GEMM launch (``mode`` "tf32" or "3xtf32"): the block tile of
    :func:`tf32_tile_for` (``tile`` forces one), split-K when the tiles alone do not
    fill the SMs, with the split count that minimises the modelled time ``max(compute,
    memory)``: compute is waves x k tiles per split (``TF32_KTILE_CLOCKS`` of the tile
    over ``TF32_PLAN_EFFICIENCY``; x3 for 3xTF32), memory the operands plus the split-K
    workspace, written and read back (``TF32_BYTES_PER_CLOCK``).

    >>> plan_matmul_tf32(64, 2048, 512, "tf32", 132, trans_b=True)
    Launch(kernel='matmul_tf32_m64_nt_f32', grid=(8, 1, 4), block=(256, 1, 1))
    >>> plan_matmul_tf32(64, 4096, 4096, "tf32", 132).grid   # memory-bound: few splits
    (16, 1, 5)
    >>> plan_matmul_tf32(64, 4096, 4096, "tf32", 132, tile="large").kernel
    'matmul_tf32_f32'
    """
    if mode not in TF32_MODES:
        raise ValueError(f"matmul: tf32 mode must be one of {TF32_MODES}, got {mode!r}")
    if tile is None:
        tile = tf32_tile_for(m, trans_a, mode)
    bm, bn, bk, threads = _tf32_tile(tile)
    if tile == "m64" and (m > bm or trans_a or mode != "tf32"):
        raise ValueError(
            f"matmul: the m64 tensor-core tile takes TF32 with M <= 64 and no trans_a, got "
            f"M={m}, trans_a={bool(trans_a)}, mode={mode!r}"
        )
    blocks = _cdiv(m, bm) * _cdiv(n, bn)
    if splits is None:
        ktiles = _cdiv(max(k, 1), bk)
        cap = min(MATMUL_MAX_SPLITS, ktiles, INT32_MAX // max(1, m * n))
        cap = 1 if blocks >= num_sms else max(1, cap)
        per_ktile = TF32_KTILE_CLOCKS[tile] / TF32_PLAN_EFFICIENCY
        per_ktile *= 3 if mode == "3xtf32" else 1
        operands = 4 * (m * k + k * n + m * n)

        def cost(sp):
            chunk, sp = matmul_k_chunk(k, sp, TF32_SPLIT_K_GRANULE)
            compute = _cdiv(blocks * sp, num_sms) * _cdiv(chunk, bk) * per_ktile
            work = 2 * 4 * sp * m * n if sp > 1 else 0
            return max(compute, (operands + work) / TF32_BYTES_PER_CLOCK)

        splits = min(range(1, cap + 1), key=lambda sp: (cost(sp), sp))
    _, splits = matmul_k_chunk(k, int(splits), TF32_SPLIT_K_GRANULE)
    layout = MATMUL_LAYOUTS[(bool(trans_a), bool(trans_b))]
    base = f"matmul_{mode}" + ("_m64" if tile == "m64" else "")
    return Launch(f"{base}{layout}_f32", (blocks, 1, splits), (threads, 1, 1))


def tf32_plan_tile(plan: Launch) -> str:
    """The block tile of a :func:`plan_matmul_tf32` launch."""
    return "m64" if "_m64" in plan.kernel else "large"


def plan_elementwise(kernel: str, n: int, num_sms: int, per_thread: int = 4) -> Launch:
    """Grid-stride launch: enough blocks for one pass, capped at 8 waves of SMs."""
    blocks = max(1, min(_cdiv(_cdiv(n, per_thread), ELEMENTWISE_THREADS), 8 * num_sms))
    return Launch(kernel, (blocks, 1, 1), (ELEMENTWISE_THREADS, 1, 1))


def _conv_dt(kernel: str, dt: str | None) -> str:
    if dt is None:
        dt = kernel.rsplit("_", 1)[-1] if kernel.endswith(("_f32", "_f64")) else "f32"
    if dt not in CONV_TILES:
        raise ValueError(f"conv2d: dt={dt!r} is not one of {sorted(CONV_TILES)}")
    return dt


def plan_conv(kernel: str, m: int, n: int, groups: int, phases: int = 1) -> Launch:
    """Implicit GEMM of m x n per group: one block per BM x BN output tile (by dtype,
    ``CONV_TILES``), groups on grid.y, backward-data phases (stride_h * stride_w
    sub-pixel GEMMs; ``m`` is the largest phase's row count) on grid.z."""
    bm, bn, _, threads = CONV_TILES[_conv_dt(kernel, None)]
    if phases > GRID_YZ_MAX:
        raise ValueError(f"conv2d: stride product {phases} exceeds {GRID_YZ_MAX}")
    return Launch(kernel, (_cdiv(m, bm) * _cdiv(n, bn), groups, phases), (threads, 1, 1))


def plan_conv_filter(
    kernel: str,
    rows: int,
    n: int,
    p: int,
    groups: int,
    cout: int,
    num_sms: int,
    blocks_per_sm: int | None = None,
    dt: str | None = None,
    tile: tuple | None = None,
) -> tuple[Launch, int]:
    """Backward-filter GEMM (rows x n, reduction over p pixels), split over p into
    partial sums; returns the launch and the k chunk (pixels) per split.

    The split count minimises the modelled time ``waves(s) * k_tiles_per_split(s)``
    with ``waves(s) = ceil(tiles * s / (num_sms * blocks_per_sm))``, so the grid fills
    whole waves of resident blocks (plus a small charge per split for the host-side
    sum of the partial results); every split keeps at least 4 k-tiles.

    >>> plan, chunk = plan_conv_filter("conv2d_bwd_filter_f32", 576, 64, 64 * 56 * 56,
    ...                                1, 64, 132, blocks_per_sm=3)
    >>> blocks = plan.grid[0] * plan.grid[1] * plan.grid[2]
    >>> blocks, round(blocks / (132 * 3), 3)           # one wave at 99 % of the block slots
    (395, 0.997)
    """
    dt = _conv_dt(kernel, dt)
    bm, bn, bk, threads = CONV_TILES[dt] if tile is None else tile  # tile: (BM, BN, BK, threads)
    if blocks_per_sm is None:
        blocks_per_sm = CONV_BLOCKS_PER_SM[dt]
    slots = max(1, num_sms * max(1, blocks_per_sm))
    tiles = _cdiv(rows, bm) * _cdiv(n, bn) * groups
    ktiles = _cdiv(max(p, 1), bk)
    max_splits = max(1, min(ktiles // 4, GRID_YZ_MAX))  # at least 4 k tiles per split
    # the workspace [splits, rows, cout] must stay 32-bit indexable
    max_splits = max(1, min(max_splits, INT32_MAX // max(1, rows * cout)))
    # beyond a few waves more splits only add workspace
    max_splits = min(max_splits, max(1, _cdiv(4 * slots, tiles)))
    red = rows * cout / (slots * bm * bn)  # host sum of one split, in k-tile-wave units

    def cost(s: int) -> float:
        return _cdiv(tiles * s, slots) * _cdiv(ktiles, s) + red * s

    splits = min(range(1, max_splits + 1), key=lambda s: (cost(s), s))
    # k chunks are whole 16-pixel multiples (a multiple of BK for both dtypes)
    k_chunk = max(16, _cdiv(_cdiv(max(p, 1), splits), 16) * 16)
    splits = max(1, _cdiv(p, k_chunk))
    grid = (_cdiv(rows, bm) * _cdiv(n, bn), groups, splits)
    return Launch(kernel, grid, (threads, 1, 1)), k_chunk


def _conv_blocks_per_sm(kernel: str, dt: str) -> int:
    """Resident blocks per SM of a conv kernel: from the compiled function on cuda
    (registers, shared memory), from ``CONV_BLOCKS_PER_SM`` elsewhere."""
    if backend.device() != "cuda":
        return CONV_BLOCKS_PER_SM[dt]
    try:
        fn = _function(kernel)
        threads = CONV_TILES[dt][3]
        regs = max(1, int(fn.num_regs))
        warps = _cdiv(threads, 32)
        regs_per_warp = _cdiv(regs * 32, 256) * 256  # allocated per warp in 256-reg units
        by_regs = 65536 // (regs_per_warp * warps)
        smem = int(getattr(fn, "shared_size_bytes", 0) or 0) + 1024  # 1 KiB reserved
        by_smem = (228 * 1024) // smem
        return max(1, min(by_regs, by_smem, 64 // warps, 32))
    except Exception:  # attributes unavailable: fall back to the measured table
        return CONV_BLOCKS_PER_SM[dt]


# --------------------------------------------------------------------------- argument checks


def _dtype_suffix(dtype, fn: str, arg: str) -> str:
    if dtype == np.float32:
        return "f32"
    if dtype == np.float64:
        return "f64"
    raise TypeError(f"{fn}: {arg} has dtype {dtype}; the kernels take float32 or float64")


def _prepare(
    a, fn: str, arg: str, ndim: int | None = None, dtype=None, layout: str = "", size32=True
):
    """Contiguous xp array of a float dtype, checked for rank, dtype and (unless
    ``size32=False``: a kernel with 64-bit indices) 32-bit size."""
    if a is None:
        raise TypeError(f"{fn}: {arg} is required")
    xp = backend.xp()
    # why: ascontiguousarray makes a 0-d array 1-D (relu of a 0-d value came back (1,))
    a = xp.asarray(a, order="C")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}: {arg} must be {ndim}-D{layout}, got shape {tuple(a.shape)}")
    _dtype_suffix(a.dtype, fn, arg)
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{fn}: {arg} has dtype {a.dtype} but the other operands are {dtype}")
    if size32:
        _check_size(a.size, fn, arg)
    return a


def _check_size(count: int, fn: str, what: str) -> None:
    if count > INT32_MAX:
        raise ValueError(
            f"{fn}: {what} has {count} elements; the kernels use 32-bit indices "
            f"(at most {INT32_MAX}); split the problem"
        )


def _scalar(value, dt: str):
    return np.float32(value) if dt == "f32" else np.float64(value)


def _pair(value, fn: str, arg: str) -> tuple[int, int]:
    if np.isscalar(value):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{fn}: {arg} must be an int or a pair of ints, got {value}")
    return value


def _padding(value, fn: str) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, (ph, pw) or ((top, bottom), (left, right))."""
    if np.isscalar(value):
        p = int(value)
        return p, p, p, p
    value = tuple(value)
    if len(value) == 2 and all(np.isscalar(v) for v in value):
        return int(value[0]), int(value[0]), int(value[1]), int(value[1])
    if len(value) == 2 and all(len(tuple(v)) == 2 for v in value):
        (t, b), (l, r) = value
        return int(t), int(b), int(l), int(r)
    if len(value) == 4:
        return tuple(int(v) for v in value)
    raise ValueError(
        f"{fn}: padding must be an int, (ph, pw) or ((top, bottom), (left, right)); got {value}"
    )


# --------------------------------------------------------------------------- matmul

#: Let float32 matrix products run on the tensor cores in TF32 (PyTorch's
#: ``torch.backends.cuda.matmul.allow_tf32``). Default False: float32 products are
#: computed in FP32. Process-wide, read at every call; see :func:`tf32`.
allow_tf32 = False
#: What ``allow_tf32`` turns on: ``"tf32"`` (operands rounded to a 10-bit mantissa,
#: relative error ~1e-3) or ``"3xtf32"`` (each operand split into two TF32 numbers,
#: three tensor-core products each: FP32-level accuracy). Set with :func:`set_tf32_mode`.
tf32_mode = "tf32"


def set_tf32_mode(mode: str) -> None:
    """Choose what ``allow_tf32`` enables: ``"tf32"`` or ``"3xtf32"``.

    >>> import gpugrad as gg
    >>> gg.kernels.set_tf32_mode("3xtf32")
    >>> gg.kernels.tf32_mode
    '3xtf32'
    >>> gg.kernels.set_tf32_mode("tf32")
    """
    global tf32_mode
    if mode not in TF32_MODES:
        raise ValueError(f"set_tf32_mode: mode must be one of {TF32_MODES}, got {mode!r}")
    tf32_mode = mode


@contextlib.contextmanager
def tf32(enabled: bool = True, mode: str | None = None):
    """Context manager: ``allow_tf32 = enabled`` (and ``tf32_mode = mode`` if given)
    inside the block; the previous settings come back after it.

    With ``allow_tf32`` set, float32 products of ``matmul``/``fullyconnect`` (and the
    LSTM's GEMMs) on ``cuda`` and ``emu`` run on the tensor cores; float64 products and
    the relu-masked backward GEMM stay FP32.
    float32 convolutions (``dlconv``: forward, input and filter gradients) likewise
    (``kernels/conv2d_tf32.cu``); float64 convolutions never.

    >>> import gpugrad as gg
    >>> with gg.kernels.tf32(mode="3xtf32"):
    ...     print(gg.kernels.allow_tf32, gg.kernels.tf32_mode)
    True 3xtf32
    >>> print(gg.kernels.allow_tf32, gg.kernels.tf32_mode)
    False tf32
    """
    global allow_tf32, tf32_mode
    saved = (allow_tf32, tf32_mode)
    try:
        if mode is not None:
            set_tf32_mode(mode)
        allow_tf32 = bool(enabled)
        yield
    finally:
        allow_tf32, tf32_mode = saved


def _matmul_precision(precision, dt: str, has_mask: bool, tile) -> str:
    """'fp32' (the FMA kernels, float64 included), 'tf32' or '3xtf32'."""
    if precision is None:
        if not allow_tf32 or dt != "f32" or has_mask or tile is not None:
            return "fp32"
        if tf32_mode not in TF32_MODES:
            raise ValueError(
                f"matmul: gg.kernels.tf32_mode must be one of {TF32_MODES}, got {tf32_mode!r}"
            )
        return tf32_mode
    if precision == "fp32":
        return precision
    if precision not in TF32_MODES:
        raise ValueError(f"matmul: precision must be 'fp32', 'tf32' or '3xtf32', got {precision!r}")
    if dt != "f32":
        raise TypeError(f"matmul: precision={precision!r} needs float32 operands, got float64")
    if has_mask or tile is not None:
        raise ValueError(f"matmul: precision={precision!r} takes no mask= and no tile=")
    return precision


def matmul(
    a,
    b,
    *,
    trans_a=False,
    trans_b=False,
    bias=None,
    relu=False,
    alpha=1.0,
    mask=None,
    tile=None,
    splits=None,
    precision=None,
):
    """``act(alpha * op(a) @ op(b) + bias)`` in one kernel launch, 2-D operands only.

    ``op(x)`` is ``x.T`` when ``trans_x`` is set (no copy is made), ``bias`` has one
    entry per output column, ``relu`` applies max(., 0) in the epilogue, and ``mask``
    (shaped like ``a``) makes the kernel read ``a`` as ``where(mask > 0, a, 0)``: the
    relu backward fused into the next GEMM. ``tile`` forces a tile configuration
    (``"large"``, ``"mid"``, ``"wide"``, ``"small"``) and ``splits`` a split-K count
    (default: both chosen by ``plan_matmul``; split-K sums the partial products in a
    fixed order, so results are deterministic). ``precision``: ``"fp32"``, ``"tf32"`` or
    ``"3xtf32"`` (float32 only); default: ``"fp32"``, or ``tf32_mode`` for float32
    products without ``mask`` while ``allow_tf32`` is set.

    >>> import numpy as np
    >>> from gpugrad import backend
    >>> backend.set_device("emu")                               # doctest: +SKIP
    >>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> matmul(a, a, trans_b=True)                             # doctest: +SKIP
    array([[ 5., 14.], [14., 50.]], dtype=float32)
    """
    fn = "matmul"
    a = _prepare(a, fn, "a", ndim=2)
    dt = _dtype_suffix(a.dtype, fn, "a")
    b = _prepare(b, fn, "b", ndim=2, dtype=a.dtype)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ValueError(
            f"matmul: inner dimensions differ: op(a) is {m}x{k} and op(b) is {kb}x{n} "
            f"(a {tuple(a.shape)}, trans_a={trans_a}; b {tuple(b.shape)}, trans_b={trans_b})"
        )
    _check_size(m * n, fn, "the output")
    xp = backend.xp()
    has_bias = bias is not None
    if has_bias:
        bias = _prepare(bias, fn, "bias", dtype=a.dtype)
        if bias.size != n or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            raise ValueError(f"matmul: bias must have shape ({n},), got {tuple(bias.shape)}")
    has_mask = mask is not None
    if has_mask:
        mask = _prepare(mask, fn, "mask", dtype=a.dtype)
        if mask.shape != a.shape:
            raise ValueError(
                f"matmul: mask must have a's shape {tuple(a.shape)}, got {tuple(mask.shape)}"
            )
    if m == 0 or n == 0:
        return xp.empty((m, n), dtype=a.dtype)

    prec = _matmul_precision(precision, dt, has_mask, tile)

    def hand():
        c = xp.empty((m, n), dtype=a.dtype)
        num_sms = _device_props()["num_sms"]
        limit = _device_props()["max_shared_optin"]
        tc_tile = tf32_tile_for(m, trans_a, prec)
        fits = 2 * tf32_stage_bytes(trans_a, trans_b, tc_tile) <= limit
        # allow_tf32 only allows: a GPU with too little shared memory keeps FP32 (an
        # explicit precision= raises in tf32_stages, naming the limit)
        if prec != "fp32" and (fits or precision is not None):
            plan = plan_matmul_tf32(
                m, n, k, prec, num_sms, trans_a=trans_a, trans_b=trans_b, splits=splits
            )
            stages, smem = tf32_stages(trans_a, trans_b, limit, tf32_plan_tile(plan))
            gemm = (plan, TF32_SPLIT_K_GRANULE, a, b, c, bias, False, m, n, k, dt, alpha, relu)
            _launch_gemm(*gemm, extra=(np.int32(stages),), shared_mem=smem)
            return c
        plan = plan_matmul(
            m,
            n,
            k,
            dt,
            num_sms,
            tile,
            trans_a=trans_a,
            trans_b=trans_b,
            mask=has_mask,
            splits=splits,
        )
        bk = next(t[3] for t in MATMUL_TILES[dt].values() if plan.kernel.startswith(t[0] + "_"))
        _launch_gemm(plan, bk, a, b, c, bias, mask, m, n, k, dt, alpha, relu)
        return c

    if tile is not None or splits is not None or precision is not None:
        # a forced tile, split count or precision is a request for the hand kernel
        return hand()
    call = dict(a=a, b=b, trans_a=trans_a, trans_b=trans_b, bias=bias, relu=relu, alpha=alpha)
    call["mask"] = mask
    vendor = None
    if backend.device() == "cuda":
        vendor = lambda: vendor_matmul(**call)  # noqa: E731
    shape_class = _matmul_class(m, n, k, trans_a, trans_b, has_bias, relu, has_mask)
    if prec != "fp32":  # the hand candidate is a tensor-core kernel: its own choice
        shape_class += f" {prec}"
    return dispatch.run("matmul", shape_class, dt, hand, call=call, vendor=vendor)


def _launch_gemm(
    plan, granule, a, b, c, bias, mask, m, n, k, dt, alpha, relu, extra=(), shared_mem=0
):
    """Launch one GEMM plan (k per split a multiple of ``granule``); with split-K (grid
    z > 1) through a workspace and the reduction kernel, which applies alpha, bias and
    relu. ``mask is False``: the entry point has no mask parameter (tensor-core GEMM),
    whose last argument (``extra``) is its pipeline depth and ``shared_mem`` its ring."""
    xp = backend.xp()
    i32 = np.int32
    has_bias = bias is not None
    k_chunk, splits = matmul_k_chunk(k, plan.grid[2], granule)
    out = c if splits == 1 else xp.empty((splits, m, n), dtype=c.dtype)
    args = (
        a,
        b,
        out,
        bias if has_bias and splits == 1 else out,
        *(() if mask is False else (mask if mask is not None else a,)),
        i32(m),
        i32(n),
        i32(k),
        i32(a.shape[1]),
        i32(b.shape[1]),
        i32(n),
        i32(k_chunk),
        i32(has_bias and splits == 1),
        _scalar(alpha if splits == 1 else 1.0, dt),
        i32(bool(relu) and splits == 1),
        *extra,
    )
    get_kernel(plan.kernel)(plan.grid, plan.block, args, shared_mem=shared_mem)
    if splits > 1:
        red = plan_elementwise(f"matmul_splitk_reduce_{dt}", m * n, _device_props()["num_sms"], 1)
        args = (
            out,
            c,
            bias if has_bias else c,
            i32(m),
            i32(n),
            i32(splits),
            i32(has_bias),
            _scalar(alpha, dt),
            i32(bool(relu)),
        )
        get_kernel(red.kernel)(red.grid, red.block, args)


# --------------------------------------------------------------------------- relu


def _matmul_class(m, n, k, trans_a, trans_b, has_bias, relu, has_mask) -> str:
    layout = ("T" if trans_a else "N") + ("T" if trans_b else "N")
    fused = "".join(
        f for f, on in (("+bias", has_bias), ("+relu", relu), ("+mask", has_mask)) if on
    )
    bucket = dispatch.bucket
    return f"m{bucket(m)} n{bucket(n)} k{bucket(k)} {layout}{fused}"


def vendor_matmul(
    a, b, *, trans_a=False, trans_b=False, bias=None, relu=False, alpha=1.0, mask=None
):
    """``matmul``'s result through the array library's own GEMM (cuBLAS on CuPy): the
    vendor candidate of the dispatcher. Same semantics as the hand kernel (relu keeps
    NaN, the mask selects ``a`` where ``mask > 0``).

    >>> import numpy as np
    >>> vendor_matmul(np.ones((2, 3)), np.ones((3, 2)), bias=np.array([-4.0, 0.0]), relu=True)
    array([[0., 3.],
           [0., 3.]])
    """
    xp = backend.xp() if backend.is_device_array(a) else np
    if mask is not None:
        a = xp.where(mask > 0, a, xp.zeros((), dtype=a.dtype))
    c = xp.matmul(a.T if trans_a else a, b.T if trans_b else b)
    if alpha != 1.0:
        c *= c.dtype.type(alpha)
    if bias is not None:
        c += bias.reshape(-1)
    if relu:
        c = xp.where(c < 0, xp.zeros((), dtype=c.dtype), c)  # NaN stays NaN, like the kernel
    return c


# --------------------------------------------------------------------------- relu


def relu_fwd(x):
    """``max(x, 0)`` elementwise (NaN propagates), any shape.

    >>> relu_fwd(np.array([-1.0, 0.0, 2.0]))                  # doctest: +SKIP
    array([0., 0., 2.])
    """
    x = _prepare(x, "relu_fwd", "x", size32=False)  # relu.cu indexes with 64 bits
    dt = _dtype_suffix(x.dtype, "relu_fwd", "x")
    y = backend.xp().empty_like(x)
    if x.size:
        plan = plan_elementwise(f"relu_fwd_{dt}", x.size, _device_props()["num_sms"])
        get_kernel(plan.kernel)(plan.grid, plan.block, (x, y, np.int64(x.size)))
    return y


def relu_bwd(dy, x):
    """``where(x > 0, dy, 0)``: the relu derivative is 0 at 0.

    >>> relu_bwd(np.ones(3), np.array([-1.0, 0.0, 2.0]))       # doctest: +SKIP
    array([0., 0., 1.])
    """
    x = _prepare(x, "relu_bwd", "x", size32=False)  # relu.cu indexes with 64 bits
    dt = _dtype_suffix(x.dtype, "relu_bwd", "x")
    dy = _prepare(dy, "relu_bwd", "dy", dtype=x.dtype, size32=False)
    if dy.shape != x.shape:
        raise ValueError(f"relu_bwd: dy has shape {tuple(dy.shape)} but x has {tuple(x.shape)}")
    dx = backend.xp().empty_like(x)
    if x.size:
        plan = plan_elementwise(f"relu_bwd_{dt}", x.size, _device_props()["num_sms"])
        get_kernel(plan.kernel)(plan.grid, plan.block, (dy, x, dx, np.int64(x.size)))
    return dx


# --------------------------------------------------------------------------- lstm


def lstm_cell_fwd(gates_pre, c_prev):
    """One LSTM step from pre-activations ``gates_pre[B, 4H]`` (gate blocks input,
    forget, cell candidate, output) and ``c_prev[B, H]``.

    Returns ``(h, c, gates)`` with ``gates = [sigmoid(i), sigmoid(f), tanh(g),
    sigmoid(o)]`` saved for ``lstm_cell_bwd``.

    >>> h, c, gates = lstm_cell_fwd(np.zeros((2, 8)), np.ones((2, 2)))  # doctest: +SKIP
    >>> c                                                                # doctest: +SKIP
    array([[0.5, 0.5], [0.5, 0.5]])
    """
    fn = "lstm_cell_fwd"
    gates_pre = _prepare(gates_pre, fn, "gates_pre", ndim=2)
    dt = _dtype_suffix(gates_pre.dtype, fn, "gates_pre")
    c_prev = _prepare(c_prev, fn, "c_prev", ndim=2, dtype=gates_pre.dtype)
    bsz, hid = c_prev.shape
    if gates_pre.shape != (bsz, 4 * hid):
        raise ValueError(
            f"{fn}: gates_pre must have shape (B, 4H) = ({bsz}, {4 * hid}) for c_prev of shape "
            f"{tuple(c_prev.shape)}, got {tuple(gates_pre.shape)}"
        )
    xp = backend.xp()
    h = xp.empty_like(c_prev)
    c = xp.empty_like(c_prev)
    gates = xp.empty_like(gates_pre)
    if c_prev.size:
        plan = plan_elementwise(f"lstm_fwd_{dt}", c_prev.size, _device_props()["num_sms"], 1)
        args = (gates_pre, c_prev, h, c, gates, np.int32(bsz), np.int32(hid))
        get_kernel(plan.kernel)(plan.grid, plan.block, args)
    return h, c, gates


def lstm_cell_bwd(dh, dc, gates, c_prev, c):
    """Backward of one LSTM step: from ``dh`` and ``dc`` (gradients arriving at h_t and,
    from step t+1, at c_t; ``dc=None`` means zero) and the saved ``gates``, ``c_prev``,
    ``c``, returns ``(dgates_pre[B, 4H], dc_prev[B, H])``.

    >>> dgp, dcp = lstm_cell_bwd(dh, None, gates, c_prev, c)    # doctest: +SKIP
    """
    fn = "lstm_cell_bwd"
    gates = _prepare(gates, fn, "gates", ndim=2)
    dt = _dtype_suffix(gates.dtype, fn, "gates")
    c = _prepare(c, fn, "c", ndim=2, dtype=gates.dtype)
    bsz, hid = c.shape
    if gates.shape != (bsz, 4 * hid):
        raise ValueError(
            f"{fn}: gates must have shape (B, 4H) = ({bsz}, {4 * hid}), got {tuple(gates.shape)}"
        )
    arrays = {"dh": dh, "c_prev": c_prev}
    if dc is not None:
        arrays["dc"] = dc
    for name, arr in arrays.items():
        arr = _prepare(arr, fn, name, ndim=2, dtype=gates.dtype)
        if arr.shape != c.shape:
            raise ValueError(
                f"{fn}: {name} must have c's shape {tuple(c.shape)}, got {tuple(arr.shape)}"
            )
        arrays[name] = arr
    xp = backend.xp()
    dgates_pre = xp.empty_like(gates)
    dc_prev = xp.empty_like(c)
    if c.size:
        plan = plan_elementwise(f"lstm_bwd_{dt}", c.size, _device_props()["num_sms"], 1)
        has_dc = dc is not None
        args = (
            arrays["dh"],
            arrays["dc"] if has_dc else arrays["dh"],
            gates,
            arrays["c_prev"],
            c,
            dgates_pre,
            dc_prev,
            np.int32(bsz),
            np.int32(hid),
            np.int32(has_dc),
        )
        get_kernel(plan.kernel)(plan.grid, plan.block, args)
    return dgates_pre, dc_prev


# --------------------------------------------------------------------------- conv2d


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes and hyper-parameters of one NHWC convolution with MATLAB-layout weights."""

    n: int
    h: int
    w: int
    cin: int
    kh: int
    kw: int
    cout: int
    ho: int
    wo: int
    stride: tuple
    pad: tuple  # top, bottom, left, right
    dilation: tuple
    groups: int

    def kernel_ints(self) -> tuple:
        """The int arguments shared by the conv2d kernels, after their pointers."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        vals = (
            self.n,
            self.h,
            self.w,
            self.cin,
            self.ho,
            self.wo,
            self.cout,
            self.kh,
            self.kw,
            sh,
            sw,
            self.pad[0],
            self.pad[2],
            dh,
            dw,
            self.groups,
        )
        return tuple(np.int32(v) for v in vals)


def conv_geometry(fn, x_shape, w_shape, stride, padding, dilation, groups) -> ConvGeometry:
    """Validate shapes and hyper-parameters and compute the output size."""
    if len(x_shape) != 4:
        raise ValueError(f"{fn}: x must be 4-D [N, H, W, Cin] (NHWC), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(
            f"{fn}: weights must be 4-D [KH, KW, Cin/groups, Cout], got shape {tuple(w_shape)}"
        )
    n, h, w, cin = (int(v) for v in x_shape)
    kh, kw, cg, cout = (int(v) for v in w_shape)
    groups = int(groups)
    if groups < 1 or groups > GRID_YZ_MAX:
        raise ValueError(f"{fn}: groups must be in [1, {GRID_YZ_MAX}], got {groups}")
    if cg * groups != cin:
        raise ValueError(
            f"{fn}: x has {cin} channels but weights expect {cg} per group x {groups} groups"
        )
    if cout % groups:
        raise ValueError(f"{fn}: {cout} filters do not split into {groups} groups")
    stride = _pair(stride, fn, "stride")
    dilation = _pair(dilation, fn, "dilation")
    pad = _padding(padding, fn)
    if min(stride) < 1 or min(dilation) < 1 or min(pad) < 0:
        raise ValueError(
            f"{fn}: stride and dilation must be >= 1 and padding >= 0 "
            f"(got stride={stride}, dilation={dilation}, padding={pad})"
        )
    if min(kh, kw) < 1:
        raise ValueError(f"{fn}: the filter must be at least 1x1, got {kh}x{kw}")
    ho = (h + pad[0] + pad[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + pad[2] + pad[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{fn}: the {kh}x{kw} filter (dilation {dilation}) does not fit the padded "
            f"{h}x{w} input (padding {pad}); the output would be {ho}x{wo}"
        )
    for what, count in (("x", n * h * w * cin), ("the output", n * ho * wo * cout)):
        _check_size(count, fn, what)
    return ConvGeometry(n, h, w, cin, kh, kw, cout, ho, wo, stride, pad, dilation, groups)


def conv2d_fwd(
    x,
    w,
    bias=None,
    *,
    stride=(1, 1),
    padding=((0, 0), (0, 0)),
    dilation=(1, 1),
    groups=1,
    relu=False,
    precision=None,
):
    """2-D convolution (cross-correlation) ``y[N, Ho, Wo, Cout]`` of NHWC ``x`` with
    weights ``w[KH, KW, Cin/groups, Cout]``, plus ``bias[Cout]`` and optional relu, as
    one implicit-GEMM launch. ``padding`` is an int, ``(ph, pw)`` or
    ``((top, bottom), (left, right))``. ``precision``: ``"fp32"``, ``"tf32"`` or
    ``"3xtf32"`` (float32 only, tensor cores: ``kernels/conv2d_tf32.cu``); default:
    ``"fp32"``, or ``tf32_mode`` for float32 while ``allow_tf32`` is set (as matmul).

    >>> y = conv2d_fwd(np.ones((1, 5, 5, 3)), np.ones((3, 3, 3, 4)), padding=1)  # doctest: +SKIP
    >>> y.shape                                                                   # doctest: +SKIP
    (1, 5, 5, 4)
    """
    fn = "conv2d_fwd"
    x = _prepare(x, fn, "x", ndim=4, layout=" [N, H, W, C] (NHWC)")
    dt = _dtype_suffix(x.dtype, fn, "x")
    w = _prepare(w, fn, "w", ndim=4, dtype=x.dtype, layout=" [KH, KW, Cin/groups, Cout]")
    geo = conv_geometry(fn, x.shape, w.shape, stride, padding, dilation, groups)
    has_bias = bias is not None
    if has_bias:
        bias = _prepare(bias, fn, "bias", dtype=x.dtype)
        if bias.size != geo.cout:
            raise ValueError(f"{fn}: bias must have {geo.cout} entries, got {tuple(bias.shape)}")
    y_shape = (geo.n, geo.ho, geo.wo, geo.cout)
    if 0 in y_shape:
        return backend.xp().empty(y_shape, dtype=x.dtype)
    prec = _conv_precision(precision, dt, fn)

    def hand():
        y = backend.xp().empty(y_shape, dtype=x.dtype)
        if _conv_tf32_ok(prec, precision):
            return _conv_tf32_fwd(prec, x, w, y, bias, relu, geo)
        plan = plan_conv(
            f"conv2d_fwd_{dt}", geo.n * geo.ho * geo.wo, geo.cout // geo.groups, geo.groups
        )
        args = (
            x,
            w,
            y,
            bias if has_bias else y,
            np.int32(has_bias),
            np.int32(bool(relu)),
            *geo.kernel_ints(),
        )
        get_kernel(plan.kernel)(plan.grid, plan.block, args)
        return y

    if precision is not None:  # a forced precision is a request for the hand kernel
        return hand()
    call = dict(x=x, w=w, bias=bias, relu=relu, geometry=geo)
    return _dispatch_conv("conv2d_fwd", geo, dt, hand, call, prec)


def conv2d_bwd_data(
    dy,
    w,
    x_shape,
    *,
    stride=(1, 1),
    padding=((0, 0), (0, 0)),
    dilation=(1, 1),
    groups=1,
    precision=None,
):
    """Gradient of ``conv2d_fwd`` with respect to its input: ``dx`` of shape ``x_shape``.

    With stride > 1 the input pixels split into stride_h * stride_w phases that each see
    a fixed subset of the filter taps; every phase is one dense implicit GEMM over only
    those taps (sub-pixel decomposition), so no multiply lands on a structural zero.
    ``precision`` as in ``conv2d_fwd``.
    """
    fn = "conv2d_bwd_data"
    dy = _prepare(dy, fn, "dy", ndim=4, layout=" [N, H, W, C] (NHWC)")
    dt = _dtype_suffix(dy.dtype, fn, "dy")
    w = _prepare(w, fn, "w", ndim=4, dtype=dy.dtype, layout=" [KH, KW, Cin/groups, Cout]")
    geo = conv_geometry(fn, tuple(x_shape), w.shape, stride, padding, dilation, groups)
    expected = (geo.n, geo.ho, geo.wo, geo.cout)
    if tuple(dy.shape) != expected:
        raise ValueError(f"{fn}: dy must have shape {expected}, got {tuple(dy.shape)}")
    dx_shape = tuple(int(v) for v in x_shape)
    if 0 in dx_shape:
        return backend.xp().empty(dx_shape, dtype=dy.dtype)
    prec = _conv_precision(precision, dt, fn)

    def hand():
        dx = backend.xp().empty(dx_shape, dtype=dy.dtype)
        if _conv_tf32_ok(prec, precision):
            return _conv_tf32_bwd_data(prec, dy, w, dx, geo)
        (sh, sw) = geo.stride
        # sub-pixel decomposition: one dense GEMM per (row phase, column phase), on grid.z
        rows = geo.n * _cdiv(geo.h, sh) * _cdiv(geo.w, sw)
        plan = plan_conv(f"conv2d_bwd_data_{dt}", rows, geo.cin // geo.groups, geo.groups, sh * sw)
        get_kernel(plan.kernel)(plan.grid, plan.block, (dy, w, dx, *geo.kernel_ints()))
        return dx

    if precision is not None:
        return hand()
    call = dict(dy=dy, w=w, x_shape=dx_shape, geometry=geo)
    return _dispatch_conv("conv2d_bwd_data", geo, dt, hand, call, prec)


def conv2d_bwd_filter(
    dy,
    x,
    w_shape,
    *,
    stride=(1, 1),
    padding=((0, 0), (0, 0)),
    dilation=(1, 1),
    groups=1,
    precision=None,
):
    """Gradient of ``conv2d_fwd`` with respect to its weights: ``dw`` of shape ``w_shape``.

    The reduction over the N*Ho*Wo output pixels is split across blocks
    (``plan_conv_filter``); the partial sums are added in a fixed order, so the
    result is deterministic. ``precision`` as in ``conv2d_fwd``.
    """
    fn = "conv2d_bwd_filter"
    x = _prepare(x, fn, "x", ndim=4, layout=" [N, H, W, C] (NHWC)")
    dt = _dtype_suffix(x.dtype, fn, "x")
    dy = _prepare(dy, fn, "dy", ndim=4, dtype=x.dtype, layout=" [N, H, W, C] (NHWC)")
    geo = conv_geometry(fn, x.shape, tuple(w_shape), stride, padding, dilation, groups)
    expected = (geo.n, geo.ho, geo.wo, geo.cout)
    if tuple(dy.shape) != expected:
        raise ValueError(f"{fn}: dy must have shape {expected}, got {tuple(dy.shape)}")
    xp = backend.xp()
    prec = _conv_precision(precision, dt, fn)

    def hand():
        if _conv_tf32_ok(prec, precision, filter=True):
            return _conv_tf32_bwd_filter(prec, dy, x, w_shape, geo)
        rows = geo.kh * geo.kw * (geo.cin // geo.groups)
        pixels = geo.n * geo.ho * geo.wo
        kernel = f"conv2d_bwd_filter_{dt}"
        plan, k_chunk = plan_conv_filter(
            kernel,
            rows,
            geo.cout // geo.groups,
            pixels,
            geo.groups,
            geo.cout,
            _device_props()["num_sms"],
            blocks_per_sm=_conv_blocks_per_sm(kernel, dt),
        )
        splits = plan.grid[2]
        parts = xp.empty((splits, rows, geo.cout), dtype=x.dtype)
        args = (dy, x, parts, np.int32(k_chunk), *geo.kernel_ints())
        get_kernel(plan.kernel)(plan.grid, plan.block, args)
        dw = parts[0] if splits == 1 else parts.sum(axis=0)
        return dw.reshape(tuple(int(v) for v in w_shape))

    if precision is not None:
        return hand()
    call = dict(dy=dy, x=x, w_shape=tuple(int(v) for v in w_shape), geometry=geo)
    return _dispatch_conv("conv2d_bwd_filter", geo, dt, hand, call, prec)


# --------------------------------------------------------------------------- conv2d, TF32

CONV_TF32_TILE = (256, 64, 16, 128)  # BM, BN, BK, threads (kernels/conv2d_tf32.cu)
CONV_TF32_MAX_STAGES = 4  # cp.async ring depth (2 blocks of 4 x 20 KiB fit an H100's SM)
# resident blocks per SM: 229-255 registers x 128 threads (2 x 32 K of the 64 K), and
# 2 rings of up to 4 stages in the 228 KiB (ptxas, kernels/check_compile.py)
CONV_TF32_BLOCKS_PER_SM = 2
# Backward filter: blocks of 4 warps (256 rows of m) or 3 (192 rows), chosen per launch
# (``plan_conv_tf32_filter``); its A tile's rows are padded to 280 floats (conflict-free
# fills with 6 or 8 threads per row). Resident blocks per SM by (mode, warps), from the
# registers (kernels/check_compile.py: tf32 222-224, 3xtf32 245-247 per thread; 65536 per
# SM, a warp's in 256-register units): 3 blocks of 3 warps need <= 224.
CONV_TF32_FILTER_LD = 280
CONV_TF32_FILTER_BLOCKS = {("tf32", 4): 2, ("tf32", 3): 3, ("3xtf32", 4): 2, ("3xtf32", 3): 2}
_SM_SHARED_RESERVED = 1024  # per resident block (CUDA's reservation)


def conv_tf32_stage_bytes(filter: bool = False) -> int:
    """Shared memory of one pipeline stage of the tensor-core conv: a 256 x 16 tile of
    the (gathered) A operand and a 64 x 16 tile of B, unpadded (XOR-swizzled); with
    ``filter`` (backward filter) the A tile's 16 rows are ``CONV_TF32_FILTER_LD`` floats.

    >>> conv_tf32_stage_bytes(), conv_tf32_stage_bytes(filter=True)
    (20480, 22016)
    """
    bm, bn, bk, _ = CONV_TF32_TILE
    return 4 * ((CONV_TF32_FILTER_LD if filter else bm) + bn) * bk


def conv_tf32_stages(shared_limit: int, filter: bool = False) -> tuple[int, int]:
    """(stages, dynamic shared bytes) of the tensor-core conv's cp.async ring: as many
    stages as fit ``shared_limit``, at most ``CONV_TF32_MAX_STAGES``; at least 2.

    >>> conv_tf32_stages(227 * 1024), conv_tf32_stages(48 * 1024)
    ((4, 81920), (2, 40960))
    """
    per = conv_tf32_stage_bytes(filter)
    stages = min(CONV_TF32_MAX_STAGES, int(shared_limit) // per)
    if stages < 2:
        raise ValueError(
            f"conv2d: the TF32 tensor-core convolution needs {2 * per} bytes of shared memory "
            f"per block (two {per}-byte pipeline stages); this device allows {shared_limit}"
        )
    return stages, stages * per


def _conv_precision(precision, dt: str, fn: str) -> str:
    """'fp32' (conv2d.cu, float64 included), 'tf32' or '3xtf32' (conv2d_tf32.cu)."""
    if precision is None:
        if not allow_tf32 or dt != "f32":
            return "fp32"
        if tf32_mode not in TF32_MODES:
            raise ValueError(
                f"{fn}: gg.kernels.tf32_mode must be one of {TF32_MODES}, got {tf32_mode!r}"
            )
        return tf32_mode
    if precision == "fp32":
        return precision
    if precision not in TF32_MODES:
        raise ValueError(f"{fn}: precision must be 'fp32', 'tf32' or '3xtf32', got {precision!r}")
    if dt != "f32":
        raise TypeError(f"{fn}: precision={precision!r} needs float32 operands, got float64")
    return precision


def _conv_tf32_ok(prec: str, precision, filter: bool = False) -> bool:
    """Run the tensor-core kernel? ``allow_tf32`` only allows: a GPU without room for two
    stages keeps FP32; an explicit ``precision=`` raises there (``conv_tf32_stages``)."""
    if prec == "fp32":
        return False
    return precision is not None or 2 * conv_tf32_stage_bytes(filter) <= _shared_optin()


def _shared_optin() -> int:
    return int(_device_props()["max_shared_optin"])


def plan_conv_tf32(kernel: str, m: int, n: int, groups: int, phases: int = 1) -> Launch:
    """The tensor-core conv launch: one 128-thread block per 256 x 64 output tile of the
    m x n implicit GEMM of each group (grid.y), backward-data phases on grid.z.

    >>> plan_conv_tf32("conv2d_fwd_tf32_f32", 64 * 56 * 56, 64, 1).grid
    (784, 1, 1)
    """
    bm, bn, _, threads = CONV_TF32_TILE
    if phases > GRID_YZ_MAX:
        raise ValueError(f"conv2d: stride product {phases} exceeds {GRID_YZ_MAX}")
    return Launch(kernel, (_cdiv(m, bm) * _cdiv(n, bn), groups, phases), (threads, 1, 1))


def _conv_tf32_fwd(prec, x, w, y, bias, relu, geo: ConvGeometry):
    stages, smem = conv_tf32_stages(_shared_optin())
    plan = plan_conv_tf32(
        f"conv2d_fwd_{prec}_f32", geo.n * geo.ho * geo.wo, geo.cout // geo.groups, geo.groups
    )
    has_bias = bias is not None
    args = (
        x,
        w,
        y,
        bias if has_bias else y,
        np.int32(has_bias),
        np.int32(bool(relu)),
        *geo.kernel_ints(),
        np.int32(stages),
    )
    get_kernel(plan.kernel)(plan.grid, plan.block, args, shared_mem=smem)
    return y


def _conv_tf32_bwd_data(prec, dy, w, dx, geo: ConvGeometry):
    stages, smem = conv_tf32_stages(_shared_optin())
    (sh, sw) = geo.stride
    rows = geo.n * _cdiv(geo.h, sh) * _cdiv(geo.w, sw)  # the largest phase
    plan = plan_conv_tf32(
        f"conv2d_bwd_data_{prec}_f32", rows, geo.cin // geo.groups, geo.groups, sh * sw
    )
    args = (dy, w, dx, *geo.kernel_ints(), np.int32(stages))
    get_kernel(plan.kernel)(plan.grid, plan.block, args, shared_mem=smem)
    return dx


#: Backward filter on the tensor cores: None lets the planner pick 3- or 4-warp blocks
#: per launch (``plan_conv_tf32_filter``); 3 or 4 forces one (tests, profiling).
conv_tf32_filter_warps = None


def _tf32_latency(warps: int) -> float:
    """perfmodel's latency factor of ``warps`` resident warps per SM."""
    if warps >= 16:
        return 0.97
    if warps >= 8:
        return 0.93 + 0.04 * (warps - 8) / 8
    return 0.93 * max(warps, 1) / 8


def plan_conv_tf32_filter(
    kernel: str,
    rows: int,
    n: int,
    p: int,
    groups: int,
    cout: int,
    num_sms: int,
    shared_optin: int,
    warps: int | None = None,
) -> tuple[Launch, int, int, int]:
    """The tensor-core backward-filter launch: (launch, k chunk, stages, dynamic shared
    bytes). Blocks of 4 warps (256 rows of the ``rows`` x ``n`` GEMM) or 3 (192 rows,
    96 threads: same kernel, ``blockDim.x`` sets the tile): for each, the resident blocks
    per SM (``CONV_TF32_FILTER_BLOCKS``, fewer when their rings do not fit the SM's
    shared memory), the split count of :func:`plan_conv_filter` and the modelled time
    ``waves x k tiles per split x warps per SM / latency factor`` (issue-bound warps
    share an SM); the cheaper wins (ties: 4 warps). ``warps`` forces one.

    576 rows (64 channels x 3 x 3) fill three 192-row tiles exactly, 3 blocks per SM:

    >>> plan, chunk, stages, smem = plan_conv_tf32_filter(
    ...     "conv2d_bwd_filter_tf32_f32", 576, 64, 64 * 56 * 56, 1, 64, 132, 227 * 1024)
    >>> plan.block, plan.grid, chunk, stages
    ((96, 1, 1), (3, 1, 131), 1536, 3)
    >>> plan_conv_tf32_filter("conv2d_bwd_filter_tf32_f32", 512, 64, 64 * 56 * 56, 1, 64,
    ...                       132, 227 * 1024)[0].block                # 2 x 256 rows
    (128, 1, 1)
    """
    mode = "3xtf32" if "_3xtf32_" in kernel else "tf32"
    per = conv_tf32_stage_bytes(filter=True)
    sm_shared = int(shared_optin) + _SM_SHARED_RESERVED  # per SM (H100 228 KiB, A100 164)
    _, bn, bk, _ = CONV_TF32_TILE
    best = None
    for w in (4, 3) if warps is None else (int(warps),):
        if w not in (3, 4):
            raise ValueError(f"conv2d_bwd_filter: warps must be 3 or 4, got {warps!r}")
        bps = CONV_TF32_FILTER_BLOCKS[(mode, w)]
        while bps > 1 and (sm_shared // bps - _SM_SHARED_RESERVED) < 2 * per:
            bps -= 1
        stages, smem = conv_tf32_stages(
            min(shared_optin, sm_shared // bps - _SM_SHARED_RESERVED), True
        )
        plan, chunk = plan_conv_filter(
            kernel, rows, n, p, groups, cout, num_sms, bps, "f32", (64 * w, bn, bk, 32 * w)
        )
        blocks = plan.grid[0] * plan.grid[1] * plan.grid[2]
        resident = max(1, min(bps, _cdiv(blocks, num_sms)))
        waves = _cdiv(blocks, resident * num_sms)
        cost = waves * _cdiv(chunk, bk) * resident * w / _tf32_latency(resident * w)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, plan, chunk, stages, smem)
    return best[1:]


def _conv_tf32_bwd_filter(prec, dy, x, w_shape, geo: ConvGeometry):
    rows = geo.kh * geo.kw * (geo.cin // geo.groups)
    plan, k_chunk, stages, smem = plan_conv_tf32_filter(
        f"conv2d_bwd_filter_{prec}_f32",
        rows,
        geo.cout // geo.groups,
        geo.n * geo.ho * geo.wo,
        geo.groups,
        geo.cout,
        _device_props()["num_sms"],
        _shared_optin(),
        conv_tf32_filter_warps,
    )
    splits = plan.grid[2]
    parts = backend.xp().empty((splits, rows, geo.cout), dtype=x.dtype)
    args = (dy, x, parts, np.int32(k_chunk), *geo.kernel_ints(), np.int32(stages))
    get_kernel(plan.kernel)(plan.grid, plan.block, args, shared_mem=smem)
    dw = parts[0] if splits == 1 else parts.sum(axis=0)
    return dw.reshape(tuple(int(v) for v in w_shape))


def _conv_class(geo: ConvGeometry) -> str:
    """Shape class of a convolution for the dispatcher: pixel count bucketed, the
    filter and hyper-parameters exact."""
    (sh, sw), (dh, dw) = geo.stride, geo.dilation
    cg, ng = geo.cin // geo.groups, geo.cout // geo.groups
    bucket = dispatch.bucket
    return (
        f"p{bucket(geo.n * geo.ho * geo.wo)} k{geo.kh}x{geo.kw} cg{bucket(cg)} ng{bucket(ng)} "
        f"s{sh}x{sw} d{dh}x{dw} g{geo.groups}"
    )


# --------------------------------------------------------------------------- persistent lstm

LSTM_THREADS = 256  # lstm_persistent.cu: 256-thread blocks (its __launch_bounds__)
# Switch for the op layer: False sends every LSTM to the per-step cell kernels.
lstm_persistent_enabled = True
# Step-time model the planner minimises (H100, per SM, in cycles): L2 -> SM bytes per
# cycle, FP32 FMAs per cycle actually reached (half of 128 lanes; FP64 half that), and
# the latency of one L2 round trip (one per staged chunk).
_L2_BYTES_PER_CYCLE = 24
_FMA_PER_CYCLE = {"f32": 64, "f64": 32}
_L2_LATENCY = 800
# per staged chunk: the block barrier after its copy and the one before its buffer is
# refilled (8 warps), and the cp.async wait; an assumption, not measured
_CHUNK_SYNC_CYCLES = 60


@dataclass(frozen=True)
class LstmPlan:
    """Launch of a persistent LSTM kernel. Each block owns ``units`` hidden units and
    ``batch_rows`` batch rows (``grid = ceil(H / units) * ceil(B / batch_rows)`` blocks,
    at most one per SM); it works on row groups of ``4 * quads`` rows, stages the
    broadcast vector ``chunk`` columns at a time in ``stages`` shared buffers (2: the
    next chunk is copied while one is multiplied), and ``ksplit`` threads share a chunk.
    ``cycles`` is the planner's model of one step on one SM."""

    kernel: str
    grid: tuple
    block: tuple
    units: int
    batch_rows: int
    quads: int
    ksplit: int
    chunk: int
    stages: int
    shared_mem: int
    cycles: int

    def int_args(self) -> tuple:
        """The kernel's tiling arguments ``U, BB, QG, KS, KC, NS``."""
        vals = (self.units, self.batch_rows, self.quads, self.ksplit, self.chunk, self.stages)
        return tuple(np.int32(v) for v in vals)


def _lstm_step_cycles(rows, rb, k, nc, chunk, stages, isz, dt):
    """The planner's model of one step on one SM: per group of ``rb`` rows, each chunk
    of the vector costs one L2 round trip plus its bytes (the copy) and its FMAs. With
    two stages the copy of chunk c + 1 runs while chunk c is multiplied (cp.async into
    the other buffer), so only chunk 0's copy is exposed; with one, copies and products
    alternate."""
    cycles = 0.0
    for b0 in range(0, rows, rb):
        g_rows = min(rb, rows - b0)
        widths = [min(chunk, k - kc) for kc in range(0, k, chunk)]
        copy = [_L2_LATENCY + g_rows * w * isz / _L2_BYTES_PER_CYCLE for w in widths]
        fma = [g_rows * nc * w / _FMA_PER_CYCLE[dt] for w in widths]
        if stages == 2:
            cycles += copy[0] + sum(max(f, c) for f, c in zip(fma, copy[1:])) + fma[-1]
        else:
            cycles += sum(copy) + sum(fma)
        cycles += (len(widths) - 1) * _CHUNK_SYNC_CYCLES
    return cycles


def _lstm_candidate(direction, batch, hidden, dt, num_sms, max_shared, rows):
    """The plan for blocks of ``rows`` batch rows (None if it does not fit)."""
    isz = 4 if dt == "f32" else 8
    bblocks = _cdiv(batch, rows)
    per_row = num_sms // bblocks  # blocks along the hidden units
    if per_row < 1:
        return None
    units = _cdiv(hidden, per_row)
    if direction == "fwd":
        k, nc = hidden, 4 * units
    else:
        k, nc = 4 * hidden, _cdiv(units, 4) * 4
    col_quads = nc // 4
    if col_quads > LSTM_THREADS:
        return None
    quads = max(1, min(_cdiv(rows, 4), LSTM_THREADS // col_quads))
    tiles = col_quads * quads
    rb = 4 * quads
    best = None
    chunk = _cdiv(k, 32) * 32  # the whole vector in one chunk if it fits
    while True:
        ksplit = 1
        while ksplit * 2 * tiles <= LSTM_THREADS and ksplit * 2 <= chunk:
            ksplit *= 2
        # a vector of several chunks: two stages (chunk c + 1 copied while chunk c is
        # multiplied) or, when only one fits, one (copy, then multiply)
        for stages in (1,) if chunk >= k else (1, 2):
            # lstm_persistent.cu's carve(): weights (rows padded to 4), the staged chunks
            # (rows padded by 32 bytes), the partial sums
            elems = _cdiv(k, 4) * 4 * nc + stages * rb * (chunk + 32 // isz) + ksplit * tiles * 16
            if elems * isz > max_shared:
                continue
            cycles = _lstm_step_cycles(rows, rb, k, nc, chunk, stages, isz, dt)
            if best is None or cycles < best[0]:
                best = (cycles, chunk, stages, ksplit, elems)
        if chunk <= 32:
            break
        chunk = _cdiv(chunk // 2, 32) * 32
    if best is None:
        return None
    cycles, chunk, stages, ksplit, elems = best
    return LstmPlan(
        f"lstm_{direction}_persistent_{dt}",
        (_cdiv(hidden, units) * bblocks, 1, 1),
        (LSTM_THREADS, 1, 1),
        units,
        rows,
        quads,
        ksplit,
        chunk,
        stages,
        elems * isz,
        int(cycles),
    )


def plan_lstm_persistent(
    direction: str, batch: int, hidden: int, dt: str, num_sms: int, max_shared: int
) -> LstmPlan | None:
    """The persistent launch for an LSTM of ``hidden`` units and ``batch`` rows, or
    ``None`` when the recurrent weights do not fit in shared memory (the caller then
    runs the per-step kernels).

    Blocks tile (hidden units) x (batch rows), at most one per SM so that every block
    is resident (the grid barrier needs it). Each keeps ``4 * units * hidden`` weights
    resident and reads ``batch_rows`` rows of the broadcast vector per step; of the
    batch splits whose weights fit, the one with the smallest modelled step time wins
    (more splits: fewer bytes per step per SM, more weights per block).

    >>> p = plan_lstm_persistent("fwd", 64, 256, "f32", 132, 227 * 1024)
    >>> p.grid, p.units, p.batch_rows
    ((128, 1, 1), 32, 4)
    >>> plan_lstm_persistent("fwd", 64, 4096, "f32", 132, 227 * 1024) is None
    True
    """
    if direction not in ("fwd", "bwd"):
        raise ValueError(
            f"plan_lstm_persistent: direction must be 'fwd' or 'bwd', got {direction!r}"
        )
    if batch < 1 or hidden < 1 or num_sms < 1:
        return None
    best = None
    seen = set()
    splits = 1
    while splits <= min(num_sms, batch):
        rows = _cdiv(_cdiv(batch, splits), 4) * 4 if splits > 1 else batch
        if rows not in seen:
            seen.add(rows)
            plan = _lstm_candidate(direction, batch, hidden, dt, num_sms, max_shared, rows)
            if plan is not None and (best is None or plan.cycles < best.cycles):
                best = plan
        splits *= 2
    return best


def _lstm_shared_limit() -> int:
    """Dynamic shared memory one block may opt in to (227 KiB on an H100)."""
    if backend.device() == "cuda":
        attrs = backend.cupy_module().cuda.Device().attributes
        return int(attrs.get("MaxSharedMemoryPerBlockOptin", attrs["MaxSharedMemoryPerBlock"]))
    from gpugrad.backend import emu

    return emu.MAX_SHARED_OPTIN


def _lstm_coresident(plan: LstmPlan) -> bool:
    """Whether the whole grid fits on the device at once (the cooperative-launch rule)."""
    blocks = plan.grid[0]
    if backend.device() == "cuda":
        from cupy_backends.cuda.api import driver

        if not int(backend.cupy_module().cuda.Device().attributes.get("CooperativeLaunch", 0)):
            return False  # the device or driver cannot launch cooperatively
        fn = _function(plan.kernel)
        fn.max_dynamic_shared_size_bytes = plan.shared_mem
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(
            fn.ptr, LSTM_THREADS, plan.shared_mem
        )
        return per_sm * _device_props()["num_sms"] >= blocks
    from gpugrad.backend import emu

    return emu.cooperative_max_blocks(LSTM_THREADS, plan.shared_mem) >= blocks


def lstm_persistent_plan(direction: str, batch: int, hidden: int, dtype) -> LstmPlan | None:
    """The persistent plan on the active device, or ``None`` when the LSTM must take the
    per-step path: persistence switched off (``lstm_persistent_enabled``), a dtype other
    than float32/float64, weights too large for shared memory, or a grid that cannot be
    resident at once.

    >>> lstm_persistent_plan("fwd", 64, 256, np.float32)   # doctest: +SKIP
    LstmPlan(kernel='lstm_fwd_persistent_f32', grid=(128, 1, 1), ...)
    """
    if not lstm_persistent_enabled:
        return None
    if backend.device() == "cuda-sim":
        # why: cuda-sim does not yet model the opt-in shared-memory attribute and the
        # occupancy query the persistent launch needs on cuda; it runs on emu instead
        return None
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        return None
    dt = "f32" if dtype == np.float32 else "f64"
    plan = plan_lstm_persistent(
        direction, int(batch), int(hidden), dt, _device_props()["num_sms"], _lstm_shared_limit()
    )
    if plan is None or not _lstm_coresident(plan):
        return None
    return plan


def _launch_cooperative(plan: LstmPlan, args) -> None:
    fn = _function(plan.kernel)
    # opt in to more than the default 48 KiB of dynamic shared memory (both devices)
    fn.max_dynamic_shared_size_bytes = max(plan.shared_mem, 48 * 1024)
    with _lock:
        _launch_counts[plan.kernel] = _launch_counts.get(plan.kernel, 0) + 1
    args = tuple(args)
    if LAUNCH_HOOK is not None:  # gg.dlaccelerate graph hook: a cooperative launch too
        LAUNCH_HOOK(plan.kernel, plan.grid, plan.block, args, plan.shared_mem)
    fn(plan.grid, plan.block, args, shared_mem=plan.shared_mem)


def _lstm_shapes(fn, arrays: dict, shapes: dict, dtype):
    out = {}
    for name, arr in arrays.items():
        arr = _prepare(arr, fn, name, ndim=len(shapes[name]), dtype=dtype)
        if tuple(arr.shape) != shapes[name]:
            raise ValueError(f"{fn}: {name} must have shape {shapes[name]}, got {tuple(arr.shape)}")
        out[name] = arr
    return out


def _lstm_sequence(fn, name, arr):
    """A ``[T, B, 4H]`` operand of the persistent LSTM: ``(arr, dt, T, B, H)``."""
    arr = _prepare(arr, fn, name, ndim=3, layout=" [T, B, 4H]")
    dt = _dtype_suffix(arr.dtype, fn, name)
    steps, bsz, four_h = arr.shape
    if four_h % 4:
        raise ValueError(f"{fn}: {name} must be [T, B, 4H], got shape {tuple(arr.shape)}")
    return arr, dt, steps, bsz, four_h // 4


def _lstm_run_persistent(fn, direction, dt, dtype, steps, bsz, hid, arrays, flags=()):
    """Plan and launch one persistent LSTM kernel: ``arrays``, then the grid barrier's
    counter, T, B, H, the plan's integers and ``flags`` (as int32)."""
    plan = lstm_persistent_plan(direction, bsz, hid, dtype)
    if plan is None:
        raise ValueError(
            f"{fn}: no persistent launch for B={bsz}, H={hid} ({dt}) on this device (the "
            "recurrent weights do not fit in shared memory); use the per-step kernels"
        )
    sync = backend.xp().zeros(1, dtype=np.uint32)  # the grid barrier's arrival counter
    i32 = np.int32
    ints = (i32(steps), i32(bsz), i32(hid), *plan.int_args(), *(i32(f) for f in flags))
    _launch_cooperative(plan, (*arrays, sync, *ints))


def lstm_persistent_fwd(proj, r, h0, c0):
    """The LSTM recurrence of all steps in one cooperative launch.

    ``proj[T, B, 4H]`` is the input projection ``x W^T + b`` of every step (gate blocks
    input, forget, cell candidate, output), ``r[4H, H]`` the recurrent weights,
    ``h0``/``c0`` ``[B, H]``. Returns ``(ys[T, B, H], cs[T, B, H], gates[T, B, 4H])``:
    hidden and cell states of every step and the activated gates, as ``lstm_cell_fwd``
    gives them step by step. Raises ``ValueError`` when no persistent plan exists
    (see ``lstm_persistent_plan``).

    >>> ys, cs, gates = lstm_persistent_fwd(proj, r, h0, c0)   # doctest: +SKIP
    """
    fn = "lstm_persistent_fwd"
    proj, dt, steps, bsz, hid = _lstm_sequence(fn, "proj", proj)
    four_h = 4 * hid
    a = _lstm_shapes(
        fn,
        {"r": r, "h0": h0, "c0": c0},
        {"r": (4 * hid, hid), "h0": (bsz, hid), "c0": (bsz, hid)},
        proj.dtype,
    )
    xp = backend.xp()
    ys = xp.empty((steps, bsz, hid), dtype=proj.dtype)
    cs = xp.empty((steps, bsz, hid), dtype=proj.dtype)
    gates = xp.empty((steps, bsz, four_h), dtype=proj.dtype)
    if steps == 0 or bsz == 0 or hid == 0:
        return ys, cs, gates
    arrays = (proj, a["r"], a["h0"], a["c0"], ys, cs, gates)
    _lstm_run_persistent(fn, "fwd", dt, proj.dtype, steps, bsz, hid, arrays)
    return ys, cs, gates


def lstm_persistent_bwd(g_ys, g_h, g_c, g_cs, g_gates, gates, cs, c0, r):
    """Backward of the LSTM recurrence of all steps in one cooperative launch.

    Cotangents: ``g_ys[T, B, H]`` (outputs), ``g_h``/``g_c`` ``[B, H]`` (final states),
    ``g_cs[T, B, H]`` and ``g_gates[T, B, 4H]`` (the saved cell states and gates; either
    may be ``None`` for zero). Saved: ``gates``, ``cs`` from ``lstm_persistent_fwd``,
    ``c0``, and ``r[4H, H]``. Returns ``(dpre[T, B, 4H], dh0[B, H], dc0[B, H])``: the
    pre-activation gradients of every step (from which the weight gradients are one
    GEMM each) and the gradients at the initial states.

    >>> args = (g_ys, g_h, g_c, None, None, gates, cs, c0, r)    # doctest: +SKIP
    >>> dpre, dh0, dc0 = lstm_persistent_bwd(*args)             # doctest: +SKIP
    """
    fn = "lstm_persistent_bwd"
    gates, dt, steps, bsz, hid = _lstm_sequence(fn, "gates", gates)
    four_h = 4 * hid
    seq, state = (steps, bsz, hid), (bsz, hid)
    arrays = {"g_ys": g_ys, "g_h": g_h, "g_c": g_c, "cs": cs, "c0": c0, "r": r}
    shapes = {"g_ys": seq, "g_h": state, "g_c": state, "cs": seq, "c0": state}
    shapes["r"] = (4 * hid, hid)
    if g_cs is not None:
        arrays["g_cs"], shapes["g_cs"] = g_cs, seq
    if g_gates is not None:
        arrays["g_gates"], shapes["g_gates"] = g_gates, (steps, bsz, four_h)
    a = _lstm_shapes(fn, arrays, shapes, gates.dtype)
    xp = backend.xp()
    dpre = xp.empty((steps, bsz, four_h), dtype=gates.dtype)
    dh0 = xp.empty(state, dtype=gates.dtype)
    dc0 = xp.empty(state, dtype=gates.dtype)
    if steps == 0 or bsz == 0 or hid == 0:
        dh0[...] = a["g_h"]
        dc0[...] = a["g_c"]
        return dpre, dh0, dc0
    arrays = (
        a["g_ys"],
        a["g_h"],
        a["g_c"],
        a.get("g_cs", a["g_ys"]),  # a dummy when absent: the kernel does not read it
        a.get("g_gates", gates),
        gates,
        a["cs"],
        a["c0"],
        a["r"],
        dpre,
        dh0,
        dc0,
    )
    flags = ("g_cs" in a, "g_gates" in a)
    _lstm_run_persistent(fn, "bwd", dt, gates.dtype, steps, bsz, hid, arrays, flags)
    return dpre, dh0, dc0


def _dispatch_conv(op: str, geo: ConvGeometry, dt: str, hand, call: dict, prec: str = "fp32"):
    """Run a conv op through the dispatcher. No vendor candidate is built in: CuPy 14
    has no cuDNN binding (``cupy.cudnn``/``cupyx.cudnn`` are gone), so a vendor
    convolution comes only from ``dispatch.register_variant`` (kind ``"vendor"``).
    A tensor-core hand kernel (``prec`` "tf32"/"3xtf32") is its own shape class, so
    ``report()`` shows which precision ran."""
    shape_class = _conv_class(geo) + ("" if prec == "fp32" else f" {prec}")
    return dispatch.run(op, shape_class, dt, hand, call=call)
