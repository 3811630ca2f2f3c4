"""The builder half of the fake TensorRT: network, ONNX parser, optimisation profile, timing cache, config, builder.

Behaviour kept from the real library where edge/ relies on it:
- the ONNX parser of TensorRT < 10 refuses an implicit-batch network;
- a network with a dynamic input and no optimisation profile does not build;
- build_serialized_network returns None (and logs) on failure;
- a Q/DQ model in a weakly typed network needs the INT8 flag (TensorRT 8 developer guide:
  "to enable the use of any quantized operations, the INT8 flag must be set");
- INT8 without Q/DQ needs a calibrator; a dynamic network calibrates at a calibration profile;
- the calibrator protocol of NvInfer.h (release/8.2) IInt8Calibrator: read the cache, else
  get_batch_size, get_batch(names) -> device pointers until None, then write the cache;
- set_timing_cache refuses a cache made by another version (returns False);
- interface subclasses (calibrator, progress monitor) must call the base __init__ (pybind11).
"""
import json

import numpy as np

PLAN_MAGIC = b"FAKEPLAN"


class IHostMemory(bytes):
    """Serialized data with the buffer protocol, like TensorRT's IHostMemory."""


def builder_classes(state, ns):
    f = state.features
    out = {"IHostMemory": IHostMemory}

    class ITensor(object):
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

    class INetworkDefinition(object):
        def __init__(self, flags):
            self._flags, self._inputs, self._outputs = flags, [], []
            self._qdq = self._fp16_typed = False

        @property
        def num_inputs(self):
            return len(self._inputs)

        def get_input(self, index):
            return self._inputs[index]

        @property
        def num_outputs(self):
            return len(self._outputs)

        def get_output(self, index):
            return self._outputs[index]

    class ParserError(object):
        def __init__(self, text):
            self._text = text

        def desc(self):
            return self._text

        def __str__(self):
            return "In node -1 (parse): {}".format(self._text)

    class OnnxParser(object):
        def __init__(self, network, logger):
            self._network, self._errors = network, []

        def parse(self, model):
            state.calls.append(("parse", len(model)))
            net = self._network
            if not model:
                self._errors.append(ParserError("empty model"))
            elif f["implicit_batch_default"] and not (net._flags & (1 << int(ns["NetworkDefinitionCreationFlag"]
                                                                          .EXPLICIT_BATCH))):
                self._errors.append(ParserError("the ONNX parser only supports explicit batch networks"))
            if self._errors:
                return False
            net._qdq, net._fp16_typed = b"QDQ" in model, b"FP16TYPED" in model
            dtype = ns["DataType"].HALF if net._fp16_typed else ns["DataType"].FLOAT
            net._inputs = [ITensor(n, s, dtype) for n, s in state.network["inputs"]]
            net._outputs = [ITensor(n, s, dtype) for n, s in state.network["outputs"]]
            return True

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, index):
            return self._errors[index]

    class IOptimizationProfile(object):
        def __init__(self):
            self.shapes = {}

        def set_shape(self, input, min, opt, max):
            assert all(a <= b <= c for a, b, c in zip(min, opt, max)), "profile needs min <= opt <= max"
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))
            state.calls.append(("set_shape", (input, tuple(min), tuple(opt), tuple(max))))

    class ITimingCache(object):
        def __init__(self, data):
            text = bytes(data).decode("ascii") if data else ""
            self.header, _, entries = text.partition(":")
            self.entries = int(entries or 0)

        def serialize(self):
            return IHostMemory("fake-timing {}:{}".format(state.version, self.entries).encode("ascii"))

    out.update(ITensor=ITensor, INetworkDefinition=INetworkDefinition, OnnxParser=OnnxParser,
               ParserError=ParserError, IOptimizationProfile=IOptimizationProfile, ITimingCache=ITimingCache)
    out["IBuilderConfig"] = _config_class(state, ITimingCache)
    out["Builder"] = _builder_class(state, ns, out)
    return out


def _config_class(state, ITimingCache):
    f = state.features

    class Base(object):
        def __init__(self):
            self._flags, self._profiles, self._pool = set(), [], None
            self._calibrator = self._calibration_profile = self._monitor = None
            self._timing = None

        def set_flag(self, flag):
            state.calls.append(("set_flag", flag.name))
            self._flags.add(flag.name)

        def get_flag(self, flag):
            return flag.name in self._flags

        def add_optimization_profile(self, profile):
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, serialized_timing_cache):
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache, ignore_mismatch):
            ok = cache.header in ("", "fake-timing {}".format(state.version))
            state.calls.append(("set_timing_cache", ok))
            if ok:
                self._timing = cache
            return ok

        def get_timing_cache(self):
            return self._timing

    class WorkspaceAttr(object):  # < 8.4
        @property
        def max_workspace_size(self):
            return self._pool or 0

        @max_workspace_size.setter
        def max_workspace_size(self, value):
            state.calls.append(("max_workspace_size", value))
            self._pool = value

    class MemoryPools(object):  # 8.4+
        def set_memory_pool_limit(self, pool, pool_size):
            state.calls.append(("set_memory_pool_limit", (pool.name, pool_size)))
            self._pool = pool_size

        def get_memory_pool_limit(self, pool):
            return self._pool

    class Calibration(object):  # <= 10
        @property
        def int8_calibrator(self):
            return self._calibrator

        @int8_calibrator.setter
        def int8_calibrator(self, calibrator):
            state.calls.append(("int8_calibrator", type(calibrator).__name__))
            self._calibrator = calibrator

        def set_calibration_profile(self, profile):
            self._calibration_profile = profile
            return True

        def get_calibration_profile(self):
            return self._calibration_profile

    class Progress(object):  # 10+ here (9.0+ in NVIDIA's samples)
        @property
        def progress_monitor(self):
            return self._monitor

        @progress_monitor.setter
        def progress_monitor(self, monitor):
            self._monitor = monitor

    mixins = [MemoryPools if f["memory_pools"] else WorkspaceAttr]
    mixins += [Calibration] if f["calibrators"] else []
    mixins += [Progress] if f["progress_monitor"] else []
    return type("IBuilderConfig", tuple(mixins) + (Base,), {})


