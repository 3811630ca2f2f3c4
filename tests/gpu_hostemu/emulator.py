"""edge/gpu/preprocess.cu built for the host with g++, and a CUDA runtime made of host memory.

Neither exists on a Jetson; they let the unit tests run the real kernel source and the real
edge.gpu.preprocess.CudaPreprocessor on a machine without a GPU:

- ``build_library(folder)`` compiles hostemu.cpp (which #includes preprocess.cu under hostemu.h's
  shim) into a shared library named by the sources' hash, so a session builds it once.
- ``HostKernels(library)`` is an edge.gpu.kernel.LoadedKernels: ``launch`` calls the library's
  ``hostemu_<kernel>`` with ctypes, the arguments packed by the same SIGNATURES as on a GPU.
- ``Station`` is the real CudaPreprocessor on a HostRuntime, writing into a buffer a test reads.
- ``HostRuntime`` implements edge.gpu.cuda's runtime interface on numpy buffers: a "device
  pointer" is the address of a numpy array, copies are memmove, the stream is synchronous, and
  events are host clock readings (CUDA's semantics for a stream that has already finished).

Python 3.6 + numpy 1.19 compatible.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import time

import numpy as np

from edge.gpu import kernel as gpu_kernel

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = (gpu_kernel.SOURCE_PATH, os.path.join(HERE, "hostemu.h"), os.path.join(HERE, "hostemu.cpp"))
# IEEE single/double arithmetic exactly as written: no FMA contraction, no fast-math reordering
CXXFLAGS = ["-std=c++14", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-Wall"]
_CTYPES = {"P": ctypes.c_void_p, "i": ctypes.c_int, "f": ctypes.c_float, "d": ctypes.c_double}
_Dim3 = ctypes.c_uint * 3


def find_compiler():
    return shutil.which("g++")


def session_kernels(tmp_path_factory):
    """HostKernels built once per test session under its base temp folder; skips without g++."""
    import pytest
    if find_compiler() is None:
        pytest.skip("g++ not found: the host emulation of edge/gpu/preprocess.cu needs a C++14 compiler")
    folder = str(tmp_path_factory.getbasetemp().joinpath("hostemu"))
    return HostKernels(build_library(folder))


def build_library(folder):
    """Compile the host emulation into ``folder`` (reused when the sources are unchanged); returns its path."""
    digest = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(f.read())
    target = os.path.join(folder, "hostemu-{}.so".format(digest.hexdigest()[:16]))
    if os.path.isfile(target):
        return target
    compiler = find_compiler()
    if compiler is None:
        raise RuntimeError("g++ not found: the host emulation of preprocess.cu needs a C++14 compiler")
    if not os.path.isdir(folder):
        os.makedirs(folder)
    partial = target + ".partial"
    command = [compiler] + CXXFLAGS + ['-DPREPROCESS_CU="{}"'.format(gpu_kernel.SOURCE_PATH),
                                       os.path.join(HERE, "hostemu.cpp"), "-o", partial]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("g++ failed on the host emulation:\n" + out.decode("utf-8", "replace"))
    os.rename(partial, target)
    return target


class HostKernels(gpu_kernel.LoadedKernels):
    backend = "host emulation (g++)"

    def __init__(self, library_path):
        gpu_kernel.LoadedKernels.__init__(self)
        self.library = ctypes.CDLL(library_path)
        self.library.hostemu_last_error.restype = ctypes.c_char_p
        self._functions = {}
        for name, kinds in gpu_kernel.SIGNATURES.items():
            function = getattr(self.library, "hostemu_" + name)
            function.argtypes = [_Dim3, _Dim3] + [_CTYPES[k] for k in kinds]
            function.restype = ctypes.c_int
            self._functions[name] = function
        convert = self.library.hostemu_f32_to_f16
        convert.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
        self.library.hostemu_selftest.argtypes = [_Dim3, _Dim3, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        self.launches = []      # (kernel, grid, block) of every launch, for tests to inspect

    def _launch(self, name, grid, block, values, stream):
        self.launches.append((name, grid, block))
        rc = self._functions[name](_Dim3(*grid), _Dim3(*block), *[v.item() for v in values])
        if rc != 0:
            raise gpu_kernel.KernelError("{}: {}".format(name, self.library.hostemu_last_error().decode()))

    def selftest(self, values, threads, divergent=False):
        """Run the emulator's own test kernels over int32 ``values`` in blocks of ``threads``;
        returns (rc, output, error message)."""
        values = np.ascontiguousarray(values, dtype=np.int32)
        out = np.full(values.shape, -1, np.int32)
        rc = self.library.hostemu_selftest(_Dim3(values.size // threads, 1, 1), _Dim3(threads, 1, 1),
                                           int(divergent), values.ctypes.data, out.ctypes.data)
        return rc, out, self.library.hostemu_last_error().decode()

    def f32_to_f16_bits(self, values):
        """The kernel's re_f32_to_f16 over a float32 array -> uint16 bit patterns."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        out = np.empty(values.shape, np.uint16)
        self.library.hostemu_f32_to_f16(values.ctypes.data, out.ctypes.data, values.size)
        return out


