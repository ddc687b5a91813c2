"""The cuda branches of DLPack import and export and ``__cuda_array_interface__``,
checked without a GPU: a stand-in for CuPy that behaves as CuPy's documented
``from_dlpack`` does (it asks the producer for its data on CuPy's current stream and
refuses host memory), and producers that stand for GPU tensors. The names gpugrad
calls are checked against the installed CuPy as well."""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest

import gpugrad as gg
from gpugrad import backend, interop

CPU, CUDA, CUDA_HOST, CUDA_MANAGED = 1, 2, 3, 13


class GpuTensor:
    """A producer holding "device memory" (a NumPy array stands for it) on GPU ``dev``.
    A host reader cannot read it; with ``host_copy`` it honours DLPack 1.0's
    ``dl_device=(kDLCPU, 0)`` request by handing out a host copy (CuPy >= 14, PyTorch)."""

    def __init__(self, data, dev=0, kind=CUDA, host_copy=True, get=False):
        self.data, self.dev, self.kind, self.host_copy = np.asarray(data), dev, kind, host_copy
        self.requests = []
        if get:
            self.get = lambda: np.array(self.data)  # cupy.ndarray.get()

    def __dlpack_device__(self):
        return (self.kind, self.dev)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self.requests.append({"stream": stream, "dl_device": dl_device, "copy": copy})
        if dl_device is None or tuple(dl_device) == (self.kind, self.dev):
            return "a capsule of GPU memory"  # what a GPU consumer (CuPy) takes
        if dl_device[0] == CPU and self.host_copy:
            return np.array(self.data).__dlpack__()
        raise BufferError("the data is in GPU memory")


class DeviceArray:
    """What the CuPy stand-in returns: a view of a producer's memory on a device."""

    def __init__(self, data, device_id):
        self.data, self.device = data, types.SimpleNamespace(id=device_id)

    def copy(self):  # cupy.ndarray.copy(): a copy on the current device
        return DeviceArray(np.array(self.data), FakeCupy.current)


class FakeCupy:
    """cupy.from_dlpack as CuPy 14 implements it: GPU memory (kDLCUDA, kDLCUDAManaged)
    zero-copy, the producer asked on CuPy's current stream; host memory refused."""

    current = 0
    STREAM = 7

    def __init__(self):
        self.calls = []
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=self.device))

    def device(self):
        return FakeCupy.current

    def from_dlpack(self, obj):
        self.calls.append(("from_dlpack", obj))
        kind, dev = obj.__dlpack_device__()
        if kind not in (CUDA, CUDA_MANAGED):
            raise TypeError("CPU arrays cannot be directly imported to CuPy")
        obj.__dlpack__(stream=self.STREAM, max_version=(1, 0), copy=None)
        return DeviceArray(obj.data, dev)

    def asarray(self, a):
        self.calls.append(("asarray", a))
        return DeviceArray(np.array(a), FakeCupy.current)


@pytest.fixture
def cp():
    FakeCupy.current = 0
    return FakeCupy()


def test_on_cuda_a_gpu_tensor_is_imported_without_a_copy_on_cupys_stream(cp):
    t = GpuTensor([1.0, 2.0])
    raw = interop._import(t, "cuda", cp)
    assert raw.data is t.data and raw.device.id == 0  # zero-copy
    assert cp.calls == [("from_dlpack", t)]
    assert t.requests == [{"stream": FakeCupy.STREAM, "dl_device": None, "copy": None}]
    managed = GpuTensor([3.0], kind=CUDA_MANAGED)
    assert interop._import(managed, "cuda", cp).data is managed.data


def test_on_cuda_host_memory_is_copied_once_as_cupy_advises(cp):
    a = np.arange(3.0)
    raw = interop._import(a, "cuda", cp)
    assert [name for name, _ in cp.calls] == ["asarray"]
    assert np.shares_memory(cp.calls[0][1], a)  # read in place on the host, then one copy
    assert not np.shares_memory(raw.data, a) and raw.data.tolist() == [0.0, 1.0, 2.0]
    pinned = GpuTensor([5.0], kind=CUDA_HOST)  # pinned host memory: a host reader reads it
    pinned.__dlpack__ = lambda **kw: np.array(pinned.data).__dlpack__()
    assert interop._import(pinned, "cuda", cp).data.tolist() == [5.0]


