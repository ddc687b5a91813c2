"""What the GPU compiler made of a kernel, measured without a GPU.

Compiles a ``kernels/*.cu`` file to a cubin the way CuPy does at run time (NVRTC with
``-std=c++17 -ftz=true -arch=sm_XX``; nvcc when NVRTC is absent), keeps ptxas's
resource report (registers, spills, shared memory), disassembles the cubin with
``cuobjdump -sass`` and finds each kernel's hot loop: the loop with the most
FFMA/DFMA/HMMA instructions. Its *path share* is the FMA fraction of the cheapest
iteration through the loop that runs the loop's main FMA block (a shortest path by
instruction count in the loop's control-flow graph), which stands for the common
path when the fallbacks (scalar loads, masks, edges) are longer than the fast path;
the *static share* counts every instruction of the loop. :func:`occupancy` turns
registers, shared memory and the block size into blocks per SM.

Cubins and disassemblies are cached by a hash of the source, the options and the
compiler version in ``gpugrad.backend.cache_dir()/"sass"``.

>>> occupancy(registers=133, threads=256, smem=16896, arch=90)["blocks_per_sm"]
1
>>> occupancy(registers=128, threads=256, smem=16896, arch=90)["blocks_per_sm"]
2
"""

from __future__ import annotations

import hashlib
import heapq
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gpugrad import backend
from gpugrad._filelock import build_once

__all__ = [
    "ARCH_LIMITS",
    "HotLoop",
    "Instr",
    "KernelSass",
    "compile_cubin",
    "cuobjdump_path",
    "disassemble",
    "hot_loop",
    "kernel_sass",
    "occupancy",
]

# Per-SM limits (CUDA occupancy calculator data): registers, warps, blocks, shared memory
# per SM (the largest carve-out) and the 1 KiB the driver reserves per block.
ARCH_LIMITS = {
    80: dict(regs=65536, warps=64, blocks=32, smem=164 * 1024, reserved=1024),
    86: dict(regs=65536, warps=48, blocks=16, smem=100 * 1024, reserved=1024),
    89: dict(regs=65536, warps=48, blocks=24, smem=100 * 1024, reserved=1024),
    90: dict(regs=65536, warps=64, blocks=32, smem=228 * 1024, reserved=1024),
}
FMA_OPS = ("FFMA", "DFMA", "HMMA", "DMMA")


