"""TensorRT backend: builds (or loads from the engine cache) an engine for the bundle, and runs it.

The runner allocates everything when it is built: one device buffer and one
pinned host buffer per engine input and output (sized for ``batch``), one
stream and four CUDA events. ``infer`` then only copies and launches: a host
batch is copied into the pinned buffer and sent to the device; a device batch
(from the CUDA preprocessor, which wrote straight into the engine's input
buffer on the same stream) goes to the network as it is. Outputs come back
once per batch. Stage times are CUDA-event times on the stream, never CPU
clocks around an asynchronous launch.

    backend = TensorRTBackend(bundle, precision="best", batch=1, cache_dir=None, log=print)
    pre = backend.make_preprocessor()       # CUDA kernel into the input buffer, or the OpenCV reference
    logits = backend.infer(pre.collate([pre.prepare(rgb)]))

Nothing is imported from TensorRT or CUDA until a backend is made (``trt`` and
``runtime`` can be given: tests pass fakes of TensorRT 8.2, 10 and 11).
"""
import sys

import numpy as np

from edge.backends import BackendError
from edge.backends.engine_cache import EngineCache
from edge.backends.trt_api import TrtApi, import_tensorrt
from edge.backends.trt_build import EngineRequest, engine_for
from edge.backends.trt_precision import plan_build, variant_agreement
from edge.gpu.cuda import GpuError
from models.bundle import BundleError


def available():
    """(ok, reason): TensorRT imports and a CUDA GPU can be used from Python."""
    try:
        trt = import_tensorrt()
    except BackendError as exc:
        return False, str(exc)
    from edge.gpu.cuda import probe
    ok, reason = probe()
    if not ok:
        return False, reason
    return True, "tensorrt {} imports and {}".format(trt.__version__, reason)


def versions():
    """TensorRT, the CUDA runtime for Python, CUDA, cuDNN and the GPU, for `retina-edge selftest`.

    A dict of strings; where something is missing its value is None and
    ``<name>_error`` says why in one line. Creates and releases a CUDA context
    where a GPU is present; never raises for a missing library.
    """
    from edge.gpu.cuda import cudnn_version, load_runtime
    out = {}
    try:
        out["tensorrt"] = str(import_tensorrt().__version__)
    except BackendError as exc:
        out["tensorrt"], out["tensorrt_error"] = None, str(exc)
    out["cudnn"], why = cudnn_version()
    if why:
        out["cudnn_error"] = why
    try:
        runtime = load_runtime()
    except GpuError as exc:
        out["gpu"], out["gpu_error"] = None, str(exc)
        return out
    try:
        out.update(runtime.versions())
        out["gpu"] = runtime.device_name()
        out["compute_capability"] = "{}.{}".format(*runtime.compute_capability())
        out["gpu_memory_total_bytes"] = runtime.mem_info()[1]
    finally:
        runtime.close()
    return out


def _stderr_line(line):
    sys.stderr.write(line + "\n")


class _Tensor(object):
    """One engine I/O tensor's device buffer and pinned host buffer, sized for the largest batch."""

    def __init__(self, info, max_shape, runtime):
        self.name, self.dtype, self.max_shape = info.name, info.dtype, tuple(max_shape)
        self.host = runtime.pinned(self.max_shape, self.dtype)
        self.device = runtime.alloc(self.host.nbytes)


