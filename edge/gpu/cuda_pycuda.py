"""The pycuda adapter of ``edge.gpu.cuda`` (the Jetson path: pycuda 2022.1 on Python 3.6).

API facts from inducer/pycuda v2022.1 (src/wrapper/wrap_cudadrv.cpp, src/cpp/cuda.hpp):
``Device.retain_primary_context()`` (cuDevicePrimaryCtxRetain), ``Context.push/pop/detach``,
``mem_alloc``, ``pagelocked_empty``, ``Stream().handle``, ``Event().record(stream)/.time_since(start)``,
``memcpy_htod_async(dest, src, stream)``, ``memcpy_dtoh_async(dest, src, stream)``,
``memset_d8_async(dest, byte, n, stream)``, ``get_version()``, ``get_driver_version()``.
Unlike ``pycuda.autoinit`` (NVIDIA's TensorRT 8.2 samples) nothing happens at import, and the
primary context is used rather than a new one, so TensorRT's runtime-API calls share it.
"""
from edge.gpu.cuda import DeviceBuffer, GpuError, check_host_array


class PycudaStream(object):
    def __init__(self, stream):
        self.native = stream
        self.handle = int(stream.handle)

    def synchronize(self):
        self.native.synchronize()


class PycudaEvent(object):
    def __init__(self, event):
        self.native = event

    def record(self, stream):
        self.native.record(stream.native)

    def synchronize(self):
        self.native.synchronize()

    def elapsed_ms(self, start_event):
        """Milliseconds from ``start_event`` to this event (both recorded and this one complete)."""
        return float(self.native.time_since(start_event.native))


class PycudaRuntime(object):
    name = "pycuda"

    @staticmethod
    def import_modules():
        import pycuda
        import pycuda.driver as driver
        return pycuda, driver

    @staticmethod
    def device_count(modules):
        _, drv = modules
        try:
            drv.init()
            return drv.Device.count()
        except drv.Error as exc:
            raise GpuError(_one_line(exc))

    def __init__(self, modules, device=0):
        self._pycuda, self._drv = modules
        count = self.device_count(modules)
        if count <= device:
            raise GpuError("no CUDA GPU {} (pycuda sees {})".format(device, count))
        self._device = self._drv.Device(device)
        self._context = self._device.retain_primary_context()
        self._context.push()
        self._pinned = []

    def bind_thread(self):
        """Make the context current on the calling thread (pycuda contexts are per thread)."""
        self._context.push()

    def device_name(self):
        return self._device.name()

    def compute_capability(self):
        major, minor = self._device.compute_capability()
        return int(major), int(minor)

    def mem_info(self):
        free_bytes, total_bytes = self._drv.mem_get_info()
        return int(free_bytes), int(total_bytes)

    def versions(self):
        return {"cuda_python_runtime": "pycuda {}".format(getattr(self._pycuda, "VERSION_TEXT", "?")),
                "cuda_runtime": ".".join(str(v) for v in self._drv.get_version()),
                "cuda_driver": _cuda_int_version(self._drv.get_driver_version())}

    def alloc(self, nbytes):
        try:
            allocation = self._drv.mem_alloc(int(nbytes))
        except self._drv.Error as exc:
            raise GpuError("cannot allocate {} bytes on the GPU: {}".format(nbytes, _one_line(exc)))
        return DeviceBuffer(int(allocation), nbytes, allocation.free)

    def pinned(self, shape, dtype):
        array = self._drv.pagelocked_empty(shape, dtype)
        self._pinned.append(array)
        return array

    def stream(self):
        return PycudaStream(self._drv.Stream())

    def event(self):
        return PycudaEvent(self._drv.Event())

    def htod(self, dst_ptr, host_array, stream):
        self._drv.memcpy_htod_async(int(dst_ptr), check_host_array(host_array, "host-to-device"), stream.native)

    def dtoh(self, host_array, src_ptr, stream):
        self._drv.memcpy_dtoh_async(check_host_array(host_array, "device-to-host"), int(src_ptr), stream.native)

    def memset(self, dst_ptr, byte, nbytes, stream):
        self._drv.memset_d8_async(int(dst_ptr), int(byte), int(nbytes), stream.native)

    def close(self):
        """Free the pinned arrays and release the primary context (once)."""
        if self._context is None:
            return
        for array in self._pinned:
            base = getattr(array, "base", None)
            if base is not None and hasattr(base, "free"):
                base.free()
        self._pinned = []
        context, self._context = self._context, None
        self._drv.Context.pop()
        context.detach()


def _cuda_int_version(value):
    """CUDA's integer versions: 10020 -> "10.2", 12040 -> "12.4"."""
    value = int(value)
    return "{}.{}".format(value // 1000, (value % 1000) // 10)


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__
