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
import os
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


_TABLE: dict[str, KernelInfo] = {
    info.name: info
    for info in [
        *_entries(
            "matmul.cu",
            "matmul/fullyconnect (forward, both backward GEMMs)",
            ("matmul_fwd", "matmul_small"),
        ),
        *_entries(
            "matmul.cu", "matmul/fullyconnect (mid-size problems)", ("matmul_mid",), ("f32",)
        ),
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
# --- gg.dlaccelerate graph hook (gpugrad/_accel_graph.py) -----------------------------
# None, or a callable seeing every launch as (name, grid, block, args, shared_mem) just
# before it runs: the accelerator counts a replay's launches and, on emu, records and
# checks the launches of a captured graph. Nothing else sets it.
LAUNCH_HOOK = None
# --- end of the graph hook -------------------------------------------------------------
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
        code = f'#line 1 "{path}"\n{text}'
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


# name -> (BM, BN, threads); the .cu file documents the tiles
MATMUL_TILES = {
    "f32": {
        "large": ("matmul_fwd", 128, 128, 256),
        "mid": ("matmul_mid", 64, 64, 256),
        "small": ("matmul_small", 32, 32, 64),
    },
    "f64": {"large": ("matmul_fwd", 64, 64, 256), "small": ("matmul_small", 32, 32, 64)},
}
CONV_TILE = (64, 64, 16, 256)  # BM, BN, BK, threads (conv2d.cu)
ELEMENTWISE_THREADS = 256


def plan_matmul(m: int, n: int, k: int, dt: str, num_sms: int, tile: str | None = None) -> Launch:
    """Pick the GEMM tile: the largest whose block count fills every SM once (small
    problems take the smallest tile for parallelism). ``tile`` forces one."""
    tiles = MATMUL_TILES[dt]
    if tile is None:
        tile = next(
            (t for t in tiles if _cdiv(m, tiles[t][1]) * _cdiv(n, tiles[t][2]) >= num_sms),
            "small",
        )
    if tile not in tiles:
        raise ValueError(f"matmul: tile={tile!r} is not one of {sorted(tiles)} for {dt}")
    base, bm, bn, threads = tiles[tile]
    return Launch(f"{base}_{dt}", (_cdiv(m, bm) * _cdiv(n, bn), 1, 1), (threads, 1, 1))


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


def matmul(
    a, b, *, trans_a=False, trans_b=False, bias=None, relu=False, alpha=1.0, mask=None, tile=None
):
    """``act(alpha * op(a) @ op(b) + bias)`` in one kernel launch, 2-D operands only.

    ``op(x)`` is ``x.T`` when ``trans_x`` is set (no copy is made), ``bias`` has one
    entry per output column, ``relu`` applies max(., 0) in the epilogue, and ``mask``
    (shaped like ``a``) makes the kernel read ``a`` as ``where(mask > 0, a, 0)``: the
    relu backward fused into the next GEMM. ``tile`` forces a tile configuration
    (``"large"``, ``"mid"``, ``"small"``; default: chosen by ``plan_matmul``).

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
    plan = plan_matmul(m, n, k, dt, _device_props()["num_sms"], tile)
    i32 = np.int32
    args = (
        a,
        b,
        c,
        bias if has_bias else c,
        mask if has_mask else a,
        i32(m),
        i32(n),
        i32(k),
        i32(a.shape[1]),
        i32(b.shape[1]),
        i32(n),
        i32(bool(trans_a)),
        i32(bool(trans_b)),
        i32(has_bias),
        i32(has_mask),
        _scalar(alpha, dt),
        i32(bool(relu)),
    )
    get_kernel(plan.kernel)(plan.grid, plan.block, args)
    return c


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
