"""Loaders for ``preprocess.cu``: one source, compiled where it runs, one launch API.

    kernels = load_kernels(runtime)      # pycuda on the Jetson, CuPy (or NVRTC) on a desktop GPU
    kernels.launch("re_roi_counts", grid, block, args, stream)
    kernels.defines["RE_ROI_THREADS"]    # the #define constants of the source

- **pycuda** (``runtime.name == "pycuda"``, JetPack): ``pycuda.compiler.SourceModule`` runs the
  board's own nvcc (CUDA 10.2 on a Nano) for the current device's arch (sm_53, sm_72, sm_87) the
  first time, then reuses pycuda's compiler cache.
- **CuPy** ``RawModule`` (NVRTC), for desktop GPUs; **NVRTC through cuda-python** where CuPy is
  absent (``runtime.name == "cuda-python"``). Both compile to a cubin for the device's arch.
- The tests bring a fourth: the same source built with g++ for the host (tests/gpu_hostemu).

``args`` are Python numbers in the order of the kernel's parameters; SIGNATURES says how each is
passed ("P" a device pointer, "i" int32, "f" float32, "d" float64), so the loaders cannot disagree. Nothing is
imported or compiled at import time.
"""
import os
import re
import shutil

import numpy as np

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preprocess.cu")

# kernel -> parameter kinds, in order (struct-module letters, as pycuda's prepare() takes them)
SIGNATURES = {
    "re_roi_counts": "PiiiiiiiPP",
    "re_roi_plan": "PPiiiiiidddPPP",
    "re_resize_normalize": "PiiPPPPiiiiifffffff",
}
_NUMPY = {"P": np.uint64, "i": np.int32, "f": np.float32, "d": np.float64}
_DEFINE = re.compile(r"^#define\s+(RE_[A-Z0-9_]+)\s+(-?\d+)\b", re.MULTILINE)
INSTALL_HINT = ("the CUDA pre-processing kernel needs pycuda (Jetson), CuPy (`pip install cupy-cuda12x`) "
                "or cuda-python's NVRTC on a desktop GPU")


class KernelError(RuntimeError):
    """The kernel source cannot be compiled or launched here; one line saying why."""


def source_text():
    with open(SOURCE_PATH, "r") as f:
        return f.read()


def parse_defines(text):
    """The integer ``#define RE_*`` constants of the source (block sizes, codes, plan layout)."""
    return dict((name, int(value)) for name, value in _DEFINE.findall(text))


def pack_args(name, args):
    """Python numbers -> numpy scalars of the kernel's parameter types; checks the count."""
    kinds = SIGNATURES[name]
    if len(args) != len(kinds):
        raise KernelError("{} takes {} arguments, got {}".format(name, len(kinds), len(args)))
    return [_NUMPY[k](a if k in "fd" else int(a)) for k, a in zip(kinds, args)]


class LoadedKernels(object):
    """A compiled preprocess.cu. Subclasses implement ``_launch(name, grid, block, values, stream)``."""

    backend = "?"

    def __init__(self, text=None):
        self.text = source_text() if text is None else text
        self.defines = parse_defines(self.text)

    def launch(self, name, grid, block, args, stream):
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        self._launch(name, grid, block, pack_args(name, args), stream)

    def _launch(self, name, grid, block, values, stream):
        raise NotImplementedError

    def describe(self):
        return "preprocess.cu via {}".format(self.backend)


