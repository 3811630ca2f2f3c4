"""A CUDA runtime on CuPy, with edge.gpu.cuda's interface: for desktop GPUs where CuPy is installed.

The GPU tests of the preprocessing kernel and benchmarks/preprocess_kernel.py use it, so they need
CuPy alone (`pip install cupy-cuda12x`), not pycuda or cuda-python. CuPy works in the device's
primary context, as the CUDA runtime API and TensorRT do, so its pointers and streams are valid
there too. Nothing is imported at import time.

    rt = CupyRuntime()                   # rt.name == "cupy"
    buf = rt.alloc(nbytes)               # .ptr, .nbytes, .free()
    host = rt.pinned(shape, dtype)       # page-locked numpy array
    s = rt.stream(); e = rt.event()      # s.handle, s.synchronize(); e.record(s), e.elapsed_ms(start)
    rt.htod(ptr, host, s); rt.dtoh(host, ptr, s); rt.memset(ptr, byte, nbytes, s)
"""
import numpy as np


class CupyBuffer(object):
    def __init__(self, memory, nbytes):
        self._memory = memory            # CuPy frees the allocation when this reference goes
        self.ptr = int(memory.ptr)
        self.nbytes = int(nbytes)

    def free(self):
        self._memory = None


class CupyStream(object):
    def __init__(self, stream):
        self.native = stream
        self.handle = int(stream.ptr)

    def synchronize(self):
        self.native.synchronize()


class CupyEvent(object):
    def __init__(self, cupy):
        self._cupy = cupy
        self.native = cupy.cuda.Event()

    def record(self, stream):
        self.native.record(stream.native)

    def synchronize(self):
        self.native.synchronize()

    def elapsed_ms(self, start_event):
        return float(self._cupy.cuda.get_elapsed_time(start_event.native, self.native))


class CupyRuntime(object):
    name = "cupy"

    def __init__(self, device=0):
        import cupy
        self._cupy = cupy
        self._runtime = cupy.cuda.runtime
        if self._runtime.getDeviceCount() <= device:
            raise RuntimeError("no CUDA GPU {} (CuPy sees {})".format(device, self._runtime.getDeviceCount()))
        self._device = cupy.cuda.Device(device)
        self._device.use()

    def device_name(self):
        name = self._runtime.getDeviceProperties(self._device.id)["name"]
        return str(name, "utf-8", "replace") if isinstance(name, bytes) else str(name)

    def compute_capability(self):
        text = self._device.compute_capability             # e.g. "87"
        return int(text[:-1]), int(text[-1])

    def alloc(self, nbytes):
        return CupyBuffer(self._cupy.cuda.alloc(int(nbytes)), nbytes)

    def pinned(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        memory = self._cupy.cuda.alloc_pinned_memory(max(1, count * dtype.itemsize))
        return np.frombuffer(memory, dtype, count).reshape(shape)   # the array keeps the memory alive

    def stream(self):
        return CupyStream(self._cupy.cuda.Stream(non_blocking=True))

    def event(self):
        return CupyEvent(self._cupy)

    def htod(self, dst_ptr, host_array, stream):
        self._runtime.memcpyAsync(int(dst_ptr), host_array.ctypes.data, host_array.nbytes,
                                  self._runtime.memcpyHostToDevice, stream.handle)

    def dtoh(self, host_array, src_ptr, stream):
        self._runtime.memcpyAsync(host_array.ctypes.data, int(src_ptr), host_array.nbytes,
                                  self._runtime.memcpyDeviceToHost, stream.handle)

    def memset(self, dst_ptr, byte, nbytes, stream):
        self._runtime.memsetAsync(int(dst_ptr), int(byte), int(nbytes), stream.handle)
