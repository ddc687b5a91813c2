"""Compile every ``kernels/*.cu`` and report registers, shared memory and spills.

Each file is compiled

* with NVRTC (through ``cupy_backends.cuda.libs.nvrtc``, the compiler CuPy uses at
  run time, with CuPy's ``-ftz=true``) for sm_80 and sm_90, and
* with ``nvcc -cubin -Xptxas -v`` for sm_80 and sm_90,

and the ptxas resource report of every entry point is printed as a table. The exit
status is non-zero on any compile error or any register spill, so this runs in CI
(``python kernels/check_compile.py``) and from pytest (``check()``).

>>> import check_compile                               # doctest: +SKIP
>>> report = check_compile.check()                     # doctest: +SKIP
>>> report.ok, len(report.rows) > 0                    # doctest: +SKIP
(True, True)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
ARCHS = (80, 90)
TOOLS = ("nvrtc", "nvcc")
NVRTC_OPTIONS = ("-std=c++17", "-ftz=true", "-Xptxas=-v")

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


@dataclass
class Row:
    """ptxas resource usage of one entry point for one compiler and architecture."""

    file: str
    kernel: str
    tool: str
    arch: str
    registers: int = 0
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


@dataclass
class Report:
    """Everything ``check`` found: one row per (file, kernel, tool, arch), compile errors,
    and the tools that were not available."""

    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def spilled(self) -> list[Row]:
        return [r for r in self.rows if r.spills]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.spilled

    def table(self) -> str:
        """The rows as a fixed-width text table."""
        head = ("file", "kernel", "tool", "arch", "regs", "smem B", "stack B", "spill st/ld B")
        body = [
            (
                r.file,
                r.kernel,
                r.tool,
                r.arch,
                str(r.registers),
                str(r.smem),
                str(r.stack),
                f"{r.spill_stores}/{r.spill_loads}",
            )
            for r in sorted(self.rows, key=lambda r: (r.file, r.kernel, r.tool, r.arch))
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def parse_ptxas(log: str, file: str, tool: str) -> list[Row]:
    """Rows from a ``ptxas -v`` log (the format nvcc and NVRTC both print)."""
    rows: list[Row] = []
    current: Row | None = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = Row(file, m.group(1), tool, m.group(2))
            rows.append(current)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            current.stack, current.spill_stores, current.spill_loads = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            current.registers = int(m.group(1))
            current.smem = int(m.group(2) or 0)
    return rows


def nvrtc_module():
    """CuPy's NVRTC binding, or None when NVRTC cannot be loaded here."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:
        return None


def nvcc_path() -> str | None:
    """The nvcc executable (``$NVCC``, PATH, or ``/usr/local/cuda/bin``), or None."""
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def compile_nvrtc(nvrtc, path: Path, arch: int) -> tuple[bool, str]:
    """Compile one file to a cubin with NVRTC; returns (success, log)."""
    prog = nvrtc.createProgram(path.read_text(), path.name, [], [])
    try:
        try:
            includes = [f"--include-path={path.resolve().parent}", f"--include-path={KERNEL_DIR}"]
            nvrtc.compileProgram(prog, [f"-arch=sm_{arch}", *NVRTC_OPTIONS, *includes])
            ok = True
        except nvrtc.NVRTCError:
            ok = False
        log = nvrtc.getProgramLog(prog)
        if ok:
            nvrtc.getCUBIN(prog)
        return ok, log
    finally:
        nvrtc.destroyProgram(prog)


