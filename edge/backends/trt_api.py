"""The one module that knows TensorRT versions.

Versions are parsed to integers once (``parse_version``), features are
checked on the module where one exists (``hasattr``), and the I/O adapter is
chosen once per engine. Everything else in edge/ asks a ``TrtApi``.

What differs, and where the facts come from (NVIDIA/TensorRT sources):
- network: ``create_network(1 << EXPLICIT_BATCH)`` before 10 (release/8.2
  samples/python/common.py: implicit batch is the default there and the ONNX
  parser needs explicit batch); ``create_network(0)`` in 10 (release/10.13
  introductory_parser_samples/onnx_resnet50.py: implicit batch removed);
  strongly typed in 11 (``1 << STRONGLY_TYPED``, release/11.1 onnx_resnet50.py;
  python/src/infer/pyCore.cpp 11.1: "Deprecated: always enabled"; EXPLICIT_BATCH is gone).
- workspace: ``config.max_workspace_size`` before 8.4, whose default is 0,
  "no temporary memory" (release/8.2 include/NvInfer.h getMaxWorkspaceSize);
  ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)`` after, defaulting to
  the device's memory (release/8.6 NvInfer.h kWORKSPACE).
- precision: ``BuilderFlag.FP16/INT8`` up to 10 (both deprecated in 10.12, release/10.13 NvInfer.h);
  TensorRT 11 removed them, ``int8_calibrator``, calibration profiles and
  ``platform_has_fast_*``: networks are strongly typed, FP16 comes from an
  FP16-typed ONNX and INT8 from Q/DQ nodes (docs.nvidia.com/deeplearning/
  tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html).
- implicit INT8: ``IInt8EntropyCalibrator2`` (release/8.2 samples/python/
  int8_caffe_mnist/calibrator.py), deprecated in 10.1; used here before 10 only.
- execution: bindings + ``execute_async_v2`` before 8.5 (release/8.2
  common.py ``do_inference_v2``); named tensors ``set_tensor_address`` +
  ``execute_async_v3`` from 8.5 (release/8.5 pyCore.cpp), the only API in 10+
  (release/10.13 common_runtime.py ``do_inference``).
- progress: ``IProgressMonitor`` / ``config.progress_monitor`` where the
  module has it (release/9.0 on, samples/python/simple_progress_monitor).
"""
import re

import numpy as np

from edge.backends import BackendError

INSTALL = "comes with JetPack / pip install tensorrt"

# Compute capabilities with fast FP16 and fast INT8 (CUDA C Programming Guide, arithmetic
# instruction throughput: FP16 at full rate on 5.3, 6.0, 6.2 and 7.0+, 1/64 rate on 6.1;
# 8-bit dot products (dp4a) from 6.1, tensor cores from 7.x; Jetson TX2 (6.2) and Nano (5.3)
# have no fast INT8, tensorrt_demos #36). TensorRT <= 10 also answers through
# builder.platform_has_fast_*; 11 removed those, so the table is what decides there.
_FAST_FP16_ONLY = ((5, 3), (6, 0), (6, 2))


def fast_fp16(cc):
    return tuple(cc) in _FAST_FP16_ONLY or tuple(cc) >= (7, 0)


def fast_int8(cc):
    return tuple(cc) == (6, 1) or tuple(cc) >= (7, 0)


def parse_version(text):
    """"8.2.1.8" -> (8, 2, 1, 8); "10.0.1" -> (10, 0, 1); "10.0.0b6" -> (10, 0, 0). Never compare strings."""
    parts = []
    for piece in str(text).strip().split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(piece):  # "0b6", "1post1": the rest is a pre/post-release tag
            break
    if not parts:
        raise ValueError("not a TensorRT version: {!r}".format(text))
    return tuple(parts)