def find_nvcc():
    """nvcc on PATH, else JetPack's /usr/local/cuda/bin/nvcc (not on PATH by default); None if neither."""
    found = shutil.which("nvcc")
    if found:
        return found
    for candidate in ("/usr/local/cuda/bin/nvcc", "/usr/local/cuda-10.2/bin/nvcc"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class PycudaKernels(LoadedKernels):
    """SourceModule with the board's nvcc for the current context's device (pycuda picks the arch)."""

    backend = "pycuda"

    def __init__(self, text=None):
        LoadedKernels.__init__(self, text)
        from pycuda.compiler import SourceModule
        nvcc = find_nvcc()
        if nvcc is None:
            raise KernelError("nvcc not found (PATH, /usr/local/cuda/bin): pycuda compiles preprocess.cu with it")
        try:
            module = SourceModule(self.text, nvcc=nvcc, no_extern_c=True)
        except Exception:  # pycuda.driver.CompileError, or its compiler cache (~/.cache) not writable
            try:
                module = SourceModule(self.text, nvcc=nvcc, no_extern_c=True, cache_dir=False)
            except Exception as exc:
                raise KernelError("preprocess.cu does not compile with {}: {}".format(nvcc, _one_line(exc)))
        self._functions = {}
        for name, kinds in SIGNATURES.items():
            function = module.get_function(name)
            function.prepare(kinds)
            self._functions[name] = function
        self._module = module

    def _launch(self, name, grid, block, values, stream):
        self._functions[name].prepared_async_call(grid, block, stream.native, *values)


class CupyKernels(LoadedKernels):
    """CuPy RawModule (NVRTC); launches on the runtime's stream through cupy.cuda.ExternalStream."""

    backend = "cupy"

    def __init__(self, text=None):
        LoadedKernels.__init__(self, text)
        import cupy
        self._cupy = cupy
        try:
            module = cupy.RawModule(code=self.text, options=("--std=c++14",))
            self._functions = dict((name, module.get_function(name)) for name in SIGNATURES)
        except Exception as exc:  # cupy.cuda.compiler.CompileException, driver errors
            raise KernelError("preprocess.cu does not compile with CuPy/NVRTC: {}".format(_one_line(exc)))
        self._streams = {}

    def _launch(self, name, grid, block, values, stream):
        handle = int(stream.handle)
        external = self._streams.get(handle)
        if external is None:
            external = self._streams[handle] = self._cupy.cuda.ExternalStream(handle)
        with external:
            self._functions[name](grid, block, tuple(values))


class NvrtcKernels(LoadedKernels):
    """NVRTC and the driver API from cuda-python: a cubin for this device, launched with cuLaunchKernel."""

    backend = "nvrtc"

    def __init__(self, compute_capability, text=None):
        LoadedKernels.__init__(self, text)
        nvrtc, self._driver = import_cuda_python()
        image = compile_nvrtc(nvrtc, self.text, compute_capability)
        module = _driver_call(self._driver, "cuModuleLoadData", image)
        self._functions = dict((name, _driver_call(self._driver, "cuModuleGetFunction", module, name.encode()))
                               for name in SIGNATURES)
        self._module = module

    def _launch(self, name, grid, block, values, stream):
        holders = [np.array([v]) for v in values]          # one typed cell per parameter
        pointers = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
        _driver_call(self._driver, "cuLaunchKernel", self._functions[name], grid[0], grid[1], grid[2],
                     block[0], block[1], block[2], 0, int(stream.handle), pointers.ctypes.data, 0)


def import_cuda_python():
    """(nvrtc, driver) modules of cuda-python: cuda.bindings from 12.6 on, cuda.nvrtc/cuda.cuda before."""
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:
        from cuda import cuda as driver, nvrtc
    return nvrtc, driver


def compile_nvrtc(nvrtc, text, compute_capability, want_cubin=True):
    """Compile with NVRTC for sm_XY: the cubin bytes (or PTX text when ``want_cubin`` is False)."""
    major, minor = compute_capability
    program = _nvrtc_call(nvrtc, "nvrtcCreateProgram", text.encode(), b"preprocess.cu", 0, [], [])
    arch = "--gpu-architecture={}_{}{}".format("sm" if want_cubin else "compute", major, minor).encode()
    options = [arch, b"--std=c++14"]
    result = nvrtc.nvrtcCompileProgram(program, len(options), options)
    if int(result[0]) != 0:
        size = _nvrtc_call(nvrtc, "nvrtcGetProgramLogSize", program)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(program, log)
        raise KernelError("preprocess.cu does not compile with NVRTC for sm_{}{}: {}".format(
            major, minor, _one_line(log.decode("utf-8", "replace"))))
    kind = "CUBIN" if want_cubin else "PTX"
    size = _nvrtc_call(nvrtc, "nvrtcGet{}Size".format(kind), program)
    image = b" " * size
    _nvrtc_call(nvrtc, "nvrtcGet{}".format(kind), program, image)
    nvrtc.nvrtcDestroyProgram(program)
    return image


def _nvrtc_call(nvrtc, function, *args):
    result = getattr(nvrtc, function)(*args)
    if int(result[0]) != 0:
        raise KernelError("NVRTC {} failed: {}".format(function, result[0]))
    return result[1] if len(result) > 1 else None


def _driver_call(driver, function, *args):
    result = getattr(driver, function)(*args)
    if int(result[0]) != 0:
        raise KernelError("CUDA {} failed: {}".format(function, result[0]))
    return result[1] if len(result) > 1 else None


def load_kernels(runtime):
    """Compile preprocess.cu for ``runtime``'s device with the loader its CUDA binding calls for."""
    if runtime.name == "pycuda":
        try:
            return PycudaKernels()
        except ImportError as exc:
            raise KernelError("pycuda.compiler does not import ({}); {}".format(exc, INSTALL_HINT))
    errors = []
    try:
        return CupyKernels()
    except ImportError as exc:
        errors.append("CuPy: {}".format(exc))
    try:
        return NvrtcKernels(runtime.compute_capability())
    except KernelError:
        raise
    except Exception as exc:  # ImportError, or cuda-python finding no driver library
        errors.append("cuda-python NVRTC: {}".format(_one_line(exc)))
    raise KernelError("no kernel compiler for the {} runtime ({}); {}".format(
        runtime.name, "; ".join(errors), INSTALL_HINT))


def _one_line(exc):
    return " ".join(str(exc).split()) or type(exc).__name__
