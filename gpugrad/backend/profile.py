"""The CUDA emulator as a profiler: kernel performance facts without a GPU.

``python -m gpugrad profile matmul --shape 4096 4096 4096`` (or :func:`profile`) runs one
launch of a hand-written kernel, with the launch plan the GPU would get, under the
emulator's profiling build (``EmuModule(trace=True)``: every global and shared memory
access of a few sampled blocks is recorded, see ``kernels/emu/trace.cpp``), compiles the
kernel as CuPy does and reads its SASS (:mod:`gpugrad.backend.sass`), and prints:

* FLOPs and compulsory DRAM bytes of the launch;
* global memory: 32-byte sectors per warp request and sector efficiency (the bytes
  the active lanes asked for over the bytes of the sectors touched), per access site;
* shared memory: wavefronts per warp request against the ideal, i.e. bank conflicts,
  per access site (loads are the compute loop's fragment reads, stores the tile fills);
* divergence: the mean fraction of a warp's lanes active in its memory requests;
* registers, spills, shared memory, blocks and warps per SM, the FMA share of the hot
  loop (see :func:`gpugrad.backend.sass.hot_loop`);
* the model of :mod:`gpugrad.backend.perfmodel`: predicted time and % of peak on a
  named GPU next to the vendor library's figure.

How requests are formed (the honest part): the emulator runs a warp's 32 threads one
after another, not in lockstep, so the k-th execution of one access instruction (the
same call site in the profiling build) by each lane of a warp is taken as one warp
request. That is exact for code without divergence inside the loop and approximate
where lanes take different paths. Shared-memory wavefronts use the distinct-word
model (a request needs as many wavefronts as the most distinct 4-byte words any one
bank must deliver; broadcasts are free); the LDS.128 return-path pairing that the
kernel review assumed is not modelled. The sampled blocks (first, middle and last
by default) run with the operands of the full problem but a reduced reduction length
where the full one would not fit the trace (a k-loop iteration is the same at any K);
the other blocks are not run, so the outputs of a profiling run are not meaningful.

>>> from gpugrad.backend import profile                        # doctest: +SKIP
>>> r = profile.profile("relu_fwd", (1 << 20,))                 # doctest: +SKIP
>>> r.trace.global_efficiency                                   # doctest: +SKIP
1.0
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field

import numpy as np

from gpugrad import backend
from gpugrad.backend import perfmodel

__all__ = [
    "CASES",
    "Profile",
    "SiteStats",
    "TraceStats",
    "analyze",
    "lstm_step",
    "profile",
    "profile_traced",
    "report",
    "trace_stats",
]


# --------------------------------------------------------------------------- trace analysis


@dataclass
class SiteStats:
    """One memory-access site (one instruction of the profiling build)."""

    space: str  # "global" or "shared"
    write: bool
    where: str  # file:line of the access
    size: int  # bytes per lane
    requests: int
    lanes: float  # mean active lanes per request
    sectors: float = 0.0  # global: 32-byte sectors per request
    ideal_sectors: float = 0.0  # global: distinct bytes / 32 per request
    wavefronts: float = 0.0  # shared: per request
    ideal_wavefronts: float = 0.0  # shared: distinct words / 32 per request

    @property
    def efficiency(self) -> float:
        """Global: sector efficiency; shared: ideal / actual wavefronts."""
        if self.space == "global":
            return self.ideal_sectors / self.sectors if self.sectors else 1.0
        return self.ideal_wavefronts / self.wavefronts if self.wavefronts else 1.0


@dataclass
class TraceStats:
    """A launch's recorded accesses, summarised."""

    kernel: str
    blocks: tuple
    threads: int  # per block
    records: int
    dropped: int
    sites: list = field(default_factory=list)
    per_thread: dict = field(default_factory=dict)  # (space, write, size) -> per thread

    def _sum(self, space, write, attr):
        return sum(
            getattr(s, attr) * s.requests
            for s in self.sites
            if s.space == space and (write is None or s.write == write)
        )

    @property
    def global_efficiency(self) -> float:
        """Sector efficiency over every global request of the sampled blocks."""
        sec = self._sum("global", None, "sectors")
        return self._sum("global", None, "ideal_sectors") / sec if sec else 1.0

    @property
    def shared_load_conflicts(self) -> float:
        """Extra wavefronts over the ideal per shared load request (0: conflict-free)."""
        req = sum(s.requests for s in self.sites if s.space == "shared" and not s.write)
        extra = self._sum("shared", False, "wavefronts") - self._sum(
            "shared", False, "ideal_wavefronts"
        )
        return extra / req if req else 0.0

    @property
    def shared_store_conflicts(self) -> float:
        req = sum(s.requests for s in self.sites if s.space == "shared" and s.write)
        extra = self._sum("shared", True, "wavefronts") - self._sum(
            "shared", True, "ideal_wavefronts"
        )
        return extra / req if req else 0.0

    @property
    def lane_utilisation(self) -> float:
        req = sum(s.requests for s in self.sites)
        return sum(s.lanes * s.requests for s in self.sites) / 32 / req if req else 1.0

    def shared_wavefronts_per_warp(self) -> float:
        """Shared wavefronts per warp over the sampled blocks (all sites)."""
        warps = len(self.blocks) * -(-self.threads // 32)
        return self._sum("shared", None, "wavefronts") / max(1, warps)


def _sites_lines(so_path, pcs) -> dict[int, str]:
    """file:line of each call site (addr2line on the profiling build's debug info); for
    code inlined from a header, the innermost line in a .cu file."""
    if not pcs:
        return {}
    try:
        out = subprocess.run(
            ["addr2line", "-a", "-i", "-e", str(so_path), *[hex(max(0, p - 1)) for p in pcs]],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {p: hex(p) for p in pcs}
    frames: list[list[str]] = []
    for line in out:
        if line.startswith("0x"):
            frames.append([])
        elif frames:
            frames[-1].append(line.split(" (")[0].rsplit("/", 1)[-1])
    res = {}
    for p, fr in zip(pcs, frames):
        known = [f for f in fr if not f.startswith("??")]
        cu = [f for f in known if ".cu:" in f]
        res[p] = (cu or known or [hex(p)])[0]
    return res


def _first_of_groups(keys: np.ndarray) -> np.ndarray:
    return np.concatenate([[True], np.any(keys[1:] != keys[:-1], axis=1)]) if len(keys) else keys


def analyze(trace, so_path=None) -> TraceStats:
    """Group a :class:`gpugrad.backend.emu.Trace` into warp requests (the k-th execution
    of a site by each lane of a warp) and measure each site."""
    r = trace.records
    nthreads = int(np.prod(trace.block))
    stats = TraceStats(trace.kernel, tuple(trace.blocks), nthreads, len(r), trace.dropped)
    if not len(r):
        return stats
    block = r["block"].astype(np.int64)
    thread = r["thread"].astype(np.int64)
    pc = r["pc"].astype(np.int64)
    flags = r["flags"].astype(np.int64)
    size = r["size"].astype(np.int64)
    addr = r["addr"].astype(np.uint64)
    # why rebase: CuPy allocates every array 256-byte aligned, NumPy only 16-byte; global
    # addresses are taken relative to a 256-aligned allocation holding the argument at
    # its address mod 16 (a view's sub-16-byte offset is kept, larger ones are lost)
    glob = (flags & 2) == 0
    if glob.any():
        base = np.array([lo - lo % 16 for lo, _ in trace.arrays] or [0], np.uint64)
        arg = np.minimum(r["arg"].astype(np.int64), len(base) - 1)
        apart = (arg + 1).astype(np.uint64) << np.uint64(40)  # arrays never share sectors
        addr = np.where(glob, addr - base[arg] + apart, addr)
    seq = np.arange(len(r))
    # occurrence of each (block, thread, pc, flags), in program order
    order = np.lexsort((seq, flags, pc, thread, block))
    keys = np.stack([block[order], thread[order], pc[order], flags[order]], axis=1)
    first = _first_of_groups(keys)
    starts = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    occ = np.empty(len(r), np.int64)
    occ[order] = np.arange(len(order)) - starts
    # requests: (block, warp, pc, flags, occurrence)
    warp = thread // 32
    rorder = np.lexsort((occ, flags, pc, warp, block))
    rkeys = np.stack([block[rorder], warp[rorder], pc[rorder], flags[rorder], occ[rorder]], 1)
    rfirst = _first_of_groups(rkeys)
    req = np.empty(len(r), np.int64)
    req[rorder] = np.cumsum(rfirst) - 1
    nreq = int(req.max()) + 1
    req_pc = np.zeros(nreq, np.int64)
    req_flags = np.zeros(nreq, np.int64)
    req_size = np.zeros(nreq, np.int64)
    req_pc[req] = pc
    req_flags[req] = flags
    req_size[req] = size
    lanes = np.bincount(req, minlength=nreq)
    shared = (req_flags & 2) != 0
    # distinct addresses per request
    ua = np.unique(np.stack([req, addr.astype(np.int64)], 1), axis=0)
    distinct_bytes = np.bincount(ua[:, 0], weights=req_size[ua[:, 0]], minlength=nreq)
    # global: sectors (an access may straddle two)
    g = ~shared[req]
    s0 = (addr // np.uint64(32)).astype(np.int64)
    s1 = ((addr + size.astype(np.uint64) - np.uint64(1)) // np.uint64(32)).astype(np.int64)
    sec = np.concatenate([np.stack([req[g], s0[g]], 1), np.stack([req[g], s1[g]], 1)])
    sectors = np.bincount(np.unique(sec, axis=0)[:, 0], minlength=nreq) if len(sec) else 0
    # shared: distinct 4-byte words per bank
    sh = shared[req]
    nwords = np.maximum(1, size[sh] // 4)
    rep = np.repeat(np.arange(int(sh.sum())), nwords)
    offs = np.arange(len(rep)) - np.repeat(np.cumsum(nwords) - nwords, nwords)
    words = (addr[sh] // np.uint64(4)).astype(np.int64)[rep] + offs
    wreq = req[sh][rep]
    uw = np.unique(np.stack([wreq, words], 1), axis=0)
    wavefronts = np.zeros(nreq)
    ideal_w = np.zeros(nreq)
    if len(uw):
        bank = uw[:, 1] % 32
        ub, per_bank = np.unique(np.stack([uw[:, 0], bank], 1), axis=0, return_counts=True)
        np.maximum.at(wavefronts, ub[:, 0], per_bank)
        ideal_w = np.ceil(np.bincount(uw[:, 0], minlength=nreq) / 32)
    # per site
    site_key = req_pc * 8 + req_flags
    lines = _sites_lines(so_path, sorted(set(req_pc.tolist()))) if so_path else {}
    for key in np.unique(site_key):
        m = site_key == key
        p, f = int(key) // 8, int(key) % 8
        sp = "shared" if f & 2 else "global"
        st = SiteStats(
            space=sp,
            write=bool(f & 1),
            where=lines.get(p, hex(p)),
            size=int(req_size[m][0]),
            requests=int(m.sum()),
            lanes=float(lanes[m].mean()),
        )
        if sp == "global":
            st.sectors = float(np.asarray(sectors)[m].mean())
            st.ideal_sectors = float(np.ceil(distinct_bytes[m] / 32).mean())
        else:
            st.wavefronts = float(wavefronts[m].mean())
            st.ideal_wavefronts = float(ideal_w[m].mean())
        stats.sites.append(st)
    # one row per (space, direction, size, source line): code the compiler duplicated
    # (peeled or unrolled copies) is one site in the source
    merged: dict = {}
    for st in stats.sites:
        key = (st.space, st.write, st.size, st.where)
        m = merged.get(key)
        if m is None:
            merged[key] = st
            continue
        tot = m.requests + st.requests
        for attr in ("lanes", "sectors", "ideal_sectors", "wavefronts", "ideal_wavefronts"):
            setattr(
                m, attr, (getattr(m, attr) * m.requests + getattr(st, attr) * st.requests) / tot
            )
        m.requests = tot
    stats.sites = sorted(merged.values(), key=lambda s: (s.space, s.write, s.where))
    # accesses per thread, by kind (for the SASS path constraints)
    nthr = len(stats.blocks) * nthreads
    for sp, wr, sz in {(bool(f & 2), bool(f & 1), int(z)) for f, z in zip(flags, size)}:
        m = (((flags & 2) != 0) == sp) & (((flags & 1) != 0) == wr) & (size == sz)
        key = ("shared" if sp else "global", "write" if wr else "read", sz)
        stats.per_thread[key] = float(m.sum()) / nthr
    return stats


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One profiled launch: the full problem (for the plan and the model) and the
    reduced one the emulator traces."""

    op: str
    shape: tuple
    dtype: str
    kernel: str
    grid: tuple
    block: tuple
    flops: float
    dram_bytes: float
    iterations: int  # hot-loop iterations per block, full problem
    trace_iterations: int  # same, in the traced run
    vendor: str | None
    run: object  # callable launching the traced run
    precision: str = "fp32"  # matmul: "tf32"/"3xtf32" for the tensor-core kernel
    dynamic_smem: int = 0  # bytes per block, beside ptxas's static figure (sm_90)
    smem_for: object = None  # callable: opt-in limit -> dynamic bytes on that GPU
    padding: float = 1.0  # tensor-core GEMM: mma work on whole tiles / useful work
    extra_bytes: float = 0.0  # DRAM traffic beyond the compulsory (split-K workspace)


def _es(dtype):
    return np.dtype(dtype).itemsize


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _gemm_operands(rng, m, n, kt, dtype, trans_a, trans_b):
    """Random operands of an m x n product over kt (the traced reduction length), in
    the stored layout the transposes ask for: a is (kt, m) with trans_a, b (n, kt)
    with trans_b."""
    a = _rand(rng, (kt, m) if trans_a else (m, kt), dtype)
    b = _rand(rng, (n, kt) if trans_b else (kt, n), dtype)
    return a, b


def _gemm_case(kernels, plan, shape, dtype, bk, granule, traced_tiles, vendor, **launch):
    """``(case, k_chunk, splits)``: a matmul Case for ``plan``, the launch dispatch makes
    (split-K included: each of grid[2] splits runs one k chunk, a multiple of
    ``granule``, and writes its partial products to a workspace that the reduction reads
    back, counted as extra DRAM traffic); traced on ``traced_tiles`` whole k tiles with
    one split. ``launch``: ``kernels.matmul``'s layout and kernel-choice arguments."""
    m, n, k = shape
    k_chunk, splits = kernels.matmul_k_chunk(k, plan.grid[2], granule)
    kt = min(k, traced_tiles * bk)
    rng = np.random.default_rng(0)

    def run():
        a, b = _gemm_operands(rng, m, n, kt, dtype, launch["trans_a"], launch["trans_b"])
        kernels.matmul(a, b, splits=1, **launch)

    es = _es(dtype)
    case = Case(
        "matmul",
        (m, n, k),
        dtype,
        plan.kernel,
        plan.grid,
        plan.block,
        2.0 * m * n * k,
        (m * k + k * n + m * n) * es,
        -(-k_chunk // bk),
        -(-kt // bk),
        vendor,
        run,
    )
    case.extra_bytes = 2 * splits * m * n * es if splits > 1 else 0
    return case, k_chunk, splits


def _matmul_case(shape, dtype, tile=None, trans_a=False, trans_b=False, precision="fp32"):
    """The FP32/FP64 GEMM with the plan the GPU gets: the tile and split-K as dispatch
    picks them (a skinny product, an LSTM step or batch 1, splits K over grid[2]), or
    the forced tile with its own split count."""
    from gpugrad.backend import kernels

    m, n, k = (int(v) for v in shape)
    dt = "f32" if dtype == "float32" else "f64"
    if precision != "fp32":
        return _matmul_tf32_case(m, n, k, dtype, trans_a, trans_b, precision)
    plan = kernels.plan_matmul(
        m, n, k, dt, kernels.EMU_NUM_SMS, tile, trans_a=trans_a, trans_b=trans_b
    )
    tile = tile or next(
        t for t, v in kernels.MATMUL_TILES[dt].items() if plan.kernel.startswith(v[0] + "_")
    )
    bk = kernels.MATMUL_TILES[dt][tile][3]
    vendor = "dgemm" if dtype == "float64" else "sgemm_skinny" if min(m, n) <= 64 else "sgemm"
    if vendor == "sgemm" and max(m, n, k) < 2048:
        vendor = "sgemm_mid"
    launch = dict(trans_a=trans_a, trans_b=trans_b, tile=tile)
    return _gemm_case(kernels, plan, (m, n, k), dtype, bk, bk, 8, vendor, **launch)[0]


def _matmul_tf32_case(m, n, k, dtype, trans_a, trans_b, precision):
    """The tensor-core GEMM with the plan the GPU gets (split-K included)."""
    from gpugrad.backend import kernels

    if dtype != "float32":
        raise ValueError(f"profile: precision={precision!r} needs float32, got {dtype}")
    plan = kernels.plan_matmul_tf32(
        m, n, k, precision, kernels.EMU_NUM_SMS, trans_a=trans_a, trans_b=trans_b
    )
    tile = kernels.tf32_plan_tile(plan)
    bm, bn, bk, _ = kernels.TF32_TILES[tile]
    vendor = "sgemm_tf32" if precision == "tf32" else "sgemm"
    launch = dict(trans_a=trans_a, trans_b=trans_b, precision=precision)
    granule = kernels.TF32_SPLIT_K_GRANULE
    case, k_chunk, splits = _gemm_case(
        kernels, plan, (m, n, k), dtype, bk, granule, 4, vendor, **launch
    )
    case.precision = precision
    # the mma run on whole tiles: an M = 64 problem fills half of each 128-row tile
    last = k - (splits - 1) * k_chunk
    k_run = (splits - 1) * k_chunk + -(-last // bk) * bk
    case.padding = (-(-m // bm) * bm) * (-(-n // bn) * bn) * k_run / max(1, m * n * k)
    case.smem_for = lambda limit: kernels.tf32_stages(trans_a, trans_b, limit, tile)[1]
    case.dynamic_smem = case.smem_for(kernels.EMU_MAX_SHARED_OPTIN)
    return case


def _conv_case(op, shape, dtype, stride=1, pad=None, precision="fp32"):
    from gpugrad.backend import kernels

    if precision != "fp32":
        return _conv_tf32_case(op, shape, dtype, stride, pad, precision)

    n, h, w, cin, cout, kh, kw = (int(v) for v in shape)
    pad = (kh // 2) if pad is None else int(pad)
    geo = kernels.conv_geometry(op, (n, h, w, cin), (kh, kw, cin, cout), stride, pad, 1, 1)
    dt = "f32" if dtype == "float32" else "f64"
    es = _es(dtype)
    flops = 2.0 * n * geo.ho * geo.wo * cout * kh * kw * cin
    x_b, y_b, w_b = n * h * w * cin * es, n * geo.ho * geo.wo * cout * es, kh * kw * cin * cout * es
    rng = np.random.default_rng(0)
    kw_ = dict(stride=stride, padding=pad)
    if op == "conv2d_fwd":
        plan = kernels.plan_conv(f"conv2d_fwd_{dt}", n * geo.ho * geo.wo, cout, 1)
        iters = -(-(kh * kw * cin) // 16)
        run = lambda: kernels.conv2d_fwd(  # noqa: E731
            _rand(rng, (n, h, w, cin), dtype), _rand(rng, (kh, kw, cin, cout), dtype), **kw_
        )
        bytes_ = x_b + w_b + y_b
    elif op == "conv2d_bwd_data":
        plan = kernels.plan_conv(f"conv2d_bwd_data_{dt}", n * h * w, cin, 1)
        iters = -(-(kh * kw * cout) // 16)
        run = lambda: kernels.conv2d_bwd_data(  # noqa: E731
            _rand(rng, (n, geo.ho, geo.wo, cout), dtype),
            _rand(rng, (kh, kw, cin, cout), dtype),
            (n, h, w, cin),
            **kw_,
        )
        bytes_ = x_b + w_b + y_b
    else:
        rows = kh * kw * cin
        plan, k_chunk = kernels.plan_conv_filter(
            f"conv2d_bwd_filter_{dt}", rows, cout, n * geo.ho * geo.wo, 1, cout, kernels.EMU_NUM_SMS
        )
        iters = -(-k_chunk // 16)
        run = lambda: kernels.conv2d_bwd_filter(  # noqa: E731
            _rand(rng, (n, geo.ho, geo.wo, cout), dtype),
            _rand(rng, (n, h, w, cin), dtype),
            (kh, kw, cin, cout),
            **kw_,
        )
        bytes_ = x_b + y_b + plan.grid[2] * w_b
    vendor = op.replace("conv2d_", "conv_") if dtype == "float32" else None
    return Case(
        op,
        tuple(shape),
        dtype,
        plan.kernel,
        plan.grid,
        plan.block,
        flops,
        bytes_,
        iters,
        iters,
        vendor,
        run,
    )


def _relu_case(op, shape, dtype):
    from gpugrad.backend import kernels

    (n,) = (int(v) for v in shape)
    dt = "f32" if dtype == "float32" else "f64"
    plan = kernels.plan_elementwise(f"{op}_{dt}", n, kernels.EMU_NUM_SMS)
    stride = plan.grid[0] * plan.block[0] * 4
    nt = min(n, 4 * stride)  # a few grid-stride iterations: each is the same
    rng = np.random.default_rng(0)

    def run():
        x = _rand(rng, nt, dtype)
        if op == "relu_fwd":
            kernels.relu_fwd(x)
        else:
            kernels.relu_bwd(_rand(rng, nt, dtype), x)

    arrays = 2 if op == "relu_fwd" else 3
    return Case(
        op,
        (n,),
        dtype,
        plan.kernel,
        plan.grid,
        plan.block,
        float(n),
        arrays * n * _es(dtype),
        -(-n // stride),
        -(-nt // stride),
        "elementwise",
        run,
    )


def _lstm_case(op, shape, dtype):
    from gpugrad.backend import kernels

    b, h = (int(v) for v in shape)
    dt = "f32" if dtype == "float32" else "f64"
    plan = kernels.plan_elementwise(f"{op}_{dt}", b * h, kernels.EMU_NUM_SMS, 1)
    rng = np.random.default_rng(0)

    def run():
        gp, c = _rand(rng, (b, 4 * h), dtype), _rand(rng, (b, h), dtype)
        if op == "lstm_fwd":
            kernels.lstm_cell_fwd(gp, c)
        else:
            hh, cc, gates = kernels.lstm_cell_fwd(gp, c)
            kernels.lstm_cell_bwd(hh, cc, gates, c, cc)

    arrays = 11 if op == "lstm_fwd" else 13
    return Case(
        op,
        (b, h),
        dtype,
        plan.kernel,
        plan.grid,
        plan.block,
        0.0,
        arrays * b * h * _es(dtype),
        1,
        1,
        "lstm_cell",
        run,
    )


def _conv_tf32_case(op, shape, dtype, stride, pad, precision):
    """The tensor-core conv (kernels/conv2d_tf32.cu) with the plan the GPU gets; the
    traced run is the full problem, of which ``trace_stats`` runs a few blocks. The
    vendor is cuDNN at the same precision: TF32 for "tf32", FP32 for "3xtf32"
    (FP32-level accuracy; cuDNN has no 3xTF32 convolution)."""
    from gpugrad.backend import kernels

    if dtype != "float32":
        raise ValueError(f"profile: precision={precision!r} needs float32, got {dtype}")
    if precision not in kernels.TF32_MODES:
        raise ValueError(f"profile: precision must be one of {kernels.TF32_MODES}")
    n, h, w, cin, cout, kh, kw = (int(v) for v in shape)
    pad = (kh // 2) if pad is None else int(pad)
    geo = kernels.conv_geometry(op, (n, h, w, cin), (kh, kw, cin, cout), stride, pad, 1, 1)
    bm, bn, bk, _ = kernels.CONV_TF32_TILE
    # m padding at block granularity: a warp whose rows all lie past the end skips its
    # mma (conv2d_tf32.cu), but the SM it runs on gains from that only when other
    # blocks are waiting for it (several waves); counted as run, the conservative side
    # (backward filter: the planner's 192- or 256-row blocks)
    wm = bm
    pixels = n * geo.ho * geo.wo
    flops = 2.0 * pixels * cout * kh * kw * cin
    x_b, y_b, w_b = n * h * w * cin * 4, pixels * cout * 4, kh * kw * cin * cout * 4
    rng = np.random.default_rng(0)
    kw_ = dict(stride=stride, padding=pad, precision=precision)
    sh, sw = geo.stride
    extra = 0.0
    if op == "conv2d_fwd":
        m, nn, k = pixels, cout, kh * kw * cin
        plan = kernels.plan_conv_tf32(f"{op}_{precision}_f32", m, nn, 1)
        m_run, k_run = -(-m // wm) * wm, -(-k // bk) * bk
        iters = k_run // bk
        run = lambda: kernels.conv2d_fwd(  # noqa: E731
            _rand(rng, (n, h, w, cin), dtype), _rand(rng, (kh, kw, cin, cout), dtype), **kw_
        )
    elif op == "conv2d_bwd_data":
        m, nn, k = n * h * w, cin, kh * kw * cout  # all phases together (stride 1: one)
        rows = n * -(-h // sh) * -(-w // sw)
        plan = kernels.plan_conv_tf32(f"{op}_{precision}_f32", rows, nn, 1, sh * sw)
        # per phase (the largest): its rows and about 1/(sh sw) of the taps
        k_run = -(-(kh * kw * cout) // (sh * sw * bk)) * bk
        m_run = sh * sw * -(-rows // wm) * wm
        iters = k_run // bk
        k = max(1, k // (sh * sw))  # the useful k of a phase (exact at stride 1)
        run = lambda: kernels.conv2d_bwd_data(  # noqa: E731
            _rand(rng, (n, geo.ho, geo.wo, cout), dtype),
            _rand(rng, (kh, kw, cin, cout), dtype),
            (n, h, w, cin),
            **kw_,
        )
    else:
        m, nn, k = kh * kw * cin, cout, pixels
        fargs = (f"{op}_{precision}_f32", m, nn, k, 1, cout, kernels.EMU_NUM_SMS)
        plan, k_chunk, _, _ = kernels.plan_conv_tf32_filter(*fargs, kernels.EMU_MAX_SHARED_OPTIN)
        warps = plan.block[0] // 32  # 3 or 4: 192 or 256 rows per block
        wm = 64 * warps
        filter_smem = lambda limit: kernels.plan_conv_tf32_filter(*fargs, limit, warps)[3]  # noqa: E731
        k_run = plan.grid[2] * -(-k_chunk // bk) * bk
        m_run = -(-m // wm) * wm
        iters = -(-k_chunk // bk)
        extra = 2.0 * plan.grid[2] * w_b if plan.grid[2] > 1 else 0.0  # partial sums
        run = lambda: kernels.conv2d_bwd_filter(  # noqa: E731
            _rand(rng, (n, geo.ho, geo.wo, cout), dtype),
            _rand(rng, (n, h, w, cin), dtype),
            (kh, kw, cin, cout),
            **kw_,
        )
    direction = op.replace("conv2d_", "conv_")
    case = Case(
        op,
        tuple(shape),
        dtype,
        plan.kernel,
        plan.grid,
        plan.block,
        flops,
        x_b + y_b + w_b,
        iters,
        iters,
        f"{direction}_tf32" if precision == "tf32" else direction,
        run,
    )
    case.precision = precision
    case.extra_bytes = extra
    # the mma run on whole tiles: m rounded up to the block's rows, n to its 64 columns,
    # k to BK
    case.padding = m_run * (-(-nn // bn) * bn) * k_run / max(1, m * nn * k)
    case.smem_for = lambda limit: kernels.conv_tf32_stages(limit)[1]
    if op == "conv2d_bwd_filter":  # its ring: as deep as its resident blocks allow
        case.smem_for = filter_smem
    case.dynamic_smem = case.smem_for(kernels.EMU_MAX_SHARED_OPTIN)
    return case


CASES = {
    "matmul": ("M N K", _matmul_case),
    "conv2d_fwd": ("N H W Cin Cout KH KW", _conv_case),
    "conv2d_bwd_data": ("N H W Cin Cout KH KW", _conv_case),
    "conv2d_bwd_filter": ("N H W Cin Cout KH KW", _conv_case),
    "relu_fwd": ("n", _relu_case),
    "relu_bwd": ("n", _relu_case),
    "lstm_fwd": ("B H", _lstm_case),
    "lstm_bwd": ("B H", _lstm_case),
}

# The kernel review's workloads (kernel-review.md §2.2/§4): the standard report.
STANDARD = [
    ("matmul", (4096, 4096, 4096), "float32", {}),
    ("matmul", (1024, 1024, 1024), "float32", {}),
    ("matmul", (64, 2048, 512), "float32", {"trans_b": True}),
    ("matmul", (64, 512, 2048), "float32", {}),
    ("matmul", (4096, 4096, 4096), "float64", {}),
    ("conv2d_fwd", (64, 56, 56, 64, 64, 3, 3), "float32", {}),
    ("conv2d_bwd_data", (64, 56, 56, 64, 64, 3, 3), "float32", {}),
    ("conv2d_bwd_filter", (64, 56, 56, 64, 64, 3, 3), "float32", {}),
    ("relu_fwd", (1 << 27,), "float32", {}),
    ("relu_bwd", (1 << 27,), "float32", {}),
    ("lstm_fwd", (64, 512), "float32", {}),
    ("lstm_bwd", (64, 512), "float32", {}),
]


def make_case(op: str, shape, dtype: str = "float32", **options) -> Case:
    if op not in CASES:
        raise ValueError(f"profile: unknown op {op!r}; one of {', '.join(CASES)}")
    want, fn = CASES[op]
    if len(shape) != len(want.split()):
        raise ValueError(f"profile: {op} takes --shape {want}, got {tuple(shape)}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"profile: dtype must be float32 or float64, got {dtype!r}")
    if fn is _matmul_case:
        return fn(shape, dtype, **options)
    return fn(op, shape, dtype, **options)


# --------------------------------------------------------------------------- profiling


@contextlib.contextmanager
def _traced():
    from gpugrad.backend import kernels

    previous = backend.device()
    backend.set_device("emu")
    kernels._emu_trace = True
    try:
        yield kernels
    finally:
        kernels._emu_trace = False
        backend.set_device(previous)


@dataclass
class Profile:
    case: Case
    trace: TraceStats
    sass: object  # gpugrad.backend.sass.KernelSass
    occupancy: dict
    facts: perfmodel.KernelFacts
    predictions: list


def trace_stats(op: str, shape, dtype: str = "float32", blocks=None, **options):
    """Run the ``op`` case under the profiling build and return ``(case, TraceStats)``;
    ``blocks``: the linear block indices to run and trace (default: first, middle and
    last, or only the first when a block's loop is long)."""
    case = make_case(op, shape, dtype, **options)
    with _traced() as kernels:
        info = kernels._TABLE[case.kernel]
        kernels._function(case.kernel)  # compile the profiling build
        module = kernels._modules[(info.file, ("emu", "trace"))]
        nblocks = int(np.prod(case.grid))
        if blocks is None:
            long = case.trace_iterations > 64
            blocks = [0] if long else sorted({0, nblocks // 2, nblocks - 1})
        module.trace_blocks = list(blocks)
        before = len(module.traces)
        try:
            case.run()
        finally:
            traces = [t for t in module.traces[before:] if t.kernel == case.kernel]
            del module.traces[before:]
            module.trace_blocks = None
    if not traces:
        raise RuntimeError(f"profile: {case.kernel} was not launched by the {op} case")
    return case, analyze(traces[-1], module.so_path)


def profile(op: str, shape, dtype: str = "float32", gpus=("H100 SXM",), arch=90, **options):
    """Profile one launch (see the module docstring); ``gpus`` are names of
    :data:`gpugrad.backend.perfmodel.GPUS` to predict for."""
    case, stats = trace_stats(op, shape, dtype, **options)
    return profile_traced(case, stats, gpus, arch)


def profile_traced(case: Case, stats: TraceStats, gpus=("H100 SXM",), arch=90) -> Profile:
    """:func:`profile` from a traced run already made (``trace_stats``'s result): the
    SASS, occupancy and model parts only, without tracing the launch again."""
    from gpugrad.backend import sass

    dtype = case.dtype
    # per hot-loop iteration, per thread: what the SASS path must contain
    per_it = {k: v / max(1, case.trace_iterations) for k, v in stats.per_thread.items()}
    vec = sum(
        v for (sp, rw, sz), v in per_it.items() if sp == "global" and rw == "read" and sz == 16
    )
    # tensor-core GEMM: its loop stores to shared memory only by cp.async (16 bytes); the
    # 4-byte stores are the sliced-k hand-off after the loop, not per iteration
    sts = sum(
        v
        for (sp, rw, sz), v in per_it.items()
        if sp == "shared" and rw == "write" and (case.precision == "fp32" or sz == 16)
    )
    ks = sass.kernel_sass(
        case.kernel,
        arch,
        vector_loads=round(vec) if vec else None,
        shared_stores=round(sts) if sts else None,
    )
    threads = int(np.prod(case.block))
    smem = ks.smem + case.dynamic_smem
    occ = sass.occupancy(ks.registers, threads, smem, arch)
    loop = ks.loop
    wf_iter = stats.shared_wavefronts_per_warp() / max(1, case.trace_iterations)
    if case.precision != "fp32":
        # the sliced-k hand-off after the loop (4-byte shared stores, as many 4-byte
        # loads): once per block, so amortised over the full problem's iterations
        warps = len(stats.blocks) * -(-stats.threads // 32)
        handoff = 2 * stats._sum("shared", True, "wavefronts") / max(1, warps)
        handoff -= (
            2
            * sum(
                s.wavefronts * s.requests
                for s in stats.sites
                if s.space == "shared" and s.write and s.size == 16
            )
            / max(1, warps)
        )
        wf_iter += handoff * (1 / max(1, case.iterations) - 1 / max(1, case.trace_iterations))
    predictions = []
    for name in gpus:
        g = perfmodel.gpu(name)
        smem_g = smem
        if case.smem_for is not None:  # the ring depth the GPU's opt-in limit allows
            lim = sass.ARCH_LIMITS[g.arch]
            smem_g = ks.smem + case.smem_for(lim["smem"] - lim["reserved"])
        occ_g = sass.occupancy(ks.registers, threads, smem_g, g.arch)
        facts = perfmodel.KernelFacts(
            flops=case.flops,
            dram_bytes=case.dram_bytes,
            dtype=dtype,
            blocks=int(np.prod(case.grid)),
            threads=threads,
            blocks_per_sm=occ_g["blocks_per_sm"],
            fma_share=loop.path_share if loop else None,
            fma_per_iteration=loop.path_fma if loop else None,
            instructions_per_iteration=loop.path_instructions if loop else None,
            shared_wavefronts_per_iteration=wf_iter if loop else None,
            tensor_cores=case.precision != "fp32",
            mma_flops_ratio=(3.0 if case.precision == "3xtf32" else 1.0) * case.padding,
            extra_dram_bytes=case.extra_bytes,
        )
        predictions.append(perfmodel.predict(facts, g, case.vendor))
    return Profile(case, stats, ks, occ, facts, predictions)


def _si(x, unit):
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}"


def _t(s):
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} µs"


def report(p: Profile) -> str:
    """The profile as text."""
    c, t, k = p.case, p.trace, p.sass
    lines = [
        f"{c.op} {'x'.join(map(str, c.shape))} {c.dtype}: kernel {c.kernel}, grid {c.grid}, "
        f"block {c.block}",
        f"  work: {_si(c.flops, 'FLOP')}"
        + (f" (x{c.padding:.2f} run on whole tiles)" if c.padding > 1.0 + 1e-9 else "")
        + f", compulsory DRAM traffic {_si(c.dram_bytes, 'B')}"
        + (f" (+ {_si(c.extra_bytes, 'B')} split-K workspace)" if c.extra_bytes else "")
        + ", "
        f"{c.iterations} hot-loop iterations per block (traced: {c.trace_iterations})",
        f"  compiled ({k.compiler}, sm_{k.arch}): {k.registers} registers, {k.spills} B spilled, "
        f"{k.smem} B static shared"
        + (f" + {c.dynamic_smem} B dynamic" if c.dynamic_smem else "")
        + f"; {p.occupancy['blocks_per_sm']} blocks "
        f"({p.occupancy['warps_per_sm']} warps) per SM, occupancy "
        f"{p.occupancy['occupancy']:.0%} (limited by {p.occupancy['limiter']})",
    ]
    if k.loop:
        L = k.loop
        lines.append(
            f"  hot loop ({k.sass_compiler} SASS): {L.path_instructions} instructions per "
            f"iteration on the path [{L.rule}], {L.path_fma} "
            f"{'HMMA' if c.precision != 'fp32' else 'FMA'} → share {L.path_share:.1%} "
            f"(static loop: {L.static_instructions} instr, {L.static_share:.1%})"
        )
    else:
        lines.append("  hot loop: none with FMA instructions")
    lines.append(
        f"  emulator trace: blocks {list(t.blocks)}, {t.records} accesses ({t.dropped} to local "
        f"memory/other, not counted); global sector efficiency {t.global_efficiency:.1%}; "
        f"shared conflicts per request: loads {t.shared_load_conflicts:.2f}, stores "
        f"{t.shared_store_conflicts:.2f}; active lanes per request {t.lane_utilisation:.1%}"
    )
    lines.append("  sites (per warp request):")
    for s in t.sites:
        rw = "store" if s.write else "load"
        if s.space == "global":
            m = f"{s.sectors:5.2f} sectors (ideal {s.ideal_sectors:5.2f}, {s.efficiency:6.1%})"
        else:
            m = (
                f"{s.wavefronts:5.2f} wavefronts (ideal {s.ideal_wavefronts:5.2f}"
                f"{', CONFLICT' if s.wavefronts > s.ideal_wavefronts + 1e-9 else ''})"
            )
        lines.append(
            f"    {s.space:6s} {rw:5s} {s.size:2d} B  {s.where:18s} {s.requests:8d} req  "
            f"{s.lanes:4.1f} lanes  {m}"
        )
    lines.append("  model (perfmodel; assumptions in its docstring):")
    for pr in p.predictions:
        v = ""
        if pr.vendor_seconds:
            v = (
                f"; vendor {_t(pr.vendor_seconds)} = {pr.fraction_of_vendor:.0%} of vendor "
                f"[{pr.vendor_note}]"
            )
        rate = f"{_si(pr.flops_per_second, 'FLOP/s')}, " if c.flops else ""
        lines.append(
            f"    {pr.gpu:9s} {_t(pr.seconds)} ({rate}{pr.fraction_of_peak:.0%} of peak, "
            f"bound: {pr.bound}){v}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- LSTM step

#: cuDNN's recurrent part, per time step and direction, H100 SXM, FP32, H = 512, B = 64
#: (PyTorch picks CUDNN_RNN_ALGO_STANDARD there): kernel-review.md §4, 5–8 µs per
#: step, the midpoint; other GPUs are scaled by the sustained FP32 peak ratio.
CUDNN_STEP_SECONDS = 6.5e-6
#: one grid-wide barrier of the persistent LSTM (an atomic arrival and a spin on a
#: counter in L2 by 128 blocks: about two L2 round trips plus the slowest block's
#: arrival skew); an assumption, not measured
GRID_BARRIER_SECONDS = 1.5e-6


@dataclass
class LstmStep:
    """One LSTM training step (forward and backward over T steps) on one GPU: the
    modelled time of each part, gpugrad's and the vendor's."""

    gpu: str
    precision: str
    parts: list  # (name, gpugrad seconds, vendor seconds, how)

    @property
    def seconds(self) -> float:
        return sum(p[1] for p in self.parts)

    @property
    def vendor_seconds(self) -> float:
        return sum(p[2] for p in self.parts)

    @property
    def ratio(self) -> float:
        """gpugrad's time over the vendor's (the target: <= 1.5)."""
        return self.seconds / self.vendor_seconds


def lstm_step(
    steps=100, batch=64, hidden=512, inputs=512, gpus=("H100 SXM",), precision="fp32", gemm=None
) -> list[LstmStep]:
    """Model one training step of an LSTM layer as ``bench/gpu.py`` times it (T = 100,
    B = 64, H = 512, 512 inputs: forward, then the input gradient and every weight
    gradient) on each of ``gpus``, against cuDNN:

    * the recurrence, forward and backward, on the persistent kernels
      (``plan_lstm_persistent``; its per-step cycle model on one SM, at the GPU's
      sustained clock, plus one grid barrier, ``GRID_BARRIER_SECONDS``, per step); cuDNN:
      ``CUDNN_STEP_SECONDS`` per step and direction;
    * the GEMMs over all steps: the input projection ``x @ W.T`` (+ bias), ``dx = dpre @
      W``, ``dW = dpre.T @ x``, ``dR = dpre.T @ h``: the emulator profile and model of
      each (:func:`profile`, in ``precision``), against the vendor figure the model
      prints beside it (cuBLAS FP32 or TF32);
    * ``db``: the column sums of dpre, memory-bound on both sides (90 % of HBM).

    ``gemm(m, n, k, trans_a, trans_b) -> [Prediction per GPU]`` replaces the profiled
    GEMMs (tests). Launch overheads are left out on both sides.

    >>> from gpugrad.backend import perfmodel                       # doctest: +SKIP
    >>> r = lstm_step(gpus=("H100 SXM",))[0]                        # doctest: +SKIP
    >>> r.ratio < 1.5                                               # doctest: +SKIP
    True
    """
    from gpugrad.backend import kernels, sass

    rows = steps * batch
    if gemm is None:

        def gemm(m, n, k, trans_a, trans_b):
            opts = dict(trans_a=trans_a, trans_b=trans_b)
            if precision != "fp32":
                opts["precision"] = precision
            return profile("matmul", (m, n, k), "float32", gpus=gpus, **opts).predictions

    products = [
        ("input projection x @ W.T", (rows, 4 * hidden, inputs, False, True)),
        ("dx = dpre @ W", (rows, inputs, 4 * hidden, False, False)),
        ("dW = dpre.T @ x", (4 * hidden, inputs, rows, True, False)),
        ("dR = dpre.T @ h", (4 * hidden, hidden, rows, True, False)),
    ]
    cache: dict = {}
    for _, shape in products:
        if shape not in cache:
            cache[shape] = gemm(*shape)
    out = []
    for gi, name in enumerate(gpus):
        g = perfmodel.gpu(name)
        tc = perfmodel.TENSOR_CORES[g.name]
        clock = g.tf32_tflops * 1e12 / (g.sms * tc.tf32_flop_per_clk_sm) * g.sustained_clock
        lim = sass.ARCH_LIMITS[g.arch]
        ref = perfmodel.GPUS[perfmodel.H100]
        fp32_scale = (g.peak("float32") * g.sustained_clock) / (
            ref.peak("float32") * ref.sustained_clock
        )
        parts = []
        for direction in ("fwd", "bwd"):
            plan = kernels.plan_lstm_persistent(
                direction, batch, hidden, "f32", g.sms, lim["smem"] - lim["reserved"]
            )
            if plan is None:
                raise ValueError(
                    f"lstm-step: the recurrent weights of H={hidden} do not fit the "
                    f"persistent kernel on {g.name}"
                )
            per_step = plan.cycles / clock + GRID_BARRIER_SECONDS
            parts.append(
                (
                    f"recurrence {direction} ({plan.kernel}, grid {plan.grid[0]})",
                    steps * per_step,
                    steps * CUDNN_STEP_SECONDS / fp32_scale,
                    f"{plan.cycles} cycles/step at {clock / 1e9:.2f} GHz + barrier",
                )
            )
        for label, shape in products:
            pr = cache[shape][gi]
            parts.append((label, pr.seconds, pr.vendor_seconds, f"{'x'.join(map(str, shape[:3]))}"))
        db = rows * 4 * hidden * 4 / (0.9 * g.bandwidth_tbs * 1e12)
        parts.append(("db = sum(dpre)", db, db, "memory-bound"))
        out.append(LstmStep(g.name, precision, parts))
    return out


def lstm_step_report(results: list[LstmStep], shape) -> str:
    t, b, h, i = shape
    lines = [
        f"LSTM training step T{t} B{b} H{h} inputs {i} (forward + backward: dx, dW, dR, db), "
        f"GEMMs in {results[0].precision}; vendor: cuDNN (recurrence "
        f"{CUDNN_STEP_SECONDS * 1e6:.1f} µs/step/direction, kernel-review.md §4) + the "
        "vendor GEMM figures of the model; launch overheads left out"
    ]
    for r in results:
        lines.append(
            f"  {r.gpu}: gpugrad {_t(r.seconds)}, vendor {_t(r.vendor_seconds)}: "
            f"{r.ratio:.2f}x the vendor's time (target <= 1.5x)"
        )
        for name, ours, theirs, how in r.parts:
            lines.append(f"    {name:44s} {_t(ours):>9s} vs {_t(theirs):>9s}  [{how}]")
    return "\n".join(lines)


def main(args) -> int:
    """``python -m gpugrad profile`` (argparse namespace from gpugrad.__main__)."""
    gpus = args.gpu or ["H100 SXM"]
    if args.op == "lstm-step":
        shape = tuple(args.shape or (100, 64, 512, 512))
        if len(shape) != 4:
            raise SystemExit(f"profile lstm-step: --shape T B H inputs, got {shape}")
        prec = getattr(args, "precision", "fp32")
        print(lstm_step_report(lstm_step(*shape, gpus=tuple(gpus), precision=prec), shape))
        return 0
    if args.op == "all":
        jobs = [(op, shape, dt, opts) for op, shape, dt, opts in STANDARD]
    else:
        if not args.shape:
            want = CASES.get(args.op, ("?",))[0]
            raise SystemExit(f"profile {args.op}: --shape {want} is required")
        opts = {}
        if args.op == "matmul":
            opts = dict(tile=args.tile, trans_a=args.trans_a, trans_b=args.trans_b)
            if getattr(args, "precision", "fp32") != "fp32":
                opts["precision"] = args.precision
        elif args.op.startswith("conv2d"):
            opts = dict(stride=args.stride, pad=args.pad)
            if getattr(args, "precision", "fp32") != "fp32":
                opts["precision"] = args.precision
        jobs = [(args.op, tuple(args.shape), args.dtype, opts)]
    for op, shape, dt, opts in jobs:
        print(report(profile(op, shape, dt, gpus=gpus, arch=args.arch, **opts)))
        print()
    return 0
