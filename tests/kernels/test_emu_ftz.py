"""The emulator flushes float32 denormals as CuPy's ``-ftz=true`` does on a GPU (issue 15,
item 8): arithmetic and compares see a denormal float32 input as zero and a denormal
result becomes zero; float64 keeps its denormals (the GPU's -ftz is float32 only);
copies keep the bits; the Python thread's own float arithmetic is untouched afterwards.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

emu = pytest.importorskip("gpugrad.backend.emu")

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64"),
    reason="the emulator flushes denormals through x86-64 MXCSR only",
)

SOURCE = r"""
extern "C" __global__ void mul_f32(const float* a, const float* b, float* c, int* gt0, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        c[i] = a[i] * b[i];
        gt0[i] = a[i] > 0.0f;
    }
}
extern "C" __global__ void copy_f32(const float* a, float* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i];
}
extern "C" __global__ void mul_f64(const double* a, const double* b, double* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] * b[i];
}
"""

TINY32 = np.float32(1e-40)  # float32 denormal (smallest normal is 1.2e-38)
TINY64 = 1e-310  # float64 denormal


def _mul32(module, a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    c = np.full_like(a, np.nan)
    gt0 = np.full(a.shape, -1, np.int32)
    module.get_function("mul_f32")((1,), (32,), (a, b, c, gt0, np.int32(a.size)))
    return c, gt0


def test_float32_denormals_are_flushed_like_ftz_true():
    module = emu.EmuModule(SOURCE, name="ftz_probe.cu")
    assert module.ftz and module.get_function("mul_f32").ftz
    c, gt0 = _mul32(module, [TINY32, 1e-20, 2.0, -TINY32], [1.0, 1e-20, 3.0, 1.0])
    # denormal input -> 0; 1e-20 * 1e-20 = 1e-40 (denormal result) -> 0; normal unchanged
    np.testing.assert_array_equal(c, [0.0, 0.0, 6.0, 0.0])
    assert np.signbit(c[3])  # flushed to a zero of the same sign
    np.testing.assert_array_equal(gt0, [0, 1, 1, 0])  # a denormal compares as zero
    # a copy moves the bits unchanged, on a GPU too
    out = np.zeros(1, np.float32)
    module.get_function("copy_f32")((1,), (32,), (np.array([TINY32]), out, np.int32(1)))
    assert out[0] == TINY32
    # the host's own arithmetic is not flushed after the launch
    assert np.float32(TINY32) * np.float32(1.0) == TINY32


def test_float64_keeps_denormals():
    module = emu.EmuModule(SOURCE, name="ftz_probe.cu")
    assert not module.get_function("mul_f64").ftz
    a = np.array([TINY64, 1e-160]), np.array([1.0, 1e-160])
    c = np.zeros(2)
    module.get_function("mul_f64")((1,), (32,), (*a, c, np.int32(2)))
    np.testing.assert_array_equal(c, [TINY64, 1e-160 * 1e-160])
    assert 0 < c[1] < 2.3e-308  # a denormal result survives


def test_ftz_false_option_keeps_float32_denormals():
    module = emu.EmuModule(SOURCE, name="ftz_probe.cu", options=("-ftz=false",))
    assert not module.get_function("mul_f32").ftz
    c, gt0 = _mul32(module, [TINY32, 1e-20], [1.0, 1e-20])
    assert c[0] == TINY32 and c[1] > 0
    np.testing.assert_array_equal(gt0, [1, 1])
