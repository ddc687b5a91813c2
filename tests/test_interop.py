"""Interop and display: DLPack both ways with PyTorch and NumPy (zero-copy on the
host), __cuda_array_interface__ only on cuda, torch.tensor(x) and f"{y:.3f}" on
scalars, one-line scalars and natural 1-D display."""

import numpy as np
import pytest

import gpugrad as gg
from tests._torch import torch


def _ptr(a):
    return a.__array_interface__["data"][0]


def _torch_sees_the_device():
    """Whether a device array can go to PyTorch: always off the cuda path; on it, only
    with a CUDA build of PyTorch and a GPU (not on cuda-sim, not with a CPU build)."""
    return not gg.backend.is_cuda() or (gg.device() == "cuda" and torch.cuda.is_available())


def test_numpy_dlpack_both_ways_is_zero_copy():
    a = np.arange(4.0)
    x = gg.from_dlpack(a)
    assert x.dtype == np.float64 and x.shape == (4,)
    if gg.backend.is_cuda():
        # host memory onto the GPU: one copy (CuPy's from_dlpack refuses host memory)
        assert gg.backend.is_device_array(x._data) and x.__dlpack_device__()[0] == 2
        x[0] = 9.0
        assert a[0] == 0.0 and x.numpy().tolist() == [9.0, 1.0, 2.0, 3.0]
        return
    assert _ptr(x._data) == _ptr(a)
    b = np.from_dlpack(x)
    assert np.shares_memory(a, b)
    assert x.__dlpack_device__() == a.__dlpack_device__()


def test_torch_dlpack_both_ways_is_zero_copy():
    t = torch.arange(6.0, dtype=torch.float32).reshape(2, 3)
    x = gg.from_dlpack(t)
    assert x.shape == (2, 3) and x.dtype == np.float32
    x[0, 0] = 7.0  # shares memory, as torch.from_dlpack does (a copy onto the GPU on cuda)
    assert t[0, 0].item() == (0.0 if gg.backend.is_cuda() else 7.0)
    assert x.numpy()[0].tolist() == [7.0, 1.0, 2.0]
    if not _torch_sees_the_device():
        return
    y = gg.dlarray(np.linspace(0, 1, 5))
    if gg.backend.is_cuda():
        u = torch.from_dlpack(y)
        assert u.is_cuda and u.data_ptr() == y._data.data.ptr
        return
    u = torch.from_dlpack(y)
    assert u.dtype == torch.float64 and u.data_ptr() == _ptr(y._data)
    np.testing.assert_array_equal(u.numpy(), y.numpy())
    # a traced value exports its data
    g = gg.dlfeval(lambda v: torch.from_dlpack(v * 2.0).sum().item(), gg.dlarray([1.0, 2.0]))
    assert g == 6.0


def test_from_dlpack_keeps_floats_and_converts_integers_like_dlarray():
    assert gg.from_dlpack(torch.ones(2, dtype=torch.float16)).dtype == np.float16
    assert gg.from_dlpack(torch.tensor([True, False])).dtype == np.bool_
    assert gg.from_dlpack(torch.arange(3)).dtype == np.float64
    assert gg.dims(gg.from_dlpack(np.ones((2, 3)), "CB")) == "CB"
    with pytest.raises(TypeError, match="from_dlpack: expected an object with __dlpack__"):
        gg.from_dlpack([1.0, 2.0])


def test_the_gradient_flows_after_from_dlpack():
    x = gg.from_dlpack(torch.tensor([1.0, 2.0], dtype=torch.float64))
    g = gg.gradient(lambda v: gg.sum(v**3))(x)
    np.testing.assert_allclose(g.numpy(), [3.0, 12.0])


def test_cuda_array_interface_only_on_cuda():
    x = gg.ones(3)
    if gg.backend.is_cuda():  # cuda and cuda-sim
        assert x.__cuda_array_interface__["shape"] == (3,)
    else:
        assert not hasattr(x, "__cuda_array_interface__")
        with pytest.raises(AttributeError, match="data is on the host"):
            x.__cuda_array_interface__  # noqa: B018


def test_scalars_work_with_torch_tensor_and_format():
    y = gg.dlarray(104.0)
    assert f"{y:.3f}" == "104.000"
    assert f"{gg.dlarray([2.5]):.1f}" == "2.5"
    assert f"{gg.sum(gg.dlarray([1.0, 2.0])):g}" == "3"
    assert f"{gg.dlarray([1.0, 2.0])}" == str(gg.dlarray([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"unsupported format string '.2f' for a dlarray of shape"):
        f"{gg.dlarray([1.0, 2.0]):.2f}"
    if _torch_sees_the_device():  # torch.tensor reads __cuda_array_interface__ on cuda
        t = torch.tensor(y)
        assert t.dtype == torch.float64 and t.item() == 104.0
        assert torch.tensor(gg.dlarray([1.0, 2.0])).tolist() == [1.0, 2.0]


def test_scalars_print_on_one_line_and_vectors_read_naturally():
    dev = "" if gg.device() == "cpu" else f", device={gg.device()!r}"  # named when not cpu
    assert repr(gg.dlarray(104.0)) == f"dlarray(104.0{dev})"
    assert str(gg.dlarray(104.0)) == f"dlarray(104.0{dev})"
    assert repr(gg.dlarray(np.float32(1.5))) == f"dlarray(1.5, dtype=float32{dev})"
    assert repr(gg.dlarray([1.0, 2.0, 3.0])) == f"dlarray([1., 2., 3.]{dev})"
    assert repr(gg.dlarray([1.0, 2.0], "C")) == f"dlarray([1., 2.], fmt='C'{dev})"
    long = repr(gg.dlarray(np.arange(40.0))).splitlines()  # wrapped as NumPy wraps
    assert long[0].startswith("dlarray([ 0.,  1.,") and long[-1].endswith(f"39.]{dev})")
    assert all(line.startswith(" " * len("dlarray([")) for line in long[1:])
    assert repr(gg.dlarray([True, False])) == f"dlarray([ True, False], dtype=bool{dev})"
    traced = gg.dlfeval(lambda v: repr(v * 2.0), gg.dlarray(1.0))
    assert traced == f"dlarray(2.0{dev}, traced)"
    # 2-D keeps the MATLAB-like header
    assert repr(gg.dlarray(np.ones((2, 3)))).startswith("2x3 dlarray (float64, ")
