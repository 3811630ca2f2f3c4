"""The cuda-python adapter of ``edge.gpu.cuda`` (desktop TensorRT 10/11, where pycuda is absent).

Every call of the CUDA runtime bindings returns a tuple ``(cudaError_t, *values)``
(NVIDIA/TensorRT release/10.13 samples/python/common_runtime.py, ``cuda_call``).
The module is ``cuda.bindings.runtime`` from cuda-python 12.6 on (release/11.1
common_runtime.py) and ``cuda.cudart`` before. The runtime API works in the
device's primary context, which is the one TensorRT uses; it is current on
every thread once ``cudaSetDevice`` ran there (``bind_thread``).
"""
import ctypes

import numpy as np

from edge.gpu.cuda import DeviceBuffer, GpuError, check_host_array


class CudartStream(object):
    def __init__(self, runtime, stream):
        self._runtime = runtime
        self.native = stream
        self.handle = int(stream)

    def synchronize(self):
        self._runtime.call("cudaStreamSynchronize", self.native)


class CudartEvent(object):
    def __init__(self, runtime, event):
        self._runtime = runtime
        self.native = event

    def record(self, stream):
        self._runtime.call("cudaEventRecord", self.native, stream.native)

    def synchronize(self):
        self._runtime.call("cudaEventSynchronize", self.native)

    def elapsed_ms(self, start_event):
        return float(self._runtime.call("cudaEventElapsedTime", start_event.native, self.native))


class CudartRuntime(object):
    name = "cuda-python"

    @staticmethod
    def import_modules():
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python before 12.6
        return cudart

    @staticmethod
    def device_count(cudart):
        return int(_call(cudart, "cudaGetDeviceCount"))

    def __init__(self, cudart, device=0):
        self._rt = cudart
        count = self.device_count(cudart)
        if count <= device:
            raise GpuError("no CUDA GPU {} (cuda-python sees {})".format(device, count))
        self._device = int(device)
        self.call("cudaSetDevice", self._device)
        self._props = self.call("cudaGetDeviceProperties", self._device)
        self._closers = []  # (kind, handle) freed by close(), newest first

    def call(self, function, *args):
        return _call(self._rt, function, *args)

    def bind_thread(self):
        self.call("cudaSetDevice", self._device)

    def device_name(self):
        name = self._props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode("utf-8", "replace")
        return name

    def compute_capability(self):
        return int(self._props.major), int(self._props.minor)

    def mem_info(self):
        free_bytes, total_bytes = self.call("cudaMemGetInfo")
        return int(free_bytes), int(total_bytes)

    def versions(self):
        import cuda.bindings as bindings_package  # noqa: imported only to read its version
        return {"cuda_python_runtime": "cuda-python {}".format(getattr(bindings_package, "__version__", "?")),
                "cuda_runtime": _cuda_int_version(self.call("cudaRuntimeGetVersion")),
                "cuda_driver": _cuda_int_version(self.call("cudaDriverGetVersion"))}

    def alloc(self, nbytes):
        try:
            ptr = int(self.call("cudaMalloc", int(nbytes)))
        except GpuError as exc:
            raise GpuError("cannot allocate {} bytes on the GPU: {}".format(nbytes, exc))
        return DeviceBuffer(ptr, nbytes, lambda: self.call("cudaFree", ptr))

    def pinned(self, shape, dtype):
        dtype = np.dtype(dtype)
        shape = tuple(shape) if hasattr(shape, "__len__") else (int(shape),)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = max(1, count * dtype.itemsize)
        ptr = int(self.call("cudaMallocHost", nbytes))
        self._closers.append(("cudaFreeHost", ptr))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def stream(self):
        stream = self.call("cudaStreamCreate")
        self._closers.append(("cudaStreamDestroy", stream))
        return CudartStream(self, stream)

    def event(self):
        event = self.call("cudaEventCreate")
        self._closers.append(("cudaEventDestroy", event))
        return CudartEvent(self, event)

    def htod(self, dst_ptr, host_array, stream):
        host = check_host_array(host_array, "host-to-device")
        self.call("cudaMemcpyAsync", int(dst_ptr), host.ctypes.data, host.nbytes,
                  self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.native)

    def dtoh(self, host_array, src_ptr, stream):
        host = check_host_array(host_array, "device-to-host")
        self.call("cudaMemcpyAsync", host.ctypes.data, int(src_ptr), host.nbytes,
                  self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.native)

    def memset(self, dst_ptr, byte, nbytes, stream):
        self.call("cudaMemsetAsync", int(dst_ptr), int(byte), int(nbytes), stream.native)

    def close(self):
        """Destroy the streams and events made here and free the pinned memory (once)."""
        closers, self._closers = self._closers, []
        for function, handle in reversed(closers):
            self.call(function, handle)


def _call(cudart, function, *args):
    """Call ``cudart.function``; raise GpuError naming the call and the CUDA error; return its value(s)."""
    result = getattr(cudart, function)(*args)
    err, values = result[0], tuple(result[1:])
    if err != cudart.cudaError_t.cudaSuccess:
        raise GpuError("{} failed: {}".format(function, _error_text(cudart, err)))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _error_text(cudart, err):
    name = cudart.cudaGetErrorName(err)[1]
    text = cudart.cudaGetErrorString(err)[1]
    decode = (lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b))
    return "{} ({})".format(decode(name), decode(text))


def _cuda_int_version(value):
    value = int(value)
    return "{}.{}".format(value // 1000, (value % 1000) // 10)