def occupancy(registers: int, threads: int, smem: int = 0, arch: int = 90) -> dict:
    """Resident blocks and warps per SM for a kernel using ``registers`` per thread and
    ``smem`` bytes of shared memory per block of ``threads`` threads, and which limit
    binds (registers are allocated per warp in units of 256).

    >>> occupancy(registers=64, threads=256, smem=17408, arch=90)["warps_per_sm"]
    32
    """
    lim = ARCH_LIMITS[arch]
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (lim["regs"] // per_warp) // warps
    by_warps = lim["warps"] // warps
    smem_block = -(-smem // 128) * 128 + lim["reserved"]
    by_smem = lim["smem"] // smem_block if smem else lim["blocks"]
    limits = {
        "registers": by_regs,
        "warps": by_warps,
        "shared memory": by_smem,
        "blocks": lim["blocks"],
    }
    blocks = min(limits.values())
    limiter = min(limits, key=lambda k: limits[k])
    return {
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * warps,
        "occupancy": blocks * warps / lim["warps"],
        "limiter": limiter,
    }


# --------------------------------------------------------------------------- compiling


def cuobjdump_path() -> str | None:
    """``$GPUGRAD_CUOBJDUMP``, PATH, the CUDA toolkit, or pip's ``nvidia-cuda-cuobjdump``."""
    cands = [os.environ.get("GPUGRAD_CUOBJDUMP"), shutil.which("cuobjdump")]
    cands.append("/usr/local/cuda/bin/cuobjdump")
    try:
        import nvidia  # type: ignore

        for root in nvidia.__path__:
            cands += [str(p) for p in sorted(Path(root).glob("*/bin/cuobjdump"))]
    except ImportError:
        pass
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:  # noqa: BLE001 - absent or not loadable: try nvcc
        return None


def _nvcc() -> str | None:
    for c in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def compile_cubin(file: str, arch: int = 90, tool: str = "nvrtc") -> tuple[Path, str, str]:
    """Compile ``kernels/<file>`` for ``sm_<arch>``; returns (cubin path, ptxas log,
    compiler name). ``tool="nvrtc"`` (CuPy's compiler, the production code; nvcc when
    NVRTC is absent) or ``"nvcc"``; cached by content."""
    from gpugrad.backend import kernels

    source = kernels.expand_includes(backend.kernel_dir() / file)
    options = ["-std=c++17", "-ftz=true", f"-arch=sm_{arch}", "-Xptxas=-v"]
    nvrtc = _nvrtc() if tool == "nvrtc" else None
    if nvrtc is not None:
        tool = "nvrtc-" + ".".join(map(str, nvrtc.getVersion()))
    else:
        nvcc = _nvcc()
        if nvcc is None:
            raise RuntimeError(
                "sass: no CUDA compiler (pip install nvidia-cuda-nvrtc-cu12 cupy-cuda12x, or "
                "install the CUDA toolkit for nvcc)"
            )
        tool = "nvcc:" + subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256("\0".join([source, *options, tool]).encode()).hexdigest()[:24]
    out_dir = backend.cache_dir() / "sass"
    out_dir.mkdir(parents=True, exist_ok=True)
    cubin = out_dir / f"{Path(file).stem}-sm{arch}-{h}.cubin"
    log_file = cubin.with_suffix(".log")

    def ready():
        return cubin.exists() and log_file.exists()

    if not ready():
        # why the lock: pytest-xdist workers and child runs share this cache, and a
        # cold matmul.cu is about a minute of one core; the later caller waits
        build_once(
            cubin, lambda _: _compile(file, arch, source, options, nvrtc, cubin), ready=ready
        )
    return cubin, log_file.read_text(), tool.split(":")[0]


def _compile(file: str, arch: int, source: str, options: list, nvrtc, cubin: Path) -> None:
    """Compile ``source`` with NVRTC (when given) or nvcc; write ``cubin`` and its log."""
    if nvrtc is not None:
        prog = nvrtc.createProgram(source, file, [], [])
        try:
            try:
                nvrtc.compileProgram(prog, options)
            except nvrtc.NVRTCError as exc:
                raise RuntimeError(f"NVRTC failed on {file}:\n{nvrtc.getProgramLog(prog)}") from exc
            log = nvrtc.getProgramLog(prog)
            data = nvrtc.getCUBIN(prog)
        finally:
            nvrtc.destroyProgram(prog)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / file
            src.write_text(source)
            out = Path(tmp) / "k.cubin"
            nvcc = _nvcc()
            if nvcc is None:
                raise RuntimeError("sass: nvcc is not installed (CUDA toolkit; or set $NVCC)")
            cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-std=c++17", "-ftz=true"]
            cmd += ["-Xptxas", "-v", "-o", str(out), str(src)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"nvcc failed on {file}:\n{r.stderr}")
            log, data = r.stdout + r.stderr, out.read_bytes()
    # the log first: ready() tests both, and the cubin's rename completes the entry
    tmp_log = cubin.with_suffix(f".{os.getpid()}.logtmp")
    tmp_log.write_text(log)
    os.replace(tmp_log, cubin.with_suffix(".log"))
    tmp_cubin = cubin.with_suffix(f".{os.getpid()}.tmp")
    tmp_cubin.write_bytes(data)
    os.replace(tmp_cubin, cubin)


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[str, dict]:
    """{kernel: {registers, smem, stack, spill_stores, spill_loads}} from a ptxas -v log."""
    out: dict[str, dict] = {}
    cur = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = out.setdefault(
                m.group(1),
                dict(registers=0, smem=0, stack=0, spill_stores=0, spill_loads=0),
            )
            continue
        if cur is None:
            continue
        m = _FRAME.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            cur["registers"] = int(m.group(1))
            cur["smem"] = int(m.group(2) or 0)
    return out


# --------------------------------------------------------------------------- SASS


@dataclass(frozen=True)
class Instr:
    addr: int
    pred: str  # "" or "@P0", "@!P1", ...
    op: str  # full opcode with modifiers, e.g. "LDS.128"
    args: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]

    @property
    def target(self) -> int | None:
        if self.base not in ("BRA", "BRX", "JMP"):
            return None
        m = re.search(r"0x([0-9a-f]+)", self.args)
        return int(m.group(1), 16) if m else None


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def disassemble(cubin: Path) -> dict[str, list[Instr]]:
    """{function name: instructions} from ``cuobjdump -sass`` (cached beside the cubin)."""
    cubin = Path(cubin)
    text_file = cubin.with_suffix(".sass")
    if text_file.exists():
        text = text_file.read_text()
    else:
        tool = cuobjdump_path()
        if tool is None:
            raise RuntimeError(
                "sass: cuobjdump not found (pip install nvidia-cuda-cuobjdump, or the CUDA "
                "toolkit; or set $GPUGRAD_CUOBJDUMP)"
            )
        r = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"cuobjdump failed on {cubin}:\n{r.stderr}")
        text = r.stdout
        text_file.write_text(text)
    funcs: dict[str, list[Instr]] = {}
    cur: list[Instr] | None = None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = _LINE.search(line)
        if m and cur is not None:
            cur.append(
                Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4))
            )
    return funcs