def import_tensorrt():
    """The real ``tensorrt`` module, or BackendError in one line saying why not."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError("{} ({})".format(exc, INSTALL))
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        where = list(getattr(trt, "__path__", [])) or [getattr(trt, "__file__", "?")]
        raise BackendError("the 'tensorrt' package at {} is not TensorRT's Python API (no Builder: type stubs "
                           "such as tensorrt-stubs, or a broken install) ({})".format(where[0], INSTALL))
    return trt


class TrtApi(object):
    """What this TensorRT offers, decided once from the module (the real one, or a test's fake)."""

    def __init__(self, trt):
        self.trt = trt
        self.version_text = str(trt.__version__)
        self.version = parse_version(self.version_text)
        self.logger = trt.Logger(trt.Logger.WARNING)
        # precision flags exist up to 10; 11 builds strongly typed networks only
        self.weakly_typed = hasattr(trt.BuilderFlag, "FP16")
        # implicit (calibrated) INT8: before 10 only; deprecated in 10.1, removed in 11
        self.implicit_int8 = self.version < (10,) and hasattr(trt, "IInt8EntropyCalibrator2")
        self.has_progress_monitor = hasattr(trt, "IProgressMonitor")
        # < 8.4: max_workspace_size (default 0); later set_memory_pool_limit (default: device memory)
        self.has_memory_pools = hasattr(trt.IBuilderConfig, "set_memory_pool_limit")

    @property
    def strongly_typed(self):
        return not self.weakly_typed

    def default_workspace_bytes(self, compute_capability):
        """The workspace used when none is asked for: TensorRT's own where its default is usable.

        Before 8.4 the default is 0, which leaves most tactics out; 256 MiB on
        a 4 GB Nano/TX1 (compute capability 5.x), 1 GiB elsewhere.
        """
        if self.has_memory_pools:
            return None
        return (256 << 20) if tuple(compute_capability) < (6, 0) else (1 << 30)

    def gpu_fast(self, compute_capability, builder=None):
        """(fast_fp16, fast_int8): from the builder where TensorRT still answers, else the table."""
        if builder is not None and hasattr(builder, "platform_has_fast_fp16"):
            return bool(builder.platform_has_fast_fp16), bool(builder.platform_has_fast_int8)
        return fast_fp16(compute_capability), fast_int8(compute_capability)

    # -- building ----------------------------------------------------------------------------------
    def create_builder(self):
        return self.trt.Builder(self.logger)

    def create_network(self, builder):
        flags = 0
        creation = self.trt.NetworkDefinitionCreationFlag
        if self.version < (10,):
            flags |= 1 << int(creation.EXPLICIT_BATCH)
        if self.strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
            flags |= 1 << int(creation.STRONGLY_TYPED)
        return builder.create_network(flags)

    def parse_onnx(self, network, onnx_bytes, where):
        parser = self.trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
            raise BackendError("{}: TensorRT {} cannot parse the ONNX model: {}".format(
                where, self.version_text, "; ".join(errors) or "no reason given"))
        return parser  # the parser must outlive the network it filled

    def set_workspace(self, config, workspace_bytes):
        if workspace_bytes is None:
            return
        if self.has_memory_pools:
            config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
        else:
            config.max_workspace_size = int(workspace_bytes)

    def set_precision_flags(self, config, flags):
        """``flags``: names of BuilderFlag members ("FP16", "INT8"); none exist in 11."""
        if flags and not self.weakly_typed:
            raise BackendError("TensorRT {} has no precision flags ({}): its networks are strongly typed".format(
                self.version_text, ", ".join(flags)))
        for flag in flags:
            config.set_flag(getattr(self.trt.BuilderFlag, flag))

    def add_profile(self, builder, config, name, min_shape, opt_shape, max_shape):
        profile = builder.create_optimization_profile()
        profile.set_shape(name, tuple(min_shape), tuple(opt_shape), tuple(max_shape))
        config.add_optimization_profile(profile)
        return profile

    def attach_calibrator(self, config, calibrator, profile=None):
        if not self.implicit_int8:
            raise BackendError("TensorRT {} calibrates no implicit INT8 here; use the bundle's INT8 Q/DQ "
                               "variant".format(self.version_text))
        config.int8_calibrator = calibrator
        if profile is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)  # dynamic shapes calibrate at this profile's shapes

    def use_timing_cache(self, config, serialized):
        """Give the builder a timing cache made from ``serialized`` bytes (b"" = a new one).

        Returns False when TensorRT refused the bytes (another device or version); a new cache is used then.
        """
        cache = config.create_timing_cache(serialized or b"")
        if config.set_timing_cache(cache, False):
            return True
        config.set_timing_cache(config.create_timing_cache(b""), False)
        return False

    def timing_cache_bytes(self, config):
        cache = config.get_timing_cache()
        return bytes(memoryview(cache.serialize())) if cache is not None else b""

    def attach_progress(self, config, progress):
        """Report build phases to ``progress.phase(text)`` where TensorRT has a progress monitor."""
        if not self.has_progress_monitor:
            return False
        progress.monitor = _progress_monitor(self.trt, progress)  # kept alive beside the config
        config.progress_monitor = progress.monitor
        return True

    def build_serialized(self, builder, network, config, where):
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendError("{}: TensorRT {} could not build an engine (its log above says why)".format(
                where, self.version_text))
        return bytes(memoryview(plan))

    # -- running -----------------------------------------------------------------------------------
    def deserialize(self, plan_bytes):
        """The engine, or None where TensorRT cannot read the bytes (it logs why).

        The engine keeps its Runtime alive (pyCore.cpp: ``py::keep_alive<0, 1>``, 8.2 and 10.13).
        """
        return self.trt.Runtime(self.logger).deserialize_cuda_engine(plan_bytes)

    def io_adapter(self, engine, context):
        """Named tensors where the engine has them (8.5+), bindings before: chosen once per engine."""
        if hasattr(engine, "num_io_tensors"):
            return TensorIO(self.trt, engine, context)
        return BindingIO(self.trt, engine, context)


