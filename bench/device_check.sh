#!/usr/bin/env bash
# bench/device_check.sh: everything a GPU session needs to check, in one call, in under
# 6 minutes on an H100/H200 (issues #15 and #17).
#
#   1. dependencies: gpugrad runs from this checkout (PYTHONPATH); if numpy, pytest or
#      CuPy do not import, `pip install -e ".[cuda12]" pytest hypothesis scipy` is
#      tried (a machine without a package index makes it fail: tolerated when the
#      imports work anyway). A CUDA build of PyTorch (for the cuBLAS-TF32 / cuDNN
#      rows) is installed in the background into .cache/device-check/torch when the
#      one importable has no CUDA; the benchmark runs without those rows otherwise.
#   2. what CI runs on cuda-sim (tests/cudasim_files.txt, spread over up to 8 cores
#      with pytest-xdist; without it the quicker DEVICE_TESTS of tests/test_cudasim.py:
#      ops and gradients, nn, layers, the faces, optimizers, checkpointing) on the
#      real `cuda` device (GPUGRAD_DEVICE=cuda), every failure listed.
#   3. python bench/gpu.py --quick: results in bench/results/gpu-<device>.json + .png
#      (a dated name if that file exists), with the test summary in its metadata.
#
# Each phase has a time limit so the script ends (and writes what it has) in time:
# GPUGRAD_CHECK_SECONDS (default 330) is the total. Output is also logged to
# bench/results/device-check-<date>.log. Exit status 0 when the tests passed and the
# benchmark wrote its results.
#
# Rehearsal without a GPU: GPUGRAD_CHECK_DEVICE=cuda-sim runs the same steps on the
# simulated device (bench/gpu.py --simulate); GPUGRAD_CHECK_TESTS="tests/x.py ..."
# replaces the test list.
#
#   bash bench/device_check.sh            # PYTHON=/path/to/python to choose the interpreter
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
TOTAL=${GPUGRAD_CHECK_SECONDS:-330}
DEVICE=${GPUGRAD_CHECK_DEVICE:-cuda}
BENCH_ARGS=(--quick)
RESULTS=bench/results
if [ "$DEVICE" = cuda-sim ]; then  # a rehearsal: nothing lands in bench/results
    BENCH_ARGS=(--quick --simulate --max-gemm 32 --repeat 1)
    RESULTS=.cache/device-check/results
fi
elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((TOTAL - $(elapsed))); }
say() { echo "== [$(elapsed)s] $*"; }
mkdir -p "$RESULTS" .cache/device-check
LOG=$RESULTS/device-check-$(date +%Y%m%d-%H%M%S).log
exec > >(tee -a "$LOG") 2>&1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for candidate in .venv/bin/python python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
    done
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$ROOT/.cache/device-check/cupy}
export GPUGRAD_CACHE_DIR=${GPUGRAD_CACHE_DIR:-$ROOT/.cache/device-check/gpugrad}
say "python: $PY ($("$PY" --version 2>&1)); log: $LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader

# ---------------------------------------------------------------- 1. dependencies
if ! "$PY" -c "import numpy, pytest, cupy" >/dev/null 2>&1; then
    say "installing gpugrad's cuda12 extra and the test tools"
    timeout 150 "$PY" -m pip install -q -e ".[cuda12]" pytest pytest-xdist hypothesis scipy ||
        say "pip install failed or timed out (no package index?); going on with what imports"
fi
for mod in hypothesis scipy xdist; do
    "$PY" -c "import $mod" >/dev/null 2>&1 ||
        timeout 60 "$PY" -m pip install -q "$mod" >/dev/null 2>&1 ||
        say "$mod is not installed (some tests skip or fail without it)"
done
if [ "$DEVICE" = cuda ] &&
    ! "$PY" -c "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0" 2>/dev/null; then
    say "no usable CuPy/GPU here:"
    "$PY" -c "import gpugrad.backend as b; b.set_device('cuda')" 2>&1 | tail -1
    exit 1
fi
TORCH_DIR=$ROOT/.cache/device-check/torch
TORCH_PID=
if [ "$DEVICE" = cuda ] &&
    ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    if [ -d "$TORCH_DIR/torch" ]; then
        say "using the CUDA PyTorch in $TORCH_DIR"
    else
        say "installing a CUDA build of PyTorch in the background into $TORCH_DIR"
        (timeout 200 "$PY" -m pip install -q --target "$TORCH_DIR.part" torch \
            >"$TORCH_DIR.log" 2>&1 && mv "$TORCH_DIR.part" "$TORCH_DIR") &
        TORCH_PID=$!
    fi
fi

# ---------------------------------------------------------------- 2. tests on cuda
# the whole list CI runs on cuda-sim when pytest-xdist can spread it over the cores;
# else the quicker DEVICE_TESTS set in one process
PARALLEL=()
if "$PY" -c "import xdist" >/dev/null 2>&1; then
    PARALLEL=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))" --dist loadfile)
    DEFAULT_TESTS=$(grep -v emu_device tests/cudasim_files.txt | tr '\n' ' ')
else
    DEFAULT_TESTS=$("$PY" -c "import sys; sys.path.insert(0, 'tests'); import test_cudasim as t; print(' '.join(t.DEVICE_TESTS))")
fi
TESTS=${GPUGRAD_CHECK_TESTS:-$DEFAULT_TESTS}
T_TESTS=$(($(left) - 150))
[ "$T_TESTS" -gt 200 ] && T_TESTS=200
say "device tests on $DEVICE (${T_TESTS}s at most): $TESTS"
GPUGRAD_DEVICE=$DEVICE timeout "$T_TESTS" "$PY" -m pytest -o addopts= -q -p no:cacheprovider \
    "${PARALLEL[@]}" -rfE --maxfail=100 $TESTS | tee .cache/device-check/tests.txt
TESTS_RC=${PIPESTATUS[0]}
SUMMARY=$(grep -E "passed|failed|error" .cache/device-check/tests.txt | tail -1)
[ "$TESTS_RC" = 124 ] && SUMMARY="timed out after ${T_TESTS}s: $SUMMARY"
say "device tests: exit $TESTS_RC: $SUMMARY"

# ---------------------------------------------------------------- 3. benchmark
if [ -n "$TORCH_PID" ]; then
    # wait for the PyTorch install only while the benchmark keeps enough time
    while kill -0 "$TORCH_PID" 2>/dev/null && [ "$(left)" -gt 150 ]; do sleep 2; done
    if [ -d "$TORCH_DIR/torch" ]; then
        export PYTHONPATH="$PYTHONPATH:$TORCH_DIR"
    else
        say "PyTorch is not ready (see $TORCH_DIR.log): no cuDNN/TF32 vendor rows"
    fi
fi
T_BENCH=$(($(left) - 10))
say "bench/gpu.py --quick (${T_BENCH}s at most)"
GPUGRAD_DEVICE_TESTS="$SUMMARY" timeout "$T_BENCH" "$PY" bench/gpu.py "${BENCH_ARGS[@]}" \
    --time-budget $((T_BENCH - 60)) --out "$RESULTS"
BENCH_RC=$?
[ -n "$TORCH_PID" ] && kill "$TORCH_PID" 2>/dev/null
say "done: tests exit $TESTS_RC, benchmark exit $BENCH_RC; log $LOG"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