def _builder_class(state, ns, classes):
    f = state.features

    class Base(object):
        def __init__(self, logger):
            self._logger = logger

        def create_network(self, flags=0):
            known = 0
            for name in dir(ns["NetworkDefinitionCreationFlag"]):
                if not name.startswith("_"):
                    known |= 1 << int(getattr(ns["NetworkDefinitionCreationFlag"], name))
            assert flags & ~known == 0, "unknown network creation flags {:b}".format(flags)
            state.calls.append(("create_network", flags))
            return classes["INetworkDefinition"](flags)

        def create_builder_config(self):
            return classes["IBuilderConfig"]()

        def create_optimization_profile(self):
            return classes["IOptimizationProfile"]()

        def build_serialized_network(self, network, config):
            state.calls.append(("build_serialized_network", sorted(config._flags)))
            try:
                calibrated = _check_and_calibrate(state, network, config)
                _report_progress(config)
                if state.on_build is not None:
                    state.on_build(config)
            except _BuildFailure as exc:
                state.log.append(str(exc))
                return None
            if config._timing is not None:
                config._timing.entries += 1
            return IHostMemory(PLAN_MAGIC + json.dumps(_plan(state, network, config, calibrated)).encode("utf-8"))

    class PlatformFast(object):  # <= 10; removed in 11
        @property
        def platform_has_fast_fp16(self):
            return state.platform_fast[0]

        @property
        def platform_has_fast_int8(self):
            return state.platform_fast[1]

    mixins = (PlatformFast,) if f["platform_fast"] else ()
    return type("Builder", mixins + (Base,), {})


class _BuildFailure(Exception):
    pass


def _check_and_calibrate(state, network, config):
    inputs = network._inputs
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if dynamic and not config._profiles:
        raise _BuildFailure("Network has dynamic or shape inputs, but no optimization profile has been defined.")
    weakly_typed = state.features["precision_flags"]
    if network._qdq and weakly_typed and "INT8" not in config._flags:
        raise _BuildFailure("Q/DQ layers in a weakly typed network need the INT8 builder flag")
    if "INT8" not in config._flags or network._qdq:
        return False
    calibrator = config._calibrator
    if calibrator is None:
        raise _BuildFailure("Calibrator is not being used. Users must provide dynamic range for all tensors.")
    assert getattr(calibrator, "_base_initialised", False), "calibrator did not call its base __init__"
    if dynamic and config._calibration_profile is None:
        raise _BuildFailure("Calibration profile must be set for a network with dynamic shapes")
    if calibrator.read_calibration_cache():
        state.calls.append(("calibration", "from cache"))
        return True
    batch = calibrator.get_batch_size()
    profile = config._calibration_profile
    shape = profile.shapes[inputs[0].name][1] if profile is not None else inputs[0].shape
    assert shape[0] == batch, "get_batch_size {} differs from the calibration shape {}".format(batch, shape)
    names = [t.name for t in inputs]
    batches = 0
    while True:
        pointers = calibrator.get_batch(names)
        if not pointers:
            break
        assert len(pointers) == len(names), "get_batch must give one device pointer per input"
        state.calibration_batches.append(state.memory.read(int(pointers[0]), shape, np.float32).copy())
        batches += 1
    if batches == 0:
        raise _BuildFailure("Calibration failure: no batches")
    state.calls.append(("calibration", batches))
    calibrator.write_calibration_cache(IHostMemory(b"TRT-8201-EntropyCalibration2\nfake scales over "
                                                   + str(batches).encode("ascii") + b" batches\n"))
    return True


def _report_progress(config):
    monitor = config._monitor
    if monitor is None:
        return
    assert getattr(monitor, "_base_initialised", False), "progress monitor did not call its base __init__"
    monitor.phase_start("Building engine", None, 3)
    for step in range(3):
        if monitor.step_complete("Building engine", step) is False:
            raise _BuildFailure("build cancelled by the progress monitor")
    monitor.phase_finish("Building engine")


def _plan(state, network, config, calibrated):
    profile = config._profiles[0].shapes if config._profiles else {}
    return {"version": state.version, "flags": sorted(config._flags), "workspace": config._pool,
            "network_flags": network._flags, "qdq": network._qdq, "fp16_typed": network._fp16_typed,
            "calibrated": calibrated, "profile": dict((k, [list(s) for s in v]) for k, v in profile.items()),
            "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network._inputs],
            "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network._outputs]}