class TensorInfo(object):
    __slots__ = ("name", "is_input", "shape", "dtype")

    def __init__(self, name, is_input, shape, dtype):
        self.name, self.is_input, self.shape, self.dtype = name, is_input, tuple(shape), np.dtype(dtype)

    @property
    def dynamic(self):
        return any(int(d) < 0 for d in self.shape)


class TensorIO(object):
    """Named-tensor I/O (TensorRT 8.5+; the only one in 10 and 11)."""

    kind = "named tensors, execute_async_v3"

    def __init__(self, trt, engine, context):
        self.engine, self.context = engine, context
        self.tensors = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            self.tensors.append(TensorInfo(name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                                           engine.get_tensor_shape(name),
                                           trt.nptype(engine.get_tensor_dtype(name))))

    def profile_max_shape(self, name):
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # (min, opt, max) of profile 0

    def set_input_shape(self, name, shape):
        if self.context.set_input_shape(name, tuple(shape)) is False:
            raise BackendError("TensorRT refused input shape {} for {!r}".format(tuple(shape), name))

    def context_shape(self, name):
        return tuple(self.context.get_tensor_shape(name))

    def set_address(self, name, ptr):
        self.context.set_tensor_address(name, int(ptr))

    def execute(self, stream_handle):
        return bool(self.context.execute_async_v3(stream_handle))


class BindingIO(object):
    """Binding-index I/O (TensorRT before 8.5: the Nano's 8.2)."""

    kind = "bindings, execute_async_v2"

    def __init__(self, trt, engine, context):
        self.engine, self.context = engine, context
        self.tensors, self._index = [], {}
        for i in range(engine.num_bindings):
            name = engine.get_binding_name(i)
            self._index[name] = i
            self.tensors.append(TensorInfo(name, engine.binding_is_input(i), engine.get_binding_shape(i),
                                           trt.nptype(engine.get_binding_dtype(i))))
        self.bindings = [0] * len(self.tensors)

    def profile_max_shape(self, name):
        return tuple(self.engine.get_profile_shape(0, name)[2])  # (profile_index, binding) -> (min, opt, max)

    def set_input_shape(self, name, shape):
        if self.context.set_binding_shape(self._index[name], tuple(shape)) is False:
            raise BackendError("TensorRT refused input shape {} for {!r}".format(tuple(shape), name))

    def context_shape(self, name):
        return tuple(self.context.get_binding_shape(self._index[name]))

    def set_address(self, name, ptr):
        self.bindings[self._index[name]] = int(ptr)

    def execute(self, stream_handle):
        return bool(self.context.execute_async_v2(bindings=self.bindings, stream_handle=stream_handle))


_MONITOR_CLASSES = {}


def _progress_monitor(trt, progress):
    """An IProgressMonitor (the class is made on first use: it must subclass the module's own)."""
    cls = _MONITOR_CLASSES.get(id(trt))
    if cls is None:
        class PhaseMonitor(trt.IProgressMonitor):
            def __init__(self, sink):
                trt.IProgressMonitor.__init__(self)  # pybind11 trampolines need the base constructor
                self._sink, self._phases = sink, []

            # TensorRT calls these from C++ that must not throw; Ctrl-C during a long build arrives in them,
            # and step_complete returning False cancels the build (release/10.13 simple_progress_monitor.py).
            def phase_start(self, phase_name, parent_phase, num_steps):
                try:
                    self._phases.append([phase_name, 0, num_steps])
                    self._report()
                except KeyboardInterrupt:
                    self._sink.cancelled = True

            def step_complete(self, phase_name, step):
                try:
                    for phase in self._phases:
                        if phase[0] == phase_name:
                            phase[1] = step + 1
                    self._report()
                except KeyboardInterrupt:
                    self._sink.cancelled = True
                return not self._sink.cancelled

            def phase_finish(self, phase_name):
                try:
                    self._phases = [p for p in self._phases if p[0] != phase_name]
                    self._report()
                except KeyboardInterrupt:
                    self._sink.cancelled = True

            def _report(self):
                self._sink.phase(" > ".join("{} {}/{}".format(n, s, t) for n, s, t in self._phases))
        cls = _MONITOR_CLASSES[id(trt)] = PhaseMonitor
    return cls(progress)
