"""edge/gpu/cuda adapters over small fakes of pycuda.driver and the cuda-python runtime bindings.

The fakes follow the real call conventions: pycuda 2022.1 (inducer/pycuda
src/wrapper/wrap_cudadrv.cpp: Device.retain_primary_context, Context.push /
static pop / detach, memcpy_*_async(dest, src, stream), Event.time_since,
driver.Error) and cuda-python (every call returns (cudaError_t, *values);
NVIDIA/TensorRT release/10.13 samples/python/common_runtime.py). They are
passed to the adapters' constructors; nothing is patched.
"""
import types

import numpy as np
import pytest

from edge.gpu.cuda import DeviceBuffer, GpuError, check_host_array
from edge.gpu.cuda_cudart import CudartRuntime
from edge.gpu.cuda_pycuda import PycudaRuntime


def fake_pycuda(devices=1):
    calls = []
    drv = types.SimpleNamespace(calls=calls)

    class Error(Exception):
        pass

    class Context(object):
        def push(self):
            calls.append("push")

        @staticmethod
        def pop():
            calls.append("pop")

        def detach(self):
            calls.append("detach")

    class Device(object):
        def __init__(self, ordinal):
            self.ordinal = ordinal

        @staticmethod
        def count():
            return devices

        def name(self):
            return "NVIDIA Tegra X1"

        def compute_capability(self):
            return (5, 3)

        def retain_primary_context(self):
            calls.append("retain_primary_context")
            return Context()

    class Allocation(object):
        def __init__(self, n):
            if n > 1 << 30:
                raise Error("cuMemAlloc failed: out of memory")
            self.n = n

        def __int__(self):
            return 0x1000

        def free(self):
            calls.append("free")

    class Pinned(object):
        def free(self):
            calls.append("free pinned")

    def pagelocked_empty(shape, dtype):
        base = Pinned()
        array = np.zeros(shape, dtype)
        return types.SimpleNamespace(base=base, shape=array.shape, array=array)

    drv.Error, drv.Context, drv.Device = Error, Context, Device
    drv.init = lambda: calls.append("init")
    drv.mem_get_info = lambda: (3 << 30, 4 << 30)
    drv.mem_alloc = Allocation
    drv.pagelocked_empty = pagelocked_empty
    drv.memcpy_htod_async = lambda dest, src, stream: calls.append(("htod", dest, src.nbytes, stream))
    drv.get_version = lambda: (10, 2, 0)
    drv.get_driver_version = lambda: 10020
    return types.SimpleNamespace(VERSION_TEXT="2022.1"), drv


def test_pycuda_uses_the_primary_context_and_releases_it():
    modules = fake_pycuda()
    rt = PycudaRuntime(modules)
    drv = modules[1]
    assert drv.calls == ["init", "retain_primary_context", "push"]  # no pycuda.autoinit, no new context
    assert (rt.device_name(), rt.compute_capability(), rt.mem_info()) == ("NVIDIA Tegra X1", (5, 3),
                                                                          (3 << 30, 4 << 30))
    assert rt.versions() == {"cuda_python_runtime": "pycuda 2022.1", "cuda_runtime": "10.2.0",
                             "cuda_driver": "10.2"}
    buf = rt.alloc(256)
    assert isinstance(buf, DeviceBuffer) and buf.ptr == 0x1000
    buf.free()
    buf.free()  # once only
    rt.pinned((2, 3), np.float32)
    stream = types.SimpleNamespace(native="stream")
    rt.htod(0x1000, np.zeros(4, np.float32), stream)
    assert ("htod", 0x1000, 16, "stream") in drv.calls
    with pytest.raises(GpuError, match="cannot allocate 2147483648 bytes on the GPU: cuMemAlloc failed"):
        rt.alloc(2 << 30)
    rt.close()
    rt.close()
    assert drv.calls[-3:] == ["free pinned", "pop", "detach"] and drv.calls.count("free") == 1


def test_pycuda_without_a_device_is_no_cuda_gpu():
    with pytest.raises(GpuError, match="no CUDA GPU 0 \\(pycuda sees 0\\)"):
        PycudaRuntime(fake_pycuda(devices=0))


class FakeCudart(object):
    """cuda-python's runtime bindings: (err, *values) tuples; errors are enum members with names."""

    class cudaError_t(object):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(object):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, devices=1):
        self.devices, self.calls = devices, []

    def cudaGetErrorName(self, err):
        return 0, {2: b"cudaErrorMemoryAllocation"}.get(err, b"cudaErrorUnknown")

    def cudaGetErrorString(self, err):
        return 0, b"out of memory"

    def cudaGetDeviceCount(self):
        return 0, self.devices

    def cudaSetDevice(self, device):
        self.calls.append(("cudaSetDevice", device))
        return (0,)

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=b"NVIDIA GeForce RTX 4090\x00\x00", major=8, minor=9)

    def cudaMalloc(self, nbytes):
        return (2, None) if nbytes > 1 << 40 else (0, 0x2000)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.calls.append(("cudaMemcpyAsync", dst, count, kind, stream))
        return (0,)

    def cudaStreamCreate(self):
        return 0, 77

    def cudaStreamDestroy(self, stream):
        self.calls.append(("cudaStreamDestroy", stream))
        return (0,)


def test_cuda_python_checks_every_result_tuple():
    cudart = FakeCudart()
    rt = CudartRuntime(cudart)
    assert ("cudaSetDevice", 0) in cudart.calls
    assert (rt.device_name(), rt.compute_capability()) == ("NVIDIA GeForce RTX 4090", (8, 9))
    assert rt.alloc(64).ptr == 0x2000
    with pytest.raises(GpuError) as info:
        rt.alloc(2 << 40)
    assert "cudaMalloc failed: cudaErrorMemoryAllocation (out of memory)" in str(info.value)
    stream = rt.stream()
    assert stream.handle == 77
    host = np.zeros((2, 2), np.float32)
    rt.dtoh(host, 0x2000, stream)
    assert cudart.calls[-1] == ("cudaMemcpyAsync", host.ctypes.data, 16, 2, 77)
    with pytest.raises(GpuError, match="C-contiguous"):
        rt.htod(0x2000, np.zeros((4, 4), np.float32)[:, ::2], stream)
    rt.close()
    assert cudart.calls[-1] == ("cudaStreamDestroy", 77)


def test_cuda_python_without_a_device_is_no_cuda_gpu():
    with pytest.raises(GpuError, match="no CUDA GPU 0 \\(cuda-python sees 0\\)"):
        CudartRuntime(FakeCudart(devices=0))


def test_host_arrays_must_be_contiguous_numpy_arrays():
    assert check_host_array(np.zeros(3), "x") is not None
    for bad in ([1, 2, 3], np.zeros((3, 3))[:, 1]):
        with pytest.raises(GpuError, match="C-contiguous numpy array"):
            check_host_array(bad, "host-to-device")