def compile_nvcc(nvcc: str, path: Path, arch: int) -> tuple[bool, str]:
    """Compile one file to a cubin with ``nvcc -Xptxas -v``; returns (success, log)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            nvcc,
            f"-arch=sm_{arch}",
            "-cubin",
            "-std=c++17",
            "-ftz=true",
            "-Xptxas",
            "-v",
            f"-I{KERNEL_DIR}",
            "-o",
            os.path.join(tmp, "out.cubin"),
            str(path),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return proc.returncode == 0, proc.stdout + proc.stderr


def _sass():
    """``gpugrad.backend.sass`` and the kernel folder it compiles from, when gpugrad is
    importable; else None (this script also runs on its own)."""
    try:
        from gpugrad.backend import kernel_dir, sass

        return sass, Path(kernel_dir()).resolve()
    except Exception:  # noqa: BLE001 - gpugrad absent or broken: compile here
        return None


def compile_shared(sass, tool: str, path: Path, arch: int) -> tuple[bool, str]:
    """Compile through ``sass.compile_cubin`` (same compiler, options and sources), so the
    cubin and log land in gpugrad's cache and the SASS/structure tests and the profiler
    reuse this compile instead of repeating it; returns (success, log)."""
    try:
        _, log, _ = sass.compile_cubin(path.name, arch, tool=tool)
    except RuntimeError as exc:
        return False, str(exc)
    return True, log


def cache_dir() -> Path:
    """Where successful compile logs are kept (``$GPUGRAD_CACHE_DIR/check_compile``)."""
    root = os.environ.get("GPUGRAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpugrad"
    )
    return Path(root) / "check_compile"


def _cached(run, tool_id: str, path: Path, arch: int):
    """``run(path, arch)``, or the log of an earlier successful compile of the same
    source (the .cu file and every header beside it), tool version and options."""
    h = hashlib.sha256()
    for part in (tool_id, str(arch), path.name, *NVRTC_OPTIONS):
        h.update(part.encode() + b"\0")
    h.update(path.read_bytes())
    for header in sorted(path.resolve().parent.glob("*.cuh")) + sorted(KERNEL_DIR.glob("*.cuh")):
        h.update(header.name.encode() + b"\0" + header.read_bytes())
    target = cache_dir() / f"{path.stem}-sm{arch}-{h.hexdigest()[:24]}.log"
    if target.is_file():
        return True, target.read_text()
    ok, log = run(path, arch)
    if ok:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(log)
        os.replace(tmp, target)
    return ok, log


def _workers() -> int:
    """Concurrent compiles: the usable cores, at most 4 (each compile of matmul.cu holds
    its own compiler's memory); ``$GPUGRAD_COMPILE_JOBS`` overrides."""
    env = os.environ.get("GPUGRAD_COMPILE_JOBS")
    if env:
        return max(1, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def check(files=None, archs=ARCHS, tools=TOOLS, cache=True) -> Report:
    """Compile ``files`` (default: every ``*.cu`` beside this script) with each tool and
    architecture; a tool that is absent is listed in ``Report.missing``. With ``cache``
    a successful compile of unchanged sources is not repeated: files of gpugrad's kernel
    folder go through ``gpugrad.backend.sass.compile_cubin`` when gpugrad is importable
    (its cubin cache, shared with the SASS tests and the profiler), other files keep
    their logs in :func:`cache_dir`, keyed by a hash of the sources, tool version and
    options."""
    paths = [Path(f) for f in files] if files else sorted(KERNEL_DIR.glob("*.cu"))
    report = Report()
    compilers = {}
    tool_ids: dict[str, str] = {}
    if "nvrtc" in tools:
        nvrtc = nvrtc_module()
        if nvrtc is None:
            report.missing.append("nvrtc (pip install nvidia-cuda-nvrtc-cu12 cupy-cuda12x)")
        else:
            compilers["nvrtc"] = lambda p, a, n=nvrtc: compile_nvrtc(n, p, a)
            tool_ids["nvrtc"] = "nvrtc-" + ".".join(map(str, nvrtc.getVersion()))
    if "nvcc" in tools:
        nvcc = nvcc_path()
        if nvcc is None:
            report.missing.append("nvcc (install the CUDA toolkit or set $NVCC)")
        else:
            compilers["nvcc"] = lambda p, a, n=nvcc: compile_nvcc(n, p, a)
            version = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
            tool_ids["nvcc"] = nvcc + version.stdout
    shared = _sass() if cache else None

    def one(job):
        path, tool, arch = job
        run = compilers[tool]
        if shared is not None and path.resolve().parent == shared[1]:
            # why: one compile per (file, arch, compiler) per test run, shared
            # with gpugrad.backend.sass (test_kernel_structure, the profiler)
            return compile_shared(shared[0], tool, path, arch)
        if cache:
            return _cached(run, tool_ids[tool], path, arch)
        return run(path, arch)

    jobs = [(p, t, a) for p in paths for t in compilers for a in archs]
    # why threads: nvcc runs as a subprocess, so the compiles of a cold run use every
    # core (NVRTC programs are independent and NVRTC is thread-safe)
    with ThreadPoolExecutor(max(1, min(len(jobs), _workers()))) as pool:
        results = list(pool.map(one, jobs))
    for (path, tool, arch), (ok, log) in zip(jobs, results):
        if not ok:
            report.errors.append(f"{tool} sm_{arch} {path.name}:\n{log.strip()}")
            continue
        rows = parse_ptxas(log, path.name, tool)
        if not rows and "__global__" in path.read_text():
            report.errors.append(f"{tool} sm_{arch} {path.name}: no ptxas report in log")
        report.rows.extend(rows)
    return report


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="the .cu files (default: kernels/*.cu)")
    parser.add_argument("--arch", type=int, action="append", help="SM version (default 80, 90)")
    parser.add_argument("--tool", choices=TOOLS, action="append", help="default: both")
    parser.add_argument("--no-cache", action="store_true", help="recompile everything")
    args = parser.parse_args(argv)
    report = check(
        args.files or None,
        tuple(args.arch or ARCHS),
        tuple(args.tool or TOOLS),
        cache=not args.no_cache,
    )
    if report.rows:
        print(report.table())
    for tool in report.missing:
        print(f"skipped: {tool} not available")
    for err in report.errors:
        print(f"\nCOMPILE ERROR {err}")
    for row in report.spilled:
        print(
            f"SPILL {row.file}:{row.kernel} ({row.tool} {row.arch}): "
            f"{row.spill_stores} B stored, {row.spill_loads} B loaded"
        )
    if len(report.missing) == len(TOOLS):
        print("no CUDA compiler found (neither NVRTC nor nvcc)")
        return 2
    status = "OK" if report.ok else "FAILED"
    print(
        f"\n{status}: {len(report.rows)} kernel builds, {len(report.errors)} errors, "
        f"{len(report.spilled)} with spills"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
