"""``python -m gpugrad info``: what gpugrad found on this machine.
``python -m gpugrad profile OP --shape ...``: a kernel's performance facts and model
without a GPU (see :mod:`gpugrad.backend.profile`).

Prints the version, the device chosen and why, the CuPy / CUDA runtime / driver /
NVRTC versions, the GPU's name and memory, the C++ compiler of the CUDA emulator,
and where compiled kernels are cached. Nothing is compiled or written (the cache
folders are only named).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys


def _try(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a report: say what failed, go on
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"unavailable ({type(exc).__name__}{': ' + first if first else ''})"


def _cuda_version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"


def _driver(v):
    return _cuda_version(v) if v else "none (no NVIDIA driver loaded)"


def _cupy_rows():
    try:
        import cupy
    except ImportError:
        return [("CuPy", "not installed (pip install 'gpugrad[cuda12]' for GPU support)")]
    except Exception as exc:  # noqa: BLE001
        return [("CuPy", f"failed to import ({type(exc).__name__}: {exc})")]
    rt = cupy.cuda.runtime
    rows = [
        ("CuPy", cupy.__version__),
        ("CUDA runtime", _try(lambda: _cuda_version(rt.runtimeGetVersion()))),
        ("CUDA driver", _try(lambda: _driver(rt.driverGetVersion()))),
        ("NVRTC", _try(lambda: ".".join(map(str, cupy.cuda.nvrtc.getVersion())))),
    ]
    count = _try(rt.getDeviceCount)
    if isinstance(count, int) and count > 0:
        for i in range(count):
            props = _try(lambda i=i: rt.getDeviceProperties(i))
            if isinstance(props, dict):
                name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
                mem = props["totalGlobalMem"] / 2**30
                cc = f"{props['major']}.{props['minor']}"
                rows.append((f"GPU {i}", f"{name}, {mem:.1f} GiB, compute capability {cc}"))
            else:
                rows.append((f"GPU {i}", props))
    else:
        rows.append(("GPUs", count if isinstance(count, str) else "none found"))
    cache = os.environ.get("CUPY_CACHE_DIR") or os.path.expanduser("~/.cupy/kernel_cache")
    rows.append(("CUDA kernel cache", f"{cache} (CuPy's NVRTC cache; CUPY_CACHE_DIR)"))
    return rows


def _compiler():
    from .backend import emu

    cxx = emu._cxx()
    path = shutil.which(cxx)
    if path is None:
        return f"{cxx!r} not found (the emu device needs g++; set GPUGRAD_EMU_CXX)"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        version = out.stdout.splitlines()[0] if out.stdout else "version unknown"
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"not runnable ({exc})"
    return f"{path}: {version}"


def info_rows():
    """The report as (name, value) rows."""
    import numpy

    import gpugrad as gg
    from gpugrad import backend

    rows = [
        ("gpugrad", f"{gg.__version__} ({os.path.dirname(gg.__file__)})"),
        ("Python", f"{platform.python_version()} on {platform.platform()}"),
        ("NumPy", numpy.__version__),
        ("device", f"{gg.device()}: {gg.device_reason()}"),
        ("GPUGRAD_DEVICE", os.environ.get("GPUGRAD_DEVICE", "(not set)")),
    ]
    rows += _cupy_rows()
    rows.append(("emulator compiler", _try(_compiler)))
    root = os.environ.get("GPUGRAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpugrad"
    )
    rows.append(("emulator cache", f"{os.path.join(root, 'emu')} (GPUGRAD_CACHE_DIR)"))
    rows.append(("kernel sources", _try(lambda: str(backend.kernel_dir()))))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gpugrad",
        description="gpugrad's command line. 'info' reports the version, the device "
        "chosen and why, the CUDA stack, the GPU and where kernels are cached.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="report what gpugrad found on this machine")
    prof = sub.add_parser(
        "profile",
        help="run one kernel launch under the emulator's profiler and model it on a GPU",
        description="Memory coalescing, shared-memory bank conflicts and divergence from an "
        "instrumented emulator run; registers, spills, occupancy and the hot loop's FMA share "
        "from the SASS; a roofline-style prediction for a named GPU next to the vendor figure. "
        "OP 'all' runs the kernel review's standard workloads.",
    )
    prof.add_argument(
        "op",
        help="matmul, conv2d_fwd, conv2d_bwd_data, conv2d_bwd_filter, relu_fwd, relu_bwd, "
        "lstm_fwd, lstm_bwd, all, or lstm-step (one LSTM training step: persistent "
        "recurrence + GEMMs vs cuDNN; --shape T B H inputs, default 100 64 512 512)",
    )
    prof.add_argument(
        "--shape",
        type=int,
        nargs="+",
        help="matmul: M N K; conv2d_*: N H W Cin Cout KH KW; relu_*: n; lstm_*: B H; "
        "lstm-step: T B H inputs",
    )
    prof.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    prof.add_argument(
        "--gpu",
        action="append",
        help="H100 SXM (default), H200, GH200, A100 SXM, L40S; repeat for several",
    )
    prof.add_argument("--arch", type=int, default=90, help="SM version of the SASS (default 90)")
    prof.add_argument("--tile", choices=("large", "mid", "small"), help="matmul tile")
    prof.add_argument("--trans-a", action="store_true", help="matmul: op(a) = a.T")
    prof.add_argument("--trans-b", action="store_true", help="matmul: op(b) = b.T")
    prof.add_argument(
        "--precision",
        choices=("fp32", "tf32", "3xtf32"),
        default="fp32",
        help="matmul, conv2d_*: fp32 (FMA kernels) or the tensor-core kernel in tf32 or 3xtf32",
    )
    prof.add_argument("--stride", type=int, default=1, help="conv2d stride")
    prof.add_argument("--pad", type=int, help="conv2d padding (default KH // 2)")
    opts = parser.parse_args(argv)
    if opts.command == "profile":
        from .backend import profile

        return profile.main(opts)
    if opts.command != "info":
        parser.print_help()
        return 0
    rows = info_rows()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
