"""A small CUDA runtime: pycuda first (JetPack), cuda-python where pycuda is absent (desktop TensorRT 10/11).

    rt = load_runtime()                  # creates (retains) the CUDA context; rt.close() releases it
    rt.name                              # "pycuda" | "cuda-python"
    rt.device_name(), rt.compute_capability() -> (major, minor), rt.mem_info() -> (free_bytes, total_bytes)
    buf = rt.alloc(nbytes)               # DeviceBuffer: .ptr (int), .nbytes, .free()
    host = rt.pinned(shape, dtype)       # numpy array in page-locked memory (freed by rt.close())
    s = rt.stream()                      # Stream: .handle (int, what TensorRT takes), .synchronize()
    e = rt.event()                       # Event: .record(stream), .synchronize(), .elapsed_ms(start_event)
    rt.htod(dst_ptr, host_array, s); rt.dtoh(host_array, src_ptr, s); rt.memset(dst_ptr, byte, nbytes, s)
                                         # all asynchronous on the stream

Both adapters use the device's *primary* context, the one the CUDA runtime
API (and so TensorRT) uses, so buffers and streams made here are valid in
TensorRT's calls. pycuda makes a context current per thread: a thread other
than the one that loaded the runtime calls ``rt.bind_thread()`` first.

pycuda 2022.1 is the last release for Python 3.6 (JetPack 4.6). Nothing is
imported or initialised at import time.
"""
import importlib

RUNTIMES = ("pycuda", "cuda-python")
INSTALL_HINT = ("install pycuda (on JetPack 4.6 / Python 3.6: pip3 install pycuda==2022.1) "
                "or cuda-python (pip install cuda-python)")

# name -> (module, class); imported only when tried
_ADAPTERS = {
    "pycuda": ("edge.gpu.cuda_pycuda", "PycudaRuntime"),
    "cuda-python": ("edge.gpu.cuda_cudart", "CudartRuntime"),
}


class GpuError(RuntimeError):
    """No usable CUDA here, or a CUDA call failed; the message is one line saying which and why."""


def _order(prefer):
    if prefer is None:
        return RUNTIMES
    if prefer not in RUNTIMES:
        raise GpuError("unknown CUDA runtime {!r}; choose one of {}".format(prefer, ", ".join(RUNTIMES)))
    return (prefer,) + tuple(r for r in RUNTIMES if r != prefer)


def _adapter(name):
    module_name, class_name = _ADAPTERS[name]
    return getattr(importlib.import_module(module_name), class_name)


def _importable(prefer, missing):
    """(name, adapter class, its modules) for each runtime of ``prefer``'s order that imports; why each
    other one did not is appended to ``missing``."""
    for name in _order(prefer):
        cls = _adapter(name)
        try:
            modules = cls.import_modules()
        except ImportError as exc:
            missing.append("{}: {}".format(name, exc))
            continue
        yield name, cls, modules


def _none_imports(missing):
    return "no CUDA runtime for Python ({}); {}".format("; ".join(missing), INSTALL_HINT)


def load_runtime(prefer=None, device=0):
    """The first runtime of ``prefer``, pycuda, cuda-python that imports; its context is made current.

    Raises GpuError naming what to install when neither imports, or why the
    GPU cannot be used ("no CUDA GPU ...") when one imports.
    """
    missing = []
    for _, cls, modules in _importable(prefer, missing):
        return cls(modules, device)
    raise GpuError(_none_imports(missing))


def probe(prefer=None):
    """(ok, reason): whether a CUDA GPU can be used from Python here, without creating a context."""
    missing = []
    for name, cls, modules in _importable(prefer, missing):
        try:
            count = cls.device_count(modules)
        except GpuError as exc:
            return False, "no CUDA GPU ({}: {})".format(name, exc)
        if count < 1:
            return False, "no CUDA GPU ({} sees none)".format(name)
        return True, "{} sees {} CUDA GPU(s)".format(name, count)
    return False, _none_imports(missing)


class DeviceBuffer(object):
    """Device memory: ``ptr`` (int) and ``nbytes``; ``free()`` once (later calls do nothing)."""

    def __init__(self, ptr, nbytes, release):
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)
        self._release = release

    def free(self):
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def __repr__(self):
        return "DeviceBuffer(ptr=0x{:x}, nbytes={})".format(self.ptr, self.nbytes)


def check_host_array(array, what):
    """Async copies need C-contiguous host memory; say so instead of copying garbage."""
    flags = getattr(array, "flags", None)
    if flags is None or not flags["C_CONTIGUOUS"]:
        raise GpuError("{}: the host array must be a C-contiguous numpy array".format(what))
    return array


def cudnn_version():
    """(version text, None) from libcudnn's cudnnGetVersion(), or (None, why): for `retina-edge selftest`."""
    import ctypes
    import ctypes.util
    for name in (ctypes.util.find_library("cudnn"), "libcudnn.so.9", "libcudnn.so.8", "libcudnn.so.7"):
        if not name:
            continue
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        library.cudnnGetVersion.restype = ctypes.c_size_t
        return cudnn_version_text(int(library.cudnnGetVersion())), None
    return None, "libcudnn not found (it comes with JetPack, or with cuDNN on a desktop)"


def cudnn_version_text(value):
    """cudnnGetVersion(): cuDNN 7/8 encode major*1000 + minor*100 + patch (8201), cuDNN 9 major*10000 + ... (90100)."""
    if value >= 90000:
        return "{}.{}.{}".format(value // 10000, (value % 10000) // 100, value % 100)
    return "{}.{}.{}".format(value // 1000, (value % 1000) // 100, value % 100)
