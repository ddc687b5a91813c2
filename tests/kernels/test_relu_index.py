"""relu.cu's grid-stride loop uses 64-bit indices (issue 15, item 5).

With a 32-bit ``i += stride`` the index wrapped for n within one stride of 2^31 - 1
and the loop stored past the end of the array. Allocating 2^31 elements is out of
reach of a unit test, so the loop helper itself (``gg_relu::grid_stride``, the one the
kernels run) is driven under the emulator with the production launch plan for such an
n and a start index just below 2^31: every index of [begin, n) must be visited exactly
once and none at or past n.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpugrad import backend

emu = pytest.importorskip("gpugrad.backend.emu")
kernels = pytest.importorskip("gpugrad.backend.kernels")

PROBE = r"""
#include "relu.cu"

extern "C" __global__ void relu_index_probe(long long begin, long long n, int* hits,
                                            long long cap) {
    gg_relu::grid_stride(begin, n, [&](long long i) {
        const long long k = i - begin;
        atomicAdd(&hits[(k >= 0 && k < cap) ? k : cap], 1);
    });
}
"""

INT32_MAX = 2**31 - 1


@pytest.fixture(scope="module")
def probe():
    module = emu.EmuModule(PROBE, name=str(backend.kernel_dir() / "relu_index_probe.cu"))
    return module.get_function("relu_index_probe")


def test_grid_stride_visits_each_index_once_across_2_31(probe):
    n = INT32_MAX + 4096  # crosses 2^31: a 32-bit index would wrap inside this range
    plan = kernels.plan_elementwise("relu_fwd_f32", n, kernels.EMU_NUM_SMS)
    stride = plan.grid[0] * plan.block[0]
    assert stride == 1056 * 256  # the production plan: 8 waves of 132 SMs
    begin = INT32_MAX - stride - 4096  # threads make 1 or 2 steps, many across 2^31
    cap = n - begin
    hits = np.zeros(cap + 1, np.int32)
    probe(plan.grid, plan.block, (np.int64(begin), np.int64(n), hits, np.int64(cap)))
    assert hits[cap] == 0, f"{hits[cap]} visits outside [begin, n)"
    assert hits[:cap].min() == 1 and hits[:cap].max() == 1


def test_grid_stride_empty_and_single_block(probe):
    hits = np.zeros(11, np.int32)
    probe((1, 1, 1), (32, 1, 1), (np.int64(5), np.int64(5), hits, np.int64(10)))
    assert not hits.any()
    probe((1, 1, 1), (4, 1, 1), (np.int64(0), np.int64(10), hits, np.int64(10)))
    np.testing.assert_array_equal(hits, [1] * 10 + [0])


def test_relu_host_path_has_no_32_bit_cap(monkeypatch):
    """The other kernels refuse more than INT32_MAX elements; relu passes a 64-bit count
    (the emulator checks the argument is a np.int64 for the long long parameter), so
    it takes arrays of 2^31 elements or more. Shown with the cap lowered to 1000."""
    previous = backend.device()
    backend.set_device("emu")
    try:
        monkeypatch.setattr(kernels, "INT32_MAX", 1000)
        a = np.ones((40, 40), np.float32)
        with pytest.raises(ValueError, match="32-bit indices"):
            kernels.matmul(a, a)
        x = np.linspace(-3, 3, 4099).astype(np.float32)
        np.testing.assert_array_equal(kernels.relu_fwd(x), np.maximum(x, 0))
        dy = np.full_like(x, 2.0)
        np.testing.assert_array_equal(kernels.relu_bwd(dy, x), np.where(x > 0, dy, 0))
    finally:
        backend.set_device(previous)