def test_on_cuda_a_tensor_on_another_gpu_is_copied_onto_the_active_one(cp):
    FakeCupy.current = 1
    t = GpuTensor([1.0, 2.0], dev=0)
    raw = interop._import(t, "cuda", cp)
    assert raw.device.id == 1 and raw.data is not t.data
    assert raw.data.tolist() == [1.0, 2.0]


def test_on_the_host_a_gpu_tensor_is_copied_to_the_host():
    t = GpuTensor([1.0, 2.0])  # DLPack 1.0: the producer makes the host copy
    raw = interop._import(t, "cpu", None)
    assert isinstance(raw, np.ndarray) and raw.tolist() == [1.0, 2.0]
    assert not np.shares_memory(raw, t.data)
    assert t.requests[-1]["dl_device"] == (CPU, 0) and t.requests[-1]["copy"] is True
    old = GpuTensor([3.0], host_copy=False, get=True)  # CuPy 13: no dl_device; .get()
    assert interop._import(old, "emu", None).tolist() == [3.0]
    with pytest.raises(TypeError, match=r"from_dlpack: GpuTensor lives on a GPU but .*'cpu'"):
        interop._import(GpuTensor([1.0], host_copy=False), "cpu", None)


def test_from_dlpack_goes_through_the_cuda_branch_when_cupy_is_active(cp, monkeypatch):
    """gg.from_dlpack asks the backend for CuPy and hands the object to it (the NumPy
    arrays standing for device memory then become an ordinary dlarray)."""
    monkeypatch.setattr(backend, "cupy_module", lambda: cp)
    monkeypatch.setattr(interop, "_import", _unwrapping(interop._import))
    t = GpuTensor(np.array([1, 2]))  # integers become float64, as gg.dlarray does
    x = gg.from_dlpack(t)
    assert cp.calls == [("from_dlpack", t)]
    assert x.dtype == np.float64 and x.numpy().tolist() == [1.0, 2.0]


def _unwrapping(fn):
    def call(obj, device, cp):
        return fn(obj, device, cp).data

    return call


class DeviceRaw:
    """A dlarray's data on cuda, as far as the interop methods use it."""

    def __init__(self):
        self.__cuda_array_interface__ = {
            "shape": (2,),
            "typestr": "<f8",
            "data": (1234, False),
            "version": 3,
            "strides": None,
            "stream": 1,
        }
        self.requests = []

    def __dlpack__(self, **kwargs):
        self.requests.append(kwargs)
        return "capsule"

    def __dlpack_device__(self):
        return (CUDA, 0)


def test_a_cuda_dlarray_exports_the_cuda_array_interface_and_dlpack(monkeypatch):
    raw = DeviceRaw()
    monkeypatch.setattr(backend, "is_device_array", lambda a: isinstance(a, DeviceRaw))
    x = gg.ones(2)
    x._data = raw
    assert x.__cuda_array_interface__ is raw.__cuda_array_interface__
    assert hasattr(x, "__cuda_array_interface__")
    # the consumer's stream and DLPack 1.0 arguments reach CuPy unchanged
    assert x.__dlpack__(stream=5, max_version=(1, 0)) == "capsule"
    assert raw.requests == [{"stream": 5, "max_version": (1, 0)}]
    assert x.__dlpack_device__() == (CUDA, 0)


def test_the_cupy_names_gpugrad_calls_exist_with_these_arguments():
    cupy = pytest.importorskip("cupy")
    # a Cython function: its signature is the first line of its docstring
    assert cupy.from_dlpack.__doc__.startswith("from_dlpack(array, *,")
    dlpack_doc = cupy.ndarray.__dlpack__.__doc__ or ""
    for argument in ("stream", "max_version", "dl_device", "copy"):
        assert argument in dlpack_doc, argument
    assert hasattr(cupy.ndarray, "__dlpack_device__")
    assert hasattr(cupy.ndarray, "__cuda_array_interface__")
    assert callable(cupy.asarray) and hasattr(cupy.ndarray, "copy")
    assert hasattr(cupy.cuda.runtime, "getDevice")
    assert "device" in inspect.signature(np.from_dlpack).parameters  # NumPy >= 2.1