class HostBuffer(object):
    """'Device' memory: a numpy byte array; ``ptr`` is its address."""

    def __init__(self, nbytes, fill=0xA5):
        # filled with a pattern, not zeros, so a kernel that skips a write cannot pass unnoticed
        self.array = np.full(max(1, int(nbytes)), fill, dtype=np.uint8)
        self.ptr = int(self.array.ctypes.data)
        self.nbytes = int(nbytes)
        self.freed = False

    def view(self, dtype, shape, offset=0):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        return self.array[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)

    def free(self):
        self.freed = True


class HostStream(object):
    handle = 0

    def synchronize(self):
        pass


class HostEvent(object):
    def __init__(self):
        self.time_s = None

    def record(self, stream):
        self.time_s = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_ms(self, start_event):
        return 1000.0 * (self.time_s - start_event.time_s)


class HostRuntime(object):
    """edge.gpu.cuda's runtime interface on host memory (every operation completes when called)."""

    name = "host-emulation"

    def __init__(self):
        self.allocations = []
        self.calls = []   # names of the calls made, for tests that count allocations per frame

    def compute_capability(self):
        return (0, 0)

    def alloc(self, nbytes):
        self.calls.append("alloc")
        buffer = HostBuffer(nbytes)
        self.allocations.append(buffer)
        return buffer

    def pinned(self, shape, dtype):
        self.calls.append("pinned")
        return np.zeros(shape, dtype)

    def stream(self):
        return HostStream()

    def event(self):
        return HostEvent()

    def htod(self, dst_ptr, host_array, stream):
        self.calls.append("htod")
        assert host_array.flags["C_CONTIGUOUS"]
        ctypes.memmove(int(dst_ptr), host_array.ctypes.data, host_array.nbytes)

    def dtoh(self, host_array, src_ptr, stream):
        self.calls.append("dtoh")
        ctypes.memmove(host_array.ctypes.data, int(src_ptr), host_array.nbytes)

    def memset(self, dst_ptr, byte, nbytes, stream):
        self.calls.append("memset")
        ctypes.memset(int(dst_ptr), int(byte), int(nbytes))


class Station(object):
    """A CudaPreprocessor on the host runtime writing into an output buffer the test can read."""

    def __init__(self, kernels, spec, dtype=np.float32, max_batch=1, **options):
        from edge.gpu.preprocess import CudaPreprocessor
        options.setdefault("max_input_bytes", 720 * 720 * 3)   # the 36 MB default costs time in host memory
        self.runtime = HostRuntime()
        self.spec, self.dtype = spec, np.dtype(dtype)
        h, w = spec["resize"]["size"]
        self.shape = (len(spec["mean"]), h, w)
        self.out = self.runtime.alloc(max_batch * self.shape[0] * h * w * self.dtype.itemsize)
        self.pre = CudaPreprocessor(spec, self.runtime, self.out.ptr, dtype, max_batch, self.runtime.stream(),
                                    kernels=kernels, **options)

    def run(self, images):
        batch = self.pre.collate([self.pre.prepare(image) for image in images])
        return batch, self.out.view(self.dtype, (batch.n,) + self.shape).copy()

    def plan(self):
        return self.pre.plan.view(np.int32, (16,))[:11].tolist()
