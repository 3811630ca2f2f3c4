"""A fake ``tensorrt`` module per version: the builder side (network, parser, config, builder, calibration).

Each version offers exactly the attributes its real module has, for the part
edge/ uses, and behaves as the real one does where edge/ depends on it:

- 8.2 (JetPack 4.6): NVIDIA/TensorRT release/8.2 python/src/infer/pyCore.cpp,
  pyGraph.cpp, pyInt8.cpp, parsers/pyOnnx.cpp, python/packaging/tensorrt/__init__.py;
  samples/python/common.py (EXPLICIT_BATCH, do_inference_v2),
  introductory_parser_samples/onnx_resnet50.py (max_workspace_size),
  int8_caffe_mnist/calibrator.py (the calibrator protocol); include/NvInfer.h
  (max workspace default 0; enum values).
- 8.6 (JetPack 6 / 5 era): both I/O APIs (release/8.5 pyCore.cpp: named tensors
  added, bindings deprecated), set_memory_pool_limit.
- 10.x: the tensorrt-stubs package (10.13 Python API) is the reference, checked
  by tests/unit/test_trt_fakes.py; release/10.13 samples/python/common_runtime.py.
- 11.x: release/11.1 pyCore.cpp and docs.nvidia.com/deeplearning/tensorrt/latest/
  api/migration/tensorrt-10x-to-11x-python-api-reference.html: no FP16/INT8
  builder flags, no int8_calibrator/calibration profile, no platform_has_fast_*,
  no calibrator classes; STRONGLY_TYPED kept but ignored (always strongly typed).

The 8.2 and 11.1 surfaces are checked against tests/data/trt_api_names.json.
"""
import types

import numpy as np

from trtfakes.tensorrt_fake_builder import builder_classes
from trtfakes.tensorrt_fake_engine import engine_classes

VERSIONS = ("8.2.1.8", "8.6.1", "10.0.1", "10.12.0", "11.0.0")


def features(version):
    major, minor = [int(p) for p in version.split(".")[:2]]
    v = (major, minor)
    return {"explicit_batch_flag": v < (11, 0), "implicit_batch_default": v < (10, 0), "strongly_typed_flag": v >= (10, 0), "memory_pools": v >= (8, 4),
            "precision_flags": v < (11, 0), "calibrators": v < (11, 0), "platform_fast": v < (11, 0),
            "bindings": v < (10, 0), "named_tensors": v >= (8, 5), "progress_monitor": v >= (10, 0)}


class FakeState(object):
    """What a test inspects: ``calls`` (name, details), ``log`` (TensorRT's log lines), calibration batches."""

    def __init__(self, version, memory, network, platform_fast):
        self.version = version
        self.features = features(version)
        self.memory = memory
        self.network = network or {"inputs": [("input", (-1, 3, 32, 32))], "outputs": [("logits", (-1, 4))]}
        self.platform_fast = platform_fast
        self.calls = []
        self.log = []
        self.calibration_batches = []
        self.on_build = None  # test hook: called with the config while a build "runs"

    def called(self, name):
        return [details for call, details in self.calls if call == name]


class _EnumValue(int):
    def __new__(cls, owner, name, value):
        obj = int.__new__(cls, value)
        obj.owner, obj.name = owner, name
        return obj

    def __repr__(self):
        return "<{}.{}: {}>".format(self.owner, self.name, int(self))


def _enum(name, members):
    cls = type(name, (object,), {})
    for member, value in members:
        setattr(cls, member, _EnumValue(name, member, value))
    return cls


def make_tensorrt(version="8.2.1.8", memory=None, network=None, platform_fast=(True, False)):
    """A fresh fake module for ``version``; ``memory`` is the fake CUDA heap that engines read and write."""
    state = FakeState(version, memory, network, platform_fast)
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.__file__ = "<fake tensorrt {}>".format(version)
    mod.fake = state  # the test's handle; not part of TensorRT's API
    for name, obj in _namespace(state).items():
        setattr(mod, name, obj)
    return mod


def _namespace(state):
    f = state.features
    ns = {}
    severities = [("INTERNAL_ERROR", 0), ("ERROR", 1), ("WARNING", 2), ("INFO", 3), ("VERBOSE", 4)]
    ns["ILogger"] = type("ILogger", (object,), dict((n, _EnumValue("ILogger", n, v)) for n, v in severities))

    class Logger(ns["ILogger"]):
        def __init__(self, min_severity=2):
            self.min_severity = min_severity

        def log(self, severity, msg):
            state.log.append(msg)
    ns["Logger"] = Logger
    ns["DataType"] = _enum("DataType", [("FLOAT", 0), ("HALF", 1), ("INT8", 2), ("INT32", 3)])
    dtypes = {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32}
    ns["nptype"] = lambda trt_type: dtypes[int(trt_type)]
    ns["volume"] = lambda shape: int(np.prod(list(shape)))
    creation = [("EXPLICIT_BATCH", 0)] if f["explicit_batch_flag"] else []
    if f["strongly_typed_flag"]:
        creation.append(("STRONGLY_TYPED", 0 if not f["explicit_batch_flag"] else 1))
    ns["NetworkDefinitionCreationFlag"] = _enum("NetworkDefinitionCreationFlag", creation)
    flags = ([("FP16", 0), ("INT8", 1)] if f["precision_flags"] else []) + [("TF32", 6)]
    ns["BuilderFlag"] = _enum("BuilderFlag", flags)
    if f["memory_pools"]:
        ns["MemoryPoolType"] = _enum("MemoryPoolType", [("WORKSPACE", 0)])
    if f["named_tensors"]:
        ns["TensorIOMode"] = _enum("TensorIOMode", [("NONE", 0), ("INPUT", 1), ("OUTPUT", 2)])
    ns.update(builder_classes(state, ns))
    ns.update(engine_classes(state, ns))
    if f["calibrators"]:
        ns["IInt8EntropyCalibrator2"] = _interface("IInt8EntropyCalibrator2", (
            "get_batch_size", "get_batch", "read_calibration_cache", "write_calibration_cache", "get_algorithm"))
    if f["progress_monitor"]:
        ns["IProgressMonitor"] = _interface("IProgressMonitor", ("phase_start", "step_complete", "phase_finish"))
    return ns


def _interface(name, methods):
    """A pybind11-style interface class: subclasses must call its __init__ (TensorRT checks)."""
    def __init__(self):
        self._base_initialised = True

    def pure(method):
        def call(self, *args):
            raise NotImplementedError("{}.{} is pure virtual".format(name, method))
        return call
    body = dict((m, pure(m)) for m in methods)
    body["__init__"] = __init__
    return type(name, (object,), body)