class TensorRTBackend(object):
    name = "tensorrt"

    def __init__(self, bundle, precision="best", threads=0, cache_dir=None, batch=1, workspace_mb=None, log=None,
                 calibration=None, force_int8=False, trt=None, runtime=None, **_ignored):
        # threads concerns ONNX Runtime's CPU threads; TensorRT runs on the GPU
        self.bundle = bundle
        self.log = log or _stderr_line
        self.max_batch = max(1, int(batch or 1))
        self.requested_precision = precision
        self.api = TrtApi(trt if trt is not None else import_tensorrt())
        self._owns_runtime = runtime is None
        self.runtime = runtime if runtime is not None else _load_runtime()
        self.engine = self.context = self.io = self.stream = None
        self._times_ms = {}
        self._preprocessor_note = None
        try:
            self._build(bundle, precision, cache_dir, workspace_mb, calibration, force_int8)
        except BaseException:  # Ctrl-C during a build too: free what was allocated, release the context
            self.close()
            raise

    def _build(self, bundle, precision, cache_dir, workspace_mb, calibration, force_int8):
        rt = self.runtime
        self.gpu_name, self.compute_capability = rt.device_name(), tuple(rt.compute_capability())
        cache = EngineCache(cache_dir, self.log)
        calibration_ready = bool(calibration) or bool(
            cache.calibration_cache_path(bundle.manifest["model"]["sha256"]))
        plan = plan_build(self.api, precision, self.compute_capability, bundle.precisions, calibration_ready,
                          force_int8, agreement=variant_agreement(bundle.variants))
        for note in plan.notes:
            self.log(note)
        workspace_bytes = (int(workspace_mb) << 20 if workspace_mb
                           else self.api.default_workspace_bytes(self.compute_capability))
        try:
            request = EngineRequest(bundle, plan, self.max_batch, workspace_bytes, self.gpu_name,
                                    self.compute_capability, calibration)
        except BundleError as exc:
            raise BackendError(str(exc))
        self.engine, self.engine_info = engine_for(self.api, rt, request, cache, self.log)
        self.precision = plan.precision
        self._allocate()

    def _allocate(self):
        """Context, I/O adapter, buffers, stream and events: everything ``infer`` uses, made once."""
        rt = self.runtime
        self.context = self.engine.create_execution_context()
        self.io = self.api.io_adapter(self.engine, self.context)
        inputs = [t for t in self.io.tensors if t.is_input]
        if len(inputs) != 1 or inputs[0].name != self.bundle.input_name:
            raise BackendError("the engine's inputs {} are not the manifest's single input {!r}".format(
                [t.name for t in inputs], self.bundle.input_name))
        self.input_info = inputs[0]
        self.dynamic = self.input_info.dynamic
        max_input = (self.io.profile_max_shape(self.input_info.name) if self.dynamic else self.input_info.shape)
        if self.dynamic:
            self.io.set_input_shape(self.input_info.name, max_input)  # outputs' shapes at the largest batch
        self.max_batch = min(self.max_batch, int(max_input[0]))
        self._bound_batch = int(max_input[0])
        self.input = _Tensor(self.input_info, max_input, rt)
        shapes = dict((t.name, self.io.context_shape(t.name)) for t in self.io.tensors if not t.is_input)
        unknown = dict((name, shape) for name, shape in shapes.items() if any(int(d) < 0 for d in shape))
        if unknown:
            raise BackendError("the engine's outputs {} have no size even at the largest batch".format(unknown))
        self.outputs = [_Tensor(t, shapes[t.name], rt) for t in self.io.tensors if not t.is_input]
        names = [t.name for t in self.outputs]
        missing = [n for n in self.bundle.output_names if n not in names]
        if missing:
            raise BackendError("the engine has no output {} (it has {})".format(missing, names))
        self.outputs.sort(key=lambda t: (t.name != self.bundle.output_names[0], t.name))  # logits first
        for tensor in [self.input] + self.outputs:
            self.io.set_address(tensor.name, tensor.device.ptr)
        self.input_dtype = self.input.dtype
        self.stream = rt.stream()
        self.events = dict((name, rt.event()) for name in ("start", "inputs", "network", "outputs"))

    # -- the per-batch path: no allocation ------------------------------------------------------------
    def make_preprocessor(self):
        """The CUDA kernel writing into the engine's input buffer, else the OpenCV reference (said once)."""
        try:
            from edge.gpu.preprocess import CudaPreprocessor
            return CudaPreprocessor(self.bundle.preprocess, self.runtime, self.input.device.ptr, self.input_dtype,
                                    self.max_batch, self.stream, log=self.log)
        except Exception as exc:  # ImportError, or the kernel failed to compile/load on this GPU
            if self._preprocessor_note is None:
                self._preprocessor_note = "CUDA pre-processing unavailable ({}: {}); using the OpenCV reference " \
                                          "on the CPU".format(type(exc).__name__, " ".join(str(exc).split()))
                self.log(self._preprocessor_note)
            from edge.preprocess import HostPreprocessor
            return HostPreprocessor(self.bundle.preprocess, dtype=self.input_dtype)

    def infer(self, x):
        """``x``: a host NCHW array, or the DeviceBatch the CUDA preprocessor wrote into our input buffer."""
        rt, ev, stream = self.runtime, self.events, self.stream
        on_host = isinstance(x, np.ndarray)
        n = self._batch_size(x, on_host)
        ev["start"].record(stream)
        if on_host:
            host = self.input.host[:n]
            np.copyto(host, x, casting="same_kind")
            rt.htod(self.input.device.ptr, host, stream)
        ev["inputs"].record(stream)
        if self.dynamic and n != self._bound_batch:
            self.io.set_input_shape(self.input.name, (n,) + self.input.max_shape[1:])
            self._bound_batch = n
        if not self.io.execute(stream.handle):
            raise BackendError("TensorRT could not run the engine on a batch of {}".format(n))
        ev["network"].record(stream)
        for tensor in self.outputs:
            rt.dtoh(tensor.host[:n], tensor.device.ptr, stream)
        ev["outputs"].record(stream)
        ev["outputs"].synchronize()
        self._times_ms = {"network": ev["network"].elapsed_ms(ev["inputs"]),
                          "device-to-host": ev["outputs"].elapsed_ms(ev["network"])}
        if on_host:
            self._times_ms["host-to-device"] = ev["inputs"].elapsed_ms(ev["start"])
        return np.array(self.outputs[0].host[:n], dtype=np.float32)  # a copy: the pinned buffer is reused

    def _batch_size(self, x, on_host):
        if on_host:
            if tuple(x.shape[1:]) != self.input.max_shape[1:]:
                raise BackendError("input batch has shape {}, the engine takes (N,) + {}".format(
                    tuple(x.shape), self.input.max_shape[1:]))
            n = int(x.shape[0])
        else:
            n = int(x.n)
            ptr = getattr(x, "ptr", self.input.device.ptr)
            if ptr != self.input.device.ptr:
                raise BackendError("device batch is not in this engine's input buffer")
        if not 1 <= n <= self.max_batch:
            raise BackendError("batch of {} image(s); this engine takes 1 to {}".format(n, self.max_batch))
        return n

    def last_times_ms(self):
        return dict(self._times_ms)

    # -- reporting and teardown -----------------------------------------------------------------------
    def describe(self):
        info = self.engine_info
        asked = "" if self.requested_precision == self.precision else " ({} asked)".format(self.requested_precision)
        origin = ("engine loaded from {}".format(info.path) if info.origin == "cache" else
                  "engine built in {:.0f} s{}".format(info.seconds, ", cached at {}".format(info.path)
                                                      if info.path else ", not cached (cache not writable)"))
        return "tensorrt {} ({}, {} sm_{}{}, {}{}, {}; {})".format(
            self.api.version_text, self.runtime.name, self.gpu_name, self.compute_capability[0],
            self.compute_capability[1], self.precision, asked, self.io.kind, origin)

    def close(self):
        for tensor in [getattr(self, "input", None)] + list(getattr(self, "outputs", [])):
            if tensor is not None:
                tensor.device.free()
        self.outputs, self.input = [], None
        self.context = self.engine = self.io = None
        if self._owns_runtime and self.runtime is not None:
            self.runtime.close()
        self.runtime = None


def _load_runtime():
    from edge.gpu.cuda import load_runtime
    try:
        return load_runtime()
    except GpuError as exc:
        raise BackendError(str(exc))