@dataclass
class HotLoop:
    """The loop of a kernel with the most FMA-class instructions (FFMA, DFMA, HMMA, DMMA)."""

    start: int
    end: int
    static_instructions: int
    static_fma: int
    path_instructions: int
    path_fma: int
    counts: dict = field(default_factory=dict)  # opcode base -> count on the path
    rule: str = ""  # the constraints the path was chosen under

    @property
    def static_share(self) -> float:
        return self.static_fma / max(1, self.static_instructions)

    @property
    def path_share(self) -> float:
        return self.path_fma / max(1, self.path_instructions)


def _is_fma(ins: Instr) -> bool:
    return ins.base in FMA_OPS


def _unconditional(ins: Instr) -> bool:
    return ins.pred in ("", "@PT")


def hot_loop(
    instrs: list[Instr], vector_loads: int | None = None, shared_stores: int | None = None
) -> HotLoop | None:
    """The hot loop of one function, or None when no loop has FMA instructions.
    ``vector_loads``/``shared_stores``: 128-bit global loads and shared stores per
    iteration on the path, as the emulator measured them (see above)."""
    instrs = [i for i in instrs if i.base != "NOP"]
    index = {ins.addr: k for k, ins in enumerate(instrs)}
    loops = []
    for k, ins in enumerate(instrs):
        t = ins.target
        if t is not None and t <= ins.addr and t in index:
            body = instrs[index[t] : k + 1]
            loops.append((sum(map(_is_fma, body)), -(k - index[t]), index[t], k))
    loops = [lp for lp in loops if lp[0] > 0]
    if not loops:
        return None
    fma, _, lo, hi = max(loops)
    body = instrs[lo : hi + 1]
    # basic blocks of the loop body
    leaders = {lo}
    for k in range(lo, hi + 1):
        ins = instrs[k]
        if ins.target is not None or ins.base in ("EXIT", "RET", "BRK"):
            leaders.add(k + 1)
            if ins.target in index and lo <= index[ins.target] <= hi:
                leaders.add(index[ins.target])
    starts = sorted(x for x in leaders if lo <= x <= hi)
    blocks = {
        s: (s, (starts[i + 1] if i + 1 < len(starts) else hi + 1)) for i, s in enumerate(starts)
    }

    def succ(s):
        a, b = blocks[s]
        last = instrs[b - 1]
        out = []
        t = last.target
        if t is not None and t in index and lo <= index[t] <= hi and b - 1 != hi:
            out.append(index[t])
        ends = last.base in ("EXIT", "RET", "BRK") or (t is not None)
        if (not ends or not _unconditional(last)) and b <= hi:
            out.append(b)
        return out

    def cost(s):
        a, b = blocks[s]
        return b - a

    # A steady-state iteration runs the main FMA block and the next tile's global loads
    # and shared stores. With ``vector_loads``/``shared_stores`` (per iteration, as the
    # emulator trace measured them for the profiled case) the path must hold exactly
    # that many LDG.128/STS; otherwise at least one global load and one shared store,
    # when the loop has them.
    # Of those paths, the cheapest by instruction count: the fast (unmasked) path when
    # the fallbacks are longer.
    hot = max(blocks, key=lambda s: sum(map(_is_fma, instrs[blocks[s][0] : blocks[s][1]])))

    # LDGSTS (cp.async) is a global load and a shared store in one instruction
    def vec_loads(s):
        a, b = blocks[s]
        return sum(1 for i in instrs[a:b] if i.base in ("LDG", "LD", "LDGSTS") and ".128" in i.op)

    def stores(s):
        a, b = blocks[s]
        return sum(1 for i in instrs[a:b] if i.base in ("STS", "LDGSTS"))

    def feats(s):
        a, b = blocks[s]
        ops = {ins.base for ins in instrs[a:b]}
        f = 1 if s == hot else 0
        f |= 2 if ops & {"LDG", "LD", "LDGSTS"} else 0
        f |= 4 if ops & {"STS", "ST", "LDGSTS"} else 0
        return f

    def search(vector_loads, shared_stores):
        want = 0
        for s_ in blocks:
            want |= feats(s_)
        cap = None if vector_loads is None else int(vector_loads)
        scap = None if shared_stores is None else int(shared_stores)
        if cap is not None:
            want &= ~2  # the exact LDG.128 count replaces "some global load"
        if scap is not None:
            want &= ~4

        def step(state, blk):
            mask, nv, ns = state
            nv = min(nv + vec_loads(blk), cap + 1) if cap is not None else 0
            ns = min(ns + stores(blk), scap + 1) if scap is not None else 0
            return (mask | feats(blk), nv, ns)

        last_block = max(s for s in blocks if s <= hi)
        src = (lo, *step((0, 0, 0), lo))
        dist = {src: cost(lo)}
        prev: dict = {}
        heap = [(dist[src], src)]
        found = None
        while heap:
            d, node = heapq.heappop(heap)
            if d > dist.get(node, 1 << 60):
                continue
            blk, mask, nv, ns = node
            if (
                blk == last_block
                and mask & want == want
                and (cap is None or nv == cap)
                and (scap is None or ns == scap)
            ):
                found = node
                break
            for nb in succ(blk):
                nn = (nb, *step((mask, nv, ns), nb))
                nd = d + cost(nb)
                if nd < dist.get(nn, 1 << 60):
                    dist[nn], prev[nn] = nd, node
                    heapq.heappush(heap, (nd, nn))
        return found, prev

    # the measured counts may not fit any path (e.g. the compiler merged stores): relax
    found, prev = None, {}
    for vl, ss in ((vector_loads, shared_stores), (vector_loads, None), (None, None)):
        found, prev = search(vl, ss)
        if found is not None:
            break
    rule = f"LDG.128={vl}, STS={ss}" if vl is not None else "some LDG and STS"
    if found is None:  # unusual shape: fall back to the static loop
        path = list(blocks)
        rule = "static loop (no path found)"
    else:
        path = [found]
        while path[-1] in prev:
            path.append(prev[path[-1]])
        path = [node[0] for node in path[::-1]]
    counts: dict[str, int] = {}
    n = 0
    for s in path:
        for ins in instrs[blocks[s][0] : blocks[s][1]]:
            counts[ins.base] = counts.get(ins.base, 0) + 1
            n += 1
    path_fma = sum(v for k, v in counts.items() if k in FMA_OPS)
    return HotLoop(
        start=instrs[lo].addr,
        end=instrs[hi].addr,
        static_instructions=len(body),
        static_fma=fma,
        path_instructions=n,
        path_fma=path_fma,
        counts=counts,
        rule=rule,
    )


