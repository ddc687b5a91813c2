"""Every kernels/*.cu compiles with NVRTC and nvcc for sm_80 and sm_90 without spills."""

import importlib.util
import sys

import pytest

from gpugrad.backend import kernel_dir


def _load_checker():
    path = kernel_dir() / "check_compile.py"
    spec = importlib.util.spec_from_file_location("gpugrad_check_compile", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


check_compile = _load_checker()


@pytest.mark.parametrize("tool", check_compile.TOOLS)
def test_kernels_compile_without_spills(tool):
    if tool == "nvrtc" and check_compile.nvrtc_module() is None:
        pytest.skip("NVRTC is not available (pip install nvidia-cuda-nvrtc-cu12 cupy-cuda12x)")
    if tool == "nvcc" and check_compile.nvcc_path() is None:
        pytest.skip("nvcc is not installed (CUDA toolkit) and $NVCC is not set")
    report = check_compile.check(tools=(tool,))
    assert not report.errors, "\n\n".join(report.errors)
    assert report.rows, "no kernels were compiled"
    assert not report.spilled, "register spills:\n" + report.table()
    kernels = {row.kernel for row in report.rows}
    for name in ("matmul_fwd_f32", "conv2d_fwd_f32", "relu_fwd_f32", "lstm_fwd_f32"):
        assert name in kernels
    archs = {row.arch for row in report.rows}
    assert archs == {f"sm_{a}" for a in check_compile.ARCHS}


def test_parse_ptxas_reads_spills():
    log = (
        "ptxas info    : Compiling entry function 'k_f32' for 'sm_90'\n"
        "ptxas info    : Function properties for k_f32\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem\n"
    )
    (row,) = check_compile.parse_ptxas(log, "k.cu", "nvcc")
    assert (row.kernel, row.arch, row.registers, row.smem) == ("k_f32", "sm_90", 255, 1024)
    assert (row.stack, row.spill_stores, row.spill_loads, row.spills) == (8, 4, 12, 16)


def test_compile_cache_reuses_logs_until_a_source_or_header_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUGRAD_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "k.cu"
    header = tmp_path / "h.cuh"
    src.write_text('#include "h.cuh"\n')
    header.write_text("// v1\n")
    calls = []

    def run(path, arch):
        calls.append((path.name, arch))
        return True, f"log {len(calls)}"

    assert check_compile._cached(run, "tool", src, 90) == (True, "log 1")
    assert check_compile._cached(run, "tool", src, 90) == (True, "log 1")  # cached
    assert check_compile._cached(run, "tool", src, 80) == (True, "log 2")  # other arch
    assert check_compile._cached(run, "other tool", src, 90) == (True, "log 3")
    header.write_text("// v2\n")
    assert check_compile._cached(run, "tool", src, 90) == (True, "log 4")
    assert len(calls) == 4

    def failing(path, arch):
        calls.append("fail")
        return False, "error"

    src.write_text("broken\n")
    assert check_compile._cached(failing, "tool", src, 90) == (False, "error")
    assert check_compile._cached(failing, "tool", src, 90) == (False, "error")  # not cached
    assert calls.count("fail") == 2
