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

import numpy as np

from gpugrad import backend

__all__ = [
    "KernelCompileError",
    "conv2d_bwd_data",
    "conv2d_bwd_filter",
    "conv2d_fwd",
    "get_kernel",
    "launches",
    "list",
    "lstm_cell_bwd",
    "lstm_cell_fwd",
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
    return rows


_TABLE: dict[str, KernelInfo] = {
    info.name: info
    for info in [
        *_matmul_entries(),
        *_entries("conv2d.cu", "dlconv forward (+bias, relu)", ("conv2d_fwd",)),
        *_entries("conv2d.cu", "dlconv backward (input gradient)", ("conv2d_bwd_data",)),
        *_entries("conv2d.cu", "dlconv backward (filter gradient)", ("conv2d_bwd_filter",)),
        *_entries("relu.cu", "relu forward", ("relu_fwd",)),
        *_entries("relu.cu", "relu backward", ("relu_bwd",)),
        *_entries("lstm.cu", "lstm cell forward (one launch per time step)", ("lstm_fwd",)),
        *_entries("lstm.cu", "lstm cell backward (one launch per time step)", ("lstm_bwd",)),
    ]
}

_lock = threading.Lock()
_launch_counts: dict[str, int] = {}
_modules: dict[tuple, object] = {}
_functions: dict[tuple, object] = {}
_sources: dict[str, str] = {}


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


# --------------------------------------------------------------------------- compiling


def _source(file: str) -> str:
    text = _sources.get(file)
    if text is None:
        path = backend.kernel_dir() / file
        text = path.read_text()
        _sources[file] = text
    return text


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*$', re.M)


def _inline_includes(text: str, path, depth: int = 0) -> str:
    """``text`` (the file at ``path``) with each ``#include "x"`` that names a file
    beside it replaced by that file's text, recursively, with ``#line`` markers."""
    if depth > 16:
        raise KernelCompileError(f"{path}: quoted includes nested more than 16 deep")

    def expand(m):
        inc = path.parent / m.group(1)
        if not inc.is_file():
            return m.group(0)
        line = text.count("\n", 0, m.start()) + 2
        body = _inline_includes(inc.read_text(), inc, depth + 1)
        return f'#line 1 "{inc}"\n{body}\n#line {line} "{path}"'

    return _INCLUDE.sub(expand, text)


def _device_key():
    dev = backend.device()
    if dev == "cuda":
        return ("cuda", backend.cupy_module().cuda.runtime.getDevice())
    if dev == "emu":
        return ("emu",)
    raise backend.DeviceError(
        "gpugrad kernels run on device 'cuda' or 'emu', but the active device is 'cpu'; "
        "use gpugrad.backend.set_device('emu') (CPU emulator) or run on a GPU"
    )


def _compile(file: str, key):
    path = backend.kernel_dir() / file
    text = _source(file)
    if key[0] == "cuda":
        cp = backend.cupy_module()
        # #line makes NVRTC report errors as matmul.cu(LINE) instead of a temp name.
        # Quoted includes are inlined: CuPy's compile cache keys on the source text only,
        # so a changed header (mma.cuh) must change the text to be recompiled.
        code = f'#line 1 "{path}"\n{_inline_includes(text, path)}'
        module = cp.RawModule(code=code, options=("-std=c++17",))
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
        return emu.EmuModule(text, name=str(path), options=(), sanitize=sanitize)
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
    if backend.device() == "cuda":
        cp = backend.cupy_module()
        attrs = cp.cuda.Device().attributes
        return {
            "num_sms": int(attrs["MultiProcessorCount"]),
            "max_shared": int(attrs["MaxSharedMemoryPerBlock"]),
        }
    return {"num_sms": EMU_NUM_SMS, "max_shared": EMU_MAX_SHARED}


class Kernel:
    """One entry point, callable as ``k(grid, block, args, shared_mem=0)`` on cuda and emu."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, grid, block, args, shared_mem: int = 0):
        fn = _function(self.name)
        limit = _device_props()["max_shared"]
        static = int(getattr(fn, "shared_size_bytes", 0) or 0)
        if shared_mem < 0 or shared_mem + static > limit:
            raise ValueError(
                f"kernel {self.name}: {shared_mem} bytes of dynamic shared memory (+{static} "
                f"static) exceed the device limit of {limit} bytes per block"
            )
        with _lock:
            _launch_counts[self.name] = _launch_counts.get(self.name, 0) + 1
        args = tuple(args)
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
CONV_TILE = (64, 64, 16, 256)  # BM, BN, BK, threads (conv2d.cu)
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


TF32_TILE = (128, 128, 8, 256)  # BM, BN, BK, threads (matmul_tf32.cu)
TF32_SPLIT_K_GRANULE = 32  # k per split is a multiple of this (4 k tiles of 8)


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
) -> Launch:
    """The tensor-core GEMM launch (``mode`` "tf32" or "3xtf32"): 128x128 tiles, split-K
    as in ``plan_matmul`` when the tiles alone do not fill the SMs."""
    if mode not in TF32_MODES:
        raise ValueError(f"matmul: tf32 mode must be one of {TF32_MODES}, got {mode!r}")
    bm, bn, _, threads = TF32_TILE
    blocks = _cdiv(m, bm) * _cdiv(n, bn)
    if splits is None:
        granule = TF32_SPLIT_K_GRANULE // MATMUL_MIN_KTILES_PER_SPLIT
        splits = matmul_splits(blocks, m, n, k, granule, num_sms)
    _, splits = matmul_k_chunk(k, int(splits), TF32_SPLIT_K_GRANULE)
    layout = MATMUL_LAYOUTS[(bool(trans_a), bool(trans_b))]
    return Launch(f"matmul_{mode}{layout}_f32", (blocks, 1, splits), (threads, 1, 1))


def plan_elementwise(kernel: str, n: int, num_sms: int, per_thread: int = 4) -> Launch:
    """Grid-stride launch: enough blocks for one pass, capped at 8 waves of SMs."""
    blocks = max(1, min(_cdiv(_cdiv(n, per_thread), ELEMENTWISE_THREADS), 8 * num_sms))
    return Launch(kernel, (blocks, 1, 1), (ELEMENTWISE_THREADS, 1, 1))


def plan_conv(kernel: str, m: int, n: int, groups: int) -> Launch:
    """Implicit GEMM of m x n per group: one block per 64x64 output tile, groups on grid.y."""
    bm, bn, _, threads = CONV_TILE
    return Launch(kernel, (_cdiv(m, bm) * _cdiv(n, bn), groups, 1), (threads, 1, 1))


def plan_conv_filter(
    kernel: str, rows: int, n: int, p: int, groups: int, cout: int, num_sms: int
) -> tuple[Launch, int]:
    """Backward-filter GEMM (rows x n, reduction over p pixels), split over p so that
    about two waves of blocks run; returns the launch and the k chunk per split."""
    bm, bn, bk, threads = CONV_TILE
    tiles = _cdiv(rows, bm) * _cdiv(n, bn) * groups
    max_splits = max(1, _cdiv(p, 4 * bk))  # at least 4 k tiles per split
    splits = max(1, min(_cdiv(2 * num_sms, tiles), max_splits, GRID_YZ_MAX))
    # the workspace [splits, rows, cout] must stay 32-bit indexable
    splits = max(1, min(splits, INT32_MAX // max(1, rows * cout)))
    k_chunk = max(bk, _cdiv(_cdiv(max(p, 1), splits), bk) * bk)
    splits = max(1, _cdiv(p, k_chunk))
    grid = (_cdiv(rows, bm) * _cdiv(n, bn), groups, splits)
    return Launch(kernel, grid, (threads, 1, 1)), k_chunk


# --------------------------------------------------------------------------- argument checks


def _dtype_suffix(dtype, fn: str, arg: str) -> str:
    if dtype == np.float32:
        return "f32"
    if dtype == np.float64:
        return "f64"
    raise TypeError(f"{fn}: {arg} has dtype {dtype}; the kernels take float32 or float64")


def _prepare(a, fn: str, arg: str, ndim: int | None = None, dtype=None, layout: str = ""):
    """Contiguous xp array of a float dtype, checked for rank, dtype and 32-bit size."""
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
    c = xp.empty((m, n), dtype=a.dtype)
    if m == 0 or n == 0:
        return c
    num_sms = _device_props()["num_sms"]
    prec = _matmul_precision(precision, dt, has_mask, tile)
    if prec != "fp32":
        plan = plan_matmul_tf32(
            m, n, k, prec, num_sms, trans_a=trans_a, trans_b=trans_b, splits=splits
        )
        _launch_gemm(plan, TF32_SPLIT_K_GRANULE, a, b, c, bias, False, m, n, k, dt, alpha, relu)
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


def _launch_gemm(plan, granule, a, b, c, bias, mask, m, n, k, dt, alpha, relu):
    """Launch one GEMM plan (k per split a multiple of ``granule``); with split-K (grid
    z > 1) through a workspace and the reduction kernel, which applies alpha, bias and
    relu. ``mask is False``: the entry point has no mask parameter (tensor-core GEMM)."""
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
    )
    get_kernel(plan.kernel)(plan.grid, plan.block, args)
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


def relu_fwd(x):
    """``max(x, 0)`` elementwise (NaN propagates), any shape.

    >>> relu_fwd(np.array([-1.0, 0.0, 2.0]))                  # doctest: +SKIP
    array([0., 0., 2.])
    """
    x = _prepare(x, "relu_fwd", "x")
    dt = _dtype_suffix(x.dtype, "relu_fwd", "x")
    y = backend.xp().empty_like(x)
    if x.size:
        plan = plan_elementwise(f"relu_fwd_{dt}", x.size, _device_props()["num_sms"])
        get_kernel(plan.kernel)(plan.grid, plan.block, (x, y, np.int32(x.size)))
    return y


def relu_bwd(dy, x):
    """``where(x > 0, dy, 0)``: the relu derivative is 0 at 0.

    >>> relu_bwd(np.ones(3), np.array([-1.0, 0.0, 2.0]))       # doctest: +SKIP
    array([0., 0., 1.])
    """
    x = _prepare(x, "relu_bwd", "x")
    dt = _dtype_suffix(x.dtype, "relu_bwd", "x")
    dy = _prepare(dy, "relu_bwd", "dy", dtype=x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"relu_bwd: dy has shape {tuple(dy.shape)} but x has {tuple(x.shape)}")
    dx = backend.xp().empty_like(x)
    if x.size:
        plan = plan_elementwise(f"relu_bwd_{dt}", x.size, _device_props()["num_sms"])
        get_kernel(plan.kernel)(plan.grid, plan.block, (dy, x, dx, np.int32(x.size)))
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
):
    """2-D convolution (cross-correlation) ``y[N, Ho, Wo, Cout]`` of NHWC ``x`` with
    weights ``w[KH, KW, Cin/groups, Cout]``, plus ``bias[Cout]`` and optional relu, as
    one implicit-GEMM launch. ``padding`` is an int, ``(ph, pw)`` or
    ``((top, bottom), (left, right))``.

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
    y = backend.xp().empty((geo.n, geo.ho, geo.wo, geo.cout), dtype=x.dtype)
    if y.size == 0:
        return y
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


def conv2d_bwd_data(
    dy, w, x_shape, *, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1
):
    """Gradient of ``conv2d_fwd`` with respect to its input: ``dx`` of shape ``x_shape``."""
    fn = "conv2d_bwd_data"
    dy = _prepare(dy, fn, "dy", ndim=4, layout=" [N, H, W, C] (NHWC)")
    dt = _dtype_suffix(dy.dtype, fn, "dy")
    w = _prepare(w, fn, "w", ndim=4, dtype=dy.dtype, layout=" [KH, KW, Cin/groups, Cout]")
    geo = conv_geometry(fn, tuple(x_shape), w.shape, stride, padding, dilation, groups)
    expected = (geo.n, geo.ho, geo.wo, geo.cout)
    if tuple(dy.shape) != expected:
        raise ValueError(f"{fn}: dy must have shape {expected}, got {tuple(dy.shape)}")
    dx = backend.xp().empty(tuple(int(v) for v in x_shape), dtype=dy.dtype)
    if dx.size == 0:
        return dx
    plan = plan_conv(
        f"conv2d_bwd_data_{dt}", geo.n * geo.h * geo.w, geo.cin // geo.groups, geo.groups
    )
    get_kernel(plan.kernel)(plan.grid, plan.block, (dy, w, dx, *geo.kernel_ints()))
    return dx


def conv2d_bwd_filter(
    dy, x, w_shape, *, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1
):
    """Gradient of ``conv2d_fwd`` with respect to its weights: ``dw`` of shape ``w_shape``.

    The reduction over the N*Ho*Wo output pixels is split across blocks
    (``plan_conv_filter``); the partial sums are added in a fixed order, so the
    result is deterministic.
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
    rows = geo.kh * geo.kw * (geo.cin // geo.groups)
    pixels = geo.n * geo.ho * geo.wo
    plan, k_chunk = plan_conv_filter(
        f"conv2d_bwd_filter_{dt}",
        rows,
        geo.cout // geo.groups,
        pixels,
        geo.groups,
        geo.cout,
        _device_props()["num_sms"],
    )
    splits = plan.grid[2]
    parts = xp.empty((splits, rows, geo.cout), dtype=x.dtype)
    args = (dy, x, parts, np.int32(k_chunk), *geo.kernel_ints())
    get_kernel(plan.kernel)(plan.grid, plan.block, args)
    dw = parts[0] if splits == 1 else parts.sum(axis=0)
    return dw.reshape(tuple(int(v) for v in w_shape))