@dataclass
class KernelSass:
    """Compiled facts about one entry point for one architecture."""

    kernel: str
    file: str
    arch: int
    compiler: str  # the one whose ptxas report gives registers, spills, shared memory
    sass_compiler: str  # the one whose SASS gives the hot loop
    registers: int
    smem: int
    stack: int
    spill_stores: int
    spill_loads: int
    instructions: int
    loop: HotLoop | None

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


def kernel_sass(
    kernel: str,
    arch: int = 90,
    file: str | None = None,
    vector_loads: int | None = None,
    shared_stores: int | None = None,
) -> KernelSass:
    """Registers, spills, shared memory and the hot loop of ``kernel`` (a name from
    ``gpugrad.backend.kernels.list()``) compiled for ``sm_<arch>``."""
    from gpugrad.backend import kernels

    if file is None:
        info = kernels._TABLE.get(kernel)
        if info is None:
            raise KeyError(f"no kernel named {kernel!r}; see gpugrad.backend.kernels.list()")
        file = info.file
    cubin, log, tool = compile_cubin(file, arch)
    res = parse_ptxas(log).get(kernel)
    try:
        funcs = disassemble(cubin)
        sass_tool = tool
    except RuntimeError as exc:
        # why: the CUDA 13 cuobjdump does not read CUDA 12 (NVRTC 12.x) cubins; the loop
        # structure then comes from nvcc's cubin, the resources still from NVRTC's
        if "does not contain device code" not in str(exc) or tool == "nvcc":
            raise
        cubin2, _, sass_tool = compile_cubin(file, arch, tool="nvcc")
        funcs = disassemble(cubin2)
    if kernel not in funcs or res is None:
        raise KeyError(f"{kernel} is not in the cubin of {file} (functions: {sorted(funcs)})")
    instrs = funcs[kernel]
    return KernelSass(
        kernel=kernel,
        file=file,
        arch=arch,
        compiler=tool,
        sass_compiler=sass_tool,
        instructions=sum(1 for i in instrs if i.base != "NOP"),
        loop=hot_loop(instrs, vector_loads, shared_stores),
        **res,
    )
