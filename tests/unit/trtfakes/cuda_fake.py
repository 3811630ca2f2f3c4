"""A fake of the ``edge.gpu.cuda`` runtime interface: device memory is a numpy heap, time is a fake GPU clock.

It mimics what matters to the runner and the calibrator: pointers are plain
integers into allocations (an access outside one is an error, as a CUDA
illegal address would be); copies and kernels are queued on a stream and
advance the GPU clock by fixed costs, so CUDA-event times are exact and
distinguishable from any CPU clock; host arrays of async copies must be
C-contiguous. It counts allocations so a test can check the per-batch path
makes none.
"""
import numpy as np

HTOD_MS = 1.25     # GPU time of one host-to-device copy
DTOH_MS = 0.5      # of one device-to-host copy
MEMSET_MS = 0.125


class FakeDeviceMemory(object):
    """Allocations at fake addresses; ``view(ptr, nbytes)`` checks the range lies inside a live one."""

    BASE = 0x7F0000000000

    def __init__(self):
        self.blocks = {}  # ptr -> bytearray
        self._next = self.BASE
        self.clock_ms = 0.0
        self.launches = []  # (stream handle, what)

    def alloc(self, nbytes):
        ptr = self._next
        self.blocks[ptr] = bytearray(max(1, int(nbytes)))
        self._next += (int(nbytes) + 511) // 256 * 256 + 256
        return ptr

    def free(self, ptr):
        assert ptr in self.blocks, "double free or bad pointer 0x{:x}".format(ptr)
        del self.blocks[ptr]

    def view(self, ptr, nbytes):
        for base, block in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + len(block):
                return memoryview(block)[ptr - base:ptr - base + nbytes]
        raise AssertionError("illegal address: 0x{:x} + {} bytes is in no allocation".format(ptr, nbytes))

    def read(self, ptr, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return np.frombuffer(bytes(self.view(ptr, nbytes)), dtype=dtype).reshape(shape)

    def write(self, ptr, array):
        data = np.ascontiguousarray(array).tobytes()
        self.view(ptr, len(data))[:] = data

    def launch(self, stream_handle, what, ms):
        """Work queued on a stream: advances the GPU clock (the fake runs everything in order)."""
        self.launches.append((stream_handle, what))
        self.clock_ms += ms


class FakeBuffer(object):
    def __init__(self, memory, nbytes):
        self.ptr = memory.alloc(nbytes)
        self.nbytes = int(nbytes)
        self._memory = memory
        self.freed = False

    def free(self):
        if not self.freed:
            self.freed = True
            self._memory.free(self.ptr)


class FakeStream(object):
    def __init__(self, handle):
        self.handle = handle
        self.synchronized = 0

    def synchronize(self):
        self.synchronized += 1


class FakeEvent(object):
    def __init__(self, memory):
        self._memory = memory
        self.recorded_ms = None

    def record(self, stream):
        self.recorded_ms = self._memory.clock_ms

    def synchronize(self):
        assert self.recorded_ms is not None, "synchronize on an event never recorded"

    def elapsed_ms(self, start_event):
        assert self.recorded_ms is not None and start_event.recorded_ms is not None, "event not recorded"
        return self.recorded_ms - start_event.recorded_ms


class FakeCudaRuntime(object):
    name = "fake-cuda"

    def __init__(self, gpu="NVIDIA Tegra X1", compute_capability=(5, 3), total_bytes=4 << 30):
        self.memory = FakeDeviceMemory()
        self.gpu, self.cc, self.total_bytes = gpu, tuple(compute_capability), total_bytes
        self.allocations = 0
        self.pinned_arrays = 0
        self.streams = []
        self.closed = False

    def device_name(self):
        return self.gpu

    def compute_capability(self):
        return self.cc

    def mem_info(self):
        used = sum(len(b) for b in self.memory.blocks.values())
        return self.total_bytes - used, self.total_bytes

    def versions(self):
        return {"cuda_python_runtime": "fake", "cuda_runtime": "10.2", "cuda_driver": "10.2"}

    def alloc(self, nbytes):
        self.allocations += 1
        return FakeBuffer(self.memory, nbytes)

    def pinned(self, shape, dtype):
        self.pinned_arrays += 1
        return np.zeros(shape, dtype=dtype)

    def stream(self):
        stream = FakeStream(0x5000 + len(self.streams))
        self.streams.append(stream)
        return stream

    def event(self):
        return FakeEvent(self.memory)

    def htod(self, dst_ptr, host_array, stream):
        assert host_array.flags["C_CONTIGUOUS"], "async copy from a non-contiguous host array"
        self.memory.write(dst_ptr, host_array)
        self.memory.launch(stream.handle, "htod", HTOD_MS)

    def dtoh(self, host_array, src_ptr, stream):
        assert host_array.flags["C_CONTIGUOUS"] and host_array.flags["WRITEABLE"], "bad host array for a copy"
        host_array[...] = self.memory.read(src_ptr, host_array.shape, host_array.dtype)
        self.memory.launch(stream.handle, "dtoh", DTOH_MS)

    def memset(self, dst_ptr, byte, nbytes, stream):
        self.memory.view(dst_ptr, nbytes)[:] = bytes([byte]) * nbytes
        self.memory.launch(stream.handle, "memset", MEMSET_MS)

    def close(self):
        self.closed = True
